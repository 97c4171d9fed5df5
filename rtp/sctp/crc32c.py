"""CRC32c (Castagnoli), the SCTP checksum of RFC 9260 appendix A / RFC 3309.

Table-driven, reflected polynomial 0x82F63B78; init and final xor 0xFFFFFFFF.
"""

from __future__ import annotations

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
