"""The embedded TURN server's sockets and tasks: the Trio side of rtp.turn.

Clients whose UDP and TCP to the media port are blocked reach the node through TURN over UDP
(`turn.udp_port`) or TLS (`turn.tls_port`); each allocation gets a relayed UDP socket from
`turn.relay_range_start..end` that talks only to the node's own media addresses (the sans-IO
core refuses every other peer). This module moves bytes between those sockets and the
`TurnServer` core and runs its timer; it decides nothing about the protocol.

Lifetimes (the nursery tree): `TurnService.run` owns a nursery holding the UDP readers, the
TLS acceptors, the timer and one nursery for the relayed sockets' readers, and one for the
TLS connections; an allocation's reader lives in a cancel scope of its own that
`AllocationEnded` cancels; a TLS connection's tasks live in the connection's nursery, and its
allocation ends when it closes.

Bounds: the core's quotas (allocations in total, per participant and per source IP, lifetime
caps, packets and bytes per second per allocation); here, TLS handshakes in flight
(`MAX_HANDSHAKES`, more are refused on arrival) and their deadline (`HANDSHAKE_TIMEOUT`), TLS
connections in total (`MAX_TLS_CONNECTIONS`) and per client IP (`MAX_TLS_CONNECTIONS_PER_IP`), a
connection that does not allocate within `ALLOCATE_WITHIN`, the largest stream frame (rtp.turn.StreamFramer),
and each connection's outgoing queue (`TLS_SEND_QUEUE` messages and `TLS_SEND_QUEUE_BYTES`;
beyond either, data is dropped, as a router drops). Everything refused or dropped is a `turn_*_total` counter.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import secrets
import shutil
import time
from typing import TYPE_CHECKING, Callable, Hashable, Sequence

import attrs
import trio

from livekit.protocol import rtc
from rtp.turn import (
    AllocationEnded,
    FrameTooLarge,
    RelayNeeded,
    StreamFramer,
    ToPeer,
    TurnLimits,
    TurnServer,
)
from rtp.turn_auth import issue_credential, participant_of, password_for

from trio_sfu import metrics as m
from trio_sfu.datagram import BindDatagram, DatagramSocket, UdpSocket
from trio_sfu.log import get_logger
from trio_sfu.media.turn_tls import TlsMaterial, tls_material

if TYPE_CHECKING:
    from trio_sfu.config import ServerConfig

Address = tuple[str, int]

REALM = "trio-sfu"
MAX_HANDSHAKES = 32
HANDSHAKE_TIMEOUT = 10.0
MAX_TLS_CONNECTIONS = 1000
#: TLS connections one client IP may hold (a browser opens one per PeerConnection and URL).
MAX_TLS_CONNECTIONS_PER_IP = 16
#: A stream that has not allocated this long after its handshake is closed: an idle
#: connection would otherwise hold one of the places above for free.
ALLOCATE_WITHIN = 30.0
TLS_SEND_QUEUE = 256
TLS_SEND_QUEUE_BYTES = 256 * 1024
#: How many ports of the relay range to try before an Allocate gets 508.
RELAY_BIND_ATTEMPTS = 20
CHECKPOINT_EVERY = 64
MAX_DATAGRAM = 65536
READ_SIZE = 16384

TURN_TLS_REFUSED_BUSY = "turn_tls_refused_busy_total"
TURN_TLS_HANDSHAKE_FAILED = "turn_tls_handshake_failed_total"
TURN_TLS_HANDSHAKE_TIMEOUT = "turn_tls_handshake_timeout_total"
TURN_TLS_CONNECTIONS = "turn_tls_connections_total"
TURN_TLS_REFUSED_PER_IP = "turn_tls_refused_per_ip_total"
TURN_STREAM_IDLE_CLOSED = "turn_stream_idle_closed_total"
TURN_STREAM_FRAME_REFUSED = "turn_stream_frame_refused_total"
TURN_SEND_DROPPED = "turn_send_dropped_total"
TURN_RELAY_BIND_FAILED = "turn_relay_bind_failed_total"
TURN_DATAGRAMS = "turn_datagrams_received_total"

_log = get_logger("trio_sfu.media.turn")
_WOULD_BLOCK = (BlockingIOError, InterruptedError)


class _StreamClient:
    """A TLS (or plain TCP, with `external_tls`) client: the core's key for its 5-tuple."""

    __slots__ = ("addr", "send", "queued", "__weakref__")

    def __init__(self, addr: Address, send: trio.MemorySendChannel[bytes]) -> None:
        self.addr = addr
        self.send = send
        self.queued = 0  # bytes in `send` not yet written to the stream


class TurnService:
    """The TURN listeners, relayed sockets and timer around one `TurnServer` core."""

    def __init__(
        self,
        config: "ServerConfig",
        metrics: m.Metrics,
        *,
        media_addresses: Callable[[], Sequence[Address]],
        listen_hosts: Callable[[], Sequence[str]],
        limits: TurnLimits | None = None,
        bind: BindDatagram = UdpSocket.bind,
    ) -> None:
        """`media_addresses` are the peers an allocation may reach (the node's UDP media
        addresses); `listen_hosts` the local addresses the listeners and relayed sockets bind
        (the media port's). Both are read at `run`, once the media port is up."""
        self.config = config
        self.turn = config.turn
        self.metrics = metrics
        self._secret = config.turn_secret()
        self._media_addresses = media_addresses
        self._listen_hosts = listen_hosts
        self._bind = bind
        self.allowed: frozenset[Address] = frozenset()
        self.core = TurnServer(
            realm=REALM,
            nonce_secret=secrets.token_bytes(32),
            # Credential expiries are Unix times (wall clock, not Trio's): any node of the cluster,
            # or this one after a restart, checks the credentials another issued.
            password_for=lambda username, allocating: password_for(self._secret, username, time.time(),
                                                                   allocating=allocating),
            peer_allowed=lambda addr: (addr[0], addr[1]) in self.allowed,
            limits=limits or TurnLimits(max_allocations_per_user=config.turn.per_user_relay_allocation_limit),
            owner_of=participant_of,
        )
        self.udp_sockets: list[DatagramSocket] = []
        self.udp_port = 0
        self.tls_port = 0
        self.listening = False
        self.tls: TlsMaterial | None = None
        self.relays: dict[Address, tuple[DatagramSocket, trio.CancelScope]] = {}
        self._relay_nursery: trio.Nursery | None = None
        self._handshakes = trio.Semaphore(MAX_HANDSHAKES)
        self._tls_connections = 0
        self._tls_per_ip: dict[str, int] = {}
        self._folded: dict[str, int] = {}
        self._relay_host = ""
        self._advertised_host = ""

    # ---- what clients are told ------------------------------------------------------------

    def ice_servers(self, participant_sid: str) -> list[rtc.ICEServer]:
        """The JoinResponse's (and ReconnectResponse's) `ice_servers` for a participant."""
        credential = issue_credential(self._secret, participant_sid, int(time.time()) + self.turn.ttl_seconds)
        # As LiveKit: turn: names the node's address, turns: the domain its certificate is for.
        address = f"[{self._advertised_host}]" if ":" in self._advertised_host else self._advertised_host
        urls = []
        if self.tls_port:
            urls.append(f"turns:{self.turn.domain or address}:{self.tls_port}?transport=tcp")
        if self.udp_port:
            urls.append(f"turn:{address}:{self.udp_port}?transport=udp")
        if not urls:
            return []
        return [rtc.ICEServer(urls=urls, username=credential.username, credential=credential.password)]

    # ---- lifetime ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        media = list(self._media_addresses())
        self.allowed = frozenset(media)
        hosts = list(dict.fromkeys(self._listen_hosts()))
        if not hosts or not media:
            raise OSError("TURN needs the media port's addresses")
        self._relay_host = hosts[0]
        self._advertised_host = hosts[0] if hosts[0] not in ("0.0.0.0", "::") else media[0][0]
        listeners: list[trio.SocketListener] = []
        try:
            # Everything that can fail to bind, before any task starts (a start-up error is a
            # plain OSError, not one inside an exception group).
            if self.turn.udp_port:
                self._bind_udp(hosts)
            if self.turn.tls_port:
                for host in hosts:
                    listeners += await trio.open_tcp_listeners(self.turn.tls_port, host=host)
                if not self.turn.external_tls:
                    names = [self.turn.domain] if self.turn.domain else []
                    names += [ip for ip, _ in media] + hosts + ["localhost"]
                    self.tls = tls_material(self.turn.cert_file, self.turn.key_file,
                                            [n for n in names if n not in ("0.0.0.0", "::")])
                    if self.tls.self_signed_path:
                        _log.info("TURN/TLS uses a self-signed certificate; trust it in a client to use turns:",
                                  kv={"certificate": self.tls.self_signed_path})
            async with trio.open_nursery() as nursery:
                for index, sock in enumerate(self.udp_sockets):
                    nursery.start_soon(self._read_udp, index, sock)
                self._relay_nursery = await nursery.start(_hold_nursery)
                connection_nursery = await nursery.start(_hold_nursery)
                for listener in listeners:
                    nursery.start_soon(self._accept, listener, connection_nursery)
                nursery.start_soon(self._timer)
                if listeners:
                    self.tls_port = listeners[0].socket.getsockname()[1]
                _log.info("TURN listening", kv={"udp": self.udp_port, "tls": self.tls_port,
                                                 "external_tls": self.turn.external_tls,
                                                 "relays_to": ", ".join(f"{h}:{p}" for h, p in media)})
                self.listening = True
                task_status.started()
        finally:
            for listener in listeners:
                listener.socket.close()
            for sock in self.udp_sockets:
                sock.close()  # their readers ended with the nursery, as did the relayed sockets'
            self.relays.clear()
            self._fold_counters()
            if self.tls is not None and self.tls.self_signed_path:
                # The development certificate lives as long as the server that made it.
                shutil.rmtree(os.path.dirname(self.tls.self_signed_path), ignore_errors=True)

    def _bind_udp(self, hosts: Sequence[str]) -> None:
        port = self.turn.udp_port
        try:
            for host in hosts:
                sock = self._bind(host, port)
                self.udp_sockets.append(sock)
                port = sock.getsockname()[1]
        except OSError:
            for sock in self.udp_sockets:
                sock.close()
            self.udp_sockets.clear()
            raise
        self.udp_port = port

    # ---- the core's outputs -----------------------------------------------------------------

    def _pump(self) -> None:
        """Send what the core has ready, then act on its events (which may make more to send)."""
        core = self.core
        while True:
            for output in core.datagrams_to_send(0.0):
                if isinstance(output, ToPeer):
                    relay = self.relays.get(output.relay)
                    if relay is not None:
                        self._sendto(relay[0], output.data, output.peer)
                else:
                    self._to_client(output.client, output.data)
            event = core.next_event()
            if event is None:
                return
            if isinstance(event, RelayNeeded):
                core.complete_allocation(event, self._open_relay(), trio.current_time())
            elif isinstance(event, AllocationEnded):
                relay = self.relays.pop(event.relay, None)
                if relay is not None:
                    relay[1].cancel()  # its reader closes the socket once out of its wait

    def _to_client(self, client: Hashable, data: bytes) -> None:
        if isinstance(client, _StreamClient):
            if client.queued + len(data) > TLS_SEND_QUEUE_BYTES:
                self.metrics.inc(TURN_SEND_DROPPED)
                return
            try:
                client.send.send_nowait(data)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                self.metrics.inc(TURN_SEND_DROPPED)
                return
            client.queued += len(data)
            return
        _kind, index, addr = client  # ("udp", socket index, address)
        self._sendto(self.udp_sockets[index], data, addr)

    def _sendto(self, sock: DatagramSocket, data: bytes, addr: Address) -> None:
        try:
            sock.sendto(data, addr)
        except (*_WOULD_BLOCK, OSError):
            self.metrics.inc(TURN_SEND_DROPPED)

    def _open_relay(self) -> Address | None:
        """A relayed socket on a free port of the range, its reader started; None if there is none."""
        assert self._relay_nursery is not None
        start, end = self.turn.relay_range_start, self.turn.relay_range_end
        for attempt in range(RELAY_BIND_ATTEMPTS if start else 1):
            port = random.randint(start, end) if start else 0
            try:
                sock = self._bind(self._relay_host, port)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    break
                continue
            bound = sock.getsockname()[1]
            relay = (self._advertised_host, bound)
            scope = trio.CancelScope()
            self.relays[relay] = (sock, scope)
            self._relay_nursery.start_soon(self._read_relay, relay, sock, scope)
            return relay
        self.metrics.inc(TURN_RELAY_BIND_FAILED)
        return None

    # ---- readers ------------------------------------------------------------------------------

    async def _read_udp(self, index: int, sock: DatagramSocket) -> None:
        buffer = bytearray(MAX_DATAGRAM)
        core = self.core
        while True:
            await sock.wait_readable()
            for _ in range(CHECKPOINT_EVERY):
                try:
                    size, addr = sock.recvfrom_into(buffer)
                except _WOULD_BLOCK:
                    break
                except OSError:
                    continue  # e.g. ICMP port unreachable reported on the socket
                self.metrics.inc(TURN_DATAGRAMS)
                addr = (addr[0], addr[1])
                core.receive(bytes(buffer[:size]), ("udp", index, addr), addr, trio.current_time())
                self._pump()

    async def _read_relay(self, relay: Address, sock: DatagramSocket, scope: trio.CancelScope) -> None:
        """The relayed socket's reader, and its owner: it closes the socket when it ends (closing
        it under a task waiting on it would leave Trio watching a file descriptor number the
        next relayed socket may reuse)."""
        buffer = bytearray(MAX_DATAGRAM)
        with scope, contextlib.closing(sock):
            while True:
                await sock.wait_readable()
                for _ in range(CHECKPOINT_EVERY):
                    try:
                        size, peer = sock.recvfrom_into(buffer)
                    except _WOULD_BLOCK:
                        break
                    except OSError:
                        continue
                    self.core.receive_from_peer(bytes(buffer[:size]), relay, (peer[0], peer[1]), trio.current_time())
                    self._pump()

    async def _timer(self) -> None:
        while True:
            deadline = self.core.next_deadline()
            await trio.sleep_until(deadline if deadline is not None else trio.current_time() + 1.0)
            self.core.handle_timeout(trio.current_time())
            self._pump()
            self._fold_counters()

    def _fold_counters(self) -> None:
        """Add what the core counted since the last fold to the server's metrics."""
        for name, value in attrs.asdict(self.core.counters).items():
            delta = value - self._folded.get(name, 0)
            if delta > 0:
                self.metrics.inc(f"turn_{name}_total", delta)
                self._folded[name] = value

    # ---- TLS --------------------------------------------------------------------------------

    async def _accept(self, listener: trio.SocketListener, connections: trio.Nursery) -> None:
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                        self.metrics.inc(TURN_TLS_REFUSED_BUSY)
                        await trio.sleep(0.1)
                        continue
                    raise
                if self._tls_connections >= MAX_TLS_CONNECTIONS:
                    self.metrics.inc(TURN_TLS_REFUSED_BUSY)
                    await _close_quietly(stream)
                    continue
                try:
                    ip = stream.socket.getpeername()[0]
                except OSError:
                    await _close_quietly(stream)  # already gone
                    continue
                # Behind a TLS terminator every connection comes from its address: no per-IP cap.
                if not self.turn.external_tls and self._tls_per_ip.get(ip, 0) >= MAX_TLS_CONNECTIONS_PER_IP:
                    self.metrics.inc(TURN_TLS_REFUSED_PER_IP)
                    await _close_quietly(stream)
                    continue
                self._tls_connections += 1
                self._tls_per_ip[ip] = self._tls_per_ip.get(ip, 0) + 1
                connections.start_soon(self._serve_stream, stream, ip)

    async def _serve_stream(self, tcp: trio.SocketStream, ip: str) -> None:
        stream: trio.abc.Stream = tcp
        try:
            peer = tcp.socket.getpeername()
            addr = (peer[0], peer[1])
            if self.tls is not None:
                try:
                    self._handshakes.acquire_nowait()
                except trio.WouldBlock:
                    self.metrics.inc(TURN_TLS_REFUSED_BUSY)
                    return
                try:
                    tls = trio.SSLStream(tcp, self.tls.context, server_side=True)
                    with trio.move_on_after(HANDSHAKE_TIMEOUT) as deadline:
                        await tls.do_handshake()
                    if deadline.cancelled_caught:
                        self.metrics.inc(TURN_TLS_HANDSHAKE_TIMEOUT)
                        return
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self.metrics.inc(TURN_TLS_HANDSHAKE_FAILED)
                    return
                finally:
                    self._handshakes.release()
                stream = tls
            self.metrics.inc(TURN_TLS_CONNECTIONS)
            await self._stream_session(stream, addr)
        except OSError:
            pass  # the peer vanished before we knew its address
        finally:
            self._tls_connections -= 1
            left = self._tls_per_ip.get(ip, 1) - 1
            if left > 0:
                self._tls_per_ip[ip] = left
            else:
                self._tls_per_ip.pop(ip, None)
            await _close_quietly(stream)  # TLS: with close_notify

    async def _stream_session(self, stream: trio.abc.Stream, addr: Address) -> None:
        send, receive = trio.open_memory_channel[bytes](TLS_SEND_QUEUE)
        client = _StreamClient(addr, send)
        framer = StreamFramer()
        try:
            async with trio.open_nursery() as nursery:
                async def write() -> None:
                    async with receive:
                        async for data in receive:
                            client.queued -= len(data)
                            await stream.send_all(data)

                async def read() -> None:
                    while True:
                        data = await stream.receive_some(READ_SIZE)
                        if not data:
                            return
                        try:
                            frames = framer.feed(data)
                        except FrameTooLarge:
                            self.metrics.inc(TURN_STREAM_FRAME_REFUSED)
                            return
                        for frame in frames:
                            self.core.receive(frame, client, addr, trio.current_time(), stream=True,
                                              shared_source=self.turn.external_tls)
                            self._pump()

                async def read_then_stop() -> None:
                    try:
                        await read()
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
                    nursery.cancel_scope.cancel()

                async def write_then_stop() -> None:
                    try:
                        await write()
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
                    nursery.cancel_scope.cancel()

                async def close_if_idle() -> None:
                    await trio.sleep(ALLOCATE_WITHIN)
                    if client not in self.core.allocations:
                        self.metrics.inc(TURN_STREAM_IDLE_CLOSED)
                        nursery.cancel_scope.cancel()

                nursery.start_soon(read_then_stop)
                nursery.start_soon(write_then_stop)
                nursery.start_soon(close_if_idle)
        finally:
            send.close()
            self.core.client_gone(client, trio.current_time())
            self._pump()


async def _hold_nursery(*, task_status: trio.TaskStatus[trio.Nursery] = trio.TASK_STATUS_IGNORED) -> None:
    """A nursery that lives as long as its parent: where tasks of one kind are started."""
    async with trio.open_nursery() as nursery:
        task_status.started(nursery)
        await trio.sleep_forever()


async def _close_quietly(stream: trio.abc.AsyncResource) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(1.0):
        try:
            await stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


__all__ = ["REALM", "TurnService"]
