"""Servers as nodes of a cluster on a real `redis-server`: the directory, the TCP relay mesh, the
Server API from any node, placement of joins and drain by migration (issue 14).

Everything is real and in this Trio run: Debian's redis-server (tests/redis_server.py) on a free
loopback port, the servers' directories heartbeating into it, their relay meshes linking over
loopback TCP with the authenticated handshake, our own client stack over loopback UDP, and
livekit-api's own client for the Server API. The node processes, `--workers` and the real SDKs
are in tests/e2e/test_e2e_cluster.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import pytest
import trio
from livekit import api

from redis_server import RedisServer, running_redis_server
from server_fixtures import API_KEY, API_SECRET, assert_no_leaks, leak_baseline, media_config, mint_token, server_ports
from trio_sfu import metrics as m
from trio_sfu.api.cluster_rooms import call_peer
from trio_sfu.api.twirp import TwirpError
from trio_sfu.client import LiveKitClient
from trio_sfu.cluster.directory import NodeDirectory
from trio_sfu.client.senders import send_synthetic_audio
from trio_sfu.server import Server

HEARTBEAT = 0.2


@pytest.fixture
def redis_server(tmp_path: pathlib.Path) -> Iterator[RedisServer]:
    with running_redis_server(tmp_path) as server:
        yield server


def node_config(redis: RedisServer):
    config = media_config()
    config.redis.address = redis.address
    config.cluster.heartbeat_interval = HEARTBEAT
    return config


@contextlib.asynccontextmanager
async def cluster(redis: RedisServer, count: int) -> AsyncIterator[list[Server]]:
    """`count` nodes of one cluster, each linked to the others before the body runs; on exit all
    shut down and nothing any of them made may survive."""
    baseline = leak_baseline()
    servers = [Server(node_config(redis), enable_media=True) for _ in range(count)]
    async with trio.open_nursery() as nursery:
        for server in servers:
            await nursery.start(server.run)
        ports = [server_ports(server) for server in servers]
        try:
            await wait_until(lambda: all(len(s.relay.links) == count - 1 for s in servers))
            await wait_until(lambda: all(len(s.cluster.directory.live_nodes()) == count for s in servers))
            yield servers
        finally:
            for server in servers:
                server.request_shutdown()
    for server, port_set in zip(servers, ports):
        assert server.shutdown_clean
        assert_no_leaks(server, baseline, port_set)


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, step: float = 0.02) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(step)


def packets(client: LiveKitClient, track_sid: str) -> int:
    track = client.subscriptions.get(track_sid)
    return 0 if track is None else track.stats.packets


def http_url(server: Server) -> str:
    return server.url.replace("ws://", "http://")


async def call(server: Server, fn: Callable[[api.LiveKitAPI], Awaitable[Any]]) -> Any:
    """`fn(LiveKitAPI)` against `server`, on an asyncio loop in a thread (livekit-api is aiohttp)."""

    def run() -> Any:
        async def main() -> Any:
            async with api.LiveKitAPI(http_url(server), API_KEY, API_SECRET) as lkapi:
                return await fn(lkapi)

        return asyncio.run(main())

    return await trio.to_thread.run_sync(run)


async def test_a_room_spans_nodes_media_crosses_and_the_api_answers_from_any_node(redis_server) -> None:
    async with cluster(redis_server, 2) as (a, b):
        async with LiveKitClient.connect(a.url, mint_token("pub", room="span")) as publisher, \
                LiveKitClient.connect(b.url, mint_token("sub", room="span")) as subscriber, \
                trio.open_nursery() as senders:
            audio = await publisher.publish_audio()
            senders.start_soon(send_synthetic_audio, audio, 20.0)
            (track,) = await subscriber.wait_for_tracks(1)
            assert track.sid == audio.sid
            await wait_until(lambda: packets(subscriber, track.sid) >= 25)

            # The directory: each participant on the node that serves it.
            hosts = await a.cluster.directory.room_nodes("span")
            assert hosts == {a.relay.node_id: 1, b.relay.node_id: 1}
            # Each node's load as its heartbeat reports it: A takes the track in, B sends it out.
            await a.cluster.directory.next_heartbeat()
            await wait_until(lambda: b.relay.node_id in a.cluster.directory.live_nodes()
                             and a.cluster.directory.live_nodes()[b.relay.node_id].stats.num_tracks_out == 1)
            stats_a, stats_b = a.cluster.stats(), b.cluster.stats()
            assert (stats_a.num_rooms, stats_a.num_clients, stats_a.num_tracks_in, stats_a.num_tracks_out) == (1, 1, 1, 0)
            assert (stats_b.num_rooms, stats_b.num_clients, stats_b.num_tracks_in, stats_b.num_tracks_out) == (1, 1, 0, 1)

            # The Server API, asked at either node, sees the whole room.
            for node in (a, b):
                listed = await call(node, lambda lk: lk.room.list_participants(api.ListParticipantsRequest(room="span")))
                assert sorted(p.identity for p in listed.participants) == ["pub", "sub"]
                rooms = await call(node, lambda lk: lk.room.list_rooms(api.ListRoomsRequest()))
                assert [(r.name, r.num_participants) for r in rooms.rooms] == [("span", 2)]
            got = await call(a, lambda lk: lk.room.get_participant(api.RoomParticipantIdentity(room="span", identity="sub")))
            assert got.identity == "sub" and got.sid == subscriber.participant_sid
            assert a.metrics.get("twirp_forwarded_total") >= 3

            # Removing the participant served by B, through A.
            await call(a, lambda lk: lk.room.remove_participant(api.RoomParticipantIdentity(room="span", identity="sub")))
            with trio.fail_after(5):
                await subscriber.left.wait()
            await wait_until(lambda: not b.registry.rooms.get("span") or not b.registry.rooms["span"].participants)
            senders.cancel_scope.cancel()


async def test_forwarded_calls_carry_the_callers_token_and_a_forged_forward_sees_only_one_node(redis_server) -> None:
    async with cluster(redis_server, 2) as (a, b):
        async with LiveKitClient.connect(b.url, mint_token("bob", room="r")):
            listed = await call(a, lambda lk: lk.room.list_participants(api.ListParticipantsRequest(room="r")))
            assert [p.identity for p in listed.participants] == ["bob"]
            assert a.metrics.get("twirp_forwarded_total") == 1

            # A client claiming to be a node (the forwarded header) gets A's own view: nobody.
            admin = mint_token("admin", room="r", room_admin=True)
            with pytest.raises(TwirpError) as local_only:
                await call_peer(a.url, "ListParticipants", api.ListParticipantsRequest(room="r"),
                                api.ListParticipantsResponse, admin)
            assert local_only.value.code == "not_found"
            assert a.metrics.get("twirp_forwarded_total") == 1

            # A bad token is refused at the node it reaches, and goes nowhere else.
            def wrong_secret() -> Any:
                async def main() -> Any:
                    async with api.LiveKitAPI(http_url(a), API_KEY, "not-the-secret-not-the-secret-xx") as lk:
                        return await lk.room.list_participants(api.ListParticipantsRequest(room="r"))
                return asyncio.run(main())

            with pytest.raises(api.TwirpError) as refused:
                await trio.to_thread.run_sync(wrong_secret)
            assert refused.value.status == 401
            assert a.metrics.get("twirp_forwarded_total") == 1


async def test_a_draining_node_moves_its_participants_and_new_joins_go_elsewhere(redis_server) -> None:
    async with cluster(redis_server, 2) as (a, b):
        async with LiveKitClient.connect(a.url, mint_token("pub", room="d")) as publisher, \
                LiveKitClient.connect(a.url, mint_token("sub", room="d")) as subscriber, \
                trio.open_nursery() as senders:
            audio = await publisher.publish_audio()
            senders.start_soon(send_synthetic_audio, audio, 30.0)
            (track,) = await subscriber.wait_for_tracks(1)
            await wait_until(lambda: packets(subscriber, track.sid) >= 25)
            sids = (publisher.participant_sid, subscriber.participant_sid)

            reports = []

            async def drain() -> None:
                # What SIGTERM does (Server.request_drain), without the shutdown after it.
                reports.append(await a.cluster.drain(20.0))

            senders.start_soon(drain)
            await publisher.wait_resumed(1, timeout=20)
            await subscriber.wait_resumed(1, timeout=20)
            # Same sids (a resume, not a rejoin), now served by B, and media flows on.
            room_b = b.registry.rooms["d"]
            assert {p.sid for p in room_b.participants.values()} == set(sids)
            before = packets(subscriber, track.sid)
            await wait_until(lambda: packets(subscriber, track.sid) >= before + 25)
            await wait_until(lambda: bool(reports), timeout=20)
            (report,) = reports
            assert len(report.migrated) == 2 and not report.failed and report.told_to_reconnect == 0

            # A drained still listens: a join reaching it is served by B.
            async with LiveKitClient.connect(a.url, mint_token("late", room="d")) as late:
                assert "late" in b.registry.rooms["d"].participants
                assert late.participant_sid
            assert a.metrics.get(m.SIGNAL_JOIN_FORWARDED) == 1
            senders.cancel_scope.cancel()


async def test_media_keeps_flowing_through_a_redis_outage_and_a_join_after_it_works(redis_server) -> None:
    async with cluster(redis_server, 2) as (a, b):
        async with LiveKitClient.connect(a.url, mint_token("pub", room="o")) as publisher, \
                LiveKitClient.connect(b.url, mint_token("sub", room="o")) as subscriber, \
                trio.open_nursery() as senders:
            audio = await publisher.publish_audio()
            senders.start_soon(send_synthetic_audio, audio, 60.0)
            (track,) = await subscriber.wait_for_tracks(1)
            await wait_until(lambda: packets(subscriber, track.sid) >= 25)

            await trio.to_thread.run_sync(redis_server.stop)
            await wait_until(lambda: not a.cluster.directory.available and not b.cluster.directory.available)
            during = packets(subscriber, track.sid)
            await trio.sleep(10 * HEARTBEAT)
            assert packets(subscriber, track.sid) >= during + 25  # the link never needed Redis
            assert len(a.relay.links) == 1 and len(b.relay.links) == 1
            # A join while Redis is down is served by the node it reaches (placement cannot ask).
            async with LiveKitClient.connect(b.url, mint_token("offline", room="o")) as offline:
                (seen,) = await offline.wait_for_tracks(1)
                assert seen.sid == audio.sid

            await trio.to_thread.run_sync(redis_server.start)  # empty: everything is registered again
            await wait_until(lambda: a.cluster.directory.available and b.cluster.directory.available)
            await wait_until(lambda: len(a.cluster.directory.live_nodes()) == 2)
            hosts = await a.cluster.directory.room_nodes("o")
            assert hosts == {a.relay.node_id: 1, b.relay.node_id: 1}
            async with LiveKitClient.connect(a.url, mint_token("late", room="o")) as late:
                (seen,) = await late.wait_for_tracks(1)
                await wait_until(lambda: packets(late, seen.sid) >= 25)
                hosts = await b.cluster.directory.room_nodes("o")
                assert hosts == {a.relay.node_id: 2, b.relay.node_id: 1}
            senders.cancel_scope.cancel()


async def test_membership_updates_that_overflow_their_queue_are_rewritten_from_the_registry(redis_server, monkeypatch) -> None:
    # No room to queue anything, and the first membership write held up (a slow Redis, at the
    # directory's call boundary): the joins behind it overflow, and the directory must still end
    # up saying exactly who is where.
    monkeypatch.setattr("trio_sfu.cluster.member.MEMBERSHIP_QUEUE", 0)
    release = trio.Event()
    real_joined = NodeDirectory.participant_joined

    async def slow_joined(self, room: str, identity: str, sid: str) -> None:
        await release.wait()
        await real_joined(self, room, identity, sid)

    monkeypatch.setattr(NodeDirectory, "participant_joined", slow_joined)
    async with cluster(redis_server, 1) as (a,):
        async with LiveKitClient.connect(a.url, mint_token("one", room="q")), \
                LiveKitClient.connect(a.url, mint_token("two", room="q")), \
                LiveKitClient.connect(a.url, mint_token("three", room="q")):
            room = a.registry.rooms["q"]
            await wait_until(lambda: set(room.participants) == {"one", "two", "three"})
            # The writer is stuck on the first join; the others had nowhere to wait.
            assert a.metrics.get("cluster_directory_updates_dropped_total") >= 2
            release.set()
            sids = {identity: p.sid for identity, p in room.participants.items()}

            async def settled() -> bool:
                found = await a.cluster.directory.room_participants("q")
                return {i: loc.sid for i, loc in found.items()} == sids

            with trio.fail_after(10):
                while not await settled():
                    await trio.sleep(HEARTBEAT / 2)
