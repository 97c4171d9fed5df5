"""Active speakers (trio_sfu.media.speakers): a meter per audio track, fed RFC 6464 levels with
RTP timestamps, and a room's observer that reports who speaks, loudest first, at a bounded rate.
The numbers are LiveKit's defaults: -35 dBov is speech, 40 % of a 400 ms window, EMA over two."""

from __future__ import annotations

import pytest

from trio_sfu.media.speakers import (
    AudioLevelConfig,
    AudioLevelMeter,
    Speaker,
    SpeakerObserver,
    linear_level,
    quantize,
)

CLOCK = 48000
FRAME = 960  # 20 ms of Opus


def feed(meter: AudioLevelMeter, level: int, seconds: float, start_ts: int, start: float) -> tuple[int, float]:
    """`seconds` of 20 ms packets at `level`; returns the next timestamp and time."""
    ts, now = start_ts, start
    for _ in range(int(round(seconds / 0.02))):
        ts = (ts + FRAME) & 0xFFFFFFFF
        now += 0.02
        meter.observe(level, ts, now)
    return ts, now


def test_a_loud_window_speaks_and_smoothing_reaches_the_level_over_windows():
    meter = AudioLevelMeter(CLOCK)
    ts, now = feed(meter, 20, 0.42, 1000, 0.0)  # one full window at -20 dBov
    level, active = meter.level(now)
    # EMA with factor 2/3 from 0: two thirds of the linear level after one window.
    assert level == pytest.approx(linear_level(20) * 2 / 3)
    assert active
    ts, now = feed(meter, 20, 0.4, ts, now)
    level2, _ = meter.level(now)
    assert level < level2 < linear_level(20)
    assert level2 == pytest.approx(linear_level(20) * (2 / 3 + 2 / 9))


def test_quiet_or_mostly_quiet_windows_do_not_speak():
    meter = AudioLevelMeter(CLOCK)
    ts, now = feed(meter, 50, 0.42, 0, 0.0)  # below -35 dBov all along
    assert meter.level(now) == (0.0, False)
    # Loud for 100 ms of 400 (25 % < 40 %): not speech either.
    ts, now = feed(meter, 10, 0.1, ts, now)
    ts, now = feed(meter, 60, 0.32, ts, now)
    assert meter.level(now) == (0.0, False)


def test_a_partly_loud_window_is_quieter_by_how_little_of_it_was_loud():
    meter = AudioLevelMeter(CLOCK, AudioLevelConfig(smooth_intervals=0))
    ts, now = feed(meter, 60, 0.22, 0, 0.0)  # the first packet only starts the clock
    ts, now = feed(meter, 20, 0.2, ts, now)  # loud half the window
    level, active = meter.level(now)
    # Half the window loud: 20*log10(0.5) = -6 dB quieter than the loudest level.
    assert level == pytest.approx(linear_level(20 + 6.0206), rel=1e-3)
    assert active


def test_a_speaker_that_stops_sending_falls_silent_after_two_windows():
    meter = AudioLevelMeter(CLOCK)
    ts, now = feed(meter, 10, 0.8, 0, 0.0)
    assert meter.level(now)[1]
    assert meter.level(now + 0.79)[1]
    assert meter.level(now + 0.8) == (0.0, False)


def test_duration_comes_from_rtp_timestamps_and_late_packets_are_ignored():
    meter = AudioLevelMeter(CLOCK, AudioLevelConfig(smooth_intervals=0))
    # Bursty arrival (all at once) still counts 400 ms of audio: the timestamps say so.
    ts = 0xFFFFF000  # and across the 32-bit wrap
    meter.observe(10, ts, 0.0)
    for _ in range(20):
        late = ts
        ts = (ts + FRAME) & 0xFFFFFFFF
        meter.observe(10, ts, 0.0)
        meter.observe(0, late, 0.0)  # a retransmitted older packet: no audio of its own
    level, active = meter.level(0.0)
    assert active and level == pytest.approx(linear_level(10))


def test_observer_reports_a_speaker_starting_and_stopping():
    observer = SpeakerObserver(interval=0.4)
    assert observer.update({"PA_a": (0.0, False)}, 0.0) == []
    assert observer.update({"PA_a": (0.5, True)}, 0.4) == [Speaker("PA_a", 0.5, True)]
    # Same level: no change, nothing to say.
    assert observer.update({"PA_a": (0.49, True)}, 0.8) == []
    # Stopped: reported once, at level 0 and not active.
    assert observer.update({"PA_a": (0.0, False)}, 1.2) == [Speaker("PA_a", 0.0, False)]
    assert observer.update({"PA_a": (0.0, False)}, 1.6) == []


def test_two_speakers_are_ordered_loudest_first_and_levels_quantized():
    observer = SpeakerObserver(interval=0.4)
    changed = observer.update({"PA_quiet": (0.1, True), "PA_loud": (0.7, True), "PA_mute": (0.0, False)}, 0.0)
    assert changed == [Speaker("PA_loud", quantize(0.7), True), Speaker("PA_quiet", quantize(0.1), True)]
    assert [s.sid for s in observer.active] == ["PA_loud", "PA_quiet"]
    assert quantize(0.7) == 0.75 and quantize(0.1) == 0.125
    # The quiet one overtakes: only it changed; the list as a whole is reordered.
    changed = observer.update({"PA_quiet": (0.9, True), "PA_loud": (0.7, True)}, 0.4)
    assert changed == [Speaker("PA_quiet", 1.0, True)]
    assert [s.sid for s in observer.active] == ["PA_quiet", "PA_loud"]


def test_observer_reports_at_most_once_per_interval():
    observer = SpeakerObserver(interval=0.4)
    assert observer.update({"PA_a": (0.5, True)}, 10.0) == [Speaker("PA_a", 0.5, True)]
    assert observer.next_deadline() == pytest.approx(10.4)
    # A change within the interval waits for the next report.
    assert observer.update({"PA_a": (0.0, False)}, 10.1) is None
    assert observer.update({"PA_a": (0.0, False)}, 10.39) is None
    assert observer.update({"PA_a": (0.0, False)}, 10.4) == [Speaker("PA_a", 0.0, False)]


def test_meter_refuses_a_zero_clock_rate():
    with pytest.raises(ValueError):
        AudioLevelMeter(0)
