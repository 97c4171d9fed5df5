"""The loss-based half of the estimate: back off while the receiver reports high loss.

Loss is counted over the packets the feedback covers, judged once enough of them were reported
(a fraction of three packets says nothing). Above `HIGH_LOSS` the rate drops in proportion to the
loss, at most once per `_DECREASE_INTERVAL` (a cut needs a round trip to show); below `LOW_LOSS`
it grows again by `INCREASE_PER_SECOND`, never above the delay-based estimate (loss is then not
what limits); in between it holds.
"""

from __future__ import annotations

from typing import Optional

HIGH_LOSS = 0.10
LOW_LOSS = 0.02
INCREASE_PER_SECOND = 1.08
#: Packets a loss fraction needs behind it.
MIN_PACKETS = 20
_DECREASE_INTERVAL = 0.3


class LossBasedControl:
    def __init__(self, start_bps: float, min_bps: float) -> None:
        self.rate = float(start_bps)
        self.min_bps = float(min_bps)
        self.loss = 0.0  # the last judged fraction
        self._lost = 0
        self._expected = 0
        self._last_update: Optional[float] = None
        self._last_decrease = float("-inf")
        self.decreases = 0

    def on_packets(self, received: int, lost: int) -> None:
        self._expected += received + lost
        self._lost += lost

    def update(self, delay_based_bps: float, now: float) -> float:
        elapsed = 0.0 if self._last_update is None else min(max(now - self._last_update, 0.0), 1.0)
        self._last_update = now
        if self._expected >= MIN_PACKETS:
            self.loss = self._lost / self._expected
            self._lost = self._expected = 0
        if self.loss > HIGH_LOSS:
            if now - self._last_decrease >= _DECREASE_INTERVAL:
                self._last_decrease = now
                self.rate = min(self.rate, delay_based_bps) * (1 - 0.5 * self.loss)
                self.decreases += 1
        elif self.loss < LOW_LOSS:
            self.rate = min(self.rate * INCREASE_PER_SECOND ** elapsed, delay_based_bps)
        self.rate = max(self.rate, self.min_bps)
        return self.rate

    def accept_probe(self, bps: float) -> None:
        """A probe got through: with little loss, loss does not hold the rate below it."""
        if self.loss < LOW_LOSS:
            self.rate = max(self.rate, bps)


__all__ = ["HIGH_LOSS", "LOW_LOSS", "LossBasedControl"]
