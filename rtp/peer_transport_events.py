"""Events a :class:`~rtp.peer_transport.PeerTransport` hands to its owner through ``next_event()``.

The media events (``RtpReceived``, ``RtcpReceived``) are built once per packet,
so they are slotted and hold nothing but the decrypted bytes.
"""

from __future__ import annotations

from typing import Union

import attrs

from rtp.srtp_profiles import SrtpProfile

Address = tuple[str, int]


class TcpAddress(tuple):
    """The remote end of an ICE-TCP connection (RFC 6544): reads as ``(host, port)`` like a UDP
    address, but is never equal to one, so a TCP path and a UDP path from the same host and port
    are two candidate pairs to ICE and two destinations to the driver. (A client's TCP and UDP
    sockets draw ephemeral ports independently; the same number on both is possible.)"""

    __slots__ = ()

    def __new__(cls, host: str, port: int) -> "TcpAddress":
        return tuple.__new__(cls, (host, port))

    def __eq__(self, other: object) -> bool:
        return type(other) is TcpAddress and tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return hash(("tcp", tuple.__getitem__(self, 0), tuple.__getitem__(self, 1)))

    def __repr__(self) -> str:
        return f"TcpAddress({self[0]!r}, {self[1]!r})"

    def __getnewargs__(self) -> tuple[str, int]:
        return (self[0], self[1])


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
