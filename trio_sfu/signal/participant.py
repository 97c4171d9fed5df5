"""One participant's signal session: its state, its tracks, and the tasks that serve its WebSocket.

Lifetime: `Participant.run` is started in its room's nursery and opens the participant's own
nursery: its media session, and one signal connection at a time, each in a cancel scope of its
own holding the WebSocket reader (trio-websocket's), our writer and the ping-timeout timer.
Whatever ends the session -- the client's `leave`, server-side removal, a slow consumer, a
signal connection lost with no media to keep, or a resume window that passed -- goes through
`close()`, which unlinks the participant from its room and cancels that nursery, so everything
it owns ends with it.

A signal connection lost without a `leave` (the socket dropped, or a ping timeout) while the
media is up ends only that connection: the participant waits `RESUME_WINDOW` for the client to
resume (`offer_resume`, LiveKit's `reconnect=1`), the others see no change, and what it should
hear waits in its outbox. The newest resume wins; at most one waits to be served.

Outgoing messages go through the participant's `SignalOutbox` (bounded in messages and bytes,
coalescing ParticipantUpdates per participant) to a single writer task. Producers (other
participants' broadcasts) never block: a queue over its bounds means the client is not reading,
and since a signal stream with holes is useless, such a client is disconnected and counted.

Incoming requests are bounded before they change anything: by kind, a token bucket per
participant (`trio_sfu.signal.rate_limit`; a sender that keeps flooding is disconnected), and
per request the sizes and counts of `trio_sfu.signal.limits`. A refusal is a `RequestResponse`
with LiveKit's reason, to the sender only, and is counted.
"""

from __future__ import annotations

import collections
import enum
import time
from typing import Any, Awaitable, Callable, Hashable, Optional, Protocol

import attrs
import trio
import trio_websocket
from livekit.protocol import models, rtc

from trio_sfu import metrics as m
from trio_sfu.signal.grants import ClaimGrants
from trio_sfu.log import get_logger
from trio_sfu.signal.codec import SignalDecodeError, decode_request, encode_response, request_kind
from trio_sfu.signal.limits import (
    Refusal,
    SignalLimits,
    assign_bounded,
    check_candidate,
    check_sdp,
    merge_attributes,
    source_matches_type,
)
from trio_sfu.signal.media_port import MediaContext, MediaSession, MediaSessionFactory, MigratedParticipant
from trio_sfu.signal.outbox import SignalOutbox
from trio_sfu.signal.rate_limit import RequestRateLimiter, Verdict

MAX_WS_MESSAGE = 1024 * 1024
# A client's backlog of unsent messages. ParticipantUpdates coalesce per participant, so a room's
# churn takes about one slot per member; what remains is the client's own traffic (responses,
# offers, candidates) and room updates. A client this far behind is not reading.
OUTBOX_MAX_MESSAGES = 1024
OUTBOX_MAX_BYTES = 8 * 1024 * 1024
PING_INTERVAL = 5
PING_TIMEOUT = 15
# How long a closing session may take to flush its last messages before it is cut.
CLOSE_GRACE = 2.0
# After a leave that sends the client to resume (a migration), how long it may take to hang up
# itself before we close: a LiveKit SDK that sees our close race its own takes it as a second
# failure and falls back to a full rejoin under a new sid (livekit 1.2.1, measured 3-50 %).
RESUME_HANGUP_WAIT = 1.5
# Server-sent data kept until the media session exists (it queues them itself from then on).
MAX_UNDELIVERED_DATA = 64
# How long a participant whose signal connection was lost (not left) while its media is up stays
# in the room waiting for the client to resume. LiveKit keeps it while its peer connections stay
# up; a bound also ends a client that keeps media flowing but never comes back. The SDKs retry a
# resume for about 10-15 s before they rejoin from scratch.
RESUME_WINDOW = 20.0

_log = get_logger("trio_sfu.signal.participant")
_SUBSCRIBER_OFFER = ("subscriber-offer",)


class ParticipantState(enum.Enum):
    JOINING = models.ParticipantInfo.State.JOINING
    JOINED = models.ParticipantInfo.State.JOINED
    ACTIVE = models.ParticipantInfo.State.ACTIVE
    DISCONNECTED = models.ParticipantInfo.State.DISCONNECTED


_TRANSITIONS = {
    ParticipantState.JOINING: {ParticipantState.JOINED, ParticipantState.DISCONNECTED},
    ParticipantState.JOINED: {ParticipantState.ACTIVE, ParticipantState.DISCONNECTED},
    ParticipantState.ACTIVE: {ParticipantState.DISCONNECTED},
    ParticipantState.DISCONNECTED: set(),
}


@attrs.frozen
class _CloseSocket:
    """Outbox marker: flush everything before me, then close the WebSocket."""

    code: int
    reason: str
    wait_for_peer: float = 0.0  # let the client close first, up to this long


class SignalLink(enum.Enum):
    """Whether a signal connection serves the participant (ParticipantState is what the room sees)."""

    CONNECTED = "connected"
    AWAITING_RESUME = "awaiting_resume"  # lost, not left: the media goes on, others see no change
    ENDED = "ended"


@attrs.define(eq=False)
class SignalConnection:
    """One WebSocket whose upgrade waits in `stream`, serving (or about to serve) a participant.
    A participant serves one at a time; `ended` is set once it is done with it (served and
    closed, superseded by a newer resume, or never served because the participant left), which
    is when the HTTP task that handed it over may return."""

    stream: trio.abc.Stream
    resume: bool = False
    ended: trio.Event = attrs.field(factory=trio.Event)
    # While served: cancelling it ends this connection's tasks, not the participant.
    scope: trio.CancelScope | None = None


@attrs.define
class JoinOptions:
    """Per-connection options: from the `/rtc` query string, or from `/rtc/v1`'s JoinRequest."""

    auto_subscribe: bool = True
    adaptive_stream: bool = False
    protocol: int = 0
    client_info: models.ClientInfo = attrs.field(factory=models.ClientInfo)
    # A resume (`reconnect=1`, `sid`, `reconnect_reason`; in v1 the JoinRequest's fields).
    reconnect: bool = False
    participant_sid: str = ""
    reconnect_reason: int = 0
    # `/rtc/v1`: one peer connection both ways, offered by the client — its first offer comes
    # with the join, and so may its first add_track requests.
    single_peer_connection: bool = False
    publisher_offer: Optional[rtc.SessionDescription] = None
    add_track_requests: tuple[rtc.AddTrackRequest, ...] = ()


def now_ms() -> int:
    return int(time.time() * 1000)


class ParticipantRoom(Protocol):
    """The room as a participant sees it (`trio_sfu.signal.rooms.Room` implements it)."""

    name: str
    sid: str

    def new_sid(self, prefix: str) -> str: ...

    def emit(self, event: str, participant: "Participant", track: models.TrackInfo | None = None) -> None:
        """Tell the room's observers (webhooks) about a track or participant event."""

    def announce(self, participant: "Participant") -> None: ...

    def broadcast_participant(self, participant: "Participant", *, include_self: bool = False) -> None: ...

    def on_participant_closed(self, participant: "Participant", *, migrated: bool = False) -> None: ...

    def track_ids(self) -> set[str]:
        """Every track published in the room now, on this node and the others."""

    def others(self, participant: "Participant") -> list[models.ParticipantInfo]:
        """Everyone else in the room that `participant` may see."""

    def to_proto(self) -> models.Room: ...

    def reconnect_response(self, participant: "Participant") -> rtc.ReconnectResponse:
        """What a participant resuming here hears first."""


class Participant:
    def __init__(
        self,
        room: ParticipantRoom,
        sid: str,
        grants: ClaimGrants,
        options: JoinOptions,
        metrics: m.Metrics,
        media_factory: MediaSessionFactory,
        limits: SignalLimits | None = None,
    ) -> None:
        self.room = room
        self.sid = sid
        self.identity = grants.identity
        self.grants = grants
        self.options = options
        self.metrics = metrics
        self.limits = limits or SignalLimits()
        self.state = ParticipantState.JOINING
        self.name = grants.name
        self.metadata = grants.metadata
        self.attributes: dict[str, str] = dict(grants.attributes)
        self.joined_at = time.time()
        self.version = 0
        self.announced = False
        self.disconnect_reason = models.DisconnectReason.UNKNOWN_REASON
        self.tracks: dict[str, models.TrackInfo] = {}
        self.track_by_cid: dict[str, str] = {}
        # Set when this participant migrated here from another node (trio_sfu.cluster.node_relay.MigrationIn).
        self.migrated_in: Optional[MigratedParticipant] = None
        # Recorded for the media layer: track sid -> wanted, and the latest settings per track.
        self.subscriptions: dict[str, bool] = {}
        self.track_settings: dict[str, rtc.UpdateTrackSettings] = {}
        # Server-originated DataPackets that arrived before the media session existed.
        self.undelivered_data: collections.deque[tuple[models.DataPacket, int]] = collections.deque(
            maxlen=MAX_UNDELIVERED_DATA
        )
        self.log = _log.bind(room=room.name, participant=sid, identity=self.identity)
        self._outbox = SignalOutbox(OUTBOX_MAX_MESSAGES, OUTBOX_MAX_BYTES)
        self._rate = RequestRateLimiter(trio.current_time())
        self._scope: trio.CancelScope | None = None
        self._cancel_requested = False
        self._last_seen = 0.0
        self._media: MediaSession | None = None
        self._media_factory = media_factory
        self.finished = trio.Event()
        self._peer_hung_up = trio.Event()
        # Signal connections: the one being served, at most one resume waiting to be, and how
        # long the participant may wait for one after losing its connection.
        self.link = SignalLink.CONNECTED
        self.resume_window = RESUME_WINDOW
        self.resumes = 0
        self._connection: SignalConnection | None = None
        self._pending_resume: SignalConnection | None = None
        self._resume_arrived = trio.Event()
        self._resume_deadline = float("inf")

    def adopt_migration(self, migrated_in: MigratedParticipant) -> None:
        """Take over the state a participant had on the node it migrated from: its published
        tracks (same sids), the client's cids for them, what it subscribed to, who it is."""
        info = migrated_in.info
        self.migrated_in = migrated_in
        self.name = info.name
        self.metadata = info.metadata
        self.attributes = dict(info.attributes)
        self.tracks = {t.sid: t for t in info.tracks}
        # Clients drop a ParticipantUpdate older than what they have: continue the numbering.
        self.version = info.version
        self.track_by_cid = dict(migrated_in.track_by_cid)
        self.subscriptions = {track_id: True for track_id in migrated_in.subscriptions}
        self.subscriptions.update(migrated_in.explicit_subscriptions)

    # ---- state exposed to the room ------------------------------------------------------

    @property
    def hidden(self) -> bool:
        return bool(self.grants.video and self.grants.video.hidden)

    @property
    def is_closed(self) -> bool:
        return self.state is ParticipantState.DISCONNECTED

    @property
    def backlog(self) -> tuple[int, int]:
        """Messages and bytes queued for this client, not yet handed to its socket."""
        return len(self._outbox), self._outbox.queued_bytes

    def bump_version(self) -> None:
        self.version += 1

    def _transition(self, new: ParticipantState) -> None:
        allowed = _TRANSITIONS[self.state]
        assert new in allowed, f"participant {self.sid}: {self.state.name} -> {new.name} is not a transition"
        self.state = new

    def to_info(self) -> models.ParticipantInfo:
        permission = self.grants.video.to_permission() if self.grants.video else models.ParticipantPermission()
        return models.ParticipantInfo(
            sid=self.sid,
            identity=self.identity,
            state=self.state.value,
            tracks=list(self.tracks.values()),
            metadata=self.metadata,
            joined_at=int(self.joined_at),
            joined_at_ms=int(self.joined_at * 1000),
            name=self.name,
            version=self.version,
            permission=permission,
            is_publisher=bool(self.tracks),
            kind=self.grants.participant_kind,
            attributes=self.attributes,
            disconnect_reason=self.disconnect_reason,
            client_protocol=self.options.client_info.client_protocol,
        )

    # ---- outgoing -----------------------------------------------------------------------

    def send(self, response: rtc.SignalResponse) -> None:
        """Queue a response without blocking; a client too slow to drain its queue is dropped.
        A subscriber offer replaces one still unsent: each offer describes the whole PC and
        supersedes the last (only the newest is awaited), which matters most while no signal
        connection drains the queue (waiting for a resume)."""
        key = _SUBSCRIBER_OFFER if response.HasField("offer") else None
        self.send_encoded(encode_response(response), coalesce_key=key)

    def send_encoded(self, frame: bytes, coalesce_key: Hashable | None = None) -> None:
        """Queue an already serialized SignalResponse (broadcasts encode once for everyone).
        A frame with a `coalesce_key` replaces a queued, unsent one with the same key."""
        if self.is_closed:
            return
        if not self._outbox.put(frame, coalesce_key):
            self.metrics.inc(m.SIGNAL_SEND_OVERFLOW)
            self.log.warning("signal queue over its bounds, disconnecting slow client",
                             kv={"messages": len(self._outbox), "bytes": self._outbox.queued_bytes})
            # The backlog is useless to a client we drop; free it now rather than after the grace.
            self._outbox.clear()
            self.close(models.DisconnectReason.SIGNAL_CLOSE, send_leave=False)

    def send_participant_update(self, participant_sid: str, frame: bytes) -> None:
        """Queue a ParticipantUpdate about one participant: it carries that participant's whole
        state, so it replaces an update about the same participant still waiting to be sent."""
        self.send_encoded(frame, coalesce_key=("participant", participant_sid))

    def close(
        self,
        reason: int = models.DisconnectReason.UNKNOWN_REASON,
        *,
        send_leave: bool = True,
        action: int = rtc.LeaveRequest.Action.DISCONNECT,
        ws_code: int = 1000,
        ws_reason: str = "",
        regions: rtc.RegionSettings | None = None,
    ) -> None:
        """End the session (idempotent): leave the room, optionally tell the client why, cancel."""
        if self.is_closed:
            return
        self._transition(ParticipantState.DISCONNECTED)
        self.disconnect_reason = reason
        self.bump_version()
        migrated = reason == models.DisconnectReason.MIGRATION and action == rtc.LeaveRequest.Action.RESUME
        self.room.on_participant_closed(self, migrated=migrated)
        # Media stops with the session, not after the signal goodbye's grace period.
        if self._media is not None:
            self._media.close()
        if send_leave:
            self._outbox.put_final(
                encode_response(rtc.SignalResponse(leave=rtc.LeaveRequest(reason=reason, action=action, regions=regions)))
            )
        self._outbox.put_final(_CloseSocket(ws_code, ws_reason or models.DisconnectReason.Name(reason),
                                            RESUME_HANGUP_WAIT if migrated and send_leave else 0.0))
        self._outbox.close()
        self._resume_arrived.set()  # a participant waiting for a resume stops waiting
        self._request_cancel(grace=CLOSE_GRACE)

    def _request_cancel(self, grace: float) -> None:
        self._cancel_requested = True
        if self._scope is None:
            # Not running yet; run() applies the grace period when it starts.
            return
        if grace <= 0:
            self._scope.cancel()
        else:
            self._scope.deadline = min(self._scope.deadline, trio.current_time() + grace)

    # ---- the session --------------------------------------------------------------------

    async def run(self, stream: trio.abc.Stream, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve this participant until it leaves: its first WebSocket, then each resume."""
        try:
            with trio.CancelScope() as scope:
                self._scope = scope
                if self._cancel_requested:
                    scope.deadline = trio.current_time() + CLOSE_GRACE
                async with trio.open_nursery() as nursery:
                    task_status.started()
                    await self._serve_connections(nursery, SignalConnection(stream))
                    # Left: the media session (and anything else of ours) ends now.
                    nursery.cancel_scope.cancel()
        except Exception:
            # A bug in one session must not take the room (and the server) down with it.
            self.metrics.inc(m.SIGNAL_SESSION_CRASHED)
            self.log.exception("signal session crashed")
        finally:
            # Whatever ended the session, the room must forget us (no-op if close() ran).
            self.close(models.DisconnectReason.SIGNAL_CLOSE, send_leave=False)
            self.link = SignalLink.ENDED
            pending, self._pending_resume = self._pending_resume, None
            if pending is not None:
                pending.ended.set()  # never served: its HTTP task closes it
            self.finished.set()
            self.log.info("session ended", kv={"reason": models.DisconnectReason.Name(self.disconnect_reason)})

    async def _serve_connections(self, nursery: trio.Nursery, connection: SignalConnection) -> None:
        """One signal connection at a time. A connection lost while the media is up (not a
        leave) keeps the participant in the room, unseen by the others, for the resume window;
        a resume (`offer_resume`) serves the next one. Without media, or once the window passed,
        the participant leaves."""
        while True:
            await self._serve_connection(nursery, connection)
            if self.is_closed:
                return
            if self._pending_resume is None:
                if self._media is None or not self._media.resumable():
                    # Nothing outlives the signal connection (LiveKit: ICE never connected).
                    self.close(models.DisconnectReason.SIGNAL_CLOSE, send_leave=False)
                    return
                if self.link is SignalLink.CONNECTED:
                    self.metrics.inc(m.SIGNAL_CONNECTION_LOST)
                    self.log.info("signal connection lost, waiting for a resume",
                                  kv={"window_s": self.resume_window})
                    self._resume_deadline = trio.current_time() + self.resume_window
                self.link = SignalLink.AWAITING_RESUME
            next_connection = await self._await_resume()
            if self.is_closed:
                if next_connection is not None:
                    next_connection.ended.set()
                return
            if next_connection is None:
                self.metrics.inc(m.SIGNAL_RESUME_EXPIRED)
                self.log.info("no resume within the window, leaving")
                self.close(models.DisconnectReason.SIGNAL_CLOSE, send_leave=False)
                return
            connection = next_connection

    async def _await_resume(self) -> SignalConnection | None:
        """The pending resume, waiting for one until the window's end; None if none came."""
        if self._pending_resume is None and not self.is_closed:
            with trio.move_on_at(self._resume_deadline):
                await self._resume_arrived.wait()
        self._resume_arrived = trio.Event()
        connection, self._pending_resume = self._pending_resume, None
        return connection

    def offer_resume(self, stream: trio.abc.Stream) -> SignalConnection | None:
        """A resume (`reconnect=1`, this sid, a token for this identity and room) whose WebSocket
        upgrade waits in `stream`: it becomes the participant's next signal connection and the
        caller waits for its `ended`. The newest resume wins: one still pending, or the
        connection being served (half-open, or an earlier resume), is closed. None when there
        is nothing to resume (the participant left, its session is not set up yet, or its media
        cannot be resumed)."""
        if self.is_closed or self.link is SignalLink.ENDED or self.state is ParticipantState.JOINING:
            return None  # nothing to resume, or its first connection is still setting it up
        if self._media is None or not self._media.resumable():
            # A PC died (or none ever came up): an ICE restart cannot bring it back. LiveKit's
            # full reconnect: the participant leaves, told why on a connection still up, and
            # the resume is refused; the client joins anew.
            self.log.info("resume with no media to resume, full reconnect")
            self.close(models.DisconnectReason.STATE_MISMATCH, send_leave=True,
                       action=rtc.LeaveRequest.Action.RECONNECT)
            return None
        connection = SignalConnection(stream, resume=True)
        superseded = self._pending_resume
        if superseded is not None:
            self.metrics.inc(m.SIGNAL_RESUME_SUPERSEDED)
            superseded.ended.set()
        self._pending_resume = connection
        current = self._connection
        if current is not None and current.scope is not None:
            self.metrics.inc(m.SIGNAL_RESUME_SUPERSEDED)
            self.log.info("resume while a signal connection is up: it gives way")
            current.scope.cancel()
        self._resume_arrived.set()
        return connection

    async def _serve_connection(self, nursery: trio.Nursery, connection: SignalConnection) -> None:
        """One WebSocket, in a scope of its own: its tasks (trio-websocket's reader, our writer,
        the ping timer) end with it; the participant's media (in `nursery`) does not."""
        self._connection = connection
        try:
            with trio.CancelScope() as connection.scope:
                async with trio.open_nursery() as tasks:
                    try:
                        request = await trio_websocket.wrap_server_stream(
                            tasks, connection.stream, message_queue_size=4, max_message_size=MAX_WS_MESSAGE
                        )
                        ws = await request.accept()
                    except (trio_websocket.ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                        self.metrics.inc(m.SIGNAL_HANDSHAKE_FAILED)
                        self.log.warning("websocket handshake failed",
                                         kv={"error": exc.__class__.__name__, "resume": connection.resume})
                        if self._media is None:
                            self.close(models.DisconnectReason.SIGNAL_CLOSE, send_leave=False)
                        tasks.cancel_scope.cancel()
                        return
                    first = self._media is None
                    if first:
                        await self._start_media(nursery)
                    elif not self.is_closed:
                        self._rebind(connection)
                    self._last_seen = trio.current_time()
                    self._peer_hung_up = trio.Event()
                    tasks.start_soon(self._writer, ws, connection)
                    tasks.start_soon(self._ping_timer, connection)
                    if first and not self.is_closed:
                        self._transition(ParticipantState.JOINED)
                        self.bump_version()
                        self.room.announce(self)
                        # `/rtc/v1` carries the first requests in the join: served as if they
                        # came first on the socket.
                        for add_track in self.options.add_track_requests:
                            if not self.is_closed:
                                await self.handle_request(rtc.SignalRequest(add_track=add_track))
                        if self.options.publisher_offer is not None and not self.is_closed:
                            await self.handle_request(rtc.SignalRequest(offer=self.options.publisher_offer))
                    await self._reader(ws)
                    if not self.is_closed:
                        # Lost, not left: what is queued waits for the next connection.
                        tasks.cancel_scope.cancel()
                    # Otherwise the writer flushes the goodbye and ends the connection itself.
        finally:
            if self._connection is connection:
                self._connection = None
            connection.scope = None
            with trio.CancelScope(shield=True):
                with trio.move_on_after(1):
                    await connection.stream.aclose()
            connection.ended.set()

    async def _start_media(self, nursery: trio.Nursery) -> None:
        media = self._media = self._media_factory(
            MediaContext(room_name=self.room.name, room_sid=self.room.sid, participant=self,
                         auto_subscribe=self.options.auto_subscribe,
                         single_peer_connection=self.options.single_peer_connection)
        )
        # The media session's tasks are children of this participant's nursery: they end with
        # the participant, not with a signal connection.
        await nursery.start(media.run)
        while self.undelivered_data:
            media.deliver_data(*self.undelivered_data.popleft())

    def _rebind(self, connection: SignalConnection) -> None:
        """A resumed connection is up: LiveKit's order — `reconnect` first, then everyone's
        current state (coalescing with what waited in the outbox), then the subscriber offer
        that restarts ICE. What was queued while no connection served us follows in order."""
        self.link = SignalLink.CONNECTED
        self._resume_deadline = float("inf")
        self.resumes += 1
        self.metrics.inc(m.SIGNAL_RESUMED)
        self.log.info("resumed on a new signal connection", kv={"resumes": self.resumes})
        self._outbox.put_front(encode_response(rtc.SignalResponse(reconnect=self.room.reconnect_response(self))))
        infos = [self.to_info(), *self.room.others(self)]
        for info in infos:
            self.send_participant_update(info.sid, encode_response(
                rtc.SignalResponse(update=rtc.ParticipantUpdate(participants=[info]))))
        self.send(rtc.SignalResponse(room_update=rtc.RoomUpdate(room=self.room.to_proto())))
        assert self._media is not None
        self._media.resumed()

    async def _writer(self, ws: trio_websocket.WebSocketConnection, connection: SignalConnection) -> None:
        while True:
            try:
                item = await self._outbox.get()
            except trio.EndOfChannel:
                break
            if isinstance(item, _CloseSocket):
                if item.wait_for_peer:
                    with trio.move_on_after(item.wait_for_peer):
                        await self._peer_hung_up.wait()
                with trio.move_on_after(CLOSE_GRACE / 2):
                    await ws.aclose(item.code, item.reason[:120])
                break
            try:
                await ws.send_message(item)
            except trio_websocket.ConnectionClosed:
                break
        if connection.scope is not None:
            connection.scope.cancel()

    async def _ping_timer(self, connection: SignalConnection) -> None:
        while True:
            deadline = self._last_seen + PING_TIMEOUT
            if trio.current_time() >= deadline:
                self.metrics.inc(m.SIGNAL_PING_TIMEOUT)
                self.log.info("ping timeout")
                if self._media is not None and self._media.resumable():
                    # The connection is dead, the media is not: wait for the client to resume.
                    if connection.scope is not None:
                        connection.scope.cancel()
                else:
                    self.close(models.DisconnectReason.CONNECTION_TIMEOUT, send_leave=True, ws_code=1001)
                return
            await trio.sleep_until(deadline)

    async def _reader(self, ws: trio_websocket.WebSocketConnection) -> None:
        while True:
            try:
                message = await ws.get_message()
            except trio_websocket.ConnectionClosed as exc:
                self._peer_hung_up.set()
                if exc.reason is not None and exc.reason.code == 1009:
                    self.metrics.inc(m.SIGNAL_OVERSIZE)
                    self.log.warning("signal message too large, closed", kv={"limit": MAX_WS_MESSAGE})
                    self.close(models.DisconnectReason.SIGNAL_CLOSE, send_leave=False)
                # Otherwise the connection was lost, not left (a leave is a request): the
                # participant waits for a resume if its media is up (_serve_connections).
                return
            if self.is_closed:
                continue  # a closed session only waits for the client to hang up
            self._last_seen = trio.current_time()
            if isinstance(message, str):
                # LiveKit's Go server would switch to protobuf-JSON; current SDKs never send text.
                self.metrics.inc(m.SIGNAL_TEXT_FRAME)
                self.log.warning("text frame refused")
                self.close(
                    models.DisconnectReason.SIGNAL_CLOSE,
                    send_leave=False,
                    ws_code=1003,
                    ws_reason="text frames not supported: send binary protobuf SignalRequest",
                )
                return
            try:
                request = decode_request(message)
            except SignalDecodeError as exc:
                self.metrics.inc(m.SIGNAL_MALFORMED)
                self.log.warning("malformed signal message, closing", kv={"error": str(exc), "size": len(message)})
                self.close(
                    models.DisconnectReason.SIGNAL_CLOSE, send_leave=False, ws_code=1007, ws_reason=str(exc)
                )
                return
            kind = request_kind(request)
            verdict = self._rate.check(kind, self._last_seen)
            if verdict is not Verdict.ADMIT:
                self._throttle(kind, request, verdict)
                continue
            await self.handle_request(request)

    def _throttle(self, kind: str | None, request: rtc.SignalRequest, verdict: Verdict) -> None:
        """A request over its kind's rate: dropped and answered LIMIT_EXCEEDED; a sender that
        keeps on is disconnected. Only the sender is affected."""
        self.metrics.inc(m.SIGNAL_RATE_LIMITED)
        if verdict is Verdict.DISCONNECT:
            self.metrics.inc(m.SIGNAL_RATE_LIMIT_DISCONNECT)
            self.log.warning("signal requests over their rate limit, disconnecting",
                             kv={"kind": kind, "throttled": self._rate.throttled})
            self.close(models.DisconnectReason.SIGNAL_CLOSE, send_leave=True, ws_code=1008,
                       ws_reason="signal request rate limit exceeded")
            return
        if self._rate.throttled == 1:
            self.log.warning("signal requests over their rate limit, throttling", kv={"kind": kind})
        message = getattr(request, kind) if kind is not None else None
        request_id = getattr(message, "request_id", 0) if message is not None else 0
        self.send(rtc.SignalResponse(request_response=rtc.RequestResponse(
            request_id=request_id, reason=rtc.RequestResponse.Reason.LIMIT_EXCEEDED,
            message=f"too many {kind or 'unknown'} requests")))

    # ---- request handling ---------------------------------------------------------------

    async def handle_request(self, request: rtc.SignalRequest) -> None:
        kind = request_kind(request)
        if kind is None:
            # Unknown oneof (a newer client) or an empty message: ignore, as LiveKit does.
            self.metrics.inc(m.SIGNAL_UNKNOWN_MESSAGE)
            self.log.info("ignored signal request without a known message", kv={"size": request.ByteSize()})
            return
        handler = self.HANDLERS.get(kind)
        if handler is None:
            self.log.debug("signal request accepted without action", kv={"kind": kind})
            return
        await handler(self, getattr(request, kind))

    async def _on_ping(self, _timestamp: int) -> None:
        self.send(rtc.SignalResponse(pong=now_ms()))

    async def _on_ping_req(self, ping: rtc.Ping) -> None:
        self.send(rtc.SignalResponse(pong_resp=rtc.Pong(last_ping_timestamp=ping.timestamp, timestamp=now_ms())))

    async def _on_leave(self, leave: rtc.LeaveRequest) -> None:
        self.log.info("client leave", kv={"reason": leave.reason})
        self.close(models.DisconnectReason.CLIENT_INITIATED, send_leave=False)

    def _deny(self, reason: int, message: str, **echo: Any) -> None:
        self.metrics.inc(m.SIGNAL_REQUEST_DENIED)
        self.log.info("signal request denied", kv={"why": message})
        self.send(rtc.SignalResponse(request_response=rtc.RequestResponse(reason=reason, message=message, **echo)))

    def _refuse(self, refusal: Refusal, **echo: Any) -> None:
        """A request over one of the signal limits: answered with the refusal, and counted."""
        self.metrics.inc(m.SIGNAL_LIMIT_EXCEEDED)
        self.log.info("signal request over a limit", kv={"why": refusal.message})
        self.send(rtc.SignalResponse(request_response=rtc.RequestResponse(
            reason=refusal.reason, message=refusal.message, **echo)))

    async def _on_add_track(self, req: rtc.AddTrackRequest) -> None:
        # The echo names the request by cid and kind only: the request itself may be huge.
        echo = rtc.AddTrackRequest(cid=req.cid[:256], type=req.type, source=req.source)
        refusal = self.limits.check_add_track(req)
        if refusal is not None:
            self._refuse(refusal, add_track=echo)
            return
        video = self.grants.video
        if video is None or not video.may_publish_source(req.source):
            self._deny(rtc.RequestResponse.Reason.NOT_ALLOWED, "not allowed to publish this source", add_track=echo)
            return
        if req.type not in (models.TrackType.AUDIO, models.TrackType.VIDEO):
            self._deny(rtc.RequestResponse.Reason.UNSUPPORTED_TYPE, "only audio and video tracks", add_track=echo)
            return
        if not source_matches_type(req.source, req.type):
            self._deny(rtc.RequestResponse.Reason.INVALID_REQUEST,
                       f"a {models.TrackType.Name(req.type)} track cannot have source "
                       f"{models.TrackSource.Name(req.source)}", add_track=echo)
            return
        existing = self.track_by_cid.get(req.cid)
        if existing is not None:
            # A retried add_track: answer with what was already allocated.
            self.send(rtc.SignalResponse(track_published=rtc.TrackPublishedResponse(cid=req.cid, track=self.tracks[existing])))
            return
        refusal = self.limits.check_track_count(len(self.tracks))
        if refusal is not None:
            self._refuse(refusal, add_track=echo)
            return
        track = track_info_from_request(req, self.room.new_sid("TR_A" if req.type == models.TrackType.AUDIO else "TR_V"))
        self.tracks[track.sid] = track
        self.track_by_cid[req.cid] = track.sid
        self.send(rtc.SignalResponse(track_published=rtc.TrackPublishedResponse(cid=req.cid, track=track)))
        self.room.emit("track_published", self, track)
        # The room lists a track as soon as it is published (subscribers' media follows once its
        # first packets arrive); LiveKit instead waits for the first packet before listing it.
        self.bump_version()
        self.room.broadcast_participant(self)

    async def _on_mute(self, req: rtc.MuteTrackRequest) -> None:
        if self.set_track_muted(req.sid, req.muted, from_admin=False) is None:
            self._deny(rtc.RequestResponse.Reason.NOT_FOUND, "track not found",
                       mute=rtc.MuteTrackRequest(sid=req.sid[:256], muted=req.muted))

    # ---- server-side changes (the Server API acts through these) ------------------------

    def set_track_muted(self, track_sid: str, muted: bool, *, from_admin: bool) -> models.TrackInfo | None:
        """Mute/unmute a published track; None if there is no such track.

        An admin's change is also told to the publisher (`mute`), whose SDK then mutes locally.
        """
        track = self.tracks.get(track_sid)
        if track is None:
            return None
        if from_admin:
            self.send(rtc.SignalResponse(mute=rtc.MuteTrackRequest(sid=track_sid, muted=muted)))
        if track.muted != muted:
            track.muted = muted
            self.bump_version()
            if self._media is not None:
                self._media.track_muted(track)
            self.room.broadcast_participant(self)
        return track

    def unpublish_track(self, track_sid: str) -> models.TrackInfo | None:
        """Unpublish a track: by the server (the Server API revoked the permission) or because
        the media layer saw the client stop sending it. The publisher gets `track_unpublished`,
        the others an update without it; then the hooks (the media layer drops its forwarding,
        so subscribers' offers without the track follow the update, as LiveKit orders them)."""
        track = self.tracks.pop(track_sid, None)
        if track is None:
            return None
        for cid, sid in list(self.track_by_cid.items()):
            if sid == track_sid:
                del self.track_by_cid[cid]
        self.send(rtc.SignalResponse(track_unpublished=rtc.TrackUnpublishedResponse(track_sid=track_sid)))
        self.bump_version()
        self.room.emit("track_unpublished", self, track)
        self.room.broadcast_participant(self)
        if self._media is not None:
            self._media.track_unpublished(track)
        return track

    def deliver_data(self, packet: models.DataPacket, kind: int) -> None:
        """Send a server-originated DataPacket on the `kind` (RELIABLE/LOSSY) channel."""
        if self.is_closed:
            return
        if self._media is not None:
            self._media.deliver_data(packet, kind)
        else:
            self.undelivered_data.append((packet, kind))

    async def _on_update_metadata(self, req: rtc.UpdateParticipantMetadata) -> None:
        video = self.grants.video
        if video is None or not video.may_update_own_metadata:
            self._deny(
                rtc.RequestResponse.Reason.NOT_ALLOWED,
                "not allowed to update own metadata",
                request_id=req.request_id,
                # Which request, not what it carried: that may be up to a whole signal message.
                update_metadata=rtc.UpdateParticipantMetadata(request_id=req.request_id),
            )
            return
        refusal = self.limits.check_participant_update(req.name, req.metadata, req.attributes, self.attributes)
        if refusal is not None:
            self._refuse(refusal, request_id=req.request_id,
                         update_metadata=rtc.UpdateParticipantMetadata(request_id=req.request_id))
            return
        if req.metadata:
            self.metadata = req.metadata
        if req.name:
            self.name = req.name
        # LiveKit semantics: an empty value deletes the attribute.
        self.attributes = merge_attributes(self.attributes, req.attributes)
        self.bump_version()
        self.room.broadcast_participant(self, include_self=True)
        if req.request_id:
            self.send(rtc.SignalResponse(request_response=rtc.RequestResponse(request_id=req.request_id, reason=rtc.RequestResponse.Reason.OK)))

    def _check_track_ids(self, track_ids: list[str], known: set[str]) -> Refusal | None:
        """A request naming tracks: not too many, and few that are not in the room."""
        refusal = self.limits.check_track_ids(len(track_ids))
        if refusal is None and sum(1 for sid in set(track_ids) if sid not in known) > self.limits.max_pending_track_ids:
            refusal = Refusal(rtc.RequestResponse.Reason.LIMIT_EXCEEDED,
                              f"at most {self.limits.max_pending_track_ids} tracks not in the room may be named")
        return refusal

    def _remember_bounded(self, mapping: dict[str, Any], track_ids: list[str], value: Any, known: set[str]) -> None:
        forgotten = assign_bounded(mapping, track_ids, value, known, self.limits.max_pending_track_ids)
        if forgotten:
            self.metrics.inc(m.SIGNAL_PENDING_TRACK_IDS_FORGOTTEN, forgotten)

    def update_subscription(self, req: rtc.UpdateSubscription, *, from_server: bool = False) -> Refusal | None:
        """Record which tracks the client wants (UpdateSubscription, or the Server API's
        UpdateSubscriptions); a refusal changes nothing. The server's own revocations
        (`from_server`) may name every track of a large room at once."""
        sids = list(req.track_sids)
        for pt in req.participant_tracks:
            sids.extend(pt.track_sids)
        known = self.room.track_ids()
        if not from_server:
            refusal = self._check_track_ids(sids, known)
            if refusal is not None:
                return refusal
        self._remember_bounded(self.subscriptions, sids, req.subscribe, known)
        if self._media is not None:
            self._media.subscriptions_changed()
        return None

    async def _on_subscription(self, req: rtc.UpdateSubscription) -> None:
        refusal = self.update_subscription(req)
        if refusal is not None:
            self._refuse(refusal)

    async def _on_track_setting(self, req: rtc.UpdateTrackSettings) -> None:
        sids = list(dict.fromkeys(req.track_sids))
        known = self.room.track_ids()
        refusal = self._check_track_ids(sids, known)
        if refusal is not None:
            self._refuse(refusal)
            return
        # One settings object for every track the request names (readers never modify it).
        settings = rtc.UpdateTrackSettings()
        settings.CopyFrom(req)
        settings.ClearField("track_sids")
        self._remember_bounded(self.track_settings, sids, settings, known)
        if self._media is not None:
            self._media.track_settings_changed([sid for sid in sids if sid in self.track_settings])

    async def _on_offer(self, offer: rtc.SessionDescription) -> None:
        assert self._media is not None
        refusal = check_sdp(offer.sdp)
        if refusal is not None:
            self._refuse(refusal, request_id=offer.id)
            return
        await self._media.handle_publisher_offer(offer)

    async def _on_answer(self, answer: rtc.SessionDescription) -> None:
        assert self._media is not None
        refusal = check_sdp(answer.sdp)
        if refusal is not None:
            self._refuse(refusal, request_id=answer.id)
            return
        await self._media.handle_subscriber_answer(answer)

    async def _on_trickle(self, trickle: rtc.TrickleRequest) -> None:
        assert self._media is not None
        refusal = check_candidate(trickle.candidateInit)
        if refusal is not None:
            self._refuse(refusal, trickle=rtc.TrickleRequest(target=trickle.target, final=trickle.final))
            return
        await self._media.handle_trickle(trickle.candidateInit, trickle.target, trickle.final)

    async def _on_sync_state(self, state: rtc.SyncState) -> None:
        """After a resume the client says what it has (LiveKit's onSyncState). A published track
        the server does not know means the two sides disagree: a full reconnect (leave with
        RECONNECT, STATE_MISMATCH). Otherwise the tracks it has disabled get that setting and its
        subscription choices are applied. Its PCs' descriptions and data channels need nothing:
        both PCs and their associations outlived the signal connection here."""
        refusal = self.limits.check_track_ids(len(state.publish_tracks))
        if refusal is not None:
            self._refuse(refusal)
            return
        for published in state.publish_tracks:
            if not published.HasField("track") or published.track.sid not in self.tracks:
                self.metrics.inc(m.SIGNAL_SYNC_STATE_MISMATCH)
                self.log.warning("sync state names a track not published here, full reconnect",
                                 kv={"track": published.track.sid[:64]})
                self.close(models.DisconnectReason.STATE_MISMATCH, send_leave=True,
                           action=rtc.LeaveRequest.Action.RECONNECT)
                return
        disabled = list(dict.fromkeys(state.track_sids_disabled))
        if disabled:
            known = self.room.track_ids()
            refusal = self._check_track_ids(disabled, known)
            if refusal is not None:
                self._refuse(refusal)
                return
            self._remember_bounded(self.track_settings, disabled, rtc.UpdateTrackSettings(disabled=True), known)
            if self._media is not None:
                self._media.track_settings_changed([sid for sid in disabled if sid in self.track_settings])
        if state.HasField("subscription"):
            refusal = self.update_subscription(state.subscription)
            if refusal is not None:
                self._refuse(refusal)

    #: SignalRequest oneof field -> its handler; a kind not listed is accepted without action.
    HANDLERS: dict[str, Callable[["Participant", Any], Awaitable[None]]] = {
        "ping": _on_ping,
        "ping_req": _on_ping_req,
        "leave": _on_leave,
        "add_track": _on_add_track,
        "mute": _on_mute,
        "update_metadata": _on_update_metadata,
        "subscription": _on_subscription,
        "track_setting": _on_track_setting,
        "offer": _on_offer,
        "answer": _on_answer,
        "trickle": _on_trickle,
        "sync_state": _on_sync_state,
    }


def track_info_from_request(req: rtc.AddTrackRequest, sid: str) -> models.TrackInfo:
    """The TrackInfo LiveKit announces for an add_track: the request's description under a new sid."""
    codecs = [
        models.SimulcastCodecInfo(
            mime_type=_mime_for(req.type, c.codec), cid=c.cid, layers=list(c.layers), video_layer_mode=c.video_layer_mode
        )
        for c in req.simulcast_codecs
    ]
    return models.TrackInfo(
        sid=sid,
        type=req.type,
        name=req.name,
        muted=req.muted,
        width=req.width,
        height=req.height,
        simulcast=len(req.layers) > 1,
        disable_dtx=req.disable_dtx,
        source=req.source,
        layers=list(req.layers),
        mime_type=codecs[0].mime_type if codecs else "",
        codecs=codecs,
        stereo=req.stereo,
        disable_red=req.disable_red,
        encryption=req.encryption,
        stream=req.stream,
        audio_features=list(req.audio_features),
        backup_codec_policy=req.backup_codec_policy,
        packet_trailer_features=list(req.packet_trailer_features),
    )


def _mime_for(track_type: int, codec: str) -> str:
    if not codec:
        return ""
    if "/" in codec:
        return codec
    return ("audio/" if track_type == models.TrackType.AUDIO else "video/") + codec


__all__ = ["Participant", "ParticipantState", "JoinOptions", "SignalConnection", "SignalLink", "RESUME_WINDOW", "track_info_from_request", "PING_INTERVAL", "PING_TIMEOUT"]
