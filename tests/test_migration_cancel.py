"""A migration cancelled at any step (the old node's `migrate` task is cancelled: the move is
abandoned) leaves nothing behind on either real node: no participant, no subscriber registered
on any source, no source of the dropped publisher's track, no cached m-line for it, no pending
sync state, hand-over or arrival in either relay, and — checked by the world on exit — no task,
socket or open source.

The cancellation points are the relay's migration seams and every relay message of the move
while it is in flight between the nodes."""

from __future__ import annotations

import pytest
import trio
from server_fixtures import registered_subscribers, relay_leftovers
from test_migration_world import RECONCILE, ROOM, World, two_nodes

from proto import relay_pb2 as pb

# Where the move is abandoned: at a relay seam, or while a given relay message is in flight.
POINTS = [
    ("seam", "migrate.detached"),       # A detached the subscriptions, nothing sent yet
    ("in-flight", "migrate"),           # the sync state is on its way to B
    ("in-flight", "migrate_accepted"),  # B holds the sync state, A not told yet
    ("seam", "migrate.accepted"),       # A heard B accept, the client not told yet
    ("in-flight", "migrate_resumed"),   # the client resumed on B, A not told yet
    ("in-flight", "track_migrated"),    # pB's media reached B, A not told yet (publisher only)
]


def _nothing_left_of(w: World, name: str) -> list[str]:
    left = []
    sid = w.sid(name)
    for node in ("A", "B"):
        server = w.nodes[node]
        if name in w.participants(node):
            left.append(f"{name} still a participant on {node}")
        for _, source, sub in registered_subscribers(server):
            if sub == sid:
                left.append(f"{name} registered on {source} on {node}")
        left.extend(line for line in relay_leftovers(server) if line.startswith("migrations survived"))
    return left


# pA publishes nothing, so it has no track_migrated step.
CASES = [(name, point) for name in ("pA", "pB") for point in POINTS if name == "pB" or point[1] != "track_migrated"]


@pytest.mark.parametrize("name,point", CASES, ids=[f"{name}-{point[1]}" for name, point in CASES])
async def test_cancelled_migration_leaves_nothing_behind(autojump_clock, name, point):
    how, where = point
    scope = trio.CancelScope()
    hit = trio.Event()
    mover: list[str] = []

    async def seam(seam_name: str, context: dict) -> None:
        if how == "seam" and seam_name == where and context.get("participant") in mover and not hit.is_set():
            hit.set()
            scope.cancel()
            await trio.lowlevel.checkpoint()

    async def delay(message: pb.RelayMessage) -> None:
        if how == "in-flight" and message.WhichOneof("message") == where and not hit.is_set():
            hit.set()
            scope.cancel()
            await trio.sleep(0.05)  # still in flight while the cancellation runs

    async with two_nodes(seam, relay_delay=delay) as w:
        mover.append(w.sid(name))
        track = w.track
        with scope:
            await w.a.relay.migrate(ROOM, w.sid(name), "B")
        assert hit.is_set() and scope.cancelled_caught, "the cancellation point was not reached"
        await trio.sleep(2 * RECONCILE + 0.5)
        assert _nothing_left_of(w, name) == []
        # The mover's client was told to rejoin (it does not here) and has left.
        assert w.clients[name].left.is_set()
        if name == "pB":
            # Its track is gone everywhere and nobody keeps an m-line cached for it.
            for node in ("A", "B"):
                assert w.sources(node) == ()
            session = w.session("A", "pA")
            assert session is not None and track not in session.subscribing.endpoint.bindings
            assert track not in session.subscribing.endpoint.table.cache and track not in session.subscribing.endpoint.snapshots
        else:
            assert w.participants("A") == {"pB"} and not w.participants("B")
            assert w.resolve("A") is not None  # pB's track lives on
