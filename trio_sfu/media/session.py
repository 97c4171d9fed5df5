"""The real MediaSession: per participant a publisher PC (the client offers) and a subscriber PC
(we offer), both ICE-lite PeerTransports on the node's one UDP socket, plus the forwarding wiring.

Lifetime: `MediaService` (one per server) owns the UDP mux, the DTLS certificate and each room's
`RoomMedia` (the tracks published there, as sources in the room's FIFO TrackManager).
`ParticipantMedia` is created by the signal session and runs two tasks in the participant's
nursery. One drives both transports' timers (one deadline each, slept on with `move_on_at`; the
mux wakes the task when a datagram moves a deadline earlier) and sends RTCP reports once a second.
The other is the participant's SubscriptionManager (trio_sfu.tracks): it reconciles what the
participant should receive with what the TrackManager resolves, binds m-lines through the
transceiver cache (`ParticipantSubscriber`) and makes the subscriber offers, awaiting each answer.
When the participant's scope ends, its `finally` unpublishes its tracks, detaches its down tracks
from their sources, closes and unregisters both transports.

The media hot path has no task switch: the mux's reader calls the publisher PC synchronously, the
decrypted packet goes to its track's `TrackReceiver` (trio_sfu.forwarding), which calls each
subscriber's `DownTrack`, which protects with the subscriber's SRTP and sends non-blocking.
"""

from __future__ import annotations

import datetime
import json
import math
import secrets
import time
from typing import TYPE_CHECKING, Optional

import attrs
import trio
from livekit.protocol import models, rtc

from rtp import rtcp
from rtp.dtls import DtlsCertificate, DtlsRole
from rtp.errors import ParseError
from rtp.header_extensions import HeaderExtensionParseError, decode_mid
from rtp.packet import RtpParseError, find_extension
from rtp.peer_transport import IceMode, PeerTransport
from rtp.twcc import TransportFeedbackRecorder
from rtp.peer_transport_events import (
    Address,
    DataReceived,
    RtcpReceived,
    RtpReceived,
    TransportClosed,
    TransportConnected,
    TransportFailed,
)
from sdp.codecs import EXT_MID, EXT_REPAIRED_RID, EXT_RID, EXT_TWCC, MediaKind
from sdp.errors import NegotiationError, SdpParseError
from sdp.model import Codec, Fingerprint, SessionDescription
from sdp.negotiator import (
    LocalParams,
    NegotiatedMedia,
    answer_offer,
    local_dtls_role,
    negotiated_media,
)
from sdp.parser import parse as parse_sdp
from sdp.parser import serialize as serialize_sdp

from trio_sfu import metrics as m
from trio_sfu.media.data_channels import ParticipantData, remote_sctp_params
from trio_sfu.log import get_logger
from trio_sfu.signal.codec import SignalDecodeError, decode_candidate_init
from trio_sfu.signal.media_port import MediaContext
from trio_sfu.cluster.node_relay import MigrationSync
from trio_sfu.forwarding import DownTrack, PublishedLayer, TrackReceiver, select_target_layer
from trio_sfu.media.udp_mux import UdpMux, advertised_ip, host_candidate
from trio_sfu.tracks import SourceOrigin, TrackManager, TrackSource
from trio_sfu.tracks.subscriber import Binding, NoAnswerError, SubscriberEndpoint
from trio_sfu.tracks.subscription_manager import RECONCILE_ALL, SubscriptionManager

if TYPE_CHECKING:
    from trio_sfu.config import ServerConfig
    from trio_sfu.cluster.node_relay import NodeRelay

REPORT_INTERVAL = 1.0
#: How long a wanted track may resolve to nothing before the client is told `SE_TRACK_NOTFOUND`.
NOT_FOUND_TIMEOUT = 60.0
#: The subscription manager's periodic reconcile (triggers make most passes sooner).
RECONCILE_INTERVAL = 3.0
#: How long a subscriber offer may wait for the client's answer; then it is offered again.
ANSWER_TIMEOUT = 15.0

MEDIA_SDP_REJECTED = "media_sdp_rejected_total"
MEDIA_RTP_UNMATCHED = "media_rtp_unmatched_total"
MEDIA_RTP_DROPPED = "media_rtp_dropped_by_receiver_total"
MEDIA_RTCP_MALFORMED = "media_rtcp_malformed_total"
MEDIA_TRANSPORT_CONNECTED = "media_transport_connected_total"
MEDIA_TRANSPORT_FAILED = "media_transport_failed_total"
MEDIA_TRICKLE_MALFORMED = "media_trickle_malformed_total"
MEDIA_ANSWER_UNEXPECTED = "media_subscriber_answer_unexpected_total"
MEDIA_ANSWER_TIMEOUT = "media_subscriber_answer_timeout_total"
MEDIA_SUBSCRIPTION_FAILED = "media_subscription_failed_total"
MEDIA_TRACKS_PUBLISHED = "media_tracks_published_total"

_log = get_logger("trio_sfu.signal.media_port")

_STREAM_NAMES = {
    models.TrackSource.CAMERA: "camera",
    models.TrackSource.MICROPHONE: "microphone",
    models.TrackSource.SCREEN_SHARE: "screen",
    models.TrackSource.SCREEN_SHARE_AUDIO: "screen_audio",
}


def fold_counters(metrics: m.Metrics, prefix: str, counters: object) -> None:
    """Add a finished object's counters (an attrs class of ints) to the server's metrics, so
    drops counted per transport, receiver or down track outlive it as `<prefix>_<name>_total`."""
    for name, value in attrs.asdict(counters).items():  # type: ignore[arg-type]
        if isinstance(value, int) and value > 0:
            metrics.inc(f"{prefix}_{name}_total", value)


class MediaService:
    """Per server: the UDP mux, the DTLS certificate, the advertised candidate, rooms' media."""

    def __init__(self, config: "ServerConfig", metrics: m.Metrics) -> None:
        self.config = config
        self.metrics = metrics
        # One certificate per server start; trio_sfu may read the wall clock, rtp/ may not.
        self.certificate = DtlsCertificate.generate(datetime.datetime.now(datetime.timezone.utc))
        self.fingerprints = (Fingerprint("sha-256", self.certificate.fingerprint()),)
        self.mux: Optional[UdpMux] = None
        self.candidates: tuple[str, ...] = ()
        self.rooms: dict[str, RoomMedia] = {}  # by room sid
        self.not_found_timeout = NOT_FOUND_TIMEOUT
        self.reconcile_interval = RECONCILE_INTERVAL
        self.answer_timeout = ANSWER_TIMEOUT
        # The node-to-node relay when this server is one of several nodes (trio_sfu.cluster.node_relay).
        self.relay: Optional["NodeRelay"] = None

    def _bind_host(self) -> str:
        """The UDP bind address: the signalling bind address, unless media must reach an
        advertised `node_ip` that a loopback-only socket would never receive on."""
        hosts = self.config.effective_bind_addresses()
        host = hosts[0] if hosts else "0.0.0.0"
        if host in ("", "::"):
            return "0.0.0.0"
        node_ip = self.config.rtc.node_ip
        if host.startswith("127.") and node_ip and not node_ip.startswith("127."):
            return "0.0.0.0"
        return host

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        host = self._bind_host()
        self.mux = UdpMux.bind(host, self.config.rtc.udp_port, self.metrics)
        ip = advertised_ip(host, self.config.rtc.node_ip)
        port = self.mux.local_address[1]
        self.candidates = (host_candidate(ip, port),)
        _log.info("media UDP listening", kv={"bind": f"{host}:{port}", "candidate": self.candidates[0]})
        await self.mux.run(task_status=task_status)

    @property
    def udp_port(self) -> int:
        assert self.mux is not None
        return self.mux.local_address[1]

    def room_by_name(self, name: str) -> Optional["RoomMedia"]:
        """The media of the room called `name` (the newest, should an old one linger)."""
        found = None
        for media in self.rooms.values():
            if media.name == name:
                found = media
        return found

    def room_media(self, name: str, sid: str) -> "RoomMedia":
        """The media of room `sid` (a room's sid is unique per instance), created on first use."""
        media = self.rooms.get(sid)
        if media is None:
            media = self.rooms[sid] = RoomMedia(self, name, sid)
        return media

    def create_session(self, context: MediaContext) -> "ParticipantMedia":
        return ParticipantMedia(self, context)

    __call__ = create_session


class PublishedTrack:
    """One published track as the room sees it: its receiver and what subscribers need to know."""

    def __init__(self, sid: str, kind: MediaKind, publisher_sid: str, stream_id: str,
                 codecs: tuple[Codec, ...], extensions: dict[int, str], receiver: TrackReceiver) -> None:
        self.sid = sid
        self.kind = kind
        self.publisher_sid = publisher_sid
        self.stream_id = stream_id
        self.codecs = codecs  # as negotiated on the publisher PC (publisher payload types)
        self.extensions = extensions  # publisher extension id -> URI
        self.receiver = receiver
        self.published = False
        self.source: Optional[TrackSource] = None  # its local source, once published

    @property
    def primary(self) -> Codec:
        return next(c for c in self.codecs if not c.is_rtx)

    @property
    def mime_types(self) -> tuple[str, ...]:
        names = dict.fromkeys(c.name.lower() for c in self.codecs if not c.is_rtx)
        return tuple(f"{self.kind.value}/{name}" for name in names)

    def close(self, metrics: m.Metrics) -> None:
        receiver = self.receiver
        fold_counters(metrics, "media_receiver", receiver.counters)
        if receiver.state.value == "open":
            receiver.begin_closing(expected_to_resume=False)
        if receiver.state.value == "closing":
            receiver.close()


class RoomMedia:
    """The tracks published in one room and the participants' media sessions there.

    Published tracks are sources in the room's TrackManager (trio_sfu.tracks): a track id
    resolves to the head of its FIFO only while that source is open, and a source leaves the
    FIFO only once closed. Each participant's SubscriptionManager resolves through it."""

    def __init__(self, service: MediaService, name: str, sid: str) -> None:
        self.service = service
        self.name = name
        self.sid = sid
        self.track_manager = TrackManager()
        self.sessions: dict[str, ParticipantMedia] = {}
        # Track ids unpublished for good (no resume): nobody wants them any more. Track sids are
        # never reused by a new publication, so this only grows with the room's publications.
        self.withdrawn: set[str] = set()

    @property
    def tracks(self) -> dict[str, TrackSource]:
        """Track id -> the source subscribers bind to now (the open head of its FIFO)."""
        resolved = {}
        for sid in self.track_manager.track_ids():
            source = self.track_manager.resolve(sid)
            if source is not None:
                resolved[sid] = source
        return resolved

    def publish(self, track: PublishedTrack) -> None:
        track.published = True
        source = TrackSource(track.sid, SourceOrigin.LOCAL, "local", track.receiver, kind=track.kind,
                             publisher_id=track.publisher_sid, stream_id=track.stream_id, codecs=track.codecs,
                             extensions=dict(track.extensions))
        track.source = source
        self.track_manager.add(source)
        self.service.metrics.inc(MEDIA_TRACKS_PUBLISHED)
        if self.service.relay is not None:
            self.service.relay.local_published(self, source)
        self.update_desired()

    def unpublish(self, tracks: list[PublishedTrack], expected_to_resume: bool = False) -> None:
        """Withdraw tracks; every subscriber renegotiates once for all of them. With
        `expected_to_resume` (a migration hand-back, a publisher resume) subscribers cache the
        track's transceiver and rewrite state instead, for the track id's next source."""
        relay = self.service.relay
        for track in tracks:
            if track.source is not None:
                if relay is not None:
                    relay.local_closing(self, track.source, expected_to_resume)
                track.source.close_now(expected_to_resume=expected_to_resume)
            if not expected_to_resume:
                self.withdrawn.add(track.sid)
            track.close(self.service.metrics)
        self.update_desired()

    def update_desired(self) -> None:
        for session in list(self.sessions.values()):
            session.update_desired()

    def join(self, session: "ParticipantMedia") -> None:
        self.sessions[session.sid] = session
        if len(self.sessions) == 1 and self.service.relay is not None:
            self.service.relay.room_opened(self)

    def leave(self, session: "ParticipantMedia") -> None:
        if self.sessions.get(session.sid) is session:
            del self.sessions[session.sid]
            if not self.sessions and self.service.relay is not None:
                self.service.relay.room_emptied(self)
        self.forget_if_idle()

    def forget_if_idle(self) -> None:
        if not self.sessions and not self.track_manager.track_ids():
            if self.service.rooms.get(self.sid) is self:
                del self.service.rooms[self.sid]


class PeerConnection:
    """A PeerTransport registered in the mux, with its owner's event handling."""

    def __init__(self, session: "ParticipantMedia", name: str, transport: PeerTransport) -> None:
        self.session = session
        self.name = name
        self.transport = transport
        self.connected = False
        self.data = None  # its SCTP association (trio_sfu.media.data_channels), once negotiated

    # MuxEndpoint
    def on_datagram(self, data: bytes, addr: Address, now: float) -> None:
        transport = self.transport
        transport.receive_datagram(data, addr, now)
        self.pump(now)
        if not data or not 127 < data[0] < 192:
            # Handshake traffic can move the transport's deadline earlier; media never does.
            self.session.timer_may_have_moved(transport.get_timer())

    def pump(self, now: float) -> None:
        transport = self.transport
        session = self.session
        while (event := transport.next_event()) is not None:
            if type(event) is RtpReceived:
                if self.name == "publisher":
                    session.on_publisher_rtp(event.packet, now)
            elif type(event) is RtcpReceived:
                session.on_rtcp(self, event.packet, now)
            elif type(event) is DataReceived:
                if self.data is not None:
                    self.data.receive(event.data, now)
            elif isinstance(event, TransportConnected):
                self.connected = True
                session.metrics.inc(MEDIA_TRANSPORT_CONNECTED)
                session.log.info("transport connected", kv={"pc": self.name, "addr": f"{event.addr[0]}:{event.addr[1]}", "srtp": event.srtp_profile.name})
                session.on_connected(self, now)
            elif isinstance(event, TransportFailed):
                session.metrics.inc(MEDIA_TRANSPORT_FAILED)
                session.log.warning("transport failed", kv={"pc": self.name, "reason": event.reason})
            elif isinstance(event, TransportClosed):
                session.log.info("transport closed", kv={"pc": self.name, "by_peer": event.by_peer})
        self.flush(now)

    def flush(self, now: float) -> None:
        mux = self.session.service.mux
        out = self.transport.datagrams_to_send(now)
        if out and mux is not None:
            mux.send(out)

    def send_rtp(self, packet: bytes) -> bool:
        """The down tracks' send: protected and sent at once (no outbox round trip). False when
        the transport cannot send or the socket buffer is full, so the down track counts it."""
        out = self.transport.protect_rtp_datagram(packet)
        mux = self.session.service.mux
        return out is not None and mux is not None and mux.send_one(out[0], out[1])

    def send_rtcp(self, packet: bytes) -> bool:
        if not self.transport.send_rtcp(packet):
            return False
        self.flush(trio.current_time())
        return True


def _new_ice_credentials() -> tuple[str, str]:
    # RFC 8839: ufrag >= 4 chars, pwd >= 22 chars of ice-char.
    return secrets.token_hex(4), secrets.token_hex(12)


class ParticipantMedia:
    """One participant's two PeerConnections, its published tracks and its subscriptions."""

    def __init__(self, service: MediaService, context: MediaContext) -> None:
        self.service = service
        self.context = context
        self.metrics = service.metrics
        self.participant = context.participant
        self.sid = context.participant_sid
        self.log = _log.bind(room=context.room_name, participant=context.participant_sid)
        self.room_media = service.room_media(context.room_name, context.room_sid)
        self.closed = False
        # trio's clock + this = Unix time, for the down tracks' SR wall clock.
        self._wallclock_offset = time.time() - trio.current_time()

        pub_ufrag, pub_pwd = _new_ice_credentials()
        sub_ufrag, sub_pwd = _new_ice_credentials()
        self.pub_local = LocalParams(pub_ufrag, pub_pwd, service.fingerprints, service.candidates)
        self.sub_local = LocalParams(sub_ufrag, sub_pwd, service.fingerprints, service.candidates)
        self.publisher: Optional[PeerConnection] = None
        self.subscriber: Optional[PeerConnection] = None

        # Publishing: what the client's offers negotiated, and which track each SSRC feeds.
        self._pub_answers = 0
        self._pub_media: dict[str, NegotiatedMedia] = {}
        self._ext_mid: Optional[int] = None
        self._ext_rid: Optional[int] = None
        self._ext_rrid: Optional[int] = None
        # Transport-wide CC: the publisher's estimator runs on our arrival reports.
        self._ext_twcc: Optional[int] = None
        self.twcc = TransportFeedbackRecorder(sender_ssrc=secrets.randbits(32) or 1)
        self._rtx_apt: dict[int, int] = {}
        self._ssrc_tracks: dict[int, PublishedTrack] = {}
        self.tracks_by_mid: dict[str, PublishedTrack] = {}

        # Subscribing: the subscriber PC's m-lines, down tracks and transceiver cache
        # (`endpoint`), driven by this participant's SubscriptionManager on the room's tracks.
        self.endpoint = ParticipantSubscriber(self)
        self.manager = SubscriptionManager(
            self.endpoint, self.room_media.track_manager, report=self._subscription_failed,
            reconcile_interval=service.reconcile_interval, not_found_timeout=service.not_found_timeout,
            wallclock_offset=self._wallclock_offset, log=self.log)
        self._offer_id = 0
        self._pending_answer: Optional[_PendingAnswer] = None
        # Tracks reported not found: no longer wanted until the client asks again.
        self._given_up: set[str] = set()

        self._wake = trio.Event()
        self._armed = math.inf
        self.data = ParticipantData.for_session(self)
        # Mids whose track the server unpublished while the client still sends on them: their
        # packets must not be matched to another track; cleared once the client stops the m-line.
        self._revoked_mids: set[str] = set()
        # A participant that migrated here: its m-lines as the old node had them (same mids,
        # SSRCs and rewrite state), waiting in the cache for its subscriptions.
        self.migrating = False
        migrated = self.participant.migrated_in
        # Publisher SSRC -> (mid, layer, is RTX) as the old node learned them: the client's
        # packets may no longer name their stream (no MID/RID once acknowledged).
        self._migrated_streams: dict[int, tuple[str, int, bool]] = migrated.publisher_streams if migrated else {}
        if migrated is not None:
            failed = self.endpoint.restore_migrated(migrated.transceivers, migrated.kinds, migrated.layout)
            if failed:
                self.log.warning("m-lines not reproduced after migration", kv={"tracks": ",".join(failed)})

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The session's life, in the participant's nursery: it joins the room's media, then
        runs its timers and its subscription manager until cancelled, and closes on the way out."""
        try:
            self.room_media.join(self)
            self.update_desired()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._run_timers)
                nursery.start_soon(self._run_subscriptions)
                task_status.started()
        finally:
            self.close()

    @property
    def subscriptions(self) -> dict[str, Binding]:
        """Track id -> its binding on the subscriber PC (`.down` once forwarding)."""
        return self.endpoint.bindings

    @property
    def sub_offer(self):
        return self.endpoint.offer

    def _down_tracks(self) -> list[DownTrack]:
        return [b.down for b in self.endpoint.bindings.values() if b.down is not None]

    # ---- lifetime ------------------------------------------------------------------------

    def _deadline(self, now: float) -> float:
        deadline = now + REPORT_INTERVAL
        for pc in (self.publisher, self.subscriber):
            if pc is not None:
                t = pc.transport.get_timer()
                if t is not None and t < deadline:
                    deadline = t
        t = self.data.get_timer()
        if t is not None and t < deadline:
            deadline = t
        for track in self.tracks_by_mid.values():
            t = track.receiver.get_timer()
            if t is not None and t < deadline:
                deadline = t
        for down in self._down_tracks():
            t = down.get_timer()
            if t is not None and t < deadline:
                deadline = t
        t = self.twcc.get_timer()
        if t is not None and t < deadline:
            deadline = t
        return deadline

    async def _run_timers(self) -> None:
        try:
            while True:
                self._wake = trio.Event()
                self._armed = self._deadline(trio.current_time())
                with trio.move_on_at(self._armed):
                    await self._wake.wait()
                now = trio.current_time()
                for pc in (self.publisher, self.subscriber):
                    if pc is not None:
                        t = pc.transport.get_timer()
                        if t is not None and t <= now:
                            pc.transport.handle_timer(now)
                            pc.pump(now)
                self.data.handle_timer(now)
                for report in self.twcc.feedback(now):
                    self._send_pub_rtcp(report)
                # RTCP the forwarding objects owe: uplink NACKs and RRs, downlink SRs.
                for track in list(self.tracks_by_mid.values()):
                    track.receiver.poll_rtcp(now)
                for down in self._down_tracks():
                    down.poll_rtcp(now)
        finally:
            self.close()

    async def _run_subscriptions(self) -> None:
        """The first subscriber offer (with whatever is already published, and the data
        channel m-line), then the subscription manager's loop, for the participant's life."""
        try:
            await self.manager.reconcile({RECONCILE_ALL})
            if not self.endpoint.offers and not self.closed:
                try:
                    await self.endpoint.negotiate()
                except NegotiationError as exc:
                    self.log.warning("first subscriber offer failed", kv={"error": str(exc)})
            await self.manager.run()
        finally:
            self.manager.close()

    def close(self) -> None:
        """Unpublish, unsubscribe, close and unregister both transports (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self.data.close()
        room = self.room_media
        room.leave(self)
        tracks = list(dict.fromkeys(self.tracks_by_mid.values()))  # a track may hold several mids
        if self.migrating and self.service.relay is not None:
            # Moving to another node: the tracks stay until their new source appears there.
            tracks = self.service.relay.hand_over(room, tracks, self.sid)
        room.unpublish(tracks)
        self.tracks_by_mid.clear()
        self._ssrc_tracks.clear()
        self.manager.close()  # every down track leaves its source, no resume
        pending, self._pending_answer = self._pending_answer, None
        if pending is not None:
            pending.error = "the participant left"
            pending.arrived.set()
        now = trio.current_time()
        mux = self.service.mux
        for pc in (self.publisher, self.subscriber):
            if pc is None:
                continue
            pc.transport.close()
            pc.flush(now)
            if mux is not None:
                mux.unregister(pc)
            fold_counters(self.metrics, "media_transport", pc.transport.counters)
        room.leave(self)

    def begin_migration(self) -> "MigrationSync":
        """This participant moves to another node: every subscription lets its source go
        expecting a resume (m-line and rewrite state cached by track id), the subscription
        manager stops, and what the new node needs is returned. The published tracks stay."""
        self.migrating = True
        endpoint = self.endpoint
        endpoint.on_detached = None  # the manager must not rebind what we let go
        for binding in list(endpoint.bindings.values()):
            if not binding.source.remove_subscriber(self.sid, expected_to_resume=True):
                endpoint.detach_source(binding.source, True)
        desired = [s.track_id for s in self.manager.subscriptions.values() if s.desired]
        entries = [e for e in endpoint.migrated_state() if e.track_id in desired]
        kinds = {}
        for e in entries:
            cached = endpoint.table.cache.peek(e.track_id)
            kinds[e.track_id] = cached.kind if cached is not None else MediaKind.AUDIO
        self.manager.close()
        published = [t for t in dict.fromkeys(self.tracks_by_mid.values())
                     if t.source is not None and t.source.is_open]
        lines = [(t.mid, t.kind, t.state.live) for t in endpoint.table.transceivers]
        streams = []
        for mid, track in self.tracks_by_mid.items():
            if track in published:
                media, rtx = track.receiver.ssrc_layers()
                streams += [(track.sid, mid, ssrc, layer, False) for ssrc, layer in media.items()]
                streams += [(track.sid, mid, ssrc, layer, True) for ssrc, layer in rtx.items()]
        return MigrationSync(desired, entries, kinds, published, lines, endpoint.table.next_mid, streams)

    def restart_published_track(self, track_sid: str) -> bool:
        """Hand one of our tracks over to a new source, as a migration hand-back does: its
        current source closes expected-to-resume (subscribers cache their transceivers), and
        the next packet on its m-line publishes a fresh receiver under the same track id."""
        mids = [mid for mid, t in self.tracks_by_mid.items() if t.sid == track_sid]
        if not mids or self.closed:
            return False
        track = self.tracks_by_mid[mids[0]]
        for mid in mids:
            del self.tracks_by_mid[mid]
        for ssrc in [s for s, t in self._ssrc_tracks.items() if t is track]:
            del self._ssrc_tracks[ssrc]
        self.room_media.unpublish([track], expected_to_resume=True)
        return True

    def timer_may_have_moved(self, deadline: Optional[float]) -> None:
        if deadline is not None and deadline < self._armed:
            self._armed = deadline
            self._wake.set()

    def _new_transport(self, name: str, local: LocalParams, role: DtlsRole, ufrag: str, pwd: str,
                       fingerprints: tuple[Fingerprint, ...]) -> PeerConnection:
        transport = PeerTransport(
            IceMode.LITE,
            role,
            local_ufrag=local.ice_ufrag,
            local_pwd=local.ice_pwd,
            certificate=self.service.certificate,
            remote_ufrag=ufrag,
            remote_pwd=pwd,
            remote_fingerprints=[(f.algorithm, f.value) for f in fingerprints],
        )
        transport.start(trio.current_time())
        pc = PeerConnection(self, name, transport)
        assert self.service.mux is not None
        self.service.mux.register(pc)
        self.timer_may_have_moved(transport.get_timer())
        return pc

    def _send_candidates(self, target: int, mid: str) -> None:
        local = self.pub_local if target == rtc.SignalTarget.PUBLISHER else self.sub_local
        for candidate in self.service.candidates:
            init = {"candidate": f"candidate:{candidate}", "sdpMid": mid, "sdpMLineIndex": 0,
                    "usernameFragment": local.ice_ufrag}
            self.context.send(rtc.SignalResponse(trickle=rtc.TrickleRequest(candidateInit=json.dumps(init), target=target)))

    def _reject_sdp(self, what: str, exc: Exception) -> None:
        self.metrics.inc(MEDIA_SDP_REJECTED)
        self.log.warning("SDP refused", kv={"what": what, "error": str(exc)})

    # ---- MediaSession: signalling --------------------------------------------------------------

    async def handle_publisher_offer(self, offer: rtc.SessionDescription) -> None:
        if self.closed:
            return
        try:
            parsed = parse_sdp(offer.sdp)
            self._pub_answers += 1
            answer = answer_offer(parsed, self.pub_local, session_version=self._pub_answers)
            media = negotiated_media(parsed, answer)
            role = local_dtls_role(answer, local_is_offerer=False)
        except (SdpParseError, NegotiationError) as exc:
            self._reject_sdp("publisher offer", exc)
            return
        first = next((s for s in parsed.media if not s.rejected), None)
        assert first is not None  # answer_offer refuses offers without a usable section
        if self.publisher is None:
            self.publisher = self._new_transport(
                "publisher", self.pub_local, DtlsRole(role.value),
                parsed.effective_ufrag(first) or "", parsed.effective_pwd(first) or "",
                tuple(parsed.effective_fingerprints(first)),
            )
        self._withdraw_stopped_tracks(media)
        self._learn_publisher_media(media)
        self.data.attach_pc(self.publisher, remote_sctp_params(parsed), role.value == "client")
        self.context.send(rtc.SignalResponse(answer=rtc.SessionDescription(type="answer", sdp=serialize_sdp(answer), id=offer.id)))
        if first.mid is not None:
            self._send_candidates(rtc.SignalTarget.PUBLISHER, first.mid)

    async def handle_subscriber_answer(self, answer: rtc.SessionDescription) -> None:
        """Hand the answer to the offer waiting for it (the subscription manager's negotiation
        applies it); an answer nobody waits for, or to another offer, is counted and dropped."""
        pending = self._pending_answer
        if self.closed or pending is None or (answer.id and answer.id != pending.offer_id):
            self.metrics.inc(MEDIA_ANSWER_UNEXPECTED)
            self.log.warning("subscriber answer without a matching offer",
                             kv={"answer_id": answer.id, "offer_id": pending.offer_id if pending else None})
            return
        try:
            pending.answer = parse_sdp(answer.sdp)
        except SdpParseError as exc:
            self._reject_sdp("subscriber answer", exc)
            pending.error = f"unparsable answer: {exc}"
        pending.arrived.set()

    async def _exchange(self, offer: SessionDescription) -> SessionDescription:
        """One subscriber offer out, its answer back (SubscriberEndpoint's `Exchange`)."""
        self._offer_id += 1
        pending = self._pending_answer = _PendingAnswer(self._offer_id)
        self.context.send(rtc.SignalResponse(offer=rtc.SessionDescription(
            type="offer", sdp=serialize_sdp(offer), id=pending.offer_id)))
        first = next((m for m in offer.media if not m.rejected), None)
        if pending.offer_id == 1 and first is not None and first.mid is not None:
            self._send_candidates(rtc.SignalTarget.SUBSCRIBER, first.mid)
        timeout = self.service.answer_timeout
        try:
            with trio.move_on_after(timeout):
                await pending.arrived.wait()
        finally:
            if self._pending_answer is pending:
                self._pending_answer = None
        if pending.answer is not None:
            return pending.answer
        if pending.error:
            raise NegotiationError(pending.error)
        self.metrics.inc(MEDIA_ANSWER_TIMEOUT)
        raise NoAnswerError(f"no answer to subscriber offer {pending.offer_id} within {timeout:g} s")

    def _answered(self, answer: SessionDescription) -> None:
        """The first applied answer fixes the subscriber PC's ICE and DTLS peer: start it."""
        offer = self.endpoint.offer
        if self.closed or offer.dtls_role is None:
            return
        if self.subscriber is None:
            self.subscriber = self._new_transport(
                "subscriber", self.sub_local, DtlsRole(offer.dtls_role.value),
                offer.remote_ice_ufrag or "", offer.remote_ice_pwd or "", offer.remote_fingerprints,
            )
        self.data.attach_pc(self.subscriber, remote_sctp_params(answer),
                            offer.dtls_role.value == "client", downlink=True)

    async def handle_trickle(self, candidate_init_json: str, target: int, final: bool) -> None:
        # ICE-lite learns the peer's addresses from its checks; candidates are only validated.
        if not candidate_init_json:
            return
        try:
            decode_candidate_init(candidate_init_json)
        except SignalDecodeError:
            self.metrics.inc(MEDIA_TRICKLE_MALFORMED)

    def subscriptions_changed(self) -> None:
        # A new request re-arms tracks given up on (the request does not say which sids it named).
        self._given_up.clear()
        self.update_desired()

    def _subscription_failed(self, track_id: str, error: int) -> None:
        """The manager gave a subscription up: tell the client, as LiveKit does."""
        self.metrics.inc(MEDIA_SUBSCRIPTION_FAILED)
        self._given_up.add(track_id)
        self.context.send(rtc.SignalResponse(subscription_response=rtc.SubscriptionResponse(
            track_sid=track_id, err=error)))  # type: ignore[arg-type]

    def track_settings_changed(self, track_sids: list[str]) -> None:
        now = trio.current_time()
        for sid in track_sids:
            binding = self.endpoint.bindings.get(sid)
            if binding is not None and binding.down is not None:
                binding.down.set_target_layer(self._target_layer(binding.source), now)
                if self._publisher_muted(binding.source):
                    binding.down.set_disabled(True, now)  # a new layer choice does not unmute

    def _target_layer(self, track: TrackSource) -> Optional[int]:
        """The layer this subscriber should get (None = paused), from its UpdateTrackSettings."""
        settings = self.participant.track_settings.get(track.track_id)
        layers = track.receiver.layers
        if settings is None:
            return max(layers)
        if settings.disabled or settings.quality == models.VideoQuality.OFF:
            return None
        if not track.receiver.simulcast:
            return 0
        info = self._track_info(track)
        published = [PublishedLayer(lay.quality, lay.width, lay.height) for lay in (info.layers if info else [])]
        target = select_target_layer(published, width=settings.width, height=settings.height,
                                     quality=settings.quality)
        return target if target is None or target in layers else max(layers)

    def _publisher_muted(self, track: TrackSource) -> bool:
        info = self._track_info(track)
        return info is not None and info.muted

    def _track_info(self, track: TrackSource) -> Optional[models.TrackInfo]:
        publisher = self.room_media.sessions.get(track.publisher_id)
        return publisher.participant.tracks.get(track.track_id) if publisher is not None else None

    # ---- subscribing ---------------------------------------------------------------------------

    def _wants(self, track_id: str) -> bool:
        if track_id in self._given_up or track_id in self.room_media.withdrawn or track_id in self.participant.tracks:
            return False
        sources = self.room_media.track_manager.sources(track_id)
        if sources and sources[0].publisher_id == self.sid:
            return False
        grants = self.participant.grants.video
        if grants is not None and not grants.may_subscribe:
            return False
        explicit = self.participant.subscriptions.get(track_id)
        if explicit is not None:
            return explicit
        return self.context.auto_subscribe and bool(sources)

    def update_desired(self) -> None:
        """Tell the subscription manager what this participant should receive now: every track
        in the room (auto-subscribe) or those it asked for, minus its own, the withdrawn and
        the given up. The manager binds, negotiates and retries on its own task."""
        if self.closed:
            return
        manager = self.manager
        ids = dict.fromkeys(self.room_media.track_manager.track_ids())
        ids.update(dict.fromkeys(self.participant.subscriptions))
        ids.update(dict.fromkeys(manager.subscriptions))
        for track_id in ids:
            want = self._wants(track_id)
            current = manager.subscriptions.get(track_id)
            if want != (current is not None and current.desired):
                manager.set_desired(track_id, want)

    def _send_down(self, packet: bytes) -> bool:
        pc = self.subscriber
        return pc is not None and pc.send_rtp(packet)

    def _send_sub_rtcp(self, packet: bytes) -> bool:
        pc = self.subscriber
        return pc is not None and pc.send_rtcp(packet)

    def _send_pub_rtcp(self, packet: bytes) -> bool:
        pc = self.publisher
        return pc is not None and pc.send_rtcp(packet)

    # ---- publishing ----------------------------------------------------------------------------

    def _withdraw_stopped_tracks(self, media: dict[str, NegotiatedMedia]) -> None:
        """A re-offer whose m-line no longer sends (the client removed the sender) unpublishes
        the track on it, as LiveKit does when the receiver ends."""
        self._revoked_mids = {mid for mid in self._revoked_mids
                              if (nm := media.get(mid)) is not None and nm.accepted and nm.direction.receives}
        stopped = []
        for mid, track in list(self.tracks_by_mid.items()):
            nm = media.get(mid)
            if nm is None or not nm.accepted or not nm.direction.receives:
                del self.tracks_by_mid[mid]
                stopped.append(track)
        if not stopped:
            return
        for ssrc in [s for s, track in self._ssrc_tracks.items() if track in stopped]:
            del self._ssrc_tracks[ssrc]
        for track in stopped:
            self.log.info("track unpublished", kv={"track": track.sid})
            # The room hears it (ParticipantUpdate) before subscribers get the offer without it.
            self.participant.unpublish_track(track.sid)
        self.room_media.unpublish(stopped)

    def _learn_publisher_media(self, media: dict[str, NegotiatedMedia]) -> None:
        self._pub_media = media
        for nm in media.values():
            if not nm.accepted:
                continue
            for ext_id, uri in nm.extensions.items():
                if uri == EXT_MID:
                    self._ext_mid = ext_id
                elif uri == EXT_RID:
                    self._ext_rid = ext_id
                elif uri == EXT_REPAIRED_RID:
                    self._ext_rrid = ext_id
                elif uri == EXT_TWCC:
                    self._ext_twcc = ext_id
            for c in nm.codecs:
                if c.is_rtx and c.apt is not None:
                    self._rtx_apt[c.payload_type] = c.apt

    def _mid_of(self, packet: bytes, ssrc: int) -> Optional[str]:
        """The m-line a new SSRC belongs to: the mid header extension, else the a=ssrc lines
        (Chromium's simulcast has no a=ssrc; the Python SDK's audio has them)."""
        if self._ext_mid is not None:
            try:
                value = find_extension(packet, self._ext_mid)
                if value is not None:
                    return decode_mid(value)
            except (RtpParseError, HeaderExtensionParseError):
                return None
        for nm in self._pub_media.values():
            if ssrc in nm.ssrcs:
                return nm.mid
        stream = self._migrated_streams.get(ssrc)
        return stream[0] if stream is not None else None

    def _track_for_mid(self, mid: str) -> Optional[PublishedTrack]:
        track = self.tracks_by_mid.get(mid)
        if track is not None:
            return track
        if mid in self._revoked_mids:
            return None
        nm = self._pub_media.get(mid)
        if nm is None or not nm.accepted or nm.kind not in ("audio", "video") or not nm.direction.receives:
            return None
        kind = MediaKind(nm.kind)
        info = self._match_track_info(nm, kind)
        primary = next((c for c in nm.codecs if not c.is_rtx), None)
        if info is None or primary is None:
            return None
        # a=ssrc lines (no simulcast): the first SSRC is the media, FID pairs name the RTX.
        ssrc_layers: dict[int, int] = {}
        rtx_layers: dict[int, int] = {}
        if not nm.rids and nm.ssrcs:
            rtx_ssrcs = {g.ssrcs[1] for g in nm.ssrc_groups if g.semantics == "FID" and len(g.ssrcs) == 2}
            for ssrc in nm.ssrcs:
                (rtx_layers if ssrc in rtx_ssrcs else ssrc_layers)[ssrc] = 0
        for ssrc, (stream_mid, layer, rtx) in self._migrated_streams.items():
            if stream_mid == mid:
                (rtx_layers if rtx else ssrc_layers)[ssrc] = layer
        rtx_pts = {c.payload_type: c.apt for c in nm.codecs if c.is_rtx and c.apt is not None}
        receiver = TrackReceiver(
            info.sid,
            f"{kind.value}/{primary.name}",
            primary.clock_rate,
            send_rtcp=self._send_pub_rtcp,
            local_ssrc=secrets.randbits(32) or 1,
            cname=self.sid,
            rids=nm.rids,
            rid_extension_id=self._ext_rid,
            repaired_rid_extension_id=self._ext_rrid,
            rtx_payload_types=rtx_pts,
            ssrc_layers=ssrc_layers,
            rtx_ssrc_layers=rtx_layers,
            buffer_capacity=1024 if kind is MediaKind.VIDEO else 128,
            now=trio.current_time(),
        )
        stream = info.stream or _STREAM_NAMES.get(info.source, "camera" if kind is MediaKind.VIDEO else "microphone")
        track = PublishedTrack(info.sid, kind, self.sid, f"{self.sid}|{stream}", nm.codecs,
                               dict(nm.extensions), receiver)
        self.tracks_by_mid[mid] = track
        self.log.info("track matched to media", kv={"track": info.sid, "mid": mid, "codecs": ",".join(track.mime_types),
                                                    "rids": ",".join(nm.rids)})
        return track

    def _match_track_info(self, nm: NegotiatedMedia, kind: MediaKind) -> Optional[models.TrackInfo]:
        """add_track → m-line: by the msid track id (the client's cid), else the oldest unmatched
        track of the same kind (livekit-protocol.md §2.7 step 3)."""
        p = self.participant
        taken = {t.sid for t in self.tracks_by_mid.values()}
        want_type = models.TrackType.AUDIO if kind is MediaKind.AUDIO else models.TrackType.VIDEO
        cid = nm.msid.track_id if nm.msid is not None else None
        if cid:
            sid = p.track_by_cid.get(cid)
            if sid is not None and sid not in taken and sid in p.tracks:
                return p.tracks[sid]
            for info in p.tracks.values():
                if info.sid not in taken and any(c.cid == cid for c in info.codecs):
                    return info
        for info in p.tracks.values():
            if info.sid not in taken and info.type == want_type:
                return info
        return None

    def on_publisher_rtp(self, packet: bytes, now: float) -> None:
        if len(packet) < 12:
            return
        ssrc = int.from_bytes(packet[8:12], "big")
        if self._ext_twcc is not None:
            self._record_twcc(packet, ssrc, now)
        track = self._ssrc_tracks.get(ssrc)
        if track is None:
            mid = self._mid_of(packet, ssrc)
            track = self._track_for_mid(mid) if mid is not None else None
            if track is None:
                self.metrics.inc(MEDIA_RTP_UNMATCHED)
                return
            self._ssrc_tracks[ssrc] = track
        receiver = track.receiver
        if not receiver.receive_rtp(packet, now):
            self.metrics.inc(MEDIA_RTP_DROPPED)
            return
        if not track.published and not self.closed:
            self.room_media.publish(track)
        # A loss just noticed schedules a NACK sooner than the loop would wake.
        self.timer_may_have_moved(receiver.get_timer())

    def _record_twcc(self, packet: bytes, ssrc: int, now: float) -> None:
        try:
            value = find_extension(packet, self._ext_twcc)  # type: ignore[arg-type]
        except (RtpParseError, HeaderExtensionParseError):
            return
        if value is None or len(value) < 2:
            return
        twcc = self.twcc
        due = twcc.get_timer()
        twcc.record((value[0] << 8) | value[1], ssrc, now)
        if due is None:
            self.timer_may_have_moved(twcc.get_timer())

    # ---- moderation (Participant hooks) --------------------------------------------------------

    def deliver_data(self, packet: models.DataPacket, kind: int) -> None:
        self.data.deliver(packet, kind, trio.current_time())

    def track_muted(self, info: models.TrackInfo) -> None:
        """One of our tracks was muted or unmuted (the client's MuteTrackRequest or the Server
        API): as LiveKit, subscribers' down tracks pause; on unmute they resume at a keyframe
        (DownTrack.set_disabled sends the PLI upstream)."""
        track = next((t for t in self.tracks_by_mid.values() if t.sid == info.sid), None)
        if track is None:
            return  # no media matched yet: down tracks read `muted` when they start
        now = trio.current_time()
        for session in list(self.room_media.sessions.values()):
            binding = session.endpoint.bindings.get(info.sid)
            down = binding.down if binding is not None and binding.source.receiver is track.receiver else None
            if down is None:
                continue
            if info.muted:
                down.set_disabled(True, now)
            elif down.target_layer is not None:  # else the subscriber itself paused it
                down.set_disabled(False, now)

    def track_unpublished(self, info: models.TrackInfo) -> None:
        """The server unpublished one of our tracks (a publish permission revoked): its receiver
        closes and subscribers drop its m-line, as when the client stops the m-line itself."""
        mids = [mid for mid, t in self.tracks_by_mid.items() if t.sid == info.sid]
        if not mids:
            return  # already withdrawn (_withdraw_stopped_tracks) or never matched to media
        track = self.tracks_by_mid[mids[0]]
        for mid in mids:
            del self.tracks_by_mid[mid]
            self._revoked_mids.add(mid)
        for ssrc in [s for s, t in self._ssrc_tracks.items() if t is track]:
            del self._ssrc_tracks[ssrc]
        self.log.info("track unpublished by the server", kv={"track": track.sid})
        self.room_media.unpublish([track])

    # ---- RTCP ----------------------------------------------------------------------------------

    def on_rtcp(self, pc: PeerConnection, packet: bytes, now: float) -> None:
        try:
            packets = rtcp.parse_rtcp(packet)
        except ParseError:
            self.metrics.inc(MEDIA_RTCP_MALFORMED)
            return
        if pc is self.publisher:
            for track in self.tracks_by_mid.values():
                track.receiver.handle_rtcp(packets, now)
            return
        for down in self._down_tracks():
            down.handle_rtcp(packets, now)

    def on_connected(self, pc: PeerConnection, now: float) -> None:
        if pc.data is not None:
            pc.data.start(now)
        if pc is self.subscriber:
            for binding in self.endpoint.bindings.values():
                down = binding.down
                if down is None or down.target_layer is None or self._publisher_muted(binding.source):
                    continue  # paused by the subscriber or muted by the publisher: stays quiet
                if down.disabled:
                    down.set_disabled(False, now)  # held until now; asks for a keyframe itself
                else:
                    binding.source.receiver.request_keyframe(down.target_layer, now)


@attrs.define
class _PendingAnswer:
    """The subscriber offer waiting for its answer (one at a time: SubscriberEndpoint's lock)."""

    offer_id: int
    arrived: trio.Event = attrs.field(factory=trio.Event)
    answer: Optional[SessionDescription] = None
    error: str = ""


class ParticipantSubscriber(SubscriberEndpoint):
    """A participant's subscriber PC as its SubscriptionManager drives it: what the server adds
    to a plain endpoint is LiveKit's behaviour around a down track's start and end."""

    def __init__(self, session: ParticipantMedia) -> None:
        super().__init__(session.sid, session.sub_local, session._exchange, session._send_down,
                         send_rtcp=session._send_sub_rtcp, answered=session._answered)
        self._session = session

    def target_layer(self, source: TrackSource) -> Optional[int]:
        return self._session._target_layer(source)

    def down_track_starting(self, source: TrackSource, down: DownTrack, now: float) -> None:
        session = self._session
        if session._publisher_muted(source):
            down.set_disabled(True, now)  # the unmute resumes it (ParticipantMedia.track_muted)
        elif session.subscriber is None or not session.subscriber.connected:
            # Nothing can reach the client yet: packets sent now would be lost and leave a gap
            # in its numbering (a resumed m-line must continue exactly). on_connected resumes it.
            down.set_disabled(True, now)

    def down_track_started(self, source: TrackSource, down: DownTrack, first_subscriber: bool, now: float) -> None:
        session = self._session
        if first_subscriber:
            # LiveKit tells the publisher when its track gets its first subscriber.
            publisher = session.room_media.sessions.get(source.publisher_id)
            if publisher is not None:
                publisher.context.send(rtc.SignalResponse(track_subscribed=rtc.TrackSubscribed(track_sid=source.track_id)))
        if not down.disabled:
            source.receiver.request_keyframe(down.target_layer, now)
        session.timer_may_have_moved(down.get_timer())

    def down_track_stopped(self, down: DownTrack) -> None:
        fold_counters(self._session.metrics, "media_downtrack", down.counters)


__all__ = ["MediaService", "ParticipantMedia", "ParticipantSubscriber", "PublishedTrack", "RoomMedia", "PeerConnection"]
