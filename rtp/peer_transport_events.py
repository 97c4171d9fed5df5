"""Events a :class:`~rtp.peer_transport.PeerTransport` hands to its owner through ``next_event()``.

The media events (``RtpReceived``, ``RtcpReceived``) are built once per packet,
so they are slotted and hold nothing but the decrypted bytes.
"""

from __future__ import annotations

from typing import Union

import attrs

from rtp.srtp_profiles import SrtpProfile

Address = tuple[str, int]


@attrs.frozen
class SelectedAddressChanged:
    """ICE picked (or moved) the remote address that DTLS and media go to."""

    addr: Address


@attrs.frozen
class IceRestarted:
    """An ICE restart completed: the peer checked under the new credentials from ``addr``.
    DTLS and SRTP were never interrupted (a restart is not a new connection)."""

    addr: Address


@attrs.frozen
class TransportConnected:
    """ICE and DTLS are up and SRTP is keyed: media may flow. Emitted once."""

    addr: Address
    srtp_profile: SrtpProfile
    #: sha-256 fingerprint of the peer's certificate, already checked against the SDP.
    peer_fingerprint: str


@attrs.frozen
class RtpReceived:
    """One authenticated, decrypted RTP packet (header included)."""

    packet: bytes


@attrs.frozen
class RtcpReceived:
    """One authenticated, decrypted RTCP compound packet."""

    packet: bytes


@attrs.frozen
class DataReceived:
    """DTLS application data (SCTP packets for data channels)."""

    data: bytes


@attrs.frozen
class TransportFailed:
    """The transport is dead; ``reason`` says which layer gave up and why."""

    reason: str


@attrs.frozen
class TransportClosed:
    """An orderly DTLS close: by us (``close()``) or by the peer (close_notify)."""

    by_peer: bool


PeerTransportEvent = Union[
    SelectedAddressChanged,
    IceRestarted,
    TransportConnected,
    RtpReceived,
    RtcpReceived,
    DataReceived,
    TransportFailed,
    TransportClosed,
]
