"""DTLS 1.2 (RFC 6347) for DTLS-SRTP, written on ``cryptography`` primitives, sans-IO."""

from rtp.dtls.certificate import DtlsCertificate, certificate_fingerprint, fingerprints_match
from rtp.dtls.connection import DEFAULT_CIPHER_SUITES, DtlsConnection, DtlsCounters, DtlsRole, DtlsState
from rtp.dtls.constants import AlertDescription, CipherSuite, NamedGroup
from rtp.dtls.cookie import CookieVerdict, DtlsCookieResponder
from rtp.dtls.errors import (
    DtlsAlertReceived,
    DtlsError,
    DtlsFingerprintMismatch,
    DtlsHandshakeFailure,
    DtlsHandshakeTimeout,
    DtlsParseError,
)
from rtp.dtls.events import (
    ApplicationDataReceived,
    ConnectionClosed,
    ConnectionFailed,
    DtlsEvent,
    HandshakeCompleted,
)

__all__ = [
    "AlertDescription",
    "ApplicationDataReceived",
    "CipherSuite",
    "ConnectionClosed",
    "ConnectionFailed",
    "CookieVerdict",
    "DEFAULT_CIPHER_SUITES",
    "DtlsAlertReceived",
    "DtlsCertificate",
    "DtlsConnection",
    "DtlsCookieResponder",
    "DtlsCounters",
    "DtlsError",
    "DtlsEvent",
    "DtlsFingerprintMismatch",
    "DtlsHandshakeFailure",
    "DtlsHandshakeTimeout",
    "DtlsParseError",
    "DtlsRole",
    "DtlsState",
    "HandshakeCompleted",
    "NamedGroup",
    "certificate_fingerprint",
    "fingerprints_match",
]
