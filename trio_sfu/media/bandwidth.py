"""A subscriber's downstream bandwidth: our transport-wide sequence numbers, its feedback, the estimate.

One `SubscriberBandwidth` per peer connection the down tracks go out on (the subscriber PC, or
with /rtc/v1 the one PC both ways), created once its negotiation kept the transport-wide
sequence number extension:

- per packet, only what a packet must touch: every RTP packet (every track's media, RTX, probe
  padding) gets the next number of this transport (rtp.twcc_sender.TransportSequencer), its
  send time and size noted; a packet the socket refused gives its number back. A forwarded
  packet is numbered by its down track, in place, where the fan-out found the element once
  (forwarding.NumberedDownlink); the rest by the subscriber endpoint's send path;
- per RTCP packet from the client: transport-cc feedback is matched to that history and fed to
  the estimator (rtp.bwe.BandwidthEstimator); REMB too (the estimate of clients that send only
  REMB);
- on the participant's timer (`Timed`): probe clusters — padding on a video down track's RTX
  SSRC, paced over the cluster's duration, every packet sent meanwhile tagged; the first ones
  (the estimator's initial series, 3× and 6× its start) back to back once a video track has
  media to pad beside — and the estimate's changes, given to the listener
  (`on_estimate_changed`) from that timer. The estimate is `settled` once it rests on evidence
  rather than the starting guess; the owner should not treat it as a ceiling before.

The stream allocator (trio_sfu.forwarding.allocator, driven by trio_sfu.media.subscribing)
consumes the narrow `BandwidthEstimate` interface: the estimate, its changes (callback or poll), and `request_probe(up_to_bps, now)`
when the tracks it would like to send need more than the estimate; it asks for 0 when nothing
needs more, and nothing probes unless asked.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Optional, Protocol, Sequence

from rtp import rtcp
from rtp.bwe import BandwidthEstimator, ProbeCluster
from rtp.twcc_sender import TransportSequencer
from sdp.codecs import EXT_TWCC
from sdp.model import SessionDescription

from trio_sfu import metrics as m
from trio_sfu.forwarding import DownTrack
from trio_sfu.forwarding.playout_delay import INTERVAL as PLAYOUT_INTERVAL
from trio_sfu.forwarding.playout_delay import PlayoutDelayPolicy

#: Padding packets: RTP header + at most 255 octets of RFC 3550 padding (libwebrtc pads with 224+).
PADDING_PACKET_SIZE = 12 + 255
#: A probe cluster's padding goes out in steps this far apart.
PROBE_STEP = 0.005
#: How often a subscriber that wants a probe looks whether one is due (between clusters).
PROBE_POLL = 0.1
#: (estimate bps, now) -> None; called from the participant's timer, must not block.
EstimateListener = Callable[[int, float], None]


class BandwidthEstimate(Protocol):
    """What the stream allocator needs of a subscriber's bandwidth estimate."""

    @property
    def estimate_bps(self) -> int:
        """The current estimate of what the subscriber's downlink carries, in bits per second."""

    def poll_estimate_changed(self) -> Optional[int]:
        """The estimate if it moved by 5 % or more since last polled, else None."""

    @property
    def probe_in_flight(self) -> bool:
        """A probe cluster is being sent or its result awaited (a lower estimate meanwhile may
        be the probe's own queue)."""

    def request_probe(self, up_to_bps: int, now: float) -> None:
        """Probe up to `up_to_bps` while it is above the estimate; 0 stops probing."""


def negotiated_transport_cc_id(answer: SessionDescription) -> Optional[int]:
    """The extension id the subscriber's answer kept for transport-wide sequence numbers."""
    for section in answer.media:
        if section.rejected:
            continue
        for extmap in section.extmaps:
            if extmap.uri == EXT_TWCC:
                return extmap.id
    return None


class SubscriberBandwidth:
    """See the module docstring; a `BandwidthEstimate` and a `Timed` part."""

    def __init__(self, ext_id: int, down_tracks: Callable[[], Iterable[DownTrack]], *,
                 metrics: m.Metrics, wake_by: Callable[[Optional[float]], None],
                 estimator: Optional[BandwidthEstimator] = None) -> None:
        self.sequencer = TransportSequencer(ext_id)
        self.estimator = estimator if estimator is not None else BandwidthEstimator()
        self.on_estimate_changed: Optional[EstimateListener] = None
        #: (floor ms, now) -> None: the playout-delay floor changed (for the owner's log).
        self.on_playout_delay_changed: Optional[Callable[[int, float], None]] = None
        self._down_tracks = down_tracks
        self._metrics = metrics
        self._wake_by = wake_by
        # The probe cluster being sent: when it started, and the sequencer's seq and byte count then.
        self._cluster: Optional[ProbeCluster] = None
        self._cluster_started = 0.0
        self._cluster_first_seq = 0
        self._cluster_first_bytes = 0
        self._next_poll: Optional[float] = None
        self.probe_packets = 0
        self.probes_unsendable = 0  # clusters with no video track to pad on
        # The floor of the subscriber's jitter buffer, from the loss its feedback reports (the
        # publishers' repairs have their own, TrackReceiver.playout_floor_ms): a video down track
        # carries the higher of the two once either was raised for it (and from then on: lifting
        # it is telling the receiver 0), looked at on the timer (`_update_playout_delay`).
        self.playout = PlayoutDelayPolicy()
        self._playout_swept_at = float("-inf")

    # ---- per packet (the subscriber endpoint's send path) -----------------------------------

    def stamp(self, packet: bytes, now: float) -> bytes:
        return self.sequencer.stamp(packet, now)

    def unstamp(self, packet: bytes) -> None:
        self.sequencer.unstamp(packet)

    # ---- RTCP from the subscriber ------------------------------------------------------------

    def on_rtcp(self, packets: Sequence[rtcp.RtcpPacket], now: float) -> None:
        estimator = self.estimator
        settled = estimator.settled
        for packet in packets:
            if isinstance(packet, rtcp.TransportCc):
                unknown = self.sequencer.feedback_unknown
                estimator.on_feedback(self.sequencer.on_feedback(packet), now)
                self._metrics.inc(m.MEDIA_TWCC_FEEDBACK)
                if self.sequencer.feedback_unknown > unknown:
                    self._metrics.inc(m.MEDIA_TWCC_FEEDBACK_UNMATCHED, self.sequencer.feedback_unknown - unknown)
            elif isinstance(packet, rtcp.Remb):
                estimator.on_remb(packet.bitrate, now)
        if estimator.settled and not settled:
            self._wake_by(now)  # the estimate now counts as a ceiling: the owner takes it at once
        if self._next_poll is None and self._cluster is None and estimator.probing and estimator.feedback_seen:
            # Probing waited for the first feedback (_probe_step): the next look, at the cadence
            # it polled at before.
            self._next_poll = now + PROBE_POLL
            self._wake_by(self._next_poll)

    # ---- BandwidthEstimate ------------------------------------------------------------------

    @property
    def estimate_bps(self) -> int:
        return self.estimator.estimate_bps

    def poll_estimate_changed(self) -> Optional[int]:
        return self.estimator.poll_estimate_changed()

    @property
    def settled(self) -> bool:
        """The estimate rests on evidence (the probes from the start found the link's end or
        what is wanted, or enough feedback came), not on the estimator's starting guess: until
        then it is no ceiling."""
        return self.estimator.settled

    @property
    def probe_in_flight(self) -> bool:
        """A probe cluster is being sent, or its result awaited."""
        return self._cluster is not None or self.estimator.probe_in_flight

    def request_probe(self, up_to_bps: int, now: float) -> None:
        self.estimator.request_probe(up_to_bps, now)
        if self.estimator.probing and self._next_poll is None:
            self._next_poll = now
            self._wake_by(now)

    def video_track_added(self, now: float) -> None:
        """A video down track started: probing that waited for one to pad beside looks again."""
        if self._next_poll is None and self._cluster is None and self.estimator.probing:
            self._next_poll = now
            self._wake_by(now)

    # ---- Timed ------------------------------------------------------------------------------

    def next_deadline(self) -> Optional[float]:
        return self._next_poll

    def handle_timeout(self, now: float) -> None:
        """The probe step when due; the estimate's change to the listener on every wake-up
        (the participant's timer wakes at least once a second)."""
        due = self._next_poll
        if due is not None and due <= now:
            self._probe_step(now)
        listener = self.on_estimate_changed
        if listener is not None:
            changed = self.estimator.poll_estimate_changed()
            if changed is not None:
                listener(changed, now)
        self._update_playout_delay(now)

    def _update_playout_delay(self, now: float) -> None:
        """The policy's look at the feedback's counts; on a change, and every policy step (for
        down tracks added since, and the publishers' own floors), each video down track is
        given the higher of this subscriber's floor and its publisher's (a track that never
        needed one carries no element)."""
        policy = self.playout
        counters = self.estimator.counters
        changed = policy.update(counters.packets_acked, counters.packets_lost, now)
        if changed:
            self._metrics.inc(m.MEDIA_PLAYOUT_DELAY_RAISED if policy.min_ms else m.MEDIA_PLAYOUT_DELAY_LIFTED)
            if self.on_playout_delay_changed is not None:
                self.on_playout_delay_changed(policy.min_ms, now)
        elif now - self._playout_swept_at < PLAYOUT_INTERVAL:
            return
        self._playout_swept_at = now
        own = policy.min_ms
        for down in self._down_tracks():
            # (What cannot carry a floor — a track kind without one — says nothing and is skipped.)
            floor = max(own, getattr(down, "source_playout_floor_ms", 0))
            current = getattr(down, "playout_delay", None)
            if current is None and not floor:
                continue
            if current != (floor, policy.max_ms):
                down.set_playout_delay(floor, policy.max_ms)

    def _probe_step(self, now: float) -> None:
        if self._cluster is not None:
            self._pace_cluster(now)
        elif self.estimator.probing:
            if not self._can_pad():
                # No media yet to pad beside (the track has not started): probing starts with
                # media, as libwebrtc's initial probes do, not with a cluster that cannot go out.
                # Without any video track there is nothing to wait for: no look until one is
                # added (`video_track_added`), else an audio-only subscriber's timer would wake
                # ten times a second for ever (audio room 10 x 200: 90 % of all wake-ups).
                self._next_poll = now + PROBE_POLL if self._has_video() else None
                return
            cluster = self.estimator.poll_probe(now)
            if cluster is not None:
                self._start_cluster(cluster, now)  # paces itself (sets the next step)
            elif not self.estimator.feedback_seen:
                # A client that sends no transport-cc feedback (yet, or ever: a load tester)
                # would have every subscriber's timer look ten times a second for nothing (3 us
                # per forwarded packet in livestream 1x200); its first feedback wakes this.
                self._next_poll = None
            else:
                # Not due yet (or waiting for a result): look again soon, not every wake-up.
                self._next_poll = now + PROBE_POLL
        else:
            self._next_poll = None

    def _start_cluster(self, cluster: ProbeCluster, now: float) -> None:
        self._cluster = cluster
        self._cluster_started = now
        self._cluster_first_seq = self.sequencer.next_sequence
        self._cluster_first_bytes = self.sequencer.bytes_stamped
        self.sequencer.probe_cluster = cluster.cluster_id
        self._metrics.inc(m.MEDIA_BWE_PROBE_CLUSTERS)
        self._pace_cluster(now)

    def _pace_cluster(self, now: float) -> None:
        """Pad so that the cluster's media and padding together keep up with its bitrate."""
        cluster = self._cluster
        assert cluster is not None
        elapsed = now - self._cluster_started
        due = cluster.bytes_due(elapsed) - (self.sequencer.bytes_stamped - self._cluster_first_bytes)
        count = math.ceil(due / PADDING_PACKET_SIZE) if due > 0 else 0
        if count and self._send_padding(count) == 0 and self.sequencer.next_sequence == self._cluster_first_seq:
            self._end_cluster(cluster, now, unsendable=True)  # nothing to pad on, and no media either
            return
        if elapsed >= cluster.duration:
            self._end_cluster(cluster, now)
        else:
            self._next_poll = min(now + PROBE_STEP, self._cluster_started + cluster.duration)

    def _has_video(self) -> bool:
        return any(down.mime_type.startswith("video/") for down in self._down_tracks())

    def _can_pad(self) -> bool:
        return any(down.mime_type.startswith("video/") and down.can_pad for down in self._down_tracks())

    def _send_padding(self, count: int) -> int:
        for down in self._down_tracks():
            if down.mime_type.startswith("video/") and down.can_pad:
                sent = down.send_padding(count, PADDING_PACKET_SIZE)
                self.probe_packets += sent
                self._metrics.inc(m.MEDIA_BWE_PROBE_PACKETS, sent)
                return sent
        return 0

    def _end_cluster(self, cluster: ProbeCluster, now: float, unsendable: bool = False) -> None:
        self._cluster = None
        self.sequencer.probe_cluster = -1
        tagged = 0 if unsendable else self.sequencer.next_sequence - self._cluster_first_seq
        if unsendable:
            self.probes_unsendable += 1
        self.estimator.probe_sent(cluster.cluster_id, tagged, now)
        self._next_poll = now + PROBE_POLL
        if not unsendable and self.estimator.probing:
            following = self.estimator.poll_probe(now)  # the initial series goes back to back
            if following is not None:
                self._start_cluster(following, now)


__all__ = ["BandwidthEstimate", "EstimateListener", "SubscriberBandwidth", "negotiated_transport_cc_id"]
