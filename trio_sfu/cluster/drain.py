"""Draining a node: move everyone to other nodes by live migration, then stop.

LiveKit's open-source server drains by refusing new rooms and waiting for its rooms to end --
which for a 24/7 room is never, hence the bounded-drain requests in its issue tracker. A room
here may span nodes, so a draining node instead migrates each of its participants to a node
still serving (the migration of trio_sfu.cluster.node_relay: the client resumes on the new node
with its peer connections, so media continues and no one sees a reconnect). Whoever has not
moved by the deadline -- no node to go to, a refusal, a client that never resumed -- is told
`leave{RECONNECT}`: a full reconnect through the public URL lands on a serving node.

The node stops accepting participants before the first migration (placement sends new joins
elsewhere), so the set being drained only shrinks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import attrs
import trio
from livekit.protocol import models, rtc

from trio_sfu.log import get_logger

if TYPE_CHECKING:
    from trio_sfu.cluster.node_relay import NodeRelay
    from trio_sfu.signal.rooms import RoomRegistry

_log = get_logger("trio_sfu.cluster.drain")

#: LiveKit's shutdown waits unbounded; ours is bounded, 60 s by default (the issue's figure).
DEFAULT_DRAIN_DEADLINE = 60.0
#: Migrations in flight at once: each costs a sync state and a client resume.
DRAIN_CONCURRENCY = 8


@attrs.define
class DrainReport:
    migrated: list[tuple[str, str, str, float]] = attrs.field(factory=list)  # room, sid, to node, seconds
    failed: list[tuple[str, str, str]] = attrs.field(factory=list)  # room, sid, why
    told_to_reconnect: int = 0


async def drain(relay: "NodeRelay", registry: "RoomRegistry", targets: Callable[[], Sequence[str]],
                deadline: float, concurrency: int = DRAIN_CONCURRENCY) -> DrainReport:
    """Migrate every participant of this node to one of `targets()` (node ids in order of
    preference, re-read for each participant, so load spreads as nodes fill); at `deadline`
    (trio time) whoever is left is told to reconnect."""
    report = DrainReport()
    limiter = trio.CapacityLimiter(concurrency)
    with trio.move_on_at(deadline):
        async with trio.open_nursery() as nursery:
            for room in list(registry.rooms.values()):
                for participant in list(room.participants.values()):
                    nursery.start_soon(_move_one, relay, targets, room.name, participant.sid, limiter, report)
    left = [(room, p) for room in list(registry.rooms.values()) for p in list(room.participants.values())]
    for room, participant in left:
        _log.warning("drain: participant not moved, asking for a full reconnect",
                     kv={"room": room.name, "participant": participant.sid})
        participant.close(models.DisconnectReason.SERVER_SHUTDOWN, action=rtc.LeaveRequest.Action.RECONNECT)
        report.told_to_reconnect += 1
    _log.info("drain finished", kv={"migrated": len(report.migrated), "failed": len(report.failed),
                                    "told_to_reconnect": report.told_to_reconnect})
    return report


async def _move_one(relay: "NodeRelay", targets: Callable[[], Sequence[str]], room: str, sid: str,
                    limiter: trio.CapacityLimiter, report: DrainReport) -> None:
    async with limiter:
        for target in targets():
            if target not in relay.links:
                continue
            started = trio.current_time()
            if await relay.migrate(room, sid, target):
                took = trio.current_time() - started
                report.migrated.append((room, sid, target, took))
                _log.info("drain: participant moved", kv={"room": room, "participant": sid, "to": target,
                                                          "seconds": round(took, 3)})
                return
            # A failed migration ends the participant here (it was told to reconnect): done.
            report.failed.append((room, sid, f"migration to {target} failed"))
            return
        report.failed.append((room, sid, "no node to move to"))
