"""LiveKit access tokens: HS256 JWTs whose `iss` names the API key and whose claims carry grants.

Verification follows LiveKit's server: the `Authorization: Bearer` header wins over the
`access_token` query parameter; `iss` selects the secret; the signature must be HS256 with that
secret (any other `alg`, including `none`, is refused before a key is even looked up); `exp` is
required (go-jose, under LiveKit's verifier, would accept a token without one; every LiveKit
SDK sets it, and a token that never expires is not something we want to honour); `exp` and
`nbf` are checked with 60 s of leeway for clock skew, go-jose's default leeway that LiveKit
inherits. We check the times ourselves with an explicit `now` instead of PyJWT's clock so
the checks are deterministic under test, and error texts say how far off the clock is.
Unlike LiveKit we never echo the token back in an error body.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

import attrs
import jwt
from livekit.protocol import models

LEEWAY_SECONDS = 60.0
# A LiveKit token with every grant is well under 2 KiB; this bounds work on hostile input.
MAX_TOKEN_LENGTH = 16 * 1024
BEARER_PREFIX = "Bearer "

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


class AuthError(Exception):
    """A request is not authorised; `status` is the HTTP status LiveKit would answer with."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@attrs.frozen
class VideoGrant:
    """The `video` claim, field for field with LiveKit's JSON names (see `_VIDEO_KEYS`).

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
_VIDEO_KEYS: dict[str, tuple[str, type]] = {
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


def _claim_error(name: str) -> AuthError:
    return AuthError(401, f"invalid token: claim '{name}' has the wrong type")


def _video_from_json(data: Any) -> VideoGrant:
    if not isinstance(data, dict):
        raise _claim_error("video")
    values: dict[str, Any] = {}
    for attr, (json_name, expected) in _VIDEO_KEYS.items():
        if json_name not in data or data[json_name] is None:
            continue
        value = data[json_name]
        if not isinstance(value, expected):
            raise _claim_error(f"video.{json_name}")
        if attr == "can_publish_sources":
            if not all(isinstance(s, str) for s in value):
                raise _claim_error("video.canPublishSources")
            value = tuple(value)
        values[attr] = value
    return VideoGrant(**values)


def _optional_str(payload: Mapping[str, Any], name: str) -> str:
    value = payload.get(name, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _claim_error(name)
    return value


def _claims_from_json(api_key: str, payload: Mapping[str, Any]) -> ClaimGrants:
    attributes = payload.get("attributes") or {}
    if not isinstance(attributes, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in attributes.items()
    ):
        raise _claim_error("attributes")
    room_config = payload.get("roomConfig")
    if room_config is not None and not isinstance(room_config, dict):
        raise _claim_error("roomConfig")
    video = payload.get("video")
    return ClaimGrants(
        api_key=api_key,
        # LiveKit's verifier falls back to `jti` for tokens minted without `sub`.
        identity=_optional_str(payload, "sub") or _optional_str(payload, "jti"),
        name=_optional_str(payload, "name"),
        metadata=_optional_str(payload, "metadata"),
        attributes=dict(attributes),
        kind=_optional_str(payload, "kind") or "standard",
        video=None if video is None else _video_from_json(video),
        sha256=_optional_str(payload, "sha256"),
        room_preset=_optional_str(payload, "roomPreset"),
        room_config=room_config,
        expires_at=float(payload["exp"]),
        not_before=None if payload.get("nbf") is None else float(payload["nbf"]),
    )


class TokenVerifier:
    """Verifies LiveKit access tokens against a set of API key → secret pairs."""

    def __init__(self, keys: Mapping[str, str], leeway: float = LEEWAY_SECONDS) -> None:
        self._keys = dict(keys)
        self._leeway = leeway

    def verify(self, token: str, now: float | None = None) -> ClaimGrants:
        """Return the token's grants, or raise AuthError(401, reason)."""
        if now is None:
            now = time.time()
        if not token or len(token) > MAX_TOKEN_LENGTH:
            raise AuthError(401, "invalid authorization token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError(401, "invalid authorization token") from None
        if header.get("alg") != "HS256":
            raise AuthError(401, f"invalid token: algorithm {header.get('alg')!r} is not allowed, only HS256")
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise AuthError(401, "invalid authorization token") from None
        api_key = unverified.get("iss")
        if not isinstance(api_key, str) or not api_key:
            raise AuthError(401, "invalid token: missing issuer (API key)")
        secret = self._keys.get(api_key)
        if secret is None:
            raise AuthError(401, f"invalid API key: {api_key[:64]}")
        try:
            payload = jwt.decode(
                token,
                secret,
                algorithms=["HS256"],
                # Times are checked below against our own `now`; LiveKit ignores aud.
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False, "verify_aud": False},
            )
        except jwt.InvalidSignatureError:
            raise AuthError(401, "invalid token: signature verification failed") from None
        except jwt.PyJWTError as exc:
            raise AuthError(401, f"invalid token: {exc.__class__.__name__}") from None
        exp = payload.get("exp")
        if isinstance(exp, bool) or not isinstance(exp, (int, float)):
            raise AuthError(401, "invalid token: missing or non-numeric exp")
        if now > exp + self._leeway:
            raise AuthError(401, f"invalid token: token expired {now - exp:.0f} s ago (check clocks and token TTL)")
        nbf = payload.get("nbf")
        if nbf is not None:
            if isinstance(nbf, bool) or not isinstance(nbf, (int, float)):
                raise AuthError(401, "invalid token: non-numeric nbf")
            if now < nbf - self._leeway:
                raise AuthError(
                    401, f"invalid token: token not valid yet (nbf) for another {nbf - now:.0f} s; check clock skew"
                )
        return _claims_from_json(api_key, payload)


def token_from_request(authorization: str | None, access_token: str | None) -> str | None:
    """Pick the token the way LiveKit does: the header if present (it must be Bearer), else the param."""
    if authorization:
        if not authorization.startswith(BEARER_PREFIX):
            raise AuthError(401, "invalid authorization header. Must start with Bearer ")
        return authorization[len(BEARER_PREFIX):].strip()
    return access_token or None

