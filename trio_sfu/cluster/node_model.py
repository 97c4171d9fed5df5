"""Node: the two-node migration story as a model, for deterministic race tests.

`Node` runs the story with in-memory clients (`ClientPeer`) and no sockets, so the race tests and
the interleaving explorer can drive it under `MockClock` with explicit seams. It uses the very
classes the real server uses (TrackSource, the FIFO TrackManager, SubscriptionManager,
SubscriberEndpoint and its transceiver cache, TrackReceiver/DownTrack) and the same relay
protocol (`proto/relay.proto`); `trio_sfu.cluster.node_relay.NodeRelay` is that protocol on real servers,
sharing `TrackSpec` and `RelayTap` from here.

A room may be hosted on several nodes. Each node relays its local tracks to its linked peers
(`TrackPublished` then `RelayRtp`), and each peer offers them to its own participants as
*remote* sources in its TrackManager. A participant migrates from node A to node B like this:

1. A detaches the participant's subscriptions with expected-to-resume (their m-lines and rewrite
   state go to its transceiver cache) and sends B the sync state (`MigrateParticipant`: desired
   subscriptions, published tracks, cached m-lines).
2. B checks it, rebuilds the m-lines (same mids, SSRCs, rewrite state) as cache entries, starts
   the participant's subscription manager — its subscriptions resolve to remote sources — and
   answers `MigrateAccepted`.
3. When the participant's own media first reaches B, B publishes a local source for that track
   id (queued behind the remote one in its FIFO) and tells A (`TrackMigrated`); A closes its
   local source expecting a resume and says so (`TrackClosing`); B closes its remote copy with
   that flag, which caches every subscriber's m-line before the remote source leaves the FIFO;
   only then does the local source resolve, and subscribers rebind on their cached m-lines.

`migrate()` on A spans all of it and is cancellable at any step: cancellation tells B
(`MigrateCancel`) and closes the participant's tracks on both nodes without resume.

Every relay message is checked; one naming an unknown room, track or participant is rejected
with a logged reason (kept in `rejections`) and never raises out of the node's tasks.
`seam(name, context)` is awaited at the points where interleavings matter, so tests can order
them explicitly; it does nothing by default.
"""

from __future__ import annotations

import secrets
from typing import Awaitable, Callable, Optional, Protocol

import attrs
import trio
from livekit.protocol import rtc

from proto import relay_pb2 as pb
from rtp import rtcp
from rtp.errors import ParseError
from sdp.codecs import MediaKind
from sdp.model import Codec, Fingerprint, SessionDescription
from sdp.negotiator import LocalParams

from trio_sfu.forwarding.downtrack import DownTrackSnapshot
from trio_sfu.forwarding.receiver import TrackReceiver
from trio_sfu.log import get_logger
from trio_sfu.cluster.link import RelayLink, serve_link
from trio_sfu.tracks.source import RecordedAtClosing, ResumeFlagPolicy, SourceOrigin, TrackSource
from trio_sfu.tracks.subscriber import MigratedTransceiver, SubscriberEndpoint
from trio_sfu.tracks.subscription_manager import SubscriptionManager
from trio_sfu.tracks.track_manager import FifoHead, ResolutionPolicy, TrackManager

_log = get_logger("trio_sfu.cluster.node_model")

Seam = Callable[[str, dict], Awaitable[None]]


async def _no_seam(name: str, context: dict) -> None:
    return None


class ClientPeer(Protocol):
    """A participant's client as a node reaches it (the signal connection and subscriber PC)."""

    async def exchange(self, offer: SessionDescription) -> SessionDescription: ...

    def on_rtp(self, packet: bytes) -> bool: ...

    def send_signal(self, response: rtc.SignalResponse) -> None:
        """A signal message for the client (here: `subscription_response` for failed subscriptions)."""


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
        entries.append(MigratedTransceiver(t.track_id, t.mid, t.ssrc, t.rtx_ssrc or None, snapshot))
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


class NodeParticipant:
    def __init__(self, room: "NodeRoom", pid: str, client: ClientPeer, endpoint: SubscriberEndpoint,
                 manager: SubscriptionManager) -> None:
        self.room = room
        self.pid = pid
        self.client = client
        self.endpoint = endpoint
        self.manager = manager
        self.scope = trio.CancelScope()
        self.published: dict[str, TrackSpec] = {}
        # Tracks this participant published on the node it came from, not yet received here.
        self.pending_migrated: dict[str, TrackSpec] = {}
        self.migrated_from: Optional[str] = None


class NodeRoom:
    def __init__(self, node: "Node", name: str) -> None:
        self.node = node
        self.name = name
        self.tracks = TrackManager(node.resolution())
        self.participants: dict[str, NodeParticipant] = {}
        self.local: dict[str, TrackSource] = {}
        self.remote: dict[tuple[str, str], TrackSource] = {}
        self.taps: dict[str, list[RelayTap]] = {}


@attrs.define
class _Migration:
    done: trio.Event = attrs.field(factory=trio.Event)
    accepted: Optional[bool] = None
    reason: str = ""
    tracks_left: set[str] = attrs.field(factory=set)
    tracks_done: trio.Event = attrs.field(factory=trio.Event)


class Node:
    def __init__(self, node_id: str, *, clients: Callable[[str], Optional[ClientPeer]],
                 seam: Seam = _no_seam,
                 resolution: Callable[[], ResolutionPolicy] = FifoHead,
                 resume_policy: Callable[[], ResumeFlagPolicy] = RecordedAtClosing,
                 reconcile_interval: float = 3.0, not_found_timeout: float = 60.0) -> None:
        self.node_id = node_id
        self._clients = clients
        self.seam = seam
        self.resolution = resolution
        self.resume_policy = resume_policy
        self.reconcile_interval = reconcile_interval
        self.not_found_timeout = not_found_timeout
        self.links: dict[str, RelayLink] = {}
        self.rooms: dict[str, NodeRoom] = {}
        self.rejections: list[str] = []
        self.relay_rtp_unknown = 0
        self._migrations: dict[tuple[str, str], _Migration] = {}
        self._nursery: Optional[trio.Nursery] = None
        self.log = _log.bind(node=node_id)
        self._fingerprints = (Fingerprint("sha-256", ":".join(["00"] * 32)),)

    # ---- lifetime -----------------------------------------------------------------------------

    def add_link(self, link: RelayLink) -> None:
        self.links[link.peer_node_id] = link
        if self._nursery is not None:
            self._nursery.start_soon(self._serve_link, link)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for link in self.links.values():
                    nursery.start_soon(self._serve_link, link)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            self.close()

    def close(self) -> None:
        """Drop every participant and source (no resume), close links (idempotent)."""
        for room in list(self.rooms.values()):
            for pid in list(room.participants):
                self._remove_participant(room, pid, unpublish=True)
            for source in list(room.local.values()) + list(room.remote.values()):
                source.close_now(False)
            room.local.clear()
            room.remote.clear()
            room.taps.clear()
        self.rooms.clear()
        for link in self.links.values():
            link.close()

    def _spawn(self, fn, *args) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(fn, *args)

    def _reject(self, reason: str, **kv: object) -> None:
        self.rejections.append(reason)
        self.log.warning("relay message rejected", kv={"reason": reason, **kv})

    # ---- rooms and participants ----------------------------------------------------------------

    def host_room(self, name: str) -> NodeRoom:
        room = self.rooms.get(name)
        if room is None:
            room = self.rooms[name] = NodeRoom(self, name)
        return room

    def _new_participant(self, room: NodeRoom, pid: str, client: ClientPeer) -> NodeParticipant:
        local = LocalParams(secrets.token_hex(4), secrets.token_hex(12), self._fingerprints, ())
        endpoint = SubscriberEndpoint(pid, local, client.exchange, client.on_rtp)

        async def hook(seam: str, track_id: str) -> None:
            await self.seam(f"sub.{seam}", {"node": self.node_id, "participant": pid, "track": track_id})

        def report(track_id: str, error: int) -> None:
            client.send_signal(rtc.SignalResponse(subscription_response=rtc.SubscriptionResponse(
                track_sid=track_id, err=error)))  # type: ignore[arg-type]

        manager = SubscriptionManager(endpoint, room.tracks, report=report,
                                      reconcile_interval=self.reconcile_interval,
                                      not_found_timeout=self.not_found_timeout, hook=hook,
                                      log=self.log.bind(room=room.name, participant=pid))
        p = NodeParticipant(room, pid, client, endpoint, manager)
        room.participants[pid] = p
        self._spawn(self._run_participant, p)
        return p

    async def _run_participant(self, p: NodeParticipant) -> None:
        with p.scope:
            await p.manager.run()

    def join(self, room_name: str, pid: str, client: ClientPeer, subscriptions: tuple[str, ...] = ()) -> NodeParticipant:
        room = self.host_room(room_name)
        if pid in room.participants:
            raise ValueError(f"{pid} is already in {room_name}")
        p = self._new_participant(room, pid, client)
        for track_id in subscriptions:
            p.manager.set_desired(track_id, True)
        return p

    def leave(self, room_name: str, pid: str) -> None:
        """The client is gone for good: unsubscribe, unpublish without resume."""
        room = self.rooms.get(room_name)
        if room is not None:
            self._remove_participant(room, pid, unpublish=True)

    def _remove_participant(self, room: NodeRoom, pid: str, *, unpublish: bool) -> None:
        p = room.participants.pop(pid, None)
        if p is not None:
            p.scope.cancel()
            p.manager.close()
        if unpublish:
            for track_id, source in list(room.local.items()):
                if source.publisher_id == pid:
                    self._close_local_now(room, track_id, expected_to_resume=False)

    # ---- publishing ----------------------------------------------------------------------------

    def publish(self, room_name: str, pid: str, spec: TrackSpec) -> TrackSource:
        room = self.rooms[room_name]
        p = room.participants.get(pid)
        if p is not None:
            p.published[spec.track_id] = spec
        return self._add_local(room, spec)

    def _add_local(self, room: NodeRoom, spec: TrackSpec) -> TrackSource:
        primary = next(c for c in spec.codecs if not c.is_rtx)
        receiver = TrackReceiver(spec.track_id, f"{spec.kind.value}/{primary.name}", primary.clock_rate,
                                 send_rtcp=lambda packet: True, local_ssrc=secrets.randbits(31) or 1,
                                 cname=self.node_id, now=trio.current_time())
        source = TrackSource(spec.track_id, SourceOrigin.LOCAL, self.node_id, receiver, kind=spec.kind,
                             publisher_id=spec.publisher_id, stream_id=spec.stream_id, codecs=spec.codecs,
                             resume_policy=self.resume_policy())
        room.local[spec.track_id] = source
        taps = room.taps[spec.track_id] = []
        for link in self.links.values():
            tap = RelayTap(link, room.name, spec.track_id)
            receiver.add_down_track(tap)  # type: ignore[arg-type]
            taps.append(tap)
            link.send(pb.RelayMessage(track_published=pb.TrackPublished(room=room.name, track=spec.to_proto())))
        room.tracks.add(source)
        return source

    def publisher_rtp(self, room_name: str, pid: str, track_id: str, packet: bytes) -> bool:
        """A packet from a publishing client; the first one of a migrated track makes it local."""
        room = self.rooms.get(room_name)
        if room is None:
            return False
        source = room.local.get(track_id)
        if source is None or source.publisher_id != pid:
            p = room.participants.get(pid)
            spec = p.pending_migrated.pop(track_id, None) if p is not None else None
            if spec is None:
                return False
            source = self._add_local(room, spec)
            p.published[track_id] = spec
            link = self.links.get(p.migrated_from or "")
            if link is not None:
                link.send(pb.RelayMessage(track_migrated=pb.TrackMigrated(room=room_name, track_id=track_id)))
        return source.receiver.receive_rtp(packet, trio.current_time())

    def _close_local_now(self, room: NodeRoom, track_id: str, expected_to_resume: bool) -> None:
        source = room.local.pop(track_id, None)
        if source is None:
            return
        room.taps.pop(track_id, None)
        for link in self.links.values():
            link.send(pb.RelayMessage(track_closing=pb.TrackClosing(room=room.name, track_id=track_id,
                                                                     expected_to_resume=expected_to_resume)))
        source.close_now(expected_to_resume)

    async def _close_local_migrated(self, room: NodeRoom, source: TrackSource) -> None:
        # The publisher's media now reaches the other node: our copy goes, subscribers resume.
        if not source.begin_closing(True):
            return
        for link in self.links.values():
            link.send(pb.RelayMessage(track_closing=pb.TrackClosing(room=room.name, track_id=source.track_id,
                                                                     expected_to_resume=True)))
        try:
            await self.seam("local.closing", {"node": self.node_id, "track": source.track_id})
        finally:
            source.clear_subscribers(True)
            source.close()
            if room.local.get(source.track_id) is source:
                del room.local[source.track_id]
                room.taps.pop(source.track_id, None)

    async def _close_remote(self, room: NodeRoom, key: tuple[str, str], source: TrackSource, expected_to_resume: bool) -> None:
        if not source.begin_closing(expected_to_resume):
            return
        try:
            await self.seam("remote.closing", {"node": self.node_id, "track": source.track_id})
            source.clear_subscribers(expected_to_resume)
            await self.seam("remote.cleared", {"node": self.node_id, "track": source.track_id})
        finally:
            # Cancelled or not, a closing source must end closed, unsubscribed and out of the FIFO.
            source.close()
            if room.remote.get(key) is source:
                del room.remote[key]

    # ---- migration (the old node's side) ------------------------------------------------------

    async def migrate(self, room_name: str, pid: str, to_node: str) -> bool:
        """Move `pid` to `to_node`; True once it runs there and its published tracks arrived."""
        room = self.rooms.get(room_name)
        link = self.links.get(to_node)
        p = room.participants.get(pid) if room is not None else None
        if room is None or link is None or p is None:
            self._reject("migration of an unknown participant", room=room_name, participant=pid)
            return False
        key = (room_name, pid)
        migration = self._migrations[key] = _Migration()
        migration.tracks_left = set(p.published)
        ok = False
        try:
            # Stop subscribing here: each down track's state goes to the cache, by track id. The
            # sync state is built before any await: the cancelled manager task then closes the
            # endpoint, which forgets the cache.
            p.scope.cancel()
            p.endpoint.on_detached = None
            for binding in list(p.endpoint.bindings.values()):
                if not binding.source.remove_subscriber(pid, expected_to_resume=True):
                    p.endpoint.detach_source(binding.source, True)
            desired = [s.track_id for s in p.manager.subscriptions.values() if s.desired]
            state = pb.MigrateParticipant(room=room_name, participant_id=pid, subscriptions=desired,
                                          published=[spec.to_proto() for spec in p.published.values()])
            for entry in p.endpoint.migrated_state():
                if entry.track_id not in desired:
                    continue  # a cached m-line nobody wants any more stays behind
                cached = p.endpoint.table.cache.peek(entry.track_id)
                st = pb.SubscribedTransceiver(track_id=entry.track_id, mid=entry.mid, ssrc=entry.ssrc or 0,
                                              rtx_ssrc=entry.rtx_ssrc or 0,
                                              kind=(cached.kind if cached else MediaKind.AUDIO).value)
                if entry.snapshot is not None:
                    st.down.CopyFrom(snapshot_to_proto(entry.snapshot))
                state.transceivers.append(st)
            await self.seam("migrate.detached", {"node": self.node_id, "participant": pid})
            link.send(pb.RelayMessage(migrate=state))
            await migration.done.wait()
            if not migration.accepted:
                self.log.warning("migration refused", kv={"participant": pid, "reason": migration.reason})
                self._remove_participant(room, pid, unpublish=True)
                return False
            # The participant now lives on the new node; its tracks stay here until its media
            # reaches the new node (TrackMigrated), so subscribers are never without a source.
            room.participants.pop(pid, None)
            p.manager.close()
            await self.seam("migrate.accepted", {"node": self.node_id, "participant": pid})
            if migration.tracks_left:
                await migration.tracks_done.wait()
            ok = True
            return True
        finally:
            self._migrations.pop(key, None)
            if not ok and migration.accepted is not False:
                # Cancelled (the client dropped) or failed: undo on both nodes, nothing resumes.
                link.send(pb.RelayMessage(migrate_cancel=pb.MigrateCancel(room=room_name, participant_id=pid)))
                self._remove_participant(room, pid, unpublish=True)

    # ---- relay messages -------------------------------------------------------------------------

    async def _serve_link(self, link: RelayLink) -> None:
        await serve_link(link, self._handle, self._reject)

    def _handle(self, link: RelayLink, message: pb.RelayMessage) -> None:
        kind = message.WhichOneof("message")
        peer = link.peer_node_id
        if kind is None:
            self._reject("empty relay message", peer=peer)
            return
        body = getattr(message, kind)
        room = self.rooms.get(body.room)
        if room is None:
            if kind == "rtp":
                self.relay_rtp_unknown += 1
                return
            self._reject(f"{kind} for unknown room", peer=peer, room=body.room)
            if kind == "migrate":
                link.send(pb.RelayMessage(migrate_rejected=pb.MigrateRejected(
                    room=body.room, participant_id=body.participant_id, reason="unknown room")))
            return
        if kind == "rtp":
            source = room.remote.get((peer, body.track_id))
            if source is None:
                self.relay_rtp_unknown += 1
                return
            source.receiver.receive_rtp(body.packet, trio.current_time())
        elif kind == "rtcp":
            self._on_rtcp(room, body)
        elif kind == "track_published":
            self._on_track_published(room, peer, body)
        elif kind == "track_closing":
            key = (peer, body.track_id)
            source = room.remote.get(key)
            if source is None:
                self._reject("track_closing for unknown track", peer=peer, track=body.track_id)
                return
            self._spawn(self._close_remote, room, key, source, body.expected_to_resume)
        elif kind == "migrate":
            reason = self._on_migrate(room, peer, body)
            if reason:
                self._reject(f"migration rejected: {reason}", peer=peer, participant=body.participant_id)
                link.send(pb.RelayMessage(migrate_rejected=pb.MigrateRejected(
                    room=room.name, participant_id=body.participant_id, reason=reason)))
            else:
                link.send(pb.RelayMessage(migrate_accepted=pb.MigrateAccepted(room=room.name, participant_id=body.participant_id)))
        elif kind in ("migrate_accepted", "migrate_rejected"):
            migration = self._migrations.get((room.name, body.participant_id))
            if migration is None or migration.accepted is not None:
                self._reject(f"{kind} for no pending migration", peer=peer, participant=body.participant_id)
                return
            migration.accepted = kind == "migrate_accepted"
            migration.reason = getattr(body, "reason", "")
            migration.done.set()
        elif kind == "migrate_cancel":
            p = room.participants.get(body.participant_id)
            if p is None or p.migrated_from != peer:
                self._reject("migrate_cancel for unknown participant", peer=peer, participant=body.participant_id)
                return
            self._remove_participant(room, body.participant_id, unpublish=True)
        elif kind == "track_migrated":
            source = room.local.get(body.track_id)
            if source is None:
                self._reject("track_migrated for unknown track", peer=peer, track=body.track_id)
                return
            migration = self._migrations.get((room.name, source.publisher_id))
            self._spawn(self._close_local_migrated, room, source)
            if migration is not None:
                migration.tracks_left.discard(body.track_id)
                if not migration.tracks_left:
                    migration.tracks_done.set()

    def _on_rtcp(self, room: NodeRoom, body: pb.RelayRtcp) -> None:
        source = room.local.get(body.track_id)
        if source is None:
            return
        try:
            packets = rtcp.parse_rtcp(body.packet)
        except ParseError:
            return
        if any(isinstance(p, (rtcp.Pli, rtcp.Fir)) for p in packets):
            source.receiver.request_keyframe(0, trio.current_time())

    def _on_track_published(self, room: NodeRoom, peer: str, body: pb.TrackPublished) -> None:
        spec = TrackSpec.from_proto(body.track)
        if spec is None:
            self._reject("track_published with an unusable description", peer=peer, track=body.track.track_id)
            return
        key = (peer, spec.track_id)
        existing = room.remote.get(key)
        if existing is not None and existing.is_open:
            return  # announced again: the same source, adding it twice is a no-op
        link = self.links[peer]

        def send_rtcp(packet: bytes, track_id: str = spec.track_id) -> bool:
            return link.send(pb.RelayMessage(rtcp=pb.RelayRtcp(room=room.name, track_id=track_id, packet=packet)))

        source = spec.remote_source(peer, send_rtcp, cname=self.node_id, now=trio.current_time(),
                                    resume_policy=self.resume_policy())
        room.remote[key] = source
        room.tracks.add(source)

    def _on_migrate(self, room: NodeRoom, peer: str, body: pb.MigrateParticipant) -> str:
        """Create the participant from its sync state; a non-empty reason refuses it."""
        pid = body.participant_id
        if not pid:
            return "no participant id"
        if pid in room.participants:
            return "participant already present"
        client = self._clients(pid)
        if client is None:
            return "client not connected to this node"
        for track_id in body.subscriptions:
            if track_id not in room.tracks:
                return f"subscription to unknown track {track_id}"
        published = []
        for d in body.published:
            spec = TrackSpec.from_proto(d)
            if spec is None or spec.publisher_id != pid:
                return f"unusable published track {d.track_id}"
            if (peer, spec.track_id) not in room.remote:
                return f"published track {spec.track_id} unknown here"
            published.append(spec)
        parsed = migrated_transceivers(body)
        if isinstance(parsed, str):
            return parsed
        entries, kinds = parsed
        p = self._new_participant(room, pid, client)
        p.migrated_from = peer
        failed = p.endpoint.restore_migrated(entries, kinds)
        if failed:
            self.log.warning("m-lines not reproduced after migration", kv={"participant": pid, "tracks": ",".join(failed)})
        for spec in published:
            p.pending_migrated[spec.track_id] = spec
        for track_id in body.subscriptions:
            p.manager.set_desired(track_id, True)
        return ""

    # ---- checks -------------------------------------------------------------------------------

    def registered_subscribers(self) -> list[tuple[str, str, str]]:
        """(room, source, subscriber) for every subscriber any source of this node lists."""
        out = []
        for room in self.rooms.values():
            for source in room.tracks.all_sources():
                out.extend((room.name, repr(source), sid) for sid in source.subscriber_ids)
        return out
