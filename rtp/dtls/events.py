"""Events a :class:`~rtp.dtls.connection.DtlsConnection` hands out through ``next_event()``."""

from __future__ import annotations

import attrs

from rtp.dtls.constants import AlertDescription, CipherSuite, NamedGroup
from rtp.dtls.errors import DtlsError
from rtp.srtp_profiles import SrtpProfile


class DtlsEvent:
    """Base class of DTLS connection events."""

    __slots__ = ()


@attrs.frozen
class HandshakeCompleted(DtlsEvent):
    srtp_profile: SrtpProfile | None
    cipher_suite: CipherSuite
    #: sha-256 fingerprint of the peer's certificate, SDP style ("AB:CD:...").
    peer_fingerprint: str
    group: NamedGroup
    extended_master_secret: bool


@attrs.frozen
class ApplicationDataReceived(DtlsEvent):
    data: bytes


@attrs.frozen
class ConnectionClosed(DtlsEvent):
    """An orderly close: close_notify was sent (``by_peer`` False) or received (True)."""

    alert: AlertDescription
    by_peer: bool


@attrs.frozen
class ConnectionFailed(DtlsEvent):
    """The connection died: ``error.alert`` is the alert sent, or received for DtlsAlertReceived."""

    error: DtlsError
