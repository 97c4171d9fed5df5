"""A migration cancelled at any step (the client drops mid-way) leaves nothing behind on either
node: no participant, no subscriber registered on any source, no source of the dropped
publisher's track, no cached m-line for it, no task (checked by the world on exit)."""

from __future__ import annotations

import pytest
import trio

from proto import relay_pb2 as pb
from test_migration_world import RECONCILE, ROOM, TRACK, two_nodes
from test_race_scenarios import until

# Where the client drops: at a node seam, or while a given relay message is in flight.
POINTS = [
    ("seam", "migrate.detached"),   # A detached the subscriptions, nothing sent yet
    ("in-flight", "migrate"),       # the sync state is on its way to B
    ("seam", "migrate.accepted"),   # B runs the participant, A just heard so
    ("in-flight", "track_migrated"),  # pB's media reached B, A not told yet (publisher only)
]


def _nothing_left_of(w, pid: str) -> list[str]:
    left = []
    for node in (w.a, w.b):
        room = node.rooms[ROOM]
        if pid in room.participants:
            left.append(f"{pid} still a participant on {node.node_id}")
        for _, source, sub in node.registered_subscribers():
            if sub == pid:
                left.append(f"{pid} registered on {source} on {node.node_id}")
        if node._migrations:
            left.append(f"migration bookkeeping left on {node.node_id}")
    return left


# pA publishes nothing, so it has no track_migrated step.
CASES = [(pid, point) for pid in ("pA", "pB") for point in POINTS if pid == "pB" or point[1] != "track_migrated"]


@pytest.mark.parametrize("pid,point", CASES, ids=[f"{pid}-{point[1]}" for pid, point in CASES])
async def test_cancelled_migration_leaves_nothing_behind(autojump_clock, pid, point):
    how, where = point
    scope = trio.CancelScope()
    hit = trio.Event()

    async def seam(name: str, context: dict) -> None:
        if how == "seam" and name == where and context.get("participant") == pid and not hit.is_set():
            hit.set()
            scope.cancel()
            await trio.lowlevel.checkpoint()

    async def delay(message: pb.RelayMessage) -> None:
        if how == "in-flight" and message.WhichOneof("message") == where and not hit.is_set():
            hit.set()
            scope.cancel()
            await trio.sleep(0.05)  # still in flight while the cancellation runs

    async with two_nodes(seam, delay_a=delay, delay_b=delay) as w:
        async def move_media() -> None:
            await until(lambda: "pB" in w.b.rooms[ROOM].participants)
            w.publisher.node = w.b

        if pid == "pB":
            w.nursery.start_soon(move_media)
        with scope:
            await w.a.migrate(ROOM, pid, "B")
        assert hit.is_set() and scope.cancelled_caught, "the cancellation point was not reached"
        if pid == "pB":
            w.publisher.running = False  # the client is gone
        await trio.sleep(2 * RECONCILE + 0.5)
        assert _nothing_left_of(w, pid) == []
        pa = w.node("A").rooms[ROOM].participants.get("pA") or w.node("B").rooms[ROOM].participants.get("pA")
        if pid == "pB":
            # Its track is gone everywhere and nobody keeps an m-line cached for it.
            for node in (w.a, w.b):
                assert node.rooms[ROOM].tracks.sources(TRACK) == ()
                assert not node.rooms[ROOM].local and not node.rooms[ROOM].remote
            assert pa is not None and TRACK not in pa.endpoint.bindings
            assert TRACK not in pa.endpoint.table.cache and TRACK not in pa.endpoint.snapshots
        else:
            assert pa is None
            assert w.a.rooms[ROOM].tracks.resolve(TRACK) is not None  # pB's track lives on
