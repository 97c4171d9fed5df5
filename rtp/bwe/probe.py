"""Probing: short clusters sent faster than the estimate, to find out whether the link has more.

Asked to probe "up to X bps" (by whoever needs more bitrate than the estimate), the controller
gives a `ProbeCluster` at twice the estimate (capped by X). Media keeps flowing meanwhile (an SFU
does not hold it back), so the sender tags *every* packet it sends during the cluster's
`duration` with the cluster's id and pads so that media and padding together keep to the
cluster's bitrate (`bytes_due`); what is judged is the whole. Once the feedback covers enough of the cluster, the rate it arrived at, capped
by the rate it was sent at, is the probe's result: when the link carried the cluster at its rate,
the next probe doubles again at once; when it did not, the result is what the link can carry and
probing waits `RETRY_INTERVAL`. Nothing needs more bitrate (X at or below the estimate): no probes.
"""

from __future__ import annotations

from typing import Optional

import attrs

#: A cluster lasts this long at its bitrate, and pads in at least `MIN_PACKETS` packets.
PROBE_DURATION = 0.03
MIN_PACKETS = 5
#: A cluster is this multiple of the estimate.
PROBE_MULTIPLE = 2.0
#: After a probe the link did not carry fully, or that failed, the next waits this long.
RETRY_INTERVAL = 5.0
#: A cluster's feedback is waited for this long.
_RESULT_TIMEOUT = 1.0
#: The share of a cluster's packets feedback must cover before it is judged, and received.
_COVERED = 0.8
_RECEIVED = 0.5
#: Arriving at this share of its send rate counts as carried in full.
_CARRIED = 0.9


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
    sends: list[tuple[float, int]] = attrs.field(factory=list)  # (send time, size) of received packets
    arrivals: list[float] = attrs.field(factory=list)
    lost: int = 0


class ProbeController:
    def __init__(self) -> None:
        self.goal_bps = 0
        self._next_id = 1
        self._in_flight: Optional[_InFlight] = None
        self._not_before = float("-inf")
        self.clusters_started = 0
        self.results = 0
        self.failures = 0

    @property
    def in_flight(self) -> bool:
        """A cluster was started and its result is not in yet (its feedback, or its timeout)."""
        return self._in_flight is not None

    def request(self, up_to_bps: int, now: float) -> None:
        """Probe up to `up_to_bps` (0: nothing needs more, stop)."""
        self.goal_bps = max(0, int(up_to_bps))

    def poll(self, estimate_bps: float, now: float) -> Optional[ProbeCluster]:
        flight = self._in_flight
        if flight is not None:
            if now - flight.sent_at < _RESULT_TIMEOUT:
                return None
            self._in_flight = None  # its feedback never came: a failure
            self.failures += 1
            self._not_before = now + RETRY_INTERVAL
        if self.goal_bps <= estimate_bps * 1.05 or now < self._not_before:
            return None
        bitrate = int(min(self.goal_bps, estimate_bps * PROBE_MULTIPLE))
        cluster = ProbeCluster(self._next_id, bitrate, MIN_PACKETS, PROBE_DURATION)
        self._next_id = (self._next_id % 0x7FFFFFFF) + 1
        self._in_flight = _InFlight(cluster, now)
        self.clusters_started += 1
        return cluster

    def hold(self, now: float) -> None:
        """The last result taught nothing new (no higher than the estimate): wait before the next."""
        self._not_before = max(self._not_before, now + RETRY_INTERVAL)

    def sent(self, cluster_id: int, packets: int, now: float) -> None:
        """The cluster's window ended with `packets` packets tagged (none: it could not be sent)."""
        flight = self._in_flight
        if flight is not None and flight.cluster.cluster_id == cluster_id:
            flight.sent_at = now
            if packets == 0:
                self._in_flight = None
                self._not_before = now + RETRY_INTERVAL

    def on_packet(self, cluster_id: int, send_time: float, size: int, arrival: Optional[float],
                  packets_sent: int, now: float) -> Optional[float]:
        """Feedback about one probe packet; the cluster's measured bps once it can be judged."""
        flight = self._in_flight
        if flight is None or flight.cluster.cluster_id != cluster_id:
            return None
        if arrival is None:
            flight.lost += 1
        else:
            flight.sends.append((send_time, size))
            flight.arrivals.append(arrival)
        covered = len(flight.arrivals) + flight.lost
        if packets_sent <= 0 or covered < packets_sent * _COVERED:
            return None
        self._in_flight = None
        received = len(flight.arrivals)
        if received < max(2, covered * _RECEIVED):
            self.failures += 1
            self._not_before = now + RETRY_INTERVAL
            return None
        send_times = sorted(t for t, _ in flight.sends)
        sizes = [s for _, s in flight.sends]
        arrivals = sorted(flight.arrivals)
        send_span = send_times[-1] - send_times[0]
        arrival_span = arrivals[-1] - arrivals[0]
        # The first packet's bytes arrived before the span starts, the last's were sent after it.
        payload = sum(sizes) - sizes[0]
        receive_bps = payload * 8 / arrival_span if arrival_span > 0 else float("inf")
        send_bps = payload * 8 / send_span if send_span > 0 else float("inf")
        measured = min(receive_bps, send_bps)
        if measured == float("inf"):
            self.failures += 1
            self._not_before = now + RETRY_INTERVAL
            return None
        self.results += 1
        # (Few packets make a noisy send span: the cluster's own bitrate bounds what it asked of the link.)
        if receive_bps < _CARRIED * min(send_bps, flight.cluster.bitrate_bps):
            # The link did not carry it at its rate: that is what it carries; wait before asking again.
            self._not_before = now + RETRY_INTERVAL
            measured *= 0.95
        else:
            self._not_before = now  # carried: double again at once (if still wanted)
        return measured


__all__ = ["ProbeCluster", "ProbeController"]
