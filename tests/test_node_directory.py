"""The node directory (trio_sfu/cluster/directory.py) against a real redis-server.

Each test starts Debian's `redis-server` on a free loopback port (tests/redis_server.py) and
runs real `NodeDirectory`s on it with short heartbeats. What the directories wrote is checked
in Redis itself, through `redis-cli` (the key layout an operator sees) or a plain client.
Waiting is on heartbeats (`next_heartbeat`) and on conditions under a deadline, never on sleeps.
"""

from __future__ import annotations

import contextlib
import logging
import pathlib
import subprocess
import time
from typing import AsyncIterator, Callable, Iterator

import attrs
import coredis
import pytest
import trio
from redis_server import RedisServer, require_redis_server, running_redis_server
from server_fixtures import all_tasks, open_sockets

from proto import cluster_pb2
from trio_sfu.cluster import directory as directory_module
from trio_sfu.cluster.directory import (DirectoryUnavailable, NodeAddress, NodeDirectory, NodeState, NodeStats,
                                        ParticipantLocation)
from trio_sfu.config import RedisConfig

INTERVAL = 0.2
EXPIRY = 1.0
# Generous: a bound on how long a condition may take on a loaded 2-core machine, not a measurement.
DEADLINE = 15.0


@pytest.fixture
def redis_server(tmp_path: pathlib.Path) -> Iterator[RedisServer]:
    with running_redis_server(tmp_path) as server:
        yield server


@attrs.define
class Load:
    stats: NodeStats = NodeStats()

    def __call__(self) -> NodeStats:
        return self.stats


def make_directory(server: RedisServer, node_id: str, load: Callable[[], NodeStats] | None = None,
                   config: RedisConfig | None = None, **kwargs: object) -> NodeDirectory:
    config = config or RedisConfig(address=server.address, dial_timeout=500, read_timeout=500, write_timeout=500)
    address = NodeAddress(node_id, ip=f"10.0.0.{len(node_id)}", region="eu", signal_url=f"ws://{node_id}:7880",
                          relay_host=f"{node_id}.internal", relay_port=7890)
    kwargs.setdefault("heartbeat_interval", INTERVAL)
    kwargs.setdefault("expiry", EXPIRY)
    return NodeDirectory(config, address, load or Load(), **kwargs)  # type: ignore[arg-type]


class Running:
    """Directories running in one nursery, each in its own cancel scope (so one can die)."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.scopes: dict[str, trio.CancelScope] = {}

    async def start(self, directory: NodeDirectory) -> None:
        scope = trio.CancelScope()
        self.scopes[directory.node_id] = scope

        async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                await directory.run(task_status=task_status)

        await self.nursery.start(run)

    def kill(self, directory: NodeDirectory) -> None:
        """The node stops heartbeating, without saying goodbye (a SIGKILL, a lost machine)."""
        self.scopes[directory.node_id].cancel()


@contextlib.asynccontextmanager
async def running(*directories: NodeDirectory) -> AsyncIterator[Running]:
    async with trio.open_nursery() as nursery:
        group = Running(nursery)
        for directory in directories:
            await group.start(directory)
        yield group
        nursery.cancel_scope.cancel()


def redis_cli(server: RedisServer, *args: str) -> list[str]:
    """What an operator sees: `redis-cli` output lines."""
    done = subprocess.run(["redis-cli", "-p", str(server.port), *args], capture_output=True, text=True,
                          timeout=10, check=True)
    lines = done.stdout.splitlines()
    return [] if lines == [""] else lines  # an empty reply prints one empty line


def redis_hash(server: RedisServer, key: str) -> dict[str, str]:
    lines = redis_cli(server, "hgetall", key)
    return dict(zip(lines[0::2], lines[1::2]))


@contextlib.asynccontextmanager
async def raw_client(server: RedisServer) -> AsyncIterator[coredis.Redis[bytes]]:
    async with coredis.Redis("127.0.0.1", server.port) as client:
        yield client


async def wait_until(predicate: Callable[[], bool], what: str) -> None:
    """Poll a condition the code under test changes on its own schedule, under a deadline."""
    with trio.fail_after(DEADLINE):
        while not predicate():
            await trio.sleep(INTERVAL / 4)


async def heartbeats(*directories: NodeDirectory, count: int = 1) -> None:
    with trio.fail_after(DEADLINE):
        for _ in range(count):
            for directory in directories:
                await directory.next_heartbeat()


async def test_two_nodes_see_each_other_within_a_heartbeat(redis_server: RedisServer) -> None:
    a, b = make_directory(redis_server, "node-a"), make_directory(redis_server, "node-b")
    async with running(a) as group:
        await heartbeats(a)
        assert set(a.live_nodes()) == {"node-a"} and a.live_nodes(include_self=False) == {}
        await group.start(b)
        # B's first heartbeat registers it and reads A, registered before.
        await heartbeats(b)
        assert set(b.live_nodes()) == {"node-a", "node-b"}
        # A's next heartbeat (one interval at most) sees B.
        await heartbeats(a)
        seen = a.live_nodes(include_self=False)
        assert set(seen) == {"node-b"}
        node = seen["node-b"]
        assert (node.id, node.ip, node.region, node.state) == ("node-b", "10.0.0.6", "eu", cluster_pb2.SERVING)
        assert (node.signal_url, node.relay_host, node.relay_port) == ("ws://node-b:7880", "node-b.internal", 7890)
        assert node.stats.started_at_ms <= node.stats.updated_at_ms


async def test_the_nodes_hash_holds_protobuf_records_under_their_ids(redis_server: RedisServer) -> None:
    a = make_directory(redis_server, "node-a")
    async with running(a):
        await heartbeats(a)
        assert redis_cli(redis_server, "hkeys", "nodes") == ["node-a"]
        async with raw_client(redis_server) as client:
            record = cluster_pb2.Node.FromString(await client.hget("nodes", "node-a"))
        assert record.id == "node-a" and record.state == cluster_pb2.SERVING


async def test_stats_are_refreshed_each_heartbeat(redis_server: RedisServer) -> None:
    load = Load(NodeStats(num_rooms=1, num_clients=2, num_tracks_in=3, num_tracks_out=4, cpu_load=0.25, num_cpus=2))
    a, b = make_directory(redis_server, "node-a", load), make_directory(redis_server, "node-b")
    async with running(a, b):
        await heartbeats(a, b)
        stats = b.live_nodes()["node-a"].stats
        assert (stats.num_rooms, stats.num_clients, stats.num_tracks_in, stats.num_tracks_out, stats.num_cpus) == (
            1, 2, 3, 4, 2)
        assert stats.cpu_load == pytest.approx(0.25)
        first_update = stats.updated_at_ms
        load.stats = NodeStats(num_rooms=5, num_clients=50, num_tracks_in=7, num_tracks_out=70, cpu_load=0.75)
        await heartbeats(a, b)
        stats = b.live_nodes()["node-a"].stats
        assert (stats.num_rooms, stats.num_clients, stats.num_tracks_in, stats.num_tracks_out) == (5, 50, 7, 70)
        assert stats.cpu_load == pytest.approx(0.75) and stats.updated_at_ms > first_update


async def test_shutting_down_is_visible_to_the_others(redis_server: RedisServer) -> None:
    a, b = make_directory(redis_server, "node-a"), make_directory(redis_server, "node-b")
    async with running(a, b):
        await heartbeats(a, b)
        assert b.live_nodes()["node-a"].state == cluster_pb2.SERVING
        await a.set_state(NodeState.SHUTTING_DOWN)
        # Written at once, not at the next heartbeat...
        async with raw_client(redis_server) as client:
            assert cluster_pb2.Node.FromString(await client.hget("nodes", "node-a")).state == cluster_pb2.SHUTTING_DOWN
        # ...and kept by the heartbeats that follow.
        await heartbeats(a, b, count=2)
        assert b.live_nodes()["node-a"].state == cluster_pb2.SHUTTING_DOWN


async def test_membership_add_remove_and_list(redis_server: RedisServer) -> None:
    a, b = make_directory(redis_server, "node-a"), make_directory(redis_server, "node-b")
    async with running(a, b):
        await heartbeats(a, b)
        await a.participant_joined("standup", "alice", "PA_alice1")
        await a.participant_joined("standup", "bob", "PA_bob1")
        await b.participant_joined("standup", "carol", "PA_carol1")
        await b.room_opened("empty-room")
        # Any node answers for any room.
        for reader in (a, b):
            assert await reader.room_nodes("standup") == {"node-a": 2, "node-b": 1}
            assert await reader.room_nodes("empty-room") == {"node-b": 0}
            assert await reader.rooms() == {"standup", "empty-room"}
            assert await reader.participant_node("standup", "carol") == ParticipantLocation("node-b", "PA_carol1")
            assert await reader.participant_node("standup", "nobody") is None
            assert await reader.participant_node("no-such-room", "alice") is None
        assert await b.room_participants("standup") == {
            "alice": ParticipantLocation("node-a", "PA_alice1"),
            "bob": ParticipantLocation("node-a", "PA_bob1"),
            "carol": ParticipantLocation("node-b", "PA_carol1"),
        }
        # The layout an operator reads with redis-cli.
        assert sorted(redis_cli(redis_server, "smembers", "rooms")) == ["empty-room", "standup"]
        assert redis_hash(redis_server, "room_nodes:standup") == {"node-a": "2", "node-b": "1"}
        assert redis_hash(redis_server, "room_participants:standup")["alice"] == '{"node_id":"node-a","sid":"PA_alice1"}'
        assert sorted(redis_cli(redis_server, "smembers", "node_rooms:node-b")) == ["empty-room", "standup"]

        await a.participant_left("standup", "bob", "PA_bob1")
        assert await b.room_nodes("standup") == {"node-a": 1, "node-b": 1}
        assert await b.participant_node("standup", "bob") is None

        # Alice moves to node B (a new session there) before node A hears that she left: A's
        # late departure must not remove her entry, which is B's now.
        await b.participant_joined("standup", "alice", "PA_alice2")
        await a.participant_left("standup", "alice", "PA_alice1")
        assert await a.participant_node("standup", "alice") == ParticipantLocation("node-b", "PA_alice2")
        assert await a.room_nodes("standup") == {"node-a": 0, "node-b": 2}

        # A room ends on a node; the room stays while another node serves it, then goes.
        await a.room_closed("standup")
        assert await b.room_nodes("standup") == {"node-b": 2}
        await b.participant_left("standup", "alice", "PA_alice2")
        await b.participant_left("standup", "carol", "PA_carol1")
        await b.room_closed("standup")
        await b.room_closed("empty-room")
        assert await a.rooms() == set()
        assert await a.room_nodes("standup") == {}
        assert redis_cli(redis_server, "keys", "room_*") == []
        assert redis_cli(redis_server, "smembers", "node_rooms:node-b") == []


async def test_a_dead_node_expires_and_a_survivor_cleans_up_after_it(redis_server: RedisServer) -> None:
    a, b = make_directory(redis_server, "node-a"), make_directory(redis_server, "node-b")
    async with running(a, b) as group:
        await heartbeats(a, b)
        await a.participant_joined("shared", "alice", "PA_a")
        await b.participant_joined("shared", "bob", "PA_b")
        await b.participant_joined("b-only", "carol", "PA_c")
        assert await a.rooms() == {"shared", "b-only"}
        group.kill(b)
        # Until A's heartbeat cleans up, the dead node's entries are still in Redis...
        await wait_until(lambda: "node-b" not in a.live_nodes(), "A stops listing B")
        with trio.fail_after(DEADLINE):
            while redis_cli(redis_server, "hexists", "nodes", "node-b") != ["0"]:
                await a.next_heartbeat()
        # ...then nothing of B is left, and A's own entries are untouched.
        assert redis_cli(redis_server, "hkeys", "nodes") == ["node-a"]
        assert redis_hash(redis_server, "room_nodes:shared") == {"node-a": "1"}
        assert list(redis_hash(redis_server, "room_participants:shared")) == ["alice"]
        assert redis_cli(redis_server, "smembers", "rooms") == ["shared"]
        assert redis_cli(redis_server, "exists", "node_rooms:node-b", "room_nodes:b-only",
                         "room_participants:b-only") == ["0"]
        assert await a.rooms() == {"shared"}
        assert a.metrics.get(directory_module.NODES_EXPIRED) == 1


async def test_a_node_that_deregisters_is_gone_at_once(redis_server: RedisServer) -> None:
    a, b = make_directory(redis_server, "node-a"), make_directory(redis_server, "node-b")
    async with running(a, b):
        await heartbeats(a, b)
        await b.participant_joined("room", "bob", "PA_b")
        await b.deregister()
        assert redis_cli(redis_server, "hkeys", "nodes") == ["node-a"]
        assert await a.rooms() == set() and await a.room_participants("room") == {}
        # B heartbeats no more, and writes no more: it stays gone.
        with pytest.raises(DirectoryUnavailable):
            await b.participant_joined("room", "late", "PA_l")
        await heartbeats(a, count=2)
        assert set(a.live_nodes()) == {"node-a"}
        assert redis_cli(redis_server, "hkeys", "nodes") == ["node-a"]
        assert redis_cli(redis_server, "exists", "node_rooms:node-b", "room_participants:room") == ["0"]


async def test_forged_and_stale_entries_are_ignored_logged_and_counted(
        redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    a = make_directory(redis_server, "node-a")
    now_ms = int(time.time() * 1000)  # the records' clock is the wall clock

    def record(node_id: str, updated_at_ms: int) -> bytes:
        return cluster_pb2.Node(id=node_id, state=cluster_pb2.SERVING,
                                stats=cluster_pb2.NodeStats(updated_at_ms=updated_at_ms)).SerializeToString()

    async with raw_client(redis_server) as client:
        await client.hset("nodes", {
            "garbage": b"\xff\x00not a protobuf",
            "impostor": record("node-a", now_ms),  # claims to be node-a under another name
            "time-traveller": record("time-traveller", now_ms + 3_600_000),
            "ghost": record("ghost", now_ms - 3_600_000),  # an old record: a dead node's
        })
        # Memberships of nodes that are not alive, and an entry that does not parse.
        await client.hset("room_participants:r", {"eve": '{"node_id":"time-traveller","sid":"PA_e"}',
                                                   "mallory": "not json", "trent": '["node-a"]'})
        await client.hset("room_nodes:r", {"time-traveller": "3", "node-a": "-4", "ghost": "x"})
        await client.sadd("rooms", ["r"])
    caplog.set_level(logging.WARNING, logger="trio_sfu.cluster.directory")
    async with running(a):
        await heartbeats(a, count=3)
        assert set(a.live_nodes()) == {"node-a"}
        assert a.live_nodes()["node-a"].ip == "10.0.0.6"  # its own record, not the impostor's
        # Each bad entry counted and logged once, not once per heartbeat.
        assert a.metrics.get(directory_module.ENTRY_MALFORMED) == 1
        assert a.metrics.get(directory_module.ENTRY_ID_MISMATCH) == 1
        assert a.metrics.get(directory_module.ENTRY_FROM_FUTURE) == 1
        ignored = [r for r in caplog.records if "ignored an entry" in r.getMessage()]
        assert len(ignored) == 3
        assert {problem for r in ignored for problem in ("malformed", "id_mismatch", "from_future")
                if f"problem={problem}" in r.getMessage()} == {"malformed", "id_mismatch", "from_future"}
        # The stale record was a dead node's: removed. The forged ones stay, ignored.
        assert "ghost" not in redis_cli(redis_server, "hkeys", "nodes")
        assert a.metrics.get(directory_module.NODES_EXPIRED) == 1
        # Readers ignore what the forged entries claim.
        assert await a.room_participants("r") == {}
        assert await a.room_nodes("r") == {}
        assert await a.rooms() == set()
        assert await a.participant_node("r", "eve") is None


async def test_redis_outage_calls_fail_fast_run_survives_and_state_returns(
        redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trio_sfu.cluster.directory")
    tasks_before = all_tasks()
    sockets_before = open_sockets()
    a, b = make_directory(redis_server, "node-a"), make_directory(redis_server, "node-b")
    async with running(a, b):
        await heartbeats(a, b)
        await a.participant_joined("room", "alice", "PA_a")
        await b.participant_joined("room", "bob", "PA_b")

        redis_server.stop()
        # Before the heartbeat has noticed, a call still fails within its bound...
        with trio.fail_after(a.call_timeout + 1):
            with pytest.raises(DirectoryUnavailable):
                await a.room_nodes("room")
        await wait_until(lambda: a.metrics.get(directory_module.REDIS_ERRORS) >= 3
                         and b.metrics.get(directory_module.REDIS_ERRORS) >= 3, "three failed heartbeats each")
        # ...and once it has, every call fails at once, with the one exception type.
        assert not a.available
        with trio.fail_after(a.call_timeout):
            for call in (a.rooms(), a.room_nodes("room"), a.room_participants("room"),
                         a.participant_node("room", "alice"), a.set_state(NodeState.SERVING)):
                with pytest.raises(DirectoryUnavailable):
                    await call
            with pytest.raises(DirectoryUnavailable):
                a.live_nodes()
            # A change made during the outage is kept locally, and reported as not shared yet.
            with pytest.raises(DirectoryUnavailable):
                await a.participant_joined("room", "dave", "PA_d")
            with pytest.raises(DirectoryUnavailable):
                await b.participant_left("room", "bob", "PA_b")
        # One outage, logged once, however many attempts failed.
        assert a.metrics.get(directory_module.OUTAGES) == 1
        unreachable = [r for r in caplog.records if "Redis unreachable" in r.getMessage()]
        assert len(unreachable) == 2  # one per node

        # Redis returns, empty (no persistence).
        redis_server.start()
        assert redis_cli(redis_server, "hlen", "nodes") == ["0"]
        await heartbeats(a, b, count=2)
        assert a.available and b.available
        assert set(a.live_nodes()) == {"node-a", "node-b"}
        # Both nodes wrote their local truth back, including what changed during the outage.
        assert await b.room_participants("room") == {"alice": ParticipantLocation("node-a", "PA_a"),
                                                     "dave": ParticipantLocation("node-a", "PA_d")}
        assert await b.room_nodes("room") == {"node-a": 2, "node-b": 0}
        assert await a.rooms() == {"room"}
        assert a.metrics.get(directory_module.RESYNCS) >= 2  # the first registration, and after the outage
        assert len([r for r in caplog.records if "Redis reachable again" in r.getMessage()]) == 2
    # Nothing of the directories or their clients outlives them.
    leaked = {t for t in all_tasks() - tasks_before if t is not trio.lowlevel.current_task()}
    assert not leaked, [t.name for t in leaked]
    assert not redis_sockets(redis_server, open_sockets() - sockets_before)


async def test_redis_restart_between_heartbeats_is_noticed_and_repaired(redis_server: RedisServer) -> None:
    a = make_directory(redis_server, "node-a", heartbeat_interval=0.5, expiry=2.5)
    async with running(a):
        await heartbeats(a)
        await a.participant_joined("room", "alice", "PA_a")
        errors = a.metrics.get(directory_module.REDIS_ERRORS)
        redis_server.restart()
        await heartbeats(a, count=2)
        assert redis_cli(redis_server, "hkeys", "nodes") == ["node-a"]
        assert redis_hash(redis_server, "room_participants:room") == {"alice": '{"node_id":"node-a","sid":"PA_a"}'}
        assert redis_cli(redis_server, "smembers", "rooms") == ["room"]
        # Whether or not a heartbeat fell into the gap, the node is back.
        assert a.metrics.get(directory_module.REDIS_ERRORS) >= errors


async def test_after_redis_restarts_empty_a_peer_stays_listed_until_its_record_would_expire(
        redis_server: RedisServer) -> None:
    # Redis came back empty: A writes itself back first, and B's record is missing until B's own
    # next heartbeat. Dropping B then would tear down a live relay link (a ~2 s media gap in the
    # cluster e2e test). A keeps B's last record, which ages out by its own timestamp.
    # expiry 8 s: the restart and A's re-registration must fit inside it (4 s did not once, on a
    # machine busy with the rest of the suite), and B's ageing out still fits the 15 s DEADLINE.
    a = make_directory(redis_server, "node-a", heartbeat_interval=0.2, expiry=8.0)
    b = make_directory(redis_server, "node-b", heartbeat_interval=0.2, expiry=8.0)
    async with running(a, b) as group:
        await heartbeats(a, b)
        group.kill(b)  # B stops heartbeating: it never writes itself back
        redis_server.restart()
        await wait_until(lambda: a.available and redis_cli(redis_server, "hkeys", "nodes") == ["node-a"],
                         "A registered itself again")
        await heartbeats(a)
        assert "node-b" in a.live_nodes()
        # B's last record was written before the restart: it goes once it is older than the expiry.
        await wait_until(lambda: "node-b" not in a.live_nodes(), "A stops listing B after its expiry")


async def test_a_node_wrongly_expired_after_a_stall_registers_itself_again(redis_server: RedisServer) -> None:
    a, b = make_directory(redis_server, "node-a"), make_directory(redis_server, "node-b")
    async with running(a, b):
        await heartbeats(a, b)
        await a.participant_joined("room", "alice", "PA_a")
        # What a survivor does to a node it judged dead: removes its record and memberships.
        async with raw_client(redis_server) as client:
            record = await client.hget("nodes", "node-a")
            assert await client.eval(directory_module._PURGE_NODE, [], ["node-a", record]) == 1
        assert await b.participant_node("room", "alice") is None
        await heartbeats(a)
        assert await b.participant_node("room", "alice") == ParticipantLocation("node-a", "PA_a")


async def test_a_hung_redis_bounds_every_call(redis_server: RedisServer) -> None:
    a = make_directory(redis_server, "node-a")
    async with running(a):
        await heartbeats(a)
        redis_server.pause()
        try:
            with trio.fail_after(a.call_timeout + 2):
                with pytest.raises(DirectoryUnavailable):
                    await a.participant_joined("room", "alice", "PA_a")
            await wait_until(lambda: not a.available, "the heartbeat notices the hung server")
        finally:
            redis_server.resume()
        await heartbeats(a, count=2)
        assert await a.participant_node("room", "alice") == ParticipantLocation("node-a", "PA_a")


async def test_calls_before_run_fail_clearly(redis_server: RedisServer) -> None:
    a = make_directory(redis_server, "node-a")
    with pytest.raises(DirectoryUnavailable):
        await a.rooms()
    with pytest.raises(DirectoryUnavailable):
        a.live_nodes()


async def test_run_starts_and_retries_while_redis_is_down_from_the_start(tmp_path: pathlib.Path) -> None:
    require_redis_server()
    server = RedisServer(tmp_path)  # a port nobody listens on yet
    a = make_directory(server, "node-a")
    try:
        async with running(a):
            await wait_until(lambda: a.metrics.get(directory_module.REDIS_ERRORS) >= 2, "failed attempts")
            with pytest.raises(DirectoryUnavailable):
                await a.participant_joined("room", "alice", "PA_a")
            server.start()
            await heartbeats(a)
            assert await a.participant_node("room", "alice") == ParticipantLocation("node-a", "PA_a")
    finally:
        server.stop()


async def test_credentials_and_database_from_the_config(tmp_path: pathlib.Path) -> None:
    require_redis_server()
    server = RedisServer(tmp_path, extra_args=("--requirepass", "s3cret"))
    server.start()
    try:
        good = make_directory(server, "node-a", config=RedisConfig(address=server.address, password="s3cret", db=3))
        wrong = make_directory(server, "node-b", config=RedisConfig(address=server.address, password="guess", db=3))
        async with running(good, wrong):
            await heartbeats(good)
            await good.participant_joined("room", "alice", "PA_a")
            assert redis_cli(server, "-a", "s3cret", "--no-auth-warning", "-n", "3", "hkeys", "nodes") == ["node-a"]
            assert redis_cli(server, "-a", "s3cret", "--no-auth-warning", "-n", "0", "dbsize") == ["0"]
            # A wrong password is an outage like any other: counted, retried, calls refused.
            await wait_until(lambda: wrong.metrics.get(directory_module.REDIS_ERRORS) >= 2, "refused heartbeats")
            with pytest.raises(DirectoryUnavailable):
                await wrong.rooms()
            assert set(good.live_nodes()) == {"node-a"}
    finally:
        server.stop()


def redis_sockets(server: RedisServer, sockets: set[str]) -> set[str]:
    """Of `sockets` (this process's, by /proc name), those connected to the Redis server."""
    remote = {}
    for name in ("tcp", "tcp6"):
        try:
            with open(f"/proc/net/{name}") as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            remote[f"socket:[{fields[9]}]"] = int(fields[2].rsplit(":", 1)[1], 16)
    return {s for s in sockets if remote.get(s) == server.port}
