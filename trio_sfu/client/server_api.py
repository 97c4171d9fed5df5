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
from typing import Any, Mapping, Sequence, TypeVar

from google.protobuf.message import DecodeError, Message
from livekit.protocol import models
from livekit.protocol import room as room_pb

from trio_sfu.client.tokens import mint_token
from trio_sfu.http_post import HttpEndpoint, HttpUnreachable, os_reason
from trio_sfu.http_post import post as http_post

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


async def post(endpoint: HttpEndpoint, target: str, headers: Sequence[tuple[str, str]], body: bytes,
               timeout: float = CALL_TIMEOUT) -> tuple[int, bytes]:
    """One HTTP/1.1 POST: (status, body). Raises ServerUnreachable."""
    try:
        return await http_post(endpoint, target, headers, body, timeout=timeout, max_reply=MAX_REPLY)
    except HttpUnreachable as exc:
        raise ServerUnreachable(str(exc)) from None


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
