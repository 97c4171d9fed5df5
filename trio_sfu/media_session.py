"""The real MediaSession: per participant a publisher PC (the client offers) and a subscriber PC
(we offer), both ICE-lite PeerTransports on the node's one UDP socket, plus the forwarding wiring.

Lifetime: `MediaService` (one per server) owns the UDP mux, the DTLS certificate and each room's
`RoomMedia` (the tracks published there). `ParticipantMedia` is created by the signal session and
runs one task in the participant's nursery: it sends the first subscriber offer, drives both
transports' timers (one deadline each, slept on with `move_on_at`; the mux wakes the task when a
datagram moves a deadline earlier) and sends RTCP reports once a second. When the participant's
scope ends, its `finally` unpublishes its tracks, drops its down tracks, closes and unregisters
both transports.

The media hot path has no task switch: the mux's reader calls the publisher PC synchronously, the
decrypted packet goes to its `PublishedTrack`, which calls each `DownTrack`, which protects with
the subscriber's SRTP and sends non-blocking.
"""

from __future__ import annotations

import datetime
import json
import math
import secrets
import time
from typing import TYPE_CHECKING, Optional

import trio
from livekit.protocol import models, rtc

from rtp import rtcp
from rtp.dtls import DtlsCertificate, DtlsRole
from rtp.errors import ParseError
from rtp.header_extensions import HeaderExtensionParseError, decode_mid, decode_rid
from rtp.packet import RtpParseError, find_extension, payload_offset
from rtp.peer_transport import IceMode, PeerTransport
from rtp.peer_transport_events import (
    Address,
    RtcpReceived,
    RtpReceived,
    TransportClosed,
    TransportConnected,
    TransportFailed,
)
from sdp.codecs import EXT_MID, EXT_REPAIRED_RID, EXT_RID, MediaKind, subscriber_codecs
from sdp.errors import NegotiationError, SdpParseError
from sdp.model import Fingerprint, SessionDescription
from sdp.negotiator import (
    LocalParams,
    NegotiatedMedia,
    SignalingState,
    SubscriberOffer,
    answer_offer,
    local_dtls_role,
    negotiated_media,
)
from sdp.parser import parse as parse_sdp
from sdp.parser import serialize as serialize_sdp
from sdp.transceivers import TransceiverTable

from . import metrics as m
from .log import get_logger
from .media import MediaContext
from .track_router import DownTrack, Layer, PublishedTrack, rank_of
from .udp_mux import UdpMux, advertised_ip, host_candidate

if TYPE_CHECKING:
    from .config import ServerConfig
    from .rooms import Room

REPORT_INTERVAL = 1.0

MEDIA_SDP_REJECTED = "media_sdp_rejected_total"
MEDIA_RTP_UNMATCHED = "media_rtp_unmatched_total"
MEDIA_RTCP_MALFORMED = "media_rtcp_malformed_total"
MEDIA_TRANSPORT_CONNECTED = "media_transport_connected_total"
MEDIA_TRANSPORT_FAILED = "media_transport_failed_total"
MEDIA_TRICKLE_MALFORMED = "media_trickle_malformed_total"
MEDIA_TRACKS_PUBLISHED = "media_tracks_published_total"

_log = get_logger("trio_sfu.media")

_STREAM_NAMES = {
    models.TrackSource.CAMERA: "camera",
    models.TrackSource.MICROPHONE: "microphone",
    models.TrackSource.SCREEN_SHARE: "screen",
    models.TrackSource.SCREEN_SHARE_AUDIO: "screen_audio",
}


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
        self.rooms: dict[int, RoomMedia] = {}

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

    def room_media(self, room: "Room") -> "RoomMedia":
        media = self.rooms.get(id(room))
        if media is None:
            media = self.rooms[id(room)] = RoomMedia(self, room)
        return media

    def create_session(self, context: MediaContext) -> "ParticipantMedia":
        return ParticipantMedia(self, context)

    __call__ = create_session


class RoomMedia:
    """The tracks published in one room and the participants' media sessions there."""

    def __init__(self, service: MediaService, room: "Room") -> None:
        self.service = service
        self.room = room
        self.tracks: dict[str, PublishedTrack] = {}
        self.sessions: dict[str, ParticipantMedia] = {}

    def publish(self, track: PublishedTrack) -> None:
        track.published = True
        self.tracks[track.sid] = track
        self.service.metrics.inc(MEDIA_TRACKS_PUBLISHED)
        for session in list(self.sessions.values()):
            session.refresh_subscriptions()

    def unpublish(self, tracks: list[PublishedTrack]) -> None:
        """Withdraw tracks; every subscriber renegotiates once for all of them."""
        for track in tracks:
            if self.tracks.get(track.sid) is track:
                del self.tracks[track.sid]
            track.detach()
        for session in list(self.sessions.values()):
            session.refresh_subscriptions()

    def leave(self, session: "ParticipantMedia") -> None:
        if self.sessions.get(session.sid) is session:
            del self.sessions[session.sid]
        if not self.sessions and not self.tracks:
            self.service.rooms.pop(id(self.room), None)


class PeerConnection:
    """A PeerTransport registered in the mux, with its owner's event handling."""

    def __init__(self, session: "ParticipantMedia", name: str, transport: PeerTransport) -> None:
        self.session = session
        self.name = name
        self.transport = transport
        self.connected = False

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
        if not self.transport.send_rtp(packet):
            return False
        self.flush(trio.current_time())
        return True

    def send_rtcp(self, packet: bytes) -> bool:
        if not self.transport.send_rtcp(packet):
            return False
        self.flush(trio.current_time())
        return True


def _new_ice_credentials() -> tuple[str, str]:
    # RFC 8839: ufrag >= 4 chars, pwd >= 22 chars of ice-char.
    return secrets.token_hex(4), secrets.token_hex(12)


class ParticipantMedia:
    """One participant's two PeerConnections, its published tracks and its down tracks."""

    def __init__(self, service: MediaService, context: MediaContext) -> None:
        self.service = service
        self.context = context
        self.metrics = service.metrics
        self.participant = context.participant
        self.sid = context.participant_sid
        self.log = _log.bind(room=context.room_name, participant=context.participant_sid)
        self.room_media = service.room_media(context.participant.room)
        self.closed = False

        pub_ufrag, pub_pwd = _new_ice_credentials()
        sub_ufrag, sub_pwd = _new_ice_credentials()
        self.pub_local = LocalParams(pub_ufrag, pub_pwd, service.fingerprints, service.candidates)
        self.sub_local = LocalParams(sub_ufrag, sub_pwd, service.fingerprints, service.candidates)
        self.publisher: Optional[PeerConnection] = None
        self.subscriber: Optional[PeerConnection] = None

        # Publishing: what the client's offers negotiated, and what its SSRCs turned out to be.
        self._pub_answers = 0
        self._pub_media: dict[str, NegotiatedMedia] = {}
        self._ext_mid: Optional[int] = None
        self._ext_rid: Optional[int] = None
        self._ext_rrid: Optional[int] = None
        self._rtx_apt: dict[int, int] = {}
        self._ssrc_routes: dict[int, tuple[PublishedTrack, Layer, bool]] = {}
        self.tracks_by_mid: dict[str, PublishedTrack] = {}

        # Subscribing: the server's offers and one DownTrack per subscribed track.
        self.sub_offer = SubscriberOffer(self.sub_local, TransceiverTable(), cname=self.sid)
        self.down_tracks: dict[str, DownTrack] = {}
        self._down_by_ssrc: dict[int, DownTrack] = {}
        self._offer_id = 0
        self._renegotiate_pending = False
        self.rtcp_ssrc = secrets.randbits(32) or 1

        self._wake = trio.Event()
        self._armed = math.inf
        self.room_media.sessions[self.sid] = self
        context.nursery.start_soon(self.run)

    # ---- lifetime ------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            self.refresh_subscriptions(force_offer=True)
            next_report = trio.current_time() + REPORT_INTERVAL
            while True:
                self._wake = trio.Event()
                deadline = next_report
                for pc in (self.publisher, self.subscriber):
                    if pc is not None:
                        t = pc.transport.get_timer()
                        if t is not None and t < deadline:
                            deadline = t
                self._armed = deadline
                with trio.move_on_at(deadline):
                    await self._wake.wait()
                now = trio.current_time()
                for pc in (self.publisher, self.subscriber):
                    if pc is not None:
                        t = pc.transport.get_timer()
                        if t is not None and t <= now:
                            pc.transport.handle_timer(now)
                            pc.pump(now)
                if now >= next_report:
                    self._send_reports(now)
                    next_report = now + REPORT_INTERVAL
        finally:
            self.close()

    def close(self) -> None:
        """Unpublish, unsubscribe, close and unregister both transports (idempotent)."""
        if self.closed:
            return
        self.closed = True
        room = self.room_media
        room.leave(self)
        room.unpublish(list(self.tracks_by_mid.values()))
        self.tracks_by_mid.clear()
        self._ssrc_routes.clear()
        for down in self.down_tracks.values():
            down.close()
        self.down_tracks.clear()
        self._down_by_ssrc.clear()
        now = trio.current_time()
        mux = self.service.mux
        for pc in (self.publisher, self.subscriber):
            if pc is None:
                continue
            pc.transport.close()
            pc.flush(now)
            if mux is not None:
                mux.unregister(pc)
        room.leave(self)

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
        for candidate in self.service.candidates:
            init = {"candidate": f"candidate:{candidate}", "sdpMid": mid, "sdpMLineIndex": 0,
                    "usernameFragment": (self.pub_local if target == rtc.SignalTarget.PUBLISHER else self.sub_local).ice_ufrag}
            self.context.send(rtc.SignalResponse(trickle=rtc.TrickleRequest(candidateInit=json.dumps(init), target=target)))

    def _reject_sdp(self, what: str, exc: Exception, request_id: int = 0) -> None:
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
            self._reject_sdp("publisher offer", exc, offer.id)
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
        self.context.send(rtc.SignalResponse(answer=rtc.SessionDescription(type="answer", sdp=serialize_sdp(answer), id=offer.id)))
        if first.mid is not None:
            self._send_candidates(rtc.SignalTarget.PUBLISHER, first.mid)

    async def handle_subscriber_answer(self, answer: rtc.SessionDescription) -> None:
        if self.closed:
            return
        try:
            parsed = parse_sdp(answer.sdp)
            self.sub_offer.apply_answer(parsed)
        except (SdpParseError, NegotiationError) as exc:
            self._reject_sdp("subscriber answer", exc, answer.id)
            return
        now = trio.current_time()
        if self.subscriber is None and self.sub_offer.dtls_role is not None:
            self.subscriber = self._new_transport(
                "subscriber", self.sub_local, DtlsRole(self.sub_offer.dtls_role.value),
                self.sub_offer.remote_ice_ufrag or "", self.sub_offer.remote_ice_pwd or "",
                self.sub_offer.remote_fingerprints,
            )
        for sid, down in list(self.down_tracks.items()):
            t = self.sub_offer.table.find_by_track(sid)
            if t is None:
                # The client refused the m-line: the track is not forwarded to it.
                down.close()
                del self.down_tracks[sid]
                continue
            down.set_payload_types({c.name.lower(): c.payload_type for c in t.negotiated_codecs if not c.is_rtx})
            down.track.request_keyframe(None, now)
        self._index_down_tracks()
        if self._renegotiate_pending:
            self._renegotiate_pending = False
            self.refresh_subscriptions()

    async def handle_trickle(self, candidate_init_json: str, target: int, final: bool) -> None:
        # ICE-lite learns the peer's addresses from its checks; candidates are only validated.
        if not candidate_init_json:
            return
        try:
            init = json.loads(candidate_init_json)
            if not isinstance(init, dict) or not isinstance(init.get("candidate", ""), str):
                raise ValueError("not an RTCIceCandidateInit")
        except ValueError:
            self.metrics.inc(MEDIA_TRICKLE_MALFORMED)

    def on_subscriptions_changed(self) -> None:
        self.refresh_subscriptions()

    def on_track_settings_changed(self, track_sids: list[str]) -> None:
        for sid in track_sids:
            down = self.down_tracks.get(sid)
            settings = self.participant.track_settings.get(sid)
            if down is None or settings is None:
                continue
            was_disabled = down.disabled
            down.disabled = settings.disabled or settings.quality == models.VideoQuality.OFF
            down.max_rank = self._rank_for_settings(down.track, settings)
            if was_disabled and not down.disabled:
                down.current = None  # resume at a keyframe
                down.track.request_keyframe(None, trio.current_time())

    def _rank_for_settings(self, track: PublishedTrack, settings: rtc.UpdateTrackSettings) -> int:
        if settings.width or settings.height:
            info = self._track_info(track)
            layers = sorted(info.layers, key=lambda lay: lay.width * lay.height) if info else []
            for lay in layers:
                if lay.width >= settings.width and lay.height >= settings.height:
                    return lay.quality
            return models.VideoQuality.HIGH
        return min(settings.quality, models.VideoQuality.HIGH)

    def _track_info(self, track: PublishedTrack) -> Optional[models.TrackInfo]:
        for p in self.participant.room.participants.values():
            if p.sid == track.publisher_sid:
                return p.tracks.get(track.sid)
        return None

    # ---- subscribing ---------------------------------------------------------------------------

    def _wants(self, track: PublishedTrack) -> bool:
        if track.publisher_sid == self.sid:
            return False
        grants = self.participant.grants.video
        if grants is not None and not grants.may_subscribe:
            return False
        explicit = self.participant.subscriptions.get(track.sid)
        if explicit is not None:
            return explicit
        return self.context.auto_subscribe

    def refresh_subscriptions(self, force_offer: bool = False) -> None:
        """Bind/unbind transceivers to match what this participant should receive; offer if changed."""
        if self.closed:
            return
        if self.sub_offer.state is SignalingState.HAVE_LOCAL_OFFER:
            # One negotiation at a time: the answer handler comes back here.
            self._renegotiate_pending = True
            return
        wanted = {sid: t for sid, t in self.room_media.tracks.items() if self._wants(t)}
        changed = False
        table = self.sub_offer.table
        for sid, down in list(self.down_tracks.items()):
            if wanted.get(sid) is not down.track:
                down.close()
                del self.down_tracks[sid]
                if table.find_by_track(sid) is not None:
                    table.unbind(sid, cache=True)
                changed = True
        now = trio.current_time()
        for sid, track in wanted.items():
            if sid in self.down_tracks:
                continue
            codecs = subscriber_codecs(track.kind, track.mime_types)
            if not codecs:
                continue
            t = table.bind(sid, track.kind, track.stream_id, codecs=codecs)
            assert t.ssrc is not None
            down = DownTrack(track, t.ssrc, self._send_down, now)
            settings = self.participant.track_settings.get(sid)
            if settings is not None:
                down.disabled = settings.disabled
                down.max_rank = self._rank_for_settings(track, settings)
            track.down_tracks.append(down)
            self.down_tracks[sid] = down
            changed = True
        self._index_down_tracks()
        if changed or force_offer:
            self._send_offer()

    def _send_offer(self) -> None:
        offer = self.sub_offer.create_offer()
        self._offer_id += 1
        self.context.send(rtc.SignalResponse(offer=rtc.SessionDescription(type="offer", sdp=serialize_sdp(offer), id=self._offer_id)))
        first = next((s for s in offer.media if not s.rejected), None)
        if first is not None and first.mid is not None and self._offer_id == 1:
            self._send_candidates(rtc.SignalTarget.SUBSCRIBER, first.mid)

    def _index_down_tracks(self) -> None:
        self._down_by_ssrc = {d.ssrc: d for d in self.down_tracks.values()}

    def _send_down(self, packet: bytes) -> bool:
        pc = self.subscriber
        return pc is not None and pc.send_rtp(packet)

    # ---- publishing ----------------------------------------------------------------------------

    def _withdraw_stopped_tracks(self, media: dict[str, NegotiatedMedia]) -> None:
        """A re-offer whose m-line no longer sends (the client removed the sender) unpublishes
        the track on it, as LiveKit does when the receiver ends."""
        stopped = []
        for mid, track in list(self.tracks_by_mid.items()):
            nm = media.get(mid)
            if nm is None or not nm.accepted or not nm.direction.receives:
                del self.tracks_by_mid[mid]
                stopped.append(track)
        if not stopped:
            return
        for ssrc in [s for s, route in self._ssrc_routes.items() if route[0] in stopped]:
            del self._ssrc_routes[ssrc]
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
            for c in nm.codecs:
                if c.is_rtx and c.apt is not None:
                    self._rtx_apt[c.payload_type] = c.apt

    def _read_ext(self, packet: bytes, ext_id: Optional[int], rid: bool) -> Optional[str]:
        if ext_id is None:
            return None
        try:
            value = find_extension(packet, ext_id)
            if value is None:
                return None
            return decode_rid(value) if rid else decode_mid(value)
        except (RtpParseError, HeaderExtensionParseError):
            return None

    def _route_new_ssrc(self, packet: bytes, ssrc: int) -> Optional[tuple[PublishedTrack, Layer, bool]]:
        """Which track and layer a new SSRC belongs to: mid/rid header extensions first, then the
        a=ssrc lines (Chromium's simulcast has none; the Python SDK's audio has them)."""
        mid = self._read_ext(packet, self._ext_mid, rid=False)
        rid = self._read_ext(packet, self._ext_rid, rid=True)
        repaired = self._read_ext(packet, self._ext_rrid, rid=True)
        fid_primary: Optional[int] = None
        if mid is None:
            for nm in self._pub_media.values():
                if ssrc in nm.ssrcs:
                    mid = nm.mid
                    for group in nm.ssrc_groups:
                        if group.semantics == "FID" and len(group.ssrcs) == 2 and group.ssrcs[1] == ssrc:
                            fid_primary = group.ssrcs[0]
                    break
        if mid is None:
            return None
        track = self._track_for_mid(mid)
        if track is None:
            return None
        nm = self._pub_media[mid]
        is_rtx = (packet[1] & 0x7F) in self._rtx_apt
        if is_rtx:
            rid = repaired or rid
            layer = next((lay for lay in track.layers.values()
                          if (rid is not None and lay.rid == rid) or lay.ssrc == fid_primary), None)
            if layer is None:
                return None
            layer.rtx_ssrc = ssrc
            return track, layer, True
        rid = rid or ""
        for old in [lay for lay in track.layers.values() if lay.rid == rid]:
            del track.layers[old.ssrc]  # the encoder restarted with a new SSRC
        layer = track.add_layer(rid, ssrc, rank_of(rid, nm.rids))
        return track, layer, False

    def _track_for_mid(self, mid: str) -> Optional[PublishedTrack]:
        track = self.tracks_by_mid.get(mid)
        if track is not None:
            return track
        nm = self._pub_media.get(mid)
        if nm is None or not nm.accepted or nm.kind not in ("audio", "video"):
            return None
        kind = MediaKind(nm.kind)
        info = self._match_track_info(nm, kind)
        if info is None:
            return None
        pt_codecs = {c.payload_type: c.name.lower() for c in nm.codecs if not c.is_rtx}
        primary = next((c for c in nm.codecs if not c.is_rtx), None)
        if primary is None:
            return None
        stream = info.stream or _STREAM_NAMES.get(info.source, "camera" if kind is MediaKind.VIDEO else "microphone")
        publisher = self.publisher
        track = PublishedTrack(
            info.sid, kind, self.sid, f"{self.sid}|{stream}", pt_codecs, primary.clock_rate,
            send_feedback=(publisher.send_rtcp if publisher is not None else (lambda _b: None)),
        )
        self.tracks_by_mid[mid] = track
        self.log.info("track matched to media", kv={"track": info.sid, "mid": mid, "codecs": ",".join(track.mime_types)})
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
        route = self._ssrc_routes.get(ssrc)
        if route is None:
            route = self._route_new_ssrc(packet, ssrc)
            if route is None:
                self.metrics.inc(MEDIA_RTP_UNMATCHED)
                return
            self._ssrc_routes[ssrc] = route
        track, layer, is_rtx = route
        if is_rtx:
            unwrapped = self._unwrap_rtx(packet, layer)
            if unwrapped is None:
                return
            packet = unwrapped
        track.on_rtp(packet, layer, now)
        if not track.published and not self.closed:
            self.room_media.publish(track)

    def _unwrap_rtx(self, packet: bytes, layer: Layer) -> Optional[bytes]:
        """RFC 4588: the original sequence number leads the payload; the rest is the packet."""
        try:
            start = payload_offset(packet)
        except RtpParseError:
            return None
        end = len(packet)
        if packet[0] & 0x20:  # padding: the last octet counts it
            end -= packet[-1]
        if end - start < 2:
            return None  # padding-only probe
        apt = self._rtx_apt.get(packet[1] & 0x7F)
        if apt is None:
            return None
        header = bytearray(packet[:12])
        header[0] &= 0xCF  # no extension, no padding in the rebuilt packet
        header[1] = (packet[1] & 0x80) | apt
        header[2:4] = packet[start:start + 2]
        header[8:12] = layer.ssrc.to_bytes(4, "big")
        return bytes(header) + packet[start + 2:end]

    # ---- RTCP ----------------------------------------------------------------------------------

    def on_rtcp(self, pc: PeerConnection, packet: bytes, now: float) -> None:
        try:
            packets = rtcp.parse_rtcp(packet)
        except ParseError:
            self.metrics.inc(MEDIA_RTCP_MALFORMED)
            return
        if pc is self.publisher:
            for p in packets:
                if isinstance(p, rtcp.SenderReport):
                    route = self._ssrc_routes.get(p.ssrc)
                    if route is not None:
                        route[0].on_sender_report(p, now)
            return
        for p in packets:
            if isinstance(p, rtcp.Nack):
                down = self._down_by_ssrc.get(p.media_ssrc)
                if down is not None:
                    down.on_nack(p.lost_sequence_numbers(), now)
            elif isinstance(p, rtcp.Pli):
                down = self._down_by_ssrc.get(p.media_ssrc)
                if down is not None:
                    down.on_keyframe_request(now)
            elif isinstance(p, rtcp.Fir):
                for entry in p.entries:
                    down = self._down_by_ssrc.get(entry.ssrc)
                    if down is not None:
                        down.on_keyframe_request(now)

    def on_connected(self, pc: PeerConnection, now: float) -> None:
        if pc is self.subscriber:
            for down in self.down_tracks.values():
                down.track.request_keyframe(None, now)

    def _send_reports(self, now: float) -> None:
        publisher = self.publisher
        if publisher is not None and publisher.connected:
            for track in self.tracks_by_mid.values():
                report = track.receiver_report(now)
                if report is not None:
                    publisher.send_rtcp(report)
        subscriber = self.subscriber
        if subscriber is not None and subscriber.connected and self.down_tracks:
            wall = time.time()
            reports = [r for r in (d.sender_report(now, wall) for d in self.down_tracks.values()) if r is not None]
            if reports:
                subscriber.send_rtcp(rtcp.serialize_rtcp(reports))


__all__ = ["MediaService", "ParticipantMedia", "RoomMedia", "PeerConnection"]
