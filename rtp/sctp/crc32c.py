"""CRC32c (Castagnoli), the SCTP checksum of RFC 9260 appendix A / RFC 3309.

:func:`crc32c` is our own table-driven implementation (reflected polynomial
0x82F63B78; init and final xor 0xFFFFFFFF) and the reference. A pure-Python
byte loop costs ~150 µs per full SCTP packet, which dominates the data path, so
:func:`packet_crc32c` uses the ``google_crc32c`` C extension when it happens to be
installed (aiortc pulls it in) and falls back to ours otherwise; the tests check
both give the same answer.
"""

from __future__ import annotations

from typing import Callable

_POLY_REFLECTED = 0x82F63B78


def _make_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _POLY_REFLECTED if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_TABLE = _make_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC32c of ``data``; pass a previous result as ``crc`` to continue a running checksum."""
    table = _TABLE
    crc ^= 0xFFFFFFFF
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _accelerated() -> Callable[[bytes], int]:
    try:
        import google_crc32c
    except ImportError:
        return crc32c
    if getattr(google_crc32c, "implementation", "c") != "c":
        return crc32c  # its own pure-Python fallback is no faster than ours
    return google_crc32c.value  # type: ignore[no-any-return]


packet_crc32c: Callable[[bytes], int] = _accelerated()
