"""Active speakers, reckoned the way LiveKit's server does, with no I/O: levels and `now` in,
speaker lists out.

`AudioLevelMeter` (one per published audio track) takes the RFC 6464 level of every packet
with the packet's RTP timestamp, so the time each level covers is the audio's own duration, not
the arrival spacing. It collects windows of `update_interval` of audio: a window counts as
speech when at least `min_percentile` % of it was louder than `active_level` -dBov; its level is
the loudest level seen, lowered by how little of the window was loud, made linear
(10^(-dBov/20)) and smoothed with an exponential moving average over `smooth_intervals`
windows. A quiet window smooths to 0, and a meter that heard nothing for two windows (the
publisher muted, or stopped sending) reads 0: the speaker drops out.

`SpeakerObserver` (one per room) ranks the participants that are speaking, loudest first,
quantizes their levels to eighths (small wobbles are no change) and says which entries changed
since its last report, including the participants who stopped (level 0, not active); it
reports at most once per `interval`.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional

import attrs

from trio_sfu.config import AudioConfig

#: RFC 6464's silence, in -dBov.
SILENT_LEVEL = 127
#: Speaker levels are rounded up to multiples of 1/QUANTIZATION before comparing.
QUANTIZATION = 8
#: A report due at t may be made at t minus this: sums of float seconds land a hair early.
_DUE_SLACK = 1e-6


def linear_level(dbov: float) -> float:
    """-dBov (0 loudest) to a linear amplitude in (0, 1]."""
    return math.pow(10.0, -dbov / 20.0)


@attrs.frozen
class AudioLevelConfig:
    """LiveKit's `audio` settings and their defaults."""

    active_level: int = 35  # -dBov; this loud or louder is speech
    min_percentile: int = 40  # % of a window that must be speech
    update_interval: float = 0.4  # seconds of audio per window, and between speaker updates
    smooth_intervals: int = 2  # EMA over this many windows (0: none)

    @classmethod
    def from_config(cls, audio: "AudioConfig") -> "AudioLevelConfig":
        """From the server config's `audio` section (LiveKit's keys; its interval in ms)."""
        return cls(audio.active_level, audio.min_percentile, audio.update_interval / 1000, audio.smooth_intervals)

    @property
    def window_ms(self) -> int:
        return int(round(self.update_interval * 1000))


class AudioLevelMeter:
    """One audio track's smoothed level. See the module docstring."""

    __slots__ = ("clock_rate", "_window_ms", "_active_level", "_min_active_ms", "_smooth_factor",
                 "_threshold", "smoothed", "_loudest", "_active_ms", "_observed_ms", "_last_observed",
                 "_highest_timestamp")

    def __init__(self, clock_rate: int, config: AudioLevelConfig = AudioLevelConfig()) -> None:
        if clock_rate <= 0:
            raise ValueError("clock_rate must be positive")
        self.clock_rate = clock_rate
        self._window_ms = config.window_ms
        self._active_level = config.active_level
        self._min_active_ms = config.min_percentile * self._window_ms // 100
        # An EMA with the centre of mass of a simple average over smooth_intervals windows.
        self._smooth_factor = 2.0 / (config.smooth_intervals + 1) if config.smooth_intervals > 0 else 1.0
        self._threshold = linear_level(config.active_level)
        self.smoothed = 0.0
        self._loudest = SILENT_LEVEL
        self._active_ms = 0
        self._observed_ms = 0
        self._last_observed: Optional[float] = None
        self._highest_timestamp: Optional[int] = None

    def observe(self, level: int, rtp_timestamp: int, now: float) -> None:
        """One packet's level (-dBov). The audio it covers is the RTP timestamp's advance since
        the newest packet; an older packet (reordered, retransmitted) is ignored."""
        highest = self._highest_timestamp
        if highest is None:
            highest = rtp_timestamp
        advance = (rtp_timestamp - highest) & 0xFFFFFFFF
        if advance >= 1 << 31:
            return  # behind the newest: its audio was counted (or is lost) already
        self._highest_timestamp = rtp_timestamp
        self._add(level, advance * 1000 // self.clock_rate, now)

    def _add(self, level: int, duration_ms: int, now: float) -> None:
        self._last_observed = now
        self._observed_ms += duration_ms
        if level <= self._active_level:
            self._active_ms += duration_ms
            if level < self._loudest:
                self._loudest = level
        if self._observed_ms < self._window_ms:
            return
        smoothed = 0.0
        if self._active_ms >= self._min_active_ms:
            # Loud for the whole window: the loudest level as is; for part of it: quieter by
            # 20*log10 of that part (louder if the window ran long and was loud throughout).
            weight = 20.0 * math.log10(self._active_ms / self._window_ms)
            linear = linear_level(self._loudest - weight)
            smoothed = self.smoothed + (linear - self.smoothed) * self._smooth_factor
        self._restart(smoothed)

    def _restart(self, smoothed: float) -> None:
        self.smoothed = smoothed
        self._loudest = SILENT_LEVEL
        self._active_ms = 0
        self._observed_ms = 0

    def level(self, now: float) -> tuple[float, bool]:
        """(smoothed linear level, speaking) at `now`; a meter that heard nothing for two
        windows is silent."""
        last = self._last_observed
        if last is None or now - last >= 2 * self._window_ms / 1000:
            self._restart(0.0)
        return self.smoothed, self.smoothed >= self._threshold


@attrs.frozen
class Speaker:
    """One entry of a speakers update: a participant and its level (0 and not active: it stopped)."""

    sid: str
    level: float
    active: bool


def quantize(level: float) -> float:
    return math.ceil(level * QUANTIZATION) / QUANTIZATION


class SpeakerObserver:
    """A room's speakers over time. See the module docstring."""

    def __init__(self, interval: float = AudioLevelConfig().update_interval) -> None:
        self.interval = interval
        self._next_due: Optional[float] = None
        # The speakers of the last report, by participant sid, in its order.
        self._active: dict[str, Speaker] = {}

    def next_deadline(self) -> Optional[float]:
        """When the next report may be made (None: now)."""
        return self._next_due

    @property
    def active(self) -> list[Speaker]:
        """The speakers as last reported, loudest first."""
        return list(self._active.values())

    def update(self, levels: Mapping[str, tuple[float, bool]], now: float) -> Optional[list[Speaker]]:
        """`levels`: participant sid -> (level, speaking) now. Returns the changed entries (the
        speakers whose quantized level is new, loudest first, then those who stopped), empty if
        nothing changed, or None when the last report was less than `interval` ago."""
        if self._next_due is not None and now < self._next_due - _DUE_SLACK:
            return None
        self._next_due = now + self.interval
        speaking = [Speaker(sid, quantize(level), True) for sid, (level, active) in levels.items() if active]
        speaking.sort(key=lambda s: s.level, reverse=True)
        changed = [s for s in speaking if (old := self._active.get(s.sid)) is None or old.level != s.level]
        current = {s.sid: s for s in speaking}
        changed += [Speaker(sid, 0.0, False) for sid in self._active if sid not in current]
        self._active = current
        return changed


__all__ = ["AudioLevelConfig", "AudioLevelMeter", "QUANTIZATION", "SILENT_LEVEL", "Speaker", "SpeakerObserver",
           "linear_level", "quantize"]
