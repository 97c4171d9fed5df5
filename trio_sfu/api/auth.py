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

Whatever a token holds, verifying it ends in grants or an AuthError (HTTP 401): times that are
not finite numbers (`exp: 1e400`, an integer too large for a float) are invalid claims, and any
other failure to parse one (PyJWT's JSON recursing on a deeply nested payload) is an invalid
token, never an internal error.
"""

from __future__ import annotations

import math
import time
from typing import Any, Mapping

import jwt

from trio_sfu.log import get_logger
from trio_sfu.signal.grants import VIDEO_GRANT_KEYS, ClaimGrants, VideoGrant

LEEWAY_SECONDS = 60.0
# A LiveKit token with every grant is well under 2 KiB; this bounds work on hostile input.
MAX_TOKEN_LENGTH = 16 * 1024
BEARER_PREFIX = "Bearer "

_log = get_logger("trio_sfu.api.auth")

class AuthError(Exception):
    """A request is not authorised; `status` is the HTTP status LiveKit would answer with."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _claim_error(name: str) -> AuthError:
    return AuthError(401, f"invalid token: claim '{name}' has the wrong type")


def _video_from_json(data: Any) -> VideoGrant:
    if not isinstance(data, dict):
        raise _claim_error("video")
    values: dict[str, Any] = {}
    for attr, (json_name, expected) in VIDEO_GRANT_KEYS.items():
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


def _timestamp(payload: Mapping[str, Any], name: str) -> float | None:
    """A NumericDate claim as a finite float; None when absent."""
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AuthError(401, f"invalid token: non-numeric {name}")
    try:
        stamp = float(value)
    except OverflowError:
        stamp = math.inf
    if not math.isfinite(stamp):
        raise AuthError(401, f"invalid token: {name} is out of range")
    return stamp


def _claims_from_json(api_key: str, payload: Mapping[str, Any], expires_at: float,
                      not_before: float | None) -> ClaimGrants:
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
        expires_at=expires_at,
        not_before=not_before,
    )


class TokenVerifier:
    """Verifies LiveKit access tokens against a set of API key → secret pairs."""

    def __init__(self, keys: Mapping[str, str], leeway: float = LEEWAY_SECONDS) -> None:
        self._keys = dict(keys)
        self._leeway = leeway

    def verify(self, token: str, now: float | None = None) -> ClaimGrants:
        """Return the token's grants, or raise AuthError(401, reason)."""
        try:
            return self._verify(token, now)
        except AuthError:
            raise
        except Exception as exc:
            # Hostile input that the JWT library did not turn into its own error.
            _log.info("token could not be parsed", kv={"error": exc.__class__.__name__})
            raise AuthError(401, "invalid authorization token") from None

    def _verify(self, token: str, now: float | None) -> ClaimGrants:
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
        if payload.get("exp") is None:
            raise AuthError(401, "invalid token: missing or non-numeric exp")
        exp = _timestamp(payload, "exp")
        assert exp is not None
        if now > exp + self._leeway:
            raise AuthError(401, f"invalid token: token expired {now - exp:.0f} s ago (check clocks and token TTL)")
        nbf = _timestamp(payload, "nbf")
        if nbf is not None and now < nbf - self._leeway:
            raise AuthError(
                401, f"invalid token: token not valid yet (nbf) for another {nbf - now:.0f} s; check clock skew"
            )
        return _claims_from_json(api_key, payload, exp, nbf)


def token_from_request(authorization: str | None, access_token: str | None) -> str | None:
    """Pick the token the way LiveKit does: the header if present (it must be Bearer), else the param."""
    if authorization:
        if not authorization.startswith(BEARER_PREFIX):
            raise AuthError(401, "invalid authorization header. Must start with Bearer ")
        return authorization[len(BEARER_PREFIX):].strip()
    return access_token or None

