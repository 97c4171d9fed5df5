"""SCTP packet and chunk codec (RFC 9260 §3, RFC 3758 FORWARD-TSN, RFC 6525 RE-CONFIG).

The codec is total: :func:`parse_packet` either returns a :class:`Packet` or
raises :class:`SctpParseError`. Every length field is checked against the bytes
actually present before it is used, so nothing is allocated in proportion to a
length an attacker claims. Chunks are plain attrs records; the association
decides what they mean.
"""

from __future__ import annotations

import enum
import struct
from typing import ClassVar, Union

import attrs

from rtp.sctp import crc32c as _crc
from rtp.sctp.errors import SctpParseError

COMMON_HEADER_LENGTH = 12
CHUNK_HEADER_LENGTH = 4
DATA_CHUNK_HEADER_LENGTH = 16

_COMMON = struct.Struct("!HHLL")
_CHUNK_HEADER = struct.Struct("!BBH")
_DATA = struct.Struct("!LHHL")
_INIT = struct.Struct("!LLHHL")
_SACK = struct.Struct("!LLHH")
_U32 = struct.Struct("!L")
_U16PAIR = struct.Struct("!HH")
_RECONFIG_RESET_OUT = struct.Struct("!LLL")
_RECONFIG_RESPONSE = struct.Struct("!LL")


class ChunkType(enum.IntEnum):
    DATA = 0
    INIT = 1
    INIT_ACK = 2
    SACK = 3
    HEARTBEAT = 4
    HEARTBEAT_ACK = 5
    ABORT = 6
    SHUTDOWN = 7
    SHUTDOWN_ACK = 8
    ERROR = 9
    COOKIE_ECHO = 10
    COOKIE_ACK = 11
    SHUTDOWN_COMPLETE = 14
    RECONFIG = 130
    FORWARD_TSN = 192


class ParamType(enum.IntEnum):
    """INIT / INIT-ACK / HEARTBEAT / RE-CONFIG parameter types we read or write."""

    HEARTBEAT_INFO = 1
    STATE_COOKIE = 7
    OUTGOING_SSN_RESET_REQUEST = 13
    INCOMING_SSN_RESET_REQUEST = 14
    SSN_TSN_RESET_REQUEST = 15
    RECONFIG_RESPONSE = 16
    ADD_OUTGOING_STREAMS_REQUEST = 17
    ADD_INCOMING_STREAMS_REQUEST = 18
    SUPPORTED_EXTENSIONS = 0x8008
    FORWARD_TSN_SUPPORTED = 0xC000


class ReconfigResult(enum.IntEnum):
    """RFC 6525 §4.4 Re-configuration Response results."""

    SUCCESS_NOTHING_TO_DO = 0
    SUCCESS_PERFORMED = 1
    DENIED = 2
    ERROR_WRONG_SSN = 3
    ERROR_REQUEST_IN_PROGRESS = 4
    ERROR_BAD_SEQUENCE_NUMBER = 5
    IN_PROGRESS = 6


# DATA chunk flags.
FLAG_END = 0x01
FLAG_BEGIN = 0x02
FLAG_UNORDERED = 0x04
# ABORT / SHUTDOWN-COMPLETE: the verification tag is the sender's own (reflected).
FLAG_T = 0x01

Params = list[tuple[int, bytes]]


def _pad4(length: int) -> int:
    return (length + 3) & ~3


def parse_params(body: bytes, offset: int = 0) -> Params:
    """TLV parameters as in INIT/HEARTBEAT/RE-CONFIG/error causes (§3.2.1), padding stripped."""
    params: Params = []
    end = len(body)
    while offset < end:
        if end - offset < 4:
            raise SctpParseError("truncated parameter header")
        ptype, plen = _U16PAIR.unpack_from(body, offset)
        if plen < 4 or offset + plen > end:
            raise SctpParseError(f"parameter length {plen} out of bounds")
        params.append((ptype, bytes(body[offset + 4 : offset + plen])))
        offset += _pad4(plen)
    return params


def serialize_params(params: Params) -> bytes:
    out = bytearray()
    for ptype, value in params:
        out += _U16PAIR.pack(ptype, 4 + len(value))
        out += value
        out += b"\x00" * (_pad4(len(value)) - len(value))
    return bytes(out)


@attrs.define(slots=True)
class DataChunk:
    type: ClassVar[int] = ChunkType.DATA
    flags: int
    tsn: int
    stream_id: int
    stream_seq: int
    ppid: int
    user_data: bytes

    def body(self) -> bytes:
        return _DATA.pack(self.tsn, self.stream_id, self.stream_seq, self.ppid) + self.user_data

    @classmethod
    def parse_body(cls, flags: int, body: bytes) -> DataChunk:
        if len(body) < _DATA.size + 1:
            raise SctpParseError("DATA chunk without user data")
        tsn, sid, ssn, ppid = _DATA.unpack_from(body)
        return cls(flags, tsn, sid, ssn, ppid, bytes(body[_DATA.size :]))


@attrs.define(slots=True)
class InitChunk:
    type: ClassVar[int] = ChunkType.INIT
    initiate_tag: int
    a_rwnd: int
    outbound_streams: int
    inbound_streams: int
    initial_tsn: int
    params: Params = attrs.field(factory=list)
    flags: int = 0

    def body(self) -> bytes:
        return (
            _INIT.pack(
                self.initiate_tag,
                self.a_rwnd,
                self.outbound_streams,
                self.inbound_streams,
                self.initial_tsn,
            )
            + serialize_params(self.params)
        )

    @classmethod
    def parse_body(cls, flags: int, body: bytes) -> InitChunk:
        if len(body) < _INIT.size:
            raise SctpParseError("truncated INIT")
        tag, rwnd, out_streams, in_streams, tsn = _INIT.unpack_from(body)
        return cls(tag, rwnd, out_streams, in_streams, tsn, parse_params(body, _INIT.size), flags)


@attrs.define(slots=True)
class InitAckChunk(InitChunk):
    type: ClassVar[int] = ChunkType.INIT_ACK


@attrs.define(slots=True)
class SackChunk:
    type: ClassVar[int] = ChunkType.SACK
    cumulative_tsn: int
    a_rwnd: int
    # Gap ack blocks as (start, end) offsets from cumulative_tsn, inclusive.
    gaps: list[tuple[int, int]] = attrs.field(factory=list)
    duplicates: list[int] = attrs.field(factory=list)
    flags: int = 0

    def body(self) -> bytes:
        out = bytearray(_SACK.pack(self.cumulative_tsn, self.a_rwnd, len(self.gaps), len(self.duplicates)))
        for start, end in self.gaps:
            out += _U16PAIR.pack(start, end)
        for tsn in self.duplicates:
            out += _U32.pack(tsn)
        return bytes(out)

    @classmethod
    def parse_body(cls, flags: int, body: bytes) -> SackChunk:
        if len(body) < _SACK.size:
            raise SctpParseError("truncated SACK")
        cum, rwnd, ngaps, ndups = _SACK.unpack_from(body)
        if len(body) != _SACK.size + 4 * (ngaps + ndups):
            raise SctpParseError("SACK block counts do not match its length")
        pos = _SACK.size
        gaps = [_U16PAIR.unpack_from(body, pos + 4 * i) for i in range(ngaps)]
        pos += 4 * ngaps
        dups = [_U32.unpack_from(body, pos + 4 * i)[0] for i in range(ndups)]
        return cls(cum, rwnd, gaps, dups, flags)


@attrs.define(slots=True)
class HeartbeatChunk:
    type: ClassVar[int] = ChunkType.HEARTBEAT
    params: Params = attrs.field(factory=list)
    flags: int = 0

    def body(self) -> bytes:
        return serialize_params(self.params)

    @classmethod
    def parse_body(cls, flags: int, body: bytes) -> HeartbeatChunk:
        return cls(parse_params(body), flags)


@attrs.define(slots=True)
class HeartbeatAckChunk(HeartbeatChunk):
    type: ClassVar[int] = ChunkType.HEARTBEAT_ACK


@attrs.define(slots=True)
class AbortChunk:
    type: ClassVar[int] = ChunkType.ABORT
    flags: int = 0
    # Error causes share the TLV layout of parameters (§3.3.10).
    causes: Params = attrs.field(factory=list)

    def body(self) -> bytes:
        return serialize_params(self.causes)

    @classmethod
    def parse_body(cls, flags: int, body: bytes) -> AbortChunk:
        return cls(flags, parse_params(body))


@attrs.define(slots=True)
class ErrorChunk(AbortChunk):
    type: ClassVar[int] = ChunkType.ERROR


@attrs.define(slots=True)
class ShutdownChunk:
    type: ClassVar[int] = ChunkType.SHUTDOWN
    cumulative_tsn: int
    flags: int = 0

    def body(self) -> bytes:
        return _U32.pack(self.cumulative_tsn)

    @classmethod
    def parse_body(cls, flags: int, body: bytes) -> ShutdownChunk:
        if len(body) != 4:
            raise SctpParseError("SHUTDOWN body must be 4 bytes")
        return cls(_U32.unpack(body)[0], flags)


@attrs.define(slots=True)
class _EmptyChunk:
    type: ClassVar[int]
    flags: int = 0

    def body(self) -> bytes:
        return b""

    @classmethod
    def parse_body(cls, flags: int, body: bytes) -> _EmptyChunk:
        if body:
            raise SctpParseError(f"chunk type {cls.type} carries no body")
        return cls(flags)


@attrs.define(slots=True)
class ShutdownAckChunk(_EmptyChunk):
    type: ClassVar[int] = ChunkType.SHUTDOWN_ACK


@attrs.define(slots=True)
class ShutdownCompleteChunk(_EmptyChunk):
    type: ClassVar[int] = ChunkType.SHUTDOWN_COMPLETE


@attrs.define(slots=True)
class CookieAckChunk(_EmptyChunk):
    type: ClassVar[int] = ChunkType.COOKIE_ACK


@attrs.define(slots=True)
class CookieEchoChunk:
    type: ClassVar[int] = ChunkType.COOKIE_ECHO
    cookie: bytes
    flags: int = 0

    def body(self) -> bytes:
        return self.cookie

    @classmethod
    def parse_body(cls, flags: int, body: bytes) -> CookieEchoChunk:
        return cls(bytes(body), flags)


@attrs.define(slots=True)
class ForwardTsnChunk:
    type: ClassVar[int] = ChunkType.FORWARD_TSN
    new_cumulative_tsn: int
    # (stream id, stream sequence) of the last skipped ordered message per stream.
    streams: list[tuple[int, int]] = attrs.field(factory=list)
    flags: int = 0

    def body(self) -> bytes:
        return _U32.pack(self.new_cumulative_tsn) + b"".join(_U16PAIR.pack(s, q) for s, q in self.streams)

    @classmethod
    def parse_body(cls, flags: int, body: bytes) -> ForwardTsnChunk:
        if len(body) < 4 or len(body) % 4:
            raise SctpParseError("FORWARD-TSN length must be 4 + 4n")
        streams = [_U16PAIR.unpack_from(body, pos) for pos in range(4, len(body), 4)]
        return cls(_U32.unpack_from(body)[0], streams, flags)


@attrs.define(slots=True)
class ReconfigChunk:
    type: ClassVar[int] = ChunkType.RECONFIG
    params: Params = attrs.field(factory=list)
    flags: int = 0

    def body(self) -> bytes:
        return serialize_params(self.params)

    @classmethod
    def parse_body(cls, flags: int, body: bytes) -> ReconfigChunk:
        params = parse_params(body)
        if not 1 <= len(params) <= 2:
            raise SctpParseError("RE-CONFIG carries one or two parameters")
        return cls(params, flags)


@attrs.define(slots=True)
class UnknownChunk:
    """A chunk type we do not implement; the top two type bits say what to do with it (§3.2)."""

    type: int
    flags: int
    payload: bytes

    def body(self) -> bytes:
        return self.payload


Chunk = Union[
    DataChunk,
    InitChunk,
    InitAckChunk,
    SackChunk,
    HeartbeatChunk,
    HeartbeatAckChunk,
    AbortChunk,
    ErrorChunk,
    ShutdownChunk,
    ShutdownAckChunk,
    ShutdownCompleteChunk,
    CookieEchoChunk,
    CookieAckChunk,
    ForwardTsnChunk,
    ReconfigChunk,
    UnknownChunk,
]

_CHUNK_CLASSES: dict[int, type] = {
    cls.type: cls
    for cls in (
        DataChunk,
        InitChunk,
        InitAckChunk,
        SackChunk,
        HeartbeatChunk,
        HeartbeatAckChunk,
        AbortChunk,
        ErrorChunk,
        ShutdownChunk,
        ShutdownAckChunk,
        ShutdownCompleteChunk,
        CookieEchoChunk,
        CookieAckChunk,
        ForwardTsnChunk,
        ReconfigChunk,
    )
}


@attrs.define(slots=True)
class OutgoingResetRequest:
    """RFC 6525 §4.1 Outgoing SSN Reset Request parameter."""

    request_seq: int
    response_seq: int
    last_tsn: int
    streams: list[int] = attrs.field(factory=list)

    def to_param(self) -> tuple[int, bytes]:
        value = _RECONFIG_RESET_OUT.pack(self.request_seq, self.response_seq, self.last_tsn)
        value += b"".join(struct.pack("!H", s) for s in self.streams)
        return (ParamType.OUTGOING_SSN_RESET_REQUEST, value)

    @classmethod
    def parse(cls, value: bytes) -> OutgoingResetRequest:
        if len(value) < _RECONFIG_RESET_OUT.size or (len(value) - _RECONFIG_RESET_OUT.size) % 2:
            raise SctpParseError("bad Outgoing SSN Reset Request length")
        req, resp, last = _RECONFIG_RESET_OUT.unpack_from(value)
        streams = [
            struct.unpack_from("!H", value, pos)[0] for pos in range(_RECONFIG_RESET_OUT.size, len(value), 2)
        ]
        return cls(req, resp, last, streams)


@attrs.define(slots=True)
class ReconfigResponse:
    """RFC 6525 §4.4 Re-configuration Response parameter (without the optional TSNs)."""

    response_seq: int
    result: int

    def to_param(self) -> tuple[int, bytes]:
        return (ParamType.RECONFIG_RESPONSE, _RECONFIG_RESPONSE.pack(self.response_seq, self.result))

    @classmethod
    def parse(cls, value: bytes) -> ReconfigResponse:
        # 8 bytes, or 16 with the sender's/receiver's next TSN which we ignore.
        if len(value) not in (8, 16):
            raise SctpParseError("bad Re-configuration Response length")
        return cls(*_RECONFIG_RESPONSE.unpack_from(value))


@attrs.define(slots=True)
class Packet:
    source_port: int
    destination_port: int
    verification_tag: int
    chunks: list[Chunk] = attrs.field(factory=list)


def parse_chunks(data: bytes, offset: int = COMMON_HEADER_LENGTH) -> list[Chunk]:
    chunks: list[Chunk] = []
    end = len(data)
    while offset < end:
        if end - offset < CHUNK_HEADER_LENGTH:
            raise SctpParseError("truncated chunk header")
        ctype, flags, length = _CHUNK_HEADER.unpack_from(data, offset)
        if length < CHUNK_HEADER_LENGTH or offset + length > end:
            raise SctpParseError(f"chunk length {length} out of bounds")
        body = data[offset + CHUNK_HEADER_LENGTH : offset + length]
        cls = _CHUNK_CLASSES.get(ctype)
        if cls is None:
            chunks.append(UnknownChunk(ctype, flags, bytes(body)))
        else:
            chunks.append(cls.parse_body(flags, body))
        # The last chunk's padding may be missing; anything else must be padded.
        offset += _pad4(length)
    return chunks


def parse_packet(data: bytes, verify_checksum: bool = True) -> Packet:
    """Parse one SCTP packet (as carried in one DTLS record); raises SctpParseError only."""
    if len(data) < COMMON_HEADER_LENGTH + CHUNK_HEADER_LENGTH:
        raise SctpParseError("packet shorter than common header plus one chunk")
    src, dst, tag, checksum = _COMMON.unpack_from(data)
    if verify_checksum:
        # The checksum field is zero while computing; the CRC goes on the wire little-endian
        # (RFC 9260 appendix A reflects the bits; every implementation stores it this way).
        computed = _crc.packet_crc32c(bytes(data[:8]) + b"\x00\x00\x00\x00" + bytes(data[12:]))
        if computed != int.from_bytes(data[8:12], "little"):
            raise SctpParseError("bad CRC32c")
    return Packet(src, dst, tag, parse_chunks(data))


def serialize_chunk(chunk: Chunk) -> bytes:
    body = chunk.body()
    length = CHUNK_HEADER_LENGTH + len(body)
    if length > 0xFFFF:
        raise SctpParseError("chunk too long")
    return _CHUNK_HEADER.pack(chunk.type, chunk.flags, length) + body + b"\x00" * (_pad4(length) - length)


def serialize_packet(packet: Packet) -> bytes:
    return serialize_packet_from_chunks(
        packet.source_port,
        packet.destination_port,
        packet.verification_tag,
        b"".join(serialize_chunk(c) for c in packet.chunks),
    )


def serialize_packet_from_chunks(src: int, dst: int, tag: int, chunk_bytes: bytes) -> bytes:
    """Common header + already serialized chunks, with the CRC32c filled in."""
    header = _COMMON.pack(src, dst, tag, 0)
    crc = _crc.packet_crc32c(header + chunk_bytes)
    return header[:8] + crc.to_bytes(4, "little") + chunk_bytes
