"""Rooms and the registry that owns them.

Nursery tree: the registry's nursery holds one task per room (`Room.run`), each room's nursery
holds one task per participant (`Participant.run`). A room is created on first join and closes
itself when it has been empty for `departure_timeout` (someone was here) or `empty_timeout`
(nobody ever joined), LiveKit's rules. Room bookkeeping is synchronous (no awaits between
checking and changing membership), so joins and departures cannot interleave badly.
"""

from __future__ import annotations

import secrets
import string
import time

from typing import Callable, Protocol, Sequence

import trio
from livekit.protocol import agent_dispatch, models, rtc

from trio_sfu import metrics as m
from trio_sfu.signal.grants import ClaimGrants, requested_agents
from trio_sfu.config import RoomConfig
from trio_sfu.log import get_logger
from trio_sfu.signal.limits import SignalLimits
from trio_sfu.signal.media_port import MediaSessionFactory, MigratedParticipant, UnavailableMediaSession
from trio_sfu.signal.participant import PING_INTERVAL, PING_TIMEOUT, JoinOptions, Participant, SignalConnection
from trio_sfu.signal.server_info import server_info
from trio_sfu.signal.codec import encode_response

_ALPHABET = string.ascii_letters + string.digits
_log = get_logger("trio_sfu.signal.rooms")


class RoomClosedError(Exception):
    """The room closed while a join was in progress; the caller retries with a new room."""


class RoomFullError(Exception):
    """The room already has `max_participants` participants."""


#: Registry events of a participant migrating between nodes: neither is a join or a departure
#: (LiveKit's webhooks know nothing of them), but the node serving it changed.
MOVED_IN = "participant_moved_in"
MOVED_OUT = "participant_moved_out"


class RoomObserver(Protocol):
    """Told about room lifecycle events, named as LiveKit's webhooks (`room_started`,
    `room_finished`, `participant_joined`, `participant_left`, `track_published`,
    `track_unpublished`). Called synchronously: it must not block or raise."""

    def room_event(
        self, event: str, room: "Room", participant: Participant | None = None, track: models.TrackInfo | None = None
    ) -> None: ...


class RemotePresence(Protocol):
    """The room's participants on other nodes, when this server is one node of several
    (`trio_sfu.cluster.node_relay.NodeRelay` implements it)."""

    def participant_changed(self, room: str, info: models.ParticipantInfo) -> None:
        """A participant here joined, changed or left: tell the other nodes."""

    def remote_participants(self, room: str) -> list[models.ParticipantInfo]:
        """The room's participants on the other nodes, as their nodes last described them."""


class Room:
    def __init__(self, registry: "RoomRegistry", name: str, sid: str, config: RoomConfig) -> None:
        self.registry = registry
        self.name = name
        self.sid = sid
        self.config = config
        self.created_at = time.time()
        self.metadata = ""
        # The agents the request that created the room asked for (a token's or CreateRoom's
        # `agents`); whoever dispatches agents reads it at `room_started` (trio_sfu.agents).
        self.requested_agents: tuple[agent_dispatch.RoomAgentDispatch, ...] = ()
        self.participants: dict[str, Participant] = {}
        self.closed = False
        # The DisconnectReason the room closed with (webhooks report it as the end reason).
        self.close_reason: int = models.DisconnectReason.UNKNOWN_REASON
        self.ever_joined = False
        self._last_departure = trio.current_time()
        self._created_clock = trio.current_time()
        self._changed = trio.Event()
        self._nursery: trio.Nursery | None = None
        # Set once run() has its nursery: a room is listed before that, and a second join arriving
        # in between must wait for it rather than be told the room is closing.
        self.started = trio.Event()
        self.finished = trio.Event()
        self.log = _log.bind(room=name, room_sid=sid)

    # ---- lifetime -----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self.started.set()
                task_status.started()
                await self._watch_emptiness()
                # Participants were told to go in close(); the nursery waits for their tasks.
        finally:
            self.closed = True
            self.registry._forget(self)
            self.finished.set()
            self.log.info("room closed")
            self.registry.emit("room_finished", self)

    async def _watch_emptiness(self) -> None:
        while not self.closed:
            self._changed = trio.Event()
            if self.participants:
                await self._changed.wait()
                continue
            if self.ever_joined:
                deadline = self._last_departure + self.config.departure_timeout
            else:
                deadline = self._created_clock + self.config.empty_timeout
            with trio.move_on_at(deadline):
                await self._changed.wait()
            if not self.participants and not self.closed and trio.current_time() >= deadline:
                self.log.info("room empty, closing", kv={"ever_joined": self.ever_joined})
                self.close(models.DisconnectReason.ROOM_CLOSED)

    def close(self, reason: int) -> None:
        """Ask every participant to leave with `reason` and stop the room (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self.registry._forget(self)
        for participant in list(self.participants.values()):
            participant.close(reason, send_leave=True)
        self._changed.set()

    # ---- membership ---------------------------------------------------------------------

    async def join(self, grants: ClaimGrants, options: JoinOptions, stream: trio.abc.Stream,
                   migrated_in: MigratedParticipant | None = None) -> Participant:
        """Admit a participant whose WebSocket upgrade is waiting in `stream`; start its session.
        With `migrated_in` it is a participant resuming here from another node: it keeps its
        sid, tracks and subscriptions, and hears `reconnect` instead of `join`."""
        if self.closed or self._nursery is None:
            raise RoomClosedError(self.name)
        previous = self.participants.get(grants.identity)
        limit = self.config.max_participants
        if limit and previous is None and len(self.participants) >= limit:
            raise RoomFullError(self.name)
        if previous is not None:
            # LiveKit: the newest session for an identity wins; the old one is told why it lost.
            self.registry.metrics.inc(m.SIGNAL_DUPLICATE_IDENTITY)
            self.log.info("duplicate identity, replacing", kv={"identity": grants.identity, "old": previous.sid})
            previous.close(models.DisconnectReason.DUPLICATE_IDENTITY, send_leave=True)
        participant = Participant(
            self,
            migrated_in.info.sid if migrated_in is not None else self.registry.new_sid("PA_"),
            grants,
            options,
            self.registry.metrics,
            self.registry.media_factory,
            self.registry.limits,
        )
        if migrated_in is not None:
            participant.adopt_migration(migrated_in)
            participant.bump_version()
            participant.send(rtc.SignalResponse(reconnect=self.reconnect_response(participant)))
            others = self.others(participant)
            if others:
                participant.send(rtc.SignalResponse(update=rtc.ParticipantUpdate(participants=others)))
        else:
            # The join response is queued before anything else can be, so it is the first message.
            participant.bump_version()
            participant.send(rtc.SignalResponse(join=self.join_response(participant)))
        self.participants[participant.identity] = participant
        self.ever_joined = True
        self._changed.set()
        self.registry.metrics.inc(m.SIGNAL_JOINS)
        participant.log.info("participant joined", kv={
            "signalling": "v1 single-pc" if options.single_peer_connection else "v0 dual-pc"})
        await self._nursery.start(participant.run, stream)
        return participant

    def on_participant_closed(self, participant: Participant, *, migrated: bool = False) -> None:
        """Called by Participant.close: unlink and tell the others (once). A participant that
        moved to another node has not left the room: nobody is told it left."""
        if self.participants.get(participant.identity) is participant:
            del self.participants[participant.identity]
            self._last_departure = trio.current_time()
            self._changed.set()
        if participant.announced and not migrated:
            self.broadcast_participant(participant)
            for track in participant.tracks.values():
                self.registry.emit("track_unpublished", self, participant, track)
            self.registry.emit("participant_left", self, participant)
        elif participant.announced:
            # Not a departure (no webhook), but no longer served here (the cluster directory).
            self.registry.emit(MOVED_OUT, self, participant)

    def new_sid(self, prefix: str) -> str:
        return self.registry.new_sid(prefix)

    def track_ids(self) -> set[str]:
        """Every track published in the room now, here and (as last described) on other nodes."""
        ids = {sid for p in self.participants.values() for sid in p.tracks}
        presence = self.registry.presence
        if presence is not None:
            ids.update(t.sid for info in presence.remote_participants(self.name) for t in info.tracks)
        return ids

    def emit(self, event: str, participant: Participant, track: models.TrackInfo | None = None) -> None:
        self.registry.emit(event, self, participant, track)

    def announce(self, participant: Participant) -> None:
        participant.announced = True
        self.broadcast_participant(participant)
        if participant.migrated_in is None:
            # A participant that migrated here never left the room (its old node did not
            # report a departure either): no join to report.
            self.registry.emit("participant_joined", self, participant)
        else:
            self.registry.emit(MOVED_IN, self, participant)

    def broadcast_participant(self, participant: Participant, *, include_self: bool = False) -> None:
        """Send a ParticipantUpdate with `participant`'s current info to the room."""
        if participant.hidden and not include_self:
            return
        info = participant.to_info()
        frame = encode_response(rtc.SignalResponse(update=rtc.ParticipantUpdate(participants=[info])))
        presence = self.registry.presence
        if presence is not None and not participant.hidden:
            presence.participant_changed(self.name, info)  # the room's participants on other nodes
        for other in list(self.participants.values()):
            if other is participant:
                if include_self:
                    other.send_participant_update(participant.sid, frame)
            elif not participant.hidden:
                # A hidden participant's own updates (include_self) must not reveal it.
                other.send_participant_update(participant.sid, frame)

    # ---- snapshots ----------------------------------------------------------------------

    def to_proto(self) -> models.Room:
        return models.Room(
            sid=self.sid,
            name=self.name,
            empty_timeout=self.config.empty_timeout,
            departure_timeout=self.config.departure_timeout,
            max_participants=self.config.max_participants,
            creation_time=int(self.created_at),
            creation_time_ms=int(self.created_at * 1000),
            metadata=self.metadata,
            num_participants=len(self.participants),
            num_publishers=sum(1 for p in self.participants.values() if p.tracks),
        )

    def others(self, participant: Participant) -> list[models.ParticipantInfo]:
        """Everyone else in the room that `participant` may see, on this node and the others."""
        others = [p.to_info() for p in self.participants.values() if p is not participant and not p.hidden]
        presence = self.registry.presence
        if presence is not None:
            local = {p.sid for p in self.participants.values()}
            others += [info for info in presence.remote_participants(self.name) if info.sid not in local]
        return others

    def send_remote_participant(self, info: models.ParticipantInfo) -> None:
        """A participant on another node joined, changed or left: tell everyone here."""
        frame = encode_response(rtc.SignalResponse(update=rtc.ParticipantUpdate(participants=[info])))
        for participant in list(self.participants.values()):
            if participant.sid != info.sid:
                participant.send_participant_update(info.sid, frame)

    def join_response(self, participant: Participant) -> rtc.JoinResponse:
        others = self.others(participant)
        can_subscribe = participant.grants.video.may_subscribe if participant.grants.video else True
        return rtc.JoinResponse(
            room=self.to_proto(),
            participant=participant.to_info(),
            other_participants=others,
            server_version=server_info().version,
            ice_servers=self.registry.ice_servers(participant.sid),
            # Dual-PC mode: the subscriber PC is primary whenever the client may subscribe. With
            # one PC (`/rtc/v1`) the client's own offer opens it: never subscriber primary.
            subscriber_primary=can_subscribe and not participant.options.single_peer_connection,
            ping_timeout=PING_TIMEOUT,
            ping_interval=PING_INTERVAL,
            server_info=server_info(),
            client_configuration=self._client_configuration(),
            fast_publish=False,
        )

    def reconnect_response(self, participant: Participant) -> rtc.ReconnectResponse:
        """LiveKit's answer to a resume (its ICE servers, the client configuration, the server)."""
        return rtc.ReconnectResponse(ice_servers=self.registry.ice_servers(participant.sid),
                                     client_configuration=self._client_configuration(), server_info=server_info())

    def _client_configuration(self) -> models.ClientConfiguration:
        # A participant whose signal connection drops keeps its media session for a while
        # (Participant.RESUME_WINDOW), so clients may resume: here, or after a migration on
        # the node it moved to.
        return models.ClientConfiguration(resume_connection=models.ClientConfigSetting.ENABLED)

    def resume(self, grants: ClaimGrants, sid: str, stream: trio.abc.Stream) -> SignalConnection | None:
        """A resume of participant `sid` by a client holding `grants` for this room: its new
        connection, or None (wrong identity or sid, the participant gone) for the caller to refuse."""
        participant = self.participants.get(grants.identity)
        if self.closed or participant is None or participant.sid != sid:
            return None
        return participant.offer_resume(stream)


def _no_ice_servers(participant_sid: str) -> list[rtc.ICEServer]:
    return []


class RoomRegistry:
    """All rooms of this node, keyed by name; owns the nursery the rooms run in."""

    def __init__(
        self,
        config: RoomConfig,
        metrics: m.Metrics,
        media_factory: MediaSessionFactory = UnavailableMediaSession,
        limits: SignalLimits | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        # What each participant's requests are held to.
        self.limits = limits or SignalLimits()
        self.media_factory = media_factory
        self.rooms: dict[str, Room] = {}
        self._nursery: trio.Nursery | None = None
        self.observers: list[RoomObserver] = []
        # Set when this server is one node of several.
        self.presence: RemotePresence | None = None
        # The ICE servers a participant (by sid) is told of: the node's TURN server, when on.
        self.ice_servers: Callable[[str], list[rtc.ICEServer]] = _no_ice_servers

    def emit(
        self, event: str, room: Room, participant: Participant | None = None, track: models.TrackInfo | None = None
    ) -> None:
        for observer in list(self.observers):
            try:
                observer.room_event(event, room, participant, track)
            except Exception:
                # An observer's bug must not break the room that reported the event.
                _log.exception("room observer failed", kv={"event": event})

    def new_sid(self, prefix: str) -> str:
        return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(12))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    async def get_or_create(self, name: str, config: RoomConfig | None = None, metadata: str = "",
                            agents: Sequence[agent_dispatch.RoomAgentDispatch] = ()) -> Room:
        """The live room `name`, or a new one with `config` (default: the server's), `metadata`
        and the `agents` to dispatch into it."""
        room = self.rooms.get(name)
        if room is not None and not room.closed:
            await room.started.wait()
            return room
        if self._nursery is None:
            raise RoomClosedError(name)
        room = Room(self, name, self.new_sid("RM_"), config or self.config)
        room.metadata = metadata
        room.requested_agents = tuple(agents)
        self.rooms[name] = room
        self.metrics.inc(m.ROOMS_CREATED)
        room.log.info("room created")
        await self._nursery.start(room.run)
        self.emit("room_started", room)
        return room

    async def join(self, room_name: str, grants: ClaimGrants, options: JoinOptions, stream: trio.abc.Stream,
                   migrated_in: MigratedParticipant | None = None) -> Participant:
        # LiveKit: the token's room configuration applies to a room this join creates.
        agents = requested_agents(grants.room_config)
        for _ in range(3):
            room = await self.get_or_create(room_name, agents=agents)
            try:
                return await room.join(grants, options, stream, migrated_in)
            except RoomClosedError:
                continue
        raise RoomClosedError(room_name)

    def resume(self, room_name: str, grants: ClaimGrants, sid: str, stream: trio.abc.Stream) -> SignalConnection | None:
        """A same-node resume (see Room.resume); None when this node has nothing to resume."""
        room = self.rooms.get(room_name)
        return room.resume(grants, sid, stream) if room is not None else None

    def _forget(self, room: Room) -> None:
        if self.rooms.get(room.name) is room:
            del self.rooms[room.name]
            self.metrics.inc(m.ROOMS_CLOSED)

    async def close_all(self, reason: int, timeout: float = 3.0) -> bool:
        """Close every room with `reason`; True if all their tasks ended within `timeout`."""
        rooms = list(self.rooms.values())
        for room in rooms:
            room.close(reason)
        with trio.move_on_after(timeout):
            for room in rooms:
                await room.finished.wait()
            return True
        return False
