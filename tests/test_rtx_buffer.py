"""Retransmission buffer: window, eviction, 16-bit wrap and slot aliasing, checked against a model."""

from __future__ import annotations

import pytest
from budgets import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from rtp.rtx_buffer import RetransmissionBuffer


def test_capacity_rounds_up_to_power_of_two():
    assert RetransmissionBuffer(100).capacity == 128
    assert RetransmissionBuffer(1).capacity == 1
    with pytest.raises(ValueError):
        RetransmissionBuffer(0)
    with pytest.raises(ValueError):
        RetransmissionBuffer(40000)


def test_store_and_evict():
    buf = RetransmissionBuffer(4)
    assert buf.get(1) is None
    for seq in range(10, 14):
        assert buf.put(seq, b"p%d" % seq)
    assert [buf.get(s) for s in range(10, 14)] == [b"p10", b"p11", b"p12", b"p13"]
    buf.put(14, b"p14")  # same slot as 10
    assert buf.get(10) is None and buf.get(14) == b"p14"
    assert buf.get(15) is None  # never stored, and newer than anything stored


def test_wraps_from_65535_to_0():
    buf = RetransmissionBuffer(8)
    for seq in (65533, 65534, 65535, 0, 1, 2):
        buf.put(seq, seq.to_bytes(2, "big"))
    for seq in (65533, 65534, 65535, 0, 1, 2):
        assert buf.get(seq) == seq.to_bytes(2, "big")
    assert buf.get(65532) is None and buf.get(3) is None


def test_gap_leaves_no_stale_alias():
    buf = RetransmissionBuffer(8)
    buf.put(100, b"old")
    buf.put(101, b"x")
    # A loss burst: 102..107 never stored. 108 lands in 100's slot.
    buf.put(108, b"new")
    assert buf.get(100) is None and buf.get(108) == b"new"
    # 109 is still in the window (newest-7 .. newest), 101's slot was not overwritten but 101
    # is now older than the window.
    buf.put(109, b"y")
    assert buf.get(101) is None


def test_slot_not_returned_after_a_full_16_bit_lap():
    buf = RetransmissionBuffer(8)
    buf.put(5, b"ancient")
    # Walk the stream forward by 65536 in steps that never touch slot 5 (seq % 8 == 5).
    seq = 5
    for _ in range(65536 // 8):
        seq += 8
        buf.put((seq + 1) & 0xFFFF, b"other")
    assert seq & 0xFFFF == 5
    # Same 16-bit value and same slot, but from a previous lap: must not be returned.
    assert buf.get(5) is None


def test_late_packet_within_window_is_kept_and_too_old_refused():
    buf = RetransmissionBuffer(16)
    buf.put(50, b"a")
    buf.put(45, b"late")
    assert buf.get(45) == b"late" and buf.get(50) == b"a"
    assert not buf.put(30, b"too old")
    assert buf.get(30) is None and buf.get(50) == b"a"


def test_holds_says_which_seqs_a_copy_would_duplicate():
    buf = RetransmissionBuffer(8)
    assert not buf.holds(7)
    for seq in (65534, 65535, 1):  # 0 lost
        buf.put(seq, b"v")
    assert buf.holds(65534) and buf.holds(65535) and buf.holds(1)
    assert not buf.holds(0)  # a gap: the packet that fills it is no copy
    assert not buf.holds(2) and not buf.holds(40000)  # newer than anything stored
    assert not buf.holds(65530)  # older than the window
    buf.clear()
    assert not buf.holds(1)


def test_large_forward_jump_forgets_everything():
    buf = RetransmissionBuffer(16)
    for seq in range(16):
        buf.put(seq, b"v")
    buf.put(1000, b"w")
    assert all(buf.get(seq) is None for seq in range(16))
    buf.clear()
    assert buf.get(1000) is None


@settings(max_examples=examples(3), deadline=None)
@given(
    st.integers(1, 64),
    st.integers(0, 0xFFFF),
    st.lists(
        st.tuples(
            st.integers(-80, 300),  # step of the sender's extended seq (negative = reordering)
            st.booleans(),  # whether that packet reached the buffer (losses make gaps)
            st.integers(-200, 20),  # offset of a lookup relative to the newest
        ),
        min_size=1,
        max_size=300,
    ),
)
def test_matches_reference_model(capacity, start, ops):
    buf = RetransmissionBuffer(capacity)
    cap = buf.capacity
    model: dict[int, bytes] = {}
    newest = None
    ext = start + 65536
    for step, delivered, probe in ops:
        ext += step
        if delivered and (newest is None or ext > newest - cap):
            packet = ext.to_bytes(4, "big")
            assert buf.put(ext & 0xFFFF, packet)
            model[ext] = packet
            newest = ext if newest is None else max(newest, ext)
        if newest is None:
            continue
        q = newest + probe
        want = model.get(q) if newest - cap < q <= newest else None
        assert buf.get(q & 0xFFFF) == want
        assert buf.holds(q & 0xFFFF) is (want is not None)
