"""A simulated bottleneck link for the estimator tests, driven on a virtual clock.

The sender and the receiver are the real code: every packet is an RTP packet stamped by
rtp.twcc_sender.TransportSequencer, the receiver is rtp.twcc.TransportFeedbackRecorder (the one
our publisher side runs), its feedback goes over the wire format (serialize, rtp.rtcp.parse_rtcp)
back into the sequencer and rtp.bwe.BandwidthEstimator. Only the network is modelled: a
drop-tail queue drained at `rate_bps`, a propagation delay each way, random loss from a seeded
generator. The media sender sends at the estimate (what an allocator would pick), capped by
`demand_bps`, and asks for probes up to the demand, padding each cluster at its bitrate.
"""

from __future__ import annotations

import heapq
import itertools
import random
from typing import Callable

import attrs

from rtp import rtcp
from rtp.bwe import BandwidthEstimator
from rtp.packet import RtpPacket
from rtp.twcc import TransportFeedbackRecorder
from rtp.twcc_sender import TransportSequencer

EXT_ID = 3
MEDIA_SIZE = 1200
PADDING_SIZE = 12 + 255
TICK = 0.001


@attrs.define
class LinkState:
    rate_bps: float = 1_000_000
    loss: float = 0.0
    delay: float = 0.02  # one way
    queue_limit: float = 0.4  # seconds of queue at rate_bps before drop-tail
    jitter: float = 0.0  # ± seconds added to each packet's delay, uniform (packets may reorder)


@attrs.define
class Sample:
    t: float
    estimate: int
    delay_based: int
    loss_based: int


class SimulatedLink:
    def __init__(self, seed: int, *, start_bps: int = 300_000, demand_bps: int = 3_000_000) -> None:
        self.rng = random.Random(seed)
        self.link = LinkState()
        self.demand_bps = demand_bps
        self.estimator = BandwidthEstimator(start_bps=start_bps)
        self.sequencer = TransportSequencer(EXT_ID)
        self.recorder = TransportFeedbackRecorder(sender_ssrc=1, interval=0.05)
        self.now = 0.0
        self._events: list = []
        self._order = itertools.count()
        self._queue_free_at = 0.0
        self._credit = 0.0
        self._media_seq = 0
        self.trace: list[Sample] = []
        self.sent_bytes = 0
        self.dropped = 0
        self.probe_packets = 0
        self._cluster = None  # (cluster, started, first seq, sequencer bytes at the start)

    def _at(self, t: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._events, (t, next(self._order), action))

    def _packet(self, size: int, padding: bool) -> bytes:
        self._media_seq += 1
        payload = bytes(size - 12 - 8)
        pkt = RtpPacket(payload_type=96, sequence_number=self._media_seq & 0xFFFF, timestamp=0, ssrc=0x1234,
                        payload=payload)
        return pkt.serialize()

    def _send(self, size: int, padding: bool = False) -> None:
        packet = self.sequencer.stamp(self._packet(size, padding), self.now)
        self.sent_bytes += len(packet)
        link = self.link
        if link.loss and self.rng.random() < link.loss:
            return
        start = max(self.now, self._queue_free_at)
        if start - self.now > link.queue_limit:
            self.dropped += 1
            return
        self._queue_free_at = start + len(packet) * 8 / link.rate_bps
        delay = link.delay
        if link.jitter:
            delay += link.jitter * (2.0 * self.rng.random() - 1.0)
        self._at(self._queue_free_at + delay, lambda: self._arrive(packet))

    def _arrive(self, packet: bytes) -> None:
        parsed = RtpPacket.parse(packet)
        seq = int.from_bytes(parsed.extensions[EXT_ID], "big")
        self.recorder.record(seq, parsed.ssrc, self.now)

    def _feedback(self, data: bytes) -> None:
        for report in rtcp.parse_rtcp(data):
            assert isinstance(report, rtcp.TransportCc)
            self.estimator.on_feedback(self.sequencer.on_feedback(report), self.now)

    def _probe_step(self) -> None:
        """Pad a running cluster up to what is due by now (media sent meanwhile counts), and
        end it after its duration, reporting how many packets it tagged."""
        cluster, started, first_seq, first_bytes = self._cluster
        elapsed = self.now - started
        due = cluster.bytes_due(elapsed) - (self.sequencer.bytes_stamped - first_bytes)
        while due > 0:
            size = max(200, min(PADDING_SIZE, due))
            self._send(size, padding=True)
            self.probe_packets += 1
            due -= size
        if elapsed >= cluster.duration:
            self.sequencer.probe_cluster = -1
            self.estimator.probe_sent(cluster.cluster_id, self.sequencer.next_sequence - first_seq, self.now)
            self._cluster = None

    def run_until(self, end: float) -> None:
        while self.now < end:
            t = self.now + TICK
            while self._events and self._events[0][0] <= t:
                when, _, action = heapq.heappop(self._events)
                self.now = max(self.now, when)
                action()
            self.now = t
            due = self.recorder.next_deadline()
            if due is not None and due <= t:
                for data in self.recorder.packets_to_send(t):
                    self._at(t + self.link.delay, lambda d=data: self._feedback(d))
            est = self.estimator
            est.request_probe(self.demand_bps, t)
            if self._cluster is None:
                cluster = est.poll_probe(t)
                if cluster is not None:
                    self._cluster = (cluster, t, self.sequencer.next_sequence, self.sequencer.bytes_stamped)
                    self.sequencer.probe_cluster = cluster.cluster_id
            self._credit += min(est.estimate_bps, self.demand_bps) * TICK / 8
            while self._credit >= MEDIA_SIZE:
                self._credit -= MEDIA_SIZE
                self._send(MEDIA_SIZE)
            if self._cluster is not None:
                self._probe_step()
            if round(t * 1000) % 100 == 0:
                self.trace.append(Sample(round(t, 3), est.estimate_bps, int(est.delay_based_bps),
                                         int(est.loss_based_bps)))

    def estimate_at(self, t: float) -> int:
        return next(s.estimate for s in self.trace if s.t >= t - 1e-9)

    def window(self, start: float, end: float) -> list[int]:
        return [s.estimate for s in self.trace if start - 1e-9 <= s.t <= end + 1e-9]
