"""One subscriber transport's send-side bandwidth estimate.

Fed the per-packet results of each transport-cc feedback (rtp.twcc_sender.PacketResult: send
time, size, arrival or lost, probe cluster) and `now`, it runs the delay-based controller
(rtp.bwe.delay_based), the loss-based one (rtp.bwe.loss_based) and the probe controller
(rtp.bwe.probe); the estimate is the lower of the two rates, capped by the client's REMB when it
sends one — and taken from REMB alone when the client sends no transport-cc feedback.

The starting figure is a guess, not a measurement: until the estimate is `settled` (probing from
the start found the link's end or reached what is wanted, or `SETTLE_AFTER` seconds of
feedback) an owner
should not take it as a ceiling (libwebrtc starts a call sending at its start rate, but an SFU
forwarding layers it did not choose would hold a clean link's subscriber on a low layer while
the estimate ramps).

Deterministic: no clock, no randomness; the same inputs give the same estimates.
"""

from __future__ import annotations

from collections import deque
from typing import Optional, Sequence

import attrs

from rtp.bwe.delay_based import PROBE_GRACE, AimdRateControl, BandwidthUsage, InterArrival, TrendlineDetector
from rtp.bwe.loss_based import LossBasedControl
from rtp.bwe.probe import ProbeCluster, ProbeController
from rtp.twcc_sender import PacketResult

DEFAULT_START_BPS = 300_000
DEFAULT_MIN_BPS = 30_000
DEFAULT_MAX_BPS = 20_000_000
#: The acknowledged bitrate is measured over this much of the receiver's time.
ACKED_WINDOW = 0.5
#: Without transport-cc feedback for this long, a client's REMB is the estimate.
FEEDBACK_STALE = 2.0
#: `poll_estimate_changed` reports a change of at least this fraction.
CHANGE_FRACTION = 0.05
#: Sending below this share of the estimate is application-limited (see `on_feedback`).
APP_LIMITED = 0.7
#: The receiver got what we sent at no less than this share of the rate we sent it at.
_KEEPS_UP = 0.9
#: Seqs reported lost remembered (to count each loss once, and take back a late arrival).
_LOST_MEMORY = 4096
#: A packet reported lost counts as lost for the loss-based half once feedback reported
#: packets sent this much later (till then it may be a late arrival, not a loss).
LOSS_SETTLE = 0.1
#: Whatever the probes did, the estimate counts as settled after this much feedback.
SETTLE_AFTER = 2.0


@attrs.define
class EstimatorCounters:
    feedback_packets: int = 0
    packets_acked: int = 0
    packets_lost: int = 0
    remb_received: int = 0
    probe_clusters: int = 0
    probe_results: int = 0
    overuse_signals: int = 0
    overuse_ignored: int = 0  # signalled while application-limited with the link keeping up
    packets_recovered: int = 0  # reported lost, then received after all (taken back from packets_lost)


class BandwidthEstimator:
    """See the module docstring. `estimate_bps` is the current estimate."""

    def __init__(self, start_bps: int = DEFAULT_START_BPS, min_bps: int = DEFAULT_MIN_BPS,
                 max_bps: int = DEFAULT_MAX_BPS) -> None:
        self._inter_arrival = InterArrival()
        self._trendline = TrendlineDetector()
        self._aimd = AimdRateControl(start_bps, min_bps, max_bps)
        self._loss = LossBasedControl(start_bps, min_bps)
        self._probe = ProbeController()
        self._acked: deque[tuple[float, int, float]] = deque()  # (arrival, size, send time)
        self._acked_bytes = 0
        self.rtt = 0.1
        self.max_bps = max_bps
        self.min_bps = min_bps
        self.estimate_bps = int(start_bps)
        self._reported_bps = self.estimate_bps
        self._last_feedback: Optional[float] = None
        self._first_feedback: Optional[float] = None
        self.settled = False
        self._remb: Optional[tuple[int, float]] = None
        self.counters = EstimatorCounters()
        # Seqs feedback reported lost (an insertion-ordered set, the oldest dropped first): a
        # receiver that got a packet late re-reports the range from it, and libwebrtc's
        # repeats a seq it reported missing — counted again each time, 5 % random loss under
        # jitter read 10-13 % in a window, and the loss-based half cut the top layer away.
        self._reported_lost: dict[int, None] = {}
        self._pending_lost: dict[int, float] = {}  # reported lost, not yet settled: seq -> send time

    # ---- inputs ---------------------------------------------------------------------------

    def on_feedback(self, results: Sequence[PacketResult], now: float) -> None:
        """One transport-cc feedback's packets (as rtp.twcc_sender matched them), in seq order."""
        if not results:
            return
        counters = self.counters
        counters.feedback_packets += 1
        self._last_feedback = now
        if self._first_feedback is None:
            self._first_feedback = now
        usage: Optional[BandwidthUsage] = None
        received = lost = 0
        newest_send: Optional[float] = None
        arrived: list[tuple[float, float]] = []
        recovered = recovered_settled = 0
        reported_lost = self._reported_lost
        pending = self._pending_lost
        for r in results:
            if r.arrival is None:
                if r.sequence in reported_lost:
                    continue  # reported lost again (the receiver re-covers a range after a late packet)
                reported_lost[r.sequence] = None
                pending[r.sequence] = r.send_time
                if len(reported_lost) > _LOST_MEMORY:
                    del reported_lost[next(iter(reported_lost))]
            elif r.sequence in reported_lost:
                del reported_lost[r.sequence]
                recovered += 1  # reported lost before, late after all: no loss
                if pending.pop(r.sequence, None) is None:
                    recovered_settled += 1  # the loss control counted it already: taken back
            if r.probe_cluster >= 0:
                measured = self._probe.on_packet(r.probe_cluster, r.send_time, r.size, r.arrival, now)
                if measured is not None:
                    self._probe_result(measured, now)
            if r.arrival is None:
                lost += 1
                continue
            received += 1
            newest_send = r.send_time if newest_send is None else max(newest_send, r.send_time)
            self._ack(r.arrival, r.size, r.send_time)
            arrived.append((r.arrival, r.send_time))
        # The delay-based half takes them in arrival order (see InterArrival).
        arrived.sort()
        for arrival, send_time in arrived:
            sample = self._inter_arrival.add(send_time, arrival)
            if sample is not None:
                state = self._trendline.update(*sample)
                if state is BandwidthUsage.OVERUSING or usage is not BandwidthUsage.OVERUSING:
                    usage = state
        for measured in self._probe.judge_late(now):
            self._probe_result(measured, now)
        counters.packets_acked += received
        counters.packets_lost += lost - recovered
        counters.packets_recovered += recovered
        if newest_send is not None:
            self.rtt = 0.875 * self.rtt + 0.125 * max(0.0, now - newest_send)
        if usage is BandwidthUsage.OVERUSING:
            counters.overuse_signals += 1
        acked = self.acked_bps()
        if (usage is BandwidthUsage.OVERUSING and acked is not None and acked < APP_LIMITED * self._aimd.rate
                and self._link_keeps_up(acked)):
            # We send well below the estimate (an SFU forwards the layers it chose, not the
            # estimate) and the receiver got it at the rate we sent it: no queue of ours grew.
            # Jitter reads as over-use here; a cut to 0.85x what we send would hold the
            # subscriber on its low layer for good. Not a cut: a hold.
            usage = BandwidthUsage.NORMAL
            counters.overuse_ignored += 1
        delay_bps = self._aimd.update(usage or BandwidthUsage.NORMAL, acked, self.rtt, now)
        # A loss reaches the loss-based half once feedback went `LOSS_SETTLE` past it: under
        # jitter a packet overtaken just before a feedback is reported missing and comes in
        # the next one; counted at once, such false losses (~2 % at ± 5 ms) bunched into one
        # window and taken back in the next read 5 % random loss as 12-13 % windows.
        settled_lost = 0
        if newest_send is not None:
            while pending:
                seq, send_time = next(iter(pending.items()))
                if send_time > newest_send - LOSS_SETTLE and len(pending) <= _LOST_MEMORY:
                    break
                del pending[seq]
                settled_lost += 1
        self._loss.on_packets(received, settled_lost, recovered_settled)
        loss_bps = self._loss.update(delay_bps, acked, now)
        self._set(min(delay_bps, loss_bps), now)
        if not self.settled:
            probe = self._probe
            reached = probe.initial_started and not probe.in_flight and not self.probing
            # (Not a delay-based cut: a jittery link signals over-use falsely before the probes
            # are judged, and would settle the estimate at its starting figure.)
            if probe.initial_done or reached or now - self._first_feedback >= SETTLE_AFTER:
                self.settled = True

    def on_remb(self, bitrate_bps: int, now: float) -> None:
        """The client's REMB: a cap, or the estimate itself for a client without transport-cc."""
        self.counters.remb_received += 1
        self._remb = (int(bitrate_bps), now)
        if self._remb_only(now):
            self.estimate_bps = int(min(max(bitrate_bps, self.min_bps), self.max_bps))
        else:
            self.estimate_bps = min(self.estimate_bps, max(int(bitrate_bps), self.min_bps))

    def request_probe(self, up_to_bps: int, now: float) -> None:
        """Probe up to `up_to_bps` when it is above the estimate; 0 stops probing."""
        self._probe.request(up_to_bps, now)

    # ---- outputs --------------------------------------------------------------------------

    @property
    def feedback_seen(self) -> bool:
        """Transport-cc feedback has come: until then no probe can be judged (`poll_probe`)."""
        return self._last_feedback is not None

    def poll_probe(self, now: float) -> Optional[ProbeCluster]:
        """The next probe cluster to send, if one is wanted and due — once transport-cc feedback
        came (the receiver's first feedback follows its first media by a feedback interval;
        without it nothing would judge a cluster), and not for a client that went over to REMB.
        Feedback gone quiet is no reason to stop: a subscriber whose tracks are all paused
        sends none, and a probe is how it finds room again."""
        if self._last_feedback is None or (self._remb_only(now) and self._remb is not None):
            return None
        cluster = self._probe.poll(self.estimate_bps, now)
        if cluster is not None:
            self.counters.probe_clusters += 1
        return cluster

    def probe_sent(self, cluster_id: int, packets: int, now: float) -> None:
        """The sender put out `packets` packets of the cluster (all of them, or none it could)."""
        self._probe.sent(cluster_id, packets, now)

    @property
    def loss_floor_bps(self) -> float:
        """Loss alone never takes the estimate below this (what audio and the lowest layers need)."""
        return self._loss.floor_bps

    @loss_floor_bps.setter
    def loss_floor_bps(self, bps: float) -> None:
        self._loss.floor_bps = min(max(float(bps), self.min_bps), float(self.max_bps))

    @property
    def probe_in_flight(self) -> bool:
        """A probe cluster is being sent or judged: its padding queues at the bottleneck on
        purpose, so a lower estimate meanwhile may be the probe's own doing."""
        return self._probe.in_flight

    @property
    def probing(self) -> bool:
        return self._probe.goal_bps > self.estimate_bps * 1.05

    def poll_estimate_changed(self) -> Optional[int]:
        """The estimate, when it moved by `CHANGE_FRACTION` or more since it was last reported."""
        if abs(self.estimate_bps - self._reported_bps) < CHANGE_FRACTION * self._reported_bps:
            return None
        self._reported_bps = self.estimate_bps
        return self.estimate_bps

    def acked_bps(self) -> Optional[float]:
        acked = self._acked
        if len(acked) < 2:
            return None
        span = acked[-1][0] - acked[0][0]
        if span < 0.1:
            return None
        return (self._acked_bytes - acked[0][1]) * 8 / span

    @property
    def delay_based_bps(self) -> float:
        return self._aimd.rate

    @property
    def loss_based_bps(self) -> float:
        return self._loss.rate

    @property
    def loss_fraction(self) -> float:
        return self._loss.loss

    @property
    def loss_cuts(self) -> int:
        """How often the loss-based half cut the rate (a window lossier than chance allows)."""
        return self._loss.decreases

    # ---- inside ---------------------------------------------------------------------------

    def _probe_result(self, measured: float, now: float) -> None:
        self.counters.probe_results += 1
        # The cluster queued at the bottleneck on purpose; the trendline sees that queue a
        # little later and must not take it for congestion.
        self._aimd.probe_grace_until = now + PROBE_GRACE
        remb = self._remb
        if remb is not None and now - remb[1] <= FEEDBACK_STALE:
            measured = min(measured, remb[0])  # the receiver says it takes no more
        if measured > self._aimd.rate * 1.05:
            self._aimd.set_estimate(measured, now)
        else:
            self._probe.hold(now)  # carried, but no more than we knew: no storm of probes
        self._loss.accept_probe(measured)

    def _link_keeps_up(self, acked_bps: float) -> bool:
        """The acknowledged window arrived at (about) the rate its packets were sent at."""
        acked = self._acked
        send_times = [t for _, _, t in acked]
        span = max(send_times) - min(send_times)
        if span < 0.1:
            return False
        sent_bps = (self._acked_bytes - acked[0][1]) * 8 / span
        return acked_bps >= _KEEPS_UP * sent_bps

    def _ack(self, arrival: float, size: int, send_time: float) -> None:
        acked = self._acked
        acked.append((arrival, size, send_time))
        self._acked_bytes += size
        newest = max(arrival, acked[-1][0])
        while acked and acked[0][0] < newest - ACKED_WINDOW:
            self._acked_bytes -= acked.popleft()[1]

    def _remb_only(self, now: float) -> bool:
        return self._last_feedback is None or now - self._last_feedback > FEEDBACK_STALE

    def _set(self, bps: float, now: float) -> None:
        remb = self._remb
        if remb is not None and now - remb[1] <= FEEDBACK_STALE:
            bps = min(bps, remb[0])
        self.estimate_bps = int(min(max(bps, self.min_bps), self.max_bps))


__all__ = ["BandwidthEstimator", "EstimatorCounters"]
