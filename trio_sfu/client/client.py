"""A LiveKit client on Trio and our own sans-IO stack: the facade over its parts.

Dual-PC ("v0", ``/rtc``, as livekit-client speaks it with ``singlePeerConnection: false``): the
server offers on the subscriber PC, we offer on the publisher PC; both PCs run ICE controlling
against the ICE-lite SFU.
:class:`LiveKitClient` is one participant, composed of parts of one idea each:

* :class:`~trio_sfu.client.signal_connection.SignalConnection` — the WebSocket to the node we are
  on, pings, requests held back during a move;
* :class:`~trio_sfu.client.publisher.Publisher` — publications, the publisher PC and its offers;
* :class:`~trio_sfu.client.subscriber.Subscriber` — the subscriber PC answered from the server's
  offers, remote tracks, reception statistics;
* :class:`~trio_sfu.client.resume.ResumeFollower` — following ``leave{action=RESUME}`` to
  another node (see :meth:`LiveKitClient.wait_resumed`).

The facade owns the lifetime (one nursery, opened by :meth:`LiveKitClient.connect` and closed
when its ``async with`` ends: the signal reader, the ping loop, the negotiation loop, the RTCP
clock, one loop per PC socket), routes each signal response to the part it concerns
(:meth:`LiveKitClient._dispatch`), and keeps what is the room's (other participants) and the
session's (errors, why we left)::

    async with LiveKitClient.connect(url, token, bind_host="127.0.0.1") as client:
        audio = await client.publish_audio()
        await audio.wait_ready()
        audio.send_rtp(payload, timestamp=960)
        async for track in client.tracks():   # RemoteTrack, as subscribed
            ...

Where the bytes go is injectable, so whole clients and servers can run in one Trio run under
``MockClock`` (``trio_sfu.testing.memory_network``): ``connector`` opens the stream the
signalling WebSocket runs over (default: TCP, or TLS for ``wss://``, by trio-websocket), and
``bind_datagram`` the PCs' datagram sockets (default: the kernel's UDP).

Two seams are for observers (tests wrap them on an instance before the client handles anything):
``_dispatch`` sees every signal response the reader takes, and ``_on_subscriber_rtp`` every RTP
packet the subscriber PC decrypted (read when that PC is opened).
"""

from __future__ import annotations

import contextlib
import datetime
from typing import AsyncIterator

import trio
import trio_websocket
from livekit.protocol import models, rtc

from rtp.dtls import DtlsCertificate
from rtp.errors import RtpStackError

from trio_sfu.client.errors import ClientError, JoinError
from trio_sfu.client.client_media import RTCP_INTERVAL, ClientMedia
from trio_sfu.client.publisher import ANSWER_TIMEOUT, PUBLISH_TIMEOUT, LocalPublication, Publisher
from trio_sfu.client.resume import ResumeFollower
from trio_sfu.client.signal_connection import (
    JOIN_TIMEOUT,
    PROTOCOL_VERSION,
    Connector,
    SignalConnection,
    enum_name,
    join_signal,
    signal_url,
    trickled_candidate,
)
from trio_sfu.client.subscriber import MAX_REPORT_BLOCKS, RemoteTrack, Subscriber
from trio_sfu.client.wallclock import ntp_now
from trio_sfu.datagram import BindDatagram, UdpSocket

#: How often wait_resumed looks at the count of completed moves.
_RESUME_POLL = 0.01

PUBLISHER = rtc.SignalTarget.PUBLISHER
SUBSCRIBER = rtc.SignalTarget.SUBSCRIBER


class LiveKitClient(ClientMedia):
    """One participant. Build it with :meth:`connect`; see the module docstring. Its PCs, RTCP
    clock and what is read about media: ClientMedia (client_media.py)."""

    def __init__(self, ws: trio_websocket.WebSocketConnection, join: rtc.JoinResponse,
                 bind_host: str, certificate: DtlsCertificate, *, url: str = "", token: str = "",
                 token_in_query: bool = False, auto_subscribe: bool = True,
                 join_timeout: float = JOIN_TIMEOUT, connector: Connector | None = None,
                 bind_datagram: BindDatagram = UdpSocket.bind) -> None:
        self.join = join
        self.participant_sid = join.participant.sid
        self.identity = join.participant.identity
        self.room_name = join.room.name
        self.bind_host = bind_host
        self._certificate = certificate
        self._bind_datagram = bind_datagram
        self._nursery: trio.Nursery | None = None
        self.remote_participants: dict[str, models.ParticipantInfo] = {
            p.sid: p for p in join.other_participants
        }
        self.errors: list[str] = []
        #: What the server said about speakers (those speaking now by participant sid, and how many
        #: speakers_changed came) and connection quality (the newest ConnectionQualityInfo per
        #: participant sid, and how many updates came).
        self.active_speakers: dict[str, models.SpeakerInfo] = {}
        self.speaker_updates = 0
        self.connection_quality: dict[str, rtc.ConnectionQualityInfo] = {}
        self.connection_quality_updates = 0
        self.left = trio.Event()  # we left, or the server told us to / dropped the connection
        self.leave_reason: str | None = None
        self.signal = SignalConnection(ws, url=url, token=token, token_in_query=token_in_query,
                                       auto_subscribe=auto_subscribe, join_timeout=join_timeout,
                                       connector=connector, on_error=self._error)
        self.signal.ping_interval = join.ping_interval or self.signal.ping_interval
        self.publisher = Publisher(self.signal, self._open_publisher_pc, self._error)
        self.subscriber = Subscriber(self.signal, self._open_subscriber_pc, self._owner_of, self._error)
        self.resume = ResumeFollower(self.participant_sid, self.signal, self.publisher, self.subscriber,
                                     left=self.left, dispatch=self._handle, on_refused=self._on_server_leave,
                                     on_failed=self._resume_failed)

    # ------------------------------------------------------------------ lifetime

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls,
        url: str,
        token: str,
        *,
        bind_host: str = "127.0.0.1",
        auto_subscribe: bool = True,
        token_in_query: bool = False,
        join_timeout: float = JOIN_TIMEOUT,
        ping_interval: float | None = None,
        connector: Connector | None = None,
        bind_datagram: BindDatagram = UdpSocket.bind,
        certificate: DtlsCertificate | None = None,
    ) -> AsyncIterator["LiveKitClient"]:
        """Join the room; the client lives until the ``async with`` block ends (then it leaves).

        The token goes in an ``Authorization: Bearer`` header as the Python SDK
        sends it, or as the ``access_token`` query parameter as livekit-client does.
        ``ping_interval`` overrides the join response's (tests). ``connector`` and
        ``bind_datagram`` replace the network (see the module docstring); ``certificate``
        is the PCs' DTLS certificate (default: a new one; many clients may share one).
        """
        if certificate is None:
            certificate = DtlsCertificate.generate(datetime.datetime.now(datetime.timezone.utc))
        failure: JoinError | None = None
        client: LiveKitClient | None = None
        try:
            # One nursery for the signal connection's tasks and the client's own; a failure to
            # join is raised after it closed, so it is not wrapped in an exception group.
            async with trio.open_nursery() as nursery:
                try:
                    ws, join = await join_signal(nursery, url, token, token_in_query=token_in_query,
                                                 auto_subscribe=auto_subscribe, join_timeout=join_timeout,
                                                 connector=connector)
                except JoinError as exc:
                    failure = exc
                    nursery.cancel_scope.cancel()
                else:
                    client = cls(ws, join, bind_host, certificate, url=url, token=token,
                                 token_in_query=token_in_query, auto_subscribe=auto_subscribe,
                                 join_timeout=join_timeout, connector=connector, bind_datagram=bind_datagram)
                    if ping_interval:
                        client.signal.ping_interval = ping_interval
                    client._nursery = nursery
                    nursery.start_soon(client._reader)
                    nursery.start_soon(client.signal.run_pings)
                    nursery.start_soon(client.publisher.run_negotiation)
                    nursery.start_soon(client._rtcp_loop)
                    try:
                        yield client
                    finally:
                        with trio.CancelScope(shield=True):
                            await client.leave()
                        nursery.cancel_scope.cancel()
        except* trio_websocket.ConnectionRejected as group:
            if client is not None:
                raise
            # The handshake's refusal is raised by the connection's reader task, in the nursery.
            rejected = group.exceptions[0]
            assert isinstance(rejected, trio_websocket.ConnectionRejected)
            body = (rejected.body or b"").decode("utf-8", "replace").strip()
            failure = JoinError(f"join refused: HTTP {rejected.status_code} {body}", rejected.status_code)
        if failure is not None:
            raise failure

    async def leave(self) -> None:
        """Send ``leave`` (client initiated) and close the signal connection; idempotent."""
        await self.signal.send_leave()
        if self.leave_reason is None:
            self.leave_reason = "client initiated"
        self.left.set()
        self.signal.release()  # nothing waits for a move that will not happen
        self.subscriber.close_tracks()  # ends every `async for` over tracks()
        await self.signal.aclose()

    # ------------------------------------------------------------------ the signal reader

    async def _reader(self) -> None:
        assert self._nursery is not None
        while True:
            target = self.resume.take_target()
            if target is not None and not await self.resume.follow(self._nursery, target):
                return
            response = await self.signal.receive()
            if response is None:
                if not self.left.is_set():
                    if not self.signal.leave_sent:
                        self._error(f"signal connection closed by the server: {self.signal.closed_reason}")
                    self.leave_reason = self.leave_reason or "signal connection closed"
                    self.left.set()
                return
            await self._handle(response)

    async def _handle(self, response: rtc.SignalResponse) -> None:
        """Dispatch one response; what the server got wrong becomes an error, not a crash."""
        try:
            await self._dispatch(response)
        except (RtpStackError, ValueError, KeyError) as exc:
            self._error(f"{response.WhichOneof('message')}: {type(exc).__name__}: {exc}")

    async def _dispatch(self, response: rtc.SignalResponse) -> None:
        """Route one signal response to the part it concerns."""
        kind = response.WhichOneof("message")
        if kind == "offer":
            await self.subscriber.answer(response.offer)
        elif kind == "answer":
            self.publisher.on_answer(response.answer)
        elif kind == "trickle":
            self._on_trickle(response.trickle)
        elif kind == "track_published":
            self.publisher.on_track_published(response.track_published)
        elif kind == "update":
            self._on_participant_update(response.update)
        elif kind == "leave":
            leave = response.leave
            if leave.action == rtc.LeaveRequest.Action.RESUME and not self.signal.leave_sent and not self.left.is_set():
                # Resume elsewhere (a migration) or, without a region, here again.
                self.resume.expect(leave)
                return
            self._on_server_leave(leave)
        elif kind == "pong_resp":
            self.signal.on_pong(response.pong_resp)
        elif kind == "request_response":
            self._on_request_response(response.request_response)
        elif kind == "subscription_response":
            self.subscriber.on_failure(response.subscription_response)
        elif kind == "speakers_changed":
            self._on_speakers_changed(response.speakers_changed)
        elif kind == "connection_quality":
            self.connection_quality_updates += 1
            for info in response.connection_quality.updates:
                self.connection_quality[info.participant_sid] = info

    def _on_trickle(self, trickle: rtc.TrickleRequest) -> None:
        pc = self.publisher.pc if trickle.target == PUBLISHER else self.subscriber.pc
        if pc is None:
            self._error(f"trickle for a PC we do not have (target {trickle.target})")
            return
        candidate = trickled_candidate(trickle)
        if candidate is None and not trickle.final:
            return  # an empty candidate without final: nothing to add
        pc.add_remote_candidate(candidate)

    def _on_participant_update(self, update: rtc.ParticipantUpdate) -> None:
        for info in update.participants:
            if info.sid == self.participant_sid:
                continue
            if info.state == models.ParticipantInfo.State.DISCONNECTED:
                self.remote_participants.pop(info.sid, None)
            else:
                known = self.remote_participants.get(info.sid)
                if known is None or info.version >= known.version:
                    self.remote_participants[info.sid] = info

    def _on_speakers_changed(self, changed: rtc.SpeakersChanged) -> None:
        self.speaker_updates += 1
        for speaker in changed.speakers:
            if speaker.active:
                self.active_speakers[speaker.sid] = speaker
            else:
                self.active_speakers.pop(speaker.sid, None)

    def _on_request_response(self, response: rtc.RequestResponse) -> None:
        if response.reason == rtc.RequestResponse.Reason.OK:
            return
        reason = enum_name(rtc.RequestResponse.Reason, response.reason)
        what = response.WhichOneof("request") or "request"
        self._error(f"{what} refused ({reason}): {response.message}")
        self.publisher.on_refused(response, reason)

    def _on_server_leave(self, leave: rtc.LeaveRequest) -> None:
        self.leave_reason = enum_name(models.DisconnectReason, leave.reason)
        if leave.reason != models.DisconnectReason.CLIENT_INITIATED:
            self._error(f"server asked us to leave: {self.leave_reason}")
        self.left.set()

    def _resume_failed(self, message: str) -> None:
        self._error(message)
        self.leave_reason = self.leave_reason or "resume failed"
        self.left.set()

    def _owner_of(self, track_sid: str) -> str:
        for participant in self.remote_participants.values():
            if any(t.sid == track_sid for t in participant.tracks):
                return participant.sid
        return ""

    async def _send(self, request: rtc.SignalRequest, generation: int | None = None) -> bool:
        """Send a request on the current signal connection (see ``SignalConnection.send``)."""
        return await self.signal.send(request, generation)

    # ------------------------------------------------------------------ publishing

    async def publish_audio(self, name: str = "audio", *, timeout: float = PUBLISH_TIMEOUT) -> LocalPublication:
        """Announce a microphone track (Opus) and wait for ``track_published``; negotiation follows."""
        return await self.publisher.publish_audio(name, timeout=timeout)

    async def publish_video(self, name: str = "video", *, width: int = 1280, height: int = 720,
                            bitrate: int = 1_700_000, simulcast: bool = True,
                            timeout: float = PUBLISH_TIMEOUT) -> LocalPublication:
        """Announce a camera track (VP8; simulcast q/h/f when asked) and wait for ``track_published``."""
        return await self.publisher.publish_video(name, width=width, height=height, bitrate=bitrate,
                                                  simulcast=simulcast, timeout=timeout)

    @property
    def sender_reports_sent(self) -> int:
        return self.publisher.sender_reports_sent

    # ------------------------------------------------------------------ subscribing

    def tracks(self) -> AsyncIterator[RemoteTrack]:
        """Each subscribed track once, as the server's offers add them (one consumer); ends on leave."""
        return self.subscriber.tracks()

    async def wait_for_tracks(self, count: int, timeout: float = 15.0) -> list[RemoteTrack]:
        return await self.subscriber.wait_for_tracks(count, timeout)

    @property
    def subscription_failures(self) -> list[tuple[str, int]]:
        """(track sid, SubscriptionError) of every subscription the server reported failed
        (``subscription_response``)."""
        return self.subscriber.failures

    @property
    def receiver_reports_sent(self) -> int:
        return self.subscriber.receiver_reports_sent

    # ------------------------------------------------------------------ signalling

    @property
    def url(self) -> str:
        """The base URL of the node we are connected to now (another one after a migration)."""
        return self.signal.url

    @property
    def rtt_ms(self) -> float | None:
        return self.signal.rtt_ms

    @property
    def pongs(self) -> int:
        return self.signal.pongs

    # ------------------------------------------------------------------ moving to another node

    def sync_state(self) -> rtc.SyncState:
        """What we tell a node we resumed on: last subscriber answer, subscriptions, publications."""
        return self.resume.sync_state()

    async def wait_resumed(self, count: int = 1, timeout: float = 15.0) -> None:
        """Until ``count`` moves to another node completed (new signal connection, new PCs connected)."""
        with trio.fail_after(timeout):
            while self.resume.migrations < count:
                if self.left.is_set():
                    raise ClientError(f"left before the move completed: {self.leave_reason}")
                await trio.sleep(_RESUME_POLL)

    @property
    def migrations(self) -> int:
        """Moves whose new PeerConnections all connected."""
        return self.resume.migrations

    @property
    def signal_resumes(self) -> int:
        """Moves whose new signal connection was accepted."""
        return self.resume.signal_resumes

    @property
    def reconnect_response(self) -> rtc.ReconnectResponse | None:
        return self.resume.reconnect_response

    @property
    def sync_states_sent(self) -> int:
        return self.resume.sync_states_sent


__all__ = [
    "ANSWER_TIMEOUT",
    "ClientError",
    "JoinError",
    "LiveKitClient",
    "LocalPublication",
    "MAX_REPORT_BLOCKS",
    "PROTOCOL_VERSION",
    "PUBLISH_TIMEOUT",
    "RTCP_INTERVAL",
    "RemoteTrack",
    "ntp_now",
    "signal_url",
]
