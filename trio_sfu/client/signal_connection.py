"""The client's signal connection: LiveKit's ``/rtc`` WebSocket to the node the client is on now.

It carries requests out and responses in, and does what belongs to the connection rather than
to what the messages say: the join handshake, pings and their round trip, our leave, and for a
move to another node, holding requests back while there is no connection and then opening the
resumed one. Which part of the client handles a response is the facade's business
(``LiveKitClient._dispatch``).

Requests may carry a *generation*: the connection they were built for. A move to another node
starts a new generation, and a request built for an older one is dropped rather than sent to
the new node (an offer for a PeerConnection that no longer exists, say).

Where the bytes go is injectable: ``connector`` opens the stream the WebSocket runs over
(default: TCP, or TLS for ``wss://``, by trio-websocket), so whole clients and servers can run in
one Trio run under ``MockClock`` (``trio_sfu.testing.memory_network``).
"""

from __future__ import annotations

import contextlib
import json
import urllib.parse
from typing import Awaitable, Callable

import trio
import trio_websocket
from livekit.protocol import models, rtc

from trio_sfu import __version__
from trio_sfu.client.errors import JoinError
from trio_sfu.client.wallclock import wall_ms

PROTOCOL_VERSION = 17
JOIN_TIMEOUT = 10.0
MAX_SIGNAL_MESSAGE = 4 * 1024 * 1024
#: How long closing a WebSocket or sending our leave may take before we stop waiting.
CLOSE_TIMEOUT = 2.0

#: Opens the byte stream to (host, port) that the signalling WebSocket runs over.
Connector = Callable[[str, int], Awaitable[trio.abc.Stream]]
ErrorSink = Callable[[str], None]


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


def enum_name(enum_type, value: int) -> str:
    """A protobuf enum value's name; a newer server's unknown value must not make us ignore the message."""
    try:
        return enum_type.Name(value)
    except ValueError:
        return str(value)


def trickled_candidate(trickle: rtc.TrickleRequest) -> str | None:
    """The candidate line of a trickle's RTCIceCandidateInit JSON, or None when it has none.
    Raises ValueError for JSON that is not such an object."""
    if not trickle.candidateInit:
        return None
    init = json.loads(trickle.candidateInit)
    if not isinstance(init, dict):
        raise ValueError("candidateInit is not a JSON object")
    candidate = init.get("candidate") or None
    if candidate is not None and not isinstance(candidate, str):
        raise ValueError(f"candidateInit.candidate is not a string: {candidate!r}")
    return candidate


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


def _auth_headers(token: str, token_in_query: bool) -> list[tuple[bytes, bytes]]:
    # The Python SDK sends the token as a bearer header, livekit-client as a query parameter.
    return [] if token_in_query else [(b"authorization", f"Bearer {token}".encode())]


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
    try:
        response.ParseFromString(message)
    except Exception as exc:  # protobuf's DecodeError has no stable import path
        raise JoinError(f"undecodable first signal message: {exc}") from exc
    kind = response.WhichOneof("message")
    if kind == "leave":
        raise JoinError(f"server refused the join: {enum_name(models.DisconnectReason, response.leave.reason)}")
    if kind != "join":
        raise JoinError(f"first signal message was {kind!r}, not join")
    if not response.join.participant.sid.startswith("PA_"):
        raise JoinError(f"join response has no valid participant sid: {response.join.participant.sid!r}")
    return response.join


async def join_signal(nursery: trio.Nursery, url: str, token: str, *, token_in_query: bool = False,
                      auto_subscribe: bool = True, join_timeout: float = JOIN_TIMEOUT,
                      connector: Connector | None = None,
                      ) -> tuple[trio_websocket.WebSocketConnection, rtc.JoinResponse]:
    """Open the signal connection at ``url`` (its tasks in ``nursery``) and read the join.

    Raises JoinError (the WebSocket closed again); a refusal of the WebSocket handshake itself
    is raised by trio-websocket's reader task, as ``ConnectionRejected`` in ``nursery``.
    """
    ws_url = signal_url(url, access_token=token if token_in_query else None, auto_subscribe=auto_subscribe)
    ws: trio_websocket.WebSocketConnection | None = None
    try:
        try:
            with trio.fail_after(join_timeout):
                ws = await open_signal(nursery, ws_url, _auth_headers(token, token_in_query), connector)
        except trio.TooSlowError as exc:
            raise JoinError(f"cannot open the signal connection to {url} within {join_timeout:g} s") from exc
        except (trio_websocket.HandshakeError, OSError) as exc:
            raise JoinError(f"cannot open the signal connection to {url}: {exc!r}") from exc
        return ws, await _receive_join(ws, join_timeout)
    except JoinError:
        if ws is not None:
            with trio.move_on_after(CLOSE_TIMEOUT):
                await ws.aclose()
        raise


class ResumeFailed(Exception):
    """The resumed signal connection could not be opened or said nothing we could read."""


class SignalConnection:
    """The signal WebSocket of one participant, replaced when it moves to another node."""

    def __init__(self, ws: trio_websocket.WebSocketConnection, *, url: str = "", token: str = "",
                 token_in_query: bool = False, auto_subscribe: bool = True,
                 join_timeout: float = JOIN_TIMEOUT, connector: Connector | None = None,
                 on_error: ErrorSink = lambda message: None) -> None:
        self._ws = ws
        #: The base URL of the node we are connected to now (another one after a move).
        self.url = url
        # What a resume needs to open the same signal connection again, elsewhere.
        self._token = token
        self._token_in_query = token_in_query
        self._auto_subscribe = auto_subscribe
        self._join_timeout = join_timeout
        self._connector = connector
        self._on_error = on_error
        self.ping_interval = 5.0
        self.rtt_ms: float | None = None
        self.pongs = 0
        self.leave_sent = False
        #: Why the server's side closed, once it did.
        self.closed_reason: str | None = None
        #: Bumped on every move: a request built for an older connection is not sent on a newer one.
        self.generation = 0
        self._ready = trio.Event()  # replaced (unset) while a move has no signal connection
        self._ready.set()

    @property
    def closed(self) -> bool:
        """Whether the current WebSocket is closed (trio-websocket gives its close reason)."""
        return bool(self._ws.closed)

    # ------------------------------------------------------------------ requests

    async def send(self, request: rtc.SignalRequest, generation: int | None = None) -> bool:
        """Send on the current connection, waiting out a move; False if not sent.

        ``generation``: what the request was built for; one built before a move is dropped. A
        send that fails on a closed connection is not reported here: the reader sees the close
        (or, first, a resume leave).
        """
        if not self._ready.is_set():
            await self._ready.wait()
        if generation is not None and generation != self.generation:
            return False
        try:
            await self._ws.send_message(request.SerializeToString())
        except (trio_websocket.ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    async def send_candidate(self, target: int, candidate: str, mid: str, ufrag: str,
                             generation: int | None = None) -> bool:
        """A trickle of our candidate as a browser sends it (on the first m-line: with BUNDLE it
        is the transport of them all)."""
        init = {"candidate": candidate, "sdpMid": mid, "sdpMLineIndex": 0, "usernameFragment": ufrag}
        return await self.send(rtc.SignalRequest(trickle=rtc.TrickleRequest(candidateInit=json.dumps(init),
                                                                             target=target)), generation)

    async def send_leave(self) -> None:
        """Our leave (client initiated), once; nothing when the connection is already closed."""
        if self.leave_sent or self.closed:
            return
        self.leave_sent = True
        request = rtc.SignalRequest(leave=rtc.LeaveRequest(
            reason=models.DisconnectReason.CLIENT_INITIATED, action=rtc.LeaveRequest.Action.DISCONNECT))
        with contextlib.suppress(trio_websocket.ConnectionClosed, trio.BrokenResourceError):
            with trio.move_on_after(CLOSE_TIMEOUT):
                await self._ws.send_message(request.SerializeToString())

    async def aclose(self) -> None:
        with trio.move_on_after(CLOSE_TIMEOUT):
            await self._ws.aclose()

    # ------------------------------------------------------------------ responses

    async def receive(self) -> rtc.SignalResponse | None:
        """The next response; None once the server closed the connection (``closed_reason``
        says why). Text frames and undecodable messages are reported and skipped."""
        while True:
            try:
                message = await self._ws.get_message()
            except trio_websocket.ConnectionClosed as exc:
                self.closed_reason = str(exc.reason)
                return None
            if isinstance(message, str):
                self._on_error("text frame from the server ignored")
                continue
            response = rtc.SignalResponse()
            try:
                response.ParseFromString(message)
            except Exception as exc:  # protobuf's DecodeError has no stable import path
                self._on_error(f"undecodable signal message: {exc}")
                continue
            return response

    # ------------------------------------------------------------------ pings

    async def run_pings(self) -> None:
        """A ``ping_req`` every ``ping_interval`` seconds, with the last round trip measured."""
        while True:
            await trio.sleep(self.ping_interval)
            await self.send(rtc.SignalRequest(ping_req=rtc.Ping(timestamp=wall_ms(), rtt=int(self.rtt_ms or 0))))

    def on_pong(self, pong: rtc.Pong) -> None:
        self.pongs += 1
        self.rtt_ms = max(wall_ms() - pong.last_ping_timestamp, 0)

    # ------------------------------------------------------------------ moving to another node

    def hold(self) -> None:
        """A move to another node began: requests wait until :meth:`release`."""
        if self._ready.is_set():
            self._ready = trio.Event()

    def release(self) -> None:
        """Requests go on: on the new connection, or (the move failed, we left) nowhere."""
        self._ready.set()

    def next_generation(self) -> int:
        """Requests built from now on are for the next connection; older ones are dropped."""
        self.generation += 1
        return self.generation

    async def resume_at(self, nursery: trio.Nursery, base_url: str, participant_sid: str) -> rtc.SignalResponse:
        """Close the connection to the node we leave, open a resume (``reconnect=1``) of
        ``participant_sid`` at ``base_url`` with its tasks in ``nursery`` (the connection
        outlives the move), and return the new node's first response. Raises ResumeFailed.
        The caller decides from that response whether the node took us back (and sets ``url``).
        """
        await self.aclose()
        try:
            url = signal_url(base_url, access_token=self._token if self._token_in_query else None,
                             auto_subscribe=self._auto_subscribe, resume_sid=participant_sid,
                             reconnect_reason=models.ReconnectReason.RR_UNKNOWN)
            with trio.fail_after(self._join_timeout):
                ws = await open_signal(nursery, url, _auth_headers(self._token, self._token_in_query),
                                       self._connector)
        except (ValueError, trio_websocket.HandshakeError, OSError, trio.TooSlowError) as exc:
            raise ResumeFailed(f"cannot resume at {base_url}: {exc!r}") from exc
        self._ws = ws
        first = rtc.SignalResponse()
        try:
            with trio.fail_after(self._join_timeout):
                message = await ws.get_message()
            if isinstance(message, str):
                raise ValueError("text frame")
            first.ParseFromString(message)
        except trio.TooSlowError as exc:
            raise ResumeFailed(f"no reconnect response from {base_url} within {self._join_timeout:g} s") from exc
        except trio_websocket.ConnectionClosed as exc:
            raise ResumeFailed(f"{base_url} closed the resumed signal connection: {exc.reason}") from exc
        except Exception as exc:  # protobuf's DecodeError has no stable import path
            raise ResumeFailed(f"undecodable first message from {base_url}: {exc}") from exc
        return first


__all__ = [
    "Connector",
    "JOIN_TIMEOUT",
    "MAX_SIGNAL_MESSAGE",
    "PROTOCOL_VERSION",
    "ResumeFailed",
    "SignalConnection",
    "enum_name",
    "join_signal",
    "open_signal",
    "signal_url",
    "trickled_candidate",
]
