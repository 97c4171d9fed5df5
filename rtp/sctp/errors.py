"""Errors of the SCTP / data channel stack, inside the ``rtp.errors`` family."""

from rtp.errors import ParseError, ProtocolError


class SctpParseError(ParseError):
    """Bytes that are not a valid SCTP packet, chunk, parameter or DCEP message."""


class SctpProtocolError(ProtocolError):
    """A valid SCTP message or API call that the association cannot accept now."""
