"""Inbound TSN tracking and message reassembly, against simple models of what must come out."""

from __future__ import annotations

import random

import pytest
from budgets import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from rtp.sctp.chunks import FLAG_BEGIN, FLAG_END, FLAG_UNORDERED, DataChunk
from rtp.sctp.errors import SctpProtocolError
from rtp.sctp.reassembly import Reassembler, TsnTracker


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
