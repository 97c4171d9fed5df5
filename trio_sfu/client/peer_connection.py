"""One client PeerConnection: a datagram socket on an ephemeral port driving a sans-IO PeerSession.

The session (``rtp.peer_session.PeerSession``: ICE, DTLS, SRTP and, when negotiated, SCTP and
transport-wide CC feedback) is built once the remote description is known (a controlling ICE
agent needs the peer's ufrag/pwd); candidates trickled before that are held. The PC merges no
timers: it sleeps until the session's ``next_deadline()`` or the next datagram.

The receive loop is the fast path from docs/feasibility-probes.md §6: a raw non-blocking socket
read until EAGAIN, ``wait_readable`` only then, a checkpoint every few dozen packets; sends go
straight out with a non-blocking ``sendto`` (a full socket buffer drops the datagram and counts
it, as UDP would). Anything that changes the session's deadline from outside the loop (a new
candidate, the remote description) cancels the loop's wait so it reads the deadline again.

The socket comes from ``bind`` (``trio_sfu.datagram.BindDatagram``): the kernel's UDP by
default, an in-memory network's in tests that run under Trio's ``MockClock``.
"""

from __future__ import annotations

import math
import secrets
from typing import Callable

import attrs
import trio
from aioice.candidate import Candidate

from rtp.dtls import DtlsCertificate, DtlsRole
from rtp.peer_session import PeerSession, SessionState
from rtp.peer_transport import IceMode, PeerTransport
from rtp.peer_transport_events import (
    RtcpReceived,
    RtpReceived,
    TransportClosed,
    TransportConnected,
    TransportFailed,
)
from sdp.model import Fingerprint
from sdp.negotiator import LocalParams, RemoteTransport

from trio_sfu.datagram import BindDatagram, UdpSocket
from trio_sfu.sockstat import socket_drops

#: Datagrams handled between checkpoints, so a flood cannot starve the other tasks.
CHECKPOINT_EVERY = 64
MAX_DATAGRAM = 65536

#: Called with each decrypted RTP packet or RTCP compound packet and the time it arrived.
PacketHandler = Callable[[bytes, float], None]


@attrs.define
class PeerConnectionCounters:
    datagrams_received: int = 0
    datagrams_sent: int = 0
    send_dropped: int = 0  # socket buffer full or a send error
    candidates_ignored: int = 0
    #: Datagrams the kernel dropped on our socket because its receive buffer was full (we were
    #: too slow to read), read when the socket closes; None where the platform does not say.
    socket_drops: int | None = None


def _parse_candidate(text: str) -> Candidate | None:
    """An ``a=candidate`` value or an RTCIceCandidateInit ``candidate`` (``candidate:`` prefix
    optional); None when it cannot be read."""
    if text.startswith("candidate:"):
        text = text[len("candidate:"):]
    try:
        return Candidate.from_sdp(text)
    except (ValueError, IndexError, KeyError):
        return None


class ClientPeerConnection:
    """A client PC (publisher or subscriber); ICE controlling unless set_remote says otherwise."""

    def __init__(
        self,
        name: str,
        bind_host: str,
        certificate: DtlsCertificate,
        on_rtp: PacketHandler,
        on_rtcp: PacketHandler,
        on_failure: Callable[[str], None] | None = None,
        bind: BindDatagram = UdpSocket.bind,
    ) -> None:
        self.name = name
        self.certificate = certificate
        # A load tester's own socket buffers must not be where packets get lost: UdpSocket asks
        # for the mux's large buffers (the kernel caps them at net.core.[rw]mem_max).
        self.sock = bind(bind_host, 0)
        self.host, self.port = self.sock.getsockname()[:2]
        #: Our side of the transport, the same on every m-line (BUNDLE); candidates are trickled.
        self.local = LocalParams(
            ice_ufrag=secrets.token_hex(4),
            ice_pwd=secrets.token_hex(16),
            fingerprints=(Fingerprint("sha-256", certificate.fingerprint()),),
            session_id=secrets.randbits(62),
            ice_options=("trickle",),
        )
        self.session: PeerSession | None = None
        #: Whether our candidate went to the peer (once per PC, after its first description).
        self.candidate_trickled = False
        self.counters = PeerConnectionCounters()
        self.connected = trio.Event()
        self.ended = trio.Event()  # failed or closed
        self.failure: str | None = None
        self._on_rtp = on_rtp
        self._on_rtcp = on_rtcp
        self._on_failure = on_failure
        self._early_candidates: list[Candidate | None] = []  # None = the end, before the session
        self._wait_scope: trio.CancelScope | None = None
        self._run_scope: trio.CancelScope | None = None
        self._closing = False

    @property
    def transport(self) -> PeerTransport | None:
        """The session's ICE/DTLS/SRTP transport, for what it reports (ICE mode, selected address)."""
        return self.session.transport if self.session is not None else None

    # ------------------------------------------------------------------ description

    def candidate_line(self) -> str:
        """Our one host candidate, as the ``candidate:…`` string of an RTCIceCandidateInit."""
        return f"candidate:1 1 udp 2130706431 {self.host} {self.port} typ host generation 0"

    def set_remote(self, remote: RemoteTransport, dtls_role: DtlsRole,
                   ice_mode: IceMode = IceMode.CONTROLLING) -> None:
        """The first remote description builds the session; later ones only add candidates
        (the same ICE credentials; an ICE restart is not supported).

        ``ice_mode`` is CONTROLLING against an ICE-lite server (ours, LiveKit's default);
        LITE when we answered a full-ICE offerer as a lite agent, so the peer controls.
        """
        if self.session is None:
            self.session = PeerSession(PeerTransport(
                ice_mode,
                dtls_role,
                local_ufrag=self.local.ice_ufrag,
                local_pwd=self.local.ice_pwd,
                certificate=self.certificate,
                remote_ufrag=remote.ice_ufrag,
                remote_pwd=remote.ice_pwd,
                remote_fingerprints=remote.fingerprints,
            ))
            for early in self._early_candidates:
                self.session.add_remote_candidate(early)
            self._early_candidates.clear()
        for text in remote.candidates:
            candidate = _parse_candidate(text)
            if candidate is None:
                self.counters.candidates_ignored += 1
            else:
                self.session.add_remote_candidate(candidate)
        if remote.end_of_candidates:
            self.session.add_remote_candidate(None)
        self.session.start(trio.current_time())
        self.kick()

    def add_remote_candidate(self, candidate_text: str | None) -> None:
        """A trickled candidate (``candidate:…`` or bare); None or "" ends the trickle."""
        candidate = None
        if candidate_text:
            candidate = _parse_candidate(candidate_text)
            if candidate is None:
                self.counters.candidates_ignored += 1
                return
        if self.session is None:
            self._early_candidates.append(candidate)
        else:
            self.session.add_remote_candidate(candidate)
            self.kick()

    # ------------------------------------------------------------------ sending

    def send_rtp(self, packet: bytes) -> bool:
        session = self.session
        if session is None or not session.send_rtp(packet):
            return False
        self.flush()
        return True

    def send_rtcp(self, packet: bytes) -> bool:
        session = self.session
        if session is None or not session.send_rtcp(packet):
            return False
        self.flush()
        return True

    def flush(self) -> None:
        session = self.session
        if session is None:
            return
        for datagram, addr in session.datagrams_to_send(trio.current_time()):
            try:
                self.sock.sendto(datagram, addr)
                self.counters.datagrams_sent += 1
            except OSError:
                # BlockingIOError (buffer full) or an unreachable peer: UDP semantics, count and go on.
                self.counters.send_dropped += 1

    def kick(self) -> None:
        """Make the run loop read the session's deadline again now."""
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
            session = self.session
            if session is not None and session.is_alive:
                # A DTLS close_notify so the server ends its session at once (no association to
                # drain: our PCs negotiate no data channels).
                session.close(trio.current_time())
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
                self.flush()
                self._drain_events()
                session = self.session
                deadline = session.next_deadline() if session is not None else None
                with trio.CancelScope(deadline=math.inf if deadline is None else deadline) as scope:
                    self._wait_scope = scope
                    await sock.wait_readable()
                self._wait_scope = None
                session = self.session
                if session is not None:
                    now = trio.current_time()
                    due = session.next_deadline()
                    if due is not None and now >= due:
                        session.handle_timeout(now)
                handled = 0
                continue
            except OSError:
                # ICMP errors surface on the next recvfrom (ECONNREFUSED etc.): nothing to read.
                await trio.sleep(0)
                continue
            self.counters.datagrams_received += 1
            session = self.session
            if session is not None:
                session.receive(data, addr[:2], trio.current_time())
                if session.state is not SessionState.CONNECTED:
                    self.flush()  # handshake replies
                # Drained per datagram so a packet's arrival time is when it arrived, not the batch's end.
                self._drain_events()
            handled += 1
            if handled >= CHECKPOINT_EVERY:
                handled = 0
                self.flush()
                self._drain_events()
                await trio.lowlevel.checkpoint()

    def _drain_events(self) -> None:
        session = self.session
        if session is None:
            return
        on_rtp, on_rtcp = self._on_rtp, self._on_rtcp
        now = trio.current_time()
        while (event := session.next_event()) is not None:
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
            # SelectedAddressChanged: the session sends to the new address by itself.


__all__ = ["ClientPeerConnection", "PacketHandler", "PeerConnectionCounters"]
