"""Publisher ingest: what a participant's publisher PC negotiated, and which track each packet feeds.

The client offers on its publisher PC; `PublisherMedia.answer_offer` answers and
`PublisherMedia.apply` takes what the answer negotiated: the header extension ids (mid, rid,
repaired rid, transport-wide CC) and each m-line's codecs and SSRCs. A track is matched to its
m-line when the first packet on it arrives (the signalled `add_track` by the msid's track id,
else the oldest unmatched track of the same kind) and is published in the room — a LOCAL source
in the room's TrackManager — once its receiver took a packet. An SSRC is matched to its m-line
by the mid header extension, else by the m-line's a=ssrc lines, else by what the node this
participant migrated from had learned (libwebrtc stops sending MID/RID once an SSRC is known).

Transport-wide CC feedback (the publisher's bandwidth estimator runs on our reports) is the
publisher PC's session's business (rtp.peer_session): it notes every arrival itself; this
module only says which extension id the offer negotiated (`transport_cc_extension`).

A track stops feeding when the client's re-offer stops its m-line, when the server unpublishes
it (its m-line is then revoked until the client stops it, so its packets are not matched to
another track) and when it is handed to a new source; `_forget` is that step.
Moderation (mute) pauses and resumes the track's down tracks.

Dynacast: each simulcast video track's receiver reports to `_TrackDynacast` whenever the layers
its down tracks want may have changed (local subscribers and other nodes through the relay
alike); the publisher is told the qualities anyone receives (`subscribed_quality_update`), a
higher one at once, a lower one after `video.dynacast_pause_delay` (forwarding.dynacast).

`on_rtp` is the media hot path: a dict lookup per packet once the SSRC is known. A publisher
that keeps inventing SSRCs must not grow that table: a track keeps at most
`MAX_SSRCS_PER_TRACK` of them; past it the SSRCs its receiver no longer uses (a layer's old SSRC
after a restart) are forgotten, and a new SSRC that still finds no room is dropped and counted.
"""

from __future__ import annotations

import secrets
import struct
from typing import Callable, Optional, Sequence

import attrs
import trio
from livekit.protocol import models, rtc

from rtp import rtcp
from rtp.header_extensions import HeaderExtensionParseError, audio_level_in, decode_mid
from rtp.packet import RtpParseError, find_extension
from sdp.codecs import EXT_MID, EXT_REPAIRED_RID, EXT_RID, EXT_TWCC, MediaKind
from sdp.errors import NegotiationError, SdpParseError, TransceiverInvariantError
from sdp.model import Fingerprint, SessionDescription
from sdp.negotiator import DtlsRole, LocalParams, NegotiatedMedia, Outgoing, answer_offer, local_dtls_role, negotiated_media
from sdp.parser import parse as parse_sdp

from trio_sfu import metrics as m
from trio_sfu.forwarding import TrackReceiver
from trio_sfu.forwarding.dynacast import DynacastQuality, enabled_qualities
from trio_sfu.forwarding.receiver import MAX_SSRCS_PER_TRACK, ReceiverState
from trio_sfu.log import ContextLogger
from trio_sfu.media.data_channels import remote_sctp_params
from trio_sfu.media.room_media import PublishedTrack, RoomMedia
from trio_sfu.media.transport import ParticipantTransports, WakeBy
from trio_sfu.signal.media_port import MediaParticipant


def subscriber_stream_id(publisher_sid: str, track_sid: str) -> str:
    """The msid stream id subscribers get for a track: LiveKit's packed `PA_…|TR_…`.

    It must name the track, not a stream label like `camera`: a client whose idle transceiver
    is reused for another track keeps the receiver (and MediaStreamTrack id) made for the first
    one, so LiveKit's SDKs take the track sid from the stream id's `TR` suffix and only fall back
    to the MediaStreamTrack id — with `PA_x|microphone` they look for the old track. (LiveKit
    sends a `PA_x|<stream>` label only for rooms with sync_streams, and then reuses no
    transceiver; we do not implement sync_streams.)"""
    return f"{publisher_sid}|{track_sid}"


#: An RTP packet's SSRC (the 32-bit word at offset 8), read without a slice; its timestamp (at 4) the same way.
_read_ssrc = _read_timestamp = struct.Struct("!I").unpack_from
#: Bound once: on_rtp runs per packet.
_LATENCY_SAMPLE_EVERY = m.FORWARD_LATENCY_SAMPLE_EVERY

#: Publisher SSRC -> (mid, simulcast layer, is RTX), as another node learned them.
MigratedStreams = dict[int, tuple[str, int, bool]]


@attrs.frozen
class PublisherAnswer:
    """Our answer to one publisher offer, and what the publisher PC and its data channel take from it."""

    answer: SessionDescription
    media: dict[str, NegotiatedMedia]  # by mid
    dtls_role: DtlsRole  # ours
    # The client's ICE and DTLS identity (from the offer's first usable section).
    remote_ufrag: str
    remote_pwd: str
    remote_fingerprints: tuple[Fingerprint, ...]
    first_mid: Optional[str]
    sctp: tuple[bool, int, int]  # data_channels.remote_sctp_params of the offer
    # The offer restarted ICE on the open publisher PC: the new local credentials it was answered with.
    ice_restart: Optional[LocalParams] = None


class _TrackDynacast:
    """One simulcast track's dynacast: its receiver's `LayerDemandListener`, which tells the
    publisher the qualities subscribers (here and on other nodes) receive."""

    def __init__(self, publisher: "PublisherMedia", track_sid: str, codec: str, pause_delay: float) -> None:
        self.publisher = publisher
        self.track_sid = track_sid
        self.codec = codec  # as LiveKit names it in SubscribedCodec: "vp8", "h264"...
        self.quality = DynacastQuality(pause_delay=pause_delay)

    def layer_demand_changed(self, receiver: TrackReceiver) -> None:
        if receiver.state is not ReceiverState.OPEN:
            return  # closing: its subscribers leave; the publisher's track is going away
        now = trio.current_time()
        announce = self.quality.demand(receiver.subscribed_layers(), now)
        if announce is not None:
            self.send(announce)
        self.publisher._wake_by(self.quality.next_deadline())

    def poll(self, now: float) -> None:
        announce = self.quality.poll(now)
        if announce is not None:
            self.send(announce)

    def send(self, quality: int) -> None:
        publisher = self.publisher
        qualities = [rtc.SubscribedQuality(quality=q, enabled=on) for q, on in enabled_qualities(quality)]  # type: ignore[arg-type]
        publisher.metrics.inc(m.MEDIA_DYNACAST_UPDATES)
        publisher.log.debug("subscribed qualities", kv={"track": self.track_sid, "max": int(quality)})
        publisher.participant.send(rtc.SignalResponse(subscribed_quality_update=rtc.SubscribedQualityUpdate(
            track_sid=self.track_sid, subscribed_qualities=qualities,
            subscribed_codecs=[rtc.SubscribedCodec(codec=self.codec, qualities=qualities)])))


class PublisherMedia:
    """One participant's publisher side: negotiated media, tracks by m-line and SSRC."""

    def __init__(self, sid: str, participant: MediaParticipant, room_media: RoomMedia,
                 transports: ParticipantTransports, *, migrated_streams: MigratedStreams, wake_by: WakeBy,
                 metrics: m.Metrics, log: ContextLogger, dynacast_pause_delay: Optional[float] = None) -> None:
        self.sid = sid
        self.participant = participant
        self.room_media = room_media
        self.metrics = metrics
        self.log = log
        self._transports = transports
        self._wake_by = wake_by
        self.closed = False

        self._answers = 0
        self._media: dict[str, NegotiatedMedia] = {}
        self._ext_mid: Optional[int] = None
        self._ext_rid: Optional[int] = None
        self._ext_rrid: Optional[int] = None
        # Transport-wide CC: the publisher's estimator runs on the arrival reports its PC's
        # session sends once it knows this id.
        self.transport_cc_extension: Optional[int] = None
        self._ssrc_tracks: dict[int, PublishedTrack] = {}
        # The SSRCs in `_ssrc_tracks` of each track (by id: the track object), what the cap counts.
        self._ssrcs_of_track: dict[int, list[int]] = {}
        self.tracks_by_mid: dict[str, PublishedTrack] = {}
        # Mids whose track the server unpublished while the client still sends on them: their
        # packets must not be matched to another track; cleared once the client stops the m-line.
        self._revoked_mids: set[str] = set()
        # The client's packets may no longer name their stream after a migration (no MID/RID
        # once acknowledged): the streams the old node learned place them.
        self._migrated_streams = migrated_streams
        # Dynacast per simulcast video track (by track sid); None: dynacast is off.
        self._dynacast_pause_delay = dynacast_pause_delay
        self._dynacast: dict[str, _TrackDynacast] = {}

    # ---- negotiation -------------------------------------------------------------------------

    def answer_offer(self, sdp: str,
                     outgoing_for: Optional[Callable[[SessionDescription], Outgoing]] = None) -> Optional[PublisherAnswer]:
        """Answer a publisher offer; None (counted, logged) if it cannot be answered. In
        single-PC mode `outgoing_for` says what the server sends on the offer's receive-only
        m-lines (the subscribing side's table, trio_sfu.media.subscribing)."""
        try:
            parsed = parse_sdp(sdp)
            self._answers += 1
            restart = self._transports.publisher_restart_params(parsed)
            local = restart if restart is not None else self._transports.pub_local
            outgoing = outgoing_for(parsed) if outgoing_for is not None else None
            answer = answer_offer(parsed, local, session_version=self._answers, outgoing=outgoing, cname=self.sid)
            media = negotiated_media(parsed, answer)
            role = local_dtls_role(answer, local_is_offerer=False)
        except (SdpParseError, NegotiationError, TransceiverInvariantError) as exc:
            self.metrics.inc(m.MEDIA_SDP_REJECTED)
            self.log.warning("SDP refused", kv={"what": "publisher offer", "error": str(exc)})
            return None
        first = next((s for s in parsed.media if not s.rejected), None)
        assert first is not None  # answer_offer refuses offers without a usable section
        return PublisherAnswer(answer, media, role, parsed.effective_ufrag(first) or "",
                               parsed.effective_pwd(first) or "", tuple(parsed.effective_fingerprints(first)),
                               first.mid, remote_sctp_params(parsed), restart)

    def apply(self, media: dict[str, NegotiatedMedia]) -> None:
        """Take what an answered offer negotiated: m-lines the client stopped withdraw their
        tracks, the rest is what the next packets are matched with."""
        self._withdraw_stopped_tracks(media)
        self._media = media
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
                    self.transport_cc_extension = ext_id

    def _withdraw_stopped_tracks(self, media: dict[str, NegotiatedMedia]) -> None:
        """A re-offer whose m-line no longer sends (the client removed the sender) unpublishes
        the track on it, as LiveKit does when the receiver ends."""
        self._revoked_mids = {mid for mid in self._revoked_mids
                              if (nm := media.get(mid)) is not None and nm.accepted and nm.direction.receives}
        stopped = []
        for mid, track in self.tracks_by_mid.items():
            nm = media.get(mid)
            if nm is None or not nm.accepted or not nm.direction.receives:
                stopped.append(track)
        if not stopped:
            return
        for track in stopped:
            self._forget(track)
        for track in stopped:
            self.log.info("track unpublished", kv={"track": track.sid})
            # The room hears it (ParticipantUpdate) before subscribers get the offer without it.
            self.participant.unpublish_track(track.sid)
        self.room_media.unpublish(stopped)

    def _forget(self, track: PublishedTrack) -> list[str]:
        """Packets stop feeding `track`: its m-line and its SSRCs no longer lead to it (the
        caller unpublishes it). Returns its mids (one: a track is matched to one m-line)."""
        mids = [mid for mid, t in self.tracks_by_mid.items() if t is track]
        for mid in mids:
            del self.tracks_by_mid[mid]
        for ssrc in self._ssrcs_of_track.pop(id(track), ()):
            if self._ssrc_tracks.get(ssrc) is track:
                del self._ssrc_tracks[ssrc]
        dynacast = self._dynacast.get(track.sid)
        if dynacast is not None and track.receiver.demand_listener is dynacast:
            track.receiver.demand_listener = None
            del self._dynacast[track.sid]
        return mids

    def routed_ssrcs(self) -> dict[int, str]:
        """SSRC -> the sid of the track its packets feed (what `on_rtp` looks up)."""
        return {ssrc: track.sid for ssrc, track in self._ssrc_tracks.items()}

    def _remember_ssrc(self, ssrc: int, track: PublishedTrack) -> bool:
        """Route `ssrc` to `track` from now on; False if the track has no room for another SSRC."""
        ssrcs = self._ssrcs_of_track.setdefault(id(track), [])
        if len(ssrcs) >= MAX_SSRCS_PER_TRACK:
            # Forget the SSRCs the receiver replaced (a restarted layer's old ones); never one in use.
            media, rtx = track.receiver.ssrc_layers()
            for old in [s for s in ssrcs if s not in media and s not in rtx]:
                ssrcs.remove(old)
                if self._ssrc_tracks.get(old) is track:
                    del self._ssrc_tracks[old]
            if len(ssrcs) >= MAX_SSRCS_PER_TRACK:
                return False
        ssrcs.append(ssrc)
        self._ssrc_tracks[ssrc] = track
        return True

    def _track_by_sid(self, track_sid: str) -> Optional[PublishedTrack]:
        return next((t for t in self.tracks_by_mid.values() if t.sid == track_sid), None)

    # ---- matching packets to tracks ----------------------------------------------------------

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
        for nm in self._media.values():
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
        nm = self._media.get(mid)
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
            send_rtcp=self._transports.send_publisher_rtcp,
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
        track = PublishedTrack(info.sid, kind, self.sid, subscriber_stream_id(self.sid, info.sid), nm.codecs,
                               dict(nm.extensions), receiver, self.room_media.reports.audio)
        if kind is MediaKind.VIDEO and receiver.simulcast and self._dynacast_pause_delay is not None:
            dynacast = self._dynacast[info.sid] = _TrackDynacast(self, info.sid, primary.name.lower(),
                                                                 self._dynacast_pause_delay)
            receiver.demand_listener = dynacast
            # Nobody receives it yet: unless someone subscribes within the delay, the layers stop.
            dynacast.layer_demand_changed(receiver)
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
            # Only a track of the m-line's kind: the SDP must not relabel a microphone as video.
            sid = p.track_by_cid.get(cid)
            if sid is not None and sid not in taken and sid in p.tracks and p.tracks[sid].type == want_type:
                return p.tracks[sid]
            for info in p.tracks.values():
                if info.sid not in taken and info.type == want_type and any(c.cid == cid for c in info.codecs):
                    return info
        for info in p.tracks.values():
            if info.sid not in taken and info.type == want_type:
                return info
        return None

    # ---- in: the publisher PC's RTP and RTCP (the transport endpoint calls these) ----------------

    def on_rtp(self, packet: bytes, now: float) -> None:
        if len(packet) < 12:
            return
        ssrc = _read_ssrc(packet, 8)[0]
        track = self._ssrc_tracks.get(ssrc)
        if track is None:
            mid = self._mid_of(packet, ssrc)
            track = self._track_for_mid(mid) if mid is not None else None
            if track is None:
                self.metrics.inc(m.MEDIA_RTP_UNMATCHED)
                return
            if not self._remember_ssrc(ssrc, track):
                self.metrics.inc(m.MEDIA_RTP_SSRC_OVER_CAP)
                return
        receiver = track.receiver
        if not receiver.receive_rtp(packet, now):
            self.metrics.inc(m.MEDIA_RTP_DROPPED)
            return
        if track.audio_level is not None:  # audio with levels only: video pays this test alone
            self._observe_audio_level(track, packet, now)
        if not track.published and not self.closed:
            self.room_media.publish(track)
        elif not receiver.counters.packets % _LATENCY_SAMPLE_EVERY and receiver.down_tracks:
            # The fan-out above sent to every subscriber synchronously: the time since the mux
            # read the datagram's batch (`now`) is what forwarding this packet cost, decryption
            # included, plus the packets of its batch routed before it.
            self.metrics.forward_latency.observe(trio.current_time() - now)
        # A loss just noticed schedules a NACK sooner than the loop would wake.
        self._wake_by(receiver.next_deadline())

    def _observe_audio_level(self, track: PublishedTrack, packet: bytes, now: float) -> None:
        """The packet's RFC 6464 level to the track's meter (active speakers)."""
        meter, ext_id = track.audio_level, track.audio_level_extension
        assert meter is not None and ext_id is not None
        try:
            level = audio_level_in(packet, ext_id)
        except RtpParseError:
            self.metrics.inc(m.MEDIA_AUDIO_LEVEL_MALFORMED)
            return
        if level is not None:
            meter.observe(level, _read_timestamp(packet, 4)[0], now)

    def on_rtcp(self, packets: Sequence[rtcp.RtcpPacket], now: float) -> None:
        """The publisher's RTCP (its sender reports, our NACK/PLI answered...) to every receiver."""
        for track in self.tracks_by_mid.values():
            track.receiver.handle_rtcp(packets, now)

    # ---- Timed (trio_sfu.media.timers): uplink RTCP we owe ---------------------------------

    def next_deadline(self) -> Optional[float]:
        deadline = None
        for dynacast in self._dynacast.values():
            t = dynacast.quality.next_deadline()
            if t is not None and (deadline is None or t < deadline):
                deadline = t
        for track in self.tracks_by_mid.values():
            t = track.receiver.next_deadline()
            if t is not None and (deadline is None or t < deadline):
                deadline = t
        return deadline

    def handle_timeout(self, now: float) -> None:
        """Each receiver's NACKs and receiver reports; dynacast downgrades that are due."""
        for track in list(self.tracks_by_mid.values()):
            track.receiver.poll_rtcp(now)
        for dynacast in list(self._dynacast.values()):
            dynacast.poll(now)

    # ---- moderation and hand-over -----------------------------------------------------------

    def track_muted(self, info: models.TrackInfo) -> None:
        """One of the participant's tracks was muted or unmuted (the client's MuteTrackRequest or
        the Server API): as LiveKit, subscribers' down tracks pause; on unmute they resume at a
        keyframe (DownTrack.set_disabled sends the PLI upstream)."""
        track = self._track_by_sid(info.sid)
        if track is None:
            return  # no media matched yet: down tracks read `muted` when they start
        now = trio.current_time()
        for member in list(self.room_media.sessions.values()):
            binding = member.subscriptions.get(info.sid)
            down = binding.down if binding is not None and binding.source.receiver is track.receiver else None
            if down is None:
                continue
            if info.muted:
                down.set_disabled(True, now)
            elif down.target_layer is not None:  # else the subscriber (or its allocator) paused it
                down.set_disabled(False, now)
            # A muted track takes no share of the member's downlink; unmuted, it takes one again.
            member.reallocate(now)

    def track_unpublished(self, info: models.TrackInfo) -> None:
        """The server unpublished one of the participant's tracks (a publish permission revoked):
        its receiver closes and subscribers drop its m-line, as when the client stops the m-line."""
        track = self._track_by_sid(info.sid)
        if track is None:
            return  # already withdrawn (_withdraw_stopped_tracks) or never matched to media
        self._revoked_mids.update(self._forget(track))
        self.log.info("track unpublished by the server", kv={"track": track.sid})
        self.room_media.unpublish([track])

    def restart(self, track_sid: str) -> bool:
        """Hand one of the tracks over to a new source, as a migration hand-back does: its
        current source closes expected-to-resume (subscribers cache their transceivers), and
        the next packet on its m-line publishes a fresh receiver under the same track id."""
        track = self._track_by_sid(track_sid)
        if track is None or self.closed:
            return False
        self._forget(track)
        self.room_media.unpublish([track], expected_to_resume=True)
        return True

    def close(self, hand_over: Optional[Callable[[list[PublishedTrack]], list[PublishedTrack]]] = None) -> None:
        """The participant left: its tracks are unpublished, but for those `hand_over` keeps
        (a migration: they stay until their new source appears on the other node)."""
        self.closed = True
        tracks = list(dict.fromkeys(self.tracks_by_mid.values()))
        if hand_over is not None:
            tracks = hand_over(tracks)
        self.room_media.unpublish(tracks)
        for track in self.tracks_by_mid.values():
            if track.receiver.demand_listener is self._dynacast.get(track.sid):
                track.receiver.demand_listener = None  # a handed-over receiver outlives us
        self.tracks_by_mid.clear()
        self._ssrc_tracks.clear()
        self._ssrcs_of_track.clear()
        self._dynacast.clear()


__all__ = ["MigratedStreams", "PublisherAnswer", "PublisherMedia", "subscriber_stream_id"]
