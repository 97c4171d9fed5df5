"""SCTP: the packet and chunk codec, DCEP, and an established association fed arbitrary packets.

``sctp-chunks`` parses (checksum not required, so mutations reach the chunk parsers) and
checks that what parses serializes and parses back the same. ``sctp-association`` builds an
established pair of our associations with a data channel open, then plays the peer: each
record of the input becomes one packet with the right verification tag and a valid CRC32c,
so the state machine, not the checksum, meets the mutations.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import struct
from typing import Iterator, Optional

from fuzz.target import FuzzTarget
from rtp.sctp import chunks as c
from rtp.sctp.association import ChannelState, SctpAssociation
from rtp.sctp.dcep import DataChannelOpen, parse_dcep
from rtp.sctp.errors import SctpParseError


def run_chunks(data: bytes) -> None:
    for parse in (parse_dcep, c.OutgoingResetRequest.parse, c.ReconfigResponse.parse, c.parse_params):
        try:
            parse(data)
        except SctpParseError:
            pass
    packet = c.parse_packet(data, verify_checksum=False)
    again = c.parse_packet(c.serialize_packet(packet))
    if again != packet:
        raise AssertionError(f"SCTP round trip changed the packet: {packet!r} -> {again!r}")


def _pump(a: SctpAssociation, b: SctpAssociation, now: float, log: Optional[list[bytes]] = None) -> None:
    """Packets both ways until quiet; ``log`` collects what ``a`` sent to ``b``."""
    for _ in range(50):
        moved = False
        for x, y in ((a, b), (b, a)):
            for packet in x.packets_to_send(now):
                if log is not None and x is a:
                    log.append(packet)
                y.receive_packet(packet, now)
                moved = True
        if not moved:
            return


def _drain(assoc: SctpAssociation) -> None:
    while assoc.next_event() is not None:
        pass


@contextlib.contextmanager
def _fixed_randomness() -> Iterator[None]:
    """Tags, initial TSNs and cookie keys the same on every run, so an input means the same
    thing each time it runs (coverage guidance needs that) and seeds can carry real TSNs."""
    counter = itertools.count(1)
    real = os.urandom
    os.urandom = lambda n: bytes((next(counter) * 151 + i * 7) & 0xFF for i in range(n))
    try:
        yield
    finally:
        os.urandom = real


def _established() -> tuple[SctpAssociation, SctpAssociation, int]:
    with _fixed_randomness():
        peer, victim = SctpAssociation(True), SctpAssociation(False, max_message_size=4096)
    peer.start(0.0)
    _pump(peer, victim, 0.0)
    sid = peer.open_channel("fuzz")
    _pump(peer, victim, 0.0)
    _drain(peer)
    _drain(victim)
    return peer, victim, sid


# Each record: a control byte, a 16-bit length, then the chunk bytes of one packet.
# Control bits: 0x01 send with verification tag 0 (as an INIT must be), 0x02 send the bytes
# as they are (no header, tag or checksum added), 0x04 run the timers (clock + 1 s), 0x08 let
# the honest peer send a message, 0x10 deliver the victim's answers to the honest peer (and
# its replies back), so a conversation can go on around the injected packets.
TAG_ZERO, RAW, TICK, PEER_SENDS, ANSWER = 0x01, 0x02, 0x04, 0x08, 0x10


def _records(data: bytes) -> list[tuple[int, bytes]]:
    out, pos = [], 0
    while pos + 3 <= len(data):
        control, length = struct.unpack_from("!BH", data, pos)
        out.append((control, data[pos + 3 : pos + 3 + length]))
        pos += 3 + length
    return out


def run_association(data: bytes) -> None:
    peer, victim, sid = _established()
    now = 1.0
    for control, body in _records(data):
        if control & RAW:
            packet = body
        else:
            tag = 0 if control & TAG_ZERO else victim._local_tag
            packet = c.serialize_packet_from_chunks(5000, 5000, tag, body)
        victim.receive_packet(packet, now)
        if control & TICK:
            now += 1.0
            victim.handle_timeout(now)
            peer.handle_timeout(now)
        if control & PEER_SENDS and peer.channel_state(sid) in (ChannelState.OPEN, ChannelState.CONNECTING):
            # The honest peer keeps to the API: no sending on a channel it sees closing.
            peer.send(sid, b"m" * (len(body) * 7 % 5000))
        answers = victim.packets_to_send(now)
        if control & ANSWER:
            for answer in answers:
                peer.receive_packet(answer, now)
            for packet in peer.packets_to_send(now):
                victim.receive_packet(packet, now)
        victim.next_deadline()
        _drain(victim)
        _drain(peer)


def _record(control: int, packet: bytes) -> bytes:
    """A record carrying the chunks of ``packet`` (its 12-byte common header dropped)."""
    body = packet[c.COMMON_HEADER_LENGTH:]
    return struct.pack("!BH", control, len(body)) + body


def _conversation() -> list[bytes]:
    """What an honest peer sends an established victim in an ordinary session: messages
    small, fragmented and unordered, a channel on partial reliability losing a packet (so a
    FORWARD-TSN), a channel closed (RE-CONFIG), then a SHUTDOWN."""
    peer, victim, sid = _established()
    sent: list[bytes] = []
    peer.send(sid, b"hello")
    peer.send(sid, bytes(3000))
    _pump(peer, victim, 1.0, sent)
    lossy = peer.open_channel("lossy", ordered=False, max_retransmits=0)
    _pump(peer, victim, 1.0, sent)
    peer.send(lossy, b"lost")
    peer.packets_to_send(1.0)  # dropped on the way
    peer.send(lossy, b"kept")
    _pump(peer, victim, 1.0, sent)
    for now in (3.0, 6.0):
        peer.handle_timeout(now)
        victim.handle_timeout(now)
        _pump(peer, victim, now, sent)
    peer.close_channel(lossy)
    _pump(peer, victim, 7.0, sent)
    peer.shutdown()
    _pump(peer, victim, 8.0, sent)
    return sent


def chunk_seeds() -> list[bytes]:
    dcep = DataChannelOpen(0x00, 0, 0, "label", "proto").serialize()
    samples = [
        [c.DataChunk(c.FLAG_BEGIN | c.FLAG_END, 1000, 1, 0, 50, dcep)],
        [c.SackChunk(77, 65536, [(2, 3), (5, 5)], [70]), c.HeartbeatChunk([(c.ParamType.HEARTBEAT_INFO, b"hb")])],
        [c.InitChunk(0x11223344, 65536, 10, 10, 5000, [(c.ParamType.FORWARD_TSN_SUPPORTED, b"")])],
        [c.AbortChunk(0, [(1, b"\x00\x01\x00\x00")]), c.ErrorChunk(0, [(6, b"")]), c.UnknownChunk(0xC5, 0, b"opaque")],
    ]
    packets = [c.serialize_packet(c.Packet(5000, 5000, 0xABCDEF01, chunks)) for chunks in samples]
    return packets + _conversation()


def association_seeds() -> list[bytes]:
    conversation = _conversation()
    whole = b"".join(_record(ANSWER, p) for p in conversation)
    return [
        whole,
        b"".join(_record(ANSWER | TICK, p) for p in conversation[: len(conversation) // 2]),
        b"".join(_record(0, p) for p in conversation[2:]),
        _record(PEER_SENDS | ANSWER, conversation[0]) + _record(RAW | TICK, conversation[1]),
    ]


CHUNKS_TARGET = FuzzTarget(
    "sctp-chunks", "rtp.sctp.chunks parse_packet (every chunk type, parameters, RE-CONFIG), DCEP; round trip",
    run_chunks, (SctpParseError,), chunk_seeds, max_len=2048,
)
ASSOCIATION_TARGET = FuzzTarget(
    "sctp-association", "an established rtp.sctp.SctpAssociation fed packets with valid tags and checksums",
    run_association, (), association_seeds, max_len=8192,
)
