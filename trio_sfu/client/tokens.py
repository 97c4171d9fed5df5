"""Minting LiveKit access tokens: HS256 JWTs in the claim shape every LiveKit server accepts.

The shape is LiveKit's (as its server SDKs' `AccessToken` writes it): `iss` is the API key, `sub`
the identity, `nbf`/`exp` whole seconds, and a `video` object of grants with LiveKit's camelCase
names; empty and unset claims are left out, so an absent `canPublish` means what the server's
defaults say (allowed). `trio-sfu token create` and `join` mint with this module; the server
verifies with `trio_sfu.api.auth`, which the client package does not import (the layers stand
side by side), so the grant names below are the wire format, not a copy of the server's table.
The signing itself is the foundation `trio_sfu.access_token`, shared with the server's own tokens.
"""

from __future__ import annotations

import json
import re
from typing import Any, Sequence

from trio_sfu.access_token import DEFAULT_VALID_FOR, TokenError, mint_token

#: The `video` claim's keys (LiveKit's JSON names) and the type each value must have.
VIDEO_CLAIM_TYPES: dict[str, type] = {
    "roomCreate": bool,
    "roomList": bool,
    "roomRecord": bool,
    "roomAdmin": bool,
    "roomJoin": bool,
    "room": str,
    "destinationRoom": str,
    "canPublish": bool,
    "canSubscribe": bool,
    "canPublishData": bool,
    "canPublishSources": list,
    "canUpdateOwnMetadata": bool,
    "ingressAdmin": bool,
    "hidden": bool,
    "recorder": bool,
    "agent": bool,
    "canSubscribeMetrics": bool,
    "canManageAgentSession": bool,
}

#: `--grant NAME` -> (claim, value). `lk token create`'s --join/--admin/--list/--create/--record,
#: and the permission toggles a participant token may carry.
GRANT_NAMES: dict[str, tuple[str, bool]] = {
    "join": ("roomJoin", True),
    "admin": ("roomAdmin", True),
    "list": ("roomList", True),
    "create": ("roomCreate", True),
    "record": ("roomRecord", True),
    "ingress-admin": ("ingressAdmin", True),
    "hidden": ("hidden", True),
    "recorder": ("recorder", True),
    "agent": ("agent", True),
    "update-metadata": ("canUpdateOwnMetadata", True),
    "subscribe-metrics": ("canSubscribeMetrics", True),
    "publish": ("canPublish", True),
    "no-publish": ("canPublish", False),
    "subscribe": ("canSubscribe", True),
    "no-subscribe": ("canSubscribe", False),
    "publish-data": ("canPublishData", True),
    "no-publish-data": ("canPublishData", False),
}

#: The claims that say what the bearer may do to rooms; a token naming none of them joins.
ACTION_CLAIMS = ("roomJoin", "roomAdmin", "roomList", "roomCreate", "roomRecord", "ingressAdmin")

#: The track sources `canPublishSources` may name.
TRACK_SOURCES = ("camera", "microphone", "screen_share", "screen_share_audio")

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds in a duration written as Go (and `lk --valid-for`) write them: `90s`, `10m`,
    `1h30m`, plus `d` for days; a bare number is seconds."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        position, seconds = 0, 0.0
        for match in _DURATION_PART.finditer(text):
            if match.start() != position:
                break
            seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
            position = match.end()
        if position != len(text) or not text:
            raise TokenError(f"not a duration: {text!r} (write e.g. 90s, 10m, 1h30m, 2d)") from None
    if not 0 < seconds < float("inf"):
        raise TokenError(f"a duration must be positive, not {text!r}")
    return seconds


def _checked_json_grant(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise TokenError(f"--grant JSON does not parse: {exc}") from None
    if not isinstance(data, dict):
        raise TokenError("--grant JSON must be an object of video grants, e.g. '{\"canPublish\": false}'")
    for key, value in data.items():
        expected = VIDEO_CLAIM_TYPES.get(key)
        if expected is None:
            raise TokenError(f"unknown video grant {key!r} (known: {', '.join(VIDEO_CLAIM_TYPES)})")
        if not isinstance(value, expected):
            raise TokenError(f"video grant {key!r} must be a {expected.__name__}, not {value!r}")
    if "canPublishSources" in data:
        check_sources(data["canPublishSources"])
    return data


def check_sources(sources: Sequence[object]) -> list[str]:
    """`canPublishSources` as LiveKit spells them; anything else is a TokenError."""
    unknown = [s for s in sources if s not in TRACK_SOURCES]
    if unknown:
        raise TokenError(f"unknown track source(s) {unknown} (known: {', '.join(TRACK_SOURCES)})")
    return [str(s) for s in sources]


def parse_grants(specs: Sequence[str]) -> dict[str, Any]:
    """The `video` claim (without `room`) that `--grant` values ask for, in order, later wins.

    Each value is a comma-separated list of names from GRANT_NAMES, or a JSON object of video
    grants in LiveKit's camelCase (as `lk token create --grant`). Grants that name no room action
    (only permissions such as `no-publish` or `hidden`) are for a participant: `join` is added."""
    video: dict[str, Any] = {}
    for spec in specs:
        spec = spec.strip()
        if spec.startswith("{"):
            video.update(_checked_json_grant(spec))
            continue
        for name in filter(None, (part.strip() for part in spec.split(","))):
            if name not in GRANT_NAMES:
                raise TokenError(f"unknown grant {name!r} (known: {', '.join(GRANT_NAMES)}, or a JSON object)")
            claim, value = GRANT_NAMES[name]
            video[claim] = value
    if not any(claim in video for claim in ACTION_CLAIMS):
        video["roomJoin"] = True
    return video




__all__ = ["ACTION_CLAIMS", "DEFAULT_VALID_FOR", "GRANT_NAMES", "TRACK_SOURCES", "TokenError", "VIDEO_CLAIM_TYPES",
           "check_sources", "mint_token", "parse_duration", "parse_grants"]
