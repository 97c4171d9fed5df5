"""Dynacast: tell a simulcast publisher which of its layers anyone receives, so it stops
encoding the others (LiveKit's `subscribed_quality_update`).

Sans-IO: the owner reports the layers the track's subscribers ask for
(`TrackReceiver.subscribed_layers`: each local subscriber's settings cap, even while its
allocator forwards less — as LiveKit's max subscribed quality — and what other nodes ask for
through the relay) and `now`; it gets back the highest
quality to announce, when one is due. As LiveKit does it, a higher quality is announced at once
(a subscriber is waiting for it) and a lower one only after `pause_delay` seconds in which no
higher demand came back (subscribers come and go, layers switch back and forth; the publisher's
encoder should not). Qualities up to the highest wanted are enabled — the lower layers cost
little and keep a fallback ready — and none when nobody wants the track.
"""

from __future__ import annotations

from typing import AbstractSet, Optional

from trio_sfu.forwarding.simulcast import VideoQuality

#: LiveKit's default `video.dynacast_pause_delay`.
DEFAULT_PAUSE_DELAY = 5.0


class DynacastQuality:
    """The highest quality announced for one published track, debounced downwards.

    The publisher starts with every layer on (it encodes all it announced), so that is the
    state before any announcement: the first news is a lower quality, after the delay, or
    nothing at all.
    """

    def __init__(self, *, pause_delay: float = DEFAULT_PAUSE_DELAY) -> None:
        if pause_delay < 0:
            raise ValueError("pause_delay must not be negative")
        self.pause_delay = pause_delay
        self.committed = VideoQuality.HIGH  # OFF: no layer wanted
        self._pending: Optional[VideoQuality] = None
        self._pending_due = 0.0
        self.updates = 0

    @staticmethod
    def quality_of(wanted: AbstractSet[int]) -> VideoQuality:
        usable = [layer for layer in wanted if VideoQuality.LOW <= layer <= VideoQuality.HIGH]
        return VideoQuality(max(usable)) if usable else VideoQuality.OFF

    def demand(self, wanted: AbstractSet[int], now: float) -> Optional[VideoQuality]:
        """The layers wanted now; returns the quality to announce at once, if any."""
        quality = self.quality_of(wanted)
        committed = self.committed
        if quality == committed:
            self._pending = None
            return None
        if committed == VideoQuality.OFF or (quality != VideoQuality.OFF and quality > committed):
            return self._commit(quality)  # more is wanted: at once
        if self._pending is None:
            self._pending_due = now + self.pause_delay  # the first downgrade starts the wait
        self._pending = quality
        return None

    def next_deadline(self) -> Optional[float]:
        return self._pending_due if self._pending is not None else None

    def poll(self, now: float) -> Optional[VideoQuality]:
        """The downgrade announced now that its wait is over, if one is due."""
        pending = self._pending
        if pending is None or now < self._pending_due:
            return None
        return self._commit(pending)

    def _commit(self, quality: VideoQuality) -> VideoQuality:
        self._pending = None
        self.committed = quality
        self.updates += 1
        return quality


def enabled_qualities(quality: VideoQuality) -> list[tuple[VideoQuality, bool]]:
    """(quality, enabled) for LOW..HIGH when `quality` is the highest wanted (OFF: none)."""
    return [(q, quality != VideoQuality.OFF and q <= quality)
            for q in (VideoQuality.LOW, VideoQuality.MEDIUM, VideoQuality.HIGH)]


__all__ = ["DEFAULT_PAUSE_DELAY", "DynacastQuality", "enabled_qualities"]
