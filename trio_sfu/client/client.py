"""A LiveKit client on Trio and our own sans-IO stack: signalling, publishing, subscribing.

Dual-PC ("v0", ``/rtc``) as livekit-client falls back to it: the server offers
on the subscriber PC, we offer on the publisher PC; both PCs run ICE
controlling against the ICE-lite SFU. Every task (the signal reader, the
ping_req loop, the publisher negotiation loop, one loop per PC socket) lives in
the client's own nursery, opened by :meth:`LiveKitClient.connect` and closed
when its ``async with`` ends::

    async with LiveKitClient.connect(url, token, bind_host="127.0.0.1") as client:
        audio = await client.publish_audio()
        await audio.wait_ready()
        audio.send_rtp(payload, timestamp=960)
        async for track in client.tracks():   # RemoteTrack, as subscribed
            ...

A ``leave`` with action RESUME (a migration to the node in its ``regions``, or a
resume at the same URL) is followed rather than ended: see :meth:`LiveKitClient._migrate`
and :meth:`LiveKitClient.wait_resumed`.

Where the bytes go is injectable, so whole clients and servers can run in one Trio run under
``MockClock`` (``trio_sfu.testing.memory_network``): ``connector`` opens the stream the
signalling WebSocket runs over (default: TCP, or TLS for ``wss://``, by trio-websocket), and
``bind_datagram`` the PCs' datagram sockets (default: the kernel's UDP).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import secrets
import time
import urllib.parse
import uuid
from typing import AsyncIterator, Awaitable, Callable

import attrs
import trio
import trio_websocket
from livekit.protocol import models, rtc

from rtp import rtcp
from rtp.dtls import DtlsCertificate, DtlsRole
from rtp.errors import ParseError, RtpStackError
from rtp.packet import payload_offset, read_sequence_number, read_ssrc, read_timestamp
from rtp.peer_transport import IceMode
from rtp.receive_stats import ReceiveStatistics
from sdp.codecs import EXT_MID, EXT_RID

from sdp.model import SessionDescription, Ssrc
from sdp.negotiator import RECEIVER_ANSWER, answer_offer, local_dtls_role, remote_transport
from sdp.parser import parse as parse_sdp
from sdp.parser import serialize as serialize_sdp

from trio_sfu import __version__
from trio_sfu.client.peer_connection import ClientPeerConnection
from trio_sfu.client.publisher_offer import OPUS, VP8, OfferedTrack, build_publisher_offer
from trio_sfu.client.stats import TrackReceiveStats
from trio_sfu.client.synthetic import RtpStreamWriter, VideoLayerSpec, read_send_stamp, simulcast_layers
from trio_sfu.datagram import BindDatagram, UdpSocket

PROTOCOL_VERSION = 17
JOIN_TIMEOUT = 10.0
#: livekit-client gives up on add_track after 10 s.
PUBLISH_TIMEOUT = 10.0
ANSWER_TIMEOUT = 10.0
#: How often each PC sends its RTCP reports (SRs on the publisher PC, RRs on the subscriber PC).
RTCP_INTERVAL = 1.0
#: RFC 3550 §6.4: the RC field holds at most 31 report blocks.
MAX_REPORT_BLOCKS = 31
_NTP_EPOCH_OFFSET = 2208988800  # 1900-01-01 to 1970-01-01, seconds


def ntp_now() -> int:
    """The wall clock as a 64-bit NTP timestamp (RFC 3550 §4)."""
    seconds = time.time() + _NTP_EPOCH_OFFSET
    return (int(seconds) << 32) | int((seconds % 1) * (1 << 32))

#: Opens the byte stream to (host, port) that the signalling WebSocket runs over.
Connector = Callable[[str, int], Awaitable[trio.abc.Stream]]
MAX_SIGNAL_MESSAGE = 4 * 1024 * 1024

PUBLISHER = rtc.SignalTarget.PUBLISHER
SUBSCRIBER = rtc.SignalTarget.SUBSCRIBER
_QUALITY_OF_RID = {"q": models.VideoQuality.LOW, "h": models.VideoQuality.MEDIUM, "f": models.VideoQuality.HIGH}


class ClientError(Exception):
    """The client could not do what was asked (join refused, publish denied or timed out)."""


class JoinError(ClientError):
    """The server refused or never completed the join."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


def signal_url(url: str, *, access_token: str | None = None, auto_subscribe: bool = True,
               resume_sid: str | None = None, reconnect_reason: int = 0) -> str:
    """``/rtc`` under whatever path ``url`` has (as the SDKs do), ws(s) scheme, v0 query parameters.

    ``resume_sid`` makes it a resume of that participant (``reconnect=1&sid=…&reconnect_reason=…``).
    """
    parts = urllib.parse.urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss"):
        raise ValueError(f"signal URL must be ws://, wss://, http:// or https://, not {url!r}")
    path = (parts.path.rstrip("/") + "/rtc").replace("//", "/")
    query = {
        "auto_subscribe": "1" if auto_subscribe else "0",
        "sdk": "python",
        "version": __version__,
        "protocol": str(PROTOCOL_VERSION),
        "adaptive_stream": "0",
    }
    if access_token is not None:
        query["access_token"] = access_token
    if resume_sid is not None:
        query.update(reconnect="1", sid=resume_sid, reconnect_reason=str(reconnect_reason))
    return urllib.parse.urlunsplit((scheme, parts.netloc, path, urllib.parse.urlencode(query), ""))


def _enum_name(enum_type, value: int) -> str:
    """A protobuf enum value's name; a newer server's unknown value must not make us ignore the message."""
    try:
        return enum_type.Name(value)
    except ValueError:
        return str(value)


def _now_ms() -> int:
    return int(time.time() * 1000)


async def open_signal(nursery: trio.Nursery, url: str, headers: list[tuple[bytes, bytes]],
                      connector: Connector | None) -> trio_websocket.WebSocketConnection:
    """The WebSocket at ``url``, its tasks in ``nursery``: over TCP/TLS, or over the stream
    ``connector`` gives for the URL's host and port. Raises what trio-websocket raises
    (ConnectionRejected, HandshakeError, OSError)."""
    if connector is None:
        return await trio_websocket.connect_websocket_url(
            nursery, url, extra_headers=headers, max_message_size=MAX_SIGNAL_MESSAGE)
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    resource = parts.path + (f"?{parts.query}" if parts.query else "")
    stream = await connector(host, port)
    return await trio_websocket.wrap_client_stream(
        nursery, stream, parts.netloc, resource, extra_headers=headers, max_message_size=MAX_SIGNAL_MESSAGE)


@attrs.define(eq=False)
class RemoteTrack:
    """A track the server sends us on the subscriber PC, with what we measured on it."""

    sid: str
    participant_sid: str
    kind: str  # "audio" | "video"
    mid: str
    ssrcs: set[int] = attrs.field(factory=set)
    stats: TrackReceiveStats = attrs.field(factory=TrackReceiveStats)
    first_packet: trio.Event = attrs.field(factory=trio.Event)
    #: False once a later subscriber offer no longer sends it on its m-line (unsubscribed/unpublished).
    active: bool = True


class LocalPublication:
    """A track we publish: its signalling state and the RTP streams (one per simulcast layer)."""

    def __init__(self, client: "LiveKitClient", kind: str, name: str, mid: str,
                 layers: list[VideoLayerSpec]) -> None:
        self._client = client
        self.kind = kind
        self.name = name
        self.cid = str(uuid.uuid4())
        self.mid = mid
        self.sid: str | None = None  # TR_… once track_published arrives
        #: The TrackInfo of track_published, as the server gave it (sent back in sync_state on a move).
        self.track_info: models.TrackInfo | None = None
        self.layers = layers  # video only; [] for audio
        self.rids: tuple[str, ...] = tuple(layer.rid for layer in layers if layer.rid)
        count = max(len(self.rids), 1)
        self.ssrcs: dict[str, int] = dict(zip(self.rids or ("",), (secrets.randbits(32) or 1 for _ in range(count))))
        self.codec = OPUS if kind == "audio" else VP8
        self.clock_rate = self.codec.clock_rate
        self.published = trio.Event()
        self.negotiated = trio.Event()
        self.packets_sent = 0
        self.packets_dropped = 0  # send_rtp calls that sent nothing: not negotiated/connected yet
        self.keyframe_requests = 0
        #: Receiver reports the SFU sent about this track, and the round trip they gave (LSR/DLSR).
        self.receiver_reports = 0
        self.rtt_ms: float | None = None
        self._keyframe_pending: set[str] = set()
        self._last_send_clock: dict[str, float] = {}
        self._writers: dict[str, RtpStreamWriter] = {}
        self.error: str | None = None

    def offered(self, stream_id: str, cname: str) -> OfferedTrack:
        return OfferedTrack(self.mid, self.kind, stream_id, self.cid, cname,
                            tuple(self.ssrcs.values()), self.rids)

    def _on_answer(self, extensions: dict[int, str]) -> None:
        """Bind the RTP writers to the extension ids the answer agreed to (mid always, rid for simulcast)."""
        ids = {uri: ext_id for ext_id, uri in extensions.items()}
        for rid, ssrc in self.ssrcs.items():
            elements: dict[int, bytes] = {}
            if EXT_MID in ids:
                elements[ids[EXT_MID]] = self.mid.encode()
            if rid and EXT_RID in ids:
                elements[ids[EXT_RID]] = rid.encode()
            old = self._writers.get(rid)
            first_seq = old.sequence_number if old is not None else secrets.randbits(16)
            writer = self._writers[rid] = RtpStreamWriter(ssrc, self.codec.payload_type, elements, first_seq)
            if old is not None:
                # The same SSRC goes on (a renegotiation, a move to another node): RFC 3550's
                # sender counts are per SSRC, so they carry over with the sequence number.
                writer.packets, writer.octets, writer.last_timestamp = old.packets, old.octets, old.last_timestamp
        self.negotiated.set()

    def header_size(self, rid: str = "") -> int:
        writer = self._writers.get(rid)
        return writer.header_size if writer is not None else 12 + 12

    @property
    def ready(self) -> bool:
        pc = self._client._publisher_pc
        return self.negotiated.is_set() and pc is not None and pc.connected.is_set()

    async def wait_ready(self, timeout: float = 15.0) -> None:
        """Until the track is published, its m-line answered and the publisher PC connected."""
        with trio.fail_after(timeout):
            await self.published.wait()
            await self.negotiated.wait()
            # The publisher PC is replaced when the client moves to another node: wait on the current one.
            while not self.ready:
                pc = self._client._publisher_pc
                if pc is None:
                    await trio.sleep(0.01)
                    continue
                with trio.move_on_after(0.05):
                    await pc.connected.wait()

    def send_rtp(self, payload: bytes, *, timestamp: int, marker: bool = False, rid: str = "") -> bool:
        """Packetize ``payload`` into one RTP packet of this track (layer ``rid``) and send it.

        False (and counted) when the PC is not ready yet (also while the client moves to another
        node) or the transport dropped it. A packet never handed to a connected PC takes no
        sequence number, so the receiver sees no false loss across a move.
        """
        writer = self._writers.get(rid)
        pc = self._client._publisher_pc
        if writer is None or pc is None or not pc.connected.is_set():
            self.packets_dropped += 1
            return False
        if pc.send_rtp(writer.packet(payload, timestamp, marker)):
            self.packets_sent += 1
            self._last_send_clock[rid] = trio.current_time()
            return True
        self.packets_dropped += 1
        return False

    def take_keyframe_request(self, rid: str = "") -> bool:
        """Whether the SFU asked (PLI/FIR) for a key frame on layer ``rid`` since the last call."""
        if rid in self._keyframe_pending:
            self._keyframe_pending.discard(rid)
            return True
        return False

    def sender_reports(self, now: float, ntp: int) -> list[rtcp.SenderReport]:
        """One SR per stream that has sent anything; the RTP timestamp is extrapolated to ``now``."""
        reports = []
        for rid, writer in self._writers.items():
            if not writer.packets or writer.last_timestamp is None:
                continue
            elapsed = max(now - self._last_send_clock.get(rid, now), 0.0)
            rtp_timestamp = (writer.last_timestamp + int(elapsed * self.clock_rate)) & 0xFFFFFFFF
            reports.append(rtcp.SenderReport(writer.ssrc, ntp, rtp_timestamp, writer.packets & 0xFFFFFFFF,
                                             writer.octets & 0xFFFFFFFF))
        return reports

    def _on_report_block(self, block: rtcp.ReportBlock, ntp: int) -> None:
        self.receiver_reports += 1
        if block.lsr:
            # RFC 3550 §6.4.1: RTT = arrival - LSR - DLSR, all in 1/65536 s of compact NTP.
            rtt = (rtcp.compact_ntp(ntp) - block.lsr - block.dlsr) & 0xFFFFFFFF
            if rtt < 0x80000000:
                self.rtt_ms = rtt * 1000 / 65536

    def _on_keyframe_request(self, ssrc: int) -> None:
        for rid, own in self.ssrcs.items():
            if own == ssrc:
                self.keyframe_requests += 1
                self._keyframe_pending.add(rid)


class LiveKitClient:
    """One participant. Build it with :meth:`connect`; see the module docstring."""

    def __init__(self, ws: trio_websocket.WebSocketConnection, join: rtc.JoinResponse,
                 bind_host: str, certificate: DtlsCertificate, *, url: str = "", token: str = "",
                 token_in_query: bool = False, auto_subscribe: bool = True,
                 join_timeout: float = JOIN_TIMEOUT, connector: Connector | None = None,
                 bind_datagram: BindDatagram = UdpSocket.bind) -> None:
        self._ws = ws
        #: The base URL of the node we are connected to now (another one after a migration).
        self.url = url
        # What a resume needs to open the same signal connection again, elsewhere.
        self._token = token
        self._token_in_query = token_in_query
        self._auto_subscribe = auto_subscribe
        self._join_timeout = join_timeout
        self._connector = connector
        self._bind_datagram = bind_datagram
        self.join = join
        self.participant_sid = join.participant.sid
        self.identity = join.participant.identity
        self.room_name = join.room.name
        self.bind_host = bind_host
        self._certificate = certificate
        self._nursery: trio.Nursery | None = None
        self.remote_participants: dict[str, models.ParticipantInfo] = {
            p.sid: p for p in join.other_participants
        }
        self.publications: list[LocalPublication] = []
        self.subscriptions: dict[str, RemoteTrack] = {}
        self.errors: list[str] = []
        #: (track sid, SubscriptionError) of every subscription the server reported failed
        #: (`subscription_response`).
        self.subscription_failures: list[tuple[str, int]] = []
        self.rtt_ms: float | None = None
        self.pongs = 0
        self._ping_interval: float = join.ping_interval or 5
        self.left = trio.Event()  # we left, or the server told us to / dropped the connection
        self.leave_reason: str | None = None
        self.unknown_ssrc_packets = 0
        self._publisher_pc: ClientPeerConnection | None = None
        self._subscriber_pc: ClientPeerConnection | None = None
        self._track_by_ssrc: dict[int, RemoteTrack] = {}
        self._track_by_mid: dict[str, RemoteTrack] = {}
        #: RFC 3550 reception statistics per received SSRC, for our receiver reports.
        self._reception: dict[int, ReceiveStatistics] = {}
        self.receiver_reports_sent = 0
        self.sender_reports_sent = 0
        self._rtcp_ssrc = secrets.randbits(32) or 1
        self._tracks_send, self._tracks_recv = trio.open_memory_channel[RemoteTrack](1000)
        self._stream_id = str(uuid.uuid4())
        self._cname = secrets.token_urlsafe(12)
        self._negotiate_needed = trio.Event()
        self._offer_id = 0
        self._mids_used = 0
        self._pending_answer: tuple[int, SessionDescription, trio.Event] | None = None
        self._subscriber_answers = 0
        self._subscriber_ice_mode: IceMode | None = None
        self._sent_trickle: set[int] = set()
        self._leave_sent = False
        # ---- moving to another node (leave{action=RESUME}): see _migrate
        #: Moves whose new PeerConnections all connected.
        self.migrations = 0
        #: Moves whose new signal connection was accepted (``reconnect`` received).
        self.signal_resumes = 0
        self.reconnect_response: rtc.ReconnectResponse | None = None
        self.sync_states_sent = 0
        #: Bumped on every move: anything built for an older connection is not sent on a newer one.
        self._generation = 0
        self._resume_target: str | None = None
        self._migrating = False
        self._signal_ready = trio.Event()  # cleared (replaced) while a move has no signal connection
        self._signal_ready.set()
        self._sync_state_due: int | None = None  # the generation whose publisher offer sync_state follows
        self._retire_unoffered = False
        self._last_subscriber_answer: rtc.SessionDescription | None = None

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
        headers = [] if token_in_query else [(b"authorization", f"Bearer {token}".encode())]
        ws_url = signal_url(url, access_token=token if token_in_query else None, auto_subscribe=auto_subscribe)
        if certificate is None:
            certificate = DtlsCertificate.generate(datetime.datetime.now(datetime.timezone.utc))
        failure: JoinError | None = None
        client: LiveKitClient | None = None
        try:
            # One nursery for the signal connection's tasks and the client's own; a failure to
            # join is raised after it closed, so it is not wrapped in an exception group.
            async with trio.open_nursery() as nursery:
                ws: trio_websocket.WebSocketConnection | None = None
                try:
                    with trio.fail_after(join_timeout):
                        ws = await open_signal(nursery, ws_url, headers, connector)
                    join = await cls._receive_join(ws, join_timeout)
                except trio.TooSlowError:
                    failure = JoinError(f"cannot open the signal connection to {url} within {join_timeout:g} s")
                except (trio_websocket.HandshakeError, OSError) as exc:
                    failure = JoinError(f"cannot open the signal connection to {url}: {exc!r}")
                except JoinError as exc:
                    failure = exc
                if failure is not None:
                    if ws is not None:
                        with trio.move_on_after(2):
                            await ws.aclose()
                    nursery.cancel_scope.cancel()
                else:
                    assert ws is not None
                    client = cls(ws, join, bind_host, certificate, url=url, token=token,
                                 token_in_query=token_in_query, auto_subscribe=auto_subscribe,
                                 join_timeout=join_timeout, connector=connector, bind_datagram=bind_datagram)
                    client._ping_interval = ping_interval or join.ping_interval or 5
                    client._nursery = nursery
                    nursery.start_soon(client._reader)
                    nursery.start_soon(client._ping_loop)
                    nursery.start_soon(client._negotiation_loop)
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

    @staticmethod
    async def _receive_join(ws: trio_websocket.WebSocketConnection, timeout: float) -> rtc.JoinResponse:
        try:
            with trio.fail_after(timeout):
                message = await ws.get_message()
        except trio.TooSlowError as exc:
            raise JoinError(f"no join response within {timeout:g} s") from exc
        except trio_websocket.ConnectionClosed as exc:
            raise JoinError(f"signal connection closed before join: {exc.reason}") from exc
        response = rtc.SignalResponse()
        if isinstance(message, str):
            raise JoinError("server sent a text frame; LiveKit signalling is binary protobuf")
        response.ParseFromString(message)
        kind = response.WhichOneof("message")
        if kind == "leave":
            raise JoinError(f"server refused the join: {_enum_name(models.DisconnectReason, response.leave.reason)}")
        if kind != "join":
            raise JoinError(f"first signal message was {kind!r}, not join")
        if not response.join.participant.sid.startswith("PA_"):
            raise JoinError(f"join response has no valid participant sid: {response.join.participant.sid!r}")
        return response.join

    async def leave(self) -> None:
        """Send ``leave`` (client initiated) and close the signal connection; idempotent."""
        if not self._leave_sent and not self._ws.closed:
            self._leave_sent = True
            request = rtc.SignalRequest(leave=rtc.LeaveRequest(
                reason=models.DisconnectReason.CLIENT_INITIATED, action=rtc.LeaveRequest.Action.DISCONNECT))
            with contextlib.suppress(trio_websocket.ConnectionClosed, trio.BrokenResourceError):
                with trio.move_on_after(2):
                    await self._ws.send_message(request.SerializeToString())
        if self.leave_reason is None:
            self.leave_reason = "client initiated"
        self.left.set()
        self._signal_ready.set()  # nothing waits for a move that will not happen
        self._tracks_send.close()  # ends every `async for` over tracks()
        with trio.move_on_after(2):
            await self._ws.aclose()

    # ------------------------------------------------------------------ publishing

    async def publish_audio(self, name: str = "audio", *, timeout: float = PUBLISH_TIMEOUT) -> LocalPublication:
        """Announce a microphone track (Opus) and wait for ``track_published``; negotiation follows."""
        publication = LocalPublication(self, "audio", name, self._new_mid(), [])
        request = rtc.AddTrackRequest(cid=publication.cid, name=name, type=models.TrackType.AUDIO,
                                      source=models.TrackSource.MICROPHONE)
        return await self._publish(publication, request, timeout)

    async def publish_video(self, name: str = "video", *, width: int = 1280, height: int = 720,
                            bitrate: int = 1_700_000, simulcast: bool = True,
                            timeout: float = PUBLISH_TIMEOUT) -> LocalPublication:
        """Announce a camera track (VP8; simulcast q/h/f when asked) and wait for ``track_published``."""
        layers = simulcast_layers(width, height, bitrate, simulcast)
        publication = LocalPublication(self, "video", name, self._new_mid(), layers)
        video_layers = [
            models.VideoLayer(quality=_QUALITY_OF_RID.get(layer.rid, models.VideoQuality.HIGH),
                              width=layer.width, height=layer.height, bitrate=layer.bitrate,
                              rid=layer.rid, spatial_layer=index)
            for index, layer in enumerate(layers)
        ]
        request = rtc.AddTrackRequest(
            cid=publication.cid, name=name, type=models.TrackType.VIDEO, source=models.TrackSource.CAMERA,
            width=width, height=height, layers=video_layers,
            simulcast_codecs=[rtc.SimulcastCodec(codec="vp8", cid=publication.cid)],
        )
        return await self._publish(publication, request, timeout)

    def _new_mid(self) -> str:
        # Never reused, even for a refused publication: one mid names one m-line for the PC's life.
        mid = str(self._mids_used)
        self._mids_used += 1
        return mid

    async def _publish(self, publication: LocalPublication, request: rtc.AddTrackRequest,
                       timeout: float) -> LocalPublication:
        self.publications.append(publication)
        await self._send(rtc.SignalRequest(add_track=request))
        with trio.move_on_after(timeout):
            await publication.published.wait()
        if publication.error is not None or not publication.published.is_set():
            # Never offered: a later offer must not carry an m-line for it.
            self.publications.remove(publication)
            if publication.error is not None:
                raise ClientError(f"publishing {publication.name!r} refused: {publication.error}")
            raise ClientError(f"no track_published for {publication.name!r} within {timeout:g} s")
        self._ensure_publisher_pc()
        self._negotiate_needed.set()
        return publication

    def _ensure_publisher_pc(self) -> ClientPeerConnection:
        if self._publisher_pc is None:
            self._publisher_pc = ClientPeerConnection(
                "publisher", self.bind_host, self._certificate, self._on_publisher_rtp, self._on_publisher_rtcp,
                lambda reason: self._error(f"publisher PC failed: {reason}"), self._bind_datagram)
            assert self._nursery is not None
            self._nursery.start_soon(self._publisher_pc.run)
        return self._publisher_pc

    async def _negotiation_loop(self) -> None:
        """One publisher offer at a time; publishing during a negotiation re-offers after it."""
        while True:
            await self._negotiate_needed.wait()
            self._negotiate_needed = trio.Event()
            generation = self._generation
            pc = self._ensure_publisher_pc()
            # After a move this is every publication again, same mids, msids (cids) and SSRCs:
            # the new node knows the tracks from the old one, so no add_track goes out.
            tracks = [p.offered(self._stream_id, self._cname) for p in self.publications if p.published.is_set()]
            self._offer_id += 1
            offer_id = self._offer_id
            offer = build_publisher_offer(pc.local, tracks, offer_id)
            answered = trio.Event()
            self._pending_answer = (offer_id, offer, answered)
            sent = await self._send(rtc.SignalRequest(offer=rtc.SessionDescription(
                type="offer", sdp=serialize_sdp(offer), id=offer_id)), generation)
            if not sent:
                # Built for a node we left (the move offers again) or the connection is gone (the
                # reader ends the client).
                if self._pending_answer is not None and self._pending_answer[0] == offer_id:
                    self._pending_answer = None
                continue
            await self._trickle_local(pc, PUBLISHER, offer.media[0].mid or "0", generation)
            if self._sync_state_due == generation:
                self._sync_state_due = None
                await self._send_sync_state(generation)
            with trio.move_on_after(ANSWER_TIMEOUT):
                await answered.wait()
            if not answered.is_set():
                self._error(f"no answer to publisher offer {offer_id} within {ANSWER_TIMEOUT:g} s")
                self._pending_answer = None

    async def _trickle_local(self, pc: ClientPeerConnection, target: int, first_mid: str,
                             generation: int | None = None) -> None:
        # Once per PC, after its first description, as a browser trickles its host candidate
        # (on the first m-line: with BUNDLE it is the transport of them all).
        if target in self._sent_trickle:
            return
        self._sent_trickle.add(target)
        init = {"candidate": pc.candidate_line(), "sdpMid": first_mid, "sdpMLineIndex": 0,
                "usernameFragment": pc.local.ice_ufrag}
        await self._send(rtc.SignalRequest(trickle=rtc.TrickleRequest(candidateInit=json.dumps(init), target=target)),
                         generation)

    def _on_publisher_rtp(self, packet: bytes, now: float) -> None:
        pass  # the SFU sends no media on the publisher PC

    def _on_publisher_rtcp(self, packet: bytes, now: float) -> None:
        try:
            packets = rtcp.parse_rtcp(packet)
        except ParseError:
            return
        ntp = ntp_now()
        for item in packets:
            if isinstance(item, (rtcp.ReceiverReport, rtcp.SenderReport)):
                for block in item.reports:
                    for publication in self.publications:
                        if block.ssrc in publication.ssrcs.values():
                            publication._on_report_block(block, ntp)
            elif isinstance(item, (rtcp.Pli, rtcp.Fir)):
                ssrcs = [item.media_ssrc] if isinstance(item, rtcp.Pli) else [e.ssrc for e in item.entries]
                for publication in self.publications:
                    for ssrc in ssrcs:
                        publication._on_keyframe_request(ssrc)

    # ------------------------------------------------------------------ subscribing

    async def tracks(self) -> AsyncIterator[RemoteTrack]:
        """Each subscribed track once, as the server's offers add them (one consumer); ends on leave."""
        try:
            async for track in self._tracks_recv:
                yield track
        except trio.ClosedResourceError:
            return

    async def wait_connected(self, timeout: float = 15.0) -> None:
        """Until the subscriber PC (the primary one in dual-PC mode) has ICE and DTLS up, as
        livekit-client waits before reporting a room connected."""
        with trio.fail_after(timeout):
            while self._subscriber_pc is None:
                await trio.sleep(0.01)
            await self._subscriber_pc.connected.wait()

    async def wait_for_tracks(self, count: int, timeout: float = 15.0) -> list[RemoteTrack]:
        with trio.fail_after(timeout):
            while len(self.subscriptions) < count:
                await trio.sleep(0.02)
        return list(self.subscriptions.values())

    def _on_subscriber_rtp(self, packet: bytes, now: float) -> None:
        try:
            ssrc = read_ssrc(packet)
            seq = read_sequence_number(packet)
            offset = payload_offset(packet)
        except ParseError:
            self.unknown_ssrc_packets += 1
            return
        track = self._track_by_ssrc.get(ssrc)
        if track is None:
            self.unknown_ssrc_packets += 1
            return
        reception = self._reception.get(ssrc)
        if reception is None:
            # Announced in the offer's a=ssrc lines: no probation needed.
            reception = self._reception[ssrc] = ReceiveStatistics(
                ssrc, 48000 if track.kind == "audio" else 90000, probation=0)
        reception.on_packet(seq, read_timestamp(packet), now, len(packet))
        stamp = read_send_stamp(packet[offset:offset + 32])
        latency = (time.time() * 1e6 - stamp) / 1000 if stamp is not None else None
        track.stats.on_packet(ssrc, seq, len(packet), now, latency)
        if track.stats.packets == 1:
            track.first_packet.set()

    def _on_subscriber_rtcp(self, packet: bytes, now: float) -> None:
        try:
            packets = rtcp.parse_rtcp(packet)
        except ParseError:
            return
        for item in packets:
            if isinstance(item, rtcp.SenderReport):
                reception = self._reception.get(item.ssrc)
                if reception is not None:
                    reception.on_sender_report(item.ntp_timestamp, now)  # for LSR/DLSR in our RRs

    async def _rtcp_loop(self) -> None:
        """SRs for what we publish, RRs for what we receive, once per RTCP_INTERVAL."""
        while True:
            await trio.sleep(RTCP_INTERVAL)
            now, ntp = trio.current_time(), ntp_now()
            publisher = self._publisher_pc
            if publisher is not None and publisher.connected.is_set():
                for publication in self.publications:
                    for report in publication.sender_reports(now, ntp):
                        if publisher.send_rtcp(report.serialize()):
                            self.sender_reports_sent += 1
            subscriber = self._subscriber_pc
            if subscriber is not None and subscriber.connected.is_set() and self._reception:
                blocks = [b for r in self._reception.values() if (b := r.report_block(now)) is not None]
                for start in range(0, len(blocks), MAX_REPORT_BLOCKS):
                    report = rtcp.ReceiverReport(self._rtcp_ssrc, blocks[start:start + MAX_REPORT_BLOCKS])
                    if subscriber.send_rtcp(report.serialize()):
                        self.receiver_reports_sent += 1

    def _handle_subscriber_offer(self, description: rtc.SessionDescription) -> tuple[rtc.SessionDescription, str]:
        """Our answer to a subscriber offer, and the mid of its first m-line."""
        offer = parse_sdp(description.sdp)
        if self._subscriber_pc is None:
            self._subscriber_pc = ClientPeerConnection(
                "subscriber", self.bind_host, self._certificate, self._on_subscriber_rtp, self._on_subscriber_rtcp,
                lambda reason: self._error(f"subscriber PC failed: {reason}"), self._bind_datagram)
            assert self._nursery is not None
            self._nursery.start_soon(self._subscriber_pc.run)
        pc = self._subscriber_pc
        self._subscriber_answers += 1
        if self._subscriber_ice_mode is None:
            # An ICE-lite server (ours, LiveKit's default) leaves control to us; a full-ICE offerer
            # is controlling itself (RFC 8445 §6.1.1), so we answer as a lite agent instead of
            # fighting it for the role. Fixed for the PC's life: renegotiations keep the transport.
            self._subscriber_ice_mode = IceMode.CONTROLLING if offer.ice_lite else IceMode.LITE
        policy = attrs.evolve(RECEIVER_ANSWER, ice_lite=self._subscriber_ice_mode is IceMode.LITE)
        answer = answer_offer(offer, pc.local, session_version=self._subscriber_answers, policy=policy)
        # We answered a=setup:active: we are the DTLS client.
        pc.set_remote(remote_transport(offer), DtlsRole(local_dtls_role(answer, local_is_offerer=False).value),
                      self._subscriber_ice_mode)
        self._learn_tracks(offer, answer)
        if self._retire_unoffered:
            # The first offer on a new node's subscriber PC lists everything that node sends us;
            # a track of the old node it does not carry is no longer ours.
            self._retire_unoffered = False
            offered = {m.mid for m in offer.media}
            for mid in [mid for mid in self._track_by_mid if mid not in offered]:
                self._retire_track_on(mid)
        reply = rtc.SessionDescription(type="answer", sdp=serialize_sdp(answer), id=description.id)
        self._last_subscriber_answer = reply
        return reply, answer.media[0].mid or "0"

    def _learn_tracks(self, offer: SessionDescription, answer: SessionDescription) -> None:
        for m, a in zip(offer.media, answer.media):
            if m.kind not in ("audio", "video"):
                continue
            if m.rejected or a.rejected or not m.direction.sends:
                self._retire_track_on(m.mid)
                continue
            ssrc_tracks: dict[int, str] = {}
            for line in m.all(Ssrc):
                if line.attribute == "msid" and line.value and " " in line.value:
                    ssrc_tracks[line.ssrc] = line.value.split(" ", 1)[1]
            msid = m.msid
            track_sid = msid.track_id if msid is not None and msid.track_id else None
            if track_sid is None and ssrc_tracks:
                track_sid = next(iter(ssrc_tracks.values()))
            if track_sid is None:
                continue
            stream = msid.stream_id if msid is not None else ""
            participant_sid = stream.split("|", 1)[0] if stream.startswith("PA_") else self._owner_of(track_sid)
            current = self._track_by_mid.get(m.mid or "")
            if current is not None and current.sid != track_sid:
                self._retire_track_on(m.mid)  # the m-line was recycled for another track
            track = self.subscriptions.get(track_sid)
            if track is None:
                track = RemoteTrack(track_sid, participant_sid, m.kind, m.mid or "")
                self.subscriptions[track_sid] = track
                with contextlib.suppress(trio.WouldBlock, trio.ClosedResourceError):
                    self._tracks_send.send_nowait(track)
            if m.mid and track.mid != m.mid and self._track_by_mid.get(track.mid) is track:
                del self._track_by_mid[track.mid]  # moved to another m-line (possible on a new node)
            track.mid = m.mid or track.mid
            track.active = True
            self._track_by_mid[track.mid] = track
            for ssrc in set(m.ssrcs):
                track.ssrcs.add(ssrc)
                self._track_by_ssrc[ssrc] = track

    def _retire_track_on(self, mid: str | None) -> None:
        track = self._track_by_mid.pop(mid or "", None)
        if track is None:
            return
        track.active = False
        for ssrc in track.ssrcs:
            if self._track_by_ssrc.get(ssrc) is track:
                del self._track_by_ssrc[ssrc]

    def _owner_of(self, track_sid: str) -> str:
        for participant in self.remote_participants.values():
            if any(t.sid == track_sid for t in participant.tracks):
                return participant.sid
        return ""

    # ------------------------------------------------------------------ signalling

    def _error(self, message: str) -> None:
        self.errors.append(message)

    async def _send(self, request: rtc.SignalRequest, generation: int | None = None) -> bool:
        """Send on the current signal connection, waiting out a move; False if not sent.

        ``generation``: what the request was built for; a request built before a move is dropped
        (an offer for the old PC must not reach the new node). A send that fails on a closed
        connection is not reported here: the reader sees the close (or, first, a resume leave).
        """
        if not self._signal_ready.is_set():
            await self._signal_ready.wait()
        if generation is not None and generation != self._generation:
            return False
        try:
            await self._ws.send_message(request.SerializeToString())
        except (trio_websocket.ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    async def _ping_loop(self) -> None:
        interval = self._ping_interval
        while True:
            await trio.sleep(interval)
            ping = rtc.Ping(timestamp=_now_ms(), rtt=int(self.rtt_ms or 0))
            await self._send(rtc.SignalRequest(ping_req=ping))

    async def _reader(self) -> None:
        while True:
            target, self._resume_target = self._resume_target, None
            if target is not None and not await self._migrate(target):
                return
            try:
                message = await self._ws.get_message()
            except trio_websocket.ConnectionClosed as exc:
                if not self.left.is_set():
                    if not self._leave_sent:
                        self._error(f"signal connection closed by the server: {exc.reason}")
                    self.leave_reason = self.leave_reason or "signal connection closed"
                    self.left.set()
                return
            if isinstance(message, str):
                self._error("text frame from the server ignored")
                continue
            response = rtc.SignalResponse()
            try:
                response.ParseFromString(message)
            except Exception as exc:  # protobuf's DecodeError has no stable import path
                self._error(f"undecodable signal message: {exc}")
                continue
            try:
                await self._dispatch(response)
            except (RtpStackError, ValueError, KeyError) as exc:
                self._error(f"{response.WhichOneof('message')}: {type(exc).__name__}: {exc}")

    async def _dispatch(self, response: rtc.SignalResponse) -> None:
        kind = response.WhichOneof("message")
        if kind == "offer":
            answer, first_mid = self._handle_subscriber_offer(response.offer)
            await self._send(rtc.SignalRequest(answer=answer))
            assert self._subscriber_pc is not None
            await self._trickle_local(self._subscriber_pc, SUBSCRIBER, first_mid)
        elif kind == "answer":
            self._handle_publisher_answer(response.answer)
        elif kind == "trickle":
            self._handle_trickle(response.trickle)
        elif kind == "track_published":
            for publication in self.publications:
                if publication.cid == response.track_published.cid:
                    publication.sid = response.track_published.track.sid
                    publication.track_info = response.track_published.track
                    publication.published.set()
        elif kind == "update":
            for info in response.update.participants:
                if info.sid == self.participant_sid:
                    continue
                if info.state == models.ParticipantInfo.State.DISCONNECTED:
                    self.remote_participants.pop(info.sid, None)
                else:
                    known = self.remote_participants.get(info.sid)
                    if known is None or info.version >= known.version:
                        self.remote_participants[info.sid] = info
        elif kind == "leave":
            leave = response.leave
            if leave.action == rtc.LeaveRequest.Action.RESUME and not self._leave_sent and not self.left.is_set():
                # Resume elsewhere (a migration) or, without a region, here again. The reader
                # moves before it reads on; sends wait for the new connection from now on.
                urls = [region.url for region in leave.regions.regions if region.url]
                self._resume_target = urls[0] if urls else self.url
                self._migrating = True
                self._signal_ready = trio.Event()
                return
            self._on_server_leave(leave)
        elif kind == "pong_resp":
            self.pongs += 1
            self.rtt_ms = max(_now_ms() - response.pong_resp.last_ping_timestamp, 0)
        elif kind == "request_response":
            self._handle_request_response(response.request_response)
        elif kind == "subscription_response":
            # Sent only for a subscription the server gave up on (SE_UNKNOWN is 0, still a failure);
            # an answer about a request, kept apart from `errors` (livekit-client emits an event).
            failure = response.subscription_response
            self.subscription_failures.append((failure.track_sid, failure.err))

    def _on_server_leave(self, leave: rtc.LeaveRequest) -> None:
        self.leave_reason = _enum_name(models.DisconnectReason, leave.reason)
        if leave.reason != models.DisconnectReason.CLIENT_INITIATED:
            self._error(f"server asked us to leave: {self.leave_reason}")
        self.left.set()

    # ------------------------------------------------------------------ moving to another node

    async def _migrate(self, base_url: str) -> bool:
        """Follow a leave{action=RESUME} to ``base_url``; False (and ``left`` set) if that failed.

        The old node's ICE/DTLS sessions ended with it, so both PCs are closed and built anew;
        what the participant *is* (sid, token, publications with their mids, cids and SSRCs,
        subscriptions and their statistics) carries over. Runs in the reader task, so no
        message of the new node is handled before the new connection is set up.
        """
        self._generation += 1
        generation = self._generation
        had_subscriber = self._subscriber_pc is not None
        for pc in (self._publisher_pc, self._subscriber_pc):
            if pc is not None:
                pc.close()
        self._publisher_pc = self._subscriber_pc = None
        self._subscriber_ice_mode = None
        self._sent_trickle.clear()
        pending = self._pending_answer
        if pending is not None:
            # That offer went to the old node: the negotiation loop offers again on the new PC.
            self._pending_answer = None
            pending[2].set()
        with trio.move_on_after(2):
            await self._ws.aclose()

        headers = [] if self._token_in_query else [(b"authorization", f"Bearer {self._token}".encode())]
        assert self._nursery is not None
        try:
            url = signal_url(base_url, access_token=self._token if self._token_in_query else None,
                             auto_subscribe=self._auto_subscribe, resume_sid=self.participant_sid,
                             reconnect_reason=models.ReconnectReason.RR_UNKNOWN)
            with trio.fail_after(self._join_timeout):
                # In the client's nursery: the connection must outlive this task's part in the move.
                ws = await open_signal(self._nursery, url, headers, self._connector)
        except (ValueError, trio_websocket.HandshakeError, OSError, trio.TooSlowError) as exc:
            return self._resume_failed(f"cannot resume at {base_url}: {exc!r}")
        self._ws = ws
        first = rtc.SignalResponse()
        try:
            with trio.fail_after(self._join_timeout):
                message = await ws.get_message()
            if isinstance(message, str):
                raise ValueError("text frame")
            first.ParseFromString(message)
        except trio.TooSlowError:
            return self._resume_failed(f"no reconnect response from {base_url} within {self._join_timeout:g} s")
        except trio_websocket.ConnectionClosed as exc:
            return self._resume_failed(f"{base_url} closed the resumed signal connection: {exc.reason}")
        except Exception as exc:  # protobuf's DecodeError has no stable import path
            return self._resume_failed(f"undecodable first message from {base_url}: {exc}")
        kind = first.WhichOneof("message")
        if kind == "leave":
            self._release_signal()
            self._on_server_leave(first.leave)  # refused (e.g. STATE_MISMATCH): a resume is not retried
            return False
        if kind == "reconnect":
            self.reconnect_response = first.reconnect
        # Anything else but a leave also means the node took us back (as livekit-client reads it).
        self.url = base_url
        self.signal_resumes += 1
        self._retire_unoffered = True
        self._release_signal()
        published = any(p.published.is_set() for p in self.publications)
        if published:
            self._sync_state_due = generation  # right after the new publisher offer
            self._negotiate_needed.set()
        else:
            await self._send_sync_state(generation)
        self._nursery.start_soon(self._count_migration, generation, published, had_subscriber)
        if kind != "reconnect":
            try:
                await self._dispatch(first)
            except (RtpStackError, ValueError, KeyError) as exc:
                self._error(f"{kind}: {type(exc).__name__}: {exc}")
        return True

    def _release_signal(self) -> None:
        self._migrating = False
        self._signal_ready.set()

    def _resume_failed(self, message: str) -> bool:
        self._error(message)
        self.leave_reason = self.leave_reason or "resume failed"
        self.left.set()
        self._release_signal()
        return False

    def sync_state(self) -> rtc.SyncState:
        """What we tell a node we resumed on: last subscriber answer, subscriptions, publications."""
        state = rtc.SyncState(
            subscription=rtc.UpdateSubscription(
                track_sids=[sid for sid, track in self.subscriptions.items() if track.active], subscribe=True),
            publish_tracks=[rtc.TrackPublishedResponse(cid=p.cid, track=p.track_info)
                            for p in self.publications if p.published.is_set() and p.track_info is not None],
        )
        if self._last_subscriber_answer is not None:
            state.answer.CopyFrom(self._last_subscriber_answer)
        return state

    async def _send_sync_state(self, generation: int) -> None:
        if await self._send(rtc.SignalRequest(sync_state=self.sync_state()), generation):
            self.sync_states_sent += 1

    async def _count_migration(self, generation: int, need_publisher: bool, need_subscriber: bool) -> None:
        """Count the move once its new PCs are up (the ones the client had before it)."""
        while generation == self._generation and not self.left.is_set():
            publisher, subscriber = self._publisher_pc, self._subscriber_pc
            if (not need_publisher or (publisher is not None and publisher.connected.is_set())) and (
                    not need_subscriber or (subscriber is not None and subscriber.connected.is_set())):
                self.migrations += 1
                return
            await trio.sleep(0.01)

    async def wait_resumed(self, count: int = 1, timeout: float = 15.0) -> None:
        """Until ``count`` moves to another node completed (new signal connection, new PCs connected)."""
        with trio.fail_after(timeout):
            while self.migrations < count:
                if self.left.is_set():
                    raise ClientError(f"left before the move completed: {self.leave_reason}")
                await trio.sleep(0.01)

    def _handle_publisher_answer(self, description: rtc.SessionDescription) -> None:
        pending = self._pending_answer
        if pending is None or (description.id and description.id != pending[0]):
            self._error(f"publisher answer {description.id} matches no pending offer")
            return
        offer_id, offer, answered = pending
        answer = parse_sdp(description.sdp)
        if len(answer.media) != len(offer.media):
            raise ValueError(f"answer has {len(answer.media)} m-lines, offer {offer_id} had {len(offer.media)}")
        pc = self._ensure_publisher_pc()
        pc.set_remote(remote_transport(answer), DtlsRole(local_dtls_role(answer, local_is_offerer=True).value))
        by_mid = {p.mid: p for p in self.publications}
        for section in answer.media:
            publication = by_mid.get(section.mid or "")
            if publication is None:
                continue
            if section.rejected:
                publication.error = "m-line rejected by the server"
                self._error(f"server rejected publication {publication.name!r} (mid {publication.mid})")
                continue
            publication._on_answer({e.id: e.uri for e in section.extmaps})
        self._pending_answer = None
        answered.set()

    def _handle_trickle(self, trickle: rtc.TrickleRequest) -> None:
        pc = self._publisher_pc if trickle.target == PUBLISHER else self._subscriber_pc
        if pc is None:
            self._error(f"trickle for a PC we do not have (target {trickle.target})")
            return
        candidate = None
        if trickle.candidateInit:
            init = json.loads(trickle.candidateInit)
            if not isinstance(init, dict):
                raise ValueError("candidateInit is not a JSON object")
            candidate = init.get("candidate") or None
            if candidate is not None and not isinstance(candidate, str):
                raise ValueError(f"candidateInit.candidate is not a string: {candidate!r}")
        if candidate is None and not trickle.final:
            return  # an empty candidate without final: nothing to add
        pc.add_remote_candidate(candidate)

    def _handle_request_response(self, response: rtc.RequestResponse) -> None:
        reason = _enum_name(rtc.RequestResponse.Reason, response.reason)
        if response.reason == rtc.RequestResponse.Reason.OK:
            return
        what = response.WhichOneof("request") or "request"
        self._error(f"{what} refused ({reason}): {response.message}")
        if what == "add_track":
            for publication in self.publications:
                if publication.cid == response.add_track.cid:
                    publication.error = f"{reason}: {response.message}"
                    publication.published.set()  # wakes _publish, which raises
        pending = self._pending_answer
        if pending is not None and response.request_id == pending[0]:
            # The server refused our offer outright: give up on it instead of waiting out the timeout.
            self._pending_answer = None
            pending[2].set()

    # ------------------------------------------------------------------ queries

    @property
    def publisher_pc(self) -> ClientPeerConnection | None:
        return self._publisher_pc

    @property
    def subscriber_pc(self) -> ClientPeerConnection | None:
        return self._subscriber_pc


__all__ = [
    "ClientError",
    "JoinError",
    "LiveKitClient",
    "LocalPublication",
    "PROTOCOL_VERSION",
    "RemoteTrack",
    "signal_url",
]
