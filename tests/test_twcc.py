"""Transport-wide CC feedback (rtp.twcc): what we report is what arrived, when it arrived.

Every report is read back with the RTCP parser (rtp.rtcp), so the checks are on the bytes a
sender would get: each received seq's arrival time within half a 250 µs tick of the truth, each
lost one reported lost, every seq covered exactly once across reports, in order, across the
16-bit wrap, long pauses and bursts larger than one report.
"""

from __future__ import annotations

import random

from budgets import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from rtp.rtcp import TransportCc, parse_rtcp
from rtp.twcc import MAX_STATUS_PER_FEEDBACK, REORDER_HOLD, TransportFeedbackRecorder


def reports(recorder: TransportFeedbackRecorder, now: float) -> list[TransportCc]:
    out = []
    for data in recorder.packets_to_send(now):
        (packet,) = parse_rtcp(data)
        assert isinstance(packet, TransportCc)
        out.append(packet)
    return out


def check(sent: dict[int, float], got: list[TransportCc]) -> dict[int, bool]:
    """Every reported seq once; received ones at their true arrival (±125 µs). seq -> received."""
    seen: dict[int, bool] = {}
    for report in got:
        times = dict(report.arrival_times_us())
        for status in report.statuses():
            assert status.seq not in seen, f"seq {status.seq} reported twice"
            seen[status.seq] = status.received
            if status.received:
                assert abs(times[status.seq] - round(sent[status.seq] * 1e6)) <= 125, status
            else:
                assert status.seq not in sent
    return seen


def test_arrivals_and_losses_come_back_as_they_happened() -> None:
    recorder = TransportFeedbackRecorder(sender_ssrc=1)
    assert recorder.next_deadline() is None and recorder.packets_to_send(5.0) == []
    arrivals = {}
    t = 100.0
    for seq in range(65500, 65536 + 40):  # across the 16-bit wrap
        t += 0.0031
        if seq % 7 == 3:
            continue  # lost
        arrivals[seq & 0xFFFF] = t
        recorder.record(seq & 0xFFFF, 0xABC, t)
        if len(arrivals) == 1:
            first = t
            assert recorder.next_deadline() == first + recorder.interval
            assert recorder.packets_to_send(first + recorder.interval / 2) == []  # not due yet
    assert recorder.next_deadline() == first + recorder.interval
    got = reports(recorder, t + 0.1)
    seen = check(arrivals, got)
    assert [s for s, ok in seen.items() if ok] == list(arrivals)
    assert [s for s, ok in seen.items() if not ok] == [s & 0xFFFF for s in range(65500, 65576) if s % 7 == 3]
    assert all(r.media_ssrc == 0xABC and r.sender_ssrc == 1 for r in got)
    assert recorder.next_deadline() is None  # nothing left to report


def test_reordered_and_late_packets() -> None:
    recorder = TransportFeedbackRecorder(sender_ssrc=1)
    recorder.record(10, 5, 1.000)
    recorder.record(12, 5, 1.002)
    recorder.record(11, 5, 1.004)  # reordered: still reported, with its own arrival time
    got = reports(recorder, 1.2)
    assert check({10: 1.000, 11: 1.004, 12: 1.002}, got) == {10: True, 11: True, 12: True}
    deltas = [s.delta_us for s in got[0].statuses()]
    assert deltas[1] == 4000 and deltas[2] == -2000  # negative deltas for the reordered one
    recorder.record(9, 5, 1.3)  # after its seq was reported: dropped and counted
    assert recorder.late_dropped == 1 and recorder.next_deadline() is None


def test_long_pauses_and_big_bursts_are_split_into_reports() -> None:
    recorder = TransportFeedbackRecorder(sender_ssrc=1)
    arrivals = {}
    t = 0.0
    for seq in range(2500):
        t += 0.0001
        if seq == 1200:
            t += 20.0  # longer than a 16-bit delta can say
        arrivals[seq] = t
        recorder.record(seq, 7, t)
    got = reports(recorder, t + 1)
    assert len(got) >= 4 and all(r.status_count <= MAX_STATUS_PER_FEEDBACK for r in got)
    assert [r.feedback_count for r in got] == list(range(len(got)))
    assert check(arrivals, got) == {seq: True for seq in range(2500)}


@settings(max_examples=examples(2), deadline=None)
@given(st.integers(0, 2**32 - 1), st.lists(st.tuples(st.integers(0, 40), st.floats(0, 0.05)), min_size=1, max_size=300))
def test_any_arrival_pattern_is_reported_faithfully(seed: int, steps: list[tuple[int, float]]) -> None:
    rng = random.Random(seed)
    recorder = TransportFeedbackRecorder(sender_ssrc=9)
    seq, t = rng.randrange(65536), 50.0
    sent: dict[int, float] = {}
    got: list[TransportCc] = []
    for gap, dt in steps:
        seq = (seq + 1 + (gap if gap > 35 else 0)) & 0xFFFF  # mostly in order, some losses
        t += dt
        if seq not in sent:
            sent[seq] = t
            recorder.record(seq, 1, t)
        if rng.random() < 0.1:
            got += reports(recorder, t + 1)
            t += 1
    got += reports(recorder, t + 1)
    seen = check(sent, got)
    assert {s for s, ok in seen.items() if ok} == set(sent) and recorder.late_dropped == 0


def test_a_young_hole_is_held_back_until_it_is_old_enough_to_be_a_loss() -> None:
    # The field report's link (20 ± 5 ms, reordering): a packet overtaken on the way must not be
    # reported lost, since libwebrtc's sender counts a reported loss even if a later report says
    # it arrived, and cuts its estimate (its top simulcast layer goes off).
    recorder = TransportFeedbackRecorder(sender_ssrc=1)
    for seq in (0, 1, 2, 4, 5):
        recorder.record(seq, 5, 1.0 + seq * 0.001)
    (first,) = reports(recorder, 1.1)  # 4 and 5 came ~95 ms ago: 3 is lost by now
    assert [(s.seq, s.received) for s in first.statuses()] == [(0, True), (1, True), (2, True), (3, False),
                                                              (4, True), (5, True)]
    for seq, at in ((6, 1.2), (7, 1.29), (9, 1.295)):
        recorder.record(seq, 5, at)
    (second,) = reports(recorder, 1.3)  # 8's hole is 5 ms old: held back with what follows it
    assert [(s.seq, s.received) for s in second.statuses()] == [(6, True), (7, True)]
    assert recorder.next_deadline() == 1.3 + REORDER_HOLD
    recorder.record(8, 5, 1.301)  # it was reordering
    (third,) = reports(recorder, 1.3 + REORDER_HOLD)
    assert [(s.seq, s.received) for s in third.statuses()] == [(8, True), (9, True)]


def test_a_packet_reported_lost_and_arriving_later_is_reported_again_as_received() -> None:
    recorder = TransportFeedbackRecorder(sender_ssrc=1)
    for seq in (0, 1, 2, 4, 5):
        recorder.record(seq, 5, 1.0 + seq * 0.001)
    (first,) = reports(recorder, 1.1)
    assert (3, False) in [(s.seq, s.received) for s in first.statuses()]
    recorder.record(3, 5, 1.101)  # 97 ms late: reported lost already
    recorder.record(6, 5, 1.102)
    (second,) = reports(recorder, 1.25)
    assert [(s.seq, s.received) for s in second.statuses()] == [(3, True), (4, True), (5, True), (6, True)]
    assert dict(second.arrival_times_us())[3] == 1_101_000
    assert recorder.late_reported == 1 and recorder.late_dropped == 0
    recorder.record(4, 5, 1.26)  # a duplicate: nothing to report again
    assert recorder.packets_to_send(1.4) == [] and recorder.next_deadline() is None


def test_a_packet_later_than_the_reorder_window_is_dropped_and_counted() -> None:
    recorder = TransportFeedbackRecorder(sender_ssrc=1)
    for seq in (0, 2):
        recorder.record(seq, 5, 1.0)
    reports(recorder, 1.1)
    recorder.record(3, 5, 2.0)
    reports(recorder, 2.1)  # seq 0 and 2 leave the window (older than REORDER_WINDOW)
    recorder.record(1, 5, 2.15)
    assert recorder.late_dropped == 1 and recorder.late_reported == 0


@settings(max_examples=examples(2), deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(50, 400))
def test_under_jitter_no_packet_is_ever_reported_lost(seed: int, count: int) -> None:
    # 20 ± 5 ms of uniform jitter on 1 ms spacing (the field report's link): every seq is
    # reported once, received, at its true arrival time — never lost first.
    rng = random.Random(seed)
    recorder = TransportFeedbackRecorder(sender_ssrc=9)
    arrivals = sorted((i * 0.001 + 0.02 + rng.uniform(-0.005, 0.005), i) for i in range(count))
    final: dict[int, tuple[bool, int | None]] = {}
    t_report = 0.1
    for at, seq in arrivals:
        while at >= t_report:
            for report in reports(recorder, t_report):
                times = dict(report.arrival_times_us())
                for status in report.statuses():
                    assert status.seq not in final, f"seq {status.seq} reported twice"
                    final[status.seq] = (status.received, times.get(status.seq))
            deadline = recorder.next_deadline()
            t_report = max(t_report + 0.001, deadline if deadline is not None else t_report + 0.1)
        recorder.record(seq, 1, at)
    for report in reports(recorder, t_report + 1):
        times = dict(report.arrival_times_us())
        for status in report.statuses():
            final[status.seq] = (status.received, times.get(status.seq))
    truth = {seq: at for at, seq in arrivals}
    assert set(final) == set(truth)
    for seq, (received, at_us) in final.items():
        assert received and abs(at_us - round(truth[seq] * 1e6)) <= 125, seq
    assert recorder.late_dropped == 0 and recorder.late_reported == 0
