"""The Server API on a cluster: any node answers for any room.

A room may span nodes, and each node's `RoomService` (trio_sfu.api.room_service) knows only its
own participants. `ClusterRoomService` wraps each of its methods: the call runs here, and the
same call goes to the other nodes that host the room (the node directory says which), with the
caller's own bearer token -- each node verifies the token and checks the grants itself, so a
forwarded call can do nothing its caller could not. The answers merge per method:

- lists (ListRooms, ListParticipants) are unions; a room's counts are summed over its nodes;
- a call about one participant (GetParticipant, RemoveParticipant, MutePublishedTrack,
  UpdateParticipant, UpdateSubscriptions) is answered by the node that has the participant;
- a call about a whole room (DeleteRoom, UpdateRoomMetadata, SendData) runs on every node
  hosting it.

A forwarded call carries `x-trio-sfu-forwarded: 1` and is answered from the receiving node's
own state only, so calls never bounce between nodes. A client that sets the header itself just
gets that node's local view. If the directory is unreachable, calls are answered from this
node's state alone (logged): the API degrades to what LiveKit's single node would say.
"""

from __future__ import annotations

import contextvars
import json
from typing import Awaitable, Callable, Mapping, Optional, Protocol, Sequence, TypeVar

import trio
from google.protobuf.message import DecodeError, Message
from livekit.protocol import models
from livekit.protocol import room as room_pb

from trio_sfu import metrics as m
from trio_sfu.api.twirp import TwirpError, TwirpMethod
from trio_sfu.cluster.errors import DirectoryUnavailable
from trio_sfu.http_post import HttpEndpoint, HttpUnreachable, post
from trio_sfu.log import get_logger
from trio_sfu.signal.grants import ClaimGrants

_log = get_logger("trio_sfu.api.cluster_rooms")

FORWARDED_HEADER = "x-trio-sfu-forwarded"
#: A peer node's answer is bounded like anything else we read.
MAX_PEER_REPLY = 4 * 1024 * 1024
PEER_CALL_TIMEOUT = 5.0
SERVICE_PATH = "/twirp/livekit.RoomService/"

TWIRP_FORWARDED = "twirp_forwarded_total"
TWIRP_FORWARD_FAILED = "twirp_forward_failed_total"

#: The bearer token and forwarded flag of the Twirp call being handled (set by the HTTP front
#: for each call; a context variable because the handlers' signature is (grants, request)).
CALLER: contextvars.ContextVar[tuple[str, bool]] = contextvars.ContextVar("trio_sfu_twirp_caller", default=("", False))

M = TypeVar("M", bound=Message)


class ClusterView(Protocol):
    """What the API needs of the cluster."""

    @property
    def node_id(self) -> str: ...

    def peer_urls(self) -> dict[str, str]:
        """The other live nodes' own signal URLs, by node id."""

    async def room_hosts(self, room: str) -> set[str]:
        """The nodes that host participants of `room`; raises on a directory outage."""


class PeerCallError(Exception):
    pass


async def call_peer(url: str, method: str, request: Message, response_type: type[M], token: str,
                    timeout: float = PEER_CALL_TIMEOUT) -> M:
    """POST one protobuf Twirp call to the node at `url` (its ws:// signal URL)."""
    try:
        endpoint = HttpEndpoint.from_url(url)
    except ValueError:
        raise PeerCallError(f"unusable node URL {url!r}") from None
    headers = [("content-type", "application/protobuf"), ("authorization", f"Bearer {token}"),
               (FORWARDED_HEADER, "1")]
    try:
        status, reply = await post(endpoint, SERVICE_PATH + method, headers, request.SerializeToString(),
                                   timeout=timeout, max_reply=MAX_PEER_REPLY)
    except HttpUnreachable as exc:
        raise PeerCallError(str(exc)) from None
    if status != 200:
        raise _peer_error(status, reply)
    message = response_type()
    try:
        message.ParseFromString(reply)
    except DecodeError:
        raise PeerCallError("unparsable peer reply") from None
    return message


def _peer_error(status: int, body: bytes) -> Exception:
    """A peer's Twirp error as a TwirpError (so `not_found` means the same there as here)."""
    try:
        data = json.loads(body)
        return TwirpError(str(data["code"]), str(data.get("msg", ""))[:500])
    except (ValueError, KeyError, TypeError):
        return PeerCallError(f"status {status}: {body[:200]!r}")


Handler = Callable[[ClaimGrants, Message], Awaitable[Message]]


class ClusterRoomService:
    def __init__(self, local: Mapping[str, TwirpMethod], cluster: ClusterView, metrics: m.Metrics,
                 call: Callable[..., Awaitable[Message]] = call_peer) -> None:
        self.local = dict(local)
        self.cluster = cluster
        self.metrics = metrics
        self._call = call

    def methods(self) -> dict[str, TwirpMethod]:
        wrapped = {
            "ListRooms": self._list_rooms,
            "ListParticipants": self._list_participants,
            "GetParticipant": self._one_participant("GetParticipant"),
            "RemoveParticipant": self._one_participant("RemoveParticipant"),
            "MutePublishedTrack": self._one_participant("MutePublishedTrack"),
            "UpdateParticipant": self._one_participant("UpdateParticipant"),
            "UpdateSubscriptions": self._one_participant("UpdateSubscriptions"),
            "DeleteRoom": self._whole_room("DeleteRoom"),
            "UpdateRoomMetadata": self._whole_room("UpdateRoomMetadata"),
            "SendData": self._whole_room("SendData"),
        }
        out = dict(self.local)
        for name, handler in wrapped.items():
            out[name] = TwirpMethod(self.local[name].request_type, handler)
        return out

    # ---- plumbing ---------------------------------------------------------------------------

    async def _run_local(self, name: str, grants: ClaimGrants, req: Message) -> Message | TwirpError:
        try:
            return await self.local[name].handler(grants, req)
        except TwirpError as exc:
            return exc

    async def _targets(self, room: Optional[str]) -> dict[str, str]:
        """The other nodes to ask (id -> URL): those hosting `room`, or every live node."""
        token, forwarded = CALLER.get()
        if forwarded or not token:
            return {}
        peers = self.cluster.peer_urls()
        if room is None:
            return peers
        try:
            hosts = await self.cluster.room_hosts(room)
        except DirectoryUnavailable as exc:  # an outage: answer from this node alone
            _log.warning("room hosts unknown, answering locally", kv={"room": room, "error": type(exc).__name__})
            return {}
        return {node: url for node, url in peers.items() if node in hosts}

    async def _fan_out(self, name: str, req: Message, targets: dict[str, str]) -> list[Message | Exception]:
        token, _ = CALLER.get()
        results: list[Message | Exception] = []

        async def one(node: str, url: str) -> None:
            self.metrics.inc(TWIRP_FORWARDED)
            try:
                results.append(await self._call(url, name, req, _RESPONSE_TYPES[name], token))
            except TwirpError as exc:
                results.append(exc)
            except PeerCallError as exc:
                self.metrics.inc(TWIRP_FORWARD_FAILED)
                _log.warning("forwarded call failed", kv={"method": name, "node": node, "error": str(exc)[:200]})
                results.append(exc)

        async with trio.open_nursery() as nursery:
            for node, url in sorted(targets.items()):
                nursery.start_soon(one, node, url)
        return results

    # ---- merges -------------------------------------------------------------------------------

    async def _list_rooms(self, grants: ClaimGrants, req: room_pb.ListRoomsRequest) -> room_pb.ListRoomsResponse:
        local = await self.local["ListRooms"].handler(grants, req)  # checks the grant first
        merged: dict[str, models.Room] = {r.name: r for r in local.rooms}
        for result in await self._fan_out("ListRooms", req, await self._targets(None)):
            if not isinstance(result, room_pb.ListRoomsResponse):
                continue
            for room in result.rooms:
                mine = merged.get(room.name)
                if mine is None:
                    merged[room.name] = room
                else:
                    mine.num_participants += room.num_participants
                    mine.num_publishers += room.num_publishers
                    if room.creation_time and (not mine.creation_time or room.creation_time < mine.creation_time):
                        mine.creation_time = room.creation_time
        return room_pb.ListRoomsResponse(rooms=[merged[name] for name in sorted(merged)])

    async def _list_participants(self, grants: ClaimGrants,
                                 req: room_pb.ListParticipantsRequest) -> room_pb.ListParticipantsResponse:
        local = await self._run_local("ListParticipants", grants, req)
        if isinstance(local, TwirpError) and local.code != "not_found":
            raise local
        found = not isinstance(local, TwirpError)
        participants = {p.identity: p for p in (local.participants if found else [])}
        for result in await self._fan_out("ListParticipants", req, await self._targets(req.room)):
            if isinstance(result, room_pb.ListParticipantsResponse):
                found = True
                for p in result.participants:
                    participants.setdefault(p.identity, p)
        if not found:
            raise local  # type: ignore[misc]
        return room_pb.ListParticipantsResponse(participants=[participants[k] for k in sorted(participants)])

    def _one_participant(self, name: str) -> Handler:
        async def handler(grants: ClaimGrants, req: Message) -> Message:
            local = await self._run_local(name, grants, req)
            if not isinstance(local, TwirpError) or local.code != "not_found":
                if isinstance(local, TwirpError):
                    raise local
                return local
            for result in await self._fan_out(name, req, await self._targets(req.room)):  # type: ignore[attr-defined]
                if isinstance(result, Message):
                    return result
                if isinstance(result, TwirpError) and result.code != "not_found":
                    raise result
            raise local
        return handler

    def _whole_room(self, name: str) -> Handler:
        async def handler(grants: ClaimGrants, req: Message) -> Message:
            local = await self._run_local(name, grants, req)
            if isinstance(local, TwirpError) and local.code != "not_found":
                raise local
            answer = None if isinstance(local, TwirpError) else local
            for result in await self._fan_out(name, req, await self._targets(req.room)):  # type: ignore[attr-defined]
                if isinstance(result, Message) and answer is None:
                    answer = result
            if answer is None:
                raise local  # type: ignore[misc]
            return answer
        return handler


_RESPONSE_TYPES: dict[str, type[Message]] = {
    "ListRooms": room_pb.ListRoomsResponse,
    "ListParticipants": room_pb.ListParticipantsResponse,
    "GetParticipant": models.ParticipantInfo,
    "RemoveParticipant": room_pb.RemoveParticipantResponse,
    "MutePublishedTrack": room_pb.MuteRoomTrackResponse,
    "UpdateParticipant": models.ParticipantInfo,
    "UpdateSubscriptions": room_pb.UpdateSubscriptionsResponse,
    "DeleteRoom": room_pb.DeleteRoomResponse,
    "UpdateRoomMetadata": models.Room,
    "SendData": room_pb.SendDataResponse,
}


def caller_from_headers(headers: Mapping[str, str]) -> tuple[str, bool]:
    """(bearer token, forwarded by a node) of a Twirp request, for CALLER."""
    authorization = headers.get("authorization", "")
    token = authorization[len("Bearer "):] if authorization.startswith("Bearer ") else ""
    return token, headers.get(FORWARDED_HEADER) == "1"


__all__: Sequence[str] = ("CALLER", "ClusterRoomService", "ClusterView", "call_peer", "caller_from_headers")
