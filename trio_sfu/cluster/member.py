"""A server as one node of a cluster: the node directory, the relay mesh, placement and drain.

With `redis:` configured, the server (trio_sfu.server) runs one `ClusterMember` beside its
NodeRelay. It

- registers the node in the directory (trio_sfu.cluster.directory) with its signal URL and
  relay endpoint, and heartbeats its load (rooms, clients, tracks, CPU);
- keeps the relay mesh (trio_sfu.cluster.mesh) linked to every live node the directory lists,
  and leaves the links alone while Redis is unreachable (media between nodes never depends
  on Redis being up);
- mirrors room membership into the directory as the registry reports joins and leaves;
- answers the front door's questions: where a join goes (trio_sfu.cluster.placement), where
  a resuming participant lives, and which nodes host a room (for the Server API);
- drains the node (trio_sfu.cluster.drain) when asked.

Directory writes happen in one task, in order, from a bounded queue: the registry's observers
are synchronous and must never wait on Redis. If the queue ever overflows (Redis slow, a burst
of joins), what is queued is dropped and the directory's mirror is replaced by the registry's
truth, written back whole at the next heartbeat: nothing is lost, only late (and counted).
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Awaitable, Callable, Optional

import trio
from livekit.protocol import models

from proto import cluster_pb2
from trio_sfu import metrics as m
from trio_sfu.cluster.directory import NodeAddress, NodeDirectory, NodeState, NodeStats
from trio_sfu.cluster.errors import DirectoryUnavailable
from trio_sfu.cluster.drain import DEFAULT_DRAIN_DEADLINE, DrainReport, drain
from trio_sfu.cluster.mesh import RelayMesh
from trio_sfu.cluster.placement import NodeLoad, Placement, PlacementPolicy, Verdict, place_join
from trio_sfu.config import ServerConfig
from trio_sfu.log import get_logger
from trio_sfu.signal.rooms import MOVED_IN, MOVED_OUT

if TYPE_CHECKING:
    from trio_sfu.cluster.node_relay import NodeRelay
    from trio_sfu.media.service import MediaService
    from trio_sfu.signal.participant import Participant
    from trio_sfu.signal.rooms import Room, RoomRegistry

_log = get_logger("trio_sfu.cluster.member")

#: Membership updates waiting for Redis (each a few hundred bytes of closure).
MEMBERSHIP_QUEUE = 4096
DIRECTORY_DROPPED = "cluster_directory_updates_dropped_total"


class CpuMeter:
    """This process's CPU use as a share of one core, between successive readings."""

    def __init__(self) -> None:
        self._cpu = time.process_time()
        self._wall = time.monotonic()
        self.load = 0.0

    def read(self) -> float:
        cpu, wall = time.process_time(), time.monotonic()
        if wall - self._wall >= 0.5:
            self.load = max(0.0, min(1.0, (cpu - self._cpu) / (wall - self._wall)))
            self._cpu, self._wall = cpu, wall
        return self.load


class ClusterMember:
    def __init__(self, config: ServerConfig, relay: "NodeRelay", registry: "RoomRegistry",
                 media: "MediaService", metrics: m.Metrics, signal_url: Callable[[], str]) -> None:
        self.config = config
        self.relay = relay
        self.registry = registry
        self.media = media
        self.metrics = metrics
        self._signal_url = signal_url
        self.node_id = relay.node_id
        cluster = config.cluster
        self.mesh = RelayMesh(self.node_id, config.cluster_key(), relay, metrics, host=self._relay_host(),
                              port=cluster.relay_port)
        self.policy = PlacementPolicy(sysload_limit=config.node_selector.sysload_limit)
        self.cpu = CpuMeter()
        self.directory: Optional[NodeDirectory] = None
        self._updates_in, self._updates_out = trio.open_memory_channel[Callable[[NodeDirectory], Awaitable[None]]](MEMBERSHIP_QUEUE)
        self.draining = False
        self.log = _log.bind(node=self.node_id)

    def _relay_host(self) -> str:
        host = self.config.effective_bind_addresses()[0]
        if host in ("0.0.0.0", "", "::"):
            return "0.0.0.0"
        return host

    def _advertised_relay_host(self) -> str:
        host = self.config.effective_bind_addresses()[0]
        if host in ("0.0.0.0", "", "::"):
            return self.config.rtc.node_ip or "127.0.0.1"
        return host

    # ---- lifetime ----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the mesh and the directory; started once the server's listeners are open (the
        directory record names its signal URL)."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.mesh.run)
            address = NodeAddress(self.node_id, ip=self.config.rtc.node_ip or "", region=self.config.region,
                                  signal_url=self._signal_url(), relay_host=self._advertised_relay_host(),
                                  relay_port=self.mesh.port)
            self.directory = NodeDirectory(self.config.redis, address, self.stats, metrics=self.metrics,
                                           heartbeat_interval=self.config.cluster.heartbeat_interval)
            self.registry.observers.append(self)
            self.relay.arrivals = self
            try:
                await nursery.start(self.directory.run)
                if not self.draining:
                    await self._set_state(NodeState.SERVING)
                nursery.start_soon(self._follow_directory)
                nursery.start_soon(self._write_updates)
                self.log.info("cluster member running", kv={"relay_port": self.mesh.port, "signal_url": self._signal_url()})
                task_status.started()
                await trio.sleep_forever()
            finally:
                self.registry.observers.remove(self)
                self.relay.arrivals = None

    async def leave(self, timeout: float = 2.0) -> None:
        """A graceful stop (call while `run` runs): the directory forgets this node now, so the
        others need not wait for its entry to expire. Without it (a crash) the entry expires."""
        if self.directory is None:
            return
        with trio.move_on_after(timeout):
            try:
                await self.directory.deregister()
            except DirectoryUnavailable:
                self.log.warning("could not deregister: Redis unavailable; the entry expires")

    async def _set_state(self, state: NodeState) -> None:
        assert self.directory is not None
        try:
            await self.directory.set_state(state)
        except DirectoryUnavailable:
            pass  # carried by the next heartbeat

    async def _follow_directory(self) -> None:
        """After each heartbeat, link to exactly the live nodes (while Redis answers)."""
        assert self.directory is not None
        known: set[str] = set()
        while True:
            await self.directory.next_heartbeat()
            if not self.directory.available:
                continue  # an outage: keep the links we have
            nodes = self.directory.live_nodes(include_self=False)
            self.mesh.set_peers({node_id: (n.relay_host, n.relay_port) for node_id, n in nodes.items()
                                 if n.relay_port})
            if set(nodes) != known:
                self.log.info("cluster nodes", kv={"nodes": ",".join(sorted(nodes)) or "-",
                                                   "joined": ",".join(sorted(set(nodes) - known)) or "-",
                                                   "left": ",".join(sorted(known - set(nodes))) or "-"})
                known = set(nodes)

    async def _write_updates(self) -> None:
        assert self.directory is not None
        async for update in self._updates_out:
            try:
                await update(self.directory)
            except DirectoryUnavailable:
                pass  # the directory's mirror has it; the next heartbeat after the outage writes it

    def _queue(self, update: Callable[[NodeDirectory], Awaitable[None]]) -> None:
        try:
            self._updates_in.send_nowait(update)
        except trio.WouldBlock:
            self.metrics.inc(DIRECTORY_DROPPED)
            while True:  # what waits is older than the registry's state now: let it go
                try:
                    self._updates_out.receive_nowait()
                except trio.WouldBlock:
                    break
            if self.directory is not None:
                self.directory.replace_membership(self.membership())
            self.log.warning("directory updates overflowed; membership rewritten from the registry")

    def membership(self) -> dict[str, dict[str, str]]:
        """room -> identity -> sid of this node's participants, from the registry."""
        return {room.name: {p.identity: p.sid for p in room.participants.values()}
                for room in self.registry.rooms.values() if not room.closed}

    # ---- RoomObserver: membership into the directory --------------------------------------------

    def room_event(self, event: str, room: "Room", participant: "Participant | None",
                   track: models.TrackInfo | None) -> None:
        name = room.name
        if event in ("participant_joined", MOVED_IN) and participant is not None:
            identity, sid = participant.identity, participant.sid
            self._queue(lambda d: d.participant_joined(name, identity, sid))
        elif event in ("participant_left", MOVED_OUT) and participant is not None:
            identity, sid = participant.identity, participant.sid
            self._queue(lambda d: d.participant_left(name, identity, sid))
        elif event == "room_started":
            self._queue(lambda d: d.room_opened(name))
        elif event == "room_finished":
            self._queue(lambda d: d.room_closed(name))

    def participant_changed(self, room: str, info: models.ParticipantInfo) -> None:
        pass

    # ---- ArrivalObserver: a migration in, before the client resumes --------------------------------

    def arriving(self, room: str, identity: str, sid: str) -> None:
        # Point the directory here now: the client's resume may reach any node, which must
        # send it here, not to the old node it is leaving.
        self._queue(lambda d: d.participant_joined(room, identity, sid))

    def not_arriving(self, room: str, identity: str, sid: str) -> None:
        self._queue(lambda d: d.participant_left(room, identity, sid))

    # ---- load ----------------------------------------------------------------------------------

    def stats(self) -> NodeStats:
        rooms = [r for r in self.registry.rooms.values() if not r.closed]
        clients = sum(len(r.participants) for r in rooms)
        tracks_in = sum(len(p.tracks) for r in rooms for p in r.participants.values())
        # Subscribed tracks being forwarded (each member's bindings that have a down track).
        tracks_out = sum(1 for room_media in list(self.media.rooms.values())
                         for member in list(room_media.sessions.values())
                         for binding in member.subscriptions.values() if binding.down is not None)
        return NodeStats(num_rooms=len(rooms), num_clients=clients, num_tracks_in=tracks_in,
                         num_tracks_out=tracks_out, cpu_load=self.cpu.read(), num_cpus=os.cpu_count() or 1)

    def loads(self) -> dict[str, NodeLoad]:
        """The live nodes (this one included) as placement sees them."""
        if self.directory is None or not self.directory.available:
            return {}
        out: dict[str, NodeLoad] = {}
        for node_id, node in self.directory.live_nodes(include_self=True).items():
            out[node_id] = NodeLoad(node_id, node.state == cluster_pb2.SERVING, node.stats.num_clients,
                                    node.stats.cpu_load, node.signal_url)
        return out

    # ---- the front door's questions ----------------------------------------------------------------

    async def place(self, room: str) -> Placement:
        hosts: set[str] = set()
        if self.directory is not None and self.directory.available:
            try:
                hosts = set(await self.directory.room_nodes(room))
            except DirectoryUnavailable:
                pass
        local = self.registry.rooms.get(room)
        if local is not None and not local.closed and local.participants:
            hosts.add(self.node_id)
        return place_join(self.node_id, self.draining, hosts, self.loads(), self.policy)

    def node_url(self, node_id: str) -> Optional[str]:
        if self.directory is None:
            return None
        node = self.directory.live_nodes(include_self=False).get(node_id)
        return node.signal_url if node is not None and node.signal_url else None

    async def participant_home(self, room: str, identity: str, sid: str) -> Optional[str]:
        """The signal URL of the node serving session `sid` of `identity`, if another node
        (alive) does: a resume that reached the wrong node goes there."""
        if self.directory is None:
            return None
        try:
            location = await self.directory.participant_node(room, identity)
        except DirectoryUnavailable:
            return None
        if location is None or location.sid != sid or location.node_id == self.node_id:
            return None
        if location.node_id not in self.relay.links:
            # Not linked: the node died (its entry has not expired yet) -- the client rejoins.
            return None
        return self.node_url(location.node_id)

    # ---- ClusterView (the Server API) -------------------------------------------------------------

    def peer_urls(self) -> dict[str, str]:
        if self.directory is None:
            return {}
        return {node_id: n.signal_url for node_id, n in self.directory.live_nodes(include_self=False).items()
                if n.signal_url}

    async def room_hosts(self, room: str) -> set[str]:
        if self.directory is None:
            raise DirectoryUnavailable("the directory is not running")
        return set(await self.directory.room_nodes(room))

    # ---- drain ------------------------------------------------------------------------------------

    async def drain(self, deadline_s: float = DEFAULT_DRAIN_DEADLINE) -> DrainReport:
        """Stop taking participants, move everyone here to other nodes, tell the rest to
        reconnect by `deadline_s` from now."""
        self.draining = True
        self.log.info("draining", kv={"deadline_s": deadline_s})
        if self.directory is not None:
            await self._set_state(NodeState.SHUTTING_DOWN)

        def targets() -> list[str]:
            loads = self.loads()
            serving = [n for n in loads.values() if n.node_id != self.node_id and n.serving]
            open_ = [n for n in serving if not n.full(self.policy)] or serving
            return [n.node_id for n in sorted(open_, key=NodeLoad.score)]

        return await drain(self.relay, self.registry, targets, trio.current_time() + deadline_s)


__all__ = ["ClusterMember", "CpuMeter", "Verdict"]
