"""Inbound TSN tracking and message reassembly, against simple models of what must come out."""

from __future__ import annotations

import random

import pytest
from budgets import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from rtp.sctp.chunks import FLAG_BEGIN, FLAG_END, FLAG_UNORDERED, DataChunk
from rtp.sctp.errors import SctpProtocolError
from rtp.sctp.reassembly import Admission, Reassembler, TsnTracker
from rtp.sctp.serial import TsnUnwrapper


def fragment(messages, initial_tsn, fragment_size):
    """messages: list of (stream, ordered, payload) -> DATA chunks with consecutive TSNs."""
    chunks, tsn, ssns = [], initial_tsn, {}
    for stream, ordered, payload in messages:
        ssn = ssns.get(stream, 0) if ordered else 0
        if ordered:
            ssns[stream] = (ssn + 1) & 0xFFFF
        pieces = [payload[i : i + fragment_size] for i in range(0, len(payload), fragment_size)]
        for i, piece in enumerate(pieces):
            flags = (0 if ordered else FLAG_UNORDERED) | (FLAG_BEGIN if i == 0 else 0)
            flags |= FLAG_END if i == len(pieces) - 1 else 0
            chunks.append(DataChunk(flags, tsn & 0xFFFFFFFF, stream, ssn, 53, piece))
            tsn += 1
    return chunks


messages_strategy = st.lists(
    st.tuples(st.integers(0, 3), st.booleans(), st.binary(min_size=1, max_size=50)), min_size=1, max_size=40
)


@settings(max_examples=examples(3))
@given(messages_strategy, st.integers(0, 0xFFFFFFFF), st.integers(1, 16), st.randoms(use_true_random=False))
def test_any_arrival_order_with_duplicates_yields_each_message_once_in_stream_order(
    messages, initial_tsn, fragment_size, rnd
):
    # Unique payloads, so each delivered message can be told apart.
    messages = [(stream, ordered, i.to_bytes(2, "big") + body) for i, (stream, ordered, body) in enumerate(messages)]
    chunks = fragment(messages, initial_tsn, fragment_size)
    arrivals = chunks + [rnd.choice(chunks) for _ in range(len(chunks) // 3)]
    rnd.shuffle(arrivals)
    tracker, reasm = TsnTracker(initial_tsn), Reassembler(max_message_size=1000)
    delivered = []
    for chunk in arrivals:
        if tracker.is_duplicate(chunk.tsn):
            continue
        tracker.add(chunk.tsn)
        delivered += reasm.add(chunk)
    assert tracker.cumulative_tsn == chunks[-1].tsn and not tracker.has_gaps
    assert reasm.buffered_bytes == 0 and reasm.buffered_chunks == 0
    assert sorted(d[2] for d in delivered) == sorted(m[2] for m in messages)
    for stream in range(4):
        # Ordered messages of one stream come out exactly in the order they were sent.
        sent_ordered = [m[2] for m in messages if m[0] == stream and m[1]]
        assert [d[2] for d in delivered if d[0] == stream and d[2] in sent_ordered] == sent_ordered


@settings(max_examples=examples(3))
@given(st.sets(st.integers(1, 300), max_size=120), st.integers(0, 0xFFFFFFFF))
def test_gap_blocks_describe_exactly_the_received_set(offsets, base):
    tracker = TsnTracker((base + 1) & 0xFFFFFFFF)
    for off in offsets:
        tracker.add((base + off) & 0xFFFFFFFF)
    # Model: the cumulative point is the longest run 1..k present.
    k = 0
    while k + 1 in offsets:
        k += 1
    assert tracker.cumulative_tsn == (base + k) & 0xFFFFFFFF
    blocks = tracker.gap_blocks()
    covered = {k + o for start, end in blocks for o in range(start, end + 1)}
    expected = {o for o in offsets if o > k}
    if len(blocks) < 100:
        assert covered == expected
    assert all(a[1] + 1 < b[0] for a, b in zip(blocks, blocks[1:]))


def test_forward_tsn_skips_abandoned_fragments_and_releases_waiting_messages():
    chunks = fragment([(0, True, b"A" * 30), (0, True, b"B"), (0, True, b"C")], 100, 10)
    # A = TSN 100..102 (lost 101), B = 103, C = 104.
    tracker, reasm = TsnTracker(100), Reassembler(1000)
    out = []
    for chunk in chunks:
        if chunk.tsn == 101:
            continue
        tracker.add(chunk.tsn)
        out += reasm.add(chunk)
    assert out == [] and reasm.buffered_chunks == 4
    tracker.forward_to(102)
    out = reasm.forward_tsn(102, [(0, 0)])
    assert [d[2] for d in out] == [b"B", b"C"]
    assert tracker.cumulative_tsn == 104 and reasm.buffered_bytes == 0


def test_message_beyond_max_size_is_refused_before_it_is_whole():
    reasm = Reassembler(max_message_size=25)
    chunks = fragment([(1, True, b"x" * 60)], 0, 10)
    with pytest.raises(SctpProtocolError):
        for chunk in chunks[:-1]:
            reasm.add(chunk)
    assert reasm.buffered_bytes <= 40


def test_ssn_wraps_around():
    reasm = Reassembler(1000)
    rng = random.Random(1)
    msgs = [(2, True, bytes([i % 256]) * 3) for i in range(70000)]
    chunks = fragment(msgs, 0xFFFFFF00, 100)
    out = []
    window = chunks[:65000]
    for chunk in window:
        out += reasm.add(chunk)
    tail = chunks[65000:]
    rng.shuffle(tail)
    for chunk in tail:
        out += reasm.add(chunk)
    assert [d[2] for d in out] == [m[2] for m in msgs]


@settings(max_examples=examples(3))
@given(
    st.lists(st.one_of(st.tuples(st.just("add"), st.integers(1, 400)), st.tuples(st.just("forward"), st.integers(1, 400))),
             max_size=200),
    st.integers(0, 0xFFFFFFFF),
)
def test_tracker_matches_a_set_model_under_adds_and_forward_tsns(operations, base):
    # Model: the set of offsets received (or forwarded over); cumulative = longest run from 1.
    tracker = TsnTracker((base + 1) & 0xFFFFFFFF)
    received: set[int] = set()
    k = 0
    for op, off in operations:
        tsn = (base + off) & 0xFFFFFFFF
        if op == "add":
            assert tracker.is_duplicate(tsn) == (off <= k or off in received)
            tracker.add(tsn)
            received.add(off)
        else:
            tracker.forward_to(tsn)
            received |= set(range(1, off + 1))
        while k + 1 in received:
            k += 1
        assert tracker.cumulative_tsn == (base + k) & 0xFFFFFFFF
        blocks = tracker.gap_blocks()
        assert {k + o for start, end in blocks for o in range(start, end + 1)} == {o for o in received if o > k}
        assert all(a[1] + 1 < b[0] for a, b in zip(blocks, blocks[1:]))
        assert tracker.has_gaps == bool(blocks)


def test_unwrapper_keeps_order_across_the_32_bit_wrap():
    unwrapper = TsnUnwrapper()
    assert unwrapper.unwrap(0xFFFFFFFE) == 0xFFFFFFFE
    assert unwrapper.unwrap(1) == 0x100000001
    assert unwrapper.unwrap(0xFFFFFFFF) == 0xFFFFFFFF  # behind the newest, still before it
    assert unwrapper.unwrap(0x80000000) == 0x180000000
    assert unwrapper.unwrap(5) == 0x100000005


def test_message_in_more_fragments_than_allowed_is_refused_without_being_buffered():
    reasm = Reassembler(max_message_size=1000, max_fragments_per_message=4)
    whole = fragment([(1, True, b"abcd")], 10, 1)
    assert [d[2] for c in whole for d in reasm.add(c)] == [b"abcd"]
    chunks = fragment([(2, True, b"12345")], 20, 1)
    # Out of order, so the refusal comes from merging runs: 20,21 and 23,24 then 22.
    for chunk in chunks[:2] + chunks[3:]:
        assert reasm.add(chunk) == []
    with pytest.raises(SctpProtocolError, match="more fragments"):
        reasm.add(chunks[2])
    assert reasm.buffered_chunks == 4 and reasm.buffered_bytes == 4


def test_admission_gives_each_stream_a_share_and_always_takes_the_next_in_order_tsn():
    reasm = Reassembler(max_message_size=1000, receive_window=10_000, max_buffered_chunks=8, max_chunks_per_stream=3)
    # Middles with gaps between them: nothing ever completes.
    for i in range(3):
        chunk = DataChunk(0, 100 + 2 * i, 1, 0, 51, b"x")
        assert reasm.admit(chunk, in_order=False) is Admission.ACCEPT
        reasm.add(chunk)
    extra = DataChunk(0, 110, 1, 0, 51, b"x")
    assert reasm.admit(extra, in_order=False) is Admission.STREAM_FULL
    assert reasm.admit(extra, in_order=True) is Admission.ACCEPT
    assert reasm.admit(DataChunk(0, 110, 2, 0, 51, b"x"), in_order=False) is Admission.ACCEPT
    for i in range(5):
        reasm.add(DataChunk(0, 200 + 2 * i, 2 + i, 0, 51, b"x"))
    assert reasm.buffered_chunks == 8
    # The overall limit holds even for the in-order TSN.
    assert reasm.admit(DataChunk(0, 99, 9, 0, 51, b"x"), in_order=True) is Admission.NO_BUFFER
    big = DataChunk(0, 99, 9, 0, 51, b"x" * 10_000)
    assert Reassembler(1000, receive_window=5_000).admit(big, in_order=False) is Admission.NO_BUFFER


def test_forward_tsn_drops_a_message_it_cuts_through_whole():
    # Message A is TSN 10..14 with 12 lost; FORWARD-TSN to 12 abandons A. Its fragments 13 and
    # 14 can never complete it (12 is behind the new cumulative TSN, so it is never taken
    # again), so they go too; message B after it is untouched.
    chunks = fragment([(0, False, b"A" * 5), (0, False, b"BB")], 10, 1)
    reasm = Reassembler(1000)
    for chunk in chunks:
        if chunk.tsn not in (12, 16):
            reasm.add(chunk)
    assert reasm.buffered_chunks == 5
    assert reasm.forward_tsn(12, []) == []
    assert reasm.buffered_chunks == 1 and reasm.buffered_bytes == 1
    assert reasm.add(chunks[6]) == [(0, 53, b"BB")]
    assert reasm.buffered_chunks == 0


def test_reset_stream_frees_only_that_streams_fragments():
    reasm = Reassembler(1000)
    for chunk in fragment([(1, True, b"abc"), (2, True, b"def")], 0, 1):
        if chunk.tsn not in (2, 5):
            reasm.add(chunk)
    assert reasm.buffered_chunks == 4
    reasm.reset_stream(1)
    assert reasm.buffered_chunks == 2 and reasm.next_ssn(1) is None
    assert reasm.add(DataChunk(FLAG_END, 5, 2, 0, 53, b"f")) == [(2, 53, b"def")]
    assert reasm.buffered_bytes == 0


hostile_chunk = st.builds(
    lambda flags, off, stream, ssn, size: (flags, off, stream, ssn, size),
    st.sampled_from([0, FLAG_BEGIN, FLAG_END, FLAG_BEGIN | FLAG_END]).flatmap(
        lambda f: st.sampled_from([f, f | FLAG_UNORDERED])),
    st.integers(1, 60), st.integers(0, 2), st.integers(0, 3), st.integers(1, 9),
)


@settings(max_examples=examples(4))
@given(st.lists(st.one_of(hostile_chunk, st.tuples(st.just("forward"), st.integers(1, 60)),
                          st.tuples(st.just("reset"), st.integers(0, 2))), max_size=80),
       st.integers(0, 0xFFFFFFFF))
def test_hostile_chunk_sequences_keep_the_books_straight(operations, base):
    # Random flags, streams, SSNs and TSNs (each TSN at most once, as the tracker ensures),
    # FORWARD-TSNs and stream resets: the only error is the documented one, the byte and
    # chunk counts always equal what is really held, and a FORWARD-TSN past everything
    # leaves no fragment behind.
    reasm = Reassembler(max_message_size=20, max_chunks_per_stream=6, max_fragments_per_message=5)
    seen: set[int] = set()
    cum = 0
    for op in operations:
        if op[0] == "forward":
            if op[1] > cum:
                cum = op[1]
                reasm.forward_tsn((base + cum) & 0xFFFFFFFF, [])
        elif op[0] == "reset":
            reasm.reset_stream(op[1])
        else:
            flags, off, stream, ssn, size = op
            if off in seen or off <= cum:
                continue
            seen.add(off)
            chunk = DataChunk(flags, (base + off) & 0xFFFFFFFF, stream, ssn, 51, bytes(size))
            if reasm.admit(chunk, in_order=False) is not Admission.ACCEPT:
                continue
            try:
                reasm.add(chunk)
            except SctpProtocolError:
                pass
        held = sum(len(d) for d in reasm._fragments.values())
        held += sum(len(d) for s in reasm._streams.values() for _, d in s.ready.values())
        assert reasm.buffered_bytes == held
        count = len(reasm._fragments) + sum(len(s.ready) for s in reasm._streams.values())
        assert reasm.buffered_chunks == count
        assert all(s.held <= 6 for s in reasm._streams.values())
    reasm.forward_tsn((base + 61) & 0xFFFFFFFF, [])
    assert reasm._fragments == {} and reasm._run_by_first == {} and reasm._run_by_last == {}
