"""An in-memory network: datagram sockets and stream listeners addressed by (host, port), so
real servers and our client run together in one Trio run under `trio.testing.MockClock` —
nothing on the media or signalling path waits on real time or on the kernel.

Datagrams. `MemoryNetwork.bind_datagram(host, port)` is a `trio_sfu.media.udp_mux.BindDatagram`:
pass it to a server's `MediaService.bind_datagram` and to our client's `bind_datagram`. A sent
datagram is queued at its destination at once, like loopback UDP, unless the network's
`link_delay` hook (source, destination, datagram -> seconds, or None to drop it) holds it; held
datagrams are delivered by `run` on Trio's clock. A link (source address -> destination address)
never reorders (unless the network is made with `reorder=True`, for impaired links:
trio_sfu.testing.impairment): a datagram is never delivered before one sent earlier on the same link. A full
receive queue drops the datagram and counts it, as a socket buffer does; so does an address
nobody bound.

Streams. `listen(host, port)` gives a trio Listener a `Server` serves like its TCP listeners
(its accept loop hands each connection to `HttpFront.handle_connection`); `connect(host, port)`
opens a connection to it and is a `trio_sfu.client.signal_connection.Connector` for our client. Connections
are trio.testing memory stream pairs.
"""

from __future__ import annotations

import collections
import errno
import heapq
import itertools
import math
from typing import Callable, Optional

import attrs
import trio
import trio.testing

Address = tuple[str, int]
#: (source, destination, datagram) -> delivery delay in seconds, or None to drop the datagram.
LinkDelay = Callable[[Address, Address, bytes], Optional[float]]

#: Datagrams a socket queues before it drops (a kernel's default UDP buffer holds a few hundred).
RECEIVE_QUEUE = 4096
#: Connections a listener queues before refusing more.
BACKLOG = 128
FIRST_EPHEMERAL_PORT = 40000


@attrs.define
class NetworkCounters:
    delivered: int = 0
    dropped_by_link: int = 0  # the link_delay hook said so
    dropped_queue_full: int = 0
    undeliverable: int = 0  # nobody bound the destination


class MemoryDatagramSocket:
    """A bound DatagramSocket of a MemoryNetwork (see trio_sfu.datagram.DatagramSocket)."""

    def __init__(self, network: "MemoryNetwork", address: Address) -> None:
        self._network = network
        self.address = address
        self._queue: collections.deque[tuple[bytes, Address]] = collections.deque()
        self._readable = trio.Event()
        self.closed = False

    def _enqueue(self, data: bytes, source: Address) -> bool:
        if self.closed or len(self._queue) >= RECEIVE_QUEUE:
            return False
        self._queue.append((data, source))
        self._readable.set()
        return True

    def _next(self) -> tuple[bytes, Address]:
        if self.closed:
            raise OSError(errno.EBADF, "socket closed")
        if not self._queue:
            if self._readable.is_set():
                self._readable = trio.Event()
            raise BlockingIOError(errno.EAGAIN, "no datagram queued")
        return self._queue.popleft()

    def recvfrom_into(self, buffer: bytearray) -> tuple[int, Address]:
        data, source = self._next()
        size = min(len(data), len(buffer))  # a datagram longer than the buffer is truncated
        buffer[:size] = data[:size]
        return size, source

    def recvfrom(self, bufsize: int) -> tuple[bytes, Address]:
        data, source = self._next()
        return data[:bufsize], source

    def sendto(self, data: bytes, addr: Address) -> int:
        if self.closed:
            raise OSError(errno.EBADF, "socket closed")
        self._network._send(self.address, (addr[0], addr[1]), bytes(data))
        return len(data)

    def getsockname(self) -> Address:
        return self.address

    def fileno(self) -> int:
        return -1  # no descriptor (a closed kernel socket answers -1 too)

    async def wait_readable(self) -> None:
        if self._queue or self.closed:
            await trio.lowlevel.checkpoint()
        else:
            await self._readable.wait()
        if self.closed:
            raise trio.ClosedResourceError("socket closed")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._queue.clear()
        self._network._unbind(self)
        self._readable.set()  # a waiting reader wakes and sees it closed


class MemoryListener(trio.abc.Listener[trio.abc.Stream]):
    """Accepts the connections `MemoryNetwork.connect` opens to its address."""

    def __init__(self, network: "MemoryNetwork", address: Address) -> None:
        self._network = network
        self.address = address
        self._send, self._receive = trio.open_memory_channel[trio.abc.Stream](BACKLOG)

    def _offer(self, stream: trio.abc.Stream) -> bool:
        try:
            self._send.send_nowait(stream)
        except (trio.WouldBlock, trio.ClosedResourceError):
            return False
        return True

    async def accept(self) -> trio.abc.Stream:
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            raise trio.ClosedResourceError("listener closed") from None

    async def aclose(self) -> None:
        self._network._unlisten(self)
        self._send.close()
        # Connections nobody accepted end: their clients read EOF.
        while True:
            try:
                stream = self._receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            await stream.aclose()
        self._receive.close()
        await trio.lowlevel.checkpoint()


class MemoryNetwork:
    def __init__(self, link_delay: Optional[LinkDelay] = None, *, reorder: bool = False) -> None:
        self.link_delay = link_delay
        # False: a link is FIFO (a delay never lets a datagram overtake an earlier one); True:
        # each datagram arrives after its own delay, so jitter reorders (an impaired link).
        self.reorder = reorder
        self.counters = NetworkCounters()
        self._sockets: dict[Address, MemoryDatagramSocket] = {}
        self._listeners: dict[Address, MemoryListener] = {}
        self._next_port: dict[str, int] = {}
        # Held datagrams: (due, order, source, destination, data), and each link's latest due time.
        self._held: list[tuple[float, int, Address, Address, bytes]] = []
        self._order = itertools.count()
        self._link_due: dict[tuple[Address, Address], float] = {}
        self._held_changed = trio.Event()

    # ---- addresses ---------------------------------------------------------------------------

    def _port_for(self, host: str, port: int, taken: dict) -> Address:
        if port:
            if (host, port) in taken:
                raise OSError(errno.EADDRINUSE, f"{host}:{port} is in use")
            return host, port
        port = self._next_port.get(host, FIRST_EPHEMERAL_PORT)
        while (host, port) in self._sockets or (host, port) in self._listeners:
            port += 1
        self._next_port[host] = port + 1
        return host, port

    def bind_datagram(self, host: str, port: int) -> MemoryDatagramSocket:
        """A datagram socket at (host, port); port 0 picks a free one."""
        address = self._port_for(host, port, self._sockets)
        sock = self._sockets[address] = MemoryDatagramSocket(self, address)
        return sock

    def _unbind(self, sock: MemoryDatagramSocket) -> None:
        if self._sockets.get(sock.address) is sock:
            del self._sockets[sock.address]

    def listen(self, host: str, port: int) -> MemoryListener:
        """A stream listener at (host, port); port 0 picks a free one."""
        address = self._port_for(host, port, self._listeners)
        listener = self._listeners[address] = MemoryListener(self, address)
        return listener

    def _unlisten(self, listener: MemoryListener) -> None:
        if self._listeners.get(listener.address) is listener:
            del self._listeners[listener.address]

    async def connect(self, host: str, port: int) -> trio.abc.Stream:
        """A new connection to the listener at (host, port): its client end."""
        await trio.lowlevel.checkpoint()
        listener = self._listeners.get((host, port))
        if listener is None:
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"nothing listens at {host}:{port}")
        client, server = trio.testing.memory_stream_pair()
        if not listener._offer(server):
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"{host}:{port} refused the connection")
        return client

    # ---- datagram delivery ---------------------------------------------------------------------

    def _send(self, source: Address, destination: Address, data: bytes) -> None:
        delay = self.link_delay(source, destination, data) if self.link_delay is not None else 0.0
        if delay is None:
            self.counters.dropped_by_link += 1
            return
        link = (source, destination)
        now = trio.current_time()
        due = now + delay if self.reorder else max(now + delay, self._link_due.get(link, -math.inf))
        if due <= now:
            self._deliver(source, destination, data)
            return
        self._link_due[link] = due
        heapq.heappush(self._held, (due, next(self._order), source, destination, data))
        self._held_changed.set()

    def _deliver(self, source: Address, destination: Address, data: bytes) -> None:
        sock = self._sockets.get(destination)
        if sock is None:
            self.counters.undeliverable += 1
        elif sock._enqueue(data, source):
            self.counters.delivered += 1
        else:
            self.counters.dropped_queue_full += 1

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver held datagrams when they are due (needed only when `link_delay` delays)."""
        task_status.started()
        while True:
            self._held_changed = trio.Event()
            due = self._held[0][0] if self._held else math.inf
            with trio.move_on_at(due):
                await self._held_changed.wait()
            now = trio.current_time()
            while self._held and self._held[0][0] <= now:
                due, _, source, destination, data = heapq.heappop(self._held)
                link = (source, destination)
                if self._link_due.get(link) == due:
                    del self._link_due[link]
                self._deliver(source, destination, data)


__all__ = ["LinkDelay", "MemoryDatagramSocket", "MemoryListener", "MemoryNetwork", "NetworkCounters"]
