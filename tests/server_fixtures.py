"""Shared helpers for the server tests: an in-process server on an ephemeral port, tokens minted
by livekit-api (an independent producer), a signal client over trio-websocket, a task-tree
census that proves nothing the server started outlives its shutdown, and real servers linked as
nodes — over loopback (`media_nodes`) or on an in-memory network under MockClock (`memory_nodes`).

Imported as `from server_fixtures import ...` (pytest puts tests/ on sys.path because tests/ has
no __init__.py).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import os
from typing import AsyncIterator, Callable, Iterable, Optional

import attrs
import h11
import trio
import trio_websocket
from livekit import api
from livekit.protocol import rtc

from rtp.dtls import DtlsCertificate
from trio_sfu.client import LiveKitClient
from trio_sfu.cluster.link import DeliverDelay, in_memory_link_pair
from trio_sfu.config import RoomConfig, RtcConfig, ServerConfig
from trio_sfu.server import Server
from trio_sfu.testing.memory_network import LinkDelay, MemoryNetwork
from trio_sfu.tracks import live_sources

API_KEY = "testkey"
# >= 32 bytes so PyJWT does not warn about short HMAC keys.
API_SECRET = "test-secret-0123456789abcdefghijklmnopqrstuv"


def make_config(**room: int) -> ServerConfig:
    return ServerConfig(
        port=0,
        bind_addresses=["127.0.0.1"],
        keys={API_KEY: API_SECRET},
        room=RoomConfig(**room),
        # ICE/TCP off (LiveKit's 0): servers side by side cannot all have 7881; a test that
        # wants it sets `server.media.ice_tcp_port = 0` for a port of its own.
        rtc=RtcConfig(tcp_port=0),
    )


def mint_token(
    identity: str,
    room: str = "room1",
    *,
    key: str = API_KEY,
    secret: str = API_SECRET,
    name: str = "",
    metadata: str = "",
    attributes: dict[str, str] | None = None,
    **grants: object,
) -> str:
    grants.setdefault("room_join", True)
    video = api.VideoGrants(room=room, **grants)  # type: ignore[arg-type]
    token = api.AccessToken(key, secret).with_identity(identity).with_grants(video)
    if name:
        token = token.with_name(name)
    if metadata:
        token = token.with_metadata(metadata)
    if attributes:
        token = token.with_attributes(attributes)
    return token.to_jwt()


def all_tasks() -> set[trio.lowlevel.Task]:
    """Every task in this Trio run, found by walking the nursery tree from the root task."""
    found: set[trio.lowlevel.Task] = set()
    stack = [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        if task is None or task in found:
            continue
        found.add(task)
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return found


def _socket_ports() -> dict[str, int]:
    """`socket:[inode]` -> local port, for this network namespace's TCP and UDP sockets."""
    ports = {}
    for name in ("tcp", "tcp6", "udp", "udp6"):
        try:
            with open(f"/proc/net/{name}") as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9:
                ports[f"socket:[{fields[9]}]"] = int(fields[1].rsplit(":", 1)[1], 16)
    return ports


def server_ports(server: Server) -> set[int]:
    """The ports the server listens on: signalling, the media UDP socket and the ICE/TCP
    listeners while they are open.
    Ask while the server runs — after shutdown the media socket is closed and has no port, which
    is why `running_server` records them at start and hands them to `assert_no_leaks`."""
    ports = {server.port}
    if server.media is not None and server.media.mux is not None:
        try:
            ports.add(server.media.mux.local_address[1])
        except OSError:
            pass  # closed: the caller should have recorded the port while it was open
    if server.media is not None and server.media.ice_tcp is not None:
        try:
            ports.add(server.media.ice_tcp.port)  # its listeners and the connections they accepted
        except OSError:
            pass
    return ports


def server_sockets(server: Server, sockets: set[str], ports: set[int] | None = None) -> set[str]:
    """Of `sockets`, those bound to one of the server's ports (its listeners, the connections
    it accepted, its media UDP socket); the test's own client sockets are not the server's."""
    if ports is None:
        ports = server_ports(server)
    by_inode = _socket_ports()
    return {s for s in sockets if by_inode.get(s) in ports}


def open_sockets() -> set[str]:
    """This process's open sockets, as /proc names them (`socket:[inode]`); empty where there
    is no /proc."""
    found = set()
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return found
    for fd in fds:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed while we listed
        if target.startswith("socket:"):
            found.add(target)
    return found


@attrs.frozen
class LeakBaseline:
    tasks: frozenset
    sockets: frozenset
    sources: frozenset  # track sources other tests left alive are not this server's


def leak_baseline() -> LeakBaseline:
    return LeakBaseline(frozenset(all_tasks()), frozenset(open_sockets()), frozenset(live_sources()))


def assert_no_leaks(server: Server, baseline: LeakBaseline, ports: set[int] | None = None) -> None:
    """After shutdown: no task, socket, room, media room or track source (open, or with a
    subscriber still registered) that the server created may survive. `ports` are the server's
    ports as `server_ports` gave them while it ran (needed when media was enabled)."""
    leaked = {t for t in all_tasks() - baseline.tasks if t is not trio.lowlevel.current_task()}
    assert not leaked, f"tasks survived server shutdown: {[t.name for t in leaked]}"
    sockets = server_sockets(server, open_sockets() - baseline.sockets, ports)
    assert not sockets, f"sockets survived server shutdown: {sorted(sockets)}"
    assert not server.registry.rooms, "rooms survived shutdown"
    if server.media is not None:
        assert not server.media.rooms, "media rooms survived shutdown"
    sources = [s for s in live_sources() if s not in baseline.sources
               and (s.is_open or s.subscriber_ids or s.receiver.down_tracks)]
    assert not sources, f"track sources survived open or with subscribers: {sources}"


def relay_leftovers(server: Server) -> list[str]:
    """What a node's relay still holds of migrations and relayed tracks (empty once it stopped)."""
    relay = server.relay
    if relay is None:
        return []
    left = []
    # Private, but exactly what a cancelled or finished migration must not leave behind.
    for name in ("_out", "_pending_in", "_arriving", "_handed_over"):
        if getattr(relay, name):
            left.append(f"migrations survived on {relay.node_id}: {name} {list(getattr(relay, name))}")
    if relay._remote:
        left.append(f"remote copies survived on {relay.node_id}: {list(relay._remote)}")
    if relay._local:
        left.append(f"relayed local tracks survived on {relay.node_id}: {list(relay._local)}")
    return left


def registered_subscribers(server: Server) -> list[tuple[str, str, str]]:
    """(room, source, subscriber) for every subscriber a source of the server's rooms lists."""
    out = []
    if server.media is not None:
        for room in server.media.rooms.values():
            for source in room.track_manager.all_sources():
                out.extend((room.name, repr(source), sid) for sid in source.subscriber_ids)
    return out


def assert_nodes_clean(servers: Iterable[Server], baseline: LeakBaseline,
                       network: Optional[MemoryNetwork] = None) -> None:
    """After linked servers stopped: no task they started, no subscriber registered on a source,
    no room, no migration or relayed track in their relays, no socket left on the in-memory
    network, and no track source of theirs left open or holding subscribers or down tracks. The
    process-wide source registry is asked too, because a source dropped from the rooms without
    being closed is invisible to the server itself."""
    servers = list(servers)
    leaked = {t for t in all_tasks() - baseline.tasks if t is not trio.lowlevel.current_task()}
    assert not leaked, f"tasks survived the nodes: {[t.name for t in leaked]}"
    for server in servers:
        name = server.relay.node_id if server.relay is not None else "server"
        subscribers = registered_subscribers(server)
        assert not subscribers, f"subscribers still registered on {name}: {subscribers}"
        assert not server.registry.rooms, f"rooms survived on {name}: {list(server.registry.rooms)}"
        assert server.media is None or not server.media.rooms, f"media rooms survived on {name}"
        left = relay_leftovers(server)
        assert not left, "; ".join(left)
    if network is not None:
        assert not network._sockets and not network._listeners, (
            f"sockets survived on the network: {list(network._sockets) + list(network._listeners)}")
    sources = [s for s in live_sources() if s not in baseline.sources
               and (s.is_open or s.subscriber_ids or s.receiver.down_tracks)]
    assert not sources, f"track sources survived the nodes open or with subscribers: {sources}"


@contextlib.asynccontextmanager
async def running_server(config: ServerConfig | None = None, **server_options: object) -> AsyncIterator[Server]:
    """Run a Server in-process; on exit shut it down and assert nothing it made survives
    (tasks, sockets, rooms, track sources and their subscribers)."""
    baseline = leak_baseline()
    server = Server(config or make_config(), **server_options)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        ports = server_ports(server)
        try:
            yield server
        finally:
            server.request_shutdown()
    assert server.shutdown_clean, "rooms and participants did not end by themselves within the grace period"
    assert_no_leaks(server, baseline, ports)


def media_config(**room: int) -> ServerConfig:
    """`make_config` with the media stack on an ephemeral loopback UDP port."""
    config = make_config(**room)
    config.rtc.udp_port = 0
    config.rtc.node_ip = "127.0.0.1"
    return config


@contextlib.asynccontextmanager
async def media_server(config: ServerConfig | None = None) -> AsyncIterator[Server]:
    """`running_server` with media enabled (and its leak check)."""
    async with running_server(config or media_config(), enable_media=True) as server:
        yield server


@contextlib.asynccontextmanager
async def ice_tcp_server(limits: object = None) -> AsyncIterator[Server]:
    """`media_server` with ICE/TCP on an ephemeral port (`limits`: an IceTcpLimits), and the
    same leak check (its listeners and every connection they accepted included)."""
    baseline = leak_baseline()
    server = Server(media_config(), enable_media=True)
    assert server.media is not None
    server.media.ice_tcp_port = 0
    if limits is not None:
        server.media.ice_tcp_limits = limits  # type: ignore[assignment]
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        ports = server_ports(server)
        try:
            yield server
        finally:
            server.request_shutdown()
    assert server.shutdown_clean, "rooms and participants did not end by themselves within the grace period"
    assert_no_leaks(server, baseline, ports)


@contextlib.asynccontextmanager
async def media_nodes(*node_ids: str, configure: Callable[[ServerConfig], None] | None = None
                      ) -> AsyncIterator[list[Server]]:
    """Real servers with media, one per node id, in this Trio run, each pair joined by an
    in-memory relay link (trio_sfu.cluster.link); on exit all shut down and nothing any of them made
    may survive (the leak check runs once, after all of them stopped). `configure` may change
    each node's config before it starts."""
    from trio_sfu.cluster.link import in_memory_link_pair

    baseline = leak_baseline()
    configs = [media_config() for _ in node_ids]
    for config in configs:
        if configure is not None:
            configure(config)
    servers = [Server(config, enable_media=True, node_id=node_id) for config, node_id in zip(configs, node_ids)]
    for i, a in enumerate(servers):
        for b in servers[i + 1:]:
            assert a.relay is not None and b.relay is not None
            link_a, link_b = in_memory_link_pair(a.relay.node_id, b.relay.node_id)
            a.relay.add_link(link_a)
            b.relay.add_link(link_b)
    async with trio.open_nursery() as nursery:
        for server in servers:
            await nursery.start(server.run)
        ports = [server_ports(server) for server in servers]
        try:
            yield servers
        finally:
            for server in servers:
                server.request_shutdown()
    for server, server_port_set in zip(servers, ports):
        assert server.shutdown_clean, "rooms and participants did not end by themselves within the grace period"
        assert_no_leaks(server, baseline, server_port_set)


@functools.cache
def shared_certificate() -> DtlsCertificate:
    """One DTLS certificate for every in-memory node and client of the process (generating one
    per peer is CPU each schedule of the explorer would pay again)."""
    return DtlsCertificate.generate(datetime.datetime.now(datetime.timezone.utc))


#: The port each in-memory node's URL names: 7880, 7881, ...
MEMORY_NODE_PORT = 7880


class MemoryNodes:
    """Real servers with media, one per node id, on one in-memory network."""

    def __init__(self, servers: list[Server], network: MemoryNetwork) -> None:
        self.servers = servers
        self.network = network
        self.by_id = {server.relay.node_id: server for server in servers if server.relay is not None}

    def __getitem__(self, node_id: str) -> Server:
        return self.by_id[node_id]

    def connect(self, identity: str, node: str, room: str = "room1", **options: object):
        """`LiveKitClient.connect` for `identity` at `node`, over the in-memory network."""
        options.setdefault("certificate", shared_certificate())
        return LiveKitClient.connect(self[node].url, mint_token(identity, room=room), bind_host="127.0.0.1",
                                     connector=self.network.connect, bind_datagram=self.network.bind_datagram,
                                     **options)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def memory_nodes(*node_ids: str, link_delay: Optional[LinkDelay] = None,
                       relay_delay: Optional[DeliverDelay] = None,
                       configure: Callable[[Server], None] = lambda server: None) -> AsyncIterator[MemoryNodes]:
    """`media_nodes` on an in-memory network (trio_sfu.testing.memory_network): signalling over
    memory streams into each server's HttpFront, media over in-memory datagram sockets, so
    the whole cluster runs under MockClock. `link_delay` delays or drops datagrams,
    `relay_delay` runs before a node gets each relay message; `configure` sees each server
    before it starts. On exit all stop and nothing any of them made may survive."""
    baseline = leak_baseline()
    network = MemoryNetwork(link_delay)
    servers = []
    for index, node_id in enumerate(node_ids):
        config = media_config()
        config.port = MEMORY_NODE_PORT + index
        listener = network.listen("127.0.0.1", config.port)
        server = Server(config, enable_media=True, node_id=node_id, listeners=[listener],
                        dtls_certificate=shared_certificate())
        assert server.media is not None
        server.media.bind_datagram = network.bind_datagram
        configure(server)
        servers.append(server)
    for i, a in enumerate(servers):
        for b in servers[i + 1:]:
            assert a.relay is not None and b.relay is not None
            link_a, link_b = in_memory_link_pair(a.relay.node_id, b.relay.node_id, delay_a=relay_delay, delay_b=relay_delay)
            a.relay.add_link(link_a)
            b.relay.add_link(link_b)
    async with trio.open_nursery() as outer:
        await outer.start(network.run)
        async with trio.open_nursery() as nursery:
            for server in servers:
                await nursery.start(server.run)
            try:
                yield MemoryNodes(servers, network)
            finally:
                for server in servers:
                    server.request_shutdown()
        outer.cancel_scope.cancel()  # the network's delivery task
    for server in servers:
        assert server.shutdown_clean, "rooms and participants did not end by themselves within the grace period"
    assert_nodes_clean(servers, baseline, network)


def http_base(server: Server) -> str:
    return f"http://127.0.0.1:{server.port}"


@contextlib.asynccontextmanager
async def signal_client(
    server: Server, token: str, *, query: str = "", use_header: bool = True
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    url = f"ws://127.0.0.1:{server.port}/rtc?protocol=17&sdk=python&version=1.2.1"
    headers = []
    if use_header:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    else:
        url += f"&access_token={token}"
    if query:
        url += "&" + query
    async with trio_websocket.open_websocket_url(url, extra_headers=headers, connect_timeout=5, disconnect_timeout=2) as ws:
        yield ws


async def recv(ws: trio_websocket.WebSocketConnection, timeout: float = 5.0) -> rtc.SignalResponse:
    with trio.fail_after(timeout):
        data = await ws.get_message()
    assert isinstance(data, bytes), "server must send binary frames"
    response = rtc.SignalResponse()
    response.ParseFromString(data)
    return response


async def recv_kind(ws: trio_websocket.WebSocketConnection, kind: str, timeout: float = 5.0) -> rtc.SignalResponse:
    """Receive until a response of `kind` arrives (others are skipped)."""
    with trio.fail_after(timeout):
        while True:
            response = await recv(ws, timeout)
            if response.WhichOneof("message") == kind:
                return response


async def send(ws: trio_websocket.WebSocketConnection, request: rtc.SignalRequest) -> None:
    await ws.send_message(request.SerializeToString())


async def join(ws: trio_websocket.WebSocketConnection) -> rtc.JoinResponse:
    first = await recv(ws)
    assert first.WhichOneof("message") == "join", first
    return first.join


async def http(port: int, method: str, target: str, headers: list[tuple[str, str]] | None = None, body: bytes = b""):
    """One request; returns (status, lower-cased headers, body, HTTP version)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    conn = h11.Connection(h11.CLIENT)
    all_headers = [("host", "localhost"), *(headers or [])]
    if body:
        all_headers.append(("content-length", str(len(body))))
    data = conn.send(h11.Request(method=method, target=target, headers=all_headers))
    if body:
        data += conn.send(h11.Data(data=body))
    data += conn.send(h11.EndOfMessage())
    await stream.send_all(data)
    response = None
    chunks = []
    with trio.fail_after(5):
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
                continue
            if isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                chunks.append(event.data)
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
    await stream.aclose()
    assert response is not None
    hdrs = {k.decode().lower(): v.decode() for k, v in response.headers}
    return response.status_code, hdrs, b"".join(chunks), response.http_version
