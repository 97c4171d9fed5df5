"""The one-port front door: plain HTTP with h11, WebSocket upgrades handed to trio-websocket.

`trio_websocket.serve_websocket` cannot answer plain HTTP (wsproto rejects a non-upgrade
request with an empty 400 before any handler runs), so we read the request head ourselves with
h11, route it, and for a `/rtc` upgrade that passed auth and joined its room we hand the socket
to trio-websocket wrapped in `ReplayStream`, which replays the bytes h11 already consumed so
wsproto sees the handshake from its first byte. Like LiveKit, the room join happens *before* the
upgrade, so auth and room errors are HTTP statuses with a plain-text reason. `/` answers `OK`,
or the playground page to a request that asks for HTML (`trio_sfu.api.playground`, which also
answers everything under `/playground/`).

A response closes the connection (the endpoints here are one-shot) unless the client has
already sent its next request behind it (pipelining): then the connection is kept for that one,
up to `MAX_REQUESTS_PER_CONNECTION`, and every request sent is answered in order. A WebSocket
upgrade ends the HTTP exchange either way.

Bounds: connections in total and per client address (refused on arrival with 503 / 429, before
anything is read); the request head at `MAX_HEAD` bytes (reads never run past it, so the limit
is exact); head and body reads by timeouts; a Twirp call's method, route and token are checked
from the head, before its body (up to `MAX_BODY`) is read. An unexpected error becomes a bare
500 -- never a trace.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import TYPE_CHECKING, Iterable
from urllib.parse import parse_qs, unquote

import attrs
import h11
import trio
import trio_websocket
from livekit.protocol import models, rtc

from trio_sfu import metrics as m
from trio_sfu.api import playground
from trio_sfu.api.auth import AuthError, ClaimGrants, TokenVerifier, token_from_request
from trio_sfu.api.join_request import JoinRequestError, decode_join_request, join_options_from_join_request
from trio_sfu.api.playground import accepts_html
from trio_sfu.config import ServerConfig
from trio_sfu.log import get_logger
from trio_sfu.signal.participant import JoinOptions
from trio_sfu.signal.rooms import RoomClosedError, RoomFullError, RoomRegistry
from trio_sfu.api.cluster_rooms import CALLER, FORWARDED_HEADER, caller_from_headers
from trio_sfu.cluster.placement import Verdict, host_port
from trio_sfu.api.twirp import TwirpError, TwirpReply, TwirpServer
from trio_sfu.api.prometheus import METRICS_PATH, MetricsEndpoint

if TYPE_CHECKING:
    from trio_sfu.agents.endpoint import AgentEndpoint
    from trio_sfu.cluster.member import ClusterMember
    from trio_sfu.cluster.node_relay import NodeRelay

MAX_HEAD = 16 * 1024
#: A node that does not accept a spliced connection this fast is taken as gone.
FORWARD_CONNECT_TIMEOUT = 2.0
MAX_BODY = 1024 * 1024
READ_SIZE = 8192
HEAD_TIMEOUT = 10.0
BODY_TIMEOUT = 10.0
LINGER_TIMEOUT = 0.5
LINGER_MAX_BYTES = 256 * 1024
MAX_REQUESTS_PER_CONNECTION = 16
# Open connections (signal sessions included): a LiveKit node serves a few thousand
# participants; one address (a NAT, an office) gets a share large enough for a big meeting.
MAX_CONNECTIONS = 4096
MAX_CONNECTIONS_PER_IP = 256
# Connections being refused at once get the refusal's text; beyond that they are just closed.
MAX_REFUSING = 256
REFUSAL_TIMEOUT = 1.0
CORS_HEADERS = [("access-control-allow-origin", "*")]
_SDK_NAMES = {
    "js": models.ClientInfo.SDK.JS,
    "swift": models.ClientInfo.SDK.SWIFT,
    "ios": models.ClientInfo.SDK.SWIFT,
    "android": models.ClientInfo.SDK.ANDROID,
    "flutter": models.ClientInfo.SDK.FLUTTER,
    "go": models.ClientInfo.SDK.GO,
    "unity": models.ClientInfo.SDK.UNITY,
    "reactnative": models.ClientInfo.SDK.REACT_NATIVE,
    "rust": models.ClientInfo.SDK.RUST,
    "python": models.ClientInfo.SDK.PYTHON,
    "cpp": models.ClientInfo.SDK.CPP,
    "unityweb": models.ClientInfo.SDK.UNITY_WEB,
    "node": models.ClientInfo.SDK.NODE,
}

_log = get_logger("trio_sfu.http")


class ReplayStream(trio.abc.Stream):
    """A stream that first yields bytes already read from `inner`, then reads `inner`."""

    def __init__(self, inner: trio.abc.Stream, already_read: bytes) -> None:
        self._inner = inner
        self._pending = memoryview(bytes(already_read))

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._pending:
            size = len(self._pending) if max_bytes is None else min(max_bytes, len(self._pending))
            chunk = bytes(self._pending[:size])
            self._pending = self._pending[size:]
            await trio.lowlevel.checkpoint()
            return chunk
        return await self._inner.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._inner.aclose()


@attrs.frozen
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    @property
    def is_websocket_upgrade(self) -> bool:
        connection = self.headers.get("connection", "").lower()
        return self.headers.get("upgrade", "").lower() == "websocket" and "upgrade" in connection


@attrs.define
class ConnectionLimits:
    total: int = MAX_CONNECTIONS
    per_ip: int = MAX_CONNECTIONS_PER_IP


class ConnectionCounter:
    """Open connections, in total and per client address."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.total = 0
        self.by_ip: dict[str | None, int] = {}

    def admit(self, ip: str | None) -> int | None:
        """Count a new connection from `ip`; or the HTTP status to refuse it with."""
        if self.total >= self.limits.total:
            return 503
        if ip is not None and self.by_ip.get(ip, 0) >= self.limits.per_ip:
            return 429
        self.total += 1
        self.by_ip[ip] = self.by_ip.get(ip, 0) + 1
        return None

    def release(self, ip: str | None) -> None:
        self.total -= 1
        left = self.by_ip[ip] - 1
        if left:
            self.by_ip[ip] = left
        else:
            del self.by_ip[ip]


def _peer_ip(stream: trio.abc.Stream) -> str | None:
    sock = getattr(stream, "socket", None)
    if sock is None:
        return None
    try:
        peer = sock.getpeername()
    except OSError:
        return None
    return peer[0] if isinstance(peer, tuple) else None


class _HttpExchange:
    """Requests and responses on one connection, over h11: one, or several pipelined."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        # The current request's bytes as received, for a WebSocket replay or a forward.
        self.raw = bytearray()
        self.responded = False
        self.kept_alive = False
        self.served = 0
        self.method = "GET"

    async def _next_event(self, *, head: bool = False) -> object:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            size = READ_SIZE
            if head:
                # h11 only bounds a head it has not got whole yet, and only once fed past the
                # bound: read no further than the limit, so a head is at most MAX_HEAD bytes.
                size = min(size, MAX_HEAD - len(self.conn.trailing_data[0]))
                if size <= 0:
                    raise h11.RemoteProtocolError("request head too large", error_status_hint=431)
            data = await self.stream.receive_some(size)
            # Keep the raw bytes only while they may still be needed for a WebSocket replay.
            if len(self.raw) <= MAX_HEAD:
                self.raw += data
            self.conn.receive_data(data)

    async def read_head(self) -> h11.Request | None:
        event = await self._next_event(head=True)
        if isinstance(event, h11.Request):
            self.method = event.method.decode("ascii", "replace").upper()
            return event
        return None

    def _request_complete(self) -> bool:
        """Whether the request was read to its end (a bodiless one's end is already buffered)."""
        while self.conn.their_state is h11.SEND_BODY:
            event = self.conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return False
        return self.conn.their_state is h11.DONE

    def _next_request_waiting(self) -> bool:
        """Whether the client pipelined another request behind this one."""
        try:
            if self.served + 1 >= MAX_REQUESTS_PER_CONNECTION or not self._request_complete():
                return False
        except h11.RemoteProtocolError:
            return False  # a broken body: answer this request, then close
        data, closed = self.conn.trailing_data
        return bool(data) and not closed

    def next_cycle(self) -> None:
        """After a kept-alive response: ready for the next request on the connection."""
        self.conn.start_next_cycle()
        self.raw = bytearray(self.conn.trailing_data[0])
        self.responded = False
        self.kept_alive = False
        self.served += 1
        self.method = "GET"

    async def read_body(self, limit: int) -> bytes | None:
        """The request body; None if it exceeds `limit`."""
        body = bytearray()
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > limit:
                    return None
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)) or event is h11.PAUSED:
                return bytes(body)

    async def respond_reply(self, reply: TwirpReply) -> None:
        await self.respond(reply.status, reply.body, content_type=reply.content_type)

    async def respond(
        self,
        status: int,
        body: bytes = b"",
        content_type: str = "text/plain; charset=utf-8",
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        if self.responded:
            return
        self.responded = True
        keep_alive = self._next_request_waiting()
        # A 304 has no content and must not describe one (RFC 9110 8.6): no length, no type.
        framing = [] if status == 304 else [("content-type", content_type), ("content-length", str(len(body)))]
        all_headers = [
            ("server", "trio-sfu"),
            *([] if keep_alive else [("connection", "close")]),
            *framing,
            *headers,
        ]
        data = self.conn.send(h11.Response(status_code=status, headers=all_headers))
        if body and self.method != "HEAD":
            data += self.conn.send(h11.Data(data=body))
        data += self.conn.send(h11.EndOfMessage())
        await self.stream.send_all(data)
        self.kept_alive = keep_alive and self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE


async def _linger(stream: trio.abc.Stream, timeout: float = LINGER_TIMEOUT) -> None:
    """Half-close and drain briefly, so unread request bytes do not turn our close into a
    TCP reset that destroys the response before the client reads it."""
    with trio.move_on_after(timeout):
        try:
            if isinstance(stream, trio.abc.HalfCloseableStream):
                await stream.send_eof()
            drained = 0
            while drained < LINGER_MAX_BYTES:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                drained += len(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


def _parse_request(event: h11.Request) -> Request:
    target = event.target.decode("utf-8", "replace")
    # Split by hand: urlsplit would read "//rtc/v1" as a network location.
    raw_path, _, raw_query = target.partition("?")
    path = unquote(raw_path.partition("#")[0]) or "/"
    # Both SDKs append to the user's URL path; LiveKit collapses a doubled leading slash.
    while path.startswith("//"):
        path = path[1:]
    if len(path) > 1:
        path = path.rstrip("/") or "/"
    headers: dict[str, str] = {}
    for name, value in event.headers:
        headers[name.decode("latin-1").lower()] = value.decode("latin-1")
    query = parse_qs(raw_query, keep_blank_values=True, max_num_fields=100)
    return Request(event.method.decode("ascii", "replace").upper(), path, query, headers)


def _bool_param(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.lower() in ("1", "true")


def _int_param(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


def join_options_from_query(request: Request) -> JoinOptions:
    info = models.ClientInfo(
        sdk=_SDK_NAMES.get((request.param("sdk") or "").lower(), models.ClientInfo.SDK.UNKNOWN),
        version=(request.param("version") or "")[:64],
        protocol=_int_param(request.param("protocol")),
        os=(request.param("os") or "")[:64],
        os_version=(request.param("os_version") or "")[:64],
        device_model=(request.param("device_model") or "")[:64],
        browser=(request.param("browser") or "")[:64],
        browser_version=(request.param("browser_version") or "")[:64],
        network=(request.param("network") or "")[:64],
        client_protocol=_int_param(request.param("client_protocol")),
    )
    return JoinOptions(
        auto_subscribe=_bool_param(request.param("auto_subscribe"), True),
        adaptive_stream=_bool_param(request.param("adaptive_stream"), False),
        protocol=info.protocol,
        client_info=info,
        reconnect=_bool_param(request.param("reconnect"), False),
        participant_sid=request.param("sid") or "",
        reconnect_reason=_int_param(request.param("reconnect_reason")),
    )


def join_options(request: Request, join: rtc.JoinRequest | None) -> JoinOptions:
    """The join's options: `/rtc/v1`'s JoinRequest, or `/rtc`'s query string."""
    return join_options_from_join_request(join) if join is not None else join_options_from_query(request)


class HttpFront:
    """Routes HTTP requests and WebSocket upgrades for one server."""

    def __init__(
        self,
        config: ServerConfig,
        verifier: TokenVerifier,
        registry: RoomRegistry,
        metrics: m.Metrics,
        twirp: TwirpServer | None = None,
        connection_limits: ConnectionLimits | None = None,
        *,
        metrics_only: bool = False,
    ) -> None:
        """`metrics_only`: the front of `prometheus.port`, which serves `/metrics` and nothing else."""
        self.config = config
        self.verifier = verifier
        self.registry = registry
        self.metrics = metrics
        self.twirp = twirp
        self.connections = ConnectionCounter(connection_limits or ConnectionLimits())
        self.playground = playground.Playground(development=config.development, keys=config.keys,
                                                limits=registry.limits)
        self._refusing = 0
        # Set when this server is one node of several: resumes of migrated participants.
        self.relay: "NodeRelay | None" = None
        # Set on a node of a cluster: placement of joins, where resumes go.
        self.cluster: "ClusterMember | None" = None
        # `/metrics` (trio_sfu.api.prometheus), set by the server.
        self.metrics_endpoint: MetricsEndpoint | None = None
        self.metrics_only = metrics_only
        # `/agent`: agent workers (trio_sfu.agents), set by the server.
        self.agents: "AgentEndpoint | None" = None

    async def handle_connection(self, stream: trio.abc.Stream) -> None:
        """The accept loop's handler: admit the connection under the caps, then serve it."""
        ip = _peer_ip(stream)
        refusal = self.connections.admit(ip)
        if refusal is not None:
            self.metrics.inc(m.HTTP_REFUSED_TOTAL_CAP if refusal == 503 else m.HTTP_REFUSED_PER_IP_CAP)
            await self._refuse_connection(stream, refusal)
            return
        try:
            await self._serve_connection(stream)
        finally:
            self.connections.release(ip)

    async def _refuse_connection(self, stream: trio.abc.Stream, status: int) -> None:
        """Answer a connection over the caps without reading its request, then close it."""
        try:
            if self._refusing >= MAX_REFUSING:
                return  # a flood of them: not even a reply
            self._refusing += 1
            try:
                body = (b"too many connections from this address\n" if status == 429
                        else b"server is at its connection limit, retry later\n")
                reason = "Too Many Requests" if status == 429 else "Service Unavailable"
                head = (f"HTTP/1.1 {status} {reason}\r\nserver: trio-sfu\r\nconnection: close\r\n"
                        f"retry-after: 1\r\ncontent-type: text/plain; charset=utf-8\r\n"
                        f"content-length: {len(body)}\r\n\r\n").encode()
                with trio.move_on_after(REFUSAL_TIMEOUT):
                    await stream.send_all(head + body)
                    await _linger(stream, LINGER_TIMEOUT / 2)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                self._refusing -= 1
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.aclose()

    async def _serve_connection(self, stream: trio.abc.Stream) -> None:
        exchange = _HttpExchange(stream)
        try:
            while True:
                await self._handle(exchange)
                if not exchange.kept_alive:
                    break
                exchange.next_cycle()
                self.metrics.inc(m.HTTP_PIPELINED)
        except h11.RemoteProtocolError as exc:
            self.metrics.inc(m.HTTP_BAD_REQUEST)
            status = exc.error_status_hint if 400 <= exc.error_status_hint < 600 else 400
            await self._try_respond(exchange, status, b"bad request\n")
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
            pass
        except Exception:
            self.metrics.inc(m.HTTP_INTERNAL_ERROR)
            _log.exception("unexpected error serving a request")
            await self._try_respond(exchange, 500, b"internal server error\n")
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                if exchange.responded:
                    await _linger(stream)
                await stream.aclose()

    async def _try_respond(self, exchange: _HttpExchange, status: int, body: bytes) -> None:
        try:
            with trio.move_on_after(2):
                await exchange.respond(status, body)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
            pass

    async def _handle(self, exchange: _HttpExchange) -> None:
        with trio.move_on_after(HEAD_TIMEOUT) as head_timeout:
            event = await exchange.read_head()
        if head_timeout.cancelled_caught:
            self.metrics.inc(m.HTTP_TIMEOUT)
            await self._try_respond(exchange, 408, b"request timeout\n")
            return
        if event is None:
            return
        self.metrics.inc(m.HTTP_REQUESTS)
        request = _parse_request(event)
        path = request.path

        if path == METRICS_PATH and self.metrics_endpoint is not None:
            reply = self.metrics_endpoint.answer(request.method, request.headers, _peer_ip(exchange.stream),
                                                 own_port=self.metrics_only)
            await exchange.respond(reply.status, reply.body, content_type=reply.content_type, headers=reply.headers)
            return
        if self.metrics_only:
            await exchange.respond(404, b"not found\n")
            return
        if request.method == "OPTIONS":
            await self._preflight(exchange, request)
            return
        if path == "/":
            if request.method not in ("GET", "HEAD"):
                await exchange.respond(405, b"method not allowed\n", headers=[("allow", "GET, HEAD")])
            elif accepts_html(request.headers.get("accept", "")):
                await self._respond_playground(exchange, self.playground.page_reply(request.headers))
            else:
                await exchange.respond(200, b"OK", headers=[("vary", "accept")])
            return
        if path.startswith(playground.PREFIX):
            await self._playground(exchange, request)
            return
        if path in ("/rtc/validate", "/rtc/v1/validate"):
            v1 = path == "/rtc/v1/validate"
            self.metrics.inc(m.HTTP_RTC_V1_REQUESTS if v1 else m.HTTP_RTC_V0_REQUESTS)
            await self._validate(exchange, request, v1=v1)
            return
        if path in ("/rtc", "/rtc/v1"):
            # `/rtc`: two peer connections; `/rtc/v1`: one, its options in `join_request`.
            v1 = path == "/rtc/v1"
            self.metrics.inc(m.HTTP_RTC_V1_REQUESTS if v1 else m.HTTP_RTC_V0_REQUESTS)
            if not request.is_websocket_upgrade:
                await exchange.respond(404, b"")
                return
            await self._signal(exchange, request, v1=v1)
            return
        if path.startswith("/twirp/"):
            await self._twirp(exchange, request)
            return
        if path == "/agent" and self.agents is not None:
            await self._agent(exchange, request)
            return
        await exchange.respond(404, b"not found\n")

    async def _playground(self, exchange: _HttpExchange, request: Request) -> None:
        if request.path != playground.TOKEN_PATH:
            await self._respond_playground(exchange, self.playground.asset_reply(request.method, request.path,
                                                                                 request.headers))
            return
        reply = self.playground.token_refusal(request.method, request.headers)
        if reply is None:
            body: bytes | None = b""
            with trio.move_on_after(BODY_TIMEOUT) as body_timeout:
                body = await exchange.read_body(playground.MAX_TOKEN_REQUEST)
            if body_timeout.cancelled_caught:
                self.metrics.inc(m.HTTP_TIMEOUT)
                await exchange.respond(408, b"request timeout\n")
                return
            reply = self.playground.token_reply(body)
        await self._respond_playground(exchange, reply)

    @staticmethod
    async def _respond_playground(exchange: _HttpExchange, reply: playground.Reply) -> None:
        await exchange.respond(reply.status, reply.body, content_type=reply.content_type, headers=reply.headers)

    async def _twirp(self, exchange: _HttpExchange, request: Request) -> None:
        await exchange.respond_reply(await self._twirp_reply(exchange, request))

    async def _twirp_reply(self, exchange: _HttpExchange, request: Request) -> TwirpReply:
        # Everything the head can tell is checked before a byte of the body is read: a caller
        # without a valid token never makes us hold its body.
        if self.twirp is None:
            return TwirpReply.error(TwirpError("bad_route", f"no handler for path {request.path[:200]!r}"))
        call = self.twirp.prepare(request.method, request.path, request.headers)
        if isinstance(call, TwirpReply):
            if call.status == 401:
                self.metrics.inc(m.AUTH_FAILED)
            return call
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY:
            return TwirpReply.error(TwirpError("malformed", f"request body exceeds {MAX_BODY} bytes"))
        body: bytes | None = b""
        with trio.move_on_after(BODY_TIMEOUT) as body_timeout:
            body = await exchange.read_body(MAX_BODY)
        if body_timeout.cancelled_caught:
            self.metrics.inc(m.HTTP_TIMEOUT)
            return TwirpReply.error(TwirpError("deadline_exceeded", "timed out reading the request body"))
        if body is None:
            return TwirpReply.error(TwirpError("malformed", f"request body exceeds {MAX_BODY} bytes"))
        # The caller's token goes with any part of the call other nodes answer (cluster_rooms).
        CALLER.set(caller_from_headers(request.headers))
        return await self.twirp.dispatch(call, request.path, body)

    async def _preflight(self, exchange: _HttpExchange, request: Request) -> None:
        requested = request.headers.get("access-control-request-headers", "authorization")
        await exchange.respond(
            204,
            b"",
            headers=[
                *CORS_HEADERS,
                ("access-control-allow-methods", "GET, POST, OPTIONS"),
                ("access-control-allow-headers", requested[:1024]),
                ("access-control-max-age", "600"),
            ],
        )

    def join_request(self, request: Request, v1: bool) -> rtc.JoinRequest | None:
        """`/rtc/v1`'s JoinRequest (None on `/rtc`); AuthError(400, reason) if it is unusable."""
        if not v1:
            return None
        try:
            return decode_join_request(request.param("join_request") or "")
        except JoinRequestError as exc:
            self.metrics.inc(m.SIGNAL_JOIN_REQUEST_INVALID)
            raise AuthError(400, exc.reason) from None

    def authorize_join(self, request: Request, *, strict: bool = False,
                       join: rtc.JoinRequest | None = None) -> tuple[str, ClaimGrants]:
        """LiveKit's join validation: returns (room name, grants) or raises AuthError(status, reason).
        `join` is `/rtc/v1`'s JoinRequest: its attributes and metadata take the place of v0's
        `attributes` parameter, under the same permission and limits."""
        token = token_from_request(request.headers.get("authorization"), request.param("access_token"))
        if token is None:
            raise AuthError(401, "permissions denied")
        grants = self.verifier.verify(token)
        video = grants.video
        if video is None or not video.room_join:
            raise AuthError(401, "permissions denied")
        limits = self.registry.limits
        if not grants.identity:
            raise AuthError(400, "participant identity cannot be empty")
        if limits.identity_too_long(grants.identity):
            raise AuthError(400, "participant identity exceeds limits: "
                                 f"max length {limits.max_participant_identity_length}")
        # LiveKit: the token's room wins over the `room` query parameter.
        room = video.room or (request.param("room") or "")
        if not room:
            raise AuthError(400, "room name cannot be empty")
        if limits.room_name_too_long(room):
            raise AuthError(400, f"room name exceeds limits: max length {limits.max_room_name_length}")
        if not self.config.room.auto_create and room not in self.registry.rooms:
            raise AuthError(404, "requested room does not exist")
        if join is not None:
            return room, self._with_join_request_fields(grants, join)
        attributes_param = request.param("attributes")
        if attributes_param:
            if not video.may_update_own_metadata:
                raise AuthError(401, "permissions denied")
            try:
                extra = decode_attributes_param(attributes_param)
            except ValueError:
                if strict:
                    raise AuthError(400, "cannot decode attributes") from None
                extra = {}  # LiveKit: tolerated on the WebSocket path, refused on validate
            # An empty value may not delete an attribute the token set.
            merged = dict(grants.attributes)
            merged.update({k: v for k, v in extra.items() if v})
            refusal = limits.check_attributes(merged)
            if refusal is not None:
                raise AuthError(400, refusal.message)
            grants = attrs.evolve(grants, attributes=merged)
        return room, grants

    def _with_join_request_fields(self, grants: ClaimGrants, join: rtc.JoinRequest) -> ClaimGrants:
        """The grants with the JoinRequest's attributes (merged over the token's; an empty value
        may not delete one) and metadata, which need the permission to update one's own."""
        attributes = dict(join.participant_attributes)
        if not attributes and not join.metadata:
            return grants
        video = grants.video
        if video is None or not video.may_update_own_metadata:
            raise AuthError(401, "permissions denied")
        limits = self.registry.limits
        merged = dict(grants.attributes)
        merged.update({k: v for k, v in attributes.items() if v})
        refusal = limits.check_attributes(merged) or (limits.check_metadata(join.metadata) if join.metadata else None)
        if refusal is not None:
            raise AuthError(400, refusal.message)
        return attrs.evolve(grants, attributes=merged, metadata=join.metadata or grants.metadata)

    async def _validate(self, exchange: _HttpExchange, request: Request, *, v1: bool = False) -> None:
        if request.method not in ("GET", "HEAD"):
            await exchange.respond(405, b"method not allowed\n", headers=[*CORS_HEADERS, ("allow", "GET, OPTIONS")])
            return
        try:
            self.authorize_join(request, strict=True, join=self.join_request(request, v1))
        except AuthError as exc:
            self.metrics.inc(m.AUTH_FAILED)
            _log.info("validate refused", kv={"status": exc.status, "reason": exc.reason})
            await exchange.respond(exc.status, exc.reason.encode() + b"\n", headers=CORS_HEADERS)
            return
        await exchange.respond(200, b"success", headers=CORS_HEADERS)

    async def _signal(self, exchange: _HttpExchange, request: Request, *, v1: bool = False) -> None:
        if not request.headers.get("sec-websocket-key") or request.headers.get("sec-websocket-version") != "13":
            self.metrics.inc(m.SIGNAL_HANDSHAKE_FAILED)
            await exchange.respond(400, b"bad websocket handshake\n")
            return
        try:
            join = self.join_request(request, v1)
            room_name, grants = self.authorize_join(request, join=join)
        except AuthError as exc:
            self.metrics.inc(m.AUTH_FAILED)
            _log.info("join refused", kv={"status": exc.status, "reason": exc.reason})
            await exchange.respond(exc.status, exc.reason.encode() + b"\n")
            return
        stream = ReplayStream(exchange.stream, bytes(exchange.raw))
        options = join_options(request, join)
        migrated_in = None
        if options.reconnect:
            # A resume: of a participant another node handed to us (a migration), or of one
            # here whose signal connection was lost.
            sid = options.participant_sid
            relay = self.relay
            migrated_in = relay.take_migration(room_name, sid, grants.identity) if relay is not None else None
            if migrated_in is None:
                resumed = self.registry.resume(room_name, grants, sid, stream)
                if resumed is not None:
                    _log.info("resume on this node", kv={"room": room_name, "identity": grants.identity,
                                                          "sid": sid[:40]})
                    if options.reconnect_reason:
                        # LiveKit uses it to spot short-lived connections and steer the client to
                        # TCP/TLS; here the client's own ICE finds those paths, so it is logged.
                        _log.info("client's reconnect reason", kv={"sid": sid[:40], "reason": options.reconnect_reason})
                    await resumed.ended.wait()
                    return
                moved_to = relay.moved_to(room_name, sid) if relay is not None else None
                if moved_to is not None:
                    # A client resumes where it first connected; the participant now lives on
                    # another node (a LiveKit SDK ignores the leave's region URL).
                    await self._forward(exchange, moved_to, room_name, sid, grants=grants)
                    return
                home = await self.cluster.participant_home(room_name, grants.identity, sid) \
                    if self.cluster is not None and not _forwarded(request) else None
                target = host_port(home) if home else None
                if target is not None:
                    # Another node serves it (the load balancer, or the kernel's SO_REUSEPORT
                    # choice, sent the resume here): it resumes there.
                    await self._forward(exchange, target, room_name, sid, grants=grants)
                    return
                await self._refuse_resume(stream, room_name, grants, sid)
                return
        elif self.cluster is not None and not _forwarded(request):
            placement = await self.cluster.place(room_name)
            if placement.verdict is Verdict.NOWHERE:
                self.metrics.inc(m.SIGNAL_NO_NODE)
                await exchange.respond(503, b"no node can take a participant now, retry\n")
                return
            target = host_port(placement.node.signal_url) if placement.node is not None else None
            if placement.verdict is Verdict.ELSEWHERE and target is not None:
                _log.info("join placed on another node", kv={"room": room_name, "to": placement.node.node_id,
                                                               "reason": placement.reason})
                exchange.raw[:] = _with_forwarded_header(bytes(exchange.raw))
                await self._forward(exchange, target, room_name, "", what="join")
                return
        try:
            participant = await self.registry.join(room_name, grants, options, stream, migrated_in)
        except (RoomClosedError, RoomFullError) as exc:
            if migrated_in is not None and self.relay is not None:
                self.relay.abandon(migrated_in)
            if isinstance(exc, RoomFullError):
                # LiveKit answers ResourceExhausted, which its RPC layer maps to HTTP 429.
                self.metrics.inc(m.SIGNAL_ROOM_FULL)
                await exchange.respond(429, b"room has exceeded its max participants\n")
                return
            await exchange.respond(503, b"room is closing, retry\n")
            return
        await participant.finished.wait()

    async def _agent(self, exchange: _HttpExchange, request: Request) -> None:
        """An agent worker's connection: LiveKit's rules, 404 to anything but a WebSocket
        upgrade, 401 without a valid token carrying the `agent` grant."""
        assert self.agents is not None
        if not request.is_websocket_upgrade:
            await exchange.respond(404, b"")
            return
        if not request.headers.get("sec-websocket-key") or request.headers.get("sec-websocket-version") != "13":
            self.metrics.inc(m.AGENT_HANDSHAKE_FAILED)
            await exchange.respond(400, b"bad websocket handshake\n")
            return
        try:
            token = token_from_request(request.headers.get("authorization"), request.param("access_token"))
            if token is None:
                raise AuthError(401, "permissions denied")
            grants = self.verifier.verify(token)
            if grants.video is None or not grants.video.agent:
                raise AuthError(401, "permissions denied")
        except AuthError as exc:
            self.metrics.inc(m.AGENT_AUTH_REFUSED)
            _log.info("agent worker refused", kv={"status": exc.status, "reason": exc.reason})
            await exchange.respond(exc.status, exc.reason.encode() + b"\n")
            return
        await self.agents.serve(ReplayStream(exchange.stream, bytes(exchange.raw)), grants.api_key,
                                _peer_ip(exchange.stream))

    async def _forward(self, exchange: _HttpExchange, target: tuple[str, int], room: str, sid: str,
                       what: str = "resume", grants: ClaimGrants | None = None) -> None:
        """Splice this connection (its request bytes first) to another node, until either side
        closes: that node runs the resume (or the join), as if the client had gone there."""
        self.metrics.inc(m.SIGNAL_RESUME_FORWARDED if what == "resume" else m.SIGNAL_JOIN_FORWARDED)
        _log.info(f"{what} forwarded to another node", kv={"room": room, "sid": sid[:40],
                                                            "to": f"{target[0]}:{target[1]}"})
        try:
            with trio.fail_after(FORWARD_CONNECT_TIMEOUT):
                upstream = await trio.open_tcp_stream(*target)
        except (OSError, trio.TooSlowError) as exc:
            _log.warning(f"{what} forward failed", kv={"room": room, "sid": sid[:40], "error": str(exc)})
            if what == "resume" and grants is not None:
                # The node is gone (killed, say): the client rejoins from scratch, at once,
                # through whichever node it reaches next.
                await self._refuse_resume(ReplayStream(exchange.stream, bytes(exchange.raw)), room, grants, sid)
                return
            await exchange.respond(502, b"the node to serve this is unreachable\n")
            return

        async def pump(source: trio.abc.ReceiveStream, sink: trio.abc.SendStream, scope: trio.CancelScope) -> None:
            try:
                while data := await source.receive_some(65536):
                    await sink.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                scope.cancel()  # one side gone: the splice ends

        async with upstream:
            try:
                await upstream.send_all(bytes(exchange.raw))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump, exchange.stream, upstream, nursery.cancel_scope)
                nursery.start_soon(pump, upstream, exchange.stream, nursery.cancel_scope)

    async def _refuse_resume(self, stream: trio.abc.Stream, room: str, grants: ClaimGrants, sid: str) -> None:
        """Nothing to resume here (wrong identity, room or sid, or the participant is gone):
        LiveKit's answer, a leave that asks for a full rejoin."""
        self.metrics.inc(m.SIGNAL_RESUME_REFUSED)
        _log.info("resume refused, asking for full reconnect", kv={"room": room, "identity": grants.identity, "sid": sid[:40]})
        leave = rtc.SignalResponse(
            leave=rtc.LeaveRequest(
                reason=models.DisconnectReason.STATE_MISMATCH, action=rtc.LeaveRequest.Action.RECONNECT
            )
        )
        async with trio.open_nursery() as nursery:
            with trio.move_on_after(5):
                try:
                    ws_request = await trio_websocket.wrap_server_stream(nursery, stream, max_message_size=64 * 1024)
                    ws = await ws_request.accept()
                    await ws.send_message(leave.SerializeToString())
                    await ws.aclose(1000, "STATE_MISMATCH")
                except (trio_websocket.ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            nursery.cancel_scope.cancel()



def _forwarded(request: Request) -> bool:
    """Spliced here by another node: served here, never sent on again (no loops)."""
    return request.headers.get(FORWARDED_HEADER) == "1"


def _with_forwarded_header(head: bytes) -> bytes:
    """The request with `x-trio-sfu-forwarded: 1` after its request line."""
    line_end = head.find(b"\r\n")
    if line_end < 0:
        return head
    return head[:line_end + 2] + FORWARDED_HEADER.encode() + b": 1\r\n" + head[line_end + 2:]


def decode_attributes_param(value: str) -> dict[str, str]:
    """The `attributes` query parameter: base64url of a JSON string map."""
    if len(value) > MAX_HEAD:
        raise ValueError("attributes too long")
    try:
        data = json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    except (binascii.Error, UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError("attributes are not base64url JSON") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ValueError("attributes must be a JSON object of strings")
    return data
