"""DTLS record layer framing (RFC 6347 §4.1) and the anti-replay window (§4.1.2.6)."""

from __future__ import annotations

import struct

from rtp.dtls.errors import DtlsParseError

RECORD_HEADER_LENGTH = 13
#: Largest record payload we accept: 2^14 plaintext plus the RFC 5246 §6.2.3 expansion allowance.
MAX_RECORD_PAYLOAD = 2**14 + 2048
MAX_SEQUENCE = 2**48 - 1

#: type, version, epoch, sequence high 16 bits, sequence low 32 bits, length.
RECORD_HEADER = struct.Struct(">BHHHIH")
_HEADER = RECORD_HEADER


def encode_record_header(content_type: int, version: int, epoch: int, sequence: int, length: int) -> bytes:
    return _HEADER.pack(content_type, version, epoch, sequence >> 32, sequence & 0xFFFFFFFF, length)


def split_records(datagram: bytes) -> tuple[list[tuple[int, int, int, int, bytes]], bool]:
    """Records of a datagram as (content_type, version, epoch, sequence, payload) tuples.

    Plain tuples because this runs per packet. The second item is True when the datagram
    ended in bytes that are not a whole record; RFC 6347 §4.1.2.7 says to drop those and
    keep the records before them.
    """
    records = []
    pos = 0
    end = len(datagram)
    while pos < end:
        if end - pos < RECORD_HEADER_LENGTH:
            return records, True
        content_type, version, epoch, seq_hi, seq_lo, length = _HEADER.unpack_from(datagram, pos)
        body_start = pos + RECORD_HEADER_LENGTH
        if length > MAX_RECORD_PAYLOAD or body_start + length > end:
            return records, True
        records.append((content_type, version, epoch, (seq_hi << 32) | seq_lo, datagram[body_start : body_start + length]))
        pos = body_start + length
    return records, False


def parse_record(data: bytes) -> tuple[int, int, int, int, bytes]:
    """Exactly one record (for tests and tools); malformed input raises DtlsParseError."""
    records, truncated = split_records(data)
    if truncated or len(records) != 1:
        raise DtlsParseError("not exactly one well-formed DTLS record")
    return records[0]


class ReplayWindow:
    """64-record sliding window: remembers the highest sequence seen and a bitmap behind it.

    ``is_fresh`` is checked before decryption and ``mark`` only after the record
    authenticated, so forged records cannot advance the window (RFC 6347 §4.1.2.6).
    """

    __slots__ = ("highest", "bitmap")
    SIZE = 64

    def __init__(self) -> None:
        self.highest = -1
        self.bitmap = 0

    def is_fresh(self, sequence: int) -> bool:
        if sequence > self.highest:
            return True
        offset = self.highest - sequence
        if offset >= self.SIZE:
            return False
        return not (self.bitmap >> offset) & 1

    def mark(self, sequence: int) -> None:
        if sequence > self.highest:
            shift = sequence - self.highest
            self.bitmap = ((self.bitmap << shift) | 1) & 0xFFFFFFFFFFFFFFFF if shift < self.SIZE else 1
            self.highest = sequence
        else:
            self.bitmap |= 1 << (self.highest - sequence)
