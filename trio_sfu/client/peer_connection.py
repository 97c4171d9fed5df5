"""One client PeerConnection: a UDP socket on an ephemeral port driving a sans-IO PeerTransport.

The transport is built once the remote description is known (a controlling ICE
agent needs the peer's ufrag/pwd), and candidates trickled before that are held.
The receive loop is the fast path from docs/feasibility-probes.md §6: a raw
non-blocking socket read until EAGAIN, ``wait_readable`` only then, a checkpoint
every few dozen packets; sends go straight out with a non-blocking ``sendto``
(a full socket buffer drops the datagram and counts it, as UDP would).
Anything that changes the transport's timer (a new candidate, a start) cancels
the loop's wait so it re-reads the deadline.
"""

from __future__ import annotations

import contextlib
import math
import secrets
import socket
from typing import Callable

import attrs
import trio

from rtp.dtls import DtlsCertificate, DtlsRole
from rtp.peer_transport import IceMode, PeerTransport, TransportState
from rtp.peer_transport_events import (
    RtcpReceived,
    RtpReceived,
    TransportClosed,
    TransportConnected,
    TransportFailed,
)
from sdp.model import Fingerprint

from trio_sfu.client.sdp_builder import RemoteTransport, Transport
from trio_sfu.sockstat import socket_drops

#: Datagrams handled between checkpoints, so a flood cannot starve the other tasks.
CHECKPOINT_EVERY = 64
MAX_DATAGRAM = 65536
SOCKET_BUFFER = 4 * 1024 * 1024


@attrs.define
class PeerConnectionCounters:
    datagrams_received: int = 0
    datagrams_sent: int = 0
    send_dropped: int = 0  # socket buffer full or a send error
    candidates_ignored: int = 0
    #: Datagrams the kernel dropped on our socket because its receive buffer was full (we were
    #: too slow to read), read when the socket closes; None where the platform does not say.
    socket_drops: int | None = None


class ClientPeerConnection:
    """A client PC (publisher or subscriber); ICE controlling unless set_remote says otherwise."""

    def __init__(
        self,
        name: str,
        bind_host: str,
        certificate: DtlsCertificate,
        on_rtp: Callable[[bytes, float], None],
        on_rtcp: Callable[[bytes, float], None],
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        self.name = name
        self.certificate = certificate
        family = socket.AF_INET6 if ":" in bind_host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            # A load tester's own socket buffers must not be where packets get lost: ask for
            # SOCKET_BUFFER bytes (the kernel caps it at net.core.[rw]mem_max).
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
        self.sock.bind((bind_host, 0))
        self.host, self.port = self.sock.getsockname()[:2]
        self.local = Transport(
            ice_ufrag=secrets.token_hex(4),
            ice_pwd=secrets.token_hex(16),
            fingerprint=Fingerprint("sha-256", certificate.fingerprint()),
            session_id=secrets.randbits(62),
        )
        self.transport: PeerTransport | None = None
        self.counters = PeerConnectionCounters()
        self.connected = trio.Event()
        self.ended = trio.Event()  # failed or closed
        self.failure: str | None = None
        self._on_rtp = on_rtp
        self._on_rtcp = on_rtcp
        self._on_failure = on_failure
        self._early_candidates: list[object] = []  # aioice Candidates (or None = end) before the transport
        self._wait_scope: trio.CancelScope | None = None
        self._run_scope: trio.CancelScope | None = None
        self._closing = False

    # ------------------------------------------------------------------ description

    def candidate_line(self) -> str:
        """Our one host candidate, as the ``candidate:…`` string of an RTCIceCandidateInit."""
        return f"candidate:1 1 udp 2130706431 {self.host} {self.port} typ host generation 0"

    def set_remote(self, remote: RemoteTransport, dtls_role: DtlsRole,
                   ice_mode: IceMode = IceMode.CONTROLLING) -> None:
        """The first remote description builds the transport; later ones only add candidates
        (the same ICE credentials; an ICE restart is not supported).

        ``ice_mode`` is CONTROLLING against an ICE-lite server (ours, LiveKit's default);
        LITE when we answered a full-ICE offerer as a lite agent, so the peer controls.
        """
        from aioice.candidate import Candidate

        if self.transport is None:
            self.transport = PeerTransport(
                ice_mode,
                dtls_role,
                local_ufrag=self.local.ice_ufrag,
                local_pwd=self.local.ice_pwd,
                certificate=self.certificate,
                remote_ufrag=remote.ice_ufrag,
                remote_pwd=remote.ice_pwd,
                remote_fingerprints=remote.fingerprints,
            )
            for early in self._early_candidates:
                self.transport.add_remote_candidate(early)  # type: ignore[arg-type]
            self._early_candidates.clear()
        for text in remote.candidates:
            try:
                self.transport.add_remote_candidate(Candidate.from_sdp(text))
            except (ValueError, IndexError, KeyError):
                self.counters.candidates_ignored += 1
        if remote.end_of_candidates:
            self.transport.add_remote_candidate(None)
        self.transport.start(trio.current_time())
        self.kick()

    def add_remote_candidate(self, candidate_text: str | None) -> None:
        """A trickled candidate (``candidate:…`` or bare); None or "" ends the trickle."""
        from aioice.candidate import Candidate

        parsed = None
        if candidate_text:
            text = candidate_text[len("candidate:"):] if candidate_text.startswith("candidate:") else candidate_text
            try:
                parsed = Candidate.from_sdp(text)
            except (ValueError, IndexError, KeyError):
                self.counters.candidates_ignored += 1
                return
        if self.transport is None:
            self._early_candidates.append(parsed)
        else:
            self.transport.add_remote_candidate(parsed)
            self.kick()

    # ------------------------------------------------------------------ sending

    def send_rtp(self, packet: bytes) -> bool:
        transport = self.transport
        if transport is None or not transport.send_rtp(packet):
            return False
        self.flush()
        return True

    def send_rtcp(self, packet: bytes) -> bool:
        transport = self.transport
        if transport is None or not transport.send_rtcp(packet):
            return False
        self.flush()
        return True

    def flush(self) -> None:
        transport = self.transport
        if transport is None:
            return
        for datagram, addr in transport.datagrams_to_send(trio.current_time()):
            try:
                self.sock.sendto(datagram, addr)
                self.counters.datagrams_sent += 1
            except OSError:
                # BlockingIOError (buffer full) or an unreachable peer: UDP semantics, count and go on.
                self.counters.send_dropped += 1

    def kick(self) -> None:
        """Make the run loop re-read the transport's timer now."""
        if self._wait_scope is not None:
            self._wait_scope.cancel()

    # ------------------------------------------------------------------ the loop

    def close(self) -> None:
        """Stop :meth:`run` (now, or as soon as it starts); ``ended`` is set once the socket is closed."""
        self._closing = True
        if self._run_scope is not None:
            self._run_scope.cancel()

    async def run(self) -> None:
        """Serve the socket until cancelled or closed; closes the socket on the way out."""
        try:
            with trio.CancelScope() as self._run_scope:
                if not self._closing:
                    await self._loop()
        finally:
            transport = self.transport
            if transport is not None and transport.state in (TransportState.CONNECTING, TransportState.CONNECTED):
                transport.close()  # a DTLS close_notify so the server ends the session at once
                self.flush()
            self.counters.socket_drops = self.socket_drops()
            self.sock.close()
            self.ended.set()

    def socket_drops(self) -> int | None:
        """Datagrams the kernel dropped on our socket (receive buffer full): loss on our side of
        the wire, not the sender's. Live while the socket is open, then the count at its close."""
        if self.sock.fileno() == -1:
            return self.counters.socket_drops
        return socket_drops(self.sock)

    async def _loop(self) -> None:
        sock = self.sock
        handled = 0
        while True:
            try:
                data, addr = sock.recvfrom(MAX_DATAGRAM)
            except BlockingIOError:
                self._drain_events()
                self.flush()
                transport = self.transport
                deadline = transport.get_timer() if transport is not None else None
                with trio.CancelScope(deadline=math.inf if deadline is None else deadline) as scope:
                    self._wait_scope = scope
                    await trio.lowlevel.wait_readable(sock)
                self._wait_scope = None
                transport = self.transport
                if transport is not None:
                    now = trio.current_time()
                    due = transport.get_timer()
                    if due is not None and now >= due:
                        transport.handle_timer(now)
                handled = 0
                continue
            except OSError:
                # ICMP errors surface on the next recvfrom (ECONNREFUSED etc.): nothing to read.
                await trio.sleep(0)
                continue
            self.counters.datagrams_received += 1
            transport = self.transport
            if transport is not None:
                transport.receive_datagram(data, addr[:2], trio.current_time())
                # Drained per datagram so a packet's arrival time is when it arrived, not the batch's end.
                self._drain_events()
                if transport.state is not TransportState.CONNECTED:
                    self.flush()  # handshake replies
            handled += 1
            if handled >= CHECKPOINT_EVERY:
                handled = 0
                self._drain_events()
                self.flush()
                await trio.lowlevel.checkpoint()

    def _drain_events(self) -> None:
        transport = self.transport
        if transport is None:
            return
        on_rtp, on_rtcp = self._on_rtp, self._on_rtcp
        now = trio.current_time()
        while (event := transport.next_event()) is not None:
            kind = type(event)
            if kind is RtpReceived:
                on_rtp(event.packet, now)  # type: ignore[union-attr]
            elif kind is RtcpReceived:
                on_rtcp(event.packet, now)  # type: ignore[union-attr]
            elif kind is TransportConnected:
                self.connected.set()
            elif kind is TransportFailed:
                self.failure = event.reason  # type: ignore[union-attr]
                self.ended.set()
                if self._on_failure is not None:
                    self._on_failure(self.failure)
            elif kind is TransportClosed:
                self.ended.set()


__all__ = ["ClientPeerConnection", "PeerConnectionCounters"]
