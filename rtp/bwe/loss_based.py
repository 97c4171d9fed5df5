"""The loss-based half of the estimate: back off while the receiver reports high loss.

Loss is counted over the last `WINDOW` packets feedback reported, judged once enough of them
were (a fraction of three packets says nothing), and counts as above `HIGH_LOSS` only beyond what
chance gives a window of that size (`_CONFIDENCE`). The controller limits nothing until loss
first goes above `HIGH_LOSS` (then the delay-based estimate alone is the estimate). Above it the
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

import math
from collections import deque
from typing import Optional

HIGH_LOSS = 0.10
LOW_LOSS = 0.02
INCREASE_PER_SECOND = 1.08
#: The loss fraction is over the last `WINDOW` packets reported (settled: see the estimator),
#: judged once `MIN_PACKETS` are in (a fraction of three packets says nothing).
WINDOW = 60
MIN_PACKETS = 60
#: The window counts as lossier than `HIGH_LOSS` only when its losses exceed that share by this
#: many standard deviations of a window of its size at that share. Without a margin, 5 % random
#: loss read above 10 % in one window of 20 (at a browser's 1 Mbit/s, every ten seconds a cut,
#: two of which took the top layer away); with it about one window of 600, while a 20 % loss
#: burst shows within some 50 packets. (Sliding, so evidence is judged as soon as it is in.)
_CONFIDENCE = 1.0
_DECREASE_INTERVAL = 0.3


class LossBasedControl:
    def __init__(self, start_bps: float, min_bps: float) -> None:
        # None: loss limits nothing (the delay-based estimate is the estimate).
        self.limit: Optional[float] = None
        self.min_bps = float(min_bps)
        self.floor_bps = float(min_bps)
        self.loss = 0.0  # the last judged fraction
        self.high = False  # the last judged window was above HIGH_LOSS (beyond chance)
        self._window: deque[bool] = deque(maxlen=WINDOW)  # True: lost
        self._window_lost = 0
        self._last_update: Optional[float] = None
        self._last_decrease = float("-inf")
        self.decreases = 0
        self.rate = float(start_bps)  # what `update` last returned

    def on_packets(self, received: int, lost: int, recovered: int = 0) -> None:
        """`received` and `lost` as one feedback reported them (losses first: their order within
        a feedback does not matter); `recovered` of the received had been counted lost before:
        a loss taken back, not another packet."""
        window = self._window
        for outcome in [True] * lost + [False] * (received - recovered):
            if len(window) == window.maxlen and window[0]:
                self._window_lost -= 1
            window.append(outcome)
            self._window_lost += outcome
        for _ in range(recovered):
            if self._window_lost <= 0:
                break
            # (the newest loss in the window, near enough: which one it was does not matter)
            for i in range(len(window) - 1, -1, -1):
                if window[i]:
                    window[i] = False
                    self._window_lost -= 1
                    break

    def update(self, delay_based_bps: float, acked_bps: Optional[float], now: float) -> float:
        """The loss-based rate, given the delay-based one and what the receiver got lately."""
        elapsed = 0.0 if self._last_update is None else min(max(now - self._last_update, 0.0), 1.0)
        self._last_update = now
        expected = len(self._window)
        if expected >= MIN_PACKETS:
            lost = self._window_lost
            self.loss = lost / expected
            # Above HIGH_LOSS beyond what chance gives a window this size (see `_CONFIDENCE`).
            self.high = lost > expected * HIGH_LOSS + _CONFIDENCE * math.sqrt(expected * HIGH_LOSS * (1 - HIGH_LOSS))
        limit = self.limit
        if self.high:
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
