"""RTP packets (RFC 3550 §5.1) with RFC 8285 header extensions.

Two ways in:

* :class:`RtpPacket` — a full, typed decode for code that needs every field
  (tests, depacketisers, the RTX unwrap).
* Module-level functions (``read_*``, :func:`rewrite_header`,
  :func:`find_extension`) for the forwarder: they read or patch the few bytes
  they need straight out of the datagram and build no objects on the way,
  because the forwarder touches every packet once per subscriber.
"""

from __future__ import annotations

import struct
from typing import Optional, Union

import attrs

from rtp.errors import ParseError

RTP_VERSION = 2
RTP_HEADER_SIZE = 12

#: RFC 8285 §4.2 one-byte header profile marker.
ONE_BYTE_PROFILE = 0xBEDE
#: RFC 8285 §4.3 two-byte header profile: 0x100 followed by 4 "appbits".
TWO_BYTE_PROFILE = 0x1000
_TWO_BYTE_PROFILE_MASK = 0xFFF0

Buffer = Union[bytes, bytearray, memoryview]

_HEADER = struct.Struct("!BBHII")
_EXT_HEADER = struct.Struct("!HH")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_REWRITE = struct.Struct("!BHII")  # marker|pt, seq, timestamp, ssrc at offset 1


class RtpParseError(ParseError):
    """Bytes that are not a well-formed RTP packet."""


@attrs.define(frozen=True)
class GenericExtension:
    """An RFC 3550 §5.3.1 header extension whose profile is not RFC 8285's: kept raw.

    ``data`` must be a multiple of 4 octets long, as the length field counts words.
    """

    profile: int
    data: bytes


@attrs.define(eq=True)
class RtpPacket:
    """One RTP packet.

    ``extensions`` holds RFC 8285 elements as an insertion-ordered id -> value
    mapping; :meth:`serialize` picks the one-byte form when every element fits
    it and the two-byte form otherwise. ``generic_extension`` carries a
    non-RFC 8285 extension block unchanged; a packet has one or the other.
    ``padding_size`` counts all padding octets including the final count octet.
    """

    payload_type: int = 0
    sequence_number: int = 0
    timestamp: int = 0
    ssrc: int = 0
    marker: bool = False
    csrcs: list[int] = attrs.field(factory=list)
    extensions: dict[int, bytes] = attrs.field(factory=dict)
    payload: bytes = b""
    padding_size: int = 0
    generic_extension: Optional[GenericExtension] = None

    @property
    def version(self) -> int:
        return RTP_VERSION

    @property
    def padding(self) -> bool:
        return self.padding_size > 0

    @classmethod
    def parse(cls, data: Buffer) -> "RtpPacket":
        return parse(data)

    def serialize(self) -> bytes:
        if not 0 <= self.payload_type <= 127:
            raise ValueError(f"payload type {self.payload_type} out of range 0..127")
        if len(self.csrcs) > 15:
            raise ValueError("at most 15 CSRCs fit the CC field")
        if not 0 <= self.padding_size <= 255:
            raise ValueError("padding_size must be 0..255")
        ext_block = b""
        if self.extensions and self.generic_extension is not None:
            raise ValueError("a packet carries either RFC 8285 extensions or a generic one")
        if self.extensions:
            ext_block = encode_extension_block(self.extensions)
        elif self.generic_extension is not None:
            gen = self.generic_extension
            if len(gen.data) % 4 or len(gen.data) > 0x3FFFC:
                raise ValueError("generic extension data must be whole 32-bit words")
            ext_block = _EXT_HEADER.pack(gen.profile, len(gen.data) // 4) + gen.data
        first = (
            (RTP_VERSION << 6)
            | (0x20 if self.padding_size else 0)
            | (0x10 if ext_block else 0)
            | len(self.csrcs)
        )
        parts = [
            _HEADER.pack(
                first,
                (0x80 if self.marker else 0) | self.payload_type,
                self.sequence_number,
                self.timestamp,
                self.ssrc,
            )
        ]
        parts.extend(_U32.pack(c) for c in self.csrcs)
        parts.append(ext_block)
        parts.append(self.payload)
        if self.padding_size:
            parts.append(bytes(self.padding_size - 1) + bytes((self.padding_size,)))
        return b"".join(parts)


def parse(data: Buffer) -> RtpPacket:
    """Decode one RTP packet; raises :class:`RtpParseError` on anything malformed."""
    size = len(data)
    if size < RTP_HEADER_SIZE:
        raise RtpParseError(f"RTP packet of {size} bytes is shorter than the fixed header")
    first, second, seq, ts, ssrc = _HEADER.unpack_from(data, 0)
    if first >> 6 != RTP_VERSION:
        raise RtpParseError(f"RTP version {first >> 6} is not 2")
    cc = first & 0x0F
    pos = RTP_HEADER_SIZE + 4 * cc
    if size < pos:
        raise RtpParseError("RTP CSRC list runs past the end of the packet")
    csrcs = [_U32.unpack_from(data, RTP_HEADER_SIZE + 4 * i)[0] for i in range(cc)]

    extensions: dict[int, bytes] = {}
    generic = None
    if first & 0x10:
        if size < pos + 4:
            raise RtpParseError("RTP extension header runs past the end of the packet")
        profile, words = _EXT_HEADER.unpack_from(data, pos)
        start = pos + 4
        end = start + 4 * words
        if size < end:
            raise RtpParseError("RTP extension block runs past the end of the packet")
        if profile == ONE_BYTE_PROFILE or profile & _TWO_BYTE_PROFILE_MASK == TWO_BYTE_PROFILE:
            extensions = _decode_elements(data, start, end, profile == ONE_BYTE_PROFILE)
        else:
            generic = GenericExtension(profile, bytes(data[start:end]))
        pos = end

    padding_size = 0
    if first & 0x20:
        padding_size = data[size - 1]
        if padding_size == 0 or padding_size > size - pos:
            raise RtpParseError(f"RTP padding count {padding_size} is invalid")
    return RtpPacket(
        payload_type=second & 0x7F,
        sequence_number=seq,
        timestamp=ts,
        ssrc=ssrc,
        marker=bool(second & 0x80),
        csrcs=csrcs,
        extensions=extensions,
        payload=bytes(data[pos : size - padding_size]),
        padding_size=padding_size,
        generic_extension=generic,
    )


def _decode_elements(data: Buffer, pos: int, end: int, one_byte: bool) -> dict[int, bytes]:
    """RFC 8285 elements of one extension block; the first occurrence of an id wins."""
    out: dict[int, bytes] = {}
    while pos < end:
        b = data[pos]
        if b == 0:  # padding octet between or after elements
            pos += 1
            continue
        if one_byte:
            ext_id = b >> 4
            if ext_id == 15:
                # RFC 8285 §4.2: id 15 means stop processing the block here.
                break
            if ext_id == 0:
                raise RtpParseError("one-byte extension id 0 is only valid as a zero padding octet")
            length = (b & 0x0F) + 1
            pos += 1
        else:
            if pos + 1 >= end:
                raise RtpParseError("two-byte extension element header is truncated")
            ext_id = b
            length = data[pos + 1]
            pos += 2
        if pos + length > end:
            raise RtpParseError(f"extension element {ext_id} runs past its block")
        if ext_id not in out:
            out[ext_id] = bytes(data[pos : pos + length])
        pos += length
    return out


def encode_extension_block(extensions: dict[int, bytes]) -> bytes:
    """The RFC 8285 extension block (profile, length, elements, zero padding) for ``extensions``."""
    one_byte = all(1 <= i <= 14 and 1 <= len(v) <= 16 for i, v in extensions.items())
    parts = []
    if one_byte:
        profile = ONE_BYTE_PROFILE
        for ext_id, value in extensions.items():
            parts.append(bytes(((ext_id << 4) | (len(value) - 1),)))
            parts.append(value)
    else:
        profile = TWO_BYTE_PROFILE
        for ext_id, value in extensions.items():
            if not 1 <= ext_id <= 255 or len(value) > 255:
                raise ValueError(f"extension {ext_id} with {len(value)} bytes fits no RFC 8285 form")
            parts.append(bytes((ext_id, len(value))))
            parts.append(value)
    body = b"".join(parts)
    body += bytes(-len(body) % 4)
    if len(body) > 0x3FFFC:
        raise ValueError("extension block longer than the 16-bit word count allows")
    return _EXT_HEADER.pack(profile, len(body) // 4) + body


def append_extension_element(block: Buffer, ext_id: int, value: bytes) -> Optional[bytes]:
    """`block` (a whole RFC 8285 extension block, its 4-octet header included) grown by the
    element `ext_id` = `value` after its elements (and their padding, which both forms allow
    between elements), zero-padded to a word; None when the block's form cannot carry it or
    its word count would overflow."""
    if len(block) < 4:
        return None
    profile = (block[0] << 8) | block[1]
    if profile == ONE_BYTE_PROFILE and 1 <= ext_id <= 14 and 1 <= len(value) <= 16:
        element = bytes(((ext_id << 4) | (len(value) - 1),)) + value
    elif profile & 0xFFF0 == TWO_BYTE_PROFILE and 1 <= ext_id <= 255 and len(value) <= 255:
        element = bytes((ext_id, len(value))) + value
    else:
        return None
    element += bytes(-len(element) % 4)
    words = ((block[2] << 8) | block[3]) + len(element) // 4
    if words > 0xFFFF:
        return None
    return bytes(block[:2]) + words.to_bytes(2, "big") + bytes(block[4:]) + element


# --- forwarder fast path -------------------------------------------------------------------


def is_rtp_header_valid(data: Buffer) -> bool:
    """Cheap sanity check before the ``read_*`` functions: long enough and version 2."""
    return len(data) >= RTP_HEADER_SIZE and data[0] >> 6 == RTP_VERSION


def _check(data: Buffer) -> None:
    if len(data) < RTP_HEADER_SIZE or data[0] >> 6 != RTP_VERSION:
        raise RtpParseError("not an RTP packet (too short or version is not 2)")


def read_ssrc(data: Buffer) -> int:
    _check(data)
    return _U32.unpack_from(data, 8)[0]


def read_sequence_number(data: Buffer) -> int:
    _check(data)
    return (data[2] << 8) | data[3]


def read_timestamp(data: Buffer) -> int:
    _check(data)
    return _U32.unpack_from(data, 4)[0]


def read_marker(data: Buffer) -> bool:
    _check(data)
    return data[1] >= 0x80


def read_payload_type(data: Buffer) -> int:
    _check(data)
    return data[1] & 0x7F


def rewrite_header(buf: bytearray, ssrc: int, seq: int, timestamp: int, payload_type: int) -> None:
    """Overwrite SSRC, sequence number, timestamp and payload type in place; the marker bit stays.

    Values are masked to their field widths, so callers may pass running
    (unwrapped) counters.
    """
    if len(buf) < RTP_HEADER_SIZE or buf[0] >> 6 != RTP_VERSION:
        raise RtpParseError("not an RTP packet (too short or version is not 2)")
    _REWRITE.pack_into(
        buf,
        1,
        (buf[1] & 0x80) | (payload_type & 0x7F),
        seq & 0xFFFF,
        timestamp & 0xFFFFFFFF,
        ssrc & 0xFFFFFFFF,
    )


def payload_offset(data: Buffer) -> int:
    """Index of the first payload octet (after CSRCs and the extension block)."""
    _check(data)
    first = data[0]
    pos = RTP_HEADER_SIZE + 4 * (first & 0x0F)
    if first & 0x10:
        if len(data) < pos + 4:
            raise RtpParseError("RTP extension header runs past the end of the packet")
        pos += 4 + 4 * ((data[pos + 2] << 8) | data[pos + 3])
    if len(data) < pos:
        raise RtpParseError("RTP header runs past the end of the packet")
    return pos


def find_extension_span(data: Buffer, ext_id: int) -> Optional[tuple[int, int]]:
    """(offset, length) of the value of RFC 8285 element ``ext_id``, or None when absent.

    Walks the block in place. Offsets let the forwarder patch a value (for
    example the transport-wide sequence number) inside a ``bytearray``.
    """
    size = len(data)
    if size < RTP_HEADER_SIZE or data[0] >> 6 != RTP_VERSION:
        raise RtpParseError("not an RTP packet (too short or version is not 2)")
    first = data[0]
    if not first & 0x10:
        return None
    pos = RTP_HEADER_SIZE + 4 * (first & 0x0F)
    if size < pos + 4:
        raise RtpParseError("RTP extension header runs past the end of the packet")
    profile = (data[pos] << 8) | data[pos + 1]
    end = pos + 4 + 4 * ((data[pos + 2] << 8) | data[pos + 3])
    if size < end:
        raise RtpParseError("RTP extension block runs past the end of the packet")
    pos += 4
    if profile == ONE_BYTE_PROFILE:
        while pos < end:
            b = data[pos]
            if b == 0:
                pos += 1
                continue
            found = b >> 4
            if found == 15:
                return None
            if found == 0:
                raise RtpParseError("one-byte extension id 0 is only valid as a zero padding octet")
            length = (b & 0x0F) + 1
            pos += 1
            if pos + length > end:
                raise RtpParseError(f"extension element {found} runs past its block")
            if found == ext_id:
                return pos, length
            pos += length
        return None
    if profile & _TWO_BYTE_PROFILE_MASK == TWO_BYTE_PROFILE:
        while pos < end:
            found = data[pos]
            if found == 0:
                pos += 1
                continue
            if pos + 1 >= end:
                raise RtpParseError("two-byte extension element header is truncated")
            length = data[pos + 1]
            pos += 2
            if pos + length > end:
                raise RtpParseError(f"extension element {found} runs past its block")
            if found == ext_id:
                return pos, length
            pos += length
    return None


def find_extension(data: Buffer, ext_id: int) -> Optional[Buffer]:
    """Value of RFC 8285 element ``ext_id`` as a slice of ``data`` (same type), or None."""
    span = find_extension_span(data, ext_id)
    if span is None:
        return None
    start, length = span
    return data[start : start + length]
