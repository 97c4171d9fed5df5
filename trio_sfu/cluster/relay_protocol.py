"""The relay protocol's vocabulary on our side: what `proto/relay.proto` messages describe, as
the node relay (trio_sfu.cluster.node_relay) builds and checks them.

- `TrackSpec`: what a published track is, independent of where it is received (TrackPublished's
  TrackDescription), and the REMOTE `TrackSource` a peer's announcement becomes.
- `RelayTap`: one peer node's subscription to a local track. It sits on the track's receiver like
  a down track only while the peer asks for some layer (`RelaySubscribe`), relays exactly the
  layers asked for (or, for a layer the publisher is not sending now, the one a local subscriber
  would fall back to), answers the peer's NACKs from the receiver's buffer, passes the
  publisher's sender reports on, and accounts the peer's receiver reports (they end here, per
  hop, as an SFU's subscribers' reports do: the publisher hears only this node's own RRs).
- The migration sync state's subscribed m-lines (`migrated_transceivers`) and down-track rewrite
  state (`snapshot_to_proto` / `snapshot_from_proto`).
"""

from __future__ import annotations

import secrets
from typing import Callable, Iterable, Optional

import attrs

from proto import relay_pb2 as pb
from sdp.codecs import MediaKind
from sdp.model import Codec

from trio_sfu.cluster.link import RelayLink
from trio_sfu.forwarding.downtrack import DownTrackSnapshot
from trio_sfu.forwarding.receiver import TrackReceiver
from trio_sfu.forwarding.rtcp_feedback import PublisherSenderReport
from trio_sfu.forwarding.simulcast import layer_for_rid
from trio_sfu.tracks.source import ResumeFlagPolicy, SourceOrigin, TrackSource
from trio_sfu.tracks.subscriber import MigratedTransceiver


#: At most this many simulcast layers per relayed track (LiveKit's clients send three).
MAX_RELAYED_RIDS = 4
#: Ids another node sends end up in our SDP (msid, a=ssrc lines) and signal messages.
MAX_RELAYED_ID = 256


def sdp_safe_id(value: str) -> bool:
    """Whether an id from another node can go into an SDP line as it is: non-empty, bounded,
    visible ASCII only (a space or control character would split or end the line)."""
    return 0 < len(value) <= MAX_RELAYED_ID and value.isascii() and value.isprintable() and " " not in value
#: At most this many sequence numbers of one relayed NACK are resent (a NACK packet can name
#: thousands; the receiver's buffer holds 1024).
MAX_RESENT_PER_NACK = 64
#: How often a tap re-derives which layers stand in for requested ones the publisher stopped
#: sending (a DownTrack re-derives its fallback as often).
STAND_IN_PERIOD = 0.1


@attrs.frozen
class TrackSpec:
    """What a published track is, independent of where it is received."""

    track_id: str
    publisher_id: str
    kind: MediaKind
    codecs: tuple[Codec, ...]
    stream_id: str = ""
    # The publisher's header-extension ids -> URIs (empty: unknown, ids forwarded unchanged).
    extensions: tuple[tuple[int, str], ...] = ()
    # The publisher's simulcast rids: the remote copy has the same layers (empty: one, 0).
    rids: tuple[str, ...] = ()

    @classmethod
    def from_source(cls, source: TrackSource) -> "TrackSpec":
        return cls(source.track_id, source.publisher_id, source.kind, source.codecs, source.stream_id,
                   tuple(sorted((source.extensions or {}).items())), source.receiver.rids)

    def remote_source(self, node_id: str, send_rtcp: Callable[[bytes], bool], *, cname: str, now: float,
                      resume_policy: Optional[ResumeFlagPolicy] = None) -> TrackSource:
        """A REMOTE source for this track as `node_id` relays it: the relay feeds its receiver,
        whose RTCP feedback goes back through `send_rtcp`."""
        primary = next(c for c in self.codecs if not c.is_rtx)
        receiver = TrackReceiver(self.track_id, f"{self.kind.value}/{primary.name}", primary.clock_rate,
                                 send_rtcp=send_rtcp, local_ssrc=secrets.randbits(31) or 1, cname=cname,
                                 rids=self.rids,
                                 buffer_capacity=1024 if self.kind is MediaKind.VIDEO else 128, now=now)
        return TrackSource(self.track_id, SourceOrigin.REMOTE, node_id, receiver, kind=self.kind,
                           publisher_id=self.publisher_id, stream_id=self.stream_id, codecs=self.codecs,
                           extensions=dict(self.extensions) or None, resume_policy=resume_policy)

    def to_proto(self) -> pb.TrackDescription:
        return pb.TrackDescription(
            track_id=self.track_id, publisher_id=self.publisher_id, kind=self.kind.value,
            stream_id=self.stream_id, extensions=dict(self.extensions), rids=list(self.rids),
            codecs=[pb.Codec(payload_type=c.payload_type, name=c.name, clock_rate=c.clock_rate,
                             channels=c.channels or 0, parameters=c.parameters or "") for c in self.codecs])

    @classmethod
    def from_proto(cls, d: pb.TrackDescription) -> Optional["TrackSpec"]:
        """None for a description we cannot use (bad kind, no codec, bad payload type)."""
        try:
            kind = MediaKind(d.kind)
        except ValueError:
            return None
        if kind is MediaKind.APPLICATION or not d.codecs:
            return None
        if not sdp_safe_id(d.track_id) or not sdp_safe_id(d.publisher_id) or (d.stream_id and not sdp_safe_id(d.stream_id)):
            return None
        if all(c.name.lower() == "rtx" for c in d.codecs):
            return None  # nothing but retransmission: no media codec to forward
        codecs = []
        for c in d.codecs:
            if c.payload_type > 127 or not c.name or c.clock_rate == 0:
                return None
            codecs.append(Codec(c.payload_type, c.name, c.clock_rate, c.channels or None, c.parameters or None))
        if any(not 0 < ext_id < 256 or not uri for ext_id, uri in d.extensions.items()):
            return None
        rids = tuple(d.rids)
        if len(rids) > MAX_RELAYED_RIDS or len(set(rids)) != len(rids) or any(not r or len(r) > 32 for r in rids):
            return None
        if any(layer_for_rid(r, rids) not in range(MAX_RELAYED_RIDS) for r in rids):
            return None
        return cls(d.track_id, d.publisher_id, kind, tuple(codecs), d.stream_id, tuple(sorted(d.extensions.items())),
                   rids)


def snapshot_to_proto(s: DownTrackSnapshot) -> pb.DownTrackState:
    return pb.DownTrackState(last_sequence=s.last_sequence, last_timestamp=s.last_timestamp,
                             last_timestamp_at=s.last_timestamp_at, vp8_picture_id=s.vp8_picture_id,
                             vp8_tl0picidx=s.vp8_tl0picidx, rtx_sequence=s.rtx_sequence,
                             packets_sent=s.packets_sent, octets_sent=s.octets_sent)


def snapshot_from_proto(d: pb.DownTrackState) -> DownTrackSnapshot:
    return DownTrackSnapshot(d.last_sequence, d.last_timestamp, d.last_timestamp_at, d.vp8_picture_id,
                             d.vp8_tl0picidx, d.rtx_sequence & 0xFFFF, d.packets_sent, d.octets_sent)


def migrated_transceivers(body: pb.MigrateParticipant) -> tuple[list[MigratedTransceiver], dict[str, MediaKind]] | str:
    """The sync state's cached m-lines and their kinds, or why they cannot be used."""
    entries: list[MigratedTransceiver] = []
    kinds: dict[str, MediaKind] = {}
    wanted = set(body.subscriptions)
    for t in body.transceivers:
        if t.track_id not in wanted:
            return f"transceiver for unsubscribed track {t.track_id}"
        try:
            kinds[t.track_id] = MediaKind(t.kind)
        except ValueError:
            return f"transceiver of unknown kind {t.kind!r}"
        if kinds[t.track_id] is MediaKind.APPLICATION or t.ssrc == 0 or not sdp_safe_id(t.mid) \
                or not sdp_safe_id(t.track_id) or (t.stream_id and not sdp_safe_id(t.stream_id)):
            return f"unusable transceiver for {t.track_id!r}"
        snapshot = snapshot_from_proto(t.down) if t.HasField("down") else None
        entries.append(MigratedTransceiver(t.track_id, t.mid, t.ssrc, t.rtx_ssrc or None, snapshot, t.stream_id or None))
    return entries, kinds


@attrs.define
class RelayTapCounters:
    packets_sent: int = 0
    packets_dropped: int = 0  # the link refused them (full)
    packets_resent: int = 0   # NACKed by the peer, answered from the buffer
    resend_missing: int = 0   # NACKed but no longer (or never) in the buffer
    sender_reports_sent: int = 0
    receiver_reports: int = 0  # the peer's RR packets accounted here


class RelayTap:
    """One peer node's subscription to a local track (see the module docstring).

    Attached to the receiver (a `PacketSink`) only while the peer requests a layer, so a track
    nobody on the peer subscribes to costs nothing per packet and sends nothing."""

    def __init__(self, link: RelayLink, room: str, track_id: str, receiver: TrackReceiver) -> None:
        self.link = link
        self.room = room
        self.track_id = track_id
        self.receiver = receiver
        self.requested: frozenset[int] = frozenset()
        # The layers relayed now: each requested layer, or its stand-in while the publisher does
        # not send it.
        self.forwarding: frozenset[int] = frozenset()
        self._checked_at = float("-inf")
        # Layers whose next relayed packet follows a pause (the peer must not NACK the gap).
        self._restarted: set[int] = set()
        self._sender_reports: dict[int, PublisherSenderReport] = {}
        # What the peer's receiver reports said last, per layer: (fraction lost /256, cumulative lost).
        self.peer_loss: dict[int, tuple[int, int]] = {}
        self.counters = RelayTapCounters()

    @property
    def wanted_layers(self) -> frozenset[int]:
        return self.requested

    @property
    def subscribed_layers(self) -> frozenset[int]:
        # What the peer's copy forwards to its subscribers: all a relayed request says.
        return self.requested

    def request(self, layers: Iterable[int], now: float) -> None:
        """The peer's RelaySubscribe: relay these layers from now on (none: stop)."""
        receiver = self.receiver
        requested = frozenset(layer for layer in layers if layer in receiver.layers)
        was = self.requested
        self.requested = requested
        if requested and not was:
            receiver.add_down_track(self)  # type: ignore[arg-type]
        elif was and not requested:
            receiver.remove_down_track(self)  # type: ignore[arg-type]
        elif requested != was:
            # Other layers, as a local down track's new target: the publisher's dynacast hears it.
            receiver.layer_demand_changed()
        self._update_forwarding(now)

    def detach(self) -> None:
        """The local track stops being relayed to this peer."""
        if self.requested:
            self.receiver.remove_down_track(self)  # type: ignore[arg-type]
        self.requested = self.forwarding = frozenset()

    def _stand_in(self, layer: int, now: float) -> int:
        """`layer` if the publisher sends it, else the best sent below it, else the lowest sent
        above it (what a local subscriber's DownTrack falls back to)."""
        receiver = self.receiver
        if receiver.layer_active(layer, now):
            return layer
        below = [other for other in receiver.layers if other < layer and receiver.layer_active(other, now)]
        above = [other for other in receiver.layers if other > layer and receiver.layer_active(other, now)]
        return max(below) if below else min(above) if above else layer

    def _update_forwarding(self, now: float) -> None:
        self._checked_at = now
        forwarding = frozenset(self._stand_in(layer, now) for layer in self.requested)
        for layer in forwarding - self.forwarding:
            # The peer's subscribers can start only at a keyframe of a layer that starts crossing.
            self._restarted.add(layer)
            self._sender_reports.pop(layer, None)
            self.receiver.request_keyframe(layer, now)
        self._restarted &= forwarding
        self.forwarding = forwarding

    def write_rtp(self, layer: int, packet: bytes, now: float) -> bool:
        if now - self._checked_at >= STAND_IN_PERIOD:
            self._update_forwarding(now)
        if layer not in self.forwarding:
            return True  # not requested: nothing crosses
        restarted = layer in self._restarted
        if not self.link.send(pb.RelayMessage(rtp=pb.RelayRtp(
                room=self.room, track_id=self.track_id, packet=bytes(packet), layer=layer, discontinuity=restarted))):
            self.counters.packets_dropped += 1
            return False
        self.counters.packets_sent += 1
        if restarted:
            self._restarted.discard(layer)
        report = self.receiver.sender_report(layer)
        if report is not None and self._sender_reports.get(layer) is not report:
            # After the packet: the peer knows the layer's SSRC by the time the report arrives.
            self._sender_reports[layer] = report
            self.counters.sender_reports_sent += 1
            self.link.send(pb.RelayMessage(sender_report=pb.RelaySenderReport(
                room=self.room, track_id=self.track_id, layer=layer, ssrc=report.ssrc,
                ntp_timestamp=report.ntp_timestamp, rtp_timestamp=report.rtp_timestamp,
                packet_count=report.packet_count & 0xFFFFFFFF, octet_count=report.octet_count & 0xFFFFFFFF,
                age=max(0.0, now - report.arrival))))
        return True

    def resend(self, layer: int, sequence_numbers: Iterable[int]) -> None:
        """The peer NACKed these packets of `layer`: send them again from the receiver's buffer
        (the original packets, marked resent); only for a layer being relayed."""
        if layer not in self.forwarding:
            return
        for count, seq in enumerate(sequence_numbers):
            if count >= MAX_RESENT_PER_NACK:
                break
            packet = self.receiver.get_packet(layer, seq)
            if packet is None:
                self.counters.resend_missing += 1
                continue
            if self.link.send(pb.RelayMessage(rtp=pb.RelayRtp(
                    room=self.room, track_id=self.track_id, packet=packet, layer=layer, resent=True))):
                self.counters.packets_resent += 1
            else:
                self.counters.packets_dropped += 1

    def account_report(self, layer: int, fraction_lost: int, cumulative_lost: int) -> None:
        """One report block of the peer's RR about `layer`: kept here, not passed upstream."""
        self.peer_loss[layer] = (fraction_lost, cumulative_lost)

    def next_deadline(self) -> Optional[float]:
        return None
