"""A tiny fake LiveKit signal server that records the SDP real clients send.

Only what the clients need to get as far as publishing is implemented:

* `/rtc/v1` and `/rtc/v1/validate` answer an HTTP/1.1 404 (with CORS) so that
  livekit-client >= 2.17 and `livekit` (Python) >= 1.2 fall back to `/rtc` (dual
  PeerConnection mode).  Before refusing, the v1 `join_request` query parameter is
  decoded so that its single-PC publisher offer is recorded too.
* `/rtc` upgrades to a WebSocket carrying binary protobuf `SignalRequest` /
  `SignalResponse` frames: a `join`, a subscriber `offer` made by aiortc,
  `track_published` for each `add_track`, an aiortc `answer` to the publisher
  offer, pongs, and trickle forwarded to aiortc.
* Optionally, static files (the browser page and livekit-client's UMD build).

HTTP is parsed with h11 and WebSocket frames with wsproto; both are sans-IO, so
this file owns the Trio socket loop.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import logging
import mimetypes
import time
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import attrs
import h11
import trio
from livekit.protocol import models
from livekit.protocol import rtc as lk_rtc
from wsproto.connection import Connection as WsConnection
from wsproto.connection import ConnectionState as WsState
from wsproto.connection import ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError

from aiortc_peers import AiortcPeers

log = logging.getLogger("capture_sdp.server")

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SERVER_VERSION = "1.9.0"
SERVER_PROTOCOL = 17
# Refusal text for v1.  It must not contain "requested room does not exist":
# livekit-client reads that phrase as a permission error and does not fall back.
V1_REFUSAL = b"single peer connection signalling is not served here"
CORS = [(b"access-control-allow-origin", b"*")]
READ_SIZE = 65536


@attrs.define
class ClientCapture:
    """Everything recorded for one client kind (the `sdk` query parameter)."""

    sdk: str
    query: dict[str, str] = attrs.Factory(dict)
    v1_join_offer: str | None = None
    # Every publisher offer in arrival order: clients renegotiate as tracks are
    # added, so the first offer may hold only some of them.
    publisher_offers: list[str] = attrs.Factory(list)
    subscriber_offer_sent: str | None = None
    subscriber_answer: str | None = None
    publisher_answer_sent: str | None = None
    add_tracks: list[lk_rtc.AddTrackRequest] = attrs.Factory(list)
    done: trio.Event = attrs.Factory(trio.Event)

    @property
    def publisher_offer(self) -> str | None:
        return self.publisher_offers[-1] if self.publisher_offers else None

    def check_done(self) -> None:
        offer = self.publisher_offer
        if offer is None or self.subscriber_answer is None:
            return
        if "\nm=audio " in offer and "\nm=video " in offer:
            self.done.set()


class CaptureLog:
    """SDP captured per client kind; the driver waits on `for_sdk(...).done`."""

    def __init__(self) -> None:
        self._by_sdk: dict[str, ClientCapture] = {}

    def for_sdk(self, sdk: str) -> ClientCapture:
        if sdk not in self._by_sdk:
            self._by_sdk[sdk] = ClientCapture(sdk=sdk)
        return self._by_sdk[sdk]


def decode_v1_join_request(param: str) -> lk_rtc.JoinRequest:
    """Decode the `join_request` query value: base64url(WrappedJoinRequest)."""
    raw = base64.urlsafe_b64decode(param + "=" * (-len(param) % 4))
    wrapped = lk_rtc.WrappedJoinRequest()
    wrapped.ParseFromString(raw)
    inner = wrapped.join_request
    if wrapped.compression == lk_rtc.WrappedJoinRequest.GZIP:
        inner = gzip.decompress(inner)
    request = lk_rtc.JoinRequest()
    request.ParseFromString(inner)
    return request


def build_join_response(sdk: str, now: float) -> lk_rtc.SignalResponse:
    participant = models.ParticipantInfo(
        sid="PA_capture" + sdk,
        identity="capture-" + sdk,
        name="capture-" + sdk,
        state=models.ParticipantInfo.JOINED,
        joined_at=int(now),
        joined_at_ms=int(now * 1000),
        version=1,
        permission=models.ParticipantPermission(
            can_subscribe=True, can_publish=True, can_publish_data=True
        ),
    )
    join = lk_rtc.JoinResponse(
        room=models.Room(
            sid="RM_capture",
            name="capture",
            creation_time=int(now),
            creation_time_ms=int(now * 1000),
            empty_timeout=300,
        ),
        participant=participant,
        server_version=SERVER_VERSION,
        server_info=models.ServerInfo(
            edition=models.ServerInfo.Standard,
            version=SERVER_VERSION,
            protocol=SERVER_PROTOCOL,
            node_id="capture",
        ),
        subscriber_primary=True,
        ping_interval=5,
        ping_timeout=15,
        fast_publish=False,
    )
    return lk_rtc.SignalResponse(join=join)


def build_track_published(request: lk_rtc.AddTrackRequest, sid: str) -> lk_rtc.SignalResponse:
    """Echo an AddTrackRequest back as the TrackInfo LiveKit would publish."""
    track = models.TrackInfo(
        sid=sid,
        type=request.type,
        name=request.name,
        muted=request.muted,
        width=request.width,
        height=request.height,
        simulcast=len(request.layers) > 1,
        source=request.source,
        layers=request.layers,
        stream=request.stream,
        disable_red=request.disable_red,
        encryption=request.encryption,
        audio_features=request.audio_features,
    )
    if request.type == models.TrackType.AUDIO:
        track.mime_type = "audio/opus"
    for codec in request.simulcast_codecs:
        track.codecs.add(
            mime_type="video/" + codec.codec, cid=codec.cid, layers=codec.layers,
            video_layer_mode=codec.video_layer_mode,
        )
    if request.type == models.TrackType.VIDEO:
        track.mime_type = track.codecs[0].mime_type if track.codecs else "video/vp8"
    return lk_rtc.SignalResponse(
        track_published=lk_rtc.TrackPublishedResponse(cid=request.cid, track=track)
    )


class SignalSession:
    """One `/rtc` WebSocket: dual-PC LiveKit signalling from the server side."""

    def __init__(
        self, stream: trio.SocketStream, ws: WsConnection, capture: ClientCapture,
        peers: AiortcPeers, key: str,
    ) -> None:
        self._stream = stream
        self._ws = ws
        self._capture = capture
        self._peers = peers
        self._sub_key = key + "/subscriber"
        self._pub_key = key + "/publisher"
        self._track_count = 0
        self._closed = False

    async def _send(self, response: lk_rtc.SignalResponse) -> None:
        await self._stream.send_all(self._ws.send(BytesMessage(data=response.SerializeToString())))

    async def run(self) -> None:
        await self._send(build_join_response(self._capture.sdk, time.time()))
        offer = await trio.to_thread.run_sync(self._peers.make_subscriber_offer, self._sub_key)
        self._capture.subscriber_offer_sent = offer
        await self._send(
            lk_rtc.SignalResponse(offer=lk_rtc.SessionDescription(type="offer", sdp=offer, id=1))
        )
        while not self._closed:
            data = await self._stream.receive_some(READ_SIZE)
            if not data:
                return
            self._ws.receive_data(data)
            for event in self._ws.events():
                if isinstance(event, BytesMessage):
                    request = lk_rtc.SignalRequest()
                    request.ParseFromString(bytes(event.data))
                    await self._handle(request)
                elif isinstance(event, TextMessage):
                    log.warning("ignoring text frame: %.80s", event.data)
                elif isinstance(event, Ping):
                    await self._stream.send_all(self._ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    # After our own close (on `leave`) the peer's close needs no reply.
                    if self._ws.state is WsState.REMOTE_CLOSING:
                        await self._stream.send_all(self._ws.send(event.response()))
                    self._closed = True

    async def _handle(self, request: lk_rtc.SignalRequest) -> None:
        kind = request.WhichOneof("message")
        log.info("%s: %s", self._capture.sdk, kind)
        if kind == "add_track":
            self._capture.add_tracks.append(request.add_track)
            self._track_count += 1
            prefix = "TR_A" if request.add_track.type == models.TrackType.AUDIO else "TR_V"
            await self._send(build_track_published(request.add_track, f"{prefix}capture{self._track_count}"))
        elif kind == "offer":
            # Record before anything can fail: the offer is the point of the exercise.
            self._capture.publisher_offers.append(request.offer.sdp)
            self._capture.check_done()
            await self._answer_publisher(request.offer)
        elif kind == "answer":
            if self._capture.subscriber_answer is None:
                self._capture.subscriber_answer = request.answer.sdp
                self._capture.check_done()
            try:
                await trio.to_thread.run_sync(self._peers.accept_answer, self._sub_key, request.answer.sdp)
            except Exception:
                log.exception("aiortc rejected the subscriber answer")
        elif kind == "trickle":
            key = self._sub_key if request.trickle.target == lk_rtc.SUBSCRIBER else self._pub_key
            try:
                await trio.to_thread.run_sync(self._peers.add_trickle, key, request.trickle.candidateInit)
            except Exception as exc:
                log.info("trickle not usable by aiortc: %s", exc)
        elif kind == "ping":
            await self._send(lk_rtc.SignalResponse(pong=int(time.time() * 1000)))
        elif kind == "ping_req":
            await self._send(lk_rtc.SignalResponse(pong_resp=lk_rtc.Pong(
                last_ping_timestamp=request.ping_req.timestamp, timestamp=int(time.time() * 1000),
            )))
        elif kind == "leave":
            await self._stream.send_all(self._ws.send(CloseConnection(code=CloseReason.NORMAL_CLOSURE)))
            self._closed = True

    async def _answer_publisher(self, offer: lk_rtc.SessionDescription) -> None:
        try:
            answer = await trio.to_thread.run_sync(self._peers.answer_offer, self._pub_key, offer.sdp)
        except Exception:
            log.exception("aiortc could not answer the publisher offer; client left unanswered")
            return
        if self._capture.publisher_answer_sent is None:
            self._capture.publisher_answer_sent = answer
        await self._send(
            lk_rtc.SignalResponse(answer=lk_rtc.SessionDescription(type="answer", sdp=answer, id=offer.id))
        )


class FakeLiveKitServer:
    """Serves the paths listed in the module docstring on one TCP listener."""

    def __init__(self, capture: CaptureLog, peers: AiortcPeers, static_root: Path | None = None) -> None:
        self.capture = capture
        self._peers = peers
        self._static_root = static_root.resolve() if static_root else None
        self._session_count = 0

    async def handle_connection(self, stream: trio.SocketStream) -> None:
        try:
            await self._serve_http(stream)
        except (
            trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError, LocalProtocolError,
        ) as exc:
            log.info("connection ended: %r", exc)
        finally:
            await trio.aclose_forcefully(stream)

    async def _serve_http(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(READ_SIZE)
                conn.receive_data(data)
                if not data and conn.their_state is h11.IDLE:
                    return
                continue
            if isinstance(event, h11.ConnectionClosed):
                return
            if not isinstance(event, h11.Request):
                continue
            target = event.target.decode("latin-1")
            path = urlsplit(target).path.replace("//", "/")
            query = {k: v[0] for k, v in parse_qs(urlsplit(target).query).items()}
            headers = {k.lower(): v for k, v in event.headers}
            is_upgrade = headers.get(b"upgrade", b"").lower() == b"websocket"
            log.info("%s %s%s", event.method.decode(), path, " (upgrade)" if is_upgrade else "")

            if path.rstrip("/").endswith("/rtc/v1") or path.endswith("/rtc/v1/validate"):
                self._record_v1(query)
                await self._respond(stream, conn, 404, V1_REFUSAL)
            elif path.endswith("/rtc/validate"):
                await self._respond(stream, conn, 200, b"success")
            elif path.rstrip("/").endswith("/rtc") and is_upgrade and event.method == b"GET":
                await self._upgrade(stream, conn, headers, query)
                return
            elif event.method == b"GET" and self._static_root is not None and path != "/":
                await self._serve_static(stream, conn, path)
            elif path == "/":
                await self._respond(stream, conn, 200, b"OK")
            else:
                await self._respond(stream, conn, 404, b"not found")

            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            # Drain the rest of the request (GETs have no body) and reuse the connection.
            while conn.their_state is h11.SEND_BODY:
                if conn.next_event() is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(READ_SIZE))
            conn.start_next_cycle()

    def _record_v1(self, query: dict[str, str]) -> None:
        param = query.get("join_request")
        if not param:
            return
        try:
            join_request = decode_v1_join_request(param)
        except Exception:
            log.exception("undecodable v1 join_request")
            return
        sdk_enum = join_request.client_info.sdk
        sdk = {models.ClientInfo.JS: "js", models.ClientInfo.PYTHON: "python"}.get(sdk_enum, str(sdk_enum))
        capture = self.capture.for_sdk(sdk)
        if join_request.HasField("publisher_offer") and capture.v1_join_offer is None:
            capture.v1_join_offer = join_request.publisher_offer.sdp

    async def _respond(
        self, stream: trio.SocketStream, conn: h11.Connection, status: int, body: bytes,
        content_type: bytes = b"text/plain",
    ) -> None:
        headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *CORS]
        out = conn.send(h11.Response(status_code=status, headers=headers))
        out += conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
        await stream.send_all(out)

    async def _serve_static(self, stream: trio.SocketStream, conn: h11.Connection, path: str) -> None:
        assert self._static_root is not None
        candidate = (self._static_root / unquote(path).lstrip("/")).resolve()
        if not candidate.is_relative_to(self._static_root) or not candidate.is_file():
            await self._respond(stream, conn, 404, b"not found")
            return
        content_type = (mimetypes.guess_type(candidate.name)[0] or "application/octet-stream").encode()
        await self._respond(stream, conn, 200, candidate.read_bytes(), content_type)

    async def _upgrade(
        self, stream: trio.SocketStream, conn: h11.Connection, headers: dict[bytes, bytes],
        query: dict[str, str],
    ) -> None:
        key = headers.get(b"sec-websocket-key", b"")
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        # h11 stops at an upgrade request; the 101 is written by hand and the
        # bytes h11 already buffered go on to wsproto.
        trailing, _ = conn.trailing_data
        await stream.send_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        ws = WsConnection(ConnectionType.SERVER)
        if trailing:
            ws.receive_data(bytes(trailing))
        sdk = query.get("sdk", "unknown")
        capture = self.capture.for_sdk(sdk)
        capture.query = query
        self._session_count += 1
        session = SignalSession(stream, ws, capture, self._peers, f"{sdk}#{self._session_count}")
        await session.run()


async def serve(
    server: FakeLiveKitServer, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on 127.0.0.1 with an ephemeral port; reports the port via task_status."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    task_status.started(port)
    await trio.serve_listeners(server.handle_connection, listeners)

