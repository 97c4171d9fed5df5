"""Serial number arithmetic (RFC 1982) for 32-bit TSNs and 16-bit SSNs."""

from __future__ import annotations

MASK32 = 0xFFFFFFFF
MASK16 = 0xFFFF


def tsn_gt(a: int, b: int) -> bool:
    """a is after b in 32-bit serial order."""
    return a != b and ((a - b) & MASK32) < 0x80000000


def tsn_ge(a: int, b: int) -> bool:
    return a == b or tsn_gt(a, b)


def tsn_add(a: int, n: int) -> int:
    return (a + n) & MASK32


def tsn_diff(a: int, b: int) -> int:
    """How far a is after b (meaningful when tsn_ge(a, b))."""
    return (a - b) & MASK32


def ssn_gt(a: int, b: int) -> bool:
    return a != b and ((a - b) & MASK16) < 0x8000


def ssn_ge(a: int, b: int) -> bool:
    return a == b or ssn_gt(a, b)


class TsnUnwrapper:
    """Maps 32-bit TSNs onto unbounded integers in the same order.

    Each TSN is read as the nearer of its two possible positions around the latest one
    seen, so the mapping holds while every TSN passed in is within 2**31 of the newest —
    which the receive window (far smaller) guarantees. Unwrapped TSNs can be compared,
    subtracted and used as dict keys and heap keys without serial arithmetic.
    """

    __slots__ = ("_raw", "_value")

    def __init__(self) -> None:
        self._raw: int | None = None
        self._value = 0

    def unwrap(self, tsn: int) -> int:
        raw = self._raw
        if raw is None:
            self._raw = self._value = tsn
            return tsn
        delta = (tsn - raw) & MASK32
        if delta >= 0x80000000:
            return self._value + delta - (1 << 32)
        value = self._value + delta
        self._raw, self._value = tsn, value
        return value
