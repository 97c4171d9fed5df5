"""One WebRTC transport — a PeerConnection's bundled 5-tuple — as a sans-IO object.

It composes the pieces of ``rtp/`` in the order a datagram meets them:

* RFC 7983 demux on the first octet: STUN 0-3, DTLS 20-63, RTP/RTCP 128-191;
* ICE: the server's :class:`~rtp.ice.IceLiteAgent`, or the
  :class:`~rtp.ice.IceControllingAgent` when we are the client; ICE decides
  which remote addresses are authenticated and which one media goes to;
* DTLS (client or server, from SDP ``a=setup``), which checks the peer's
  certificate against the SDP fingerprints;
* SRTP/SRTCP keyed from the DTLS exporter when the handshake completes.

Nothing but STUN is accepted from an address that has not passed an ICE check:
DTLS and media from elsewhere are dropped and counted, and media is only sent
to the ICE-selected address. Every drop has a counter.

Usage, from a driver that owns a socket and a clock::

    transport.start(now)
    transport.receive_datagram(data, addr, now)   # for each datagram
    for datagram, addr in transport.datagrams_to_send(now): sock.sendto(datagram, addr)
    while (event := transport.next_event()) is not None: ...
    deadline = transport.next_deadline()              # then handle_timeout(now) at that time
"""

from __future__ import annotations

import collections
import enum
import random
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import attrs

from rtp.dtls import (
    ApplicationDataReceived,
    ConnectionClosed,
    ConnectionFailed,
    DtlsCertificate,
    DtlsConnection,
    DtlsRole,
    DtlsState,
    HandshakeCompleted,
)
from rtp.ice import (
    IceConnected,
    IceConsentExpired,
    IceControlledAgent,
    IceControllingAgent,
    IceFailed,
    IceLiteAgent,
    IceRestartCompleted,
    IceSelectedPairChanged,
    ufrag_of,
)
from rtp.peer_transport_events import (
    Address,
    DataReceived,
    IceRestarted,
    PeerTransportEvent,
    RtcpReceived,
    RtpReceived,
    SelectedAddressChanged,
    TransportClosed,
    TransportConnected,
    TransportFailed,
)
from rtp.srtp import (
    DEFAULT_REPLAY_WINDOW,
    SrtpAuthenticationError,
    SrtpContext,
    SrtpError,
    SrtpPacketError,
    SrtpReplayError,
)
from rtp.srtp_profiles import PREFERRED_SRTP_PROFILES, SrtpProfile

if TYPE_CHECKING:
    from aioice.candidate import Candidate

__all__ = [
    "IceMode",
    "PeerTransport",
    "PeerTransportCounters",
    "TransportState",
    "DTLS_SRTP_EXPORTER_LABEL",
    "DEFAULT_CONNECT_TIMEOUT",
]

DTLS_SRTP_EXPORTER_LABEL = b"EXTRACTOR-dtls_srtp"
#: ICE and DTLS together must finish within this long after start(); a DTLS
#: server has no handshake timer of its own until a ClientHello arrives.
DEFAULT_CONNECT_TIMEOUT = 30.0


class IceMode(enum.Enum):
    LITE = "lite"  # the SFU: answer checks, never send them (RFC 8445 §2.5)
    CONTROLLING = "controlling"  # our own client: check pairs and nominate one
    CONTROLLED = "controlled"  # our own client answering a full-ICE offerer: check, the peer nominates


class TransportState(enum.Enum):
    NEW = "new"  # start() not called
    CONNECTING = "connecting"  # ICE and/or DTLS under way
    CONNECTED = "connected"  # SRTP keyed
    FAILED = "failed"
    CLOSED = "closed"


@attrs.define
class PeerTransportCounters:
    """Datagrams dropped, by reason, and media totals. ICE and DTLS keep their own
    finer counters (``ice_counters``, ``dtls_counters``)."""

    #: DTLS or media from an address that no authenticated ICE check came from.
    unauthenticated_source: int = 0
    #: RFC 7983 classes we do not speak: ZRTP, TURN channels, empty, 4-19, 80-127, 192-255.
    unknown_class: int = 0
    #: Media from a valid address before DTLS-SRTP produced keys.
    media_before_keys: int = 0
    srtp_auth_failed: int = 0
    srtp_replayed: int = 0
    #: SRTP/SRTCP too short or not readable as a packet by libsrtp.
    malformed: int = 0
    srtp_other_errors: int = 0
    #: Anything received after the transport failed or closed.
    after_close: int = 0
    #: DTLS output with no remote address to send it to (no check validated one yet).
    dtls_unroutable: int = 0
    #: send_rtp/send_rtcp/send_data before SRTP keys or a selected address exist, or after close.
    send_not_ready: int = 0
    #: send_rtp/send_rtcp with bytes SRTP cannot protect (shorter than a header), or
    #: send_data with more than one DTLS record can carry.
    send_invalid: int = 0
    rtp_received: int = 0
    rtcp_received: int = 0
    rtp_sent: int = 0
    rtcp_sent: int = 0


class PeerTransport:
    """ICE + DTLS + SRTP over one UDP 5-tuple; see the module docstring for the flow."""

    def __init__(
        self,
        ice_mode: IceMode,
        dtls_role: DtlsRole,
        *,
        local_ufrag: str,
        local_pwd: str,
        certificate: DtlsCertificate,
        remote_ufrag: str | None,
        remote_pwd: str | None,
        remote_fingerprints: Iterable[tuple[str, str]],
        remote_candidates: Iterable[Candidate] = (),
        srtp_profiles: Sequence[SrtpProfile] = PREFERRED_SRTP_PROFILES,
        mtu: int = 1200,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        replay_window: int = DEFAULT_REPLAY_WINDOW,
        tie_breaker: int | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """``remote_fingerprints`` are SDP ``a=fingerprint`` pairs, e.g. ``("sha-256", "AB:CD:…")``.

        A lite transport may be built before the remote description is known
        (``remote_ufrag=None``); a controlling one needs the remote credentials.
        """
        self.ice_mode = ice_mode
        self.dtls_role = dtls_role
        self.state = TransportState.NEW
        self.counters = PeerTransportCounters()
        self._local_ufrag = local_ufrag
        self._connect_timeout = connect_timeout
        self._replay_window = replay_window

        self._ice: IceLiteAgent | IceControllingAgent
        self._address_ok: Callable[[Address], bool]
        if ice_mode is IceMode.LITE:
            lite = IceLiteAgent(local_ufrag, local_pwd)
            if remote_ufrag is not None:
                lite.set_remote_credentials(remote_ufrag, remote_pwd)
            self._ice = lite
            # Any address that passed a check may carry DTLS and media (RFC 8445 §11.1).
            self._address_ok = lite.is_valid_address
        else:
            if remote_ufrag is None or remote_pwd is None:
                raise ValueError("a controlling ICE agent needs the remote ufrag and pwd")
            if tie_breaker is None:
                tie_breaker = (rng or random.SystemRandom()).getrandbits(64)
            agent_class = IceControlledAgent if ice_mode is IceMode.CONTROLLED else IceControllingAgent
            controlling = agent_class(
                local_ufrag, local_pwd, remote_ufrag, remote_pwd, tie_breaker, rng=rng
            )
            for candidate in remote_candidates:
                controlling.add_remote_candidate(candidate)
            self._ice = controlling
            # We only learn that a pair works when our own check on it succeeds;
            # until a pair is nominated nothing but STUN is expected from the peer.
            self._address_ok = self._is_selected

        self._dtls = DtlsConnection(dtls_role, certificate, remote_fingerprints, srtp_profiles, mtu)
        self._srtp: SrtpContext | None = None
        #: Where DTLS and media go: the ICE-selected remote address.
        self._selected: Address | None = None
        #: Fallback destination for DTLS before any nomination: where the peer's DTLS came from.
        self._dtls_source: Address | None = None
        self._connect_deadline: float | None = None
        #: Set when consent is lost: RFC 7675 forbids sending anything more to that peer.
        self._silenced = False
        self._outbox: list[tuple[bytes, Address]] = []
        self._events: collections.deque[PeerTransportEvent] = collections.deque()

    # ------------------------------------------------------------------ queries

    @property
    def local_ufrag(self) -> str:
        return self._local_ufrag

    @property
    def selected_address(self) -> Address | None:
        return self._selected

    @property
    def srtp_profile(self) -> SrtpProfile | None:
        return self._srtp.profile if self._srtp is not None else None

    @property
    def peer_certificate_der(self) -> bytes:
        return self._dtls.peer_certificate_der

    @property
    def ice_counters(self):
        return self._ice.counters

    @property
    def dtls_counters(self):
        return self._dtls.counters

    def accepts(self, data: bytes, addr: Address) -> bool:
        """Whether a datagram on a shared socket belongs to this transport.

        STUN Binding requests by the local ufrag in USERNAME (how a mux finds a
        new peer); other STUN by the address (responses to our checks); DTLS and
        media only from an address ICE has validated.
        """
        if data and data[0] < 4:
            ufrag = ufrag_of(data)
            if ufrag is not None:
                return ufrag == self._local_ufrag
            if isinstance(self._ice, IceControllingAgent):
                return any(pair.addr == addr for pair in self._ice.pairs)
            return self._ice.is_valid_address(addr)
        return self._address_ok(addr)

    # ------------------------------------------------------------------ inputs

    def start(self, now: float) -> None:
        """Start the connect timer; a controlling agent sends its first check."""
        if self.state is not TransportState.NEW:
            return
        self.state = TransportState.CONNECTING
        self._connect_deadline = now + self._connect_timeout
        if isinstance(self._ice, IceControllingAgent):
            self._ice.start(now)
            self._ice.handle_timeout(now)
            self._pump_ice(now)

    def set_remote_credentials(self, ufrag: str, pwd: str) -> None:
        """Lite only: the remote description arrived after the transport was built."""
        if isinstance(self._ice, IceLiteAgent):
            self._ice.set_remote_credentials(ufrag, pwd)

    def restart_ice(self, local_ufrag: str, local_pwd: str,
                    remote_ufrag: str | None = None, remote_pwd: str | None = None) -> bool:
        """ICE restart (RFC 8445 §9) on the lite side: new local credentials, and the peer's new
        ones when its description is known. DTLS, SRTP and the address media goes to are kept:
        media keeps flowing on the selected address until the peer nominates again under the new
        credentials (a restart changes the ICE session, not the DTLS association).

        False (nothing changed) on a transport that failed or closed: its keys are gone, only a
        new transport can carry media again.
        """
        if not isinstance(self._ice, IceLiteAgent):
            raise ValueError("ICE restart is implemented for the ICE-lite side only")
        if self.state in (TransportState.FAILED, TransportState.CLOSED):
            return False
        self._ice.restart(local_ufrag, local_pwd)
        if remote_ufrag is not None:
            self._ice.set_remote_credentials(remote_ufrag, remote_pwd)
        self._local_ufrag = local_ufrag
        return True

    def add_remote_candidate(self, candidate: Candidate | None) -> None:
        """Controlling only (a lite agent learns addresses from checks); None ends trickle."""
        if isinstance(self._ice, IceControllingAgent):
            self._ice.add_remote_candidate(candidate)

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """Handle one UDP datagram from ``addr``. Never raises for any bytes.

        A datagram arriving before :meth:`start` starts the transport (a mux may
        hand over a new peer's first check before its owner got to start it).
        """
        state = self.state
        if state is TransportState.CONNECTED:
            first = data[0] if data else 0xFF
            # The media fast path: a range test, a dict lookup, one SRTP call, one event.
            if 127 < first < 192:
                if not self._address_ok(addr):
                    self.counters.unauthenticated_source += 1
                    return
                srtp = self._srtp
                assert srtp is not None  # CONNECTED means SRTP is keyed
                try:
                    if len(data) > 1 and 191 < data[1] < 224:  # RFC 5761 §4: RTCP packet types
                        packet = srtp.unprotect_rtcp(data)
                        self.counters.rtcp_received += 1
                        self._events.append(RtcpReceived(packet))
                    else:
                        packet = srtp.unprotect_rtp(data)
                        self.counters.rtp_received += 1
                        self._events.append(RtpReceived(packet))
                except SrtpAuthenticationError:
                    self.counters.srtp_auth_failed += 1
                except SrtpReplayError:
                    self.counters.srtp_replayed += 1
                except SrtpPacketError:
                    self.counters.malformed += 1
                except SrtpError:
                    self.counters.srtp_other_errors += 1
                return
        elif state is TransportState.NEW:
            self.start(now)
        elif state is not TransportState.CONNECTING:
            self.counters.after_close += 1
            return

        if not data:
            self.counters.unknown_class += 1
            return
        first = data[0]
        if first < 4:
            self._ice.receive_stun(data, addr, now)
            self._pump_ice(now)
        elif 19 < first < 64:
            if not self._address_ok(addr):
                self.counters.unauthenticated_source += 1
                return
            self._dtls_source = addr
            self._dtls.receive_datagram(data, now)
            self._pump_dtls()
        elif 127 < first < 192:
            if not self._address_ok(addr):
                self.counters.unauthenticated_source += 1
            else:
                # Media can overtake the peer's last DTLS flight; SRTP is not keyed yet.
                self.counters.media_before_keys += 1
        else:
            self.counters.unknown_class += 1

    def receive_rtp(self, data: bytes, addr: Address, now: float) -> bytes | None:
        """:meth:`receive_datagram` for a datagram the caller has classed as SRTP (first byte
        128-191, second not an RTCP packet type), returning the RTP packet instead of queueing an
        event: the media path of a caller that routes RTP itself. None when it was dropped and
        counted, or was not media on a connected transport (then it went through
        :meth:`receive_datagram`, whose events are queued as usual). Never raises."""
        if self.state is not TransportState.CONNECTED:
            self.receive_datagram(data, addr, now)
            return None
        if not self._address_ok(addr):
            self.counters.unauthenticated_source += 1
            return None
        srtp = self._srtp
        assert srtp is not None  # CONNECTED means SRTP is keyed
        try:
            packet = srtp.unprotect_rtp(data)
        except SrtpAuthenticationError:
            self.counters.srtp_auth_failed += 1
            return None
        except SrtpReplayError:
            self.counters.srtp_replayed += 1
            return None
        except SrtpPacketError:
            self.counters.malformed += 1
            return None
        except SrtpError:
            self.counters.srtp_other_errors += 1
            return None
        self.counters.rtp_received += 1
        return packet

    def handle_timeout(self, now: float) -> None:
        if self.state in (TransportState.NEW, TransportState.FAILED, TransportState.CLOSED):
            return
        if (
            self.state is TransportState.CONNECTING
            and self._connect_deadline is not None
            and now >= self._connect_deadline
        ):
            ice_state = self._ice.state.value
            dtls_state = self._dtls.state.value
            self._fail(
                f"not connected within {self._connect_timeout:g} s (ICE {ice_state}, DTLS {dtls_state})",
                silent=False,
            )
            return
        self._ice.handle_timeout(now)
        self._pump_ice(now)
        if self.state in (TransportState.FAILED, TransportState.CLOSED):
            return
        self._dtls.handle_timeout(now)
        self._pump_dtls()

    # ------------------------------------------------------------------ sending

    def send_rtp(self, packet: bytes) -> bool:
        """Protect one plain RTP packet and queue it for the selected address.

        Returns False (and counts) when it was dropped: not connected, no
        selected address, or not protectable.
        """
        datagram = self.protect_rtp_datagram(packet)
        if datagram is None:
            return False
        self._outbox.append(datagram)
        return True

    def protect_rtp_datagram(self, packet: bytes) -> tuple[bytes, Address] | None:
        """:meth:`send_rtp` for a fan-out: the protected datagram and its destination are
        returned for the caller to send at once instead of being queued for
        :meth:`datagrams_to_send` — per forwarded packet that saves the outbox, the list
        :meth:`datagrams_to_send` builds, and its ICE and DTLS polls. None (counted as
        :meth:`send_rtp` counts) when it cannot be sent.
        """
        srtp = self._srtp
        addr = self._selected
        # A failed transport (including one silenced by consent loss) is never CONNECTED.
        if srtp is None or addr is None or self.state is not TransportState.CONNECTED:
            self.counters.send_not_ready += 1
            return None
        try:
            protected = srtp.protect_rtp(packet)
        except SrtpError:
            self.counters.send_invalid += 1
            return None
        self.counters.rtp_sent += 1
        return protected, addr

    def rtp_send_context(self) -> tuple[SrtpContext, Address] | None:
        """What `protect_rtp_datagram` would protect with and send to now (a compiled fan-out
        protects and sends itself, through the same context): None unless connected."""
        if self._srtp is None or self._selected is None or self.state is not TransportState.CONNECTED:
            return None
        return self._srtp, self._selected

    def count_rtp_sent(self, sent: int, invalid: int) -> None:
        """Packets a compiled fan-out protected (and tried to send) for this transport."""
        self.counters.rtp_sent += sent
        self.counters.send_invalid += invalid

    def send_rtcp(self, packet: bytes) -> bool:
        """Protect one plain RTCP compound packet and queue it; False when dropped."""
        srtp = self._srtp
        addr = self._selected
        if srtp is None or addr is None or self.state is not TransportState.CONNECTED:
            self.counters.send_not_ready += 1
            return False
        try:
            protected = srtp.protect_rtcp(packet)
        except SrtpError:
            self.counters.send_invalid += 1
            return False
        self.counters.rtcp_sent += 1
        self._outbox.append((protected, addr))
        return True

    def send_data(self, data: bytes) -> bool:
        """Send DTLS application data (an SCTP packet) as one record; False when not connected."""
        if self.state is not TransportState.CONNECTED:
            self.counters.send_not_ready += 1
            return False
        if not self._dtls.send_application_data(data):
            # CONNECTED means DTLS is connected too, so only the size can be refused.
            self.counters.send_invalid += 1
            return False
        return True

    def close(self) -> None:
        """Orderly close: queue a DTLS close_notify (if a handshake started) and stop."""
        if self.state in (TransportState.FAILED, TransportState.CLOSED):
            return
        self._dtls.close()
        self._pump_dtls()
        if self.state is not TransportState.CLOSED:
            # DTLS had already ended on its own; make the close explicit anyway.
            self._enter_closed(by_peer=False)

    # ------------------------------------------------------------------ outputs

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        """Every datagram due now, with its destination: STUN first, then DTLS, then media."""
        out: list[tuple[bytes, Address]] = []
        if self._silenced:
            # Consent lost (RFC 7675 §5.1): nothing more may go to that peer.
            self._ice.datagrams_to_send(now)
            self._dtls.datagrams_to_send(now)
            self._outbox = []
            return out
        out.extend(self._ice.datagrams_to_send(now))
        dtls_out = self._dtls.datagrams_to_send(now)
        if dtls_out:
            dest = self._selected or self._dtls_source
            if dest is None:
                self.counters.dtls_unroutable += len(dtls_out)
            else:
                out.extend((datagram, dest) for datagram in dtls_out)
        if self._outbox:
            out.extend(self._outbox)
            self._outbox = []
        return out

    def next_event(self) -> PeerTransportEvent | None:
        return self._events.popleft() if self._events else None

    def next_deadline(self) -> float | None:
        if self.state not in (TransportState.CONNECTING, TransportState.CONNECTED):
            return None
        timers = [self._ice.next_deadline(), self._dtls.next_deadline()]
        if self.state is TransportState.CONNECTING:
            timers.append(self._connect_deadline)
        due = [t for t in timers if t is not None]
        return min(due) if due else None

    # ------------------------------------------------------------------ internals

    def _is_selected(self, addr: Address) -> bool:
        return addr == self._selected

    def _pump_ice(self, now: float) -> None:
        while (event := self._ice.next_event()) is not None:
            if isinstance(event, IceSelectedPairChanged):
                self._select(event.addr)
            elif isinstance(event, IceConnected):
                self._select(event.addr)
                if self.dtls_role is DtlsRole.CLIENT and self._dtls.state is DtlsState.NEW:
                    self._dtls.start(now)
                    self._pump_dtls()
            elif isinstance(event, IceRestartCompleted):
                self._events.append(IceRestarted(event.addr))
            elif isinstance(event, IceConsentExpired):
                self._fail(f"ICE consent expired for {event.addr[0]}:{event.addr[1]}", silent=True)
            elif isinstance(event, IceFailed):
                self._fail(f"ICE failed: {event.reason}", silent=False)
            if self.state in (TransportState.FAILED, TransportState.CLOSED):
                return

    def _select(self, addr: Address) -> None:
        if addr == self._selected:
            return
        self._selected = addr
        self._events.append(SelectedAddressChanged(addr))

    def _pump_dtls(self) -> None:
        while (event := self._dtls.next_event()) is not None:
            if isinstance(event, ApplicationDataReceived):
                self._events.append(DataReceived(event.data))
            elif isinstance(event, HandshakeCompleted):
                self._on_handshake_completed(event)
            elif isinstance(event, ConnectionClosed):
                self._enter_closed(by_peer=event.by_peer)
            elif isinstance(event, ConnectionFailed):
                error = event.error
                alert = getattr(error.alert, "name", error.alert)
                self._fail(f"DTLS {type(error).__name__}: {error} (alert {alert})", silent=False)
            if self.state in (TransportState.FAILED, TransportState.CLOSED):
                return

    def _on_handshake_completed(self, event: HandshakeCompleted) -> None:
        profile = event.srtp_profile
        if profile is None:
            # RFC 5764 §4.1.1: WebRTC media needs use_srtp; a plain DTLS peer is useless here.
            self._dtls.close()
            self._fail("DTLS completed without negotiating an SRTP profile (use_srtp)", silent=False)
            return
        material = self._dtls.export_keying_material(DTLS_SRTP_EXPORTER_LABEL, profile.keying_material_length)
        self._srtp = SrtpContext.from_keying_material(
            profile, material, is_client=self.dtls_role is DtlsRole.CLIENT, replay_window=self._replay_window
        )
        self.state = TransportState.CONNECTED
        self._connect_deadline = None
        addr = self._selected or self._dtls_source
        assert addr is not None  # DTLS only runs with an address that passed ICE
        self._events.append(TransportConnected(addr, profile, event.peer_fingerprint))

    def _fail(self, reason: str, *, silent: bool) -> None:
        if self.state in (TransportState.FAILED, TransportState.CLOSED):
            return
        self.state = TransportState.FAILED
        self._srtp = None
        self._outbox = []
        self._silenced = silent
        self._events.append(TransportFailed(reason))

    def _enter_closed(self, by_peer: bool) -> None:
        if self.state in (TransportState.FAILED, TransportState.CLOSED):
            return
        self.state = TransportState.CLOSED
        self._srtp = None
        self._outbox = []
        self._events.append(TransportClosed(by_peer))
