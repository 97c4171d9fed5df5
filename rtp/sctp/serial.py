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
