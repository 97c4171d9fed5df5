"""Hostile input against an established association: dropped, counted, and the association keeps working."""

from __future__ import annotations

import random

from budgets import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from rtp.sctp import chunks as c
from rtp.sctp.association import AssociationState, SctpAssociation
from rtp.sctp.events import AssociationClosed, ChannelOpened, MessageReceived

from test_sctp_chunks import chunk_strategy


def _drain(assoc: SctpAssociation) -> list:
    out = []
    while (event := assoc.next_event()) is not None:
        out.append(event)
    return out


def _pump(a: SctpAssociation, b: SctpAssociation, now: float) -> None:
    for _ in range(200):
        moved = False
        for x, y in ((a, b), (b, a)):
            for packet in x.packets_to_send(now):
                y.receive_packet(packet, now)
                moved = True
        if not moved:
            return


def _established_pair():
    a, b = SctpAssociation(True), SctpAssociation(False)
    a.start(0.0)
    _pump(a, b, 0.0)
    sid = a.open_channel("chat")
    _pump(a, b, 0.0)
    assert any(isinstance(e, ChannelOpened) for e in _drain(b))
    _drain(a)
    return a, b, sid


def _exchange_works(a, b, sid, now, text):
    a.send(sid, text)
    _pump(a, b, now)
    b.handle_timer(now + 1)
    _pump(a, b, now + 1)
    return [e for e in _drain(b) if isinstance(e, MessageReceived)] == [MessageReceived(sid, text, 51)]


def test_garbage_is_dropped_counted_and_the_association_keeps_working():
    a, b, sid = _established_pair()
    rng = random.Random(5)
    a.send(sid, b"x" * 5000)
    real = a.packets_to_send(1.0)
    injected = 0
    for i in range(300):
        kind = i % 4
        if kind == 0:
            garbage = rng.randbytes(rng.randrange(0, 300))
        elif kind == 1:  # a real packet cut short
            packet = rng.choice(real)
            garbage = packet[: rng.randrange(0, len(packet))]
        elif kind == 2:  # a real packet with one bit flipped
            packet = bytearray(rng.choice(real))
            packet[rng.randrange(len(packet))] ^= 1 << rng.randrange(8)
            garbage = bytes(packet)
        else:  # valid checksum, wrong verification tag
            garbage = c.serialize_packet(c.Packet(5000, 5000, rng.getrandbits(32) | 1, [c.AbortChunk()]))
        b.receive_packet(garbage, 1.0)
        injected += 1
    counters = b.counters
    assert counters.malformed_packets + counters.bad_verification_tag == injected
    assert counters.bad_verification_tag >= 75
    assert b.state is AssociationState.ESTABLISHED
    for packet in real:
        b.receive_packet(packet, 1.0)
    _pump(a, b, 1.0)
    assert [e.data for e in _drain(b) if isinstance(e, MessageReceived)] == [b"x" * 5000]
    assert _exchange_works(a, b, sid, 2.0, "after the storm")


@settings(max_examples=examples(3))
@given(st.lists(chunk_strategy, min_size=1, max_size=5), st.booleans())
def test_well_formed_but_hostile_chunks_never_raise(chunk_list, right_tag):
    # Valid checksum and (optionally) the right tag: the chunks reach the state machine.
    a, b, sid = _established_pair()
    tag = b._local_tag if right_tag else 0
    b.receive_packet(c.serialize_packet(c.Packet(5000, 5000, tag, chunk_list)), 1.0)
    b.handle_timer(5.0)
    b.packets_to_send(5.0)
    events = _drain(b)
    if b.state is AssociationState.ESTABLISHED:
        assert _exchange_works(a, b, sid, 6.0, "still alive")
    else:
        # Only an ABORT, a SHUTDOWN sequence or a too-large message may end it, and it says so.
        assert any(isinstance(e, AssociationClosed) for e in events) or b.state is not AssociationState.CLOSED


def test_oversized_message_aborts_instead_of_buffering():
    a = SctpAssociation(True, remote_max_message_size=0)
    b = SctpAssociation(False, max_message_size=10_000)
    a.start(0.0)
    _pump(a, b, 0.0)
    sid = a.open_channel("big")
    _pump(a, b, 0.0)
    a.send(sid, b"y" * 50_000)
    _pump(a, b, 0.0)
    assert AssociationClosed("message larger than max-message-size") in _drain(b)
    assert b._reassembler.buffered_bytes <= 10_000 + c.DATA_CHUNK_HEADER_LENGTH + 1200
    assert AssociationClosed("aborted by peer") in _drain(a)


def test_duplicate_and_reordered_data_are_delivered_once_in_order():
    a, b, sid = _established_pair()
    for i in range(20):
        a.send(sid, f"m{i}")
    packets = a.packets_to_send(1.0)
    # Split the bundle into one packet per DATA chunk, then shuffle and duplicate.
    data_chunks = [ch for p in packets for ch in c.parse_packet(p).chunks if isinstance(ch, c.DataChunk)]
    singles = [c.serialize_packet(c.Packet(5000, 5000, b._local_tag, [ch])) for ch in data_chunks]
    rng = random.Random(3)
    order = singles + singles[:7]
    rng.shuffle(order)
    for p in order:
        b.receive_packet(p, 1.0)
    got = [e.data for e in _drain(b) if isinstance(e, MessageReceived)]
    assert got == [f"m{i}" for i in range(20)]
    assert b.counters.duplicate_tsns == 7
    sack = next(ch for p in b.packets_to_send(1.0) for ch in c.parse_packet(p).chunks if isinstance(ch, c.SackChunk))
    assert sack.cumulative_tsn == data_chunks[-1].tsn and sack.gaps == []
