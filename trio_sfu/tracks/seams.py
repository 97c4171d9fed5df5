"""Seams: named points where the server awaits a hook, so tests can order interleavings.

The race tests (tests/test_race_scenarios.py, tests/test_race_explorer.py) hold or delay the
real server at the points where LiveKit's migration races live: a subscription's bind and
post-check (trio_sfu.tracks.subscription_manager), and the steps of closing a relayed source
(trio_sfu.cluster.node_relay). In production the hook is `no_seam`, which returns without a
checkpoint, so awaiting it changes no ordering at all.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

#: (seam name, what it is about: node, room, participant, track ...) -> awaited by the server.
Seam = Callable[[str, dict[str, Any]], Awaitable[None]]


async def no_seam(name: str, context: dict[str, Any]) -> None:
    """The production seam: nothing to wait for, and no checkpoint."""
    return None
