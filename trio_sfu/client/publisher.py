"""What our client publishes: its publications, the publisher PC and the offers made on it.

We offer on the publisher PC (the server answers as an ICE-lite SFU), one offer at a time: the
negotiation loop waits for each answer, and publishing while an offer is out offers again after
it, with every publication so far, in the same m-line order. RTCP on this PC is ours to send
(sender reports) and the SFU's to us (receiver reports, giving a round trip; PLI/FIR asking for
a key frame).
"""

from __future__ import annotations

import secrets
import uuid
from typing import Awaitable, Callable

import attrs
import trio
from livekit.protocol import models, rtc

from rtp import rtcp
from rtp.dtls import DtlsRole
from rtp.errors import ParseError
from sdp.codecs import EXT_AUDIO_LEVEL, EXT_MID, EXT_RID
from sdp.model import SessionDescription
from sdp.negotiator import local_dtls_role, remote_transport
from sdp.parser import parse as parse_sdp
from sdp.parser import serialize as serialize_sdp

from trio_sfu.client.errors import ClientError
from trio_sfu.client.peer_connection import ClientPeerConnection
from trio_sfu.client.publisher_offer import OPUS, VP8, OfferedTrack, build_publisher_offer
from trio_sfu.client.signal_connection import ErrorSink, SignalConnection
from trio_sfu.client.synthetic import RtpStreamWriter, VideoLayerSpec, simulcast_layers
from trio_sfu.client.wallclock import ntp_now

#: livekit-client gives up on add_track after 10 s.
PUBLISH_TIMEOUT = 10.0
ANSWER_TIMEOUT = 10.0
_QUALITY_OF_RID = {"q": models.VideoQuality.LOW, "h": models.VideoQuality.MEDIUM, "f": models.VideoQuality.HIGH}


class LocalPublication:
    """A track we publish: its signalling state and the RTP streams (one per simulcast layer)."""

    def __init__(self, publisher: "Publisher", kind: str, name: str, mid: str,
                 layers: list[VideoLayerSpec]) -> None:
        self._publisher = publisher
        self.kind = kind
        self.name = name
        self.cid = str(uuid.uuid4())
        self.mid = mid
        self.sid: str | None = None  # TR_… once track_published arrives
        #: The TrackInfo of track_published, as the server gave it (sent back in sync_state on a move).
        self.track_info: models.TrackInfo | None = None
        self.layers = layers  # video only; [] for audio
        self.rids: tuple[str, ...] = tuple(layer.rid for layer in layers if layer.rid)
        count = max(len(self.rids), 1)
        self.ssrcs: dict[str, int] = dict(zip(self.rids or ("",), (secrets.randbits(32) or 1 for _ in range(count))))
        self.codec = OPUS if kind == "audio" else VP8
        self.clock_rate = self.codec.clock_rate
        self.published = trio.Event()
        self.negotiated = trio.Event()
        self.packets_sent = 0
        self.packets_dropped = 0  # send_rtp calls that sent nothing: not negotiated/connected yet
        self.keyframe_requests = 0
        #: Receiver reports the SFU sent about this track, and the round trip they gave (LSR/DLSR).
        self.receiver_reports = 0
        self.rtt_ms: float | None = None
        self._keyframe_pending: set[str] = set()
        self._last_send_clock: dict[str, float] = {}
        self._writers: dict[str, RtpStreamWriter] = {}
        self._extension_ids: dict[str, int] = {}  # URI -> id, as the answer agreed
        #: The RFC 6464 level (-dBov) its packets carry (audio; None: no level element).
        self.audio_level: int | None = None
        self.error: str | None = None

    def offered(self, stream_id: str, cname: str) -> OfferedTrack:
        return OfferedTrack(self.mid, self.kind, stream_id, self.cid, cname,
                            tuple(self.ssrcs.values()), self.rids)

    def _on_answer(self, extensions: dict[int, str]) -> None:
        """Bind the RTP writers to the extension ids the answer agreed to (mid always, rid for
        simulcast, the audio level when one is set)."""
        self._extension_ids = {uri: ext_id for ext_id, uri in extensions.items()}
        self._bind_writers()
        self.negotiated.set()

    def set_audio_level(self, level: int | None) -> None:
        """From now on, every packet of this audio track says it is `level` -dBov loud (RFC
        6464: 0 loudest, 127 silence) if the answer agreed to the element; None: no element."""
        if level is not None and not 0 <= level <= 127:
            raise ValueError("audio level must be 0..127 -dBov")
        self.audio_level = level
        if self.negotiated.is_set():
            self._bind_writers()

    def _bind_writers(self) -> None:
        ids = self._extension_ids
        for rid, ssrc in self.ssrcs.items():
            elements: dict[int, bytes] = {}
            if EXT_MID in ids:
                elements[ids[EXT_MID]] = self.mid.encode()
            if rid and EXT_RID in ids:
                elements[ids[EXT_RID]] = rid.encode()
            if self.kind == "audio" and self.audio_level is not None and EXT_AUDIO_LEVEL in ids:
                elements[ids[EXT_AUDIO_LEVEL]] = bytes((self.audio_level,))
            old = self._writers.get(rid)
            first_seq = old.sequence_number if old is not None else secrets.randbits(16)
            writer = self._writers[rid] = RtpStreamWriter(ssrc, self.codec.payload_type, elements, first_seq)
            if old is not None:
                # The same SSRC goes on (a renegotiation, a move to another node): RFC 3550's
                # sender counts are per SSRC, so they carry over with the sequence number.
                writer.packets, writer.octets, writer.last_timestamp = old.packets, old.octets, old.last_timestamp

    @property
    def octets_sent(self) -> int:
        """Payload octets sent on all of the track's streams (RFC 3550's sender octet count)."""
        return sum(writer.octets for writer in self._writers.values())

    def header_size(self, rid: str = "") -> int:
        writer = self._writers.get(rid)
        return writer.header_size if writer is not None else 12 + 12

    @property
    def ready(self) -> bool:
        pc = self._publisher.pc
        return self.negotiated.is_set() and pc is not None and pc.connected.is_set()

    async def wait_ready(self, timeout: float = 15.0) -> None:
        """Until the track is published, its m-line answered and the publisher PC connected."""
        with trio.fail_after(timeout):
            await self.published.wait()
            await self.negotiated.wait()
            # The publisher PC is replaced when the client moves to another node: wait on the current one.
            while not self.ready:
                pc = self._publisher.pc
                if pc is None:
                    await trio.sleep(0.01)
                    continue
                with trio.move_on_after(0.05):
                    await pc.connected.wait()

    def send_rtp(self, payload: bytes, *, timestamp: int, marker: bool = False, rid: str = "") -> bool:
        """Packetize ``payload`` into one RTP packet of this track (layer ``rid``) and send it.

        False (and counted) when the PC is not ready yet (also while the client moves to another
        node) or the transport dropped it. A packet never handed to a connected PC takes no
        sequence number, so the receiver sees no false loss across a move.
        """
        writer = self._writers.get(rid)
        pc = self._publisher.pc
        if writer is None or pc is None or not pc.connected.is_set():
            self.packets_dropped += 1
            return False
        if pc.send_rtp(writer.packet(payload, timestamp, marker)):
            self.packets_sent += 1
            self._last_send_clock[rid] = trio.current_time()
            return True
        self.packets_dropped += 1
        return False

    def take_keyframe_request(self, rid: str = "") -> bool:
        """Whether the SFU asked (PLI/FIR) for a key frame on layer ``rid`` since the last call."""
        if rid in self._keyframe_pending:
            self._keyframe_pending.discard(rid)
            return True
        return False

    def sender_reports(self, now: float, ntp: int) -> list[rtcp.SenderReport]:
        """One SR per stream that has sent anything; the RTP timestamp is extrapolated to ``now``."""
        reports = []
        for rid, writer in self._writers.items():
            if not writer.packets or writer.last_timestamp is None:
                continue
            elapsed = max(now - self._last_send_clock.get(rid, now), 0.0)
            rtp_timestamp = (writer.last_timestamp + int(elapsed * self.clock_rate)) & 0xFFFFFFFF
            reports.append(rtcp.SenderReport(writer.ssrc, ntp, rtp_timestamp, writer.packets & 0xFFFFFFFF,
                                             writer.octets & 0xFFFFFFFF))
        return reports

    def _on_report_block(self, block: rtcp.ReportBlock, ntp: int) -> None:
        self.receiver_reports += 1
        if block.lsr:
            # RFC 3550 §6.4.1: RTT = arrival - LSR - DLSR, all in 1/65536 s of compact NTP.
            rtt = (rtcp.compact_ntp(ntp) - block.lsr - block.dlsr) & 0xFFFFFFFF
            if rtt < 0x80000000:
                self.rtt_ms = rtt * 1000 / 65536

    def _on_keyframe_request(self, ssrc: int) -> None:
        for rid, own in self.ssrcs.items():
            if own == ssrc:
                self.keyframe_requests += 1
                self._keyframe_pending.add(rid)


@attrs.define(eq=False)
class PendingOffer:
    """Our publisher offer waiting for the server's answer (or its refusal)."""

    offer_id: int
    offer: SessionDescription
    answered: trio.Event = attrs.field(factory=trio.Event)


class Publisher:
    """The publishing side of one participant (see the module docstring).

    ``open_pc`` opens the publisher PC in the client's nursery, its packets wired to
    :meth:`on_rtp` / :meth:`on_rtcp`. :meth:`run_negotiation` is a task of the client.
    """

    def __init__(self, signal: SignalConnection, open_pc: Callable[[], ClientPeerConnection],
                 on_error: ErrorSink) -> None:
        self._signal = signal
        self._open_pc = open_pc
        self._on_error = on_error
        self.publications: list[LocalPublication] = []
        self.pc: ClientPeerConnection | None = None
        self.pending_offer: PendingOffer | None = None
        self.sender_reports_sent = 0
        self._stream_id = str(uuid.uuid4())
        self._cname = secrets.token_urlsafe(12)
        self._negotiate_needed = trio.Event()
        self._offer_id = 0
        self._mids_used = 0
        #: (generation, what to send right after that generation's next offer), for a move.
        self._after_offer: tuple[int, Callable[[], Awaitable[None]]] | None = None

    @property
    def published(self) -> bool:
        """Whether anything was published (so a new node needs an offer from us)."""
        return any(p.published.is_set() for p in self.publications)

    # ------------------------------------------------------------------ publishing

    async def publish_audio(self, name: str = "audio", *, timeout: float = PUBLISH_TIMEOUT) -> LocalPublication:
        """Announce a microphone track (Opus) and wait for ``track_published``; negotiation follows."""
        publication = LocalPublication(self, "audio", name, self._new_mid(), [])
        request = rtc.AddTrackRequest(cid=publication.cid, name=name, type=models.TrackType.AUDIO,
                                      source=models.TrackSource.MICROPHONE)
        return await self._publish(publication, request, timeout)

    async def publish_video(self, name: str = "video", *, width: int = 1280, height: int = 720,
                            bitrate: int = 1_700_000, simulcast: bool = True,
                            timeout: float = PUBLISH_TIMEOUT) -> LocalPublication:
        """Announce a camera track (VP8; simulcast q/h/f when asked) and wait for ``track_published``."""
        layers = simulcast_layers(width, height, bitrate, simulcast)
        publication = LocalPublication(self, "video", name, self._new_mid(), layers)
        video_layers = [
            models.VideoLayer(quality=_QUALITY_OF_RID.get(layer.rid, models.VideoQuality.HIGH),
                              width=layer.width, height=layer.height, bitrate=layer.bitrate,
                              rid=layer.rid, spatial_layer=index)
            for index, layer in enumerate(layers)
        ]
        request = rtc.AddTrackRequest(
            cid=publication.cid, name=name, type=models.TrackType.VIDEO, source=models.TrackSource.CAMERA,
            width=width, height=height, layers=video_layers,
            simulcast_codecs=[rtc.SimulcastCodec(codec="vp8", cid=publication.cid)],
        )
        return await self._publish(publication, request, timeout)

    def _new_mid(self) -> str:
        # Never reused, even for a refused publication: one mid names one m-line for the PC's life.
        mid = str(self._mids_used)
        self._mids_used += 1
        return mid

    async def _publish(self, publication: LocalPublication, request: rtc.AddTrackRequest,
                       timeout: float) -> LocalPublication:
        self.publications.append(publication)
        await self._signal.send(rtc.SignalRequest(add_track=request))
        with trio.move_on_after(timeout):
            await publication.published.wait()
        if publication.error is not None or not publication.published.is_set():
            # Never offered: a later offer must not carry an m-line for it.
            self.publications.remove(publication)
            if publication.error is not None:
                raise ClientError(f"publishing {publication.name!r} refused: {publication.error}")
            raise ClientError(f"no track_published for {publication.name!r} within {timeout:g} s")
        self.ensure_pc()
        self._negotiate_needed.set()
        return publication

    def ensure_pc(self) -> ClientPeerConnection:
        """The publisher PC, opened on first use."""
        if self.pc is None:
            self.pc = self._open_pc()
        return self.pc

    # ------------------------------------------------------------------ negotiation

    async def run_negotiation(self) -> None:
        """One publisher offer at a time; publishing during a negotiation re-offers after it."""
        while True:
            await self._negotiate_needed.wait()
            self._negotiate_needed = trio.Event()
            generation = self._signal.generation
            pc = self.ensure_pc()
            # After a move this is every publication again, same mids, msids (cids) and SSRCs:
            # the new node knows the tracks from the old one, so no add_track goes out.
            tracks = [p.offered(self._stream_id, self._cname) for p in self.publications if p.published.is_set()]
            self._offer_id += 1
            offer_id = self._offer_id
            offer = build_publisher_offer(pc.local, tracks, offer_id)
            pending = self.pending_offer = PendingOffer(offer_id, offer)
            sent = await self._signal.send(rtc.SignalRequest(offer=rtc.SessionDescription(
                type="offer", sdp=serialize_sdp(offer), id=offer_id)), generation)
            if not sent:
                # Built for a node we left (the move offers again) or the connection is gone (the
                # reader ends the client).
                if self.pending_offer is pending:
                    self.pending_offer = None
                continue
            if not pc.candidate_trickled:
                # Once per PC, after its first description, as a browser trickles its host candidate.
                pc.candidate_trickled = True
                await self._signal.send_candidate(rtc.SignalTarget.PUBLISHER, pc.candidate_line(),
                                                  offer.media[0].mid or "0", pc.local.ice_ufrag, generation)
            after = self._after_offer
            if after is not None and after[0] == generation:
                self._after_offer = None
                await after[1]()
            with trio.move_on_after(ANSWER_TIMEOUT):
                await pending.answered.wait()
            if not pending.answered.is_set():
                self._on_error(f"no answer to publisher offer {offer_id} within {ANSWER_TIMEOUT:g} s")
                if self.pending_offer is pending:
                    self.pending_offer = None

    def offer_again(self, then: Callable[[], Awaitable[None]] | None = None) -> None:
        """Offer every publication again on the current connection (after a move), and send
        ``then()`` right after that offer (and our candidate) went out."""
        if then is not None:
            self._after_offer = (self._signal.generation, then)
        self._negotiate_needed.set()

    def leave_node(self) -> None:
        """The node we published to is gone (a move): its PC closes, an offer out to it is
        given up (the negotiation loop offers again on a new PC)."""
        if self.pc is not None:
            self.pc.close()
            self.pc = None
        self._release_pending()

    def _release_pending(self) -> None:
        pending, self.pending_offer = self.pending_offer, None
        if pending is not None:
            pending.answered.set()

    # ------------------------------------------------------------------ what the server says

    def on_track_published(self, response: rtc.TrackPublishedResponse) -> None:
        for publication in self.publications:
            if publication.cid == response.cid:
                publication.sid = response.track.sid
                publication.track_info = response.track
                publication.published.set()

    def on_answer(self, description: rtc.SessionDescription) -> None:
        """The server's answer to our pending offer. Raises RtpStackError/ValueError for an
        answer that cannot be taken (the reader reports it)."""
        pending = self.pending_offer
        if pending is None or (description.id and description.id != pending.offer_id):
            self._on_error(f"publisher answer {description.id} matches no pending offer")
            return
        answer = parse_sdp(description.sdp)
        if len(answer.media) != len(pending.offer.media):
            raise ValueError(f"answer has {len(answer.media)} m-lines, offer {pending.offer_id} "
                             f"had {len(pending.offer.media)}")
        pc = self.ensure_pc()
        pc.set_remote(remote_transport(answer), DtlsRole(local_dtls_role(answer, local_is_offerer=True).value))
        by_mid = {p.mid: p for p in self.publications}
        for section in answer.media:
            publication = by_mid.get(section.mid or "")
            if publication is None:
                continue
            if section.rejected:
                publication.error = "m-line rejected by the server"
                self._on_error(f"server rejected publication {publication.name!r} (mid {publication.mid})")
                continue
            publication._on_answer({e.id: e.uri for e in section.extmaps})
        self.pending_offer = None
        pending.answered.set()

    def on_refused(self, response: rtc.RequestResponse, reason: str) -> None:
        """A request of ours the server refused: a publication's add_track, or our offer."""
        if response.WhichOneof("request") == "add_track":
            for publication in self.publications:
                if publication.cid == response.add_track.cid:
                    publication.error = f"{reason}: {response.message}"
                    publication.published.set()  # wakes _publish, which raises
        pending = self.pending_offer
        if pending is not None and response.request_id == pending.offer_id:
            # The server refused our offer outright: give up on it instead of waiting out the timeout.
            self._release_pending()

    # ------------------------------------------------------------------ RTCP

    def on_rtp(self, packet: bytes, now: float) -> None:
        pass  # the SFU sends no media on the publisher PC

    def on_rtcp(self, packet: bytes, now: float) -> None:
        try:
            packets = rtcp.parse_rtcp(packet)
        except ParseError:
            return
        ntp = ntp_now()
        for item in packets:
            if isinstance(item, (rtcp.ReceiverReport, rtcp.SenderReport)):
                for block in item.reports:
                    for publication in self.publications:
                        if block.ssrc in publication.ssrcs.values():
                            publication._on_report_block(block, ntp)
            elif isinstance(item, (rtcp.Pli, rtcp.Fir)):
                ssrcs = [item.media_ssrc] if isinstance(item, rtcp.Pli) else [e.ssrc for e in item.entries]
                for publication in self.publications:
                    for ssrc in ssrcs:
                        publication._on_keyframe_request(ssrc)

    def send_reports(self, now: float, ntp: int) -> None:
        """Our sender reports, one per stream that sent anything, once the PC is up."""
        pc = self.pc
        if pc is None or not pc.connected.is_set():
            return
        for publication in self.publications:
            for report in publication.sender_reports(now, ntp):
                if pc.send_rtcp(report.serialize()):
                    self.sender_reports_sent += 1


__all__ = ["ANSWER_TIMEOUT", "LocalPublication", "PUBLISH_TIMEOUT", "PendingOffer", "Publisher"]
