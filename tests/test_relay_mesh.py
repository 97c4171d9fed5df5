"""Real servers linked by RelayMesh over real TCP on 127.0.0.1 (trio_sfu.cluster.mesh): one
link per node pair (the lower id dials), presence and media across it, a link killed from
outside — the other node's participants see the remote participant leave and its tracks go,
then the mesh redials and everything comes back, media included — peers leaving the set, and
strangers refused. The relay's bad-input test of the in-memory link runs here over TCP too:
valid-but-arbitrary messages, garbage frames after a good handshake, garbage instead of one.
"""

from __future__ import annotations

import contextlib
import logging
import random
import socket
from typing import AsyncIterator

import pytest
import trio
from livekit.protocol import models

from proto import relay_pb2 as pb
from server_fixtures import (
    assert_no_leaks,
    leak_baseline,
    media_config,
    mint_token,
    relay_leftovers,
    server_ports,
)
from test_node_relay_bad_input import random_message
from trio_sfu.client import LiveKitClient
from trio_sfu.client.senders import send_synthetic_audio
from trio_sfu.cluster import tcp_link as tl
from trio_sfu.cluster.mesh import RelayMesh
from trio_sfu.cluster.tcp_link import HandshakeRefused, LinkLimits, connect_link, frame
from trio_sfu.forwarding.receiver import ReceiverState
from trio_sfu.server import Server
from trio_sfu.tracks import SourceOrigin

KEY = "the-cluster-key"
ROOM = "shared"
LIMITS = LinkLimits(keepalive_interval=0.5, idle_timeout=5.0, handshake_timeout=2.0)


class Nodes:
    def __init__(self, servers: list[Server], meshes: list[RelayMesh]) -> None:
        self.servers = {s.relay.node_id: s for s in servers}
        self.meshes = {mesh.node_id: mesh for mesh in meshes}

    def addresses(self) -> dict[str, tuple[str, int]]:
        return {node_id: ("127.0.0.1", mesh.port) for node_id, mesh in self.meshes.items()}

    def link_all(self) -> None:
        for mesh in self.meshes.values():
            mesh.set_peers(self.addresses())

    async def wait_linked(self, timeout: float = 10.0) -> None:
        """Every pair linked, on both sides, and each relay serving the link its mesh holds."""
        with trio.fail_after(timeout):
            while not all(set(mesh.links) == set(self.meshes) - {node_id}
                          and all(self.servers[node_id].relay.links.get(p) is link for p, link in mesh.links.items())
                          for node_id, mesh in self.meshes.items()):
                await trio.sleep(0.01)


@contextlib.asynccontextmanager
async def tcp_nodes(*node_ids: str, key: str = KEY) -> AsyncIterator[Nodes]:
    """Real servers with media, one per node id, each with a RelayMesh listening on loopback and
    told about all the others. On exit the meshes stop, then the servers; nothing either made may
    survive (tasks, sockets, rooms, sources, relayed tracks, migrations)."""
    baseline = leak_baseline()
    servers = [Server(media_config(), enable_media=True, node_id=node_id) for node_id in node_ids]
    meshes = [RelayMesh(s.relay.node_id, key, s.relay, s.metrics, limits=LIMITS) for s in servers]
    async with trio.open_nursery() as nursery:
        for server in servers:
            await nursery.start(server.run)
        ports = [server_ports(server) for server in servers]
        try:
            async with trio.open_nursery() as mesh_nursery:
                for mesh in meshes:
                    await mesh_nursery.start(mesh.run)
                nodes = Nodes(servers, meshes)
                nodes.link_all()
                try:
                    yield nodes
                finally:
                    mesh_nursery.cancel_scope.cancel()
            for server in servers:
                assert not server.relay.links, f"links survived the mesh on {server.relay.node_id}"
        finally:
            for server in servers:
                server.request_shutdown()
    for server, server_port_set in zip(servers, ports):
        assert server.shutdown_clean
        assert_no_leaks(server, baseline, server_port_set)
        assert not relay_leftovers(server), relay_leftovers(server)


async def wait_until(predicate, timeout: float = 10.0, step: float = 0.02) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(step)


async def packets_flow(track, count: int = 25, timeout: float = 10.0) -> None:
    before = track.stats.packets
    await wait_until(lambda: track.stats.packets >= before + count, timeout)


def kill_connection(link: tl.TcpRelayLink) -> None:
    """From outside the link's code: the kernel resets the connection under it (SO_LINGER 0)."""
    sock = link._stream.socket
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.shutdown(socket.SHUT_RDWR)


async def test_nodes_over_tcp_see_each_other_lose_each_other_and_come_back(caplog) -> None:
    caplog.set_level(logging.INFO, logger="trio_sfu.cluster")
    async with tcp_nodes("node-a", "node-b") as nodes:
        a, b = nodes.servers["node-a"], nodes.servers["node-b"]
        mesh_a, mesh_b = nodes.meshes["node-a"], nodes.meshes["node-b"]
        await nodes.wait_linked()
        assert mesh_a.links["node-b"].peer_node_id == "node-b"
        async with LiveKitClient.connect(a.url, mint_token("pub", room=ROOM)) as publisher, \
                LiveKitClient.connect(b.url, mint_token("sub", room=ROOM)) as subscriber, \
                trio.open_nursery() as senders:
            audio = await publisher.publish_audio()
            senders.start_soon(send_synthetic_audio, audio, 120.0)
            (track,) = await subscriber.wait_for_tracks(1)
            assert track.sid == audio.sid
            await packets_flow(track)
            await wait_until(lambda: subscriber.participant_sid in publisher.remote_participants)
            assert publisher.participant_sid in subscriber.remote_participants
            (room_b,) = b.media.rooms.values()
            (source,) = room_b.track_manager.sources(audio.sid)
            assert source.origin is SourceOrigin.REMOTE and source.node_id == "node-a"
            (room_a,) = a.media.rooms.values()
            (local,) = room_a.track_manager.sources(audio.sid)
            assert len(local.receiver.down_tracks) == 1  # the relay tap towards B

            # The connection dies under both links. A redials after 2-4 s (its first backoff),
            # time enough to watch everything go first.
            mesh_a.backoff_initial = 4.0
            first_a = mesh_a.links["node-b"]
            kill_connection(mesh_b.links["node-a"])
            # B's participant sees A's participant leave and its track go; A's sees B's leave.
            await wait_until(lambda: publisher.participant_sid not in subscriber.remote_participants)
            await wait_until(lambda: not subscriber.subscriptions[audio.sid].active)
            await wait_until(lambda: subscriber.participant_sid not in publisher.remote_participants)
            assert first_a.state is tl.LinkState.CLOSED and "node-b" not in mesh_a.links
            assert source.state is ReceiverState.CLOSED and not source.subscriber_ids
            assert not room_b.track_manager.sources(audio.sid)
            assert not b.relay.remote_participants(ROOM) and not a.relay.remote_participants(ROOM)

            # The mesh redials (A has the lower id): presence and the track come back, media flows.
            await nodes.wait_linked()
            assert mesh_a.links["node-b"] is not first_a
            await wait_until(lambda: publisher.participant_sid in subscriber.remote_participants)
            await wait_until(lambda: subscriber.participant_sid in publisher.remote_participants)
            await wait_until(lambda: audio.sid in subscriber.subscriptions and subscriber.subscriptions[audio.sid].active)
            await packets_flow(subscriber.subscriptions[audio.sid])
            (source,) = room_b.track_manager.sources(audio.sid)
            assert source.origin is SourceOrigin.REMOTE and source.is_open
            assert len(local.receiver.down_tracks) == 1, "the dead link's tap must come off the receiver"
            senders.cancel_scope.cancel()
        for server in (a, b):
            assert server.metrics.get("relay_rejected_total") == 0, server.relay.rejections
            assert server.metrics.get(tl.HANDSHAKE_REFUSED) == 0
        assert mesh_a.metrics.get("relay_mesh_link_ended_total") >= 1
    assert any("relay link lost" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("step", ["migrate.detached", "migrate.accepted"])
async def test_a_migration_whose_link_dies_fails_at_once_on_both_nodes_and_leaves_nothing(step: str) -> None:
    """The link dies while A moves a participant to B — before B has the sync state, or once B
    holds it as a pending migration: A's migrate() returns False at once (not after its accept
    or resume timeouts), B drops what it was holding for the participant, and after both nodes
    stop nothing of the migration is left (the fixture's checks)."""
    async with tcp_nodes("node-a", "node-b") as nodes:
        a, b = nodes.servers["node-a"], nodes.servers["node-b"]
        mesh_a = nodes.meshes["node-a"]
        await nodes.wait_linked()
        a.relay.accept_timeout = b.relay.resume_timeout = a.relay.resume_timeout = 60.0
        killed: list[tl.TcpRelayLink] = []

        async def kill_at_step(name: str, context: dict) -> None:
            if name == step and not killed:
                a_side, b_side = mesh_a.links["node-b"], nodes.meshes["node-b"].links["node-a"]
                killed.append(a_side)
                if step == "migrate.accepted":
                    assert b.relay._pending_in, "B holds the sync state"
                kill_connection(a_side)
                # Both relays have lost the link before migrate() goes on.
                await wait_until(lambda: a.relay.links.get("node-b") is not a_side
                                 and b.relay.links.get("node-a") is not b_side)

        a.relay.seam = kill_at_step
        async with LiveKitClient.connect(a.url, mint_token("mover", room=ROOM)) as mover, \
                LiveKitClient.connect(b.url, mint_token("watcher", room=ROOM)) as watcher, \
                trio.open_nursery() as senders:
            audio = await mover.publish_audio()
            senders.start_soon(send_synthetic_audio, audio, 60.0)
            (track,) = await watcher.wait_for_tracks(1)
            await packets_flow(track)
            resume_leaves = []
            expect = mover.resume.expect
            mover.resume.expect = lambda leave: (resume_leaves.append(leave), expect(leave))  # type: ignore[method-assign]
            with trio.fail_after(5):
                assert await a.relay.migrate(ROOM, mover.participant_sid, "node-b") is False
            assert killed
            await wait_until(lambda: not b.relay._pending_in)
            assert not a.relay._out and not a.relay._handed_over
            assert a.metrics.get("migrations_failed_total") == 1
            await wait_until(lambda: mover.left.is_set())
            # Told to rejoin, never sent to resume on a node it can no longer be handed to.
            assert not resume_leaves and mover.migrations == 0
            assert mover.leave_reason == "MIGRATION"
            senders.cancel_scope.cancel()


async def test_the_lower_id_dials_and_a_peer_left_out_of_the_set_is_unlinked_until_listed_again() -> None:
    async with tcp_nodes("node-a", "node-b", "node-c") as nodes:
        await nodes.wait_linked()
        mesh_a, mesh_b, mesh_c = (nodes.meshes[n] for n in ("node-a", "node-b", "node-c"))
        # Exactly one link per pair, dialed by the lower id: only A and B dialed.
        assert mesh_c.metrics.get("relay_mesh_dial_failed_total") == 0
        assert not any(peer.dial_started for peer in mesh_c._peers.values())
        assert {p for p, peer in mesh_a._peers.items() if peer.dial_started} == {"node-b", "node-c"}
        assert {p for p, peer in mesh_b._peers.items() if peer.dial_started} == {"node-c"}

        async with LiveKitClient.connect(nodes.servers["node-c"].url, mint_token("on-c", room=ROOM)) as on_c:
            await on_c.wait_connected()
            relay_b = nodes.servers["node-b"].relay
            await wait_until(lambda: relay_b.remote_participants(ROOM))
            # B no longer lists C (C dropped out of the directory): the link goes on both sides ...
            addresses = nodes.addresses()
            mesh_b.set_peers({n: addr for n, addr in addresses.items() if n != "node-c"})
            await wait_until(lambda: "node-c" not in mesh_b.links and "node-b" not in mesh_c.links)
            assert "node-c" not in relay_b.links and not relay_b.remote_participants(ROOM)
            # ... and C's attempts to get it back are not B's business: C accepts, B dialed. Listed again:
            await trio.sleep(0.3)
            assert "node-c" not in mesh_b.links
            mesh_b.set_peers(addresses)
            await nodes.wait_linked()
            await wait_until(lambda: [p.identity for p in relay_b.remote_participants(ROOM)] == ["on-c"])


async def test_strangers_wrong_keys_and_wrong_directions_are_refused_and_the_mesh_keeps_serving() -> None:
    async with tcp_nodes("node-a", "node-b") as nodes:
        await nodes.wait_linked()
        mesh_b = nodes.meshes["node-b"]
        b = nodes.servers["node-b"]
        port = mesh_b.port
        cases = [
            ("node-0", KEY.encode(), "peer refused: node 'node-0': not a listed peer"),
            ("node-z", KEY.encode(), "peer refused: node 'node-z': this node dials it, not the other way round"),
            ("node-a", b"stolen?", "peer failed authentication (another cluster key?)"),
        ]
        mesh_b.set_peers({**nodes.addresses(), "node-z": ("127.0.0.1", 9)})  # listed, but B dials it
        for node_id, key, reason in cases:
            with pytest.raises(HandshakeRefused) as refused:
                await connect_link("127.0.0.1", port, local_node_id=node_id, peer_node_id="node-b", key=key, limits=LIMITS)
            assert refused.value.reason == reason
        # (B hears the last refusal from the dialer, a moment after the dialer gave up.)
        await wait_until(lambda: b.metrics.get(tl.HANDSHAKE_REFUSED) == 3)
        assert list(mesh_b.refusals) == [
            "node 'node-0': not a listed peer", "node 'node-z': this node dials it, not the other way round",
            "peer refused: peer failed authentication (another cluster key?)"]
        # B kept its link to A all along (the refused "node-a" did not replace it).
        assert nodes.meshes["node-a"].links["node-b"].state is tl.LinkState.OPEN
        assert b.relay.links["node-a"] is mesh_b.links["node-a"]
        assert mesh_b.metrics.get("relay_mesh_link_ended_total") == 0


async def test_a_mesh_needs_a_key_and_a_usable_node_id() -> None:
    server = Server(media_config(), enable_media=True, node_id="node-a")
    with pytest.raises(ValueError, match="cluster.key"):
        RelayMesh("node-a", "", server.relay, server.metrics)
    with pytest.raises(ValueError, match="node id"):
        RelayMesh("node a", KEY, server.relay, server.metrics)


# ---- bad input over the real transport (the relay fuzz test, over TCP) --------------------------


async def test_arbitrary_messages_garbage_frames_and_garbage_handshakes_over_tcp_never_break_a_node() -> None:
    """Over the real link: 2,000 structurally valid relay messages with arbitrary contents from
    A (as the in-memory relay test sends them); a listed node that completes a good handshake and
    then sends garbage frames (a link closed each time, counted); strangers sending garbage
    instead of a handshake (refused, counted). All the while a publisher on A reaches a
    subscriber on B, and at the end nothing is left (the fixture's leak check)."""
    rng = random.Random(20261204)
    async with tcp_nodes("node-a", "node-b") as nodes:
        await nodes.wait_linked()
        a, b = nodes.servers["node-a"], nodes.servers["node-b"]
        mesh_b = nodes.meshes["node-b"]
        b.relay.resume_timeout = 0.5
        # "node-0" is listed on B (and dials B, having the lower id) but is the test's raw socket.
        mesh_b.set_peers({**nodes.addresses(), "node-0": ("127.0.0.1", 9)})
        async with LiveKitClient.connect(a.url, mint_token("pub", room=ROOM)) as publisher, \
                LiveKitClient.connect(b.url, mint_token("resident", room=ROOM)) as resident, \
                trio.open_nursery() as senders:
            audio = await publisher.publish_audio()
            senders.start_soon(send_synthetic_audio, audio, 120.0)
            (track,) = await resident.wait_for_tracks(1)
            await packets_flow(track)

            link_to_b = nodes.meshes["node-a"].links["node-b"]
            track_ids = ["TR_a", "TR_b", ""]
            sids = [publisher.participant_sid, resident.participant_sid, "PA_mover", ""]
            for i in range(2000):
                link_to_b.send(random_message(rng, track_ids, sids))
                if i % 100 == 0:
                    await trio.sleep(0.01)
            await wait_until(lambda: b.metrics.get("relay_rejected_total") > 100)

            # Garbage frames after a valid handshake: each link is closed, counted, and B goes on.
            for round_ in range(20):
                link = await connect_link("127.0.0.1", mesh_b.port, local_node_id="node-0", peer_node_id="node-b",
                                          key=KEY.encode(), limits=LIMITS)
                raw = link._stream
                good = pb.RelayMessage(from_node="node-0", participant_changed=pb.ParticipantChanged(
                    room=ROOM, participant_info=models.ParticipantInfo(sid=f"PA_z{round_}", identity="zed").SerializeToString()))
                garbage = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
                if round_ % 2:  # a field whose length runs past the frame: not protobuf
                    wire = frame(good.SerializeToString()) + frame(b"\x0a\xff\xff\xff\xff\x0f" + garbage)
                else:  # a length over the cap, then anything
                    oversize = LIMITS.max_frame + 1 + rng.randrange(1 << 20)
                    wire = frame(good.SerializeToString()) + oversize.to_bytes(4, "big") + garbage
                with contextlib.suppress(trio.BrokenResourceError):
                    await raw.send_all(wire)
                with trio.fail_after(5):
                    while True:  # B closes: the read ends (a FIN, or a reset over unread keepalives)
                        try:
                            if not await raw.receive_some(65536):
                                break
                        except trio.BrokenResourceError:
                            break
                link.close()
                await raw.aclose()
            await wait_until(lambda: "node-0" not in mesh_b.links)
            malformed = b.metrics.get(tl.LINK_FRAME_MALFORMED) + b.metrics.get(tl.LINK_FRAME_OVERSIZE)
            assert malformed == 20
            # Whatever node-0 announced went with its link: no participant of it is left on B.
            assert all(p.identity != "zed" for p in b.relay.remote_participants(ROOM))

            # Garbage instead of a handshake, from strangers.
            refused_before = b.metrics.get(tl.HANDSHAKE_REFUSED)
            for _ in range(30):
                raw = await trio.open_tcp_stream("127.0.0.1", mesh_b.port)
                with contextlib.suppress(trio.BrokenResourceError):
                    await raw.send_all(bytes(rng.randrange(256) for _ in range(rng.randrange(200))))
                    await raw.send_eof()
                with trio.fail_after(5):
                    with contextlib.suppress(trio.BrokenResourceError):
                        while await raw.receive_some(65536):
                            pass
                await raw.aclose()
            await wait_until(lambda: b.metrics.get(tl.HANDSHAKE_REFUSED) == refused_before + 30)

            # The A-B link never broke, and it still carries the media.
            assert nodes.meshes["node-a"].links["node-b"] is link_to_b
            await packets_flow(track)
            assert a.metrics.get("relay_handler_failed_total") == b.metrics.get("relay_handler_failed_total") == 0, [
                r for r in b.relay.rejections if r.startswith("relay message failed")]
            with trio.fail_after(b.relay.resume_timeout + 20):
                while b.relay._pending_in:
                    await trio.sleep(0.05)
            senders.cancel_scope.cancel()
