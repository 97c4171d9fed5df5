"""Hostile input against an established association: dropped, counted, and the association keeps working."""

from __future__ import annotations

import random

from budgets import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from rtp.sctp import chunks as c
from rtp.sctp import reassembly
from rtp.sctp.association import AssociationState, SctpAssociation
from rtp.sctp.events import AssociationClosed, ChannelOpened, MessageReceived

from test_sctp_chunks import chunk_strategy
from work_meter import LinesExecuted


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
    b.handle_timeout(now + 1)
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
    b.handle_timeout(5.0)
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


# --- floods of fragments that never make a message (the hardening issue's reassembly attack)

# Lines of rtp/sctp/reassembly.py that taking in one packet of one DATA chunk and answering it
# may execute, whatever is already buffered: measured at up to about 85 to file the chunk and
# build the SACK (the most for a chunk that joins two runs, or trips a limit and aborts), plus
# one per gap block the SACK lists, at most MAX_GAP_BLOCKS (100). The old reassembler walked
# back over every earlier fragment of the message, a few lines per fragment, so a flood
# crossed this bound within its first hundred fragments.
MAX_REASSEMBLY_LINES_PER_CHUNK = 300


# The most fragments one message may be split into under the default max-message-size of
# 256 KiB (an average piece of 64 bytes; WebRTC stacks send pieces of about 1,200).
MAX_FRAGMENTS_OF_A_256_KIB_MESSAGE = 4096


def _inject(victim: SctpAssociation, chunk_list: list, now: float = 1.0) -> list[bytes]:
    """One packet from the peer, with the victim's tag and a valid checksum; its answer."""
    victim.receive_packet(c.serialize_packet(c.Packet(5000, 5000, victim._local_tag, chunk_list)), now)
    return victim.packets_to_send(now)


def _middle(tsn: int, stream: int, ssn: int) -> c.DataChunk:
    return c.DataChunk(0, tsn & 0xFFFFFFFF, stream, ssn, 51, b"m")


def test_flood_of_middle_fragments_costs_constant_work_per_fragment_and_bounded_memory():
    # 32,768 middle fragments (B and E clear) of one ordered message with consecutive TSNs,
    # starting at the next TSN the victim expects: each one extends the same never-beginning
    # message. Every chunk must cost the reassembler a bounded number of lines, the buffer
    # must stay under the per-message fragment limit, and the association must end cleanly.
    a, b, sid = _established_pair()
    start = a._next_tsn
    received_before = b.counters.data_chunks_received
    meter = LinesExecuted(reassembly)
    worst = 0
    answers = []
    for i in range(32768):
        with meter:
            answers += _inject(b, [_middle(start + i, stream=sid + 2, ssn=0)])
        worst = max(worst, meter.lines)
        assert meter.lines <= MAX_REASSEMBLY_LINES_PER_CHUNK, f"fragment {i}: {meter.lines} lines"
        assert b._reassembler.buffered_chunks <= MAX_FRAGMENTS_OF_A_256_KIB_MESSAGE
    assert worst > 10  # the meter saw the reassembler at work
    limit = b._reassembler.max_fragments_per_message
    assert b.max_message_size == 262144 and limit == MAX_FRAGMENTS_OF_A_256_KIB_MESSAGE
    assert b.counters.data_chunks_received - received_before == limit + 1  # the one over the limit aborts
    assert b.counters.malformed_messages == 1
    assert b.counters.unexpected_chunks == 32768 - limit - 1
    assert AssociationClosed("message in more fragments than allowed") in _drain(b)
    assert b.state is AssociationState.CLOSED and b._reassembler.buffered_chunks == 0
    # The peer is told with one ABORT, not left retransmitting into silence.
    answered = [type(ch) for packet in answers for ch in c.parse_packet(packet).chunks]
    assert answered.count(c.AbortChunk) == 1


def test_sparse_fragments_on_one_stream_stop_at_its_share_of_the_buffer():
    # Middles on every other TSN never join: each is its own run. One stream may hold only
    # its share; the rest is dropped unacknowledged and counted, at constant cost each.
    a, b, sid = _established_pair()
    start = a._next_tsn
    meter = LinesExecuted(reassembly)
    for i in range(32768):
        with meter:
            _inject(b, [_middle(start + 1 + 2 * i, stream=sid + 2, ssn=i % 0x8000)])
        assert meter.lines <= MAX_REASSEMBLY_LINES_PER_CHUNK, f"fragment {i}: {meter.lines} lines"
    share = b._reassembler.max_chunks_per_stream
    assert b._reassembler.buffered_chunks == share
    assert b.counters.data_dropped_stream_full == 32768 - share
    assert b.state is AssociationState.ESTABLISHED
    # Dropped means not acknowledged: the SACK lists only what was kept.
    b.receive_packet(c.serialize_packet(c.Packet(5000, 5000, b._local_tag, [_middle(start + 1, sid + 2, 0)])), 2.0)
    sack = next(ch for p in b.packets_to_send(2.0) for ch in c.parse_packet(p).chunks if isinstance(ch, c.SackChunk))
    assert sack.cumulative_tsn == (start - 1) & 0xFFFFFFFF
    assert sack.gaps[0] == (2, 2) and len(sack.gaps) == reassembly.MAX_GAP_BLOCKS


def test_forward_tsn_one_step_at_a_time_past_a_full_buffer_costs_constant_work():
    # Thousands of unmergeable fragments wait ahead; then FORWARD-TSN chunks move the
    # cumulative TSN by one each. Each must cost the same, however much is buffered.
    a, b, sid = _established_pair()
    start = a._next_tsn
    count = 8000
    ahead = start + count + 1
    for i in range(0, count, 50):
        _inject(b, [_middle(ahead + j, stream=1 + j % 16, ssn=j // 16) for j in range(i, i + 50)])
    assert b._reassembler.buffered_chunks == count
    meter = LinesExecuted(reassembly)
    for i in range(count):
        with meter:
            _inject(b, [c.ForwardTsnChunk((start + i) & 0xFFFFFFFF, [])])
        assert meter.lines <= MAX_REASSEMBLY_LINES_PER_CHUNK, f"FORWARD-TSN {i}: {meter.lines} lines"
    assert b._reassembler.buffered_chunks == count and b.state is AssociationState.ESTABLISHED
    # One FORWARD-TSN past all of them frees the lot.
    _inject(b, [c.ForwardTsnChunk((ahead + count) & 0xFFFFFFFF, [])])
    assert b._reassembler.buffered_chunks == 0 and b._reassembler.buffered_bytes == 0
