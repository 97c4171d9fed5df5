"""DTLS errors, each carrying the alert that reports it to the peer."""

from __future__ import annotations

from rtp.dtls.constants import AlertDescription
from rtp.errors import ParseError, ProtocolError


class DtlsError(ProtocolError):
    """A DTLS failure; ``alert`` is what we send (or, for received alerts, what we got)."""

    alert: AlertDescription = AlertDescription.INTERNAL_ERROR

    def __init__(self, message: str, alert: AlertDescription | None = None) -> None:
        super().__init__(message)
        if alert is not None:
            self.alert = alert


class DtlsParseError(ParseError):
    """Bytes that are not a well-formed DTLS record, handshake message or extension."""

    alert = AlertDescription.DECODE_ERROR


class DtlsHandshakeFailure(DtlsError):
    """The peer's handshake is well formed but not acceptable (bad signature, Finished, params)."""

    alert = AlertDescription.HANDSHAKE_FAILURE


class DtlsFingerprintMismatch(DtlsError):
    """The peer's certificate does not hash to the fingerprint(s) signalled in SDP."""

    alert = AlertDescription.BAD_CERTIFICATE


class DtlsHandshakeTimeout(DtlsError):
    """The handshake did not finish within the connection's total handshake timeout."""


class DtlsAlertReceived(DtlsError):
    """The peer sent a fatal alert; ``alert`` is its description (an int if unknown to us)."""

    def __init__(self, alert: "AlertDescription | int") -> None:
        name = alert.name.lower() if isinstance(alert, AlertDescription) else str(alert)
        ProtocolError.__init__(self, f"peer sent fatal alert {name}")
        self.alert = alert  # type: ignore[assignment]
