"""Wrap-around arithmetic for RTP sequence numbers (16 bit) and timestamps (32 bit).

RTP counters wrap, so "newer" is decided by the shortest signed distance
(RFC 1982 serial-number style) and long-lived state keeps *extended*
(unwrapped) integers that only grow.
"""

from __future__ import annotations

SEQ_MOD = 1 << 16
SEQ_HALF = 1 << 15
TIMESTAMP_MOD = 1 << 32
TIMESTAMP_HALF = 1 << 31


def seq_diff(a: int, b: int) -> int:
    """Signed distance ``a - b`` between two 16-bit sequence numbers, in [-32768, 32767]."""
    d = (a - b) & 0xFFFF
    return d - SEQ_MOD if d >= SEQ_HALF else d


def seq_newer(a: int, b: int) -> bool:
    """True when ``a`` comes after ``b`` (shortest way round the 16-bit circle).

    Exactly half a circle apart is ambiguous; like libwebrtc we break the tie
    towards the numerically larger value so the relation stays antisymmetric.
    """
    d = (a - b) & 0xFFFF
    if d == SEQ_HALF:
        return a > b
    return 0 < d < SEQ_HALF


def timestamp_diff(a: int, b: int) -> int:
    """Signed distance ``a - b`` between two 32-bit RTP timestamps."""
    d = (a - b) & 0xFFFFFFFF
    return d - TIMESTAMP_MOD if d >= TIMESTAMP_HALF else d


class _Unwrapper:
    """Maps a wrapping counter of ``bits`` bits onto an unbounded integer line.

    The first value is taken as is; later values land at the extended value
    nearest to the newest one seen so far. Reordered (older) values do not move
    the reference, so a burst of late packets cannot drag the window back.
    Values from before the first one can come out negative.
    """

    __slots__ = ("_mask", "_half", "_mod", "_last")

    def __init__(self, bits: int) -> None:
        self._mod = 1 << bits
        self._mask = self._mod - 1
        self._half = self._mod >> 1
        self._last: int | None = None

    @property
    def last(self) -> int | None:
        """The newest extended value seen, or None before the first."""
        return self._last

    def unwrap(self, value: int) -> int:
        last = self._last
        if last is None:
            self._last = value & self._mask
            return self._last
        d = (value - last) & self._mask
        if d >= self._half:
            d -= self._mod
        extended = last + d
        if extended > last:
            self._last = extended
        return extended

    def resume(self, last: int) -> None:
        """Continue from `last` as the newest extended value seen (state kept elsewhere in the
        meantime: the server's compiled fan-out unwraps in its place)."""
        self._last = last

    def peek(self, value: int) -> int:
        """Extended value ``value`` would unwrap to, without recording it."""
        last = self._last
        if last is None:
            return value & self._mask
        d = (value - last) & self._mask
        if d >= self._half:
            d -= self._mod
        return last + d


class SequenceUnwrapper(_Unwrapper):
    """Unwraps 16-bit RTP sequence numbers."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(16)


class TimestampUnwrapper(_Unwrapper):
    """Unwraps 32-bit RTP timestamps."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(32)
