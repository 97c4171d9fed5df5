"""The exception family of the sans-IO media stack.

Every parser in ``rtp/`` is total: malformed input raises a subclass of
:class:`ParseError` and nothing else (no ``IndexError``, ``struct.error``...).
Protocol state machines raise subclasses of :class:`ProtocolError` for
violations they detect; callers drop and count them.
"""


class RtpStackError(Exception):
    """Base of every error raised on purpose by ``rtp/``."""


class ParseError(RtpStackError, ValueError):
    """Bytes that do not form a valid message of the format being parsed."""


class ProtocolError(RtpStackError):
    """A well-formed message that is not acceptable in the current state."""
