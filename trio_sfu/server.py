"""The server process core: one nursery owning the room registry and the HTTP/WebSocket listeners.

`Server.run` is meant for `nursery.start`: it reports readiness (with the real bound port, so
port 0 works) once it is accepting connections. `request_shutdown()` closes every room --
participants get `leave` with SERVER_SHUTDOWN -- waits a bounded time for their tasks, and then
cancels the rest.
"""

from __future__ import annotations

import errno
import secrets
import string
from typing import TYPE_CHECKING, Sequence

import trio
from livekit.protocol import models

from rtp.dtls import DtlsCertificate

from trio_sfu import metrics as m
from trio_sfu import native
from trio_sfu.agents.dispatcher import AgentDispatcher
from trio_sfu.agents.endpoint import AgentEndpoint
from trio_sfu.agents.limits import AgentLimits
from trio_sfu.agents.workers import WorkerRegistry
from trio_sfu.api import agent_dispatch
from trio_sfu.api.auth import TokenVerifier
from trio_sfu.config import ServerConfig
from trio_sfu.api.http_front import HttpFront
from trio_sfu.api.prometheus import MetricsEndpoint
from trio_sfu.log import get_logger
from trio_sfu.signal.limits import SignalLimits
from trio_sfu.signal.media_port import MediaSessionFactory, UnavailableMediaSession
from trio_sfu.media.service import MediaService
from trio_sfu.media.turn_server import TurnService
from trio_sfu.cluster.drain import DEFAULT_DRAIN_DEADLINE, DrainReport

if TYPE_CHECKING:
    from trio_sfu.cluster.member import ClusterMember
from trio_sfu.cluster.node_relay import NodeRelay
from trio_sfu.api.room_service import SERVICE_NAME, RoomService
from trio_sfu.signal.rooms import RoomRegistry
from trio_sfu.api.twirp import TwirpServer
from trio_sfu.api.webhooks import WebhookNotifier

SHUTDOWN_GRACE = 3.0
LISTEN_BACKLOG = 1024
_log = get_logger("trio_sfu.server")


class Server:
    def __init__(
        self,
        config: ServerConfig,
        media_factory: MediaSessionFactory = UnavailableMediaSession,
        *,
        enable_media: bool = False,
        node_id: str | None = None,
        listeners: Sequence[trio.abc.Listener[trio.abc.Stream]] = (),
        dtls_certificate: DtlsCertificate | None = None,
        reuse_port: bool = False,
    ) -> None:
        """`enable_media` runs the real media stack (UDP mux on `config.rtc.udp_port`) and
        overrides `media_factory`; off by default so signal-only tests bind no UDP port.
        `node_id` makes this server one node of several hosting the same rooms: link it to the
        others with `relay.add_link` (trio_sfu.cluster.link) and move participants with `relay.migrate`.
        `listeners`, if given, are served instead of TCP listeners on the configured addresses
        (an in-memory network's, trio_sfu.testing.memory_network); `config.port` is then the
        port the server's URL names. `dtls_certificate` is the media stack's (default: a new one)."""
        self.config = config
        self.metrics = m.Metrics()
        self.verifier = TokenVerifier(config.keys)
        self.media: MediaService | None = (MediaService(config, self.metrics, certificate=dtls_certificate)
                                           if enable_media else None)
        if self.media is not None:
            media_factory = self.media
        # The embedded TURN server (LiveKit's `turn:` section; on by default in development).
        self.turn: TurnService | None = None
        if self.media is not None and config.turn.active(config.development):
            self.turn = TurnService(config, self.metrics, media_addresses=self._turn_peers,
                                    listen_hosts=self._turn_hosts)
        self.registry = RoomRegistry(config.room, self.metrics, media_factory,
                                     limits=SignalLimits.from_config(config.limit))
        # Raises ConfigError for a webhook section that cannot work (unknown key, bad URL).
        self.webhooks = WebhookNotifier.from_server_config(config, self.metrics)
        if self.webhooks is not None:
            self.registry.observers.append(self.webhooks)
        self.room_service = RoomService(self.registry)
        self.twirp = TwirpServer(self.verifier)
        self.front = HttpFront(config, self.verifier, self.registry, self.metrics, self.twirp)
        # Agent workers: each connects to the node it reached and is offered that node's rooms
        # (with a cluster, a node's workers serve only the rooms it hosts).
        self.agent_workers = WorkerRegistry(AgentLimits(), self.metrics)
        self.agents = AgentDispatcher(self.agent_workers, config.keys, self.metrics)
        self.registry.observers.append(self.agents)
        if self.webhooks is not None:
            self.agents.observers.append(self.webhooks)
        self.front.agents = AgentEndpoint(self.agent_workers, self.agents, self.metrics)
        self.twirp.register(agent_dispatch.SERVICE_NAME,
                            agent_dispatch.AgentDispatchService(self.registry, self.agents).methods())
        self.metrics_endpoint = MetricsEndpoint(config, self.verifier, self.metrics, self.registry, self.media,
                                                agents=self.agents)
        self.front.metrics_endpoint = self.metrics_endpoint
        # LiveKit's `prometheus.port`: a listener of its own that serves only /metrics.
        self.metrics_front: HttpFront | None = None
        if config.prometheus.enabled and config.prometheus.port:
            self.metrics_front = HttpFront(config, self.verifier, self.registry, self.metrics, metrics_only=True)
            self.metrics_front.metrics_endpoint = self.metrics_endpoint
        self.metrics_listeners: list[trio.SocketListener] = []
        self.metrics_port = 0
        self.relay: NodeRelay | None = None
        self.cluster: ClusterMember | None = None
        if config.redis.enabled:
            # One node of a cluster: media on, an id of its own unless given.
            if self.media is None:
                raise ValueError("a cluster node relays media: redis needs enable_media")
            node_id = node_id or new_node_id()
        if node_id is not None:
            if self.media is None:
                raise ValueError("a node relays media: node_id needs enable_media")
            self.relay = NodeRelay(node_id, self.media, self.registry, self.metrics, lambda: self.url)
            self.media.relay = self.relay
            self.front.relay = self.relay
            self.registry.presence = self.relay
        methods = self.room_service.methods()
        if config.redis.enabled:
            # Imported here: a lone server never loads the cluster's Redis client.
            from trio_sfu.api.cluster_rooms import ClusterRoomService
            from trio_sfu.cluster.member import ClusterMember

            assert self.relay is not None and self.media is not None
            self.cluster = ClusterMember(config, self.relay, self.registry, self.media, self.metrics, lambda: self.url)
            self.front.cluster = self.cluster
            # The Server API answers for every node's share of a room.
            methods = ClusterRoomService(methods, self.cluster, self.metrics).methods()
        self.twirp.register(SERVICE_NAME, methods)
        self._drain = trio.Event()
        self.drain_deadline = DEFAULT_DRAIN_DEADLINE
        self.drain_report: DrainReport | None = None
        self._given_listeners = list(listeners)
        self.reuse_port = reuse_port
        self.listeners: list[trio.abc.Listener[trio.abc.Stream]] = []
        # With reuse_port: the listeners on the shared port (closed first when draining).
        self._shared: list[trio.abc.Listener[trio.abc.Stream]] = []
        self._shared_scope = trio.CancelScope()
        self.port = 0  # the port this node's own URL names
        self.public_port = 0  # the port clients are given (shared by the workers)
        self._shutdown = trio.Event()
        self.shutdown_clean: bool | None = None

    @property
    def url(self) -> str:
        """This node's own signal URL (with `reuse_port`, its private port)."""
        return f"ws://{self._url_host()}:{self.port}"

    @property
    def public_url(self) -> str:
        """The URL clients are given: the shared port with `reuse_port`, else `url`."""
        return f"ws://{self._url_host()}:{self.public_port or self.port}"

    def _url_host(self) -> str:
        host = self.config.effective_bind_addresses()[0]
        if host in ("0.0.0.0", "", "::"):
            # Listening everywhere: other nodes reach this one at its advertised address.
            host = self.config.rtc.node_ip or "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return host

    def request_shutdown(self) -> None:
        self._shutdown.set()

    def request_drain(self) -> None:
        """Drain, then shut down: on a cluster node, move every participant to other nodes
        first (trio_sfu.cluster.drain); on a lone server this is `request_shutdown`."""
        if self.cluster is None:
            self._shutdown.set()
        else:
            self._drain.set()

    async def run(self, *, task_status: trio.TaskStatus["Server"] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            if self.media is not None:
                await nursery.start(self.media.run)
            if self.turn is not None:
                await nursery.start(self._run_turn)
            if self.relay is not None:
                await nursery.start(self.relay.run)
            if self.webhooks is not None:
                await nursery.start(self.webhooks.run)
            await nursery.start(self.agents.run)
            await nursery.start(self.registry.run)
            if self.turn is not None:
                self.registry.ice_servers = self.turn.ice_servers
            if self._given_listeners:
                self.listeners = list(self._given_listeners)
                self.port = self.config.port
            else:
                await self._open_tcp_listeners()
            if self.metrics_front is not None:
                self.metrics_listeners = await _listen_all(self.config.effective_bind_addresses(),
                                                           self.config.prometheus.port, False)
                self.metrics_port = self.metrics_listeners[0].socket.getsockname()[1]
            if self.cluster is not None:
                await nursery.start(self.cluster.run)
            accepting = trio.CancelScope()
            nursery.start_soon(self._accept_all, accepting, nursery)
            _log.info("listening", kv={"url": self.url, "fast_path": native.FAST_PATH})
            _log.info("forwarding fan-out", kv={"path": native.DESCRIPTION})
            if native.FAST_PATH:
                self.metrics.inc(m.FORWARDING_FAST_PATH)
            task_status.started(self)
            await self._wait_for_the_end()
            _log.info("shutting down", kv={"rooms": len(self.registry.rooms)})
            # Stop accepting, but let live connections hear their goodbye.
            accepting.cancel()
            self.shutdown_clean = await self.registry.close_all(models.DisconnectReason.SERVER_SHUTDOWN, SHUTDOWN_GRACE)
            if not self.shutdown_clean:
                _log.warning("rooms did not close in time; cancelling")
            if self.cluster is not None:
                await self.cluster.leave()
            if self.webhooks is not None and not await self.webhooks.drain():
                _log.warning("webhooks still queued at shutdown were abandoned")
            nursery.cancel_scope.cancel()

    def _turn_peers(self) -> list[tuple[str, int]]:
        """Where TURN allocations may relay to: the media port's advertised and bound addresses."""
        assert self.media is not None and self.media.mux is not None
        bound = [a for a in self.media.mux.local_addresses if a[0] not in ("0.0.0.0", "::")]
        return list(dict.fromkeys([*self.media.reachable, *bound]))

    def _turn_hosts(self) -> list[str]:
        assert self.media is not None and self.media.mux is not None
        return [host for host, _ in self.media.mux.local_addresses]

    async def _run_turn(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The TURN server; in development a port it cannot bind turns it off with a warning
        (several dev servers on one machine share its fixed ports), elsewhere it is an error."""
        assert self.turn is not None
        turn = self.turn
        if not self.config.development or self.config.turn.enabled:
            await turn.run(task_status=task_status)
            return
        try:
            await turn.run(task_status=task_status)
        except OSError as exc:
            if turn.listening:
                raise  # it was up: not a start-up failure
            _log.warning("TURN off: cannot listen on its ports", kv={"error": exc.strerror or str(exc)})
            self.turn = None
            task_status.started()

    async def _wait_for_the_end(self) -> None:
        async with trio.open_nursery() as waiting:
            async def shutdown() -> None:
                await self._shutdown.wait()
                waiting.cancel_scope.cancel()

            async def drain() -> None:
                await self._drain.wait()
                assert self.cluster is not None
                # The private port stays open (a resume or a join spliced here still finds this
                # node; placement sends joins elsewhere while it drains); the shared one closes
                # so the kernel sends whoever comes next to the other workers.
                await self.stop_shared_port()
                self.drain_report = await self.cluster.drain(self.drain_deadline)
                waiting.cancel_scope.cancel()

            waiting.start_soon(shutdown)
            waiting.start_soon(drain)

    async def _open_tcp_listeners(self) -> None:
        tcp = await _listen_all(self.config.effective_bind_addresses(), self.config.port, self.reuse_port)
        self.port = self.public_port = tcp[0].socket.getsockname()[1]
        if self.reuse_port:
            self._shared = list(tcp)
            private = await _listen_all(self.config.effective_bind_addresses(), 0, False)
            self.port = private[0].socket.getsockname()[1]
            tcp.extend(private)
        self.listeners = list(tcp)

    async def _accept_all(self, scope: trio.CancelScope, handler_nursery: trio.Nursery) -> None:
        # Our own accept loop instead of trio.serve_listeners: shutdown must stop accepting
        # without cancelling the connection handlers, which live on in `handler_nursery`.
        with scope:
            try:
                async with trio.open_nursery() as nursery:
                    for listener in self.listeners:
                        if listener in self._shared:
                            nursery.start_soon(self._accept_shared, listener, handler_nursery)
                        else:
                            nursery.start_soon(self._accept_one, listener, handler_nursery)
                    for metrics_listener in self.metrics_listeners:
                        nursery.start_soon(self._accept_one, metrics_listener, handler_nursery, self.metrics_front)
            finally:
                with trio.CancelScope(shield=True):
                    for listener in [*self.listeners, *self.metrics_listeners]:
                        await listener.aclose()

    async def _accept_shared(self, listener: trio.abc.Listener[trio.abc.Stream], handler_nursery: trio.Nursery) -> None:
        with self._shared_scope:
            await self._accept_one(listener, handler_nursery)

    async def stop_shared_port(self) -> None:
        """Leave the shared port to the other workers: the kernel sends new connections (a
        resume after a migration, a rejoin) to them. The private port stays open."""
        self._shared_scope.cancel()
        for listener in self._shared:
            await listener.aclose()

    async def _accept_one(self, listener: trio.abc.Listener[trio.abc.Stream], handler_nursery: trio.Nursery,
                          front: HttpFront | None = None) -> None:
        front = front or self.front
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno in _RESOURCE_ERRNOS:
                    # Out of descriptors/memory: back off instead of spinning, as serve_listeners does.
                    self.metrics.inc(m.HTTP_ACCEPT_RESOURCE_ERROR)
                    _log.error("accept failed, backing off", kv={"errno": errno.errorcode.get(exc.errno, exc.errno)})
                    await trio.sleep(0.1)
                    continue
                raise
            handler_nursery.start_soon(front.handle_connection, stream)


def new_node_id() -> str:
    """A node id as LiveKit makes them: ND_ and 12 random characters."""
    return "ND_" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(12))


_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


async def _listen_all(hosts: Sequence[str], port: int, reuse_port: bool) -> list[trio.SocketListener]:
    """TCP listeners on every address, all on one port (the first ephemeral port found, if 0)."""
    listeners: list[trio.SocketListener] = []
    for host in hosts:
        if reuse_port:
            opened = [await _reuse_port_listener(host, port)]
        else:
            opened = await trio.open_tcp_listeners(port, host=host)
        if port == 0 and opened:
            # Same ephemeral port on every further address, so one URL fits all.
            port = opened[0].socket.getsockname()[1]
        listeners.extend(opened)
    return listeners


async def _reuse_port_listener(host: str, port: int) -> trio.SocketListener:
    """A listener whose port other processes may bind too: the kernel spreads connections over
    every socket bound to it (SO_REUSEPORT)."""
    infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM, flags=trio.socket.AI_PASSIVE)
    family, type_, proto, _, address = infos[0]
    sock = trio.socket.socket(family, type_, proto)
    try:
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEPORT, 1)
        await sock.bind(address)
        sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)

