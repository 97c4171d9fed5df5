"""A participant's two peer connections on the node's UDP mux.

Each peer connection is one `PeerSession` (rtp.peer_session: ICE-lite, DTLS, SRTP, the SCTP
association once data channels are negotiated, transport-wide CC feedback once the extension
is) registered in the mux (trio_sfu.media.udp_mux) under a `TransportEndpoint`: the mux hands
it each datagram synchronously, it feeds the session and routes what comes out — RTP to the
publisher ingest, RTCP (parsed once) to whoever owns the packets' tracks, the association's
events to the data channels (trio_sfu.media.data_channels), and the connection's state changes
to the log and the counters. The session's one `next_deadline` covers all its protocol timers
(ICE, DTLS, SCTP, TWCC): the endpoint is one `Timed` part of the participant's timer loop and
merges nothing by hand. `ParticipantTransports` holds the participant's ICE credentials (one
ufrag/pwd per peer connection, chosen before any SDP) and its two endpoints once negotiated,
and gives the rest of the participant's media the send paths. In single peer connection mode
(LiveKit's `/rtc/v1`) there is no subscriber PC: the down tracks send on the publisher PC, the
one peer connection the client offers.

The media hot path: a media datagram is unprotected by the session and handed on at once (no
outbox round trip: media input leaves nothing to send); the down tracks' send (`send_down` ->
`TransportEndpoint.send_rtp`) is SRTP protect and a non-blocking `sendto`, nothing queued.
"""

from __future__ import annotations

import json
import secrets
from typing import Callable, Optional, Protocol, Sequence

import trio
from livekit.protocol import rtc

from rtp import rtcp
from rtp.dtls import DtlsCertificate
from rtp.dtls import DtlsRole as TransportDtlsRole
from rtp.errors import ParseError
from rtp.peer_session import PeerSession, PeerSessionEvent
from rtp.peer_transport import IceMode, PeerTransport
from rtp.peer_transport_events import (
    Address,
    RtcpReceived,
    RtpReceived,
    TransportClosed,
    TransportConnected,
    TransportFailed,
)
from rtp.sctp import AssociationClosed, AssociationEstablished, ChannelClosed, ChannelOpened, MessageReceived
from sdp.model import Fingerprint
from sdp.negotiator import DtlsRole, LocalParams

from trio_sfu import metrics as m
from trio_sfu.log import ContextLogger
from trio_sfu.media.data_channels import DataTransport, ParticipantData
from trio_sfu.media.udp_mux import UdpMux

PUBLISHER = "publisher"
SUBSCRIBER = "subscriber"

#: Media in: an RTP packet (after SRTP) and the time it arrived.
RtpHandler = Callable[[bytes, float], None]
#: RTCP in, parsed once for everyone it concerns.
RtcpHandler = Callable[[Sequence[rtcp.RtcpPacket], float], None]
#: "Make the timer loop wake no later than this deadline" (trio_sfu.media.timers.TimerLoop.wake_by).
WakeBy = Callable[[Optional[float]], None]

#: The session's events about its SCTP association: the data channels' business.
_DATA_EVENTS = (MessageReceived, ChannelOpened, ChannelClosed, AssociationEstablished, AssociationClosed)


def new_ice_credentials() -> tuple[str, str]:
    # RFC 8839: ufrag >= 4 chars, pwd >= 22 chars of ice-char.
    return secrets.token_hex(4), secrets.token_hex(12)


class TransportService(Protocol):
    """What the transports need of the node's media service (trio_sfu.media.service)."""

    certificate: DtlsCertificate
    fingerprints: tuple[Fingerprint, ...]
    candidates: tuple[str, ...]
    mux: Optional[UdpMux]


class TransportEndpoint:
    """One peer connection: its PeerSession as registered in the UDP mux (a `MuxEndpoint`), with
    where its RTP, RTCP and data go."""

    def __init__(self, name: str, session: PeerSession, mux: UdpMux, *, on_rtp: Optional[RtpHandler],
                 on_rtcp: RtcpHandler, on_connected: Optional[Callable[[float], None]], wake_by: WakeBy,
                 metrics: m.Metrics, log: ContextLogger) -> None:
        self.name = name
        self.session = session
        # What the mux routes by (its local ufrag, the addresses it accepts); only read, never
        # driven: the session drives it.
        self.transport: PeerTransport = session.transport
        self.connected = False
        self.data: Optional[DataTransport] = None  # the channel policy on its association, once negotiated
        self._mux = mux
        self._on_rtp = on_rtp  # None: RTP on this connection is not ours to take (subscriber PC)
        self._on_rtcp = on_rtcp
        self._on_connected = on_connected
        self._wake_by = wake_by
        # Media moves only this one of the session's deadlines: transport-cc feedback is armed
        # by the first arrival after a report. The loop is told once per deadline, not per packet.
        self._feedback_deadline = session.feedback_recorder.next_deadline
        self._feedback_told: Optional[float] = None
        self._next_event = session.next_event
        self._metrics = metrics
        self._log = log

    # ---- MuxEndpoint -----------------------------------------------------------------------

    def on_datagram(self, data: bytes, addr: Address, now: float) -> None:
        session = self.session
        session.receive(data, addr, now)
        if data and 127 < data[0] < 192:
            # RTP/RTCP (RFC 7983): the media path. The session leaves nothing to send (what the
            # handlers send goes out on its own), and of its timers only the feedback's can
            # have moved.
            next_event = self._next_event
            on_rtp = self._on_rtp
            while (event := next_event()) is not None:
                if type(event) is RtpReceived and on_rtp is not None:
                    on_rtp(event.packet, now)
                else:
                    self._route(event, now)
            due = self._feedback_deadline()
            if due is not None and due != self._feedback_told:
                self._feedback_told = due
                self._wake_by(due)
        else:
            # STUN, DTLS, SCTP: any of the session's timers may have moved earlier.
            self.pump(now)
            self._wake_by(session.next_deadline())

    def pump(self, now: float) -> None:
        """Route the session's events, then send what it has ready."""
        next_event = self._next_event
        while (event := next_event()) is not None:
            self._route(event, now)
        self.flush(now)

    def _route(self, event: PeerSessionEvent, now: float) -> None:
        kind = type(event)
        if kind is RtpReceived:
            if self._on_rtp is not None:
                self._on_rtp(event.packet, now)
        elif kind is RtcpReceived:
            self._receive_rtcp(event.packet, now)
        elif kind in _DATA_EVENTS:
            if self.data is not None:
                self.data.on_event(event, now)
        elif kind is TransportConnected:
            self.connected = True
            self._metrics.inc(m.MEDIA_TRANSPORT_CONNECTED)
            self._log.info("transport connected", kv={"pc": self.name, "addr": f"{event.addr[0]}:{event.addr[1]}",
                                                      "srtp": event.srtp_profile.name})
            if self._on_connected is not None:
                self._on_connected(now)
        elif kind is TransportFailed:
            self._metrics.inc(m.MEDIA_TRANSPORT_FAILED)
            self._log.warning("transport failed", kv={"pc": self.name, "reason": event.reason})
        elif kind is TransportClosed:
            self._log.info("transport closed", kv={"pc": self.name, "by_peer": event.by_peer})

    def _receive_rtcp(self, packet: bytes, now: float) -> None:
        try:
            packets = rtcp.parse_rtcp(packet)
        except ParseError:
            self._metrics.inc(m.MEDIA_RTCP_MALFORMED)
            return
        self._on_rtcp(packets, now)

    # ---- out -------------------------------------------------------------------------------

    def flush(self, now: float) -> None:
        out = self.session.datagrams_to_send(now)
        if out:
            self._mux.send(out)

    def send_queued(self, now: float) -> None:
        """Something was queued in the session outside its inputs (a data channel message, an
        association started): send it, and wake the timer loop for what that scheduled."""
        self.flush(now)
        self._wake_by(self.session.next_deadline())

    def send_rtp(self, packet: bytes) -> bool:
        """The down tracks' send: protected and sent at once (no outbox round trip). False when
        the transport cannot send or the socket buffer is full, so the down track counts it."""
        out = self.session.protect_rtp_datagram(packet)
        return out is not None and self._mux.send_one(out[0], out[1])

    def send_rtcp(self, packet: bytes) -> bool:
        if not self.session.send_rtcp(packet):
            return False
        self.flush(trio.current_time())
        return True

    # ---- data channels ---------------------------------------------------------------------

    def open_data(self, data: ParticipantData, remote: tuple[bool, int, int],
                  downlink: bool = False, client_channels: bool = False) -> Optional[DataTransport]:
        """Once this connection's SDP accepted an m=application (`remote`: whether it did, its
        sctp-port and max-message-size): the session's SCTP association, attached to the
        participant's data path."""
        has_application, remote_port, remote_max_message_size = remote
        if self.data is not None or not has_application or data.closed:
            return self.data
        now = trio.current_time()
        association = self.session.enable_data_channels(now, remote_port=remote_port,
                                                        remote_max_message_size=remote_max_message_size)
        self.data = data.attach(self.name, association, flush=self.send_queued, downlink=downlink,
                                client_channels=client_channels, now=now)
        # On a transport already up the association started at once (the DTLS client's INIT).
        self.send_queued(now)
        return self.data

    # ---- Timed (trio_sfu.media.timers) ------------------------------------------------------

    def next_deadline(self) -> Optional[float]:
        return self.session.next_deadline()

    def handle_timeout(self, now: float) -> None:
        t = self.session.next_deadline()
        if t is not None and t <= now:
            self.session.handle_timeout(now)
            self.pump(now)

    def close(self, now: float) -> None:
        """Close the session at once (the participant is going: nobody will drive a drain),
        send what that produces, leave the mux; its counters outlive it."""
        session = self.session
        session.close(now, drain=False)
        self.flush(now)
        self._mux.unregister(self)
        m.fold_counters(self._metrics, "media_transport", session.transport.counters)
        m.fold_counters(self._metrics, "media_session", session.counters)


class ParticipantTransports:
    """A participant's ICE credentials and, once negotiated, its publisher and subscriber
    peer connections; `Timed` for both (each session's protocol timers, all of them)."""

    def __init__(self, service: TransportService, *, wake_by: WakeBy, metrics: m.Metrics, log: ContextLogger,
                 single_pc: bool = False) -> None:
        self._service = service
        # One peer connection (the client's offer) carries both directions.
        self.single_pc = single_pc
        self._wake_by = wake_by
        self._metrics = metrics
        self._log = log
        pub_ufrag, pub_pwd = new_ice_credentials()
        sub_ufrag, sub_pwd = new_ice_credentials()
        self.pub_local = LocalParams(pub_ufrag, pub_pwd, service.fingerprints, service.candidates)
        self.sub_local = LocalParams(sub_ufrag, sub_pwd, service.fingerprints, service.candidates)
        self.publisher: Optional[TransportEndpoint] = None
        self.subscriber: Optional[TransportEndpoint] = None

    def open_publisher(self, role: DtlsRole, ufrag: str, pwd: str, fingerprints: tuple[Fingerprint, ...], *,
                       on_rtp: RtpHandler, on_rtcp: RtcpHandler,
                       on_connected: Optional[Callable[[float], None]] = None) -> TransportEndpoint:
        """The publisher PC, once (the client's first offer names its ICE and DTLS peer)."""
        if self.publisher is None:
            self.publisher = self._open(PUBLISHER, self.pub_local, role, ufrag, pwd, fingerprints,
                                        on_rtp=on_rtp, on_rtcp=on_rtcp, on_connected=on_connected)
        return self.publisher

    def open_subscriber(self, role: DtlsRole, ufrag: str, pwd: str, fingerprints: tuple[Fingerprint, ...], *,
                        on_rtcp: RtcpHandler, on_connected: Callable[[float], None]) -> TransportEndpoint:
        """The subscriber PC, once (the client's first answer names its ICE and DTLS peer)."""
        if self.subscriber is None:
            self.subscriber = self._open(SUBSCRIBER, self.sub_local, role, ufrag, pwd, fingerprints,
                                         on_rtp=None, on_rtcp=on_rtcp, on_connected=on_connected)
        return self.subscriber

    def _open(self, name: str, local: LocalParams, role: DtlsRole, ufrag: str, pwd: str,
              fingerprints: tuple[Fingerprint, ...], *, on_rtp: Optional[RtpHandler], on_rtcp: RtcpHandler,
              on_connected: Optional[Callable[[float], None]]) -> TransportEndpoint:
        service = self._service
        session = PeerSession(PeerTransport(
            IceMode.LITE,
            TransportDtlsRole(role.value),
            local_ufrag=local.ice_ufrag,
            local_pwd=local.ice_pwd,
            certificate=service.certificate,
            remote_ufrag=ufrag,
            remote_pwd=pwd,
            remote_fingerprints=[(f.algorithm, f.value) for f in fingerprints],
        ))
        session.start(trio.current_time())
        mux = service.mux
        assert mux is not None, "the media service runs (its mux is bound) before any participant negotiates"
        endpoint = TransportEndpoint(name, session, mux, on_rtp=on_rtp, on_rtcp=on_rtcp, on_connected=on_connected,
                                     wake_by=self._wake_by, metrics=self._metrics, log=self._log)
        mux.register(endpoint)
        self._wake_by(session.next_deadline())
        return endpoint

    def candidate_trickles(self, target: int, mid: str) -> list[rtc.SignalResponse]:
        """Our host candidates for the PC `target` (rtc.SignalTarget), as trickle messages."""
        local = self.pub_local if target == rtc.SignalTarget.PUBLISHER else self.sub_local
        out = []
        for candidate in self._service.candidates:
            init = {"candidate": f"candidate:{candidate}", "sdpMid": mid, "sdpMLineIndex": 0,
                    "usernameFragment": local.ice_ufrag}
            out.append(rtc.SignalResponse(trickle=rtc.TrickleRequest(candidateInit=json.dumps(init), target=target)))
        return out

    # ---- the send paths the rest of the participant's media uses -----------------------------

    @property
    def downlink(self) -> Optional[TransportEndpoint]:
        """The peer connection the down tracks send on."""
        return self.publisher if self.single_pc else self.subscriber

    def send_down(self, packet: bytes) -> bool:
        """A down track's RTP to the client (the hot path); False if it could not go."""
        endpoint = self.publisher if self.single_pc else self.subscriber
        return endpoint is not None and endpoint.send_rtp(packet)

    def send_subscriber_rtcp(self, packet: bytes) -> bool:
        endpoint = self.downlink
        return endpoint is not None and endpoint.send_rtcp(packet)

    def send_publisher_rtcp(self, packet: bytes) -> bool:
        endpoint = self.publisher
        return endpoint is not None and endpoint.send_rtcp(packet)

    @property
    def subscriber_connected(self) -> bool:
        """Whether the down tracks' peer connection is up."""
        endpoint = self.downlink
        return endpoint is not None and endpoint.connected

    # ---- Timed (trio_sfu.media.timers) ------------------------------------------------------

    def next_deadline(self) -> Optional[float]:
        deadline = None
        for endpoint in (self.publisher, self.subscriber):
            if endpoint is not None:
                t = endpoint.next_deadline()
                if t is not None and (deadline is None or t < deadline):
                    deadline = t
        return deadline

    def handle_timeout(self, now: float) -> None:
        for endpoint in (self.publisher, self.subscriber):
            if endpoint is not None:
                endpoint.handle_timeout(now)

    def close(self, now: float) -> None:
        """Close both peer connections and unregister them from the mux."""
        for endpoint in (self.publisher, self.subscriber):
            if endpoint is not None:
                endpoint.close(now)


__all__ = ["PUBLISHER", "SUBSCRIBER", "ParticipantTransports", "TransportEndpoint", "TransportService",
           "new_ice_credentials"]
