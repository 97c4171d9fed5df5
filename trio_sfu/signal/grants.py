"""What a verified access token lets its bearer do: the claims and the `video` grant.

The signal layer checks these on every request (may this participant publish this source,
subscribe, update its own metadata?); `trio_sfu.api.auth` makes them from a verified JWT.
"""

from __future__ import annotations

from typing import Any, Mapping

import attrs
from google.protobuf import json_format
from livekit.protocol import agent_dispatch, models, room as room_pb

_SOURCE_NAMES = {
    "camera": models.TrackSource.CAMERA,
    "microphone": models.TrackSource.MICROPHONE,
    "screen_share": models.TrackSource.SCREEN_SHARE,
    "screen_share_audio": models.TrackSource.SCREEN_SHARE_AUDIO,
}
_KIND_NAMES = {
    "": models.ParticipantInfo.Kind.STANDARD,
    "standard": models.ParticipantInfo.Kind.STANDARD,
    "ingress": models.ParticipantInfo.Kind.INGRESS,
    "egress": models.ParticipantInfo.Kind.EGRESS,
    "sip": models.ParticipantInfo.Kind.SIP,
    "agent": models.ParticipantInfo.Kind.AGENT,
    "connector": models.ParticipantInfo.Kind.CONNECTOR,
    "bridge": models.ParticipantInfo.Kind.BRIDGE,
}



@attrs.frozen
class VideoGrant:
    """The `video` claim, field for field with LiveKit's JSON names (see `VIDEO_GRANT_KEYS`).

    Tri-state booleans (`None` = absent) keep LiveKit's defaulting rules in the accessors.
    """

    room_create: bool = False
    room_list: bool = False
    room_record: bool = False
    room_admin: bool = False
    room_join: bool = False
    room: str = ""
    destination_room: str = ""
    can_publish: bool | None = None
    can_subscribe: bool | None = None
    can_publish_data: bool | None = None
    can_publish_sources: tuple[str, ...] = ()
    can_update_own_metadata: bool | None = None
    ingress_admin: bool = False
    hidden: bool = False
    recorder: bool = False
    agent: bool = False
    can_subscribe_metrics: bool | None = None
    can_manage_agent_session: bool | None = None

    @property
    def may_publish(self) -> bool:
        return True if self.can_publish is None else self.can_publish

    @property
    def may_subscribe(self) -> bool:
        return True if self.can_subscribe is None else self.can_subscribe

    @property
    def may_publish_data(self) -> bool:
        # LiveKit: an absent canPublishData follows canPublish.
        return self.may_publish if self.can_publish_data is None else self.can_publish_data

    @property
    def may_update_own_metadata(self) -> bool:
        return bool(self.can_update_own_metadata)

    def may_publish_source(self, source: int) -> bool:
        """Whether a track of this TrackSource may be published (empty list = all)."""
        if not self.may_publish:
            return False
        if not self.can_publish_sources:
            return True
        return any(_SOURCE_NAMES.get(name) == source for name in self.can_publish_sources)

    def to_permission(self) -> models.ParticipantPermission:
        return models.ParticipantPermission(
            can_subscribe=self.may_subscribe,
            can_publish=self.may_publish,
            can_publish_data=self.may_publish_data,
            can_publish_sources=[_SOURCE_NAMES[n] for n in self.can_publish_sources if n in _SOURCE_NAMES],
            hidden=self.hidden,
            recorder=self.recorder,
            can_update_metadata=self.may_update_own_metadata,
            agent=self.agent,
            can_subscribe_metrics=bool(self.can_subscribe_metrics),
            can_manage_agent_session=bool(self.can_manage_agent_session),
        )


# attribute name -> (JSON claim name, expected type)
VIDEO_GRANT_KEYS: dict[str, tuple[str, type]] = {
    "room_create": ("roomCreate", bool),
    "room_list": ("roomList", bool),
    "room_record": ("roomRecord", bool),
    "room_admin": ("roomAdmin", bool),
    "room_join": ("roomJoin", bool),
    "room": ("room", str),
    "destination_room": ("destinationRoom", str),
    "can_publish": ("canPublish", bool),
    "can_subscribe": ("canSubscribe", bool),
    "can_publish_data": ("canPublishData", bool),
    "can_publish_sources": ("canPublishSources", list),
    "can_update_own_metadata": ("canUpdateOwnMetadata", bool),
    "ingress_admin": ("ingressAdmin", bool),
    "hidden": ("hidden", bool),
    "recorder": ("recorder", bool),
    "agent": ("agent", bool),
    "can_subscribe_metrics": ("canSubscribeMetrics", bool),
    "can_manage_agent_session": ("canManageAgentSession", bool),
}


@attrs.frozen
class ClaimGrants:
    """Everything a verified token says about its bearer."""

    api_key: str
    identity: str = ""
    name: str = ""
    metadata: str = ""
    attributes: Mapping[str, str] = attrs.field(factory=dict)
    kind: str = "standard"
    video: VideoGrant | None = None
    sha256: str = ""
    room_preset: str = ""
    room_config: Mapping[str, Any] | None = None
    expires_at: float = 0.0
    not_before: float | None = None

    @property
    def participant_kind(self) -> int:
        return _KIND_NAMES.get(self.kind, models.ParticipantInfo.Kind.STANDARD)


#: Agents one token may ask to dispatch into the room it creates.
MAX_REQUESTED_AGENTS = 16


def requested_agents(room_config: Mapping[str, Any] | None) -> tuple[agent_dispatch.RoomAgentDispatch, ...]:
    """The `agents` of a token's `roomConfig` (LiveKit's RoomConfiguration in protobuf JSON).

    A room configuration that does not parse asks for nothing, as does one past
    MAX_REQUESTED_AGENTS entries beyond them: the token still joins."""
    if not room_config or "agents" not in room_config:
        return ()
    config = room_pb.RoomConfiguration()
    try:
        json_format.ParseDict({"agents": room_config["agents"]}, config, ignore_unknown_fields=True)
    except (json_format.ParseError, TypeError, ValueError, RecursionError):
        return ()
    return tuple(config.agents[:MAX_REQUESTED_AGENTS])
