"""Receive statistics on synthetic streams with known loss/jitter, and against aiortc's StreamStatistics."""

from __future__ import annotations

import random

import aiortc.rtcrtpreceiver as aiortc_receiver
import aiortc.rtp as aiortc_rtp
import pytest
from budgets import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from rtp.rtcp import ReceiverReport, compact_ntp, parse_rtcp
from rtp.receive_stats import LastSenderReport, ReceiveStatistics

VIDEO = 90000


def _feed(stats, seqs, start_time=0.0, frame_ticks=3000, interval=1 / 30):
    """One packet per frame: seq i carries timestamp i*frame_ticks and arrives at i*interval."""
    for i in seqs:
        stats.on_packet(i & 0xFFFF, (i * frame_ticks) & 0xFFFFFFFF, start_time + i * interval)


def test_known_loss_and_fraction_per_interval():
    stats = ReceiveStatistics(1, VIDEO, probation=0)
    # First interval: 1000 packets, every 10th lost.
    _feed(stats, [i for i in range(1000) if i % 10 != 5])
    block = stats.report_block(now=40.0)
    assert stats.expected == 1000 and stats.received == 900
    assert block.packets_lost == 100
    assert block.fraction_lost == (100 << 8) // 1000  # 25
    assert block.highest_sequence == 999
    # Second interval: 500 more, every 4th lost -> 125 lost of 500 -> 64/256.
    _feed(stats, [i for i in range(1000, 1500) if i % 4 != 0])
    block = stats.report_block(now=60.0)
    assert block.fraction_lost == (125 << 8) // 500
    assert block.packets_lost == 225
    # Third interval with nothing new: nothing lost in it.
    assert stats.report_block(now=61.0).fraction_lost == 0


def test_sequence_wrap_counts_cycles():
    stats = ReceiveStatistics(1, VIDEO, probation=0)
    start = 65000
    _feed(stats, range(start, start + 2000))
    assert stats.cycles == 1 << 16
    assert stats.extended_highest_sequence == start + 1999
    assert stats.lost == 0
    assert stats.report_block(100.0).highest_sequence == start + 1999


def test_probation_requires_sequential_packets():
    stats = ReceiveStatistics(7, VIDEO)  # MIN_SEQUENTIAL = 2
    assert not stats.on_packet(100, 0, 0.0)
    assert stats.report_block(0.0) is None
    assert not stats.on_packet(300, 0, 0.1)  # not sequential: probation restarts
    assert stats.on_packet(301, 0, 0.2)  # second in sequence: source validated (A.1)
    assert stats.is_valid and stats.received == 1 and stats.base_seq == 301
    assert stats.on_packet(302, 3000, 0.3)
    assert stats.report_block(0.4).packets_lost == 0


def test_duplicates_and_reordering():
    stats = ReceiveStatistics(1, VIDEO, probation=0)
    for seq in (10, 11, 13, 12, 12, 14):
        assert stats.on_packet(seq, seq * 3000, seq / 30)
    assert stats.expected == 5 and stats.received == 6
    assert stats.lost == -1  # RFC 3550 A.3: duplicates can make "lost" negative
    assert stats.cycles == 0 and stats.max_seq == 14


def test_large_jump_is_a_restart_only_when_confirmed():
    stats = ReceiveStatistics(1, VIDEO, probation=0)
    _feed(stats, range(0, 100))
    assert not stats.on_packet(20000, 0, 5.0)  # a stray packet far away: ignored
    assert stats.on_packet(100, 100 * 3000, 5.1)
    assert not stats.on_packet(40000, 0, 6.0)
    assert stats.on_packet(40001, 3000, 6.1)  # confirmed: sender restarted
    assert stats.base_seq == 40001 and stats.received == 1 and stats.lost == 0
    assert stats.on_packet(40002, 6000, 6.2)
    assert stats.lost == 0 and stats.expected == 2


def test_jitter_zero_for_constant_transit():
    stats = ReceiveStatistics(1, VIDEO, probation=0)
    _feed(stats, range(300), start_time=12.345)
    assert stats.jitter == pytest.approx(0.0, abs=1e-6)


def test_jitter_converges_to_alternating_delay():
    # Every other packet is 1 ms late: |D| = 90 ticks at 90 kHz each time, so J -> 90.
    stats = ReceiveStatistics(1, VIDEO, probation=0)
    for i in range(500):
        late = 0.001 if i % 2 else 0.0
        stats.on_packet(i, i * 3000, i / 30 + late)
    assert stats.jitter == pytest.approx(90, rel=1e-3)
    assert stats.report_block(20.0).jitter in (89, 90)


def test_jitter_ignores_packets_of_the_same_frame():
    stats = ReceiveStatistics(1, VIDEO, probation=0)
    seq = 0
    for frame in range(200):
        for k in range(5):  # five packets per frame, paced 2 ms apart by the sender
            stats.on_packet(seq, frame * 3000, frame / 30 + k * 0.002)
            seq += 1
    # Frame starts arrive at constant transit, so there is no network jitter.
    assert stats.jitter == pytest.approx(0.0, abs=1e-6)


def test_lsr_and_dlsr():
    stats = ReceiveStatistics(0x11223344, VIDEO, probation=0)
    _feed(stats, range(10))
    ntp = 0xE1D2C3B4_A5968778
    stats.on_sender_report(ntp, now=10.0)
    block = stats.report_block(now=10.5)
    assert block.lsr == compact_ntp(ntp) == 0xC3B4A596
    assert block.dlsr == 32768  # 0.5 s in 1/65536 s units
    explicit = stats.report_block(now=11.0, last_sr=LastSenderReport(ntp, 10.75))
    assert explicit.dlsr == 16384
    # The block serialises into an RR that aiortc reads back identically.
    rr = ReceiverReport(1, [block])
    (theirs,) = aiortc_rtp.RtcpPacket.parse(rr.serialize())
    assert (theirs.reports[0].lsr, theirs.reports[0].dlsr) == (block.lsr, block.dlsr)
    assert parse_rtcp(rr.serialize()) == [rr]


def test_no_report_before_first_packet():
    assert ReceiveStatistics(1, 48000).report_block(0.0) is None


@settings(max_examples=examples(0.6), deadline=None)
@given(
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFFFFFF),
    st.floats(0.0, 0.2),  # loss probability
    st.floats(0.0, 0.02),  # max network delay variation, seconds
    st.integers(0, 2**32 - 1),
)
def test_matches_aiortc_stream_statistics(start_seq, start_ts, loss, spread, seed):
    rng = random.Random(seed)
    ours = ReceiveStatistics(1, 48000, probation=0)
    theirs = aiortc_receiver.StreamStatistics(48000)
    clock = {"now": 0.0}
    original = aiortc_receiver.time.time
    aiortc_receiver.time.time = lambda: clock["now"]
    try:
        for i in range(400):
            if i > 0 and rng.random() < loss:
                continue
            # 20 ms audio frames; arrival = send time + base delay + variable delay.
            now = 1000.0 + i * 0.02 + 0.05 + rng.random() * spread
            clock["now"] = now
            seq = (start_seq + i) & 0xFFFF
            ts = (start_ts + i * 960) & 0xFFFFFFFF
            ours.on_packet(seq, ts, now)
            theirs.add(aiortc_rtp.RtpPacket(sequence_number=seq, timestamp=ts))
        block = ours.report_block(now=clock["now"])
    finally:
        aiortc_receiver.time.time = original
    assert block.highest_sequence == theirs.cycles + theirs.max_seq
    assert ours.expected == theirs.packets_expected
    assert block.packets_lost == theirs.packets_lost
    assert block.fraction_lost == theirs.fraction_lost
    # aiortc keeps jitter in Q4 integers on truncated arrival ticks; we use floats.
    assert abs(block.jitter - theirs.jitter) <= 2
