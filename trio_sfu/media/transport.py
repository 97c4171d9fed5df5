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

import attrs
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
    IceRestarted,
    TcpAddress,
    RtcpReceived,
    RtpReceived,
    TransportClosed,
    TransportConnected,
    TransportFailed,
)
from rtp.sctp import AssociationClosed, AssociationEstablished, ChannelClosed, ChannelOpened, MessageReceived
from rtp.twcc_sender import TransportSequencer, mentions_transport_cc
from sdp.model import Fingerprint, SessionDescription
from sdp.negotiator import DtlsRole, LocalParams, restarts_ice

from trio_sfu import metrics as m
from trio_sfu.log import ContextLogger
from trio_sfu.media.data_channels import DataTransport, ParticipantData
from trio_sfu.media.ice_tcp import ICE_TCP_SEND_NO_PATH, TcpPath
from trio_sfu.media.udp_mux import UDP_DROPPED_SEND_FULL, UDP_SEND_ERROR, UDP_SENT, UdpMux
from trio_sfu.native import NativeSendTarget

PUBLISHER = "publisher"
SUBSCRIBER = "subscriber"

#: Media in: an RTP packet (after SRTP) and the time it arrived.
RtpHandler = Callable[[bytes, float], None]
#: RTCP in, parsed once for everyone it concerns.
RtcpHandler = Callable[[Sequence[rtcp.RtcpPacket], float], None]
#: "Make the timer loop wake no later than this deadline" (trio_sfu.media.timers.TimerLoop.wake_by).
WakeBy = Callable[[Optional[float]], None]
#: Take an identified ICE-TCP connection over (ParticipantTransports.adopt_tcp); False: refused.
AdoptTcp = Callable[[TcpPath], bool]

#: ICE-TCP connections one peer connection may hold: one per server candidate address the
#: client tries, with room for a reconnect.
MAX_TCP_PATHS_PER_TRANSPORT = 4

#: The session's events about its SCTP association: the data channels' business.
_DATA_EVENTS = (MessageReceived, ChannelOpened, ChannelClosed, AssociationEstablished, AssociationClosed)


def new_ice_credentials() -> tuple[str, str]:
    # RFC 8839: ufrag >= 4 chars, pwd >= 22 chars of ice-char.
    return secrets.token_hex(4), secrets.token_hex(12)


class PacketStamper(Protocol):
    """Stamps every RTP packet a subscriber PC sends with its transport-wide sequence number
    (trio_sfu.media.bandwidth.SubscriberBandwidth)."""

    #: Who numbers: the down tracks number their forwarded packets in place through it.
    sequencer: TransportSequencer

    def stamp(self, packet: bytes, now: float) -> bytes: ...

    def unstamp(self, packet: bytes) -> None:
        """`packet`, the last stamped, could not be sent."""


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
                 metrics: m.Metrics, log: ContextLogger, adopt_tcp: Optional[AdoptTcp] = None,
                 remote_credentials: tuple[str, str] = ("", "")) -> None:
        self.name = name
        self.session = session
        # The peer's ICE ufrag and pwd as its latest description gave them (a change is a restart).
        self.remote_credentials = remote_credentials
        # What the mux routes by (its local ufrag, the addresses it accepts); only read, never
        # driven: the session drives it.
        self.transport: PeerTransport = session.transport
        self.connected = False
        self.data: Optional[DataTransport] = None  # the channel policy on its association, once negotiated
        # Set on a subscriber PC whose answer negotiated transport-wide sequence numbers.
        self.stamper: Optional[PacketStamper] = None
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
        self._receive_rtp = session.receive_rtp
        self._metrics = metrics
        self._log = log
        # ICE-TCP connections by their remote end: where what the session sends to a
        # TcpAddress goes (trio_sfu.media.ice_tcp).
        self.tcp_paths: dict[Address, TcpPath] = {}
        self._adopt_tcp = adopt_tcp

    # ---- MuxEndpoint -----------------------------------------------------------------------

    def on_datagram(self, data: bytes, addr: Address, now: float) -> None:
        if data and 127 < data[0] < 192:
            # RTP/RTCP (RFC 7983): the media path. The session leaves nothing to send (what the
            # handlers send goes out on its own), and of its timers only the feedback's can
            # have moved.
            on_rtp = self._on_rtp
            if on_rtp is not None and len(data) > 1 and not 191 < data[1] < 224:  # RTP (RFC 5761 §4)
                # The publisher's media: unprotected and handed on with no event in between.
                packet = self._receive_rtp(data, addr, now)
                if packet is not None:
                    on_rtp(packet, now)
            else:
                self.session.receive(data, addr, now)
            next_event = self._next_event
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
            session = self.session
            session.receive(data, addr, now)
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
                                                      "path": "tcp" if type(event.addr) is TcpAddress else "udp",
                                                      "srtp": event.srtp_profile.name})
            if self._on_connected is not None:
                self._on_connected(now)
        elif kind is IceRestarted:
            self._metrics.inc(m.MEDIA_ICE_RESTARTS_COMPLETED)
            self._log.info("ICE restart completed", kv={"pc": self.name, "addr": f"{event.addr[0]}:{event.addr[1]}"})
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
            if self.stamper is not None and mentions_transport_cc(packet):
                self._metrics.inc(m.MEDIA_TWCC_FEEDBACK_MALFORMED)
            return
        self._on_rtcp(packets, now)

    # ---- out -------------------------------------------------------------------------------

    def flush(self, now: float) -> None:
        out = self.session.datagrams_to_send(now)
        if out:
            if self.tcp_paths:
                udp = []
                for data, addr in out:
                    if type(addr) is TcpAddress:
                        self._send_tcp(data, addr)
                    else:
                        udp.append((data, addr))
                out = udp
            self._mux.send(out)

    def send_queued(self, now: float) -> None:
        """Something was queued in the session outside its inputs (a data channel message, an
        association started): send it, and wake the timer loop for what that scheduled."""
        self.flush(now)
        self._wake_by(self.session.next_deadline())

    def send_rtp(self, packet: bytes) -> bool:
        """The down tracks' send: protected and sent at once (no outbox round trip). False when
        the transport cannot send or the socket buffer is full, so the down track counts it.
        On a subscriber PC with transport-cc the packet is stamped with the next transport-wide
        seq first; one that could not go gives its seq back."""
        stamper = self.stamper
        if stamper is not None:
            packet = stamper.stamp(packet, trio.current_time())
        out = self.session.protect_rtp_datagram(packet)
        if out is None:
            sent = False
        elif type(out[1]) is TcpAddress:
            sent = self._send_tcp(out[0], out[1])
        else:
            sent = self._mux.send_one(out[0], out[1])
        if not sent and stamper is not None:
            stamper.unstamp(packet)
        return sent

    def send_numbered_rtp(self, packet: bytes) -> bool:
        """`send_rtp` for a packet its down track already numbered (`stamper.sequencer.stamp_at`):
        protected and sent; on failure the caller gives the number back."""
        out = self.session.protect_rtp_datagram(packet)
        if out is None:
            return False
        if type(out[1]) is TcpAddress:
            return self._send_tcp(out[0], out[1])
        return self._mux.send_one(out[0], out[1])

    def native_send_target(self) -> Optional[NativeSendTarget]:
        """What the compiled fan-out needs to protect and send for this connection itself
        (trio_sfu.forwarding.fanout): its SRTP context, the UDP socket and the peer's address;
        None unless connected over UDP and numbering transport-wide."""
        if self.stamper is None:
            return None
        context = self.transport.rtp_send_context()
        if context is None or type(context[1]) is TcpAddress:
            return None
        srtp, addr = context
        handle = srtp.outbound_handle
        if handle is None:
            return None
        sock = self._mux.reply_socket(addr)
        return NativeSendTarget(handle, sock.fileno(), (addr[0], addr[1]), self._account_native,
                                owners=(srtp, sock))

    def _account_native(self, sent: int, full: int, errors: int, invalid: int) -> None:
        """What the compiled fan-out did for this connection since it last told."""
        self.transport.count_rtp_sent(sent + full + errors, invalid)
        metrics = self._metrics
        if sent:
            metrics.inc(UDP_SENT, sent)
            metrics.inc(m.FORWARDING_COMPILED_PACKETS, sent)
        if full:
            metrics.inc(UDP_DROPPED_SEND_FULL, full)
        if errors:
            metrics.inc(UDP_SEND_ERROR, errors)

    # ---- ICE-TCP paths (trio_sfu.media.ice_tcp's TcpEndpoint) --------------------------------

    def _send_tcp(self, data: bytes, addr: Address) -> bool:
        path = self.tcp_paths.get(addr)
        if path is None:
            self._metrics.inc(ICE_TCP_SEND_NO_PATH)  # its connection has gone
            return False
        return path.send(data)

    def attach_tcp(self, path: TcpPath) -> bool:
        """Replies to `path.remote` go out on `path` from now on; False when this connection
        already has its share of TCP paths."""
        paths = self.tcp_paths
        if paths.get(path.remote) is not path and len(paths) >= MAX_TCP_PATHS_PER_TRANSPORT:
            self._log.warning("ICE-TCP connection refused: enough TCP paths",
                              kv={"pc": self.name, "limit": MAX_TCP_PATHS_PER_TRANSPORT})
            return False
        paths[path.remote] = path
        path.on_closed = self.detach_tcp
        return True

    def detach_tcp(self, path: TcpPath) -> None:
        if self.tcp_paths.get(path.remote) is path:
            del self.tcp_paths[path.remote]

    def adopt_tcp(self, path: TcpPath) -> bool:
        """An identified ICE-TCP connection of this peer: its frames come here, and its tasks
        run in the participant's nursery (False: the participant is closing)."""
        if self._adopt_tcp is None or self.tcp_paths.get(path.remote) is not path:
            return False
        session_receive = self.on_datagram
        remote = path.remote

        def on_frame(frame: bytes, now: float) -> None:
            session_receive(frame, remote, now)

        path.on_frame = on_frame
        return self._adopt_tcp(path)

    def send_rtcp(self, packet: bytes) -> bool:
        if not self.session.send_rtcp(packet):
            return False
        self.flush(trio.current_time())
        return True

    # ---- ICE restart -------------------------------------------------------------------------

    def restart_ice(self, local: LocalParams, remote: Optional[tuple[str, str]]) -> bool:
        """Restart ICE under `local`'s new credentials (and the peer's, when known): the DTLS
        association and SRTP keys stay, the mux finds the transport by its new ufrag. False if
        the transport is no longer alive (nothing to restart)."""
        old_ufrag = self.transport.local_ufrag
        remote_ufrag, remote_pwd = remote if remote is not None else (None, None)
        if not self.session.restart_ice(local.ice_ufrag, local.ice_pwd, remote_ufrag, remote_pwd):
            self._log.warning("ICE restart on a dead transport", kv={"pc": self.name})
            return False
        if remote is not None:
            self.remote_credentials = remote
        self._mux.rekey(self, old_ufrag)
        self._metrics.inc(m.MEDIA_ICE_RESTARTS)
        self._log.info("ICE restarted", kv={"pc": self.name, "ufrag": local.ice_ufrag})
        return True

    def follow_remote_credentials(self, remote: tuple[str, str]) -> None:
        """The peer's description (after our restart offer) names its new credentials."""
        if remote != self.remote_credentials and all(remote):
            self.remote_credentials = remote
            self.session.set_remote_credentials(*remote)

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
        for path in list(self.tcp_paths.values()):
            path.close()
        self.tcp_paths.clear()
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
        # Identified ICE-TCP connections on their way to `run_tcp_paths`, in this participant's
        # nursery; bounded: more than both PCs' share is refused.
        self._adopted_send, self._adopted_receive = trio.open_memory_channel[TcpPath](
            2 * MAX_TCP_PATHS_PER_TRANSPORT)

    # ---- ICE restarts ----------------------------------------------------------------------

    def publisher_restart_params(self, offer: SessionDescription) -> Optional[LocalParams]:
        """When the client's publisher offer restarts ICE (new ufrag/pwd on a PC already open):
        the new local credentials to answer it with (applied by `restart_publisher` once the
        answer is made); None when the offer keeps the current ICE session."""
        endpoint = self.publisher
        if endpoint is None or not restarts_ice(endpoint.remote_credentials, offer):
            return None
        ufrag, pwd = new_ice_credentials()
        return attrs.evolve(self.pub_local, ice_ufrag=ufrag, ice_pwd=pwd)

    def restart_publisher(self, local: LocalParams, remote: tuple[str, str]) -> None:
        """Answering an ICE-restart offer: the publisher PC takes the new credentials, both sides'."""
        self.pub_local = local
        if self.publisher is not None:
            self.publisher.restart_ice(local, remote)

    def new_subscriber_credentials(self) -> LocalParams:
        """New local credentials for the subscriber PC (our next offer restarts ICE with them)."""
        ufrag, pwd = new_ice_credentials()
        self.sub_local = attrs.evolve(self.sub_local, ice_ufrag=ufrag, ice_pwd=pwd)
        return self.sub_local

    def subscriber_offering(self, local: LocalParams) -> None:
        """An offer with `local`'s credentials is going out on the subscriber PC: an open
        transport restarts ICE with them now (the peer's new credentials come with its answer)."""
        endpoint = self.subscriber
        if endpoint is not None and endpoint.transport.local_ufrag != local.ice_ufrag:
            endpoint.restart_ice(local, None)

    @property
    def resumable(self) -> bool:
        """Whether the media can outlive the signal connection and be resumed: a PC is up (ICE
        and DTLS) and none has failed or closed — a dead transport cannot be ICE-restarted, only
        a full reconnect builds it anew."""
        endpoints = [e for e in (self.publisher, self.subscriber) if e is not None]
        return any(e.connected for e in endpoints) and all(e.session.is_alive for e in endpoints)

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
                                     wake_by=self._wake_by, metrics=self._metrics, log=self._log,
                                     adopt_tcp=self.adopt_tcp, remote_credentials=(ufrag, pwd))
        mux.register(endpoint)
        self._wake_by(session.next_deadline())
        return endpoint

    def adopt_tcp(self, path: TcpPath) -> bool:
        """Queue an identified ICE-TCP connection for `run_tcp_paths` (never waits)."""
        try:
            self._adopted_send.send_nowait(path)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            return False  # closing, or more than both PCs' share waiting: the listener counts it
        return True

    async def run_tcp_paths(self) -> None:
        """The participant's ICE-TCP connections, each a task of this nursery (so they end
        with the participant's media); returns once `close` was called and they all ended."""
        async with trio.open_nursery() as nursery:
            async with self._adopted_receive:
                async for path in self._adopted_receive:
                    nursery.start_soon(path.run, name=f"ice-tcp path {path.remote[0]}:{path.remote[1]}")

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

    # NumberedDownlink (trio_sfu.forwarding): the down tracks number what they forward in place.

    @property
    def transport_sequencer(self) -> Optional[TransportSequencer]:
        endpoint = self.publisher if self.single_pc else self.subscriber
        stamper = endpoint.stamper if endpoint is not None else None
        return stamper.sequencer if stamper is not None else None

    def send_numbered_rtp(self, packet: bytes) -> bool:
        endpoint = self.publisher if self.single_pc else self.subscriber
        return endpoint is not None and endpoint.send_numbered_rtp(packet)

    def native_send_target(self) -> Optional[NativeSendTarget]:
        endpoint = self.publisher if self.single_pc else self.subscriber
        return endpoint.native_send_target() if endpoint is not None else None

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
        """Close both peer connections (and their ICE-TCP connections) and unregister them
        from the mux."""
        self._adopted_send.close()
        for endpoint in (self.publisher, self.subscriber):
            if endpoint is not None:
                endpoint.close(now)


__all__ = ["PUBLISHER", "SUBSCRIBER", "PacketStamper", "ParticipantTransports", "TransportEndpoint", "TransportService",
           "new_ice_credentials"]
