"""LiveKit's RoomService (the Server API) on our rooms: every call takes effect on live sessions.

Grants follow LiveKit: CreateRoom and DeleteRoom need `roomCreate`, ListRooms `roomList`, the
rest `roomAdmin` for the room named in the request; a missing grant is `unauthenticated`.
Sizes follow the server's `limit` config (LiveKit's keys and defaults, `trio_sfu.signal.limits`);
a request over one is `invalid_argument`, as LiveKit answers. Moderation acts through the participants' own paths so clients see exactly what LiveKit
sends: a remote mute reaches the publisher as `mute` and everyone else as a ParticipantUpdate;
removal and room deletion send `leave` with PARTICIPANT_REMOVED / ROOM_DELETED; permission
changes unpublish tracks and drop subscriptions; UpdateSubscriptions is handled as if the
participant had sent it; SendData goes to each recipient's `deliver_data`.
"""

from __future__ import annotations

import attrs
from google.protobuf.message import Message
from livekit.protocol import models, room as room_pb, rtc

from trio_sfu.signal.grants import MAX_REQUESTED_AGENTS, ClaimGrants, VideoGrant
from trio_sfu.signal.limits import Refusal, SignalLimits, merge_attributes
from trio_sfu.signal.participant import Participant
from trio_sfu.signal.rooms import Room, RoomClosedError, RoomRegistry
from trio_sfu.signal.codec import encode_response
from trio_sfu.api.twirp import TwirpError, TwirpMethod

SERVICE_NAME = "livekit.RoomService"
NONCE_LENGTH = 16

_SOURCE_GRANT_NAMES = {
    models.TrackSource.CAMERA: "camera",
    models.TrackSource.MICROPHONE: "microphone",
    models.TrackSource.SCREEN_SHARE: "screen_share",
    models.TrackSource.SCREEN_SHARE_AUDIO: "screen_share_audio",
}


def _denied() -> TwirpError:
    # LiveKit answers every missing or wrong grant with Unauthenticated "permissions denied".
    return TwirpError("unauthenticated", "permissions denied")


def require_room_create(grants: ClaimGrants) -> None:
    if grants.video is None or not grants.video.room_create:
        raise _denied()


def require_room_list(grants: ClaimGrants) -> None:
    if grants.video is None or not grants.video.room_list:
        raise _denied()


def require_room_admin(grants: ClaimGrants, room: str) -> None:
    video = grants.video
    if video is None or not video.room_admin or not room or video.room != room:
        raise _denied()


def video_grant_with_permission(video: VideoGrant, permission: models.ParticipantPermission) -> VideoGrant:
    """A participant's grant after UpdateParticipant set `permission` (room grants kept)."""
    return attrs.evolve(
        video,
        can_publish=permission.can_publish,
        can_subscribe=permission.can_subscribe,
        can_publish_data=permission.can_publish_data,
        can_publish_sources=tuple(
            _SOURCE_GRANT_NAMES[s] for s in permission.can_publish_sources if s in _SOURCE_GRANT_NAMES
        ),
        hidden=permission.hidden,
        recorder=permission.recorder,
        can_update_own_metadata=permission.can_update_metadata,
        agent=permission.agent,
        can_subscribe_metrics=permission.can_subscribe_metrics,
        can_manage_agent_session=permission.can_manage_agent_session,
    )


def _invalid_argument(refusal: Refusal | None) -> None:
    if refusal is not None:
        raise TwirpError("invalid_argument", refusal.message)


class RoomService:
    """The RoomService methods over one RoomRegistry."""

    def __init__(self, registry: RoomRegistry) -> None:
        self.registry = registry

    @property
    def limits(self) -> SignalLimits:
        return self.registry.limits

    def methods(self) -> dict[str, TwirpMethod]:
        return {
            "CreateRoom": TwirpMethod(room_pb.CreateRoomRequest, self.create_room),
            "ListRooms": TwirpMethod(room_pb.ListRoomsRequest, self.list_rooms),
            "DeleteRoom": TwirpMethod(room_pb.DeleteRoomRequest, self.delete_room),
            "ListParticipants": TwirpMethod(room_pb.ListParticipantsRequest, self.list_participants),
            "GetParticipant": TwirpMethod(room_pb.RoomParticipantIdentity, self.get_participant),
            "RemoveParticipant": TwirpMethod(room_pb.RoomParticipantIdentity, self.remove_participant),
            "MutePublishedTrack": TwirpMethod(room_pb.MuteRoomTrackRequest, self.mute_published_track),
            "UpdateParticipant": TwirpMethod(room_pb.UpdateParticipantRequest, self.update_participant),
            "UpdateSubscriptions": TwirpMethod(room_pb.UpdateSubscriptionsRequest, self.update_subscriptions),
            "SendData": TwirpMethod(room_pb.SendDataRequest, self.send_data),
            "UpdateRoomMetadata": TwirpMethod(room_pb.UpdateRoomMetadataRequest, self.update_room_metadata),
            # Known RoomService methods this server does not offer (multi-room/agent features):
            # `unimplemented` tells a caller so, where `bad_route` would suggest a typo.
            "ForwardParticipant": TwirpMethod(room_pb.ForwardParticipantRequest, self._unimplemented),
            "MoveParticipant": TwirpMethod(room_pb.MoveParticipantRequest, self._unimplemented),
            "PerformRpc": TwirpMethod(room_pb.PerformRpcRequest, self._unimplemented),
        }

    async def _unimplemented(self, grants: ClaimGrants, req: Message) -> Message:
        raise TwirpError("unimplemented", f"{type(req).__name__[:-len('Request')]} is not supported by this server")

    # ---- lookups -----------------------------------------------------------------------

    def _room(self, name: str) -> Room:
        room = self.registry.rooms.get(name)
        if room is None or room.closed:
            raise TwirpError("not_found", "requested room does not exist")
        return room

    def _participant(self, room_name: str, identity: str) -> Participant:
        participant = self._room(room_name).participants.get(identity)
        if participant is None or participant.is_closed:
            raise TwirpError("not_found", "participant does not exist")
        return participant

    # ---- rooms -------------------------------------------------------------------------

    async def create_room(self, grants: ClaimGrants, req: room_pb.CreateRoomRequest) -> models.Room:
        require_room_create(grants)
        if not req.name:
            raise TwirpError("invalid_argument", "room name cannot be empty")
        if self.limits.room_name_too_long(req.name):
            raise TwirpError("invalid_argument",
                             f"room name exceeds limits: max length {self.limits.max_room_name_length}")
        _invalid_argument(self.limits.check_metadata(req.metadata))
        # LiveKit: a zero option means "the server's default".
        defaults = self.registry.config
        config = attrs.evolve(
            defaults,
            empty_timeout=req.empty_timeout or defaults.empty_timeout,
            departure_timeout=req.departure_timeout or defaults.departure_timeout,
            max_participants=req.max_participants or defaults.max_participants,
        )
        try:
            # An existing room is returned as it is, as LiveKit does.
            room = await self.registry.get_or_create(req.name, config, req.metadata,
                                                     agents=req.agents[:MAX_REQUESTED_AGENTS])
        except RoomClosedError:
            raise TwirpError("unavailable", "the server is shutting down") from None
        return room.to_proto()

    async def list_rooms(self, grants: ClaimGrants, req: room_pb.ListRoomsRequest) -> room_pb.ListRoomsResponse:
        require_room_list(grants)
        wanted = set(req.names)
        rooms = [r.to_proto() for r in self.registry.rooms.values() if not r.closed and (not wanted or r.name in wanted)]
        return room_pb.ListRoomsResponse(rooms=rooms)

    async def delete_room(self, grants: ClaimGrants, req: room_pb.DeleteRoomRequest) -> room_pb.DeleteRoomResponse:
        require_room_create(grants)
        room = self._room(req.room)
        # Participants get `leave` with ROOM_DELETED; the room's task ends when theirs have.
        room.close(models.DisconnectReason.ROOM_DELETED)
        return room_pb.DeleteRoomResponse()

    async def update_room_metadata(self, grants: ClaimGrants, req: room_pb.UpdateRoomMetadataRequest) -> models.Room:
        require_room_admin(grants, req.room)
        room = self._room(req.room)
        _invalid_argument(self.limits.check_metadata(req.metadata))
        room.metadata = req.metadata
        info = room.to_proto()
        frame = encode_response(rtc.SignalResponse(room_update=rtc.RoomUpdate(room=info)))
        for participant in list(room.participants.values()):
            participant.send_encoded(frame)
        return info

    # ---- participants ------------------------------------------------------------------

    async def list_participants(
        self, grants: ClaimGrants, req: room_pb.ListParticipantsRequest
    ) -> room_pb.ListParticipantsResponse:
        require_room_admin(grants, req.room)
        room = self._room(req.room)
        return room_pb.ListParticipantsResponse(participants=[p.to_info() for p in room.participants.values()])

    async def get_participant(self, grants: ClaimGrants, req: room_pb.RoomParticipantIdentity) -> models.ParticipantInfo:
        require_room_admin(grants, req.room)
        return self._participant(req.room, req.identity).to_info()

    async def remove_participant(
        self, grants: ClaimGrants, req: room_pb.RoomParticipantIdentity
    ) -> room_pb.RemoveParticipantResponse:
        require_room_admin(grants, req.room)
        participant = self._participant(req.room, req.identity)
        participant.close(models.DisconnectReason.PARTICIPANT_REMOVED, send_leave=True)
        return room_pb.RemoveParticipantResponse()

    async def mute_published_track(
        self, grants: ClaimGrants, req: room_pb.MuteRoomTrackRequest
    ) -> room_pb.MuteRoomTrackResponse:
        require_room_admin(grants, req.room)
        room = self._room(req.room)
        if not req.muted and not room.config.enable_remote_unmute:
            # LiveKit: unmuting someone else's microphone needs `room.enable_remote_unmute`.
            raise TwirpError("failed_precondition", "remote unmute not enabled")
        participant = self._participant(req.room, req.identity)
        track = participant.set_track_muted(req.track_sid, req.muted, from_admin=True)
        if track is None:
            raise TwirpError("not_found", "track is not found")
        return room_pb.MuteRoomTrackResponse(track=track)

    async def update_participant(
        self, grants: ClaimGrants, req: room_pb.UpdateParticipantRequest
    ) -> models.ParticipantInfo:
        require_room_admin(grants, req.room)
        participant = self._participant(req.room, req.identity)
        _invalid_argument(self.limits.check_participant_update(req.name, req.metadata, req.attributes,
                                                               participant.attributes))
        if req.metadata:
            participant.metadata = req.metadata
        if req.name:
            participant.name = req.name
        # As for the participant's own update: an empty value deletes the key.
        participant.attributes = merge_attributes(participant.attributes, req.attributes)
        if req.HasField("permission"):
            await self._apply_permission(participant, req.permission)
        participant.bump_version()
        # The participant sees its own new info (JS raises ParticipantPermissionsChanged and
        # metadata events from it); the others see it unless it is hidden.
        participant.room.broadcast_participant(participant, include_self=True)
        return participant.to_info()

    async def _apply_permission(self, participant: Participant, permission: models.ParticipantPermission) -> None:
        old = participant.grants.video or VideoGrant()
        new = video_grant_with_permission(old, permission)
        participant.grants = attrs.evolve(participant.grants, video=new)
        room = participant.room
        for track in list(participant.tracks.values()):
            if not new.may_publish_source(track.source):
                participant.unpublish_track(track.sid)
        if old.may_subscribe and not new.may_subscribe:
            subscribed = [
                sid
                for other in room.participants.values()
                if other is not participant
                for sid in other.tracks
            ]
            subscribed += [sid for sid, wanted in participant.subscriptions.items() if wanted]
            if subscribed:
                participant.update_subscription(
                    rtc.UpdateSubscription(track_sids=sorted(set(subscribed)), subscribe=False), from_server=True)
        if new.hidden and not old.hidden and participant.announced:
            # Clients drop a participant whose update says DISCONNECTED.
            gone = participant.to_info()
            gone.state = models.ParticipantInfo.State.DISCONNECTED
            frame = encode_response(rtc.SignalResponse(update=rtc.ParticipantUpdate(participants=[gone])))
            for other in list(room.participants.values()):
                if other is not participant:
                    other.send_participant_update(participant.sid, frame)

    async def update_subscriptions(
        self, grants: ClaimGrants, req: room_pb.UpdateSubscriptionsRequest
    ) -> room_pb.UpdateSubscriptionsResponse:
        require_room_admin(grants, req.room)
        participant = self._participant(req.room, req.identity)
        update = rtc.UpdateSubscription(
            track_sids=list(req.track_sids), subscribe=req.subscribe, participant_tracks=list(req.participant_tracks)
        )
        _invalid_argument(participant.update_subscription(update))
        return room_pb.UpdateSubscriptionsResponse()

    async def send_data(self, grants: ClaimGrants, req: room_pb.SendDataRequest) -> room_pb.SendDataResponse:
        require_room_admin(grants, req.room)
        room = self._room(req.room)
        if req.nonce and len(req.nonce) != NONCE_LENGTH:
            raise TwirpError("invalid_argument", f"nonce must be empty or {NONCE_LENGTH} bytes")
        identities = list(req.destination_identities)
        if req.destination_sids:
            by_sid = {p.sid: p.identity for p in room.participants.values()}
            identities += [by_sid[sid] for sid in req.destination_sids if sid in by_sid]
        user = models.UserPacket(payload=req.data, destination_identities=identities, nonce=req.nonce)
        if req.HasField("topic"):
            user.topic = req.topic
        # From the server: no sender identity, as LiveKit's server-originated packets.
        packet = models.DataPacket(kind=req.kind, destination_identities=identities, user=user)
        targeted = bool(req.destination_identities or req.destination_sids)
        wanted = set(identities)
        for participant in list(room.participants.values()):
            if not targeted or participant.identity in wanted:
                participant.deliver_data(packet, req.kind)
        return room_pb.SendDataResponse()
