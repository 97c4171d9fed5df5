"""Which node serves a joining participant: here, another node, or none.

A client reaches whichever node the load balancer (or the kernel, with `--workers`) picks, and
that node serves it unless a rule below sends it elsewhere; the front door then splices the
connection to the chosen node (trio_sfu.api.http_front), which runs the join as if the client
had gone there. Media then flows straight to the chosen node: its ICE candidates are its own.

The rules, in order:

1. A node that is draining (SHUTTING_DOWN) serves nobody new.
2. A room already hosted somewhere may grow onto any node that is not full -- preferably the
   node reached, so no connection is spliced and the cores the kernel spreads load over are used
   (a 1x200 livestream spans every worker). A room's nodes link directly, so spanning costs one
   relayed copy of each subscribed track per node, not one per subscriber.
3. A new room goes to the least loaded node, unless the node reached is within
   `PLACEMENT_SLACK` of it (a splice for a small difference is not worth it).
4. "Full" means: CPU load (of the one core a node's Trio loop runs on) at or over
   `sysload_limit` -- LiveKit's `node_selector.sysload_limit`, default 0.9 -- or, when
   `max_clients` is set, that many participants already. A full node still serves a room's
   participants when no other node can (better a slow join than none).
5. A node the directory does not know (Redis unreachable, not registered yet) serves locally:
   joins keep working through a Redis outage, on the node they reach.
"""

from __future__ import annotations

import enum
from typing import Mapping, Optional
from urllib.parse import urlsplit

import attrs

#: LiveKit's default `node_selector.sysload_limit`.
DEFAULT_SYSLOAD_LIMIT = 0.9
#: CPU share within which the node reached takes a new room itself.
PLACEMENT_SLACK = 0.15


@attrs.frozen
class NodeLoad:
    """What placement needs of a node, as its last heartbeat described it."""

    node_id: str
    serving: bool
    clients: int
    cpu: float  # 0..1 of the core the node runs on
    signal_url: str = ""

    def full(self, policy: "PlacementPolicy") -> bool:
        return self.cpu >= policy.sysload_limit or (policy.max_clients > 0 and self.clients >= policy.max_clients)

    def score(self) -> tuple[float, int, str]:
        return (self.cpu, self.clients, self.node_id)


@attrs.frozen
class PlacementPolicy:
    sysload_limit: float = DEFAULT_SYSLOAD_LIMIT
    max_clients: int = 0  # 0: no limit
    slack: float = PLACEMENT_SLACK


class Verdict(enum.Enum):
    HERE = "here"
    ELSEWHERE = "elsewhere"
    NOWHERE = "nowhere"


@attrs.frozen
class Placement:
    verdict: Verdict
    node: Optional[NodeLoad] = None
    reason: str = ""


def place_join(here: str, draining: bool, room_hosts: set[str], nodes: Mapping[str, NodeLoad],
               policy: PlacementPolicy = PlacementPolicy()) -> Placement:
    """Where a participant joining a room hosted on `room_hosts` (node ids; empty: a new room)
    goes, when this node is `here` and `nodes` are the live nodes (this one included)."""
    others = [n for n in nodes.values() if n.node_id != here and n.serving]
    me = nodes.get(here)
    if not draining and me is None:
        return Placement(Verdict.HERE, reason="this node is not in the directory: served locally")
    open_others = [n for n in others if not n.full(policy)]
    if draining or me is None or not me.serving:
        target = _best(open_others, room_hosts) or _best(others, room_hosts)
        if target is None:
            return Placement(Verdict.NOWHERE, reason="this node is draining and no other node serves")
        return Placement(Verdict.ELSEWHERE, target, "this node is draining")
    if me.full(policy):
        target = _best(open_others, room_hosts)
        if target is not None:
            return Placement(Verdict.ELSEWHERE, target, "this node is full")
        return Placement(Verdict.HERE, me, "every node is full: served here")
    if room_hosts - {here} or here in room_hosts:
        return Placement(Verdict.HERE, me, "the room grows onto this node")
    best = _best(open_others, set())
    if best is not None and me.cpu - best.cpu > policy.slack:
        return Placement(Verdict.ELSEWHERE, best, "a new room goes to the least loaded node")
    return Placement(Verdict.HERE, me, "a new room: this node is (about) the least loaded")


def host_port(url: str) -> Optional[tuple[str, int]]:
    """(host, port) of a node's ws:// URL, or None if it names neither."""
    parts = urlsplit(url)
    if parts.hostname is None or parts.port is None:
        return None
    return parts.hostname, parts.port


def _best(candidates: list[NodeLoad], room_hosts: set[str]) -> Optional[NodeLoad]:
    """The least loaded candidate, preferring nodes that already host the room."""
    if not candidates:
        return None
    hosting = [n for n in candidates if n.node_id in room_hosts]
    return min(hosting or candidates, key=NodeLoad.score)
