"""Probing: short clusters sent faster than the estimate, to find out whether the link has more.

Asked to probe "up to X bps" (by whoever needs more bitrate than the estimate), the controller
gives `ProbeCluster`s. The first time (as libwebrtc starts a call) it gives two, at `INITIAL_MULTIPLES`
(3× and 6×) of the starting estimate, one right after the other, so a clean link is known within
a round trip or two instead of seconds of additive ramp; after that, one at a time at twice the
estimate. All are capped by X. Media keeps flowing meanwhile (an SFU does not hold it back), so
the sender tags *every* packet it sends during the cluster's `duration` with the cluster's id and
pads so that media and padding together keep to the cluster's bitrate (`bytes_due`); what is
judged is the whole.

A cluster's result (`_measure`) follows libwebrtc's ProbeBitrateEstimator: the rate it was sent
at (its bytes but the last one's, over the span between the first and last send) and the rate it
arrived at (its send rate over how much longer it took to arrive, fitted through every packet, see
`_stretch`); a receive rate far above
the send rate is a measurement artefact (arrivals bunched by a batching receiver or proxy) and no
result; the result is the lower of the two, and when the link did not carry the cluster at its
rate (a receive rate under 90 % of the send rate) 95 % of the receive rate, since that is all the
link carries. When the result kept up with the cluster (70 % of its bitrate or more: arrival
times are noisy), the next probe doubles again at once; when it did not, probing waits
`RETRY_INTERVAL`, and the probing from the start is over (`initial_done`): the estimate is then
a measurement (from the start, one short or failed result is tried again soon first: jitter or random
loss make one by chance). Nothing needs more bitrate (X at or below the estimate): no probes.
"""

from __future__ import annotations

from typing import Optional

import attrs

#: A cluster lasts this long at its bitrate, and pads in at least `MIN_PACKETS` packets.
PROBE_DURATION = 0.03
MIN_PACKETS = 5
#: After the initial clusters, a cluster is this multiple of the estimate.
PROBE_MULTIPLE = 2.0
#: The first clusters, multiples of the estimate then (libwebrtc's initial exponential probes).
INITIAL_MULTIPLES = (3.0, 6.0)
#: After a probe the link did not carry fully, or that failed, the next waits this long.
RETRY_INTERVAL = 5.0
#: From the start, a result short of its cluster is tried again this many times, this soon,
#: before it counts as the link's end (a jittery or lossy link makes one short result by chance).
STARTUP_SHORT_RESULTS = 2
_STARTUP_RETRY = 0.2
#: A cluster's feedback is waited for this long.
_RESULT_TIMEOUT = 1.0
#: The share of a cluster's packets feedback must cover before it is judged, and received.
#: Judged as soon as feedback covers all of them; with less (a feedback packet lost), once
#: `_LATE_FEEDBACK` passed since it was sent. (Judged at 80 % at once, the packets left out
#: were the last sent, queued longest at a bottleneck: a 3 Mbit/s cluster read 2.4 Mbit/s
#: through a 2 Mbit/s link.)
_COVERED = 0.8
_LATE_FEEDBACK = 0.3
_RECEIVED = 0.5
#: Arriving at under this share of its send rate: the link did not carry it; the result is then
#: `_TARGET_UTILIZATION` of the receive rate (libwebrtc's figures).
_CARRIED = 0.9
_TARGET_UTILIZATION = 0.95
#: A cluster whose arrivals spread over more than its send span and this much is taken as queued
#: at a bottleneck whatever the fit says: jitter widens the arrival span by about its own width
#: (± 5 ms in the field reports), a queue by the cluster's excess over the link's rate.
_JITTER_ALLOWANCE = 0.015
#: A receive rate above this multiple of the send rate is no measurement (arrivals bunched).
_MAX_RECEIVE_RATIO = 2.0
#: A result at least this share of its cluster's bitrate probes further at once (libwebrtc's
#: exponential probing goes on while results keep up with what was asked, within its noise).
_PROBE_FURTHER = 0.7


@attrs.frozen
class ProbeCluster:
    """For `duration` seconds, tag every packet sent with `cluster_id`, and pad (padding or RTX)
    so that what was sent since the start keeps up with `bytes_due`: `bitrate_bps` in all, in
    at least `min_packets` packets."""

    cluster_id: int
    bitrate_bps: int
    min_packets: int
    duration: float

    @property
    def bytes(self) -> int:
        return max(int(self.bitrate_bps * self.duration / 8), 1)

    def bytes_due(self, elapsed: float) -> int:
        """Octets the cluster should have sent `elapsed` seconds after its start (its first
        packets at once: a cluster starts with a packet, not a wait)."""
        share = min(max(elapsed / self.duration, 0.0), 1.0)
        return max(int(self.bytes * share), self.bytes // self.min_packets)


@attrs.define
class _InFlight:
    cluster: ProbeCluster
    sent_at: float
    packets_sent: int = 0  # known once the sender ended the cluster (`sent`); 0 before
    sends: list[tuple[float, int]] = attrs.field(factory=list)  # (send time, size) of received packets
    arrivals: list[tuple[float, int]] = attrs.field(factory=list)  # (arrival, size)
    lost: int = 0

    def packets(self) -> list[tuple[float, float, int]]:
        """(send time, arrival, size) of each received packet."""
        return [(send, arrival, size) for (send, size), (arrival, _) in zip(self.sends, self.arrivals)]


class ProbeController:
    def __init__(self) -> None:
        self.goal_bps = 0
        self._next_id = 1
        self._in_flight: dict[int, _InFlight] = {}
        # Clusters decided but not started yet (the rest of the initial series).
        self._queued: list[float] = []  # bitrates
        self._not_before = float("-inf")
        self.initial_started = False
        # Exponential probing from the start is over: a result fell short of its cluster, a
        # cluster failed, or the goal was reached.
        self.startup_over = False
        self._startup_short = 0
        self.clusters_started = 0
        self.results = 0
        self.failures = 0

    @property
    def in_flight(self) -> bool:
        """A cluster was started and its result is not in yet (its feedback, or its timeout)."""
        return bool(self._in_flight)

    @property
    def initial_done(self) -> bool:
        """Probing from the start found where the link ends (or that nothing needs more), and
        no cluster of it is still out: the estimate is a measurement, not the starting guess."""
        return self.startup_over and not self._queued and not self._in_flight

    def request(self, up_to_bps: int, now: float) -> None:
        """Probe up to `up_to_bps` (0: nothing needs more, stop)."""
        self.goal_bps = max(0, int(up_to_bps))

    def poll(self, estimate_bps: float, now: float) -> Optional[ProbeCluster]:
        timed_out = [cluster_id for cluster_id, flight in self._in_flight.items()
                     if now - flight.sent_at >= _RESULT_TIMEOUT]
        for cluster_id in timed_out:
            del self._in_flight[cluster_id]  # its feedback never came: a failure
        if timed_out:
            self.failures += len(timed_out) - 1
            self._failed(now)  # (clusters sent back to back, their feedback lost together: one failure)
        if any(not flight.packets_sent for flight in self._in_flight.values()):
            return None  # one is still being sent
        if self.goal_bps <= estimate_bps * 1.05:
            self._queued.clear()
            if self.initial_started:
                self.startup_over = True  # the estimate reached what is wanted
            return None
        if not self.initial_started:
            self.initial_started = True
            self._queued = [estimate_bps * multiple for multiple in INITIAL_MULTIPLES]
        if self._queued:
            bitrate = min(self.goal_bps, self._queued.pop(0))
            if self._queued and bitrate >= self.goal_bps:
                self._queued.clear()  # the goal is reached already: no higher one
        elif self._in_flight or now < self._not_before:
            return None
        else:
            bitrate = min(self.goal_bps, estimate_bps * PROBE_MULTIPLE)
        cluster = ProbeCluster(self._next_id, int(bitrate), MIN_PACKETS, PROBE_DURATION)
        self._next_id = (self._next_id % 0x7FFFFFFF) + 1
        self._in_flight[cluster.cluster_id] = _InFlight(cluster, now)
        self.clusters_started += 1
        return cluster

    def hold(self, now: float) -> None:
        """The last result taught nothing new (no higher than the estimate): wait before the next."""
        self._not_before = max(self._not_before, now + RETRY_INTERVAL)
        self._queued.clear()
        self.startup_over = True

    def sent(self, cluster_id: int, packets: int, now: float) -> None:
        """The cluster's window ended with `packets` packets tagged (none: it could not be sent)."""
        flight = self._in_flight.get(cluster_id)
        if flight is None:
            return
        flight.sent_at = now
        flight.packets_sent = packets
        if packets == 0:
            del self._in_flight[cluster_id]
            self._queued.clear()
            self._not_before = now + RETRY_INTERVAL
            self.startup_over = True
        else:
            self._judge(flight, now)  # its feedback may all be in already

    def on_packet(self, cluster_id: int, send_time: float, size: int, arrival: Optional[float],
                  now: float) -> Optional[float]:
        """Feedback about one probe packet; the cluster's measured bps once it can be judged."""
        flight = self._in_flight.get(cluster_id)
        if flight is None:
            return None
        if arrival is None:
            flight.lost += 1
        else:
            flight.sends.append((send_time, size))
            flight.arrivals.append((arrival, size))
        return self._judge(flight, now)

    def judge_late(self, now: float) -> list[float]:
        """Results of clusters whose feedback stopped short of all their packets and waited
        `_LATE_FEEDBACK` (called with each feedback)."""
        measured = []
        for flight in list(self._in_flight.values()):
            if flight.packets_sent and now - flight.sent_at >= _LATE_FEEDBACK:
                result = self._judge(flight, now)
                if result is not None:
                    measured.append(result)
        return measured

    def _judge(self, flight: _InFlight, now: float) -> Optional[float]:
        covered = len(flight.arrivals) + flight.lost
        if flight.packets_sent <= 0 or covered < flight.packets_sent * _COVERED:
            return None
        if covered < flight.packets_sent and now - flight.sent_at < _LATE_FEEDBACK:
            return None  # the rest of its feedback may be on its way
        del self._in_flight[flight.cluster.cluster_id]
        measured = self._measure(flight, covered)
        if measured is None:
            self._failed(now)
            return None
        self.results += 1
        if measured >= _PROBE_FURTHER * flight.cluster.bitrate_bps:
            self._not_before = now  # it kept up: double again at once (if still wanted)
        elif not self.startup_over and self._startup_short + 1 < STARTUP_SHORT_RESULTS:
            self._startup_short += 1  # once more, soon: one short result may be the link's noise
            self._not_before = now + _STARTUP_RETRY
            self._queued.clear()
        else:
            # The link did not carry it: that is what it carries; wait before asking again.
            self._not_before = now + RETRY_INTERVAL
            self._queued.clear()
            self.startup_over = True
        return measured

    def _failed(self, now: float) -> None:
        """A cluster gave no result (its feedback lost, too few of its packets received). From
        the start it is tried again soon, as a short result is: under 5 % loss a lost feedback
        packet left a cluster unjudged, and ended the probing with the estimate at the start
        guess or the first cluster's result (a subscriber held on the low layer for seconds)."""
        self.failures += 1
        self._queued.clear()
        if not self.startup_over and self._startup_short + 1 < STARTUP_SHORT_RESULTS:
            self._startup_short += 1
            self._not_before = now + _STARTUP_RETRY
        else:
            self._not_before = now + RETRY_INTERVAL
            self.startup_over = True

    @staticmethod
    def _measure(flight: _InFlight, covered: int) -> Optional[float]:
        """The cluster's result in bps; None: no result."""
        received = len(flight.arrivals)
        if received < max(2, covered * _RECEIVED):
            return None
        sends = sorted(flight.sends)
        send_span = sends[-1][0] - sends[0][0]
        if send_span <= 0:
            return None
        total = sum(size for _, size in sends)
        # The last packet sent took its bytes out after the send span ended.
        send_bps = (total - sends[-1][1]) * 8 / send_span
        stretch = _stretch(flight.packets())
        if stretch is None:
            return None
        receive_bps = send_bps / stretch
        if receive_bps > _MAX_RECEIVE_RATIO * send_bps:
            return None
        # (A short cluster's send span is noisy: its own bitrate also bounds what it asked of the link.)
        asked = min(send_bps, float(flight.cluster.bitrate_bps))
        arrivals = sorted(flight.arrivals)
        arrival_span = arrivals[-1][0] - arrivals[0][0]
        # The sender pads in steps, several packets at once: the fit then rests on a few groups
        # of send times and can read a queued cluster as carried (a 900 kbit/s cluster through
        # a 600 kbit/s link read 885k). The arrival span settles it.
        queued = arrival_span > send_span + _JITTER_ALLOWANCE
        if receive_bps >= _CARRIED * asked and not queued:
            return min(receive_bps, asked)
        # Not carried: a queue at a bottleneck spaced the arrivals by each packet's size over the
        # link's rate. The fit leans on the first packets, which met an empty queue, and reads
        # high; the bytes over the arrival span is what the link delivered.
        if arrival_span > 0:
            receive_bps = min(receive_bps, (total - arrivals[0][1]) * 8 / arrival_span)
        return _TARGET_UTILIZATION * receive_bps


def _stretch(packets: list[tuple[float, float, int]]) -> Optional[float]:
    """How much longer the cluster took to arrive than to send, from (send time, arrival, size)
    of its received packets: the slope of a least-squares line through the arrivals against
    the send times. The rate the link delivered it at is its send rate over that.

    Not its bytes over the span from the first arrival to the last (libwebrtc's way): under
    jitter those two are the extremes of the jitter, so the span comes out longer than the
    cluster by about the jitter's width — a 30 ms cluster under ± 5 ms measured at 75–85 % of
    what an unlimited link carried, and that result settled the estimate. The fit uses every
    packet, so random jitter averages out; behind a bottleneck the packets arrive spaced by
    their size over the link's rate, later than they were sent by more and more, and the slope
    is the send rate over the link's."""
    if len(packets) < 3:
        return None
    n = len(packets)
    mean_x = sum(send for send, _, _ in packets) / n
    mean_y = sum(arrival for _, arrival, _ in packets) / n
    den = sum((send - mean_x) ** 2 for send, _, _ in packets)
    num = sum((send - mean_x) * (arrival - mean_y) for send, arrival, _ in packets)
    if den <= 0 or num <= 0:
        return None  # arrivals not later for later sends: no measurement
    return num / den


__all__ = ["INITIAL_MULTIPLES", "ProbeCluster", "ProbeController"]
