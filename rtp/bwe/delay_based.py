"""The delay-based half of the estimate: is the bottleneck's queue growing?

Packets sent within a few milliseconds of each other form a group (a burst the network sees as
one); for consecutive groups the change in one-way delay is (arrival gap - send gap). Summed, that
is the queueing delay's course; the trendline filter fits a line through its smoothed recent
samples, and its slope says whether the queue grows (over-use), drains (under-use) or holds.
The threshold the slope is compared with adapts, so a sender competing with other flows is not
starved by a fixed one. An AIMD controller turns the signal into a rate: multiplicative
increase far from the last known link capacity, additive near it, and on over-use a cut to a
fraction of what the receiver actually got (the acknowledged bitrate).

Times are seconds (floats) in, internal arithmetic in milliseconds where the constants are.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Optional

import attrs

#: Packets sent within this span of a group's first packet belong to it.
GROUP_SPAN = 0.005
#: Packets arriving this close together, sooner than they were sent apart, are one burst (one
#: group), as long as the burst lasts no longer than `MAX_BURST` (libwebrtc's figures).
BURST_SPAN = 0.005
MAX_BURST = 0.1
#: Trendline: samples in the regression window, smoothing of the accumulated delay, gain.
TRENDLINE_WINDOW = 20
TRENDLINE_SMOOTHING = 0.9
TRENDLINE_GAIN = 4.0
#: The slope counts more the more deltas back it up, up to this many.
_MAX_DELTAS = 60
#: Adaptive threshold (ms): start, bounds, and how fast it follows the trend up and down.
THRESHOLD_START = 12.5
_THRESHOLD_MIN, _THRESHOLD_MAX = 6.0, 600.0
_K_UP, _K_DOWN = 0.0087, 0.039
#: Over-use must last this long (ms) and be seen twice before it is signalled.
_OVERUSE_TIME = 10.0
#: On over-use the rate becomes this fraction of the acknowledged bitrate.
BETA = 0.85
#: Multiplicative increase per second while far from the link capacity.
MULTIPLICATIVE_INCREASE = 1.08
#: After a decrease, another waits this long (the queue needs a round trip to drain).
_DECREASE_INTERVAL = 0.3
#: How long a probe result vouches for the link against a stale acknowledged bitrate.
_PROBE_MEMORY = 1.0
#: After a probe is judged, over-use for this long is put down to the probe's own queue.
PROBE_GRACE = 0.5


class BandwidthUsage(enum.Enum):
    NORMAL = "normal"
    OVERUSING = "overusing"
    UNDERUSING = "underusing"


class RateControlState(enum.Enum):
    HOLD = "hold"
    INCREASE = "increase"
    DECREASE = "decrease"


@attrs.define
class _Group:
    first_send: float
    last_send: float
    first_arrival: float
    last_arrival: float


class InterArrival:
    """Groups packets by send time; gives (send delta, arrival delta) in seconds per completed group.

    Fed in arrival order (libwebrtc sorts each feedback by receive time): a group then completes
    at its last packet's arrival and arrival deltas are never negative. Feeding in sequence order
    instead, under jitter that reorders, made a group's arrival delta negative about as often as
    jitter pulled it early, and those samples were dropped — so only the late half of the noise
    reached the trendline, which then read a random link as a growing queue (over-use on a link
    of any capacity). A packet sent before the current group began arrived late, overtaken: it
    is left out, as libwebrtc does."""

    def __init__(self) -> None:
        self._current: Optional[_Group] = None
        self._previous: Optional[_Group] = None

    def add(self, send: float, arrival: float) -> Optional[tuple[float, float, float]]:
        """A received packet, in arrival order; (send delta, arrival delta, arrival) when a group completed."""
        cur = self._current
        if cur is None:
            self._current = _Group(send, send, arrival, arrival)
            return None
        if send < cur.first_send:
            return None  # overtaken by a later group: not worth a sample
        if send - cur.first_send <= GROUP_SPAN or self._in_burst(cur, send, arrival):
            cur.last_send = max(cur.last_send, send)
            cur.last_arrival = max(cur.last_arrival, arrival)
            return None
        prev, self._previous, self._current = self._previous, cur, _Group(send, send, arrival, arrival)
        if prev is None:
            return None
        arrival_delta = cur.last_arrival - prev.last_arrival
        if arrival_delta < 0:
            return None  # fed out of arrival order: no sample
        return cur.last_send - prev.last_send, arrival_delta, cur.last_arrival

    @staticmethod
    def _in_burst(cur: _Group, send: float, arrival: float) -> bool:
        """libwebrtc's burst rule: a packet that arrives within `BURST_SPAN` of the group's last,
        sooner after it than it was sent (a queue released them together), within
        `MAX_BURST` of the group's first arrival, is part of the same group."""
        arrival_delta = arrival - cur.last_arrival
        propagation_delta = arrival_delta - (send - cur.last_send)
        return (propagation_delta < 0 and arrival_delta <= BURST_SPAN
                and arrival - cur.first_arrival < MAX_BURST)


class TrendlineDetector:
    """Trendline filter and over-use detector (GCC): delay variations in, a usage signal out."""

    def __init__(self) -> None:
        self._accumulated = 0.0
        self._smoothed = 0.0
        self._first_arrival: Optional[float] = None
        self._samples: deque[tuple[float, float]] = deque(maxlen=TRENDLINE_WINDOW)
        self._deltas = 0
        self.threshold = THRESHOLD_START
        self._last_threshold_update: Optional[float] = None
        self._prev_trend = 0.0
        self._time_overusing = -1.0
        self._overuse_count = 0
        self.trend = 0.0
        self.state = BandwidthUsage.NORMAL

    def update(self, send_delta: float, arrival_delta: float, arrival: float) -> BandwidthUsage:
        delta_ms = (arrival_delta - send_delta) * 1000.0
        self._deltas = min(self._deltas + 1, _MAX_DELTAS)
        if self._first_arrival is None:
            self._first_arrival = arrival
        self._accumulated += delta_ms
        self._smoothed = TRENDLINE_SMOOTHING * self._smoothed + (1 - TRENDLINE_SMOOTHING) * self._accumulated
        self._samples.append(((arrival - self._first_arrival) * 1000.0, self._smoothed))
        if len(self._samples) == TRENDLINE_WINDOW:
            slope = _slope(self._samples)
            if slope is not None:
                self.trend = slope
        self._detect(send_delta * 1000.0, arrival * 1000.0)
        return self.state

    def _detect(self, send_delta_ms: float, now_ms: float) -> None:
        modified = min(self._deltas, _MAX_DELTAS) * self.trend * TRENDLINE_GAIN
        if modified > self.threshold:
            if self._time_overusing < 0:
                self._time_overusing = send_delta_ms / 2  # assume half the gap was over-use
            else:
                self._time_overusing += send_delta_ms
            self._overuse_count += 1
            if self._time_overusing > _OVERUSE_TIME and self._overuse_count > 1 and self.trend >= self._prev_trend:
                self._time_overusing = 0.0
                self._overuse_count = 0
                self.state = BandwidthUsage.OVERUSING
        elif modified < -self.threshold:
            self._time_overusing = -1.0
            self._overuse_count = 0
            self.state = BandwidthUsage.UNDERUSING
        else:
            self._time_overusing = -1.0
            self._overuse_count = 0
            self.state = BandwidthUsage.NORMAL
        self._prev_trend = self.trend
        self._adapt_threshold(modified, now_ms)

    def _adapt_threshold(self, modified: float, now_ms: float) -> None:
        last = self._last_threshold_update
        self._last_threshold_update = now_ms
        if last is None:
            return
        if abs(modified) > self.threshold + 15.0:
            return  # a spike (a route change, a burst): not what the threshold should learn
        k = _K_DOWN if abs(modified) < self.threshold else _K_UP
        elapsed = min(max(now_ms - last, 0.0), 100.0)
        self.threshold += k * (abs(modified) - self.threshold) * elapsed
        self.threshold = min(max(self.threshold, _THRESHOLD_MIN), _THRESHOLD_MAX)


def _slope(samples: deque[tuple[float, float]]) -> Optional[float]:
    n = len(samples)
    mean_x = sum(x for x, _ in samples) / n
    mean_y = sum(y for _, y in samples) / n
    num = den = 0.0
    for x, y in samples:
        num += (x - mean_x) * (y - mean_y)
        den += (x - mean_x) ** 2
    return num / den if den else None


class AimdRateControl:
    """The rate from the usage signal: additive/multiplicative increase, cut to BETA × acknowledged."""

    def __init__(self, start_bps: float, min_bps: float, max_bps: float) -> None:
        self.rate = float(start_bps)
        self.min_bps = float(min_bps)
        self.max_bps = float(max_bps)
        self.state = RateControlState.INCREASE
        self._last_update: Optional[float] = None
        self._last_decrease = float("-inf")
        # What the link carried when over-use was last seen (EWMA, bps) and its spread.
        self.link_capacity: Optional[float] = None
        self._capacity_var = 0.0
        self.decreases = 0
        # The last probe result and when: for a while after it, the acknowledged bitrate still
        # describes the slower sending before it, and the probe's own queue may signal over-use.
        self._probed: Optional[tuple[float, float]] = None
        #: Until then over-use holds the rate instead of cutting it (set when a probe is judged).
        self.probe_grace_until = float("-inf")

    def set_estimate(self, bps: float, now: float) -> None:
        """A probe measured the link: start from there."""
        self.rate = min(max(bps, self.min_bps), self.max_bps)
        self.link_capacity = None
        self._last_update = now
        self._probed = (bps, now)

    def update(self, usage: BandwidthUsage, acked_bps: Optional[float], rtt: float, now: float) -> float:
        elapsed = 0.0 if self._last_update is None else min(max(now - self._last_update, 0.0), 1.0)
        self._last_update = now
        if usage is BandwidthUsage.OVERUSING and now < self.probe_grace_until:
            self.state = RateControlState.HOLD  # the probe's own queue, draining: not congestion
        elif usage is BandwidthUsage.OVERUSING:
            self.state = RateControlState.DECREASE
        elif usage is BandwidthUsage.UNDERUSING:
            self.state = RateControlState.HOLD
        elif self.state is not RateControlState.INCREASE:
            self.state = RateControlState.INCREASE
            elapsed = 0.0  # the increase starts now, not at the last update
        if self.state is RateControlState.INCREASE:
            capacity = self.link_capacity
            if capacity is not None and self.rate > capacity + 3 * max(self._capacity_var, 0.05 * capacity):
                self.link_capacity = None  # far above what it was: the link changed
                capacity = None
            # No increase past what the receiver gets: a sender that uses less than the
            # estimate (an SFU's subscriber often does) must not inflate it without evidence.
            limit = 1.5 * acked_bps + 10_000 if acked_bps is not None else float("inf")
            if self.rate < limit:
                if capacity is not None and self.rate > 0.75 * capacity:
                    # Near the known capacity: about one packet more per response time.
                    response = rtt + 0.1
                    increased = self.rate + max(1000.0, 1200 * 8 * elapsed / response)
                else:
                    increased = self.rate * MULTIPLICATIVE_INCREASE ** elapsed
                self.rate = min(increased, limit)
        elif self.state is RateControlState.DECREASE:
            if now - self._last_decrease >= _DECREASE_INTERVAL:
                self._last_decrease = now
                base = acked_bps if acked_bps is not None else self.rate
                probed = self._probed
                if probed is not None and now - probed[1] < _PROBE_MEMORY:
                    base = max(base, probed[0])
                self.rate = min(self.rate, BETA * base)
                self.decreases += 1
                if acked_bps is not None:
                    if self.link_capacity is None:
                        self.link_capacity = acked_bps
                    else:
                        diff = acked_bps - self.link_capacity
                        self.link_capacity += 0.05 * diff
                        self._capacity_var = 0.95 * self._capacity_var + 0.05 * abs(diff)
            self.state = RateControlState.HOLD
        self.rate = min(max(self.rate, self.min_bps), self.max_bps)
        return self.rate


__all__ = ["AimdRateControl", "BandwidthUsage", "InterArrival", "RateControlState", "TrendlineDetector"]
