"""One peer's whole media connection as one sans-IO object (the shape of str0m's ``Rtc``).

A :class:`PeerSession` owns everything that runs over one ICE-selected 5-tuple:

* ICE, DTLS 1.2 and SRTP — its :class:`~rtp.peer_transport.PeerTransport`;
* the SCTP association for data channels, once the SDP negotiated ``m=application``
  (:meth:`PeerSession.enable_data_channels`); DTLS application data goes to it, and what it
  sends goes out as DTLS records;
* the transport-wide congestion control feedback recorder, once the SDP negotiated the
  transport-cc header extension (:meth:`PeerSession.set_transport_cc_extension`): every RTP
  arrival is noted and the RTCP feedback goes out on its own schedule.

A driver (one socket, one clock) needs nothing else, and merges no timers::

    session.start(now)
    session.receive(datagram, addr, now)            # every datagram from the socket
    session.handle_timeout(now)                     # when now >= session.next_deadline()
    for datagram, addr in session.datagrams_to_send(now): sock.sendto(datagram, addr)
    while (event := session.next_event()) is not None: ...

After each input (a datagram, a timeout, a send, a close) drain ``datagrams_to_send`` and
then the events, and read ``next_deadline()`` again. The verbs are those of all of ``rtp/``
(see :mod:`rtp`): sends return bool and never raise.

The per-packet send paths — :attr:`PeerSession.protect_rtp_datagram` for a fan-out,
``send_rtp`` / ``send_rtcp`` — are the transport's own bound methods, not wrappers: the
forwarder calls them once per subscriber per packet, so the session adds no call and no
allocation to them.

Closing (:meth:`PeerSession.close`) drains: with an established association, SCTP shuts down
first (what was queued is delivered and acknowledged, RFC 9260 §9.2), then DTLS sends
close_notify. A peer that stops answering cannot hold the close up longer than
``close_timeout``: then the association is aborted and DTLS closes anyway. An owner that
cannot wait (it will not drive the session again) closes with ``drain=False``: close_notify
at once.
"""

from __future__ import annotations

import collections
import enum
import random
import struct
from collections.abc import Callable
from typing import Optional, Union

import attrs
from aioice.candidate import Candidate

from rtp.dtls import DtlsRole
from rtp.errors import ParseError
from rtp.packet import find_extension_span
from rtp.peer_transport import PeerTransport, TransportState
from rtp.peer_transport_events import (
    Address,
    DataReceived,
    IceRestarted,
    RtcpReceived,
    RtpReceived,
    SelectedAddressChanged,
    TransportClosed,
    TransportConnected,
    TransportFailed,
)
from rtp.sctp import (
    AssociationClosed,
    AssociationEstablished,
    AssociationState,
    ChannelClosed,
    ChannelOpened,
    MessageReceived,
    SctpAssociation,
)
from rtp.twcc import TransportFeedbackRecorder

__all__ = [
    "DEFAULT_CLOSE_TIMEOUT",
    "DEFAULT_FEEDBACK_INTERVAL",
    "PeerSession",
    "PeerSessionCounters",
    "PeerSessionEvent",
    "SessionState",
]

#: How long close() waits for the SCTP shutdown before it gives up and closes DTLS anyway.
DEFAULT_CLOSE_TIMEOUT = 2.0
#: Transport-wide CC feedback period; libwebrtc's receiver reports about as often.
DEFAULT_FEEDBACK_INTERVAL = 0.1
#: RFC 8841 §6.1 / RFC 8831 §5: SCTP port and the message size assumed without a=max-message-size.
DEFAULT_SCTP_PORT = 5000
DEFAULT_REMOTE_MAX_MESSAGE_SIZE = 65536
#: What we accept (and announce in our SDP) by default.
DEFAULT_MAX_MESSAGE_SIZE = 262144

#: An RTP packet's SSRC is the 32-bit word at offset 8.
_read_u32 = struct.Struct("!I").unpack_from

PeerSessionEvent = Union[
    SelectedAddressChanged,
    IceRestarted,
    TransportConnected,
    RtpReceived,
    RtcpReceived,
    TransportFailed,
    TransportClosed,
    AssociationEstablished,
    ChannelOpened,
    MessageReceived,
    ChannelClosed,
    AssociationClosed,
]


class SessionState(enum.Enum):
    NEW = "new"  # start() not called, no datagram yet
    CONNECTING = "connecting"  # ICE and/or DTLS under way
    CONNECTED = "connected"  # SRTP keyed: media (and the association, if any) may flow
    CLOSING = "closing"  # close() called: the association is shutting down, DTLS still up
    CLOSED = "closed"  # DTLS closed, by us or by the peer
    FAILED = "failed"  # ICE, DTLS or the connect timeout gave up; see TransportFailed


_FROM_TRANSPORT = {
    TransportState.NEW: SessionState.NEW,
    TransportState.CONNECTING: SessionState.CONNECTING,
    TransportState.CONNECTED: SessionState.CONNECTED,
    TransportState.CLOSED: SessionState.CLOSED,
    TransportState.FAILED: SessionState.FAILED,
}

#: Association states in which a graceful SCTP shutdown can still deliver something.
_SHUTDOWN_WORTH_WAITING_FOR = {
    AssociationState.ESTABLISHED,
    AssociationState.SHUTDOWN_PENDING,
    AssociationState.SHUTDOWN_SENT,
    AssociationState.SHUTDOWN_RECEIVED,
    AssociationState.SHUTDOWN_ACK_SENT,
}


@attrs.define
class PeerSessionCounters:
    """What the session itself dropped; its parts count theirs (``transport.counters``,
    ``transport.ice_counters``, ``transport.dtls_counters``, ``sctp.counters``)."""

    #: DTLS application data while no association exists (data channels not negotiated, or
    #: not yet): dropped; a peer's SCTP retransmits its INIT.
    data_without_association: int = 0
    #: SCTP packets the transport refused to carry (it stopped being connected).
    sctp_packets_refused: int = 0
    #: RTP whose transport-cc header extension could not be read: no arrival noted.
    transport_cc_unreadable: int = 0
    #: Transport-wide CC feedback packets sent.
    transport_cc_feedback_sent: int = 0


class PeerSession:
    """ICE + DTLS + SRTP + SCTP + TWCC feedback for one peer; see the module docstring."""

    #: Protect one plain RTP packet and hand back ``(datagram, addr)`` to send at once, or None
    #: (counted in ``transport.counters``). The transport's bound method: nothing in between.
    protect_rtp_datagram: Callable[[bytes], Optional[tuple[bytes, Address]]]
    #: Protect and queue one RTP packet / RTCP compound packet for :meth:`datagrams_to_send`.
    send_rtp: Callable[[bytes], bool]
    send_rtcp: Callable[[bytes], bool]
    #: Whether a datagram on a shared socket belongs to this peer (for a mux).
    accepts: Callable[[bytes, Address], bool]

    def __init__(
        self,
        transport: PeerTransport,
        *,
        feedback_ssrc: Optional[int] = None,
        feedback_interval: float = DEFAULT_FEEDBACK_INTERVAL,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        rng: Optional[random.Random] = None,
    ) -> None:
        """Take ownership of ``transport``, which nobody may drive directly from now on.

        ``feedback_ssrc`` is the sender SSRC of our transport-cc feedback (random by default).
        """
        if transport.state is not TransportState.NEW:
            raise ValueError("a PeerSession needs a transport that nothing has driven yet")
        self.transport = transport
        self.counters = PeerSessionCounters()
        if feedback_ssrc is None:
            feedback_ssrc = (rng or random.SystemRandom()).getrandbits(32) or 1
        self._feedback = TransportFeedbackRecorder(feedback_ssrc, feedback_interval)
        self._transport_cc_id: Optional[int] = None
        self._sctp: Optional[SctpAssociation] = None
        self._close_timeout = close_timeout
        #: Set while close() waits for the association's shutdown: when to stop waiting.
        self._drain_deadline: Optional[float] = None
        self._events: collections.deque[PeerSessionEvent] = collections.deque()
        self.protect_rtp_datagram = transport.protect_rtp_datagram
        self.send_rtp = transport.send_rtp
        self.send_rtcp = transport.send_rtcp
        self.accepts = transport.accepts
        # Bound once: receive() runs for every media datagram.
        self._receive_datagram = transport.receive_datagram
        self._transport_receive_rtp = transport.receive_rtp
        self._next_transport_event = transport.next_event
        self._record_arrival = self._feedback.record

    # ------------------------------------------------------------------ queries

    @property
    def state(self) -> SessionState:
        if self._drain_deadline is not None:
            return SessionState.CLOSING
        return _FROM_TRANSPORT[self.transport.state]

    @property
    def is_alive(self) -> bool:
        """False once closed or failed. Drain :meth:`datagrams_to_send` once more after that
        (a close_notify may be waiting); nothing else will come."""
        return self.state not in (SessionState.CLOSED, SessionState.FAILED)

    @property
    def sctp(self) -> Optional[SctpAssociation]:
        """The data channels' association, once enabled: ``open_channel``, ``send``,
        ``close_channel``, ``buffered_amount``... Its output and events go through the session."""
        return self._sctp

    @property
    def feedback_recorder(self) -> TransportFeedbackRecorder:
        return self._feedback

    # ------------------------------------------------------------------ configuration (from SDP)

    def enable_data_channels(
        self,
        now: float,
        *,
        remote_port: int = DEFAULT_SCTP_PORT,
        remote_max_message_size: int = DEFAULT_REMOTE_MAX_MESSAGE_SIZE,
        local_port: int = DEFAULT_SCTP_PORT,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> SctpAssociation:
        """The SDP accepted ``m=application``: create the association (once; later calls return
        it). The DTLS client's side sends INIT as soon as DTLS is up (RFC 8261 §5)."""
        if self._sctp is None:
            self._sctp = SctpAssociation(
                self.transport.dtls_role is DtlsRole.CLIENT,
                local_port=local_port,
                remote_port=remote_port,
                max_message_size=max_message_size,
                remote_max_message_size=remote_max_message_size,
            )
            if self.transport.state is TransportState.CONNECTED:
                self._sctp.start(now)
        return self._sctp

    def add_remote_candidate(self, candidate: Optional[Candidate]) -> None:
        """A remote candidate from the SDP or trickled (RFC 8838); None ends the trickle. A
        controlling agent pairs it and checks it by :meth:`next_deadline`; a lite agent learns
        addresses from the peer's checks and ignores it."""
        self.transport.add_remote_candidate(candidate)

    def set_transport_cc_extension(self, ext_id: Optional[int]) -> None:
        """The RFC 8285 id the SDP gave the transport-wide sequence number extension, or None
        to stop noting arrivals. Feedback then goes to the peer every ``feedback_interval``."""
        if ext_id is not None and not 1 <= ext_id <= 255:
            raise ValueError(f"RFC 8285 extension ids are 1..255, not {ext_id}")
        self._transport_cc_id = ext_id

    # ------------------------------------------------------------------ inputs

    def restart_ice(self, local_ufrag: str, local_pwd: str,
                    remote_ufrag: Optional[str] = None, remote_pwd: Optional[str] = None) -> bool:
        """ICE restart with new credentials; the DTLS association, SRTP keys and SCTP association
        carry on. See PeerTransport.restart_ice (False: the transport is no longer alive)."""
        return self.transport.restart_ice(local_ufrag, local_pwd, remote_ufrag, remote_pwd)

    def set_remote_credentials(self, ufrag: str, pwd: str) -> None:
        """The peer's ICE credentials, from a description that arrived after a restart."""
        self.transport.set_remote_credentials(ufrag, pwd)

    def start(self, now: float) -> None:
        """Start the connect timer; a controlling agent queues its first check."""
        self.transport.start(now)
        self._pump_transport(now)

    def receive(self, datagram: bytes, addr: Address, now: float) -> None:
        """One UDP datagram from ``addr``. Never raises, whatever the bytes."""
        self._receive_datagram(datagram, addr, now)
        self._pump_transport(now)
        if self._drain_deadline is not None:
            self._close_if_drained(now)

    def receive_rtp(self, datagram: bytes, addr: Address, now: float) -> Optional[bytes]:
        """The media path: :meth:`receive` for a datagram the caller has classed as SRTP (first
        byte 128-191, second not an RTCP packet type), the RTP packet returned (its arrival noted
        for transport-cc feedback) instead of queued as an event. None: dropped and counted, or
        not media yet (before the keys), with whatever that caused queued as by :meth:`receive`."""
        packet = self._transport_receive_rtp(datagram, addr, now)
        if packet is None:
            self._pump_transport(now)
            if self._drain_deadline is not None:
                self._close_if_drained(now)
            return None
        if self._transport_cc_id is not None:
            self._note_arrival(packet, now)
        return packet

    def handle_timeout(self, now: float) -> None:
        """Everything due at ``now``: ICE, DTLS and connect timers, SCTP retransmissions and
        delayed SACKs, transport-cc feedback, the close drain's limit. Early calls do nothing."""
        transport = self.transport
        transport.handle_timeout(now)
        self._pump_transport(now)
        if transport.state is TransportState.CONNECTED:
            sctp = self._sctp
            if sctp is not None:
                due = sctp.next_deadline()
                if due is not None and due <= now:
                    sctp.handle_timeout(now)
                    self._pump_sctp(sctp)
            due = self._feedback.next_deadline()
            if due is not None and due <= now:
                for report in self._feedback.packets_to_send(now):
                    if transport.send_rtcp(report):
                        self.counters.transport_cc_feedback_sent += 1
        if self._drain_deadline is not None:
            if now >= self._drain_deadline:
                # The peer never finished the shutdown: abort (it learns from the ABORT chunk if
                # it is still there) and close DTLS regardless.
                sctp = self._sctp
                assert sctp is not None  # draining only ever waits for an association
                sctp.abort("close timed out waiting for the SCTP shutdown")
                self._pump_sctp(sctp)
                self._close_transport(now)
            else:
                self._close_if_drained(now)

    def close(self, now: float, *, drain: bool = True) -> None:
        """Orderly close: SCTP shutdown first when an association is up (bounded by
        ``close_timeout``), then DTLS close_notify. Idempotent.

        ``drain=False`` is for an owner that goes away now and will not drive the session any
        more (a server dropping a participant): no SCTP shutdown to wait for — what the
        association has ready goes out, then close_notify at once, and the association ends
        with DTLS (the peer's ends with the peer's DTLS). It also cuts a drain under way short.
        """
        if not self.is_alive:
            return
        if self._drain_deadline is not None:
            if not drain:
                self._close_transport(now)
            return
        sctp = self._sctp
        if (
            drain
            and sctp is not None
            and self.transport.state is TransportState.CONNECTED
            and sctp.state in _SHUTDOWN_WORTH_WAITING_FOR
        ):
            sctp.shutdown()
            self._drain_deadline = now + self._close_timeout
            self._close_if_drained(now)
        else:
            self._close_transport(now)

    # ------------------------------------------------------------------ outputs

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        """Every datagram ready to go, with its destination: STUN, DTLS (handshake and the
        association's packets), SRTP/SRTCP."""
        if self._sctp is not None and self.transport.state is TransportState.CONNECTED:
            self._flush_sctp(self._sctp, now)
        return self.transport.datagrams_to_send(now)

    def next_event(self) -> Optional[PeerSessionEvent]:
        return self._events.popleft() if self._events else None

    def next_deadline(self) -> Optional[float]:
        """The earliest time :meth:`handle_timeout` has work to do, or None."""
        transport = self.transport
        deadline = transport.next_deadline()
        if transport.state is TransportState.CONNECTED:
            others = [self._feedback.next_deadline(), self._drain_deadline]
            if self._sctp is not None:
                others.append(self._sctp.next_deadline())
            for t in others:
                if t is not None and (deadline is None or t < deadline):
                    deadline = t
        return deadline

    # ------------------------------------------------------------------ internals

    def _pump_transport(self, now: float) -> None:
        """Move the transport's events to ours: application data to the association, RTP
        arrivals to the feedback recorder, the ends of the transport to the association."""
        next_transport_event = self._next_transport_event
        events = self._events
        while (event := next_transport_event()) is not None:
            kind = type(event)
            if kind is RtpReceived:
                if self._transport_cc_id is not None:
                    self._note_arrival(event.packet, now)  # type: ignore[union-attr]
                events.append(event)  # type: ignore[arg-type]
            elif kind is DataReceived:
                sctp = self._sctp
                if sctp is None:
                    self.counters.data_without_association += 1
                else:
                    sctp.receive_packet(event.data, now)  # type: ignore[union-attr]
                    self._pump_sctp(sctp)
            elif kind is TransportConnected:
                events.append(event)  # type: ignore[arg-type]
                if self._sctp is not None:
                    self._sctp.start(now)
            elif kind is TransportClosed or kind is TransportFailed:
                # Nothing more can reach the peer: the association ends here, before the
                # transport's own event, so the owner sees the inner layer close first.
                self._drain_deadline = None
                if self._sctp is not None:
                    self._sctp.abort("DTLS transport closed" if kind is TransportClosed else "DTLS transport failed")
                    self._pump_sctp(self._sctp)
                events.append(event)  # type: ignore[arg-type]
            else:
                events.append(event)  # type: ignore[arg-type]

    def _pump_sctp(self, sctp: SctpAssociation) -> None:
        events = self._events
        while (event := sctp.next_event()) is not None:
            events.append(event)

    def _flush_sctp(self, sctp: SctpAssociation, now: float) -> None:
        send_data = self.transport.send_data
        for packet in sctp.packets_to_send(now):
            if not send_data(packet):
                self.counters.sctp_packets_refused += 1

    def _note_arrival(self, packet: bytes, now: float) -> None:
        try:
            span = find_extension_span(packet, self._transport_cc_id)  # type: ignore[arg-type]
        except ParseError:
            self.counters.transport_cc_unreadable += 1
            return
        if span is None:
            return  # this stream does not carry it (audio without transport-cc, say)
        start, length = span
        if length < 2:
            self.counters.transport_cc_unreadable += 1
            return
        self._record_arrival((packet[start] << 8) | packet[start + 1], _read_u32(packet, 8)[0], now)

    def _close_if_drained(self, now: float) -> None:
        sctp = self._sctp
        if sctp is not None and sctp.state is AssociationState.CLOSED:
            self._close_transport(now)

    def _close_transport(self, now: float) -> None:
        """The association's last packets (a SHUTDOWN COMPLETE, an ABORT) go out as DTLS
        records ahead of close_notify; then DTLS closes and the association with it."""
        self._drain_deadline = None
        sctp = self._sctp
        if sctp is not None and self.transport.state is TransportState.CONNECTED:
            self._flush_sctp(sctp, now)
        self.transport.close()
        self._pump_transport(now)
