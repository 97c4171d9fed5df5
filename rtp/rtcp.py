"""RTCP compound packets (RFC 3550 §6) and the feedback messages an SFU exchanges.

:func:`parse_rtcp` splits a compound datagram into typed packets; every type
has ``serialize() -> bytes`` producing one complete RTCP packet (header
included) and :func:`serialize_rtcp` joins them back into a compound.

Covered: SR, RR, SDES, BYE (RFC 3550); generic NACK and PLI (RFC 4585); FIR
(RFC 5104); REMB (draft-alvestrand-rmcat-remb); transport-wide congestion
control feedback (draft-holmer-rmcat-transport-wide-cc-extensions-01).
Anything else, including unknown feedback formats, comes back as
:class:`RtcpUnknown` and serialises byte-identical.
"""

from __future__ import annotations

import enum
import struct
from typing import Iterable, NamedTuple, Optional, Sequence, Union

import attrs

from rtp.errors import ParseError
from rtp.packet import Buffer

RTCP_VERSION = 2


class RtcpParseError(ParseError):
    """Bytes that are not a well-formed RTCP (compound) packet."""


class RtcpType(enum.IntEnum):
    SR = 200
    RR = 201
    SDES = 202
    BYE = 203
    APP = 204
    RTPFB = 205
    PSFB = 206
    XR = 207


class RtpfbFormat(enum.IntEnum):
    NACK = 1
    TRANSPORT_CC = 15


class PsfbFormat(enum.IntEnum):
    PLI = 1
    FIR = 4
    AFB = 15  # application layer feedback; REMB is one


class SdesItemType(enum.IntEnum):
    END = 0
    CNAME = 1
    NAME = 2
    EMAIL = 3
    PHONE = 4
    LOC = 5
    TOOL = 6
    NOTE = 7
    PRIV = 8


_U32 = struct.Struct("!I")
_HDR = struct.Struct("!BBH")
_TWO_U32 = struct.Struct("!II")
_SENDER_INFO = struct.Struct("!IQIII")  # ssrc, ntp, rtp ts, packets, octets
_REPORT_BLOCK = struct.Struct("!IB3sIIII")

_MAX_PACKETS_LOST = (1 << 23) - 1
_MIN_PACKETS_LOST = -(1 << 23)


def compact_ntp(ntp_timestamp: int) -> int:
    """The middle 32 bits of a 64-bit NTP timestamp, as carried in LSR (RFC 3550 §6.4.1)."""
    return (ntp_timestamp >> 16) & 0xFFFFFFFF


def _header(packet_type: int, count: int, body: bytes, padded: bool = False) -> bytes:
    """Prefix ``body`` with an RTCP header, adding RFC 3550 padding to reach a word boundary."""
    if not 0 <= count <= 31:
        raise ValueError(f"RTCP count/format {count} does not fit 5 bits")
    pad = -len(body) % 4
    if pad:
        body = body + bytes(pad - 1) + bytes((pad,))
        padded = True
    words = len(body) // 4
    if words > 0xFFFF:
        raise ValueError("RTCP packet too long for its 16-bit length field")
    return _HDR.pack(0x80 | (0x20 if padded else 0) | count, packet_type, words) + body


# --- SR / RR ------------------------------------------------------------------------------


@attrs.define
class ReportBlock:
    """One reception report (RFC 3550 §6.4.1). ``packets_lost`` is the signed 24-bit cumulative count."""

    ssrc: int
    fraction_lost: int = 0
    packets_lost: int = 0
    highest_sequence: int = 0
    jitter: int = 0
    lsr: int = 0
    dlsr: int = 0

    def serialize(self) -> bytes:
        lost = max(_MIN_PACKETS_LOST, min(_MAX_PACKETS_LOST, self.packets_lost)) & 0xFFFFFF
        return _REPORT_BLOCK.pack(
            self.ssrc,
            self.fraction_lost,
            lost.to_bytes(3, "big"),
            self.highest_sequence,
            self.jitter,
            self.lsr,
            self.dlsr,
        )


def _parse_report_blocks(body: Buffer, pos: int, count: int) -> list[ReportBlock]:
    blocks = []
    for _ in range(count):
        ssrc, fraction, lost3, highest, jitter, lsr, dlsr = _REPORT_BLOCK.unpack_from(body, pos)
        lost = int.from_bytes(lost3, "big")
        if lost & 0x800000:
            lost -= 1 << 24
        blocks.append(ReportBlock(ssrc, fraction, lost, highest, jitter, lsr, dlsr))
        pos += 24
    return blocks


@attrs.define
class SenderReport:
    ssrc: int
    ntp_timestamp: int = 0
    rtp_timestamp: int = 0
    packet_count: int = 0
    octet_count: int = 0
    reports: list[ReportBlock] = attrs.field(factory=list)
    #: profile-specific extension words after the report blocks, kept raw
    profile_extension: bytes = b""

    def serialize(self) -> bytes:
        body = _SENDER_INFO.pack(
            self.ssrc, self.ntp_timestamp, self.rtp_timestamp, self.packet_count, self.octet_count
        )
        body += b"".join(r.serialize() for r in self.reports) + self.profile_extension
        return _header(RtcpType.SR, len(self.reports), body)


@attrs.define
class ReceiverReport:
    ssrc: int
    reports: list[ReportBlock] = attrs.field(factory=list)
    profile_extension: bytes = b""

    def serialize(self) -> bytes:
        body = _U32.pack(self.ssrc) + b"".join(r.serialize() for r in self.reports)
        return _header(RtcpType.RR, len(self.reports), body + self.profile_extension)


def _parse_sr(body: Buffer, count: int) -> SenderReport:
    need = 24 + 24 * count
    if len(body) < need:
        raise RtcpParseError(f"SR with {count} report blocks needs {need} bytes, has {len(body)}")
    ssrc, ntp, rtp_ts, packets, octets = _SENDER_INFO.unpack_from(body, 0)
    return SenderReport(
        ssrc, ntp, rtp_ts, packets, octets, _parse_report_blocks(body, 24, count), bytes(body[need:])
    )


def _parse_rr(body: Buffer, count: int) -> ReceiverReport:
    need = 4 + 24 * count
    if len(body) < need:
        raise RtcpParseError(f"RR with {count} report blocks needs {need} bytes, has {len(body)}")
    return ReceiverReport(
        _U32.unpack_from(body, 0)[0], _parse_report_blocks(body, 4, count), bytes(body[need:])
    )


# --- SDES ---------------------------------------------------------------------------------


@attrs.define
class SdesChunk:
    """Items are (type, value) pairs in wire order; type is an :class:`SdesItemType` value."""

    ssrc: int
    items: list[tuple[int, bytes]] = attrs.field(factory=list)


@attrs.define
class Sdes:
    chunks: list[SdesChunk] = attrs.field(factory=list)

    def serialize(self) -> bytes:
        parts = []
        for chunk in self.chunks:
            parts.append(_U32.pack(chunk.ssrc))
            size = 4
            for item_type, value in chunk.items:
                if not 1 <= item_type <= 255 or len(value) > 255:
                    raise ValueError("SDES item type must be 1..255 and value at most 255 bytes")
                parts.append(bytes((item_type, len(value))))
                parts.append(value)
                size += 2 + len(value)
            # The END item plus null octets up to the next word boundary (1..4 of them).
            parts.append(bytes(4 - size % 4))
        return _header(RtcpType.SDES, len(self.chunks), b"".join(parts))


def _parse_sdes(body: Buffer, count: int) -> Sdes:
    size = len(body)
    pos = 0
    chunks = []
    for _ in range(count):
        if pos + 4 > size:
            raise RtcpParseError("SDES chunk SSRC runs past the packet")
        chunk = SdesChunk(_U32.unpack_from(body, pos)[0])
        pos += 4
        while True:
            if pos >= size:
                raise RtcpParseError("SDES chunk has no END item")
            item_type = body[pos]
            if item_type == SdesItemType.END:
                pos = (pos + 4) & ~3  # skip the remaining null octets of this word
                break
            if pos + 2 > size:
                raise RtcpParseError("SDES item header runs past the packet")
            length = body[pos + 1]
            if pos + 2 + length > size:
                raise RtcpParseError("SDES item value runs past the packet")
            chunk.items.append((item_type, bytes(body[pos + 2 : pos + 2 + length])))
            pos += 2 + length
        chunks.append(chunk)
    return Sdes(chunks)


# --- BYE ----------------------------------------------------------------------------------


@attrs.define
class Bye:
    ssrcs: list[int] = attrs.field(factory=list)
    #: optional "reason for leaving" text (UTF-8 per the RFC, kept as bytes)
    reason: Optional[bytes] = None

    def serialize(self) -> bytes:
        body = b"".join(_U32.pack(s) for s in self.ssrcs)
        if self.reason is not None:
            if len(self.reason) > 255:
                raise ValueError("BYE reason is at most 255 bytes")
            text = bytes((len(self.reason),)) + self.reason
            body += text + bytes(-len(text) % 4)
        return _header(RtcpType.BYE, len(self.ssrcs), body)


def _parse_bye(body: Buffer, count: int) -> Bye:
    pos = 4 * count
    if len(body) < pos:
        raise RtcpParseError(f"BYE with {count} SSRCs is truncated")
    ssrcs = [_U32.unpack_from(body, 4 * i)[0] for i in range(count)]
    reason = None
    if len(body) > pos:
        length = body[pos]
        if pos + 1 + length > len(body):
            raise RtcpParseError("BYE reason runs past the packet")
        reason = bytes(body[pos + 1 : pos + 1 + length])
    return Bye(ssrcs, reason)


# --- generic NACK (RFC 4585 §6.2.1) ---------------------------------------------------------


@attrs.define
class Nack:
    """Generic NACK. ``pairs`` are the wire (PID, BLP) entries, kept so parse∘serialize is exact."""

    sender_ssrc: int
    media_ssrc: int
    pairs: list[tuple[int, int]] = attrs.field(factory=list)

    @classmethod
    def from_lost(cls, sender_ssrc: int, media_ssrc: int, lost: Iterable[int]) -> "Nack":
        """Pack lost sequence numbers (in sending order, wrap allowed) into PID/BLP pairs."""
        pairs: list[tuple[int, int]] = []
        pid = -1
        blp = 0
        for seq in lost:
            seq &= 0xFFFF
            if pid >= 0:
                d = (seq - pid) & 0xFFFF
                if d == 0:
                    continue
                if d <= 16:
                    blp |= 1 << (d - 1)
                    continue
                pairs.append((pid, blp))
            pid, blp = seq, 0
        if pid >= 0:
            pairs.append((pid, blp))
        return cls(sender_ssrc, media_ssrc, pairs)

    def lost_sequence_numbers(self) -> list[int]:
        lost = []
        for pid, blp in self.pairs:
            lost.append(pid)
            for bit in range(16):
                if blp >> bit & 1:
                    lost.append((pid + bit + 1) & 0xFFFF)
        return lost

    def serialize(self) -> bytes:
        body = _TWO_U32.pack(self.sender_ssrc, self.media_ssrc)
        body += b"".join(struct.pack("!HH", pid, blp) for pid, blp in self.pairs)
        return _header(RtcpType.RTPFB, RtpfbFormat.NACK, body)


def _parse_nack(body: Buffer) -> Nack:
    if len(body) < 8 or len(body) % 4:
        raise RtcpParseError("NACK feedback length is not 8 + 4n bytes")
    sender, media = _TWO_U32.unpack_from(body, 0)
    pairs = [struct.unpack_from("!HH", body, pos) for pos in range(8, len(body), 4)]
    return Nack(sender, media, pairs)


# --- PLI / FIR ----------------------------------------------------------------------------


@attrs.define
class Pli:
    sender_ssrc: int
    media_ssrc: int

    def serialize(self) -> bytes:
        return _header(RtcpType.PSFB, PsfbFormat.PLI, _TWO_U32.pack(self.sender_ssrc, self.media_ssrc))


@attrs.define(frozen=True)
class FirEntry:
    ssrc: int
    sequence_number: int  # 8-bit command sequence number


@attrs.define
class Fir:
    """Full intra request. RFC 5104 §4.3.1.2: the header's media SSRC is unused and set to 0."""

    sender_ssrc: int
    entries: list[FirEntry] = attrs.field(factory=list)
    media_ssrc: int = 0

    def serialize(self) -> bytes:
        body = _TWO_U32.pack(self.sender_ssrc, self.media_ssrc)
        body += b"".join(
            _U32.pack(e.ssrc) + bytes((e.sequence_number & 0xFF, 0, 0, 0)) for e in self.entries
        )
        return _header(RtcpType.PSFB, PsfbFormat.FIR, body)


def _parse_pli(body: Buffer) -> Pli:
    if len(body) != 8:
        raise RtcpParseError("PLI must carry exactly the two SSRCs")
    return Pli(*_TWO_U32.unpack_from(body, 0))


def _parse_fir(body: Buffer) -> Fir:
    if len(body) < 8 or (len(body) - 8) % 8:
        raise RtcpParseError("FIR length is not 8 + 8n bytes")
    sender, media = _TWO_U32.unpack_from(body, 0)
    entries = [
        FirEntry(_U32.unpack_from(body, pos)[0], body[pos + 4]) for pos in range(8, len(body), 8)
    ]
    return Fir(sender, entries, media)


# --- REMB ---------------------------------------------------------------------------------

_REMB_IDENTIFIER = b"REMB"
_REMB_MAX_MANTISSA = (1 << 18) - 1


@attrs.define
class Remb:
    """Receiver estimated maximum bitrate, in bits per second, for ``ssrcs``.

    The wire form is an 18-bit mantissa and 6-bit exponent, so :meth:`serialize`
    rounds the bitrate down to what that can express.
    """

    sender_ssrc: int
    bitrate: int
    ssrcs: list[int] = attrs.field(factory=list)
    media_ssrc: int = 0

    def serialize(self) -> bytes:
        if len(self.ssrcs) > 255:
            raise ValueError("REMB carries at most 255 SSRCs")
        mantissa = max(0, self.bitrate)
        exponent = 0
        while mantissa > _REMB_MAX_MANTISSA:
            mantissa >>= 1
            exponent += 1
        if exponent > 63:
            raise ValueError("REMB bitrate too large for a 6-bit exponent")
        body = _TWO_U32.pack(self.sender_ssrc, self.media_ssrc) + _REMB_IDENTIFIER
        body += _U32.pack((len(self.ssrcs) << 24) | (exponent << 18) | mantissa)
        body += b"".join(_U32.pack(s) for s in self.ssrcs)
        return _header(RtcpType.PSFB, PsfbFormat.AFB, body)


def _parse_remb(body: Buffer) -> Remb:
    if len(body) < 16:
        raise RtcpParseError("REMB is shorter than its fixed part")
    sender, media = _TWO_U32.unpack_from(body, 0)
    word = _U32.unpack_from(body, 12)[0]
    count = word >> 24
    if len(body) < 16 + 4 * count:
        raise RtcpParseError(f"REMB announces {count} SSRCs but is shorter")
    ssrcs = [_U32.unpack_from(body, 16 + 4 * i)[0] for i in range(count)]
    return Remb(sender, (word & _REMB_MAX_MANTISSA) << ((word >> 18) & 0x3F), ssrcs, media)


# --- transport-wide congestion control feedback -------------------------------------------

#: receive deltas are multiples of 250 µs; the reference time of 64 ms
TWCC_DELTA_UNIT_US = 250
TWCC_REFERENCE_UNIT_US = 64_000

_SYMBOL_NOT_RECEIVED = 0
_SYMBOL_SMALL_DELTA = 1
_SYMBOL_LARGE_DELTA = 2
_RUN_LENGTH_MAX = 0x1FFF


class TwccStatus(NamedTuple):
    """One packet of a feedback: its transport-wide seq, whether it arrived, and its
    receive delta in µs (relative to the previous received packet, or to the
    reference time for the first); ``delta_us`` is None when not received."""

    seq: int
    received: bool
    delta_us: Optional[int]


class TwccArrival(NamedTuple):
    """A packet the feedback reports as received, with its receive delta in µs."""

    seq: int
    delta_us: int


@attrs.define
class TransportCc:
    """Transport-wide CC feedback covering ``status_count`` consecutive seqs from ``base_sequence``.

    Only the received packets are stored (``arrivals``, in seq order); the lost
    ones are the gaps. That keeps parsing proportional to the bytes on the wire:
    one run-length chunk can report 8191 losses in two bytes, and a status count
    of 65535 must not cost 65535 objects. :meth:`statuses` expands on demand.
    ``reference_time`` is in units of 64 ms (24 bits, wrapping).
    """

    sender_ssrc: int
    media_ssrc: int
    base_sequence: int
    reference_time: int
    feedback_count: int
    status_count: int
    arrivals: list[TwccArrival] = attrs.field(factory=list)

    @classmethod
    def build(
        cls,
        sender_ssrc: int,
        media_ssrc: int,
        reference_time: int,
        feedback_count: int,
        packets: Sequence[tuple[int, bool, Optional[int]]],
    ) -> "TransportCc":
        """Feedback from consecutive (seq, received, delta_us) tuples; deltas are rounded to 250 µs."""
        if not packets:
            raise ValueError("transport-cc feedback needs at least one packet")
        if len(packets) > 0xFFFF:
            raise ValueError("transport-cc feedback covers at most 65535 packets")
        base = packets[0][0] & 0xFFFF
        arrivals = []
        for i, (seq, received, delta_us) in enumerate(packets):
            if (seq - base - i) & 0xFFFF:
                raise ValueError("transport-cc packets must have consecutive sequence numbers")
            if received:
                if delta_us is None:
                    raise ValueError(f"received packet {seq} needs a delta")
                ticks = (delta_us + TWCC_DELTA_UNIT_US // 2) // TWCC_DELTA_UNIT_US
                arrivals.append(TwccArrival(seq & 0xFFFF, ticks * TWCC_DELTA_UNIT_US))
        return cls(sender_ssrc, media_ssrc, base, reference_time, feedback_count, len(packets), arrivals)

    def statuses(self) -> list[TwccStatus]:
        """Every covered packet in seq order, lost ones with ``received=False``."""
        out = []
        offsets = {(a.seq - self.base_sequence) & 0xFFFF: a.delta_us for a in self.arrivals}
        for i in range(self.status_count):
            delta = offsets.get(i)
            out.append(TwccStatus((self.base_sequence + i) & 0xFFFF, delta is not None, delta))
        return out

    def arrival_times_us(self) -> list[tuple[int, int]]:
        """(seq, receive time in µs on the feedback sender's clock) for each received packet."""
        t = self.reference_time * TWCC_REFERENCE_UNIT_US
        out = []
        for seq, delta in self.arrivals:
            t += delta
            out.append((seq, t))
        return out

    def serialize(self) -> bytes:
        if not 0 <= self.status_count <= 0xFFFF:
            raise ValueError("transport-cc feedback covers at most 65535 packets")
        symbols = [_SYMBOL_NOT_RECEIVED] * self.status_count
        deltas = []
        previous = -1
        for seq, delta_us in self.arrivals:
            offset = (seq - self.base_sequence) & 0xFFFF
            if offset >= self.status_count or offset <= previous:
                raise ValueError("transport-cc arrivals must be in seq order inside the covered range")
            previous = offset
            ticks, rest = divmod(delta_us, TWCC_DELTA_UNIT_US)
            if rest:
                raise ValueError("transport-cc deltas must be multiples of 250 µs; use build()")
            if 0 <= ticks <= 0xFF:
                symbols[offset] = _SYMBOL_SMALL_DELTA
                deltas.append(bytes((ticks,)))
            elif -0x8000 <= ticks <= 0x7FFF:
                symbols[offset] = _SYMBOL_LARGE_DELTA
                deltas.append(struct.pack("!h", ticks))
            else:
                raise ValueError(f"delta {delta_us} µs does not fit 16 bits of 250 µs")
        body = _TWO_U32.pack(self.sender_ssrc, self.media_ssrc)
        body += struct.pack(
            "!HHI",
            self.base_sequence,
            self.status_count,
            ((self.reference_time & 0xFFFFFF) << 8) | (self.feedback_count & 0xFF),
        )
        body += b"".join(struct.pack("!H", chunk) for chunk in _encode_chunks(symbols))
        body += b"".join(deltas)
        return _header(RtcpType.RTPFB, RtpfbFormat.TRANSPORT_CC, body)


def _encode_chunks(symbols: list[int]) -> list[int]:
    """Greedy chunking: run-length for long runs, else the densest status vector that fits."""
    chunks = []
    n = len(symbols)
    i = 0
    while i < n:
        symbol = symbols[i]
        run = 1
        while i + run < n and run < _RUN_LENGTH_MAX and symbols[i + run] == symbol:
            run += 1
        if run >= 14 or i + run == n:
            chunks.append((symbol << 13) | run)
            i += run
            continue
        window = symbols[i : i + 14]
        if _SYMBOL_LARGE_DELTA not in window:
            chunk = 0x8000
            for bit, s in enumerate(window):
                chunk |= s << (13 - bit)
            chunks.append(chunk)
            i += len(window)
        else:
            window = symbols[i : i + 7]
            chunk = 0xC000
            for slot, s in enumerate(window):
                chunk |= s << (12 - 2 * slot)
            chunks.append(chunk)
            i += len(window)
    return chunks


def _parse_transport_cc(body: Buffer) -> TransportCc:
    size = len(body)
    if size < 16:
        raise RtcpParseError("transport-cc feedback is shorter than its fixed part")
    sender, media = _TWO_U32.unpack_from(body, 0)
    base, status_count, ref_fb = struct.unpack_from("!HHI", body, 8)
    # First pass: the chunks. Runs of received packets are kept as (start, length,
    # symbol) and runs of losses are skipped arithmetically, so work and memory
    # stay proportional to the bytes actually present, whatever status_count says.
    runs: list[tuple[int, int, int]] = []
    covered = 0
    pos = 16
    while covered < status_count:
        if pos + 2 > size:
            raise RtcpParseError("transport-cc packet status chunks run past the packet")
        chunk = (body[pos] << 8) | body[pos + 1]
        pos += 2
        remaining = status_count - covered
        if not chunk & 0x8000:
            symbol = (chunk >> 13) & 0x3
            length = min(chunk & _RUN_LENGTH_MAX, remaining)
            if symbol == 3 and length:
                raise RtcpParseError("transport-cc status symbol 3 is reserved")
            if symbol and length:
                runs.append((covered, length, symbol))
            covered += length
        elif not chunk & 0x4000:
            for bit in range(min(14, remaining)):
                if (chunk >> (13 - bit)) & 1:
                    runs.append((covered + bit, 1, _SYMBOL_SMALL_DELTA))
            covered += min(14, remaining)
        else:
            for slot in range(min(7, remaining)):
                symbol = (chunk >> (12 - 2 * slot)) & 3
                if symbol == 3:
                    raise RtcpParseError("transport-cc status symbol 3 is reserved")
                if symbol:
                    runs.append((covered + slot, 1, symbol))
            covered += min(7, remaining)
    # Second pass: one receive delta per received packet, each read before it is stored.
    arrivals = []
    for start, length, symbol in runs:
        for offset in range(start, start + length):
            if symbol == _SYMBOL_SMALL_DELTA:
                if pos + 1 > size:
                    raise RtcpParseError("transport-cc receive deltas run past the packet")
                ticks = body[pos]
                pos += 1
            else:
                if pos + 2 > size:
                    raise RtcpParseError("transport-cc receive deltas run past the packet")
                ticks = struct.unpack_from("!h", body, pos)[0]
                pos += 2
            arrivals.append(TwccArrival((base + offset) & 0xFFFF, ticks * TWCC_DELTA_UNIT_US))
    return TransportCc(sender, media, base, ref_fb >> 8, ref_fb & 0xFF, status_count, arrivals)


# --- anything else ------------------------------------------------------------------------


@attrs.define
class RtcpUnknown:
    """A packet type or feedback format we do not decode; ``payload`` is the raw body
    after the 4-byte header (padding octets included when ``padded``)."""

    packet_type: int
    count: int
    payload: bytes
    padded: bool = False

    def serialize(self) -> bytes:
        if len(self.payload) % 4:
            raise ValueError("opaque RTCP payload must be whole 32-bit words")
        return _header(self.packet_type, self.count, self.payload, self.padded)


RtcpPacket = Union[
    SenderReport, ReceiverReport, Sdes, Bye, Nack, Pli, Fir, Remb, TransportCc, RtcpUnknown
]


def parse_rtcp(data: Buffer) -> list[RtcpPacket]:
    """Split and decode a compound RTCP packet; raises :class:`RtcpParseError` on malformed input."""
    size = len(data)
    if size == 0:
        raise RtcpParseError("empty RTCP packet")
    packets: list[RtcpPacket] = []
    pos = 0
    while pos < size:
        if size - pos < 4:
            raise RtcpParseError("RTCP header runs past the datagram")
        first, packet_type, words = _HDR.unpack_from(data, pos)
        if first >> 6 != RTCP_VERSION:
            raise RtcpParseError(f"RTCP version {first >> 6} is not 2")
        end = pos + 4 + 4 * words
        if end > size:
            raise RtcpParseError("RTCP length field runs past the datagram")
        raw = data[pos + 4 : end]
        pos = end
        count = first & 0x1F
        padded = bool(first & 0x20)
        body = raw
        if padded:
            if not raw or raw[-1] == 0 or raw[-1] > len(raw):
                raise RtcpParseError("RTCP padding count is invalid")
            body = raw[: len(raw) - raw[-1]]
        packets.append(_parse_one(packet_type, count, body, raw, padded))
    return packets


def _parse_one(packet_type: int, count: int, body: Buffer, raw: Buffer, padded: bool) -> RtcpPacket:
    if packet_type == RtcpType.SR:
        return _parse_sr(body, count)
    if packet_type == RtcpType.RR:
        return _parse_rr(body, count)
    if packet_type == RtcpType.SDES:
        return _parse_sdes(body, count)
    if packet_type == RtcpType.BYE:
        return _parse_bye(body, count)
    if packet_type == RtcpType.RTPFB:
        if count == RtpfbFormat.NACK:
            return _parse_nack(body)
        if count == RtpfbFormat.TRANSPORT_CC:
            return _parse_transport_cc(body)
    elif packet_type == RtcpType.PSFB:
        if count == PsfbFormat.PLI:
            return _parse_pli(body)
        if count == PsfbFormat.FIR:
            return _parse_fir(body)
        if count == PsfbFormat.AFB and bytes(body[8:12]) == _REMB_IDENTIFIER:
            return _parse_remb(body)
    return RtcpUnknown(packet_type, count, bytes(raw), padded)


def serialize_rtcp(packets: Iterable[RtcpPacket]) -> bytes:
    """A compound packet of ``packets`` in the given order."""
    return b"".join(p.serialize() for p in packets)
