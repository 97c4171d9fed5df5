"""LiveKit's AgentDispatchService (`livekit.AgentDispatchService`): dispatches on live rooms.

Every method needs `roomAdmin` for the room it names, as LiveKit's do. CreateDispatch creates the
room when rooms are created automatically (LiveKit's rule: the room then also gets its
automatic dispatch), else the room must exist; Delete and List need a live room.
"""

from __future__ import annotations

from google.protobuf.message import Message
from livekit.protocol import agent_dispatch as dispatch_pb

from trio_sfu.agents.dispatcher import AgentDispatcher, DispatchError
from trio_sfu.api.room_service import _invalid_argument, require_room_admin
from trio_sfu.api.twirp import TwirpError, TwirpMethod
from trio_sfu.signal.grants import ClaimGrants
from trio_sfu.signal.rooms import Room, RoomClosedError, RoomRegistry

SERVICE_NAME = "livekit.AgentDispatchService"
MAX_AGENT_NAME = 256


class AgentDispatchService:
    def __init__(self, registry: RoomRegistry, dispatcher: AgentDispatcher) -> None:
        self.registry = registry
        self.dispatcher = dispatcher

    def methods(self) -> dict[str, TwirpMethod]:
        return {
            "CreateDispatch": TwirpMethod(dispatch_pb.CreateAgentDispatchRequest, self.create_dispatch),
            "DeleteDispatch": TwirpMethod(dispatch_pb.DeleteAgentDispatchRequest, self.delete_dispatch),
            "ListDispatch": TwirpMethod(dispatch_pb.ListAgentDispatchRequest, self.list_dispatch),
        }

    def _room(self, name: str) -> Room:
        room = self.registry.rooms.get(name)
        if room is None or room.closed:
            raise TwirpError("not_found", "requested room does not exist")
        return room

    async def create_dispatch(self, grants: ClaimGrants, req: Message) -> dispatch_pb.AgentDispatch:
        assert isinstance(req, dispatch_pb.CreateAgentDispatchRequest)
        require_room_admin(grants, req.room)
        limits = self.registry.limits
        if limits.room_name_too_long(req.room):
            raise TwirpError("invalid_argument", f"room name exceeds limits: max length {limits.max_room_name_length}")
        if len(req.agent_name) > MAX_AGENT_NAME:
            raise TwirpError("invalid_argument", f"agent name exceeds limits: max length {MAX_AGENT_NAME}")
        _invalid_argument(limits.check_metadata(req.metadata))
        _invalid_argument(limits.check_attributes(dict(req.attributes)))
        if self.registry.config.auto_create:
            try:
                room = await self.registry.get_or_create(req.room)
            except RoomClosedError:
                raise TwirpError("unavailable", "the server is shutting down") from None
        else:
            room = self._room(req.room)
        try:
            return self.dispatcher.create_dispatch(room, req)
        except DispatchError as exc:
            raise TwirpError(exc.code, exc.message) from None

    async def delete_dispatch(self, grants: ClaimGrants, req: Message) -> dispatch_pb.AgentDispatch:
        assert isinstance(req, dispatch_pb.DeleteAgentDispatchRequest)
        require_room_admin(grants, req.room)
        try:
            return self.dispatcher.delete_dispatch(self._room(req.room), req.dispatch_id)
        except DispatchError as exc:
            raise TwirpError(exc.code, exc.message) from None

    async def list_dispatch(self, grants: ClaimGrants, req: Message) -> dispatch_pb.ListAgentDispatchResponse:
        assert isinstance(req, dispatch_pb.ListAgentDispatchRequest)
        require_room_admin(grants, req.room)
        return dispatch_pb.ListAgentDispatchResponse(
            agent_dispatches=self.dispatcher.list_dispatches(self._room(req.room), req.dispatch_id))
