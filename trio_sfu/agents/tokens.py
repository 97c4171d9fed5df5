"""The participant token a dispatched agent joins its room with, minted by the server.

LiveKit signs it with the API key the worker registered with: the job's agent is that key's
participant. Kind `agent`, a room-join grant for the job's room, the permissions the worker
registered (`allowed_permissions`), and the identity, name, metadata and attributes the worker
answered the AvailabilityRequest with.
"""

from __future__ import annotations

from typing import Mapping

from livekit.protocol import models

from trio_sfu.access_token import mint_token

_SOURCE_NAMES = {
    models.TrackSource.CAMERA: "camera",
    models.TrackSource.MICROPHONE: "microphone",
    models.TrackSource.SCREEN_SHARE: "screen_share",
    models.TrackSource.SCREEN_SHARE_AUDIO: "screen_share_audio",
}


def mint_agent_token(
    api_key: str,
    api_secret: str,
    room: str,
    identity: str,
    name: str,
    metadata: str,
    attributes: Mapping[str, str],
    permissions: models.ParticipantPermission,
    ttl: float,
    now: float | None = None,
) -> str:
    video: dict[str, object] = {
        "roomJoin": True,
        "agent": True,
        "canPublish": permissions.can_publish,
        "canSubscribe": permissions.can_subscribe,
        "canPublishData": permissions.can_publish_data,
        "canUpdateOwnMetadata": permissions.can_update_metadata,
        "hidden": permissions.hidden,
    }
    sources = [_SOURCE_NAMES[s] for s in permissions.can_publish_sources if s in _SOURCE_NAMES]
    if sources:
        video["canPublishSources"] = sources
    return mint_token(api_key, api_secret, identity=identity, room=room, video=video, name=name, metadata=metadata,
                      attributes=attributes, kind="agent", valid_for=ttl, now=now)
