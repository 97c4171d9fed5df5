"""NodeRelay: a real server's end of the node-to-node relay — remote sources and migration.

Several servers ("nodes") may host the same room. Each node's NodeRelay announces the tracks
published locally (`TrackPublished`, with the publisher's simulcast rids); each peer offers them
to its own participants as *remote* sources in the room's FIFO TrackManager (trio_sfu.tracks),
next to any local source with the same track id.

Media crosses on demand. A remote source's receiver has the publisher's layers; whenever the
layers its down tracks target change (a subscriber came or went, paused, or chose another
simulcast quality — `TrackReceiver.wanted_layers`, heard through its `LayerDemandListener`), the
peer asks the publishing node for exactly those layers (`RelaySubscribe`; none stops the track;
refreshed every `DEMAND_REFRESH` seconds in case one was lost). The publishing node's `RelayTap`
for that peer relays those layers, each packet naming its layer (`RelayRtp.layer`), and nothing
for a track nobody on the peer subscribes to. Feedback goes back as RTCP (`RelayRtcp`): PLI/FIR
name the layer's SSRC and become a keyframe request for that layer; the remote receiver keeps its
own packet buffer, so its subscribers' NACKs are answered on their node, and it NACKs what the
link lost, which the tap resends from the publishing node's buffer; its receiver reports are
accounted by the tap and end there (each hop reports its own reception, as LiveKit's SFU does
with its subscribers' RRs). The publisher's sender reports cross as `RelaySenderReport`, so
remote subscribers' SRs carry the publisher's NTP/RTP mapping as local subscribers' do. The relay protocol is `proto/relay.proto`; the link is the
`trio_sfu.cluster.link.RelayLink` interface: in memory (tests), or TCP between real nodes
(`trio_sfu.cluster.tcp_link`, kept up by `trio_sfu.cluster.mesh.RelayMesh`). A link that ends takes
everything learned over it along (`link_lost`); the next one to the same peer starts afresh.

A participant moves from node A to node B — `NodeRelay.migrate` on A — like this:

1. A detaches the participant's subscriptions expecting a resume (each m-line and down-track
   rewrite state goes to its transceiver cache), stops its subscription manager, and sends B the
   sync state: `MigrateParticipant` (ParticipantInfo with its track sids, cids, desired
   subscriptions, cached m-lines, published tracks).
2. B checks it and keeps it as a pending migration (`MigrationIn`), answering `MigrateAccepted`
   with its signal URL. A tells the client `leave{MIGRATION, action RESUME, regions=[B]}`; the
   participant's session on A ends, but its published sources stay open ("handed over"), so
   subscribers on both nodes never lose their source.
3. The client resumes on B (`/rtc?reconnect=1&sid=…`): B creates the participant from the sync
   state (same sid and track sids), rebuilds its m-lines (same mids, SSRCs, rewrite state), and its
   subscriptions resolve — to remote sources for tracks still published on A.
4. The client's media reaches B: B publishes a local source under the same track id, queued
   behind the remote copy in the FIFO, and tells A (`TrackMigrated`). A closes its handed-over
   source expecting a resume and says so (`TrackClosing`); B closes its remote copy with that flag,
   which caches every subscriber's m-line before the copy leaves the FIFO; only then does the local
   source resolve, and subscribers rebind on their cached m-lines with continuous numbering.

`migrate()` is cancellable at any step: A sends `MigrateCancel`, and both sides close what the
participant left without resume. A pending migration nobody resumes within `resume_timeout`, and a
handed-over track whose new source never appears within `handover_timeout`, are cancelled the same
way. Every relay message is checked; a bad one is rejected with a logged reason and counted
(`relay_rejected_total`), never raised out of the relay's tasks.

The two closes of step 4 — the old node's handed-over source, the new node's remote copy — go
open → closing → closed in steps, and `seam` (trio_sfu.tracks.seams) is awaited between them
("local.closing"; "remote.closing", "remote.cleared"), as at the migration's own steps
("migrate.detached", "migrate.accepted"). In production the seam returns at once without a
checkpoint, so each close is as atomic as one synchronous call; the race tests hold and delay the
real relay there to show the track manager's rules keep every interleaving safe.
"""

from __future__ import annotations

import collections
import math
from typing import TYPE_CHECKING, Callable, Optional, Protocol
from urllib.parse import urlsplit

import attrs
import trio
from google.protobuf.message import DecodeError
from livekit.protocol import models, rtc

from proto import relay_pb2 as pb
from rtp import rtcp
from rtp.errors import ParseError
from rtp.header_extensions import audio_level_in
from sdp.codecs import EXT_AUDIO_LEVEL, MediaKind

from trio_sfu import metrics as m
from trio_sfu.log import get_logger
from trio_sfu.cluster.link import RelayLink, serve_link
from trio_sfu.cluster.relay_protocol import RelayTap, TrackSpec, migrated_transceivers, sdp_safe_id, snapshot_to_proto
from trio_sfu.forwarding.receiver import ReceiverState, TrackReceiver
from trio_sfu.media.data_channels import DataKind, deliver_to_peers, destinations
from trio_sfu.media.speakers import AudioLevelMeter
from trio_sfu.media.timers import TimerLoop
from trio_sfu.tracks.seams import Seam, no_seam
from trio_sfu.tracks.source import TrackSource
from trio_sfu.tracks.subscriber import MigratedTransceiver

if TYPE_CHECKING:
    from trio_sfu.media.handoff import MigrationSync
    from trio_sfu.media.room_media import PublishedTrack, RoomMedia
    from trio_sfu.media.service import MediaService
    from trio_sfu.signal.rooms import RoomRegistry

_log = get_logger("trio_sfu.cluster.node_relay")

RELAY_REJECTED = "relay_rejected_total"
RELAY_HANDLER_FAILED = "relay_handler_failed_total"
RELAY_RTP_UNKNOWN = "relay_rtp_unknown_total"
RELAY_RTP_DROPPED = "relay_rtp_dropped_total"  # a relayed packet the remote copy refused
RELAY_SUBSCRIBE_UNKNOWN = "relay_subscribe_unknown_total"  # for a track not published here (a race)
RELAY_SUBSCRIBES_SENT = "relay_subscribes_sent_total"
RELAY_RESENT = "relay_rtp_resent_total"
RELAY_RR_RECEIVED = "relay_rr_received_total"
RELAY_SR_RECEIVED = "relay_sr_received_total"
MIGRATIONS_OUT = "migrations_out_total"
MIGRATIONS_IN = "migrations_in_total"
MIGRATIONS_FAILED = "migrations_failed_total"

#: How long the old node keeps a migrated participant's tracks waiting for their new source
#: (LiveKit caps the wait for migrated tracks at 15 s too).
HANDOVER_TIMEOUT = 15.0
#: How long the new node keeps an accepted migration waiting for the client to resume there.
RESUME_TIMEOUT = 20.0
#: How long the old node waits for the new one to accept.
ACCEPT_TIMEOUT = 10.0
#: How long the old node forwards a moved participant's resumes to its new node.
MOVED_TTL = 60.0
#: How often a remote copy's wanted layers are sent again although unchanged (a RelaySubscribe
#: the link dropped, or a link established again, must not leave a track stopped for good).
DEMAND_REFRESH = 2.0
#: At most this many layers in one RelaySubscribe.
MAX_SUBSCRIBED_LAYERS = 8


class _RemoteDemand:
    """A remote copy's `LayerDemandListener`: asks the publishing node for the layers the copy's
    down tracks want, whenever they change."""

    def __init__(self, relay: "NodeRelay", key: tuple[str, str, str]) -> None:
        self.relay = relay
        self.key = key
        self.sent: frozenset[int] = frozenset()

    def layer_demand_changed(self, receiver: TrackReceiver) -> None:
        if receiver.state is not ReceiverState.OPEN:
            return  # closing: the copy's end (or the publisher's TrackClosing) settles it
        wanted = receiver.wanted_layers()
        if wanted != self.sent:
            self.send(wanted)

    def send(self, layers: frozenset[int]) -> None:
        room, peer, track_id = self.key
        self.sent = layers
        self.relay.metrics.inc(RELAY_SUBSCRIBES_SENT)
        self.relay._send(peer, pb.RelayMessage(subscribe=pb.RelaySubscribe(
            room=room, track_id=track_id, layers=sorted(layers))))


class _RemoteCopies:
    """The remote copies' timers as one `Timed` part: each copy's receiver NACKs what the link
    lost and sends its receiver reports; the demands are refreshed."""

    def __init__(self, relay: "NodeRelay") -> None:
        self.relay = relay
        self.next_refresh = 0.0

    def next_deadline(self) -> Optional[float]:
        deadline = self.next_refresh
        for _, source in self.relay._remote.values():
            t = source.receiver.next_deadline()
            if t is not None and t < deadline:
                deadline = t
        return deadline

    def handle_timeout(self, now: float) -> None:
        relay = self.relay
        for _, source in list(relay._remote.values()):
            source.receiver.poll_rtcp(now)
        if now >= self.next_refresh:
            self.next_refresh = now + DEMAND_REFRESH
            for demand in list(relay._demand.values()):
                if demand.sent:
                    demand.send(demand.sent)


class ArrivalObserver(Protocol):
    def arriving(self, room: str, identity: str, sid: str) -> None:
        """A migration in was accepted: the participant resumes here (soon)."""

    def not_arriving(self, room: str, identity: str, sid: str) -> None:
        """An accepted migration in ended without the participant resuming here."""


@attrs.define
class MigrationIn:
    """A participant handed to this node, waiting for its client to resume here."""

    room: str
    peer: str
    info: models.ParticipantInfo
    track_by_cid: dict[str, str]
    subscriptions: list[str]
    transceivers: list[MigratedTransceiver]
    kinds: dict[str, MediaKind]
    published: dict[str, TrackSpec]
    auto_subscribe: bool
    deadline: float
    explicit_subscriptions: dict[str, bool] = attrs.field(factory=dict)
    # Publisher SSRC -> (mid, layer, is RTX), as the old node learned them.
    publisher_streams: dict[int, tuple[str, int, bool]] = attrs.field(factory=dict)
    # The subscriber PC's m-lines on the old node ((mid, kind, live) in order) and its next mid.
    layout: Optional[tuple[list[tuple[str, MediaKind, bool]], int]] = None


@attrs.define
class _MigrationOut:
    peer: str
    done: trio.Event = attrs.field(factory=trio.Event)
    accepted: Optional[bool] = None
    reason: str = ""
    signal_url: str = ""
    resumed: trio.Event = attrs.field(factory=trio.Event)
    tracks_left: set[str] = attrs.field(factory=set)
    tracks_done: trio.Event = attrs.field(factory=trio.Event)


@attrs.define
class _HandedOver:
    room_media: "RoomMedia"
    track: "PublishedTrack"
    participant_sid: str
    deadline: float


def _host_port(url: str) -> Optional[tuple[str, int]]:
    """(host, port) of a ws:// or http:// base URL; None if it names none."""
    parsed = urlsplit(url)
    try:
        port = parsed.port or (443 if parsed.scheme in ("wss", "https") else 80)
    except ValueError:
        return None
    return (parsed.hostname, port) if parsed.hostname else None


MAX_SUBSCRIBER_LINES = 512
MAX_PUBLISHER_STREAMS = 256


def _layout(body: pb.MigrateParticipant) -> Optional[tuple[list[tuple[str, MediaKind, bool]], int]] | str:
    """The sync state's subscriber m-line layout (None if it sent none), or why it is unusable."""
    if not body.lines:
        return None
    if len(body.lines) > MAX_SUBSCRIBER_LINES:
        return "too many subscriber m-lines"
    lines: list[tuple[str, MediaKind, bool]] = []
    for line in body.lines:
        try:
            kind = MediaKind(line.kind)
        except ValueError:
            return f"subscriber m-line of unknown kind {line.kind!r}"
        lines.append((line.mid, kind, line.live))
    mids = [mid for mid, _, _ in lines]
    if "" in mids or len(set(mids)) != len(mids):
        return "subscriber m-lines with empty or repeated mids"
    by_mid = {mid: (kind, live) for mid, kind, live in lines}
    for t in body.transceivers:
        if by_mid.get(t.mid) != (MediaKind(t.kind), True):
            return f"transceiver for {t.track_id} is not a live m-line of the layout"
    return lines, body.next_mid


class NodeRelay:
    def __init__(self, node_id: str, media: "MediaService", registry: "RoomRegistry", metrics: m.Metrics,
                 signal_url: Callable[[], str]) -> None:
        self.node_id = node_id
        self.media = media
        self.registry = registry
        self.metrics = metrics
        self._signal_url = signal_url
        self.handover_timeout = HANDOVER_TIMEOUT
        self.resume_timeout = RESUME_TIMEOUT
        self.accept_timeout = ACCEPT_TIMEOUT
        self.links: dict[str, RelayLink] = {}
        # The latest rejection reasons (bounded: a misbehaving peer must not grow memory); all
        # of them are counted in RELAY_REJECTED.
        self.rejections: collections.deque[str] = collections.deque(maxlen=256)
        # Tracks peers announced, by room name: (peer, track id) -> spec. Kept while the room is
        # not hosted here; materialized as remote sources while it has participants here.
        self._announced: dict[str, dict[tuple[str, str], TrackSpec]] = {}
        self._remote: dict[tuple[str, str, str], tuple["RoomMedia", TrackSource]] = {}
        # Relayed audio with levels: its meter (in the room's reports) and the level's extension id.
        self._remote_meters: dict[tuple[str, str, str], tuple[AudioLevelMeter, int]] = {}
        # What each remote copy asked its publishing node for (same keys as _remote).
        self._demand: dict[tuple[str, str, str], _RemoteDemand] = {}
        self._remote_copies = _RemoteCopies(self)
        self._remote_timers = TimerLoop(at_least_every=DEMAND_REFRESH)
        self._local: dict[tuple[str, str], tuple["RoomMedia", TrackSource, list[RelayTap]]] = {}
        self._handed_over: dict[tuple[str, str], _HandedOver] = {}
        self._pending_in: dict[tuple[str, str], MigrationIn] = {}
        # Told of each accepted migration in and of its end without a resume (the cluster
        # directory points a resume that reaches another node here meanwhile).
        self.arrivals: Optional[ArrivalObserver] = None
        self._arriving: dict[tuple[str, str], str] = {}  # (room, track id) -> old node
        self._out: dict[tuple[str, str], _MigrationOut] = {}
        # Participants that moved away: (room, sid) -> (host, port) of their node, until the
        # deadline; a client resuming here is forwarded there.
        self._moved: dict[tuple[str, str], tuple[tuple[str, int], float]] = {}
        # The room's participants on other nodes, as their nodes last described them.
        self._remote_participants: dict[str, dict[str, models.ParticipantInfo]] = {}
        # (room, sid) -> the peer that last described that remote participant (it leaves with
        # that peer's link).
        self._participant_node: dict[tuple[str, str], str] = {}
        self.moved_ttl = MOVED_TTL
        self._nursery: Optional[trio.Nursery] = None
        self._deadlines_moved = trio.Event()
        self.seam: Seam = no_seam
        self.log = _log.bind(node=node_id)

    # ---- lifetime -------------------------------------------------------------------------

    def add_link(self, link: RelayLink) -> None:
        """Serve a (new) link to its peer. A link it replaces ends first, with everything learned
        over it (`link_lost`); the peer then learns what is published here and who is here, as a
        peer does on its first link."""
        peer = link.peer_node_id
        old = self.links.get(peer)
        if old is not None and old is not link:
            self.link_lost(old)
        self.links[peer] = link
        if self._nursery is not None:
            self._nursery.start_soon(self._serve_link, link)
        # Tracks first, so that a participant's tracks have their sources by the time the
        # peer's clients hear of the participant and subscribe.
        for (room, _), (_, source, taps) in list(self._local.items()):
            self._announce(link, room, source, taps)
        for room in list(self.registry.rooms.values()):
            for participant in list(room.participants.values()):
                if participant.announced and not participant.hidden:
                    link.send(pb.RelayMessage(participant_changed=pb.ParticipantChanged(
                        room=room.name, participant_info=participant.to_info().SerializeToString())))

    def link_lost(self, link: RelayLink) -> None:
        """`link` ended (its peer closed it or died, it broke, it was replaced): everything learned
        from the peer over it goes, as if the peer had closed each thing without resume. Its
        remote copies close (subscribers see the tracks unpublished), its announcements are
        forgotten, its participants leave the room as seen from here, the taps feeding it come
        off the local receivers, and migrations to or from it are cancelled. Idempotent; a link
        already replaced by a newer one to the same peer changes nothing."""
        peer = link.peer_node_id
        link.close()
        if self.links.get(peer) is not link:
            return
        del self.links[peer]
        self.log.warning("relay link lost", kv={"peer": peer})
        self._stop_relaying_on(link)
        for key in [k for k in self._remote if k[1] == peer]:
            # Not withdrawn for good: the peer re-announces the track when it links again.
            self._close_remote(key, expected_to_resume=False, withdraw=False)
        for room in list(self._announced):
            announced = self._announced[room]
            for key in [k for k in announced if k[0] == peer]:
                del announced[key]
            if not announced:
                del self._announced[room]
        self._forget_participants_of(peer)
        for key in [k for k, pending in self._pending_in.items() if pending.peer == peer]:
            self._not_arriving(self._pending_in.pop(key))
        for key in [k for k, old_node in self._arriving.items() if old_node == peer]:
            del self._arriving[key]
        for (room, sid), out in list(self._out.items()):
            if out.peer == peer:
                # migrate() wakes, fails, and releases what it handed over (see its finally).
                out.reason = out.reason or "relay link lost"
                out.done.set()
                out.resumed.set()
                out.tracks_done.set()
        self._deadlines_moved.set()

    def _forget_participants_of(self, peer: str) -> None:
        """The peer's participants leave this node's view of each room: the local participants
        hear them DISCONNECTED, as when one leaves on its node."""
        rooms: dict[str, None] = {}
        for (room_name, sid), node in list(self._participant_node.items()):
            if node != peer:
                continue
            del self._participant_node[(room_name, sid)]
            known = self._remote_participants.get(room_name, {})
            info = known.pop(sid, None)
            if not known:
                self._remote_participants.pop(room_name, None)
            room = self.registry.rooms.get(room_name)
            if info is not None and room is not None:
                gone = models.ParticipantInfo()
                gone.CopyFrom(info)
                gone.state = models.ParticipantInfo.State.DISCONNECTED
                room.send_remote_participant(gone)
            rooms[room_name] = None
        for room_name in rooms:
            self._presence_changed(room_name)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for link in self.links.values():
                    nursery.start_soon(self._serve_link, link)
                nursery.start_soon(self._remote_timers.run, [self._remote_copies])
                task_status.started()
                await self._expire_forever()
        finally:
            self._nursery = None
            self.close()

    def close(self) -> None:
        """Close every remote copy and handed-over track without resume, drop pending
        migrations, close the links (idempotent)."""
        for key in list(self._handed_over):
            self._release_handed_over(key, expected_to_resume=False)
        for key in list(self._remote):
            self._close_remote(key, expected_to_resume=False)
        for pending in list(self._pending_in.values()):
            self._not_arriving(pending)
        self._pending_in.clear()
        self._arriving.clear()
        self._remote_participants.clear()
        self._participant_node.clear()
        self._moved.clear()
        for link in self.links.values():
            link.close()
        self.links.clear()

    def _reject(self, reason: str, **kv: object) -> None:
        self.rejections.append(reason)
        self.metrics.inc(RELAY_REJECTED)
        self.log.warning("relay message rejected", kv={"reason": reason, **kv})

    def _send(self, peer: str, message: pb.RelayMessage) -> None:
        link = self.links.get(peer)
        if link is not None:
            link.send(message)

    def _broadcast(self, message: pb.RelayMessage) -> None:
        for link in self.links.values():
            link.send(message)

    # ---- local sources (RoomMedia calls these) --------------------------------------------

    def local_published(self, room_media: "RoomMedia", source: TrackSource) -> None:
        room = room_media.name
        taps: list[RelayTap] = []
        previous = self._local.get((room, source.track_id))
        self._local[(room, source.track_id)] = (room_media, source, taps)
        for link in self.links.values():
            self._announce(link, room, source, taps)
        if previous is not None:
            # A new source for a track still relayed (its publisher came back): the peers'
            # copies keep theirs, so what they asked for carries over at once.
            now = trio.current_time()
            for old in previous[2]:
                wanted = old.requested
                old.detach()
                tap = self._tap(taps, old.link.peer_node_id)
                if tap is not None and wanted:
                    tap.request(wanted, now)
        old_node = self._arriving.pop((room, source.track_id), None)
        if old_node is not None:
            # A migrated participant's own media reached us: the old node may let its copy go.
            self._send(old_node, pb.RelayMessage(track_migrated=pb.TrackMigrated(room=room, track_id=source.track_id)))

    def _announce(self, link: RelayLink, room: str, source: TrackSource, taps: list[RelayTap]) -> None:
        # The tap joins the receiver only once the peer subscribes (RelaySubscribe).
        taps.append(RelayTap(link, room, source.track_id, source.receiver))
        spec = TrackSpec.from_source(source)
        link.send(pb.RelayMessage(track_published=pb.TrackPublished(room=room, track=spec.to_proto())))

    def _stop_relaying_on(self, link: RelayLink) -> None:
        """`link` is gone (for the link's lifecycle to call when it loses one): its taps leave
        their receivers. The peer's remote copies ask again over the link that replaces it (they
        refresh their demand every DEMAND_REFRESH seconds)."""
        for _, _, taps in self._local.values():
            for tap in [tap for tap in taps if tap.link is link]:
                tap.detach()
                taps.remove(tap)

    def local_closing(self, room_media: "RoomMedia", source: TrackSource, expected_to_resume: bool) -> None:
        room = room_media.name
        entry = self._local.get((room, source.track_id))
        if entry is None or entry[1] is not source:
            return
        del self._local[(room, source.track_id)]
        for tap in entry[2]:
            tap.detach()
        self._broadcast(pb.RelayMessage(track_closing=pb.TrackClosing(
            room=room, track_id=source.track_id, expected_to_resume=expected_to_resume)))

    # ---- data packets ----------------------------------------------------------------------

    def data_published(self, room_media: "RoomMedia", kind: int, packet: bytes) -> None:
        self._broadcast(pb.RelayMessage(data=pb.RelayData(room=room_media.name, kind=kind, packet=packet)))

    def _on_data(self, peer: str, body: pb.RelayData) -> None:
        room_media = self.media.room_by_name(body.room)
        if room_media is None or not room_media.sessions:
            return  # nobody of that room here
        try:
            kind = DataKind(body.kind)
            packet = models.DataPacket.FromString(body.packet)
        except (ValueError, DecodeError):
            self._reject("unusable relayed data packet", peer=peer, room=body.room)
            return
        identities, sids = destinations(packet)
        peers = [member.data for member in list(room_media.sessions.values())]
        deliver_to_peers(peers, kind, body.packet, identities, sids, trio.current_time(), self.metrics)

    # ---- presence: who is in the room on the other nodes ------------------------------------

    def participant_changed(self, room: str, info: models.ParticipantInfo) -> None:
        """One of our participants joined, changed or left (Room.broadcast_participant)."""
        known = self._remote_participants.get(room)
        if known is not None and known.pop(info.sid, None) is not None and not known:
            del self._remote_participants[room]  # it was on another node before it migrated here
        self._participant_node.pop((room, info.sid), None)
        data = info.SerializeToString()
        self._broadcast(pb.RelayMessage(participant_changed=pb.ParticipantChanged(room=room, participant_info=data)))

    def remote_participants(self, room: str) -> list[models.ParticipantInfo]:
        return list(self._remote_participants.get(room, {}).values())

    def remote_track_info(self, room_media: "RoomMedia", track_id: str) -> Optional[models.TrackInfo]:
        for info in self._remote_participants.get(room_media.name, {}).values():
            for track in info.tracks:
                if track.sid == track_id:
                    return track
        return None

    def _on_participant_changed(self, peer: str, body: pb.ParticipantChanged) -> None:
        info = models.ParticipantInfo()
        try:
            info.ParseFromString(body.participant_info)
        except DecodeError:
            self._reject("unparsable participant info", peer=peer, room=body.room)
            return
        if not body.room or not info.sid or not info.identity:
            self._reject("participant_changed without room, sid or identity", peer=peer, room=body.room)
            return
        room = self.registry.rooms.get(body.room)
        if room is not None and any(p.sid == info.sid for p in room.participants.values()):
            return  # ours now (it migrated here): we describe it ourselves
        known = self._remote_participants.setdefault(body.room, {})
        previous = known.get(info.sid)
        if previous is not None and info.version < previous.version:
            return  # an older description overtaken by a newer one
        if info.state == models.ParticipantInfo.State.DISCONNECTED:
            known.pop(info.sid, None)
            self._participant_node.pop((body.room, info.sid), None)
            if not known:
                del self._remote_participants[body.room]
        else:
            known[info.sid] = info
            self._participant_node[(body.room, info.sid)] = peer
        if room is not None:
            room.send_remote_participant(info)
        self._presence_changed(body.room)

    def _presence_changed(self, room_name: str) -> None:
        """Which tracks the room's remote participants list changed: subscribers here re-decide
        (an m-line held for a track nobody lists any more is let go)."""
        room_media = self.media.room_by_name(room_name)
        if room_media is not None:
            room_media.update_desired()

    # ---- remote sources --------------------------------------------------------------------

    def room_opened(self, room_media: "RoomMedia") -> None:
        """The room has its first participant here: offer the peers' tracks as remote sources."""
        for (peer, _), spec in list(self._announced.get(room_media.name, {}).items()):
            self._materialize(room_media, peer, spec)
        room_media.update_desired()

    def room_emptied(self, room_media: "RoomMedia") -> None:
        """No participant left here: remote copies have nobody to serve."""
        room = room_media.name
        for key, (owner, _) in list(self._remote.items()):
            if key[0] == room and owner is room_media:
                self._close_remote(key, expected_to_resume=False)

    def _materialize(self, room_media: "RoomMedia", peer: str, spec: TrackSpec) -> None:
        room = room_media.name
        key = (room, peer, spec.track_id)
        if key in self._remote:
            return  # announced again: the same source; adding it twice is a no-op

        def send_rtcp(packet: bytes, track_id: str = spec.track_id) -> bool:
            link = self.links.get(peer)
            return link is not None and link.send(pb.RelayMessage(rtcp=pb.RelayRtcp(room=room, track_id=track_id, packet=packet)))

        source = spec.remote_source(peer, send_rtcp, cname=self.node_id, now=trio.current_time(),
                                    resume_policy=self.media.resume_policy())
        demand = self._demand[key] = _RemoteDemand(self, key)
        source.receiver.demand_listener = demand
        self._remote[key] = (room_media, source)
        self._meter_remote_audio(room_media, key, spec, source)
        room_media.track_manager.add(source)

    def _meter_remote_audio(self, room_media: "RoomMedia", key: tuple[str, str, str], spec: TrackSpec,
                            source: TrackSource) -> None:
        """Relayed audio whose packets carry RFC 6464 levels: the room's reports get a meter for it
        (active speakers on other nodes reach the members here who receive them)."""
        ext_id = next((ext_id for ext_id, uri in spec.extensions if uri == EXT_AUDIO_LEVEL), None)
        if spec.kind is not MediaKind.AUDIO or ext_id is None:
            return

        def muted(track_id: str = spec.track_id) -> bool:
            info = self.remote_track_info(room_media, track_id)
            return info is not None and info.muted

        meter = room_media.reports.meter_remote_track(key, spec.publisher_id, source.receiver.clock_rate, muted)
        self._remote_meters[key] = (meter, ext_id)

    def _observe_audio_level(self, metered: tuple[AudioLevelMeter, int], packet: bytes, now: float) -> None:
        meter, ext_id = metered
        try:
            level = audio_level_in(packet, ext_id)
        except ParseError:
            self.metrics.inc(m.MEDIA_AUDIO_LEVEL_MALFORMED)
            return
        if level is not None:
            meter.observe(level, int.from_bytes(packet[4:8], "big"), now)

    def _forget_remote_meter(self, room_media: "RoomMedia", key: tuple[str, str, str]) -> None:
        if self._remote_meters.pop(key, None) is not None:
            room_media.reports.forget_remote_track(key)

    def _close_remote(self, key: tuple[str, str, str], expected_to_resume: bool, withdraw: bool = True) -> None:
        """Close a remote copy at once (the room emptied, the relay stops, the link was lost)."""
        entry = self._remote.pop(key, None)
        if entry is None:
            return
        demand = self._demand.pop(key, None)
        if demand is not None and demand.sent:
            demand.send(frozenset())  # the publishing node stops relaying it
        room_media, source = entry
        self._forget_remote_meter(room_media, key)
        source.close_now(expected_to_resume)
        self._remote_closed(room_media, source, expected_to_resume, withdraw)

    async def _close_remote_in_steps(self, key: tuple[str, str, str], expected_to_resume: bool) -> None:
        """The peer closes the track (TrackClosing): begin closing, fixing the flag (nothing
        resolves to the copy from now on), detach every subscriber (caching its m-line where a
        resume is expected), close: the copy leaves the FIFO only after all of that, so a source
        queued behind it resolves only once every subscriber's m-line is cached."""
        entry = self._remote.pop(key, None)
        if entry is None:
            return
        self._demand.pop(key, None)  # the publishing node stopped relaying it already
        room_media, source = entry
        self._forget_remote_meter(room_media, key)
        context = {"node": self.node_id, "room": key[0], "track": key[2]}
        source.begin_closing(expected_to_resume)
        try:
            await self.seam("remote.closing", context)
            source.clear_subscribers(expected_to_resume)
            await self.seam("remote.cleared", context)
        finally:
            # Cancelled or not, a closing copy ends closed, unsubscribed and out of the FIFO.
            source.close()
            self._remote_closed(room_media, source, expected_to_resume)

    def _remote_closed(self, room_media: "RoomMedia", source: TrackSource, expected_to_resume: bool,
                       withdraw: bool = True) -> None:
        if withdraw and not expected_to_resume and not room_media.track_manager.sources(source.track_id):
            room_media.withdrawn.add(source.track_id)
        room_media.update_desired()
        room_media.forget_if_idle()

    # ---- handed-over tracks (the old node's side of a migration) ---------------------------

    def hand_over(self, room_media: "RoomMedia", tracks: list["PublishedTrack"], participant_sid: str) -> list["PublishedTrack"]:
        """Keep a departing participant's published tracks open until their new source appears
        on the node it moved to; returns the tracks not handed over (to unpublish now)."""
        room = room_media.name
        migration = self._out.get((room, participant_sid))
        if migration is None or not migration.accepted:
            return tracks
        deadline = trio.current_time() + self.handover_timeout
        for track in tracks:
            self._handed_over[(room, track.sid)] = _HandedOver(room_media, track, participant_sid, deadline)
        self._deadlines_moved.set()
        return []

    def _release_handed_over(self, key: tuple[str, str], expected_to_resume: bool) -> None:
        entry = self._handed_over.pop(key, None)
        if entry is None:
            return
        self._handed_over_released(key, entry, expected_to_resume)

    async def _hand_back(self, key: tuple[str, str]) -> None:
        """The track's new source runs on the node its publisher moved to (TrackMigrated): our
        copy begins closing expecting a resume and the peers hear so at once (TrackClosing);
        then every subscriber here caches its m-line and the copy closes."""
        entry = self._handed_over.pop(key, None)
        if entry is None:
            return
        source = entry.track.source
        if source is not None:
            source.begin_closing(True)
            self.local_closing(entry.room_media, source, True)
        try:
            await self.seam("local.closing", {"node": self.node_id, "room": key[0], "track": key[1]})
        finally:
            self._handed_over_released(key, entry, True)

    def _handed_over_released(self, key: tuple[str, str], entry: _HandedOver, expected_to_resume: bool) -> None:
        entry.room_media.unpublish([entry.track], expected_to_resume=expected_to_resume)
        entry.room_media.forget_if_idle()
        migration = self._out.get((key[0], entry.participant_sid))
        if migration is not None:
            migration.tracks_left.discard(entry.track.sid)
            if not migration.tracks_left:
                migration.tracks_done.set()

    # ---- migration out ---------------------------------------------------------------------

    async def migrate(self, room_name: str, participant_sid: str, to_node: str) -> bool:
        """Move a participant to `to_node`; True once it runs there and each of its published
        tracks has its new source there. Cancellable: then nothing of it stays on either node."""
        link = self.links.get(to_node)
        room = self.registry.rooms.get(room_name)
        participant = next((p for p in room.participants.values() if p.sid == participant_sid), None) if room else None
        session = self.media.participant_media(room_name, participant_sid)
        key = (room_name, participant_sid)
        if link is None or participant is None or session is None or key in self._out:
            self._reject("migration of an unknown participant", room=room_name, participant=participant_sid, to=to_node)
            return False
        out = self._out[key] = _MigrationOut(to_node)
        ok = sent = False
        try:
            sync: MigrationSync = session.begin_migration()
            out.tracks_left = {t.sid for t in sync.published}
            state = pb.MigrateParticipant(
                room=room_name, participant_id=participant_sid, subscriptions=sync.subscriptions,
                published=[TrackSpec.from_source(t.source).to_proto() for t in sync.published if t.source],
                participant_info=participant.to_info().SerializeToString(),
                track_by_cid=dict(participant.track_by_cid), auto_subscribe=session.context.auto_subscribe,
                lines=[pb.SubscriberLine(mid=mid, kind=kind.value, live=live) for mid, kind, live in sync.lines],
                next_mid=sync.next_mid, explicit_subscriptions=dict(participant.subscriptions),
                publisher_streams=[pb.PublisherStream(track_id=t, mid=mid, ssrc=ssrc, layer=layer, rtx=rtx)
                                   for t, mid, ssrc, layer, rtx in sync.publisher_streams])
            for entry in sync.transceivers:
                st = pb.SubscribedTransceiver(track_id=entry.track_id, mid=entry.mid, ssrc=entry.ssrc or 0,
                                              rtx_ssrc=entry.rtx_ssrc or 0, kind=sync.kinds[entry.track_id].value,
                                              stream_id=entry.stream_id or "")
                if entry.snapshot is not None:
                    st.down.CopyFrom(snapshot_to_proto(entry.snapshot))
                state.transceivers.append(st)
            self.metrics.inc(MIGRATIONS_OUT)
            self.log.info("migrating participant", kv={"room": room_name, "participant": participant_sid, "to": to_node,
                                                       "tracks": len(sync.published), "subscriptions": len(sync.subscriptions)})
            await self.seam("migrate.detached", {"node": self.node_id, "room": room_name, "participant": participant_sid})
            sent = link.send(pb.RelayMessage(migrate=state))
            with trio.move_on_after(self.accept_timeout):
                await out.done.wait()
            if not out.accepted:
                self.log.warning("migration refused", kv={"participant": participant_sid, "reason": out.reason or "no answer"})
                return False
            await self.seam("migrate.accepted", {"node": self.node_id, "room": room_name, "participant": participant_sid})
            if out.reason or self.links.get(to_node) is not link:
                # The link to the new node died after it accepted: the client must not be sent
                # there to resume (the finally tells it to rejoin instead).
                out.reason = out.reason or "relay link lost"
                return False
            # The client resumes there; its session here ends, its tracks wait for their new source.
            target = _host_port(out.signal_url)
            if target is not None:
                now = trio.current_time()
                self._moved = {k: v for k, v in self._moved.items() if v[1] > now}
                self._moved[key] = (target, now + self.moved_ttl)
            regions = rtc.RegionSettings(regions=[rtc.RegionInfo(region=to_node, url=out.signal_url)])
            participant.close(models.DisconnectReason.MIGRATION, action=rtc.LeaveRequest.Action.RESUME, regions=regions)
            with trio.move_on_after(self.resume_timeout + self.accept_timeout):
                await out.resumed.wait()  # the new node saw the client (or gave up on it)
            if not out.resumed.is_set() or out.reason:
                return False
            if out.tracks_left:
                await out.tracks_done.wait()  # TrackMigrated for each, or the hand-over timeout
            ok = not out.tracks_left and not out.reason
            return ok
        finally:
            del self._out[key]
            if not ok:
                self._moved.pop(key, None)
                self.metrics.inc(MIGRATIONS_FAILED)
                if sent and out.accepted is not False:
                    # The new node may hold (or be about to hold) the sync state: it lets go too.
                    self._send(to_node, pb.RelayMessage(migrate_cancel=pb.MigrateCancel(room=room_name, participant_id=participant_sid)))
                # Whatever is left here ends without resume; the client must rejoin.
                for hkey, entry in list(self._handed_over.items()):
                    if entry.participant_sid == participant_sid and hkey[0] == room_name:
                        self._release_handed_over(hkey, expected_to_resume=False)
                participant.close(models.DisconnectReason.MIGRATION, action=rtc.LeaveRequest.Action.RECONNECT)

    def moved_to(self, room_name: str, participant_sid: str) -> Optional[tuple[str, int]]:
        """Where a participant that moved away from here now runs, while we still remember."""
        entry = self._moved.get((room_name, participant_sid))
        if entry is None:
            return None
        if entry[1] <= trio.current_time():
            del self._moved[(room_name, participant_sid)]
            return None
        return entry[0]

    # ---- migration in ----------------------------------------------------------------------

    def take_migration(self, room_name: str, participant_sid: str, identity: str) -> Optional[MigrationIn]:
        """The pending migration a resuming client claims (same room, sid and identity)."""
        pending = self._pending_in.get((room_name, participant_sid))
        if pending is None or pending.info.identity != identity:
            return None
        del self._pending_in[(room_name, participant_sid)]
        for track_id in pending.published:
            self._arriving[(room_name, track_id)] = pending.peer
        self.metrics.inc(MIGRATIONS_IN)
        self._send(pending.peer, pb.RelayMessage(migrate_resumed=pb.MigrateResumed(
            room=room_name, participant_id=participant_sid)))
        return pending

    def _on_migrate(self, peer: str, body: pb.MigrateParticipant) -> str:
        """Check a sync state and keep it for the client's resume; a non-empty reason refuses."""
        sid = body.participant_id
        if not body.room or not sdp_safe_id(sid):
            return "no room or participant id"
        info = models.ParticipantInfo()
        try:
            info.ParseFromString(body.participant_info)
        except DecodeError:
            return "unparsable participant info"
        if info.sid != sid or not info.identity:
            return "participant info does not match"
        room = self.registry.rooms.get(body.room)
        if (body.room, sid) in self._pending_in or (room is not None and (
                info.identity in room.participants or any(p.sid == sid for p in room.participants.values()))):
            return "participant already present"
        announced = self._announced.get(body.room, {})
        known = {tid for (_, tid) in announced} | {tid for (r, tid) in self._local if r == body.room}
        for track_id in body.subscriptions:
            if track_id not in known:
                return f"subscription to unknown track {track_id}"
        published: dict[str, TrackSpec] = {}
        track_sids = {t.sid for t in info.tracks}
        for d in body.published:
            spec = TrackSpec.from_proto(d)
            if spec is None or spec.publisher_id != sid or spec.track_id not in track_sids:
                return f"unusable published track {d.track_id}"
            if (peer, spec.track_id) not in announced:
                return f"published track {spec.track_id} unknown here"
            published[spec.track_id] = spec
        parsed = migrated_transceivers(body)
        if isinstance(parsed, str):
            return parsed
        entries, kinds = parsed
        layout = _layout(body)
        if isinstance(layout, str):
            return layout
        if len(body.publisher_streams) > MAX_PUBLISHER_STREAMS:
            return "too many publisher streams"
        streams: dict[int, tuple[str, int, bool]] = {}
        for stream in body.publisher_streams:
            if stream.track_id not in published or not stream.mid or stream.ssrc == 0 or stream.layer > 7:
                return f"unusable publisher stream {stream.ssrc} of {stream.track_id}"
            streams[stream.ssrc] = (stream.mid, stream.layer, stream.rtx)
        self._pending_in[(body.room, sid)] = MigrationIn(
            body.room, peer, info, dict(body.track_by_cid), list(body.subscriptions), entries, kinds, published,
            body.auto_subscribe, trio.current_time() + self.resume_timeout, dict(body.explicit_subscriptions),
            streams, layout)
        self._deadlines_moved.set()
        if self.arrivals is not None:
            self.arrivals.arriving(body.room, info.identity, sid)
        return ""

    def _not_arriving(self, pending: MigrationIn) -> None:
        if self.arrivals is not None:
            self.arrivals.not_arriving(pending.room, pending.info.identity, pending.info.sid)

    def abandon(self, migration: MigrationIn) -> None:
        """The resumed participant could not be created here: the old node lets go too."""
        self._not_arriving(migration)
        for track_id in migration.published:
            self._arriving.pop((migration.room, track_id), None)
        self._send(migration.peer, pb.RelayMessage(migrate_cancel=pb.MigrateCancel(
            room=migration.room, participant_id=migration.info.sid)))

    # ---- timers ----------------------------------------------------------------------------

    async def _expire_forever(self) -> None:
        while True:
            self._deadlines_moved = trio.Event()
            deadline = min([h.deadline for h in self._handed_over.values()]
                           + [p.deadline for p in self._pending_in.values()], default=math.inf)
            with trio.move_on_at(deadline):
                await self._deadlines_moved.wait()
            now = trio.current_time()
            for key, entry in list(self._handed_over.items()):
                if entry.deadline <= now:
                    self.log.warning("migrated track never reached the new node", kv={"room": key[0], "track": key[1]})
                    migration = self._out.get((key[0], entry.participant_sid))
                    if migration is not None:
                        migration.reason = "hand-over timed out"
                    self._release_handed_over(key, expected_to_resume=False)
            for key, pending in list(self._pending_in.items()):
                if pending.deadline <= now:
                    self.log.warning("migrated participant never resumed here", kv={"room": key[0], "participant": key[1]})
                    del self._pending_in[key]
                    self.abandon(pending)

    # ---- relay messages --------------------------------------------------------------------

    async def _serve_link(self, link: RelayLink) -> None:
        await serve_link(link, self._handle, self._handler_failed)
        # The link ended by itself (not cancelled with the relay): whoever owns it may say so
        # too (the mesh does); link_lost is idempotent.
        self.link_lost(link)

    def _handler_failed(self, reason: str) -> None:
        # A message no check caught broke its handler: a bug of ours, counted apart.
        self.metrics.inc(RELAY_HANDLER_FAILED)
        self._reject(reason)

    async def _handle(self, link: RelayLink, message: pb.RelayMessage) -> None:
        kind = message.WhichOneof("message")
        peer = link.peer_node_id
        if kind is None:
            self._reject("empty relay message", peer=peer)
            return
        body = getattr(message, kind)
        if kind == "rtp":
            key = (body.room, peer, body.track_id)
            entry = self._remote.get(key)
            if entry is None:
                self.metrics.inc(RELAY_RTP_UNKNOWN)
                return
            receiver = entry[1].receiver
            now = trio.current_time()
            if not receiver.receive_layer_rtp(body.layer, body.packet, now, discontinuity=body.discontinuity):
                self.metrics.inc(RELAY_RTP_DROPPED)
                return
            metered = self._remote_meters.get(key)
            if metered is not None:  # relayed audio with levels: its publisher may be speaking
                self._observe_audio_level(metered, body.packet, now)
            # A loss just noticed schedules a NACK sooner than the timer loop would wake.
            self._remote_timers.wake_by(receiver.next_deadline())
        elif kind == "rtcp":
            self._on_rtcp(peer, body)
        elif kind == "subscribe":
            self._on_subscribe(peer, body)
        elif kind == "sender_report":
            self._on_sender_report(peer, body)
        elif kind == "track_published":
            spec = TrackSpec.from_proto(body.track)
            if spec is None or not body.room:
                self._reject("track_published with an unusable description", peer=peer, track=body.track.track_id)
                return
            self._announced.setdefault(body.room, {})[(peer, spec.track_id)] = spec
            room_media = self.media.room_by_name(body.room)
            if room_media is not None and room_media.sessions:
                self._materialize(room_media, peer, spec)
                room_media.update_desired()
        elif kind == "track_closing":
            announced = self._announced.get(body.room, {})
            if announced.pop((peer, body.track_id), None) is None:
                self._reject("track_closing for unknown track", peer=peer, room=body.room, track=body.track_id)
                return
            if not announced:
                self._announced.pop(body.room, None)
            await self._close_remote_in_steps((body.room, peer, body.track_id), body.expected_to_resume)
        elif kind == "migrate":
            reason = self._on_migrate(peer, body)
            if reason:
                self._reject(f"migration rejected: {reason}", peer=peer, participant=body.participant_id)
                link.send(pb.RelayMessage(migrate_rejected=pb.MigrateRejected(
                    room=body.room, participant_id=body.participant_id, reason=reason)))
            else:
                link.send(pb.RelayMessage(migrate_accepted=pb.MigrateAccepted(
                    room=body.room, participant_id=body.participant_id, signal_url=self._signal_url())))
        elif kind in ("migrate_accepted", "migrate_rejected"):
            out = self._out.get((body.room, body.participant_id))
            if out is None or out.accepted is not None or out.peer != peer:
                self._reject(f"{kind} for no pending migration", peer=peer, participant=body.participant_id)
                return
            out.accepted = kind == "migrate_accepted"
            out.reason = getattr(body, "reason", "")
            out.signal_url = getattr(body, "signal_url", "")
            if out.accepted and not out.signal_url:
                out.accepted, out.reason = False, "no signal URL to resume at"
            out.done.set()
        elif kind == "migrate_cancel":
            self._on_migrate_cancel(peer, body)
        elif kind == "migrate_resumed":
            out = self._out.get((body.room, body.participant_id))
            if out is None or not out.accepted or out.peer != peer:
                self._reject("migrate_resumed for no accepted migration", peer=peer, participant=body.participant_id)
                return
            out.resumed.set()
        elif kind == "participant_changed":
            self._on_participant_changed(peer, body)
        elif kind == "data":
            self._on_data(peer, body)
        elif kind == "track_migrated":
            key = (body.room, body.track_id)
            entry = self._handed_over.get(key)
            if entry is None or self._out.get((body.room, entry.participant_sid), _MigrationOut("")).peer != peer:
                self._reject("track_migrated for a track not handed over", peer=peer, room=body.room, track=body.track_id)
                return
            await self._hand_back(key)

    @staticmethod
    def _tap(taps: list[RelayTap], peer: str) -> Optional[RelayTap]:
        """The tap relaying to `peer` (the newest, should a link to it have been replaced)."""
        return next((tap for tap in reversed(taps) if tap.link.peer_node_id == peer), None)

    def _on_subscribe(self, peer: str, body: pb.RelaySubscribe) -> None:
        """The peer wants these layers of a local track (none: stop)."""
        if len(body.layers) > MAX_SUBSCRIBED_LAYERS:
            self._reject("subscribe with too many layers", peer=peer, track=body.track_id)
            return
        entry = self._local.get((body.room, body.track_id))
        tap = self._tap(entry[2], peer) if entry is not None else None
        if tap is None:
            # Unpublished while the request crossed (its TrackClosing is on its way), or never ours.
            self.metrics.inc(RELAY_SUBSCRIBE_UNKNOWN)
            return
        tap.request(body.layers, trio.current_time())

    def _on_sender_report(self, peer: str, body: pb.RelaySenderReport) -> None:
        """The publisher's SR for a layer, as its node received it `age` seconds ago."""
        entry = self._remote.get((body.room, peer, body.track_id))
        if entry is None:
            self.metrics.inc(RELAY_RTP_UNKNOWN)
            return
        receiver = entry[1].receiver
        if receiver.layer_of_ssrc(body.ssrc) != body.layer or not math.isfinite(body.age):
            self._reject("sender report for another layer's SSRC", peer=peer, track=body.track_id)
            return
        self.metrics.inc(RELAY_SR_RECEIVED)
        report = rtcp.SenderReport(body.ssrc, body.ntp_timestamp, body.rtp_timestamp, body.packet_count,
                                   body.octet_count)
        receiver.handle_rtcp([report], trio.current_time() - min(max(body.age, 0.0), 10.0))

    def _on_rtcp(self, peer: str, body: pb.RelayRtcp) -> None:
        """Feedback from the peer's copy of a local track: keyframe requests and NACKs for the
        layers they name by SSRC; receiver reports accounted by the tap (they end here)."""
        entry = self._local.get((body.room, body.track_id))
        if entry is None:
            return
        try:
            packets = rtcp.parse_rtcp(body.packet)
        except ParseError:
            self._reject("unparsable relayed RTCP", room=body.room, track=body.track_id)
            return
        receiver = entry[1].receiver
        tap = self._tap(entry[2], peer)
        now = trio.current_time()
        for packet in packets:
            if isinstance(packet, rtcp.Pli):
                layer = receiver.layer_of_ssrc(packet.media_ssrc)
                if layer is not None:
                    receiver.request_keyframe(layer, now)
            elif isinstance(packet, rtcp.Fir):
                for fir_entry in packet.entries:
                    layer = receiver.layer_of_ssrc(fir_entry.ssrc)
                    if layer is not None:
                        receiver.request_keyframe(layer, now)
            elif isinstance(packet, rtcp.Nack):
                layer = receiver.layer_of_ssrc(packet.media_ssrc)
                if layer is not None and tap is not None:
                    before = tap.counters.packets_resent
                    tap.resend(layer, packet.lost_sequence_numbers())
                    self.metrics.inc(RELAY_RESENT, tap.counters.packets_resent - before)
            elif isinstance(packet, rtcp.ReceiverReport):
                self.metrics.inc(RELAY_RR_RECEIVED)
                if tap is not None:
                    tap.counters.receiver_reports += 1
                    for block in packet.reports:
                        layer = receiver.layer_of_ssrc(block.ssrc)
                        if layer is not None:
                            tap.account_report(layer, block.fraction_lost, block.packets_lost)

    def _on_migrate_cancel(self, peer: str, body: pb.MigrateCancel) -> None:
        key = (body.room, body.participant_id)
        found = False
        pending = self._pending_in.pop(key, None)
        if pending is not None and pending.peer == peer:
            found = True
            self._not_arriving(pending)
        # Resumed here already: the participant goes (it must rejoin from scratch).
        room = self.registry.rooms.get(body.room)
        participant = next((p for p in room.participants.values() if p.sid == body.participant_id), None) if room else None
        migrated = participant.migrated_in if participant is not None else None
        if migrated is not None and migrated.peer == peer:
            found = True
            for track_id in migrated.published:
                self._arriving.pop((body.room, track_id), None)
            participant.close(models.DisconnectReason.MIGRATION, action=rtc.LeaveRequest.Action.RECONNECT)
        # Or we are the old node and the new one gave up: the migration failed ...
        out = self._out.get(key)
        if out is not None and out.peer == peer:
            found = True
            out.reason = "cancelled by the new node"
            out.resumed.set()
            out.tracks_done.set()
        # ... and our handed-over tracks end.
        for hkey, entry in list(self._handed_over.items()):
            if hkey[0] == body.room and entry.participant_sid == body.participant_id:
                found = True
                self._release_handed_over(hkey, expected_to_resume=False)
        if not found:
            self._reject("migrate_cancel for unknown participant", peer=peer, participant=body.participant_id)
