"""What a subscriber measured on one received track: packets, bytes, loss and one-way latency.

Loss is counted per SSRC from RTP sequence numbers (a simulcast track may
arrive on several SSRCs over its life when the SFU switches layers): expected =
highest extended sequence - first + 1, lost = expected - received, never below
zero (duplicates). Latency comes from the send stamp the synthetic publishers
put in every payload; packets without one just don't contribute.
"""

from __future__ import annotations

import attrs

from rtp.seqnum import SequenceUnwrapper

#: Latency samples kept per track; beyond it every n-th is kept so memory stays bounded.
MAX_LATENCY_SAMPLES = 20000


@attrs.define
class _SsrcCounter:
    unwrapper: SequenceUnwrapper = attrs.field(factory=SequenceUnwrapper)
    first: int | None = None
    highest: int | None = None
    received: int = 0

    def on_sequence(self, seq: int) -> None:
        extended = self.unwrapper.unwrap(seq)
        if self.first is None or extended < self.first:
            self.first = extended
        if self.highest is None or extended > self.highest:
            self.highest = extended
        self.received += 1

    @property
    def expected(self) -> int:
        if self.first is None or self.highest is None:
            return 0
        return self.highest - self.first + 1


@attrs.define
class TrackReceiveStats:
    packets: int = 0
    bytes: int = 0
    first_arrival: float | None = None  # trio clock
    last_arrival: float | None = None
    #: Latency samples in milliseconds (send stamp to arrival, wall clock).
    latencies_ms: list[float] = attrs.field(factory=list)
    _per_ssrc: dict[int, _SsrcCounter] = attrs.field(factory=dict)
    _latency_stride: int = 1
    _latency_seen: int = 0

    def on_packet(self, ssrc: int, seq: int, size: int, now: float, latency_ms: float | None) -> None:
        self.packets += 1
        self.bytes += size
        if self.first_arrival is None:
            self.first_arrival = now
        self.last_arrival = now
        counter = self._per_ssrc.get(ssrc)
        if counter is None:
            counter = self._per_ssrc[ssrc] = _SsrcCounter()
        counter.on_sequence(seq)
        if latency_ms is not None:
            self._latency_seen += 1
            if self._latency_seen % self._latency_stride == 0:
                self.latencies_ms.append(latency_ms)
                if len(self.latencies_ms) >= MAX_LATENCY_SAMPLES:
                    # Thin out: keep every other sample and sample half as often from now on.
                    del self.latencies_ms[::2]
                    self._latency_stride *= 2

    @property
    def ssrcs(self) -> list[int]:
        return list(self._per_ssrc)

    @property
    def expected(self) -> int:
        return sum(c.expected for c in self._per_ssrc.values())

    @property
    def lost(self) -> int:
        return sum(max(c.expected - c.received, 0) for c in self._per_ssrc.values())

    def bitrate(self) -> float:
        """Average received bits per second between the first and last packet."""
        if self.first_arrival is None or self.last_arrival is None or self.last_arrival <= self.first_arrival:
            return 0.0
        return self.bytes * 8 / (self.last_arrival - self.first_arrival)

    def latency_percentile(self, fraction: float) -> float | None:
        return percentile(self.latencies_ms, fraction)


def percentile(samples: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile (``fraction`` in 0..1) of ``samples``; None when there are none."""
    if not samples:
        return None
    ordered = sorted(samples)
    rank = min(len(ordered) - 1, max(0, int(round(fraction * (len(ordered) - 1)))))
    return ordered[rank]


__all__ = ["MAX_LATENCY_SAMPLES", "TrackReceiveStats", "percentile"]
