"""RelayMesh: one authenticated TCP relay link to every peer node, kept up while it is wanted.

The mesh listens on the node's relay port and is told the peer set (`set_peers`: node id ->
(host, port), as the node directory lists it each heartbeat). For each pair of nodes there is
exactly one link, and exactly one side makes it: the node with the lower id dials, the other
accepts — so two nodes never race to open two links to each other. The dialer redials with
capped exponential backoff for as long as the peer stays listed; a peer that drops out of the
set has its link closed. An incoming link from a node that is not listed, or that should be
accepting rather than dialing, is refused in the handshake (trio_sfu.cluster.tcp_link).

Lifetimes: everything runs in the mesh's nursery — the listener, one dialing task per peer this
node dials, one task per accepted connection. A link's writer runs on that task; its messages
are read by the node relay's task for it (`NodeRelay.add_link`). When a link ends for any reason
(the peer closed it or died, it sent garbage, it was replaced, the peer left the set) the task
that owns it tells the relay (`NodeRelay.link_lost`), which forgets everything learned from that
peer; the next link to it starts from a clean slate and both sides re-announce.
"""

from __future__ import annotations

import collections
import math
import random
from typing import TYPE_CHECKING, Mapping, Optional

import attrs
import trio

from trio_sfu import metrics as m
from trio_sfu.cluster.tcp_link import (
    HandshakeRefused,
    LinkLimits,
    TcpRelayLink,
    accept_link,
    connect_link,
    node_id_problem,
)
from trio_sfu.log import get_logger

if TYPE_CHECKING:
    from trio_sfu.cluster.node_relay import NodeRelay

_log = get_logger("trio_sfu.cluster.mesh")

MESH_DIAL_FAILED = "relay_mesh_dial_failed_total"
MESH_HANDSHAKES_OVER_CAP = "relay_mesh_handshakes_over_cap_total"
MESH_LINK_ENDED = "relay_mesh_link_ended_total"

#: Backoff between dials to one peer: doubled after each failure up to the cap, reset once a
#: link has stayed up for `STABLE_LINK`.
BACKOFF_INITIAL = 0.1
BACKOFF_MAX = 5.0
STABLE_LINK = 10.0
#: Connections still in their handshake at once; more are closed on arrival (a flood of
#: half-open connections must not grow memory or tasks).
MAX_HANDSHAKES = 32


@attrs.define(eq=False)
class _Peer:
    node_id: str
    address: tuple[str, int]
    #: The dialing task's scope (when this node dials): cancelled when the peer leaves the set.
    dialing: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    dial_started: bool = False
    dials: int = 0


class RelayMesh:
    def __init__(self, node_id: str, key: str, relay: "NodeRelay", metrics: m.Metrics,
                 host: str = "127.0.0.1", port: int = 0, *, limits: LinkLimits = LinkLimits()) -> None:
        problem = node_id_problem(node_id)
        if problem:
            raise ValueError(f"node id {node_id!r}: {problem}")
        if not key:
            raise ValueError("cluster.key must be set: relay links are authenticated with it")
        self.node_id = node_id
        self._key = key.encode("utf-8")
        self.relay = relay
        self.metrics = metrics
        self.host = host
        self.port = port
        self.limits = limits
        self.backoff_initial = BACKOFF_INITIAL
        self.backoff_max = BACKOFF_MAX
        self.max_handshakes = MAX_HANDSHAKES
        #: The current link to each peer (established, not yet ended).
        self.links: dict[str, TcpRelayLink] = {}
        #: The latest refusal and failure reasons (bounded), each also counted and logged.
        self.refusals: collections.deque[str] = collections.deque(maxlen=256)
        self._peers: dict[str, _Peer] = {}
        self._handshaking = 0
        self._nursery: Optional[trio.Nursery] = None
        self.log = _log.bind(node=node_id)

    # ---- the peer set ----------------------------------------------------------------------

    def set_peers(self, peers: Mapping[str, tuple[str, int]]) -> None:
        """The nodes this node should be linked to now (its own id, if listed, is ignored)."""
        wanted: dict[str, tuple[str, int]] = {}
        for node_id, (host, port) in peers.items():
            if node_id == self.node_id:
                continue
            problem = node_id_problem(node_id)
            if problem:
                self.log.warning("peer ignored", kv={"peer": node_id, "reason": problem})
                continue
            wanted[node_id] = (host, int(port))
        for node_id in list(self._peers):
            if node_id not in wanted:
                self._forget(self._peers.pop(node_id), "peer no longer listed")
        for node_id, address in wanted.items():
            peer = self._peers.get(node_id)
            if peer is not None and (peer.address == address or not self._dials(node_id)):
                peer.address = address  # a peer that dials us keeps its link wherever it moved
                continue
            if peer is not None:
                self._forget(peer, "peer moved to another address")
            self._peers[node_id] = _Peer(node_id, address)
        self._start_dialers()

    @property
    def peers(self) -> dict[str, tuple[str, int]]:
        return {node_id: peer.address for node_id, peer in self._peers.items()}

    def _dials(self, node_id: str) -> bool:
        """The lower id dials; the other side accepts."""
        return self.node_id < node_id

    def _forget(self, peer: _Peer, reason: str) -> None:
        peer.dialing.cancel()
        link = self.links.get(peer.node_id)
        if link is not None:
            link.close(reason)

    def _start_dialers(self) -> None:
        if self._nursery is None:
            return
        for peer in self._peers.values():
            if self._dials(peer.node_id) and not peer.dial_started:
                peer.dial_started = True
                self._nursery.start_soon(self._dial_forever, peer, name=f"relay dial {peer.node_id}")

    # ---- lifetime --------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on (host, port) — `port` is the real one once started — and keep the links."""
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        try:
            self.port = listeners[0].socket.getsockname()[1]
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for listener in listeners:
                    nursery.start_soon(self._accept_forever, listener)
                self._start_dialers()
                self.log.info("relay mesh listening", kv={"host": self.host, "port": self.port})
                task_status.started()
        finally:
            self._nursery = None
            for peer in self._peers.values():
                peer.dial_started = False
                peer.dialing = trio.CancelScope()
            for listener in listeners:
                await trio.aclose_forcefully(listener)

    async def _accept_forever(self, listener: trio.SocketListener) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                # Out of file descriptors and the like: wait and try again, as trio.serve_listeners does.
                self.log.warning("relay accept failed", kv={"error": type(exc).__name__})
                await trio.sleep(0.1)
                continue
            if self._handshaking >= self.max_handshakes:
                self.metrics.inc(MESH_HANDSHAKES_OVER_CAP)
                self._refusal("too many connections in their handshake")
                await trio.aclose_forcefully(stream)
                continue
            self._handshaking += 1
            assert self._nursery is not None
            self._nursery.start_soon(self._accept_one, stream)

    def _refusal(self, reason: str, **kv: object) -> None:
        self.refusals.append(reason)
        self.log.warning("relay link not established", kv={"reason": reason, **kv})

    # ---- accepting -------------------------------------------------------------------------

    def _peer_problem(self, node_id: str) -> str:
        if node_id not in self._peers:
            return "not a listed peer"
        if self._dials(node_id):
            return "this node dials it, not the other way round"
        return ""

    async def _accept_one(self, stream: trio.SocketStream) -> None:
        try:
            link = await accept_link(stream, local_node_id=self.node_id, key=self._key,
                                     peer_problem=self._peer_problem, limits=self.limits, metrics=self.metrics)
        except HandshakeRefused as exc:
            self.refusals.append(exc.reason)
            return
        finally:
            self._handshaking -= 1
        if link.peer_node_id not in self._peers:
            link.close("peer left the set during its handshake")
            await trio.aclose_forcefully(stream)
            return
        await self._serve(link)

    # ---- dialing ---------------------------------------------------------------------------

    async def _dial_forever(self, peer: _Peer) -> None:
        backoff = self.backoff_initial
        with peer.dialing:
            while True:
                host, port = peer.address
                peer.dials += 1
                try:
                    link = await connect_link(host, port, local_node_id=self.node_id, peer_node_id=peer.node_id,
                                              key=self._key, limits=self.limits, metrics=self.metrics)
                except HandshakeRefused as exc:
                    self.refusals.append(exc.reason)
                except OSError as exc:
                    self.metrics.inc(MESH_DIAL_FAILED)
                    self.log.info("relay dial failed", kv={"peer": peer.node_id, "address": f"{host}:{port}",
                                                           "error": str(exc) or type(exc).__name__})
                else:
                    up_since = trio.current_time()
                    await self._serve(link)
                    if trio.current_time() - up_since >= STABLE_LINK:
                        backoff = self.backoff_initial
                # Jittered, so nodes that lost each other at once do not redial in lockstep.
                await trio.sleep(backoff * (0.5 + random.random() / 2))
                backoff = min(backoff * 2, self.backoff_max)

    # ---- a link's life ---------------------------------------------------------------------

    async def _serve(self, link: TcpRelayLink) -> None:
        """Hand the link to the relay and run its writer until it ends; then the relay forgets
        what the peer told it. A newer link to the same peer replaces (closes) an older one."""
        peer = link.peer_node_id
        old = self.links.get(peer)
        if old is not None:
            old.close("replaced by a new link")
        self.links[peer] = link
        self.log.info("relay link up", kv={"peer": peer})
        try:
            self.relay.add_link(link)
            await link.run()
        finally:
            link.close("link stopped")
            if self.links.get(peer) is link:
                del self.links[peer]
            self.metrics.inc(MESH_LINK_ENDED)
            self.relay.link_lost(link)
            self.log.info("relay link down", kv={"peer": peer, "reason": link.close_reason})

    async def wait_linked(self, *node_ids: str, timeout: float = math.inf) -> None:
        """Tests and tools: until a link to each of `node_ids` is up."""
        with trio.fail_after(timeout):
            while not all(n in self.links for n in node_ids):
                await trio.sleep(0.01)
