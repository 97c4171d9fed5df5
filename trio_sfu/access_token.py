"""Minting LiveKit access tokens (HS256 JWTs with LiveKit's claims): one implementation for every
place that signs one — our CLI and client (`trio_sfu.client.tokens`), the playground's dev tokens
(`api.playground`) and the tokens the server gives dispatched agents (`agents.tokens`).
Verifying tokens is `api.auth`'s job."""

from __future__ import annotations

import time
import warnings
from typing import Any, Mapping

import jwt
from jwt.warnings import InsecureKeyLengthWarning

#: What `mint_token` gives a token unless told otherwise (LiveKit's SDKs: six hours).
DEFAULT_VALID_FOR = 6 * 3600.0


class TokenError(ValueError):
    """A token cannot be minted as asked (unknown grant, bad duration, missing room)."""


def mint_token(api_key: str, api_secret: str, *, identity: str = "", room: str = "",
               video: Mapping[str, Any] | None = None, name: str = "", metadata: str = "",
               attributes: Mapping[str, str] | None = None, kind: str = "",
               valid_for: float = DEFAULT_VALID_FOR, now: float | None = None) -> str:
    """An access token for `identity` with the `video` grants (room set from `room`).

    As LiveKit's SDKs: joining needs an identity and a room; a room admin token needs the room
    it administers (the server checks `video.room` against the request's room)."""
    if not api_key or not api_secret:
        raise TokenError("an API key and secret are needed to mint a token")
    video = dict(video or {})
    if room:
        video["room"] = room
    if video.get("roomJoin") and (not identity or not video.get("room")):
        raise TokenError("a token that joins a room needs --identity and --room")
    if video.get("roomAdmin") and not video.get("room"):
        raise TokenError("a room admin token needs --room (the room it administers)")
    if now is None:
        now = time.time()
    claims: dict[str, Any] = {
        "iss": api_key,
        "nbf": int(now),
        "exp": int(now + valid_for),
    }
    if identity:
        claims["sub"] = identity
    if video:
        claims["video"] = video
    for claim, value in (("name", name), ("metadata", metadata), ("kind", kind)):
        if value:
            claims[claim] = value
    if attributes:
        claims["attributes"] = dict(attributes)
    with warnings.catch_warnings():
        # LiveKit's own dev secret ("secret") is shorter than RFC 7518 recommends; saying so on
        # every command would bury the output. The server decides which keys it accepts.
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        return jwt.encode(claims, api_secret, algorithm="HS256")


__all__ = ["DEFAULT_VALID_FOR", "TokenError", "mint_token"]
