"""16-bit sequence and 32-bit timestamp wrap arithmetic."""

from __future__ import annotations

from budgets import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from rtp.seqnum import SequenceUnwrapper, TimestampUnwrapper, seq_diff, seq_newer, timestamp_diff


def test_seq_newer_across_wrap():
    assert seq_newer(0, 65535)
    assert seq_newer(5, 65530)
    assert not seq_newer(65535, 0)
    assert not seq_newer(7, 7)
    assert seq_diff(2, 65534) == 4 and seq_diff(65534, 2) == -4


def test_half_circle_tie_is_antisymmetric():
    assert seq_newer(40000, 40000 - 32768) != seq_newer(40000 - 32768, 40000)


@settings(max_examples=examples(3), deadline=None)
@given(st.integers(0, 0xFFFF), st.integers(-32767, 32767))
def test_seq_diff_matches_offset(base, offset):
    other = (base + offset) & 0xFFFF
    assert seq_diff(other, base) == offset
    assert seq_newer(other, base) == (offset > 0)


@settings(max_examples=examples(3), deadline=None)
@given(st.integers(0, 0xFFFF), st.lists(st.integers(-200, 3000), min_size=1, max_size=200))
def test_unwrapper_recovers_a_running_counter(start, steps):
    # A counter that mostly advances, sometimes goes back a little (reordering).
    unwrapper = SequenceUnwrapper()
    assert unwrapper.unwrap(start) == start
    true = start
    newest = start
    for step in steps:
        true = max(true + step, newest - 30000)
        newest = max(newest, true)
        assert unwrapper.unwrap(true & 0xFFFF) == true


def test_timestamp_unwrap_and_diff():
    u = TimestampUnwrapper()
    assert u.unwrap(0xFFFFFF00) == 0xFFFFFF00
    assert u.unwrap(0x100) == (1 << 32) + 0x100
    assert u.unwrap(0xFFFFFFF0) == 0xFFFFFFF0  # late packet from before the wrap
    assert timestamp_diff(0x100, 0xFFFFFF00) == 0x200
    assert u.peek(0x200) == (1 << 32) + 0x200 and u.last == (1 << 32) + 0x100
