"""The relay protocol's vocabulary on our side: what `proto/relay.proto` messages describe, as
the node relay (trio_sfu.cluster.node_relay) builds and checks them.

- `TrackSpec`: what a published track is, independent of where it is received (TrackPublished's
  TrackDescription), and the REMOTE `TrackSource` a peer's announcement becomes.
- `RelayTap`: sits on a local receiver like a down track and relays its RTP to one peer.
- The migration sync state's subscribed m-lines (`migrated_transceivers`) and down-track rewrite
  state (`snapshot_to_proto` / `snapshot_from_proto`).
"""

from __future__ import annotations

import secrets
from typing import Callable, Optional

import attrs

from proto import relay_pb2 as pb
from sdp.codecs import MediaKind
from sdp.model import Codec

from trio_sfu.cluster.link import RelayLink
from trio_sfu.forwarding.downtrack import DownTrackSnapshot
from trio_sfu.forwarding.receiver import TrackReceiver
from trio_sfu.tracks.source import ResumeFlagPolicy, SourceOrigin, TrackSource
from trio_sfu.tracks.subscriber import MigratedTransceiver


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

    @classmethod
    def from_source(cls, source: TrackSource) -> "TrackSpec":
        return cls(source.track_id, source.publisher_id, source.kind, source.codecs, source.stream_id,
                   tuple(sorted((source.extensions or {}).items())))

    def remote_source(self, node_id: str, send_rtcp: Callable[[bytes], bool], *, cname: str, now: float,
                      resume_policy: Optional[ResumeFlagPolicy] = None) -> TrackSource:
        """A REMOTE source for this track as `node_id` relays it: the relay feeds its receiver,
        whose RTCP feedback goes back through `send_rtcp`."""
        primary = next(c for c in self.codecs if not c.is_rtx)
        receiver = TrackReceiver(self.track_id, f"{self.kind.value}/{primary.name}", primary.clock_rate,
                                 send_rtcp=send_rtcp, local_ssrc=secrets.randbits(31) or 1, cname=cname,
                                 buffer_capacity=1024 if self.kind is MediaKind.VIDEO else 128, now=now)
        return TrackSource(self.track_id, SourceOrigin.REMOTE, node_id, receiver, kind=self.kind,
                           publisher_id=self.publisher_id, stream_id=self.stream_id, codecs=self.codecs,
                           extensions=dict(self.extensions) or None, resume_policy=resume_policy)

    def to_proto(self) -> pb.TrackDescription:
        return pb.TrackDescription(
            track_id=self.track_id, publisher_id=self.publisher_id, kind=self.kind.value,
            stream_id=self.stream_id, extensions=dict(self.extensions),
            codecs=[pb.Codec(payload_type=c.payload_type, name=c.name, clock_rate=c.clock_rate,
                             channels=c.channels or 0, parameters=c.parameters or "") for c in self.codecs])

    @classmethod
    def from_proto(cls, d: pb.TrackDescription) -> Optional["TrackSpec"]:
        """None for a description we cannot use (bad kind, no codec, bad payload type)."""
        try:
            kind = MediaKind(d.kind)
        except ValueError:
            return None
        if kind is MediaKind.APPLICATION or not d.track_id or not d.codecs:
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
        return cls(d.track_id, d.publisher_id, kind, tuple(codecs), d.stream_id, tuple(sorted(d.extensions.items())))


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
        if kinds[t.track_id] is MediaKind.APPLICATION or not t.mid or t.ssrc == 0:
            return f"unusable transceiver for {t.track_id}"
        snapshot = snapshot_from_proto(t.down) if t.HasField("down") else None
        entries.append(MigratedTransceiver(t.track_id, t.mid, t.ssrc, t.rtx_ssrc or None, snapshot, t.stream_id or None))
    return entries, kinds


class RelayTap:
    """Sits on a local receiver like a down track and relays its RTP to one peer node."""

    def __init__(self, link: RelayLink, room: str, track_id: str) -> None:
        self.link = link
        self.room = room
        self.track_id = track_id
        self.target_layer = 0

    def write_rtp(self, layer: int, packet: bytes, now: float) -> bool:
        if layer != self.target_layer:
            return True  # one layer crosses the link (the receiving node sees one stream)
        return self.link.send(pb.RelayMessage(rtp=pb.RelayRtp(room=self.room, track_id=self.track_id, packet=bytes(packet))))

    def next_deadline(self) -> Optional[float]:
        return None
