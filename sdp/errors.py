"""Errors raised by ``sdp/``; they belong to the media stack's family in ``rtp.errors``."""

from rtp.errors import ParseError, ProtocolError, RtpStackError


class SdpParseError(ParseError):
    """Text that is not a well-formed session description (RFC 8866)."""


class NegotiationError(ProtocolError):
    """A well-formed description that cannot be accepted in offer/answer (RFC 3264, JSEP)."""


class TransceiverInvariantError(RtpStackError, AssertionError):
    """Internal bug: an operation would break a transceiver-table invariant.

    The main one: an offer must never carry two live m-lines for one track id.
    This is not a peer's fault, so it is not a ProtocolError.
    """


__all__ = ["SdpParseError", "NegotiationError", "TransceiverInvariantError"]
