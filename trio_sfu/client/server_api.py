"""A small client of LiveKit's Server API (Twirp `livekit.RoomService`) on Trio.

One call is one HTTP/1.1 POST (h11 over a Trio TCP or TLS stream) of a protobuf request to
`/twirp/livekit.RoomService/<Method>`, with a bearer token minted for that call from the API key
and secret, carrying just the grant the method needs (as LiveKit's server SDKs do: `roomCreate`
to create and delete, `roomList` to list, `roomAdmin` on the room for the rest). An answer is
read up to MAX_REPLY bytes.

What can go wrong is one of two exceptions, each with a message a person can act on:
`ServerUnreachable` (nothing answers at the URL, or not in time, or not HTTP) and `TwirpCallError`
(the server answered with a Twirp error: its code, message and HTTP status; 401 is a key or
secret the server does not accept).
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.parse
from typing import Any, Mapping, Sequence, TypeVar

import attrs
import h11
import trio
from google.protobuf.message import DecodeError, Message
from livekit.protocol import models
from livekit.protocol import room as room_pb

from trio_sfu.client.tokens import mint_token

SERVICE_PATH = "/twirp/livekit.RoomService/"
#: No answer of the room service is near this; it bounds what a wrong server makes us read.
MAX_REPLY = 8 * 1024 * 1024
CALL_TIMEOUT = 10.0
#: Each call mints its own token; it need not outlive the call by much.
CALL_TOKEN_VALID_FOR = 600.0

M = TypeVar("M", bound=Message)


class ServerApiError(Exception):
    """A Server API call failed; `str()` is the one-line reason."""


class ServerUnreachable(ServerApiError):
    """Nothing usable answered at the server's address."""


class TwirpCallError(ServerApiError):
    """The server answered the call with a Twirp error."""

    def __init__(self, code: str, msg: str, status: int) -> None:
        super().__init__(f"{code}: {msg}" if msg else code)
        self.code = code
        self.msg = msg
        self.status = status

    @property
    def unauthenticated(self) -> bool:
        return self.status == 401 or self.code == "unauthenticated"


@attrs.frozen
class HttpEndpoint:
    """Where the Server API of a LiveKit URL is: `ws(s)://` and `http(s)://` name the same server."""

    tls: bool
    host: str
    port: int
    path: str  # any path prefix the URL had, without a trailing slash

    @classmethod
    def from_url(cls, url: str) -> "HttpEndpoint":
        parts = urllib.parse.urlsplit(url)
        scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
        if scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"server URL must be http://, https://, ws:// or wss:// with a host, not {url!r}")
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            raise ValueError(f"server URL has a bad port: {url!r}") from None
        return cls(scheme == "https", parts.hostname, port, parts.path.rstrip("/"))

    @property
    def base(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}{self.path}"


async def _open_stream(endpoint: HttpEndpoint) -> trio.abc.Stream:
    if endpoint.tls:
        return await trio.open_ssl_over_tcp_stream(endpoint.host, endpoint.port,
                                                   ssl_context=ssl.create_default_context())
    return await trio.open_tcp_stream(endpoint.host, endpoint.port)


def os_reason(exc: BaseException) -> str:
    """`connection refused`, not the errno soup of one failed attempt per address."""
    pending: list[BaseException | None] = [exc]
    seen = 0
    while pending and seen < 32:  # trio wraps the attempts: OSError from a group of OSErrors
        cause = pending.pop(0)
        if cause is None:
            continue
        seen += 1
        if isinstance(cause, OSError) and cause.errno:
            return os.strerror(cause.errno).lower()  # trio's own strerror repeats the address
        pending += [*getattr(cause, "exceptions", ()), cause.__cause__]
    return str(exc) or type(exc).__name__


async def post(endpoint: HttpEndpoint, target: str, headers: Sequence[tuple[str, str]], body: bytes,
               timeout: float = CALL_TIMEOUT) -> tuple[int, bytes]:
    """One HTTP/1.1 POST: (status, body). Raises ServerUnreachable."""
    connection = h11.Connection(h11.CLIENT)
    host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
    status = 0
    reply = bytearray()
    with trio.move_on_after(timeout) as scope:
        try:
            stream = await _open_stream(endpoint)
        except (OSError, ssl.SSLError) as exc:
            raise ServerUnreachable(f"cannot reach the server at {endpoint.base} ({os_reason(exc)})") from None
        try:
            async with stream:
                head = h11.Request(method="POST", target=target, headers=[
                    ("host", f"{host}:{endpoint.port}"), *headers,
                    ("content-length", str(len(body))), ("connection", "close")])
                await stream.send_all(connection.send(head) + connection.send(h11.Data(data=body))
                                      + connection.send(h11.EndOfMessage()))
                while True:
                    event = connection.next_event()
                    if event is h11.NEED_DATA:
                        connection.receive_data(await stream.receive_some(65536))
                        continue
                    if isinstance(event, h11.Response):
                        status = event.status_code
                    elif isinstance(event, h11.Data):
                        reply += event.data
                        if len(reply) > MAX_REPLY:
                            raise ServerUnreachable(f"the answer from {endpoint.base} is larger than {MAX_REPLY} bytes")
                    elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                        break
        except h11.ProtocolError:
            raise ServerUnreachable(f"{endpoint.base} did not answer in HTTP/1.1: is it a LiveKit server?") from None
        except (OSError, ssl.SSLError, trio.BrokenResourceError) as exc:
            raise ServerUnreachable(f"the connection to {endpoint.base} broke ({os_reason(exc)})") from None
    if scope.cancelled_caught:
        raise ServerUnreachable(f"no answer from {endpoint.base} within {timeout:g} s")
    return status, bytes(reply)


def _twirp_error(status: int, body: bytes) -> TwirpCallError:
    try:
        data = json.loads(body)
        return TwirpCallError(str(data["code"]), str(data.get("msg", ""))[:500], status)
    except (ValueError, KeyError, TypeError):
        text = body[:200].decode("utf-8", "replace").strip()
        return TwirpCallError("unknown" if status != 401 else "unauthenticated", f"HTTP {status} {text}".strip(), status)


class RoomServiceClient:
    """LiveKit's RoomService at `url`, called with tokens minted from `api_key`/`api_secret`."""

    def __init__(self, url: str, api_key: str, api_secret: str, *, timeout: float = CALL_TIMEOUT) -> None:
        self.endpoint = HttpEndpoint.from_url(url)
        self.api_key = api_key
        self.api_secret = api_secret
        self.timeout = timeout

    def _token(self, video: Mapping[str, Any]) -> str:
        return mint_token(self.api_key, self.api_secret, video=video, valid_for=CALL_TOKEN_VALID_FOR)

    async def call(self, method: str, request: Message, response_type: type[M], video: Mapping[str, Any]) -> M:
        """POST `request` to `method`; the answer parsed as `response_type`."""
        headers = [("content-type", "application/protobuf"), ("authorization", f"Bearer {self._token(video)}")]
        status, body = await post(self.endpoint, self.endpoint.path + SERVICE_PATH + method, headers,
                                  request.SerializeToString(), self.timeout)
        if status != 200:
            raise _twirp_error(status, body)
        message = response_type()
        try:
            message.ParseFromString(body)
        except DecodeError:
            raise ServerApiError(f"{method}: the server's answer is not a {response_type.__name__}") from None
        return message

    # ------------------------------------------------------------------ rooms

    async def create_room(self, name: str, *, empty_timeout: int = 0, max_participants: int = 0,
                          metadata: str = "") -> models.Room:
        request = room_pb.CreateRoomRequest(name=name, empty_timeout=empty_timeout,
                                            max_participants=max_participants, metadata=metadata)
        return await self.call("CreateRoom", request, models.Room, {"roomCreate": True})

    async def list_rooms(self, names: Sequence[str] = ()) -> list[models.Room]:
        response = await self.call("ListRooms", room_pb.ListRoomsRequest(names=list(names)),
                                   room_pb.ListRoomsResponse, {"roomList": True})
        return list(response.rooms)

    async def delete_room(self, name: str) -> None:
        await self.call("DeleteRoom", room_pb.DeleteRoomRequest(room=name), room_pb.DeleteRoomResponse,
                        {"roomCreate": True})

    # ------------------------------------------------------------------ participants

    def _admin(self, room: str) -> dict[str, Any]:
        return {"roomAdmin": True, "room": room}

    async def list_participants(self, room: str) -> list[models.ParticipantInfo]:
        response = await self.call("ListParticipants", room_pb.ListParticipantsRequest(room=room),
                                   room_pb.ListParticipantsResponse, self._admin(room))
        return list(response.participants)

    async def get_participant(self, room: str, identity: str) -> models.ParticipantInfo:
        return await self.call("GetParticipant", room_pb.RoomParticipantIdentity(room=room, identity=identity),
                               models.ParticipantInfo, self._admin(room))

    async def remove_participant(self, room: str, identity: str) -> None:
        await self.call("RemoveParticipant", room_pb.RoomParticipantIdentity(room=room, identity=identity),
                        room_pb.RemoveParticipantResponse, self._admin(room))

    async def mute_published_track(self, room: str, identity: str, track_sid: str, muted: bool) -> models.TrackInfo:
        request = room_pb.MuteRoomTrackRequest(room=room, identity=identity, track_sid=track_sid, muted=muted)
        response = await self.call("MutePublishedTrack", request, room_pb.MuteRoomTrackResponse, self._admin(room))
        return response.track


__all__ = ["HttpEndpoint", "RoomServiceClient", "ServerApiError", "ServerUnreachable", "TwirpCallError", "os_reason",
           "post"]
