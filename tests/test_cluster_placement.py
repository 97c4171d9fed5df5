"""Placement of joins across nodes (trio_sfu.cluster.placement): the rules its docstring states."""

from __future__ import annotations

from trio_sfu.cluster.placement import NodeLoad, PlacementPolicy, Verdict, place_join


def nodes(*loads: NodeLoad) -> dict[str, NodeLoad]:
    return {n.node_id: n for n in loads}


A = NodeLoad("a", True, 10, 0.30, "ws://a")
B = NodeLoad("b", True, 2, 0.05, "ws://b")
FULL_A = NodeLoad("a", True, 80, 0.95, "ws://a")
DRAINING_B = NodeLoad("b", False, 0, 0.0, "ws://b")


def test_existing_room_grows_onto_the_node_reached():
    p = place_join("a", False, {"b"}, nodes(A, B))
    assert p.verdict is Verdict.HERE


def test_new_room_goes_to_the_least_loaded_node_beyond_the_slack():
    p = place_join("a", False, set(), nodes(A, B))
    assert p.verdict is Verdict.ELSEWHERE and p.node == B


def test_new_room_stays_when_within_the_slack():
    close = NodeLoad("b", True, 2, 0.25, "ws://b")
    assert place_join("a", False, set(), nodes(A, close)).verdict is Verdict.HERE


def test_full_node_sends_joins_to_a_node_hosting_the_room_first():
    c = NodeLoad("c", True, 0, 0.0, "ws://c")
    p = place_join("a", False, {"a", "b"}, nodes(FULL_A, B, c))
    assert p.verdict is Verdict.ELSEWHERE and p.node == B


def test_every_node_full_serves_here():
    full_b = NodeLoad("b", True, 1, 0.99, "ws://b")
    assert place_join("a", False, {"a"}, nodes(FULL_A, full_b)).verdict is Verdict.HERE


def test_max_clients_makes_a_node_full():
    policy = PlacementPolicy(max_clients=10)
    p = place_join("a", False, {"a"}, nodes(A, B), policy)
    assert p.verdict is Verdict.ELSEWHERE and p.node == B


def test_draining_node_sends_everyone_elsewhere_and_never_to_a_draining_node():
    c = NodeLoad("c", True, 50, 0.5, "ws://c")
    p = place_join("a", True, {"a"}, nodes(A, DRAINING_B, c))
    assert p.verdict is Verdict.ELSEWHERE and p.node == c
    assert place_join("a", True, {"a"}, nodes(A, DRAINING_B)).verdict is Verdict.NOWHERE


def test_unknown_to_the_directory_serves_locally():
    assert place_join("a", False, set(), {}).verdict is Verdict.HERE
    assert place_join("a", True, set(), {}).verdict is Verdict.NOWHERE
