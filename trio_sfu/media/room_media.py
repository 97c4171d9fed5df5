"""A room's media on this node: its published tracks, as sources in the room's FIFO TrackManager.

A track published here is a `PublishedTrack` (its `TrackReceiver` and what subscribers need to
know) and, once its first packet arrived, a LOCAL `TrackSource` in the room's TrackManager
(trio_sfu.tracks): a track id resolves to the head of its FIFO only while that source is open,
and a source leaves the FIFO only once closed. Each participant's SubscriptionManager resolves
through it.

The participants' media sessions are the room's members (`RoomMember`: what the room and the
other members use of one). When this server is one node of several, the cluster's relay hears
about local tracks and the room's life through `RelayHooks` — a Protocol owned here and
implemented by `trio_sfu.cluster.node_relay.NodeRelay`, so that media never imports the cluster.
"""

from __future__ import annotations

from typing import Callable, Optional, Protocol

from livekit.protocol import models

from sdp.codecs import EXT_AUDIO_LEVEL, MediaKind
from sdp.model import Codec

from trio_sfu import metrics as m
from trio_sfu.forwarding import TrackReceiver
from trio_sfu.media.data_channels import ParticipantData
from trio_sfu.media.room_reports import RoomReports
from trio_sfu.media.speakers import AudioLevelConfig, AudioLevelMeter
from trio_sfu.signal.media_port import MediaParticipant
from trio_sfu.tracks import ResolutionPolicy, ResumeFlagPolicy, SourceOrigin, TrackManager, TrackSource
from trio_sfu.tracks.subscriber import Binding


#: Where a closed receiver's counters go in the server's metrics (trio_sfu.media.traffic), and
#: the packets its publisher's streams lost on the way to us (RTP sequence gaps never filled).
RECEIVER_PREFIX = "media_receiver"
RECEIVER_LOST = "media_receiver_packets_lost_total"


class PublishedTrack:
    """One published track as the room sees it: its receiver and what subscribers need to know."""

    def __init__(self, sid: str, kind: MediaKind, publisher_sid: str, stream_id: str,
                 codecs: tuple[Codec, ...], extensions: dict[int, str], receiver: TrackReceiver,
                 audio_levels: AudioLevelConfig = AudioLevelConfig()) -> None:
        self.sid = sid
        self.kind = kind
        self.publisher_sid = publisher_sid
        self.stream_id = stream_id
        self.codecs = codecs  # as negotiated on the publisher PC (publisher payload types)
        self.extensions = extensions  # publisher extension id -> URI
        self.receiver = receiver
        # Audio with RFC 6464 levels negotiated: the publisher PC's element id and the track's
        # meter (active speakers); None for video and for audio without levels.
        self.audio_level_extension: Optional[int] = None
        self.audio_level: Optional[AudioLevelMeter] = None
        if kind is MediaKind.AUDIO:
            self.audio_level_extension = next(
                (ext_id for ext_id, uri in extensions.items() if uri == EXT_AUDIO_LEVEL), None)
            if self.audio_level_extension is not None:
                self.audio_level = AudioLevelMeter(receiver.clock_rate, audio_levels)
        self.published = False
        self.source: Optional[TrackSource] = None  # its local source, once published

    @property
    def primary(self) -> Codec:
        return next(c for c in self.codecs if not c.is_rtx)

    @property
    def mime_types(self) -> tuple[str, ...]:
        names = dict.fromkeys(c.name.lower() for c in self.codecs if not c.is_rtx)
        return tuple(f"{self.kind.value}/{name}" for name in names)

    def close(self, metrics: m.Metrics) -> None:
        receiver = self.receiver
        m.fold_counters(metrics, RECEIVER_PREFIX, receiver.counters)
        lost = receiver.packets_lost()
        if lost > 0:
            metrics.inc(RECEIVER_LOST, lost)
        if receiver.state.value == "open":
            receiver.begin_closing(expected_to_resume=False)
        if receiver.state.value == "closing":
            receiver.close()


class RoomMember(Protocol):
    """A participant's media session as its room and the room's other members use it."""

    sid: str
    participant: MediaParticipant
    # Its data path: other members forward their clients' DataPackets to it.
    data: ParticipantData

    @property
    def subscriptions(self) -> dict[str, Binding]:
        """Track id -> its binding on the member's subscriber PC (`.down` once forwarding)."""

    def update_desired(self) -> None:
        """The room's tracks changed: re-decide what the member should receive."""

    def published_tracks(self) -> list[PublishedTrack]:
        """The tracks it publishes that media was matched to (speakers and quality read them)."""

    def reallocate(self, now: float) -> None:
        """A track it receives was muted or unmuted: share its downlink over its tracks again."""


class RelayHooks(Protocol):
    """What a room's media tells the node-to-node relay (trio_sfu.cluster.node_relay)."""

    def local_published(self, room_media: "RoomMedia", source: TrackSource) -> None:
        """A track published on this node got its local source: announce and relay it."""

    def local_closing(self, room_media: "RoomMedia", source: TrackSource, expected_to_resume: bool) -> None:
        """A local source is closing: stop relaying it and tell the peers (and whether it resumes)."""

    def room_opened(self, room_media: "RoomMedia") -> None:
        """The room has its first member here: offer the peers' tracks as remote sources."""

    def room_emptied(self, room_media: "RoomMedia") -> None:
        """The room's last member here left: the remote copies have nobody to serve."""

    def data_published(self, room_media: "RoomMedia", kind: int, packet: bytes) -> None:
        """A participant here sent a data packet (stamped, serialized): the room's participants
        on the other nodes get it too."""

    def hand_over(self, room_media: "RoomMedia", tracks: list[PublishedTrack],
                  participant_sid: str) -> list[PublishedTrack]:
        """A participant that is moving to another node left: keep the tracks it published open
        until their new source appears there; returns those not kept (to unpublish now)."""

    def remote_track_info(self, room_media: "RoomMedia", track_id: str) -> Optional[models.TrackInfo]:
        """A track published on another node, as that node last described it (its simulcast
        layers' sizes); None if unknown."""


class RoomMediaService(Protocol):
    """What a RoomMedia needs of the node's media service (trio_sfu.media.service)."""

    metrics: m.Metrics
    relay: Optional[RelayHooks]
    rooms: dict[str, "RoomMedia"]  # by room sid
    # What counts as speaking (the config's `audio` section).
    audio_levels: AudioLevelConfig
    # The rules a room resolves track ids by, and its sources fix expected-to-resume by.
    resolution: Callable[[], ResolutionPolicy]
    resume_policy: Callable[[], ResumeFlagPolicy]


class RoomMedia:
    """The tracks published in one room and the participants' media sessions there.

    Published tracks are sources in the room's TrackManager (trio_sfu.tracks): a track id
    resolves to the head of its FIFO only while that source is open, and a source leaves the
    FIFO only once closed. Each participant's SubscriptionManager resolves through it."""

    def __init__(self, service: RoomMediaService, name: str, sid: str) -> None:
        self.service = service
        self.name = name
        self.sid = sid
        self.track_manager = TrackManager(service.resolution())
        self.sessions: dict[str, RoomMember] = {}
        # Track ids unpublished for good (no resume): nobody wants them any more. Track sids are
        # never reused by a new publication, so this only grows with the room's publications.
        self.withdrawn: set[str] = set()
        # Speakers and connection quality: a timer part of every member's loop (reports.timer).
        self.reports = RoomReports(self.sessions, service.metrics, service.audio_levels)

    @property
    def tracks(self) -> dict[str, TrackSource]:
        """Track id -> the source subscribers bind to now (the open head of its FIFO)."""
        resolved = {}
        for sid in self.track_manager.track_ids():
            source = self.track_manager.resolve(sid)
            if source is not None:
                resolved[sid] = source
        return resolved

    def publish(self, track: PublishedTrack) -> None:
        track.published = True
        source = TrackSource(track.sid, SourceOrigin.LOCAL, "local", track.receiver, kind=track.kind,
                             publisher_id=track.publisher_sid, stream_id=track.stream_id, codecs=track.codecs,
                             extensions=dict(track.extensions), resume_policy=self.service.resume_policy())
        track.source = source
        self.track_manager.add(source)
        self.service.metrics.inc(m.MEDIA_TRACKS_PUBLISHED)
        if self.service.relay is not None:
            self.service.relay.local_published(self, source)
        self.update_desired()

    def unpublish(self, tracks: list[PublishedTrack], expected_to_resume: bool = False) -> None:
        """Withdraw tracks; every subscriber renegotiates once for all of them. With
        `expected_to_resume` (a migration hand-back, a publisher resume) subscribers cache the
        track's transceiver and rewrite state instead, for the track id's next source."""
        relay = self.service.relay
        for track in tracks:
            if track.source is not None:
                if relay is not None:
                    relay.local_closing(self, track.source, expected_to_resume)
                track.source.close_now(expected_to_resume=expected_to_resume)
            if not expected_to_resume:
                self.withdrawn.add(track.sid)
            track.close(self.service.metrics)
        self.update_desired()

    def track_info(self, source: TrackSource) -> Optional[models.TrackInfo]:
        """The published track's TrackInfo: its publisher's here, else as the node it is
        published on described it; None if unknown."""
        publisher = self.sessions.get(source.publisher_id)
        if publisher is not None:
            return publisher.participant.tracks.get(source.track_id)
        relay = self.service.relay
        return relay.remote_track_info(self, source.track_id) if relay is not None else None

    def listed(self, track_id: str) -> bool:
        """Whether a participant of the room lists the track as published — one here, or one on
        another node as that node described it: what the room's clients are told exists."""
        if any(track_id in session.participant.tracks for session in self.sessions.values()):
            return True
        relay = self.service.relay
        return relay is not None and relay.remote_track_info(self, track_id) is not None

    def update_desired(self) -> None:
        for session in list(self.sessions.values()):
            session.update_desired()

    def join(self, session: RoomMember) -> None:
        self.sessions[session.sid] = session
        if len(self.sessions) == 1 and self.service.relay is not None:
            self.service.relay.room_opened(self)

    def leave(self, session: RoomMember) -> None:
        if self.sessions.get(session.sid) is session:
            del self.sessions[session.sid]
            if not self.sessions and self.service.relay is not None:
                self.service.relay.room_emptied(self)
        self.forget_if_idle()

    def forget_if_idle(self) -> None:
        """No member and no track left: the service forgets this room's media."""
        if not self.sessions and not self.track_manager.track_ids():
            if self.service.rooms.get(self.sid) is self:
                del self.service.rooms[self.sid]


__all__ = ["PublishedTrack", "RelayHooks", "RoomMedia", "RoomMediaService", "RoomMember"]
