"""ICE over TCP (RFC 6544, passive candidates) with RFC 4571 framing, beside the UDP mux.

A client whose UDP is blocked connects to `rtc.tcp_port` and sends, behind a 2-byte length
each, the same STUN, DTLS, RTP and RTCP packets it would have sent as UDP datagrams. To the
peer's `PeerTransport` a TCP connection is one more path: its remote end is a `TcpAddress`
(never equal to a UDP address), which ICE validates and may nominate like any other.

Ownership follows the nursery tree. Until a connection has identified its participant — a
STUN Binding request whose USERNAME names a registered transport and that the transport's
ICE agent authenticated — it belongs to the listener (`IceTcpListener`): one task per
connection in the listener's nursery, bounded per source IP and in total, with a deadline for
that first valid check, and only STUN accepted before it. Once identified, the connection is
handed (a non-blocking send on a bounded channel) to the participant's transports, whose task
runs it in the participant's nursery (`TcpPath.run`): it ends with the participant's media.

Sending never waits: the fan-out's `TcpPath.send` frames the packet and queues it, bounded in
bytes; a writer task per connection drains the queue. A reader too slow to keep up with its
media overflows the bound and is dropped (its connection closed), never blocking the others.
Every refusal, drop and close has a counter and a key=value log line.
"""

from __future__ import annotations

import collections
import errno
import logging
import socket
from typing import Callable, Optional, Protocol, Sequence

import attrs
import trio

from rtp.ice import ufrag_of
from rtp.peer_transport import PeerTransport
from rtp.peer_transport_events import Address, TcpAddress
from rtp.tcp_framing import FrameDecoder, encode_frame

from trio_sfu import metrics as m
from trio_sfu.log import get_logger

ICE_TCP_ACCEPTED = "ice_tcp_connections_accepted_total"
ICE_TCP_REFUSED_TOTAL_CAP = "ice_tcp_refused_total_cap_total"
ICE_TCP_REFUSED_PER_IP_CAP = "ice_tcp_refused_per_ip_cap_total"
ICE_TCP_ACCEPT_ERROR = "ice_tcp_accept_error_total"
ICE_TCP_IDENTIFY_TIMEOUT = "ice_tcp_identify_timeout_total"
ICE_TCP_NOT_STUN = "ice_tcp_not_stun_before_identified_total"
ICE_TCP_UNKNOWN_UFRAG = "ice_tcp_unknown_ufrag_total"
ICE_TCP_UNAUTHENTICATED = "ice_tcp_unauthenticated_checks_total"
ICE_TCP_CLOSED_UNIDENTIFIED = "ice_tcp_closed_unidentified_total"
ICE_TCP_OVERSIZED_FRAME = "ice_tcp_oversized_frame_total"
ICE_TCP_IDENTIFIED = "ice_tcp_identified_total"
ICE_TCP_PATHS_FULL = "ice_tcp_refused_paths_full_total"
ICE_TCP_HANDOVER_REFUSED = "ice_tcp_handover_refused_total"
ICE_TCP_SEND_OVERFLOW = "ice_tcp_send_queue_overflow_total"
ICE_TCP_SEND_NO_PATH = "ice_tcp_send_no_path_total"
ICE_TCP_FRAMES_RECEIVED = "ice_tcp_frames_received_total"
ICE_TCP_FRAMES_SENT = "ice_tcp_frames_sent_total"
ICE_TCP_HANDLER_CRASHED = "ice_tcp_handler_crashed_total"
ICE_TCP_PATH_CLOSED = "ice_tcp_paths_closed_total"

#: What one receive asks the kernel for.
RECEIVE_SIZE = 65536
#: How often `bind` looks for a port free on every address when the port is 0.
BIND_ATTEMPTS = 10
LISTEN_BACKLOG = 128

_log = get_logger("trio_sfu.media.ice_tcp")


class FloodLog:
    """For the lines a flood of connections would repeat (refusals, closes before a valid
    check): each message is logged the first time, then at most once per `interval` seconds
    with how many were left out since (`suppressed=`). The counters count every one."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._next: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, level: int, message: str, kv: dict[str, object]) -> bool:
        """Log `message` unless one like it went out within the interval; whether it did."""
        now = trio.current_time()
        if now < self._next.get(message, float("-inf")):
            self._suppressed[message] = self._suppressed.get(message, 0) + 1
            return False
        self._next[message] = now + self.interval
        suppressed = self._suppressed.pop(message, 0)
        _log.log(level, message, kv={**kv, "suppressed": suppressed} if suppressed else kv)
        return True


_flood_log = FloodLog()


@attrs.define
class IceTcpLimits:
    """The bounds of ICE-TCP: what an unidentified connection may hold and how long, and what
    an identified one may queue."""

    #: Connections not yet identified, in all and from one source IP.
    max_unidentified: int = 256
    max_unidentified_per_ip: int = 16
    #: From accept to the first authenticated Binding request.
    identify_timeout: float = 10.0
    #: Checks that name no transport of ours (yet) or fail authentication before the
    #: connection is closed; a client retransmits a check a handful of times a second.
    max_failed_checks: int = 20
    #: The largest RFC 4571 frame accepted: a media packet, a DTLS record or a STUN message
    #: is well under this; 64 KiB frames would only ever be an attack on our buffers.
    max_frame: int = 8192
    #: Bytes queued for the client (framed) before it counts as too slow and is dropped:
    #: about a second of a 3 Mbit/s stream.
    max_send_queue_bytes: int = 512 * 1024
    #: The kernel's send buffer per connection (SO_SNDBUF; Linux doubles it): fixed rather
    #: than autotuned to megabytes, so what a stalled reader can hold up is bounded there too.
    socket_send_buffer: int = 256 * 1024


class TcpEndpoint(Protocol):
    """What the listener needs of a transport to identify a connection and hand it over
    (trio_sfu.media.transport.TransportEndpoint)."""

    transport: PeerTransport

    def on_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """One packet from the client, on whichever path it came."""

    def attach_tcp(self, path: "TcpPath") -> bool:
        """Let replies to `path.remote` go out on `path` (False: this transport has enough)."""

    def detach_tcp(self, path: "TcpPath") -> None:
        """Forget `path`."""

    def adopt_tcp(self, path: "TcpPath") -> bool:
        """Take `path` over: run it in the participant's nursery (False: the participant is gone)."""


#: The transport registered under a local ufrag, if any (trio_sfu.media.udp_mux.UdpMux.by_ufrag).
EndpointLookup = Callable[[str], Optional[TcpEndpoint]]


class TcpPath:
    """One accepted ICE-TCP connection: its RFC 4571 decoder, its bounded send queue, and the
    tasks that move its bytes (the listener's while unidentified, then its participant's)."""

    def __init__(self, stream: trio.SocketStream, remote: TcpAddress, limits: IceTcpLimits,
                 metrics: m.Metrics) -> None:
        self.stream = stream
        self.remote = remote
        self.limits = limits
        self.metrics = metrics
        self.decoder = FrameDecoder(limits.max_frame)
        self.closed = False
        #: Frames that arrived behind the identifying check, for the new owner to deliver.
        self.pending: list[bytes] = []
        #: Where frames go once identified (set by the transport that adopts it).
        self.on_frame: Optional[Callable[[bytes, float], None]] = None
        #: Told once when the path has ended (the transport forgets it).
        self.on_closed: Optional[Callable[["TcpPath"], None]] = None
        self._queue: collections.deque[bytes] = collections.deque()
        # Bytes queued or being written: what the send bound applies to.
        self._queued = 0
        self._wake = trio.Event()
        self._scope = trio.CancelScope()
        self._running = False

    @property
    def queued_bytes(self) -> int:
        return self._queued

    # ---- out: never blocks ---------------------------------------------------------------

    def send(self, packet: bytes) -> bool:
        """Frame and queue `packet`; False when it cannot go. A queue over its byte bound
        means the client reads too slowly for its media: the connection is dropped."""
        if self.closed:
            return False
        try:
            frame = encode_frame(packet)
        except ValueError:
            return False
        if self._queued + len(frame) > self.limits.max_send_queue_bytes:
            self.metrics.inc(ICE_TCP_SEND_OVERFLOW)
            _log.warning("ICE-TCP client reads too slowly: connection dropped",
                         kv={"remote": _show(self.remote), "queued_bytes": self._queued,
                             "limit": self.limits.max_send_queue_bytes})
            self.close()
            return False
        self._queue.append(frame)
        self._queued += len(frame)
        self._wake.set()
        return True

    async def flush(self) -> None:
        """Write what is queued, in this task (the listener's, before a writer exists)."""
        while self._queue:
            count = len(self._queue)
            data = b"".join(self._queue)
            self._queue.clear()
            try:
                await self.stream.send_all(data)
            finally:
                self._queued -= len(data)
            self.metrics.inc(ICE_TCP_FRAMES_SENT, count)

    async def _write(self) -> None:
        while not self.closed:
            if not self._queue:
                self._wake = trio.Event()
                await self._wake.wait()
                continue
            count = len(self._queue)
            data = b"".join(self._queue)
            self._queue.clear()
            try:
                await self.stream.send_all(data)
            finally:
                self._queued -= len(data)
            self.metrics.inc(ICE_TCP_FRAMES_SENT, count)

    # ---- in --------------------------------------------------------------------------------

    async def receive_frames(self) -> Optional[list[bytes]]:
        """The frames one read completes; None at the end of the stream or once the framing
        broke (a length over the cap, counted)."""
        data = await self.stream.receive_some(RECEIVE_SIZE)
        if not data:
            return None
        frames = self.decoder.receive_data(data)
        if self.decoder.broken:
            self.metrics.inc(ICE_TCP_OVERSIZED_FRAME)
            _flood_log.log(logging.WARNING, "ICE-TCP frame over the size cap: connection closed",
                           kv={"remote": _show(self.remote), "max_frame": self.limits.max_frame})
            return None
        if frames:
            self.metrics.inc(ICE_TCP_FRAMES_RECEIVED, len(frames))
        return frames

    # ---- the identified connection's life -------------------------------------------------

    async def run(self) -> None:
        """Read and write until the peer goes, the framing breaks, the queue overflows or the
        owner closes the path; then close the connection. Runs in the participant's nursery."""
        self._running = True
        try:
            with self._scope:
                if self.closed:
                    return
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._write_until_broken, nursery.cancel_scope)
                    pending, self.pending = self.pending, []
                    for frame in pending:
                        self._deliver(frame)
                    await self._read_until_end()
                    nursery.cancel_scope.cancel()
        finally:
            self.closed = True
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self.stream)
            self.fold_counters()
            self.metrics.inc(ICE_TCP_PATH_CLOSED)
            _log.info("ICE-TCP connection closed", kv={"remote": _show(self.remote)})
            if self.on_closed is not None:
                self.on_closed(self)

    async def _read_until_end(self) -> None:
        while True:
            try:
                frames = await self.receive_frames()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if frames is None:
                return
            for frame in frames:
                self._deliver(frame)
                if self.closed:
                    return

    async def _write_until_broken(self, scope: trio.CancelScope) -> None:
        try:
            await self._write()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()

    def _deliver(self, frame: bytes) -> None:
        on_frame = self.on_frame
        assert on_frame is not None, "an adopted path has somewhere to deliver to"
        try:
            on_frame(frame, trio.current_time())
        except Exception:
            # One session's bug must not take the connection's task (and its nursery) down.
            self.metrics.inc(ICE_TCP_HANDLER_CRASHED)
            _log.exception("ICE-TCP frame handler crashed", kv={"remote": _show(self.remote)})

    def fold_counters(self) -> None:
        """Add the decoder's counts (frames, zero-length, bytes after a broken prefix) to the
        node's metrics, once, as the connection ends."""
        decoder, self.decoder = self.decoder, FrameDecoder(self.limits.max_frame)
        m.fold_counters(self.metrics, "ice_tcp_framing", decoder.counters)

    def close(self) -> None:
        """End the path now, from any task: its tasks stop and the connection closes (at once
        when no task runs it yet: handed over but not started)."""
        self.closed = True
        self._scope.cancel()
        self._wake.set()
        if not self._running:
            self.stream.socket.close()


class IceTcpListener:
    """The node's ICE-TCP port: one listening socket per local address, an accept loop each,
    and a task per connection until it is identified (the module's doc says what then)."""

    def __init__(self, listeners: Sequence[trio.SocketListener], lookup: EndpointLookup, metrics: m.Metrics,
                 limits: Optional[IceTcpLimits] = None) -> None:
        self.listeners = tuple(listeners)
        self.lookup = lookup
        self.metrics = metrics
        self.limits = limits or IceTcpLimits()
        #: Connections accepted and not yet identified, per source IP.
        self.unidentified: dict[str, int] = {}
        self._unidentified_total = 0

    @property
    def port(self) -> int:
        return self.listeners[0].socket.getsockname()[1]

    @property
    def local_addresses(self) -> list[Address]:
        return [(name[0], name[1]) for name in (lst.socket.getsockname() for lst in self.listeners)]

    @property
    def unidentified_total(self) -> int:
        return self._unidentified_total

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                for listener in self.listeners:
                    nursery.start_soon(self._accept, listener, nursery,
                                       name=f"ice-tcp accept {_local_name(listener)}")
                task_status.started()
        finally:
            for listener in self.listeners:
                with trio.CancelScope(shield=True):
                    await listener.aclose()

    async def _accept(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        limits = self.limits
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                # Out of file descriptors or memory: wait a little rather than spin.
                self.metrics.inc(ICE_TCP_ACCEPT_ERROR)
                _flood_log.log(logging.WARNING, "ICE-TCP accept failed", kv={"error": exc.strerror or str(exc)})
                await trio.sleep(0.1)
                continue
            try:
                host, port = stream.socket.getpeername()[:2]
            except OSError:
                await trio.aclose_forcefully(stream)  # gone already
                continue
            self.metrics.inc(ICE_TCP_ACCEPTED)
            if self._unidentified_total >= limits.max_unidentified:
                self.metrics.inc(ICE_TCP_REFUSED_TOTAL_CAP)
                _flood_log.log(logging.WARNING, "ICE-TCP connection refused: too many unidentified",
                               kv={"remote": f"{host}:{port}", "limit": limits.max_unidentified})
                await trio.aclose_forcefully(stream)
                continue
            if self.unidentified.get(host, 0) >= limits.max_unidentified_per_ip:
                self.metrics.inc(ICE_TCP_REFUSED_PER_IP_CAP)
                _flood_log.log(logging.WARNING, "ICE-TCP connection refused: too many unidentified from one address",
                               kv={"remote": f"{host}:{port}", "limit": limits.max_unidentified_per_ip})
                await trio.aclose_forcefully(stream)
                continue
            try:
                stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, limits.socket_send_buffer)
            except OSError:
                pass  # the kernel's default then; our own queue is bounded either way
            self.unidentified[host] = self.unidentified.get(host, 0) + 1
            self._unidentified_total += 1
            path = TcpPath(stream, TcpAddress(host, port), limits, self.metrics)
            nursery.start_soon(self._serve_unidentified, path, name=f"ice-tcp {host}:{port}")

    async def _serve_unidentified(self, path: TcpPath) -> None:
        host = path.remote[0]
        endpoint: Optional[TcpEndpoint] = None
        try:
            with trio.move_on_after(self.limits.identify_timeout) as scope:
                try:
                    endpoint = await self._identify(path)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    endpoint = None
            if scope.cancelled_caught:
                self.metrics.inc(ICE_TCP_IDENTIFY_TIMEOUT)
                _flood_log.log(logging.INFO, "ICE-TCP connection closed: no valid STUN check in time",
                               kv={"remote": _show(path.remote), "timeout_s": self.limits.identify_timeout})
        finally:
            left = self.unidentified[host] - 1
            if left:
                self.unidentified[host] = left
            else:
                del self.unidentified[host]
            self._unidentified_total -= 1
            if endpoint is None:
                self.metrics.inc(ICE_TCP_CLOSED_UNIDENTIFIED)
                path.fold_counters()
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(path.stream)
        if endpoint is None:
            return
        if endpoint.adopt_tcp(path):
            self.metrics.inc(ICE_TCP_IDENTIFIED)
            _log.info("ICE-TCP connection identified", kv={"remote": _show(path.remote),
                                                           "ufrag": endpoint.transport.local_ufrag})
            return  # the participant's nursery runs it from here
        endpoint.detach_tcp(path)
        self.metrics.inc(ICE_TCP_HANDOVER_REFUSED)
        await trio.aclose_forcefully(path.stream)

    async def _identify(self, path: TcpPath) -> Optional[TcpEndpoint]:
        """Read until a STUN check the transport it names authenticates (that transport, with
        `path` attached), or until anything else (None, counted; `path` detached)."""
        endpoint: Optional[TcpEndpoint] = None
        failures = 0
        try:
            while True:
                frames = await path.receive_frames()
                if frames is None:
                    return None
                for index, frame in enumerate(frames):
                    if frame[0] >= 4:
                        # RFC 7983: not STUN. Nothing but a check may open a path.
                        self.metrics.inc(ICE_TCP_NOT_STUN)
                        _flood_log.log(logging.INFO, "ICE-TCP connection closed: not STUN before a valid check",
                                       kv={"remote": _show(path.remote), "first_byte": frame[0]})
                        return None
                    ufrag = ufrag_of(frame)
                    found = self.lookup(ufrag) if ufrag is not None else None
                    if found is None or (endpoint is not None and found is not endpoint):
                        # A check may overtake the answer that opens its transport (as over
                        # UDP, where it is dropped and sent again): wait for the next, a few times.
                        self.metrics.inc(ICE_TCP_UNKNOWN_UFRAG)
                        failures += 1
                        if failures >= self.limits.max_failed_checks:
                            _flood_log.log(logging.INFO, "ICE-TCP connection closed: STUN for no transport of ours",
                                           kv={"remote": _show(path.remote), "ufrag": ufrag, "checks": failures})
                            return None
                        continue
                    if endpoint is None:
                        if not found.attach_tcp(path):
                            self.metrics.inc(ICE_TCP_PATHS_FULL)
                            return None
                        endpoint = found
                    try:
                        endpoint.on_datagram(frame, path.remote, trio.current_time())
                    except Exception:
                        self.metrics.inc(ICE_TCP_HANDLER_CRASHED)
                        _log.exception("ICE-TCP check handler crashed", kv={"remote": _show(path.remote)})
                        return None
                    await path.flush()  # the check's answer, on this connection
                    if endpoint.transport.accepts(b"\x80", path.remote):
                        path.pending = frames[index + 1:]
                        identified, endpoint = endpoint, None  # keep it attached
                        return identified
                    failures += 1
                    self.metrics.inc(ICE_TCP_UNAUTHENTICATED)
                    if failures >= self.limits.max_failed_checks:
                        _flood_log.log(logging.INFO, "ICE-TCP connection closed: checks failed authentication",
                                       kv={"remote": _show(path.remote), "checks": failures})
                        return None
        finally:
            if endpoint is not None:
                endpoint.detach_tcp(path)


async def bind_listeners(hosts: Sequence[str], port: int) -> list[trio.SocketListener]:
    """A listening TCP socket per address in `hosts`, all on one port (port 0: one the kernel
    picks that is free on every address). An address that cannot be bound (gone, not
    assignable) is skipped with a warning unless it is the first; a port in use is an error."""
    if not hosts:
        raise ValueError("bind_listeners needs at least one address")
    attempts = BIND_ATTEMPTS if port == 0 else 1
    for attempt in range(attempts):
        first = await _listen(hosts[0], port)
        chosen = first.getsockname()[1]
        bound = [first]
        try:
            for host in hosts[1:]:
                try:
                    bound.append(await _listen(host, chosen))
                except OSError as exc:
                    if exc.errno == errno.EADDRINUSE:
                        raise
                    _log.warning("ICE-TCP address skipped: cannot bind it",
                                 kv={"address": f"{host}:{chosen}", "error": exc.strerror or str(exc)})
        except OSError as exc:
            for sock in bound:
                sock.close()
            if exc.errno == errno.EADDRINUSE and attempt + 1 < attempts:
                continue
            raise
        return [trio.SocketListener(sock) for sock in bound]
    raise AssertionError("unreachable")  # the last attempt returned or raised


async def _listen(host: str, port: int) -> trio.socket.SocketType:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        # As every server: a restart may bind while old connections linger in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        await sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


def passive_candidate(ip: str, port: int, foundation: str, other_preference: int = 8191,
                      direction_preference: int = 4) -> str:
    """An SDP `a=candidate` value (without the prefix) for a passive TCP host candidate of
    ours (RFC 6544 §4.5). Its priority (§4.2): the host type preference, and a local preference
    of `direction_preference` (4 is the recommended one for a passive host candidate) times
    2^13 plus `other_preference` (which orders the addresses of a multihomed host) — below the
    UDP host candidate of the same address (65535, or our demoted loopback's 1000 when the
    direction is 0), so a client uses TCP only when UDP fails."""
    if not 0 <= other_preference <= 8191:
        raise ValueError(f"other preference {other_preference} is not 0-8191")
    if not 0 <= direction_preference <= 7:
        raise ValueError(f"direction preference {direction_preference} is not 0-7")
    local_preference = (direction_preference << 13) | other_preference
    priority = (126 << 24) | (local_preference << 8) | 255
    return f"{foundation} 1 tcp {priority} {ip} {port} typ host tcptype passive"


def _show(addr: Address) -> str:
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"


def _local_name(listener: trio.SocketListener) -> str:
    try:
        host, port = listener.socket.getsockname()[:2]
    except OSError:
        return "(closed)"
    return _show((host, port))


__all__ = ["EndpointLookup", "IceTcpLimits", "IceTcpListener", "TcpEndpoint", "TcpPath", "bind_listeners",
           "passive_candidate"]
