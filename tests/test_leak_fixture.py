"""The two-node tests' leak check (server_fixtures.assert_nodes_clean) is not vacuous: it passes
for a node that published and closed, and fails for a subscriber still registered, a node
whose close() never ran, a source dropped from the rooms while still open, and a task left
running. (tests/test_tracks_leak_check.py does the same for the Server's assert_no_leaks.)"""

from __future__ import annotations

import pytest
import trio
from server_fixtures import assert_nodes_clean, leak_baseline
from test_migration_world import OPUS, ROOM, TRACK

from sdp.codecs import MediaKind
from trio_sfu.cluster.node_model import Node, TrackSpec


class Subscriber:
    """The smallest TrackSubscriber: remembers being detached."""

    subscriber_id = "pX"

    def __init__(self) -> None:
        self.detached = False

    def detach_source(self, source: object, expected_to_resume: bool) -> None:
        self.detached = True


def _publishing_node() -> Node:
    node = Node("LEAK", clients={}.get)
    node.host_room(ROOM)
    node.publish(ROOM, "pB", TrackSpec(TRACK, "pB", MediaKind.AUDIO, (OPUS,), "pB|microphone"))
    return node


async def test_a_closed_node_passes() -> None:
    baseline = leak_baseline()
    node = _publishing_node()
    node.rooms[ROOM].local[TRACK].add_subscriber(Subscriber())
    node.close()
    assert_nodes_clean([node], baseline)


async def test_a_registered_subscriber_fails() -> None:
    baseline = leak_baseline()
    node = _publishing_node()
    subscriber = Subscriber()
    node.rooms[ROOM].local[TRACK].add_subscriber(subscriber)
    with pytest.raises(AssertionError, match="subscribers still registered on LEAK"):
        assert_nodes_clean([node], baseline)
    node.close()
    assert subscriber.detached
    assert_nodes_clean([node], baseline)


async def test_a_node_that_was_not_closed_fails() -> None:
    baseline = leak_baseline()
    node = _publishing_node()
    with pytest.raises(AssertionError, match="rooms survived on LEAK"):
        assert_nodes_clean([node], baseline)
    node.close()


async def test_a_source_dropped_from_the_rooms_while_open_fails() -> None:
    # The node no longer knows the source; only the process-wide registry still sees it open.
    baseline = leak_baseline()
    node = _publishing_node()
    source = node.rooms[ROOM].local[TRACK]
    node.rooms.clear()
    with pytest.raises(AssertionError, match="track sources survived the nodes"):
        assert_nodes_clean([node], baseline)
    source.close_now(False)
    assert_nodes_clean([node], baseline)


async def test_a_task_left_running_fails() -> None:
    baseline = leak_baseline()
    node = _publishing_node()
    node.close()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.sleep_forever, name="left-running")
        await trio.lowlevel.checkpoint()
        with pytest.raises(AssertionError, match="tasks survived the nodes: .*left-running"):
            assert_nodes_clean([node], baseline)
        nursery.cancel_scope.cancel()
    assert_nodes_clean([node], baseline)


async def test_migration_bookkeeping_left_behind_fails() -> None:
    baseline = leak_baseline()
    node = _publishing_node()
    node.close()
    node._migrations[(ROOM, "pA")] = object()  # type: ignore[assignment]  # what a cancelled migrate() must clear
    with pytest.raises(AssertionError, match="migrations survived on LEAK"):
        assert_nodes_clean([node], baseline)
