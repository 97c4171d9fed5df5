"""One UDP socket for every PeerTransport of the node, and the reader task that serves it.

Routing is synchronous, on the reader task: a datagram from a remote address a transport has
already validated goes straight to that transport; a STUN Binding request is routed by the local
ufrag in its USERNAME to the transport registered under it (how a new peer is found); anything
else is dropped and counted. Once a transport has authenticated an address (its ICE agent
answered a valid check from it), the address is remembered, so media takes one dict lookup.
A transport keeps at most `MAX_ADDRESSES_PER_TRANSPORT` remembered addresses (oldest evicted and
counted): a roaming client or a peer holding valid ICE credentials cannot grow the table without
bound, and an evicted address that is still in use is found again by its next ICE check.

The reader drains its socket in batches (trio_sfu.native.batch_recv: one `recvmmsg` per batch
into a reused ring when the extension is built, else its pure-Python twin, a loop of
`recvfrom_into`), at most `RECEIVE_BATCH` datagrams each, all stamped with one `now`. After a full
batch it checkpoints (a flood on one socket cannot starve the other sockets' readers or the rest
of the server); after a short one the socket was empty, and it waits until readable. A datagram
over `MAX_DATAGRAM` is dropped and counted, never truncated and routed. Sends are
non-blocking `sendto`; a full socket buffer drops the datagram (media is loss tolerant, and an
awaited send per packet would cost 3x) and counts it.

The socket is a `DatagramSocket`: the kernel's (`UdpSocket`, whose methods are the socket's own,
so the hot path pays nothing for the indirection) or an in-memory network's
(`trio_sfu.testing.memory_network`), which lets whole servers and clients run under Trio's
`MockClock` with no real-time wait anywhere on the media path.

Several local addresses (`bind_all`: the media port on every interface address, each one a host
candidate) are one socket per address on one port, one reader each, one routing table. Not one
socket on 0.0.0.0: its replies leave from the address the routing table picks, which on a host
with several addresses is not always the one the client sent to, and ICE fails a check whose
answer comes from elsewhere (RFC 8445 §7.2.5.2.1). Not IP_PKTINFO either: that puts recvmsg and
ancillary-data parsing on every datagram of the hot path, and the in-memory network would need
it too. One socket per address is also what LiveKit's UDP mux does (pion's multi-address mux).
So each datagram goes out of the socket the peer reaches us on: while a datagram from an
address is handled, whatever is sent back to that address leaves from the socket it arrived
on (the answer to an ICE check, on the pair that check tests); otherwise from the socket that
address was last heard on with anything but a check (DTLS and media flow on the selected pair
only), or where ICE first authenticated it.
"""

from __future__ import annotations

import errno
import socket
from typing import Iterable, Optional, Protocol, Sequence

import trio

from rtp.ice import ufrag_of
from rtp.peer_transport import PeerTransport
from rtp.peer_transport_events import Address

from trio_sfu import metrics as m
from trio_sfu.datagram import BindDatagram, DatagramSocket, UdpSocket
from trio_sfu.log import get_logger
from trio_sfu.native.batch_recv import batch_reader

#: Datagrams one socket's reader hands on before it yields to the rest of the server.
RECEIVE_BATCH = 32
# bind_all on port 0: how often to look for a port free on every address.
BIND_ATTEMPTS = 10
# Addresses one transport may have authenticated at once: a host, srflx and relay path per
# address family, plus a roam or two, fit with room to spare.
MAX_ADDRESSES_PER_TRANSPORT = 8
#: Largest datagram routed: WebRTC's stay under the path MTU (ICE, DTLS, SRTP and SCTP all size
#: for ~1200-1500 bytes); a larger one is no peer's and is dropped, counted.
MAX_DATAGRAM = 8192
# Enough socket buffer for a burst of video keyframes from many publishers at once.

UDP_RECEIVED = "udp_datagrams_received_total"
UDP_SENT = "udp_datagrams_sent_total"
UDP_DROPPED_UNROUTABLE = "udp_dropped_unroutable_total"
UDP_DROPPED_SEND_FULL = "udp_dropped_send_buffer_full_total"
UDP_SEND_ERROR = "udp_send_error_total"
UDP_HANDLER_CRASHED = "udp_handler_crashed_total"
UDP_ADDRESS_EVICTED = "udp_address_evicted_total"
UDP_DROPPED_OVERSIZED = "udp_dropped_oversized_total"

_log = get_logger("trio_sfu.media.udp_mux")
_WOULD_BLOCK = (BlockingIOError, InterruptedError)


class MuxEndpoint(Protocol):
    """What the mux hands datagrams to: a transport plus its owner's synchronous input hook."""

    transport: PeerTransport

    def on_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """Feed the datagram to the transport and handle what it produced, without blocking."""


class UdpMux:
    """The node's UDP sockets (one per local address, one port), its routing tables and the
    non-blocking send path."""

    def __init__(self, sock: DatagramSocket, metrics: m.Metrics, *, others: Sequence[DatagramSocket] = (),
                 fast_path: Optional[bool] = None) -> None:
        # The first socket; with `others` (the same port on other local addresses) replies to an
        # address not heard from yet leave from it.
        self.sock = sock
        self.sockets: tuple[DatagramSocket, ...] = (sock, *others)
        self.metrics = metrics
        # The compiled batch reader (None: as TRIO_SFU_FASTPATH says; it falls back by itself).
        self.fast_path = fast_path
        self.by_ufrag: dict[str, MuxEndpoint] = {}
        self.by_addr: dict[Address, MuxEndpoint] = {}
        # Each endpoint's remembered addresses, oldest first (keyed by id: endpoints need not
        # be hashable); what bounds `by_addr` and what unregister forgets.
        self._addrs_of: dict[int, list[Address]] = {}
        # With several sockets: the socket each remembered address is answered from (the
        # module's doc says which); None with one socket, so that hot path pays one test.
        self._reply_via: Optional[dict[Address, DatagramSocket]] = {} if others else None
        # While a datagram is routed: its source and the socket it came in on.
        self._answering: Optional[tuple[Address, DatagramSocket]] = None

    @classmethod
    def bind(cls, host: str, port: int, metrics: m.Metrics, bind: BindDatagram = UdpSocket.bind) -> "UdpMux":
        return cls(bind(host, port), metrics)

    @classmethod
    def bind_all(cls, hosts: Sequence[str], port: int, metrics: m.Metrics,
                 bind: BindDatagram = UdpSocket.bind) -> "UdpMux":
        """One socket per address in `hosts`, all on one port (port 0: one the kernel picks that
        is free on every address). An address that cannot be bound (gone, or not assignable)
        is skipped with a warning, unless it is the first; a port in use is an error."""
        if not hosts:
            raise ValueError("bind_all needs at least one address")
        attempts = BIND_ATTEMPTS if port == 0 else 1
        for attempt in range(attempts):
            first = bind(hosts[0], port)
            chosen = first.getsockname()[1]
            others: list[DatagramSocket] = []
            try:
                for host in hosts[1:]:
                    try:
                        others.append(bind(host, chosen))
                    except OSError as exc:
                        if exc.errno == errno.EADDRINUSE:
                            raise
                        _log.warning("media address skipped: cannot bind it",
                                     kv={"address": f"{host}:{chosen}", "error": exc.strerror or str(exc)})
            except OSError as exc:
                for sock in (first, *others):
                    sock.close()
                if exc.errno == errno.EADDRINUSE and attempt + 1 < attempts:
                    continue  # the kernel's free port on the first address is taken on another
                raise
            return cls(first, metrics, others=others)
        raise AssertionError("unreachable")  # the last attempt returned or raised

    @property
    def local_address(self) -> Address:
        host, port = self.sock.getsockname()[:2]
        return host, port

    @property
    def local_addresses(self) -> list[Address]:
        """Every socket's (address, port), the first socket's first."""
        return [(name[0], name[1]) for name in (sock.getsockname() for sock in self.sockets)]

    # ---- registry ------------------------------------------------------------------------

    def register(self, endpoint: MuxEndpoint) -> None:
        ufrag = endpoint.transport.local_ufrag
        if ufrag in self.by_ufrag and self.by_ufrag[ufrag] is not endpoint:
            raise ValueError(f"ufrag {ufrag!r} is already registered")
        self.by_ufrag[ufrag] = endpoint

    def rekey(self, endpoint: MuxEndpoint, old_ufrag: str) -> None:
        """The endpoint's transport restarted ICE under a new local ufrag: new peers' checks find
        it by that one, the old one leads nowhere. Its addresses keep routing to it (media goes
        on over the selected pair through the restart)."""
        if self.by_ufrag.get(old_ufrag) is endpoint:
            del self.by_ufrag[old_ufrag]
        self.register(endpoint)

    def unregister(self, endpoint: MuxEndpoint) -> None:
        ufrag = endpoint.transport.local_ufrag
        if self.by_ufrag.get(ufrag) is endpoint:
            del self.by_ufrag[ufrag]
        for addr in self._addrs_of.pop(id(endpoint), ()):
            if self.by_addr.get(addr) is endpoint:
                del self.by_addr[addr]
                if self._reply_via is not None:
                    self._reply_via.pop(addr, None)

    def addresses_of(self, endpoint: MuxEndpoint) -> list[Address]:
        """The addresses routed to `endpoint` by address, oldest first."""
        return list(self._addrs_of.get(id(endpoint), ()))

    def _remember(self, addr: Address, endpoint: MuxEndpoint, sock: Optional[DatagramSocket]) -> None:
        addrs = self._addrs_of.setdefault(id(endpoint), [])
        via = self._reply_via
        if len(addrs) >= MAX_ADDRESSES_PER_TRANSPORT:
            oldest = addrs.pop(0)
            if self.by_addr.get(oldest) is endpoint:
                del self.by_addr[oldest]
                if via is not None:
                    via.pop(oldest, None)
            self.metrics.inc(UDP_ADDRESS_EVICTED)
        addrs.append(addr)
        self.by_addr[addr] = endpoint
        if via is not None and sock is not None:
            via[addr] = sock

    def is_empty(self) -> bool:
        return not self.by_ufrag and not self.by_addr and not self._addrs_of and not self._reply_via

    def reply_socket(self, addr: Address) -> DatagramSocket:
        """The socket a datagram to `addr` leaves from (the module's doc says which)."""
        answering = self._answering
        if answering is not None and answering[0] == addr:
            return answering[1]
        via = self._reply_via
        return self.sock if via is None else via.get(addr, self.sock)

    # ---- input ---------------------------------------------------------------------------

    def route(self, data: bytes, addr: Address, now: float, sock: Optional[DatagramSocket] = None) -> None:
        """Hand one datagram to its transport, or drop and count it. `sock` is the socket it
        came in on (None: the first)."""
        endpoint = self.by_addr.get(addr)
        if endpoint is not None and self._reply_via is None and data and 127 < data[0] < 192:
            # The media path: SRTP/SRTCP from an authenticated address on a one-socket mux has
            # no ufrag to check, no reply socket to note and no address to learn.
            try:
                endpoint.on_datagram(data, addr, now)
            except Exception:
                self.metrics.inc(UDP_HANDLER_CRASHED)
                _log.exception("datagram handler crashed", kv={"ufrag": endpoint.transport.local_ufrag})
            return
        if endpoint is None or (data and data[0] < 4 and ufrag_of(data) not in (None, endpoint.transport.local_ufrag)):
            # Unknown address, or a known address now checking another ufrag (a restart or a
            # new transport from the same port): look the ufrag up.
            endpoint = self.by_ufrag.get(ufrag_of(data) or "") if data and data[0] < 4 else None
            if endpoint is None:
                self.metrics.inc(UDP_DROPPED_UNROUTABLE)
                return
        via = self._reply_via
        if via is not None and sock is not None:
            # Answers to this datagram leave from the socket it came in on; anything but an ICE
            # check (which may test a pair not chosen) moves the address's replies there for good.
            self._answering = (addr, sock)
            if data and data[0] >= 4 and self.by_addr.get(addr) is endpoint and via.get(addr) is not sock:
                via[addr] = sock
        try:
            endpoint.on_datagram(data, addr, now)
        except Exception:
            # One session's bug must not stop the node's only socket reader.
            self.metrics.inc(UDP_HANDLER_CRASHED)
            _log.exception("datagram handler crashed", kv={"ufrag": endpoint.transport.local_ufrag})
            return
        finally:
            self._answering = None
        if addr not in self.by_addr and endpoint.transport.accepts(b"\x80", addr):
            # ICE authenticated this address: route its DTLS and media by address from now on.
            if self.by_ufrag.get(endpoint.transport.local_ufrag) is endpoint:
                self._remember(addr, endpoint, sock)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The reader tasks, one per socket; the sockets close when they end."""
        try:
            async with trio.open_nursery() as nursery:
                for sock in self.sockets:
                    nursery.start_soon(self._read, sock, name=f"udp mux reader {_name(sock)}")
                task_status.started()
        finally:
            for sock in self.sockets:
                sock.close()

    async def _read(self, sock: DatagramSocket) -> None:
        """Drain one socket a batch at a time, sleep only when it is empty."""
        metrics = self.metrics
        route = self.route
        reader = batch_reader(sock, batch=RECEIVE_BATCH, slot_size=MAX_DATAGRAM, fast=self.fast_path,
                              on_oversized=self._count_oversized)
        receive = reader.receive
        full = reader.batch
        while True:
            datagrams = receive()
            if datagrams:
                metrics.inc(UDP_RECEIVED, len(datagrams))
                now = trio.current_time()  # the batch was all queued by now
                for data, addr in datagrams:
                    route(data, addr, now, sock)
            if len(datagrams) >= full:
                await trio.lowlevel.checkpoint()  # more may be queued: let the others run first
            else:
                await sock.wait_readable()

    def _count_oversized(self) -> None:
        self.metrics.inc(UDP_DROPPED_OVERSIZED)

    # ---- output --------------------------------------------------------------------------

    def send(self, datagrams: Iterable[tuple[bytes, Address]]) -> None:
        """Send without blocking; a full socket buffer drops (and counts) the datagram."""
        sock = self.sock
        several = self._reply_via is not None
        for data, addr in datagrams:
            try:
                (self.reply_socket(addr) if several else sock).sendto(data, addr)
            except _WOULD_BLOCK:
                self.metrics.inc(UDP_DROPPED_SEND_FULL)
            except OSError as exc:
                if exc.errno == errno.EBADF:
                    return  # socket closed at shutdown
                self.metrics.inc(UDP_SEND_ERROR)
            else:
                self.metrics.inc(UDP_SENT)

    def send_one(self, data: bytes, addr: Address) -> bool:
        """:meth:`send` for one datagram (the media fan-out's path): no iterable to build."""
        try:
            (self.sock if self._reply_via is None else self.reply_socket(addr)).sendto(data, addr)
        except _WOULD_BLOCK:
            self.metrics.inc(UDP_DROPPED_SEND_FULL)
            return False
        except OSError as exc:
            if exc.errno != errno.EBADF:  # EBADF: socket closed at shutdown
                self.metrics.inc(UDP_SEND_ERROR)
            return False
        self.metrics.inc(UDP_SENT)
        return True


def discover_node_ip() -> str:
    """The address of the interface the default route uses (no packet is sent: UDP connect
    only picks a route). Falls back to loopback when there is no route."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # TEST-NET-1: never answered, only routed
        return probe.getsockname()[0]
    except OSError:
        return "127.0.0.1"
    finally:
        probe.close()


def host_candidate(ip: str, port: int, foundation: str = "1", local_preference: int = 65535) -> str:
    """An SDP `a=candidate` value (without the prefix) for a UDP host candidate of ours."""
    if not 0 <= local_preference <= 65535:
        raise ValueError(f"local preference {local_preference} is not 0-65535")
    # Priority per RFC 8445 §5.1.2.1 for a host candidate, component 1; the local preference
    # orders the addresses of a multihomed host (§5.1.2.2).
    priority = (126 << 24) | (local_preference << 8) | 255
    return f"{foundation} 1 udp {priority} {ip} {port} typ host"


def _name(sock: DatagramSocket) -> str:
    try:
        host, port = sock.getsockname()[:2]
    except OSError:
        return "(closed)"
    return f"{host}:{port}"
