"""The loss-based half of the estimate: back off while the receiver reports high loss.

Loss is counted over the packets the feedback covers, judged once enough of them were reported
(a fraction of three packets says nothing). The controller limits nothing until loss first goes
above `HIGH_LOSS` (then the delay-based estimate alone is the estimate). Above `HIGH_LOSS` the
rate in force, or what the receiver actually got (the acknowledged bitrate) when that is more,
less a share in proportion to the loss — so a first overflow (a subscriber sent more than its
link carries before the estimate, starting from a guess, knew better) is cut from what got
through, not from the guess: no collapse — at most once per
`_DECREASE_INTERVAL` (a cut needs a round trip to show). Between `LOW_LOSS` and `HIGH_LOSS` it
holds: random loss of a few percent is the link's nature, not congestion, and cutting on it
would starve the call for nothing. Below `LOW_LOSS` it grows by `INCREASE_PER_SECOND` and stops
limiting once it reaches the delay-based estimate. It never goes below `floor_bps` (set by the
owner: what audio and the lowest video layers need) — loss alone does not starve a call; a
link that truly carries less shows it in its delay, which the delay-based half follows.
"""

from __future__ import annotations

from typing import Optional

HIGH_LOSS = 0.10
LOW_LOSS = 0.02
INCREASE_PER_SECOND = 1.08
#: Packets a loss fraction needs behind it (fewer make 5 % random loss read above 10 % often),
#: and the time it spans at least: at a top layer's 250 packets a second, 60 packets of 5 %
#: random loss read above 10 % about once in 25 windows, every few seconds, and each such cut
#: held in the hold band until a probe lifted it (seconds on the low layer). Over half a second
#: (some 130 packets) that is about once in 300 windows; a loss burst of 20 % still shows in one.
MIN_PACKETS = 60
MIN_SPAN = 0.5
_DECREASE_INTERVAL = 0.3


class LossBasedControl:
    def __init__(self, start_bps: float, min_bps: float) -> None:
        # None: loss limits nothing (the delay-based estimate is the estimate).
        self.limit: Optional[float] = None
        self.min_bps = float(min_bps)
        self.floor_bps = float(min_bps)
        self.loss = 0.0  # the last judged fraction
        self._lost = 0
        self._expected = 0
        self._last_update: Optional[float] = None
        self._window_start: Optional[float] = None
        self._last_decrease = float("-inf")
        self.decreases = 0
        self.rate = float(start_bps)  # what `update` last returned

    def on_packets(self, received: int, lost: int, recovered: int = 0) -> None:
        """`received` and `lost` as one feedback reported them; `recovered` of the received had
        been reported lost before (counted then: a loss taken back, not another packet)."""
        self._expected += received - recovered + lost
        self._lost += lost - recovered

    def update(self, delay_based_bps: float, acked_bps: Optional[float], now: float) -> float:
        """The loss-based rate, given the delay-based one and what the receiver got lately."""
        elapsed = 0.0 if self._last_update is None else min(max(now - self._last_update, 0.0), 1.0)
        self._last_update = now
        if self._window_start is None:
            self._window_start = now
        if self._expected >= MIN_PACKETS and now - self._window_start >= MIN_SPAN:
            self.loss = min(max(self._lost / self._expected, 0.0), 1.0)  # (a late arrival takes a loss back)
            self._lost = self._expected = 0
            self._window_start = now
        limit = self.limit
        if self.loss > HIGH_LOSS:
            if now - self._last_decrease >= _DECREASE_INTERVAL:
                self._last_decrease = now
                # The rate in force, or what got through when that was more (a first overflow).
                base = max(self.rate, acked_bps or 0.0)
                cut = base * (1 - 0.5 * self.loss)
                limit = cut if limit is None else min(limit, cut)
                self.decreases += 1
        elif self.loss < LOW_LOSS and limit is not None:
            limit = limit * INCREASE_PER_SECOND ** elapsed + 1000 * elapsed
            if limit >= delay_based_bps:
                limit = None  # loss no longer limits
        if limit is not None:
            limit = max(limit, self.floor_bps, self.min_bps)
        self.limit = limit
        self.rate = delay_based_bps if limit is None else min(limit, delay_based_bps)
        return self.rate

    def accept_probe(self, bps: float) -> None:
        """A probe got through at `bps`: loss does not hold the rate below it. (Whatever the last
        window's loss: the link carried that much, and loss the link does not cause by being
        full is no reason to send less — a congested link shows in the probe's result.)"""
        if self.limit is not None:
            self.limit = max(self.limit, bps)


__all__ = ["HIGH_LOSS", "LOW_LOSS", "LossBasedControl"]
