"""Connection quality scoring (trio_sfu.media.quality): windows of numbers in, LiveKit's score
and EXCELLENT/GOOD/POOR/LOST out."""

from __future__ import annotations

import pytest

from trio_sfu.media.quality import (
    MAX_MOS,
    Quality,
    QualityScorer,
    StreamWindow,
    WindowStats,
    packet_loss_weight,
    participant_quality,
    score_to_mos,
    score_to_quality,
)

OPUS = packet_loss_weight("audio/opus")
VP8 = packet_loss_weight("video/VP8")


def window(packets: int, lost: int = 0, **kw) -> WindowStats:
    return WindowStats(duration=5.0, packets=packets, lost=lost, **kw)


def test_clean_stream_is_excellent():
    scorer = QualityScorer(OPUS, 0.0)
    for t in (5.0, 10.0, 15.0):
        scorer.update(window(250), t)
    assert scorer.quality is Quality.EXCELLENT
    assert scorer.score == 100.0 and scorer.mos == MAX_MOS


def test_five_percent_loss_is_good_for_opus_and_video_and_poor_when_it_persists_beyond_thresholds():
    # Opus: 5 % loss costs 40 points -> window 60; from 100 it drops 80 % of the way: 68, GOOD.
    opus = QualityScorer(OPUS, 0.0)
    assert opus.update(window(200, 10), 5.0) == pytest.approx(68.0)
    assert opus.quality is Quality.GOOD
    # Persisting, it settles at the window's 60: still GOOD (Opus falls to POOR past 7.5 %).
    for t in range(2, 10):
        opus.update(window(200, 10), 5.0 * t)
    assert opus.score == pytest.approx(60.0, abs=0.01) and opus.quality is Quality.GOOD
    # Video weighs loss 10 per percent: 5 % -> window 50, GOOD; 8 % -> window 20, then POOR.
    video = QualityScorer(VP8, 0.0)
    video.update(window(1000, 50), 5.0)
    assert video.quality is Quality.GOOD
    video.update(window(1000, 80), 10.0)
    assert video.quality is Quality.POOR
    # 10 % on Opus: window 20, from 100 -> 36, POOR at once.
    opus10 = QualityScorer(OPUS, 0.0)
    assert opus10.update(window(200, 20), 5.0) == pytest.approx(36.0)
    assert opus10.quality is Quality.POOR


def test_no_packets_is_lost_when_the_sender_is_silent_and_poor_when_its_reports_still_come():
    scorer = QualityScorer(OPUS, 0.0)
    scorer.update(window(0, last_rtcp_at=1.0), 10.0)  # last SR 9 s ago, window 5 s
    assert scorer.quality is Quality.LOST
    dry = QualityScorer(OPUS, 0.0)
    dry.update(window(0, last_rtcp_at=8.0), 10.0)  # reports still arrive: dry, not lost
    assert dry.quality is Quality.POOR
    nothing_known = QualityScorer(OPUS, 0.0)
    nothing_known.update(window(0), 10.0)
    assert nothing_known.quality is Quality.POOR


def test_recovery_is_slower_than_the_drop_and_the_score_has_a_floor():
    scorer = QualityScorer(VP8, 0.0)
    scorer.update(window(100, 100), 5.0)  # everything lost: window 0, floored at 30
    assert scorer.score == 30.0 and scorer.quality is Quality.POOR
    scorer.update(window(100), 10.0)  # clean again: 40 % of the way back up
    assert scorer.score == pytest.approx(30 + 0.4 * 70)
    assert scorer.quality is Quality.GOOD


def test_muted_streams_stand_still_and_lift_to_excellent():
    scorer = QualityScorer(OPUS, 0.0)
    scorer.update(window(200, 20), 5.0)
    assert scorer.quality is Quality.POOR
    scorer.set_muted(True, 6.0)
    assert scorer.quality is Quality.EXCELLENT
    scorer.update(window(0, last_rtcp_at=0.0), 10.0)  # a muted publisher sends nothing: not LOST
    assert scorer.quality is Quality.EXCELLENT
    # Unmuted late in a window: that window does not count yet.
    scorer.set_muted(False, 14.0)
    scorer.update(window(10, 5), 15.0)
    assert scorer.quality is Quality.EXCELLENT
    scorer.update(window(200, 20), 20.0)
    assert scorer.quality is Quality.POOR


def test_delay_and_bitrate_count_when_included():
    w = window(200, rtt_max=0.2, jitter_max=0.03)  # 100 ms + 60 ms = 160 ms: 4 points
    assert w.packet_score(OPUS) == 100.0
    assert w.packet_score(OPUS, include_rtt=True, include_jitter=True) == pytest.approx(96.0)
    slow = window(200, rtt_max=0.6)  # 300 ms effective: (300 - 120) / 10 = 18 points
    assert slow.packet_score(OPUS, include_rtt=True) == pytest.approx(82.0)
    # Bitrate: ~2.7x below the expected is the GOOD boundary, ~20x the POOR one.
    got = window(200, bytes=100_000)
    assert got.bitrate_score(800_000) == 100.0
    assert score_to_quality(got.bitrate_score(800_000 * 3)) is Quality.GOOD
    assert score_to_quality(got.bitrate_score(800_000 * 21)) is Quality.POOR
    assert window(200).bitrate_score(0) == 100.0


def test_score_to_quality_boundaries_and_mos():
    assert [score_to_quality(s) for s in (100, 80.1, 80, 40.1, 40, 20.1, 20, 0)] == [
        Quality.EXCELLENT, Quality.EXCELLENT, Quality.GOOD, Quality.GOOD, Quality.POOR, Quality.POOR,
        Quality.LOST, Quality.LOST]
    assert score_to_mos(0) == 1.0 and score_to_mos(100) == 4.5
    assert 1.0 < score_to_mos(60) < score_to_mos(80) < 4.5


def test_participant_quality_is_its_worst_stream():
    good, poor, poorer = (QualityScorer(OPUS, 0.0) for _ in range(3))
    good.update(window(200, 5), 5.0)
    poor.update(window(200, 20), 5.0)
    poorer.update(window(200, 40), 5.0)
    quality, mos = participant_quality([good, poor, poorer])
    assert quality is Quality.POOR and mos == pytest.approx(score_to_mos(poorer.score))
    assert participant_quality([]) == (Quality.EXCELLENT, MAX_MOS)


def test_stream_window_deltas_restarts_and_priming():
    w = StreamWindow(0.0)
    first = w.advance(100, 2, 10_000, 5.0)
    assert (first.packets, first.lost, first.bytes, first.duration) == (100, 2, 10_000, 5.0)
    second = w.advance(250, 5, 25_000, 10.0)
    assert (second.packets, second.lost, second.bytes) == (150, 3, 15_000)
    restarted = w.advance(40, 0, 4000, 15.0)  # counters went backwards: a new stream
    assert (restarted.packets, restarted.lost, restarted.bytes) == (40, 0, 4000)
    # Unprimed (a receiver report's sequence numbers start anywhere): the first reading is a base.
    rr = StreamWindow(0.0, primed=False)
    assert rr.advance(31_000, 3, 0, 5.0) is None
    delta = rr.advance(31_250, 13, 0, 10.0)
    assert (delta.packets, delta.lost) == (250, 10)


def test_loss_weights_by_codec():
    assert packet_loss_weight("audio/opus") == 8.0
    assert packet_loss_weight("audio/opus", fec=True) == pytest.approx(8.0 / 1.5)
    assert packet_loss_weight("audio/red") == 4.0
    assert packet_loss_weight("video/H264") == 10.0
    assert packet_loss_weight("audio/PCMU") == 0.0


def test_loss_weighs_less_below_the_usual_packet_rate():
    # 50 packets/s is this stream's usual rate (Opus at 20 ms); in DTX silence it sends 5 %
    # of that: the same loss percentage costs sqrt(0.05) of the weight there.
    scorer = QualityScorer(OPUS, 0.0)
    for t in range(1, 13):
        scorer.update(window(250), 5.0 * t)
    assert scorer.pps_mode * 2 == 50
    dtx = WindowStats(duration=5.0, packets=12, lost=1)  # 2.5 packets/s, one lost: 8.3 %
    assert scorer.adjusted_loss_weight(dtx, 65.0) == pytest.approx(8.0 * (2.4 / 50) ** 0.5)
    scorer.update(dtx, 70.0)
    assert scorer.quality is Quality.EXCELLENT  # 100 - 8.3 x 1.75 = 85
    # At the usual rate the same percentage is POOR.
    assert score_to_quality(window(250, 21).packet_score(scorer.adjusted_loss_weight(window(250, 21), 75.0))) \
        is Quality.POOR
    # Before the mode is known the weight is the codec's.
    assert QualityScorer(OPUS, 0.0).adjusted_loss_weight(dtx, 5.0) == OPUS
