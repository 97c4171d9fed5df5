"""What our client receives: the subscriber PC, the remote tracks on it, and what we measure.

The server offers on the subscriber PC and we answer with the project's one answerer
(``sdp.negotiator.answer_offer`` with ``RECEIVER_ANSWER``). What is ours to decide: the ICE role
(controlling against an ICE-lite server, lite against a full-ICE offerer), and which remote track
each m-line and SSRC carries (from the offer's msid and ``a=ssrc`` lines), so every packet is
counted for its track. RTCP: RFC 3550 reception statistics per SSRC give our receiver reports;
the SFU's sender reports give them their LSR/DLSR.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from typing import AsyncIterator, Callable

import attrs
import trio
from livekit.protocol import rtc

from rtp import rtcp
from rtp.dtls import DtlsRole
from rtp.errors import ParseError
from rtp.packet import payload_offset, read_sequence_number, read_ssrc, read_timestamp
from rtp.peer_transport import IceMode
from rtp.receive_stats import ReceiveStatistics
from sdp.model import SessionDescription, Ssrc
from sdp.negotiator import RECEIVER_ANSWER, answer_offer, local_dtls_role, remote_transport
from sdp.parser import parse as parse_sdp
from sdp.parser import serialize as serialize_sdp

from trio_sfu.client.peer_connection import ClientPeerConnection
from trio_sfu.client.signal_connection import ErrorSink, SignalConnection
from trio_sfu.client.stats import TrackReceiveStats
from trio_sfu.client.synthetic import read_send_stamp

#: RFC 3550 §6.4: the RC field holds at most 31 report blocks.
MAX_REPORT_BLOCKS = 31
#: Tracks announced but not yet taken by a consumer of ``tracks()``.
TRACK_QUEUE = 1000


@attrs.define(eq=False)
class RemoteTrack:
    """A track the server sends us on the subscriber PC, with what we measured on it."""

    sid: str
    participant_sid: str
    kind: str  # "audio" | "video"
    mid: str
    ssrcs: set[int] = attrs.field(factory=set)
    stats: TrackReceiveStats = attrs.field(factory=TrackReceiveStats)
    first_packet: trio.Event = attrs.field(factory=trio.Event)
    #: False once a later subscriber offer no longer sends it on its m-line (unsubscribed/unpublished).
    active: bool = True


class Subscriber:
    """The subscribing side of one participant (see the module docstring).

    ``open_pc`` opens the subscriber PC in the client's nursery, its packets wired to
    :meth:`on_rtp` / :meth:`on_rtcp`; ``owner_of`` names the participant publishing a track
    sid when an offer's msid does not.
    """

    def __init__(self, signal: SignalConnection, open_pc: Callable[[], ClientPeerConnection],
                 owner_of: Callable[[str], str], on_error: ErrorSink, *,
                 full_ice_role: IceMode = IceMode.LITE) -> None:
        """``full_ice_role``: how we answer a full-ICE offerer — LITE (declare ``a=ice-lite``; it
        checks and we answer) or CONTROLLED (a full agent: we check too, it nominates)."""
        if full_ice_role not in (IceMode.LITE, IceMode.CONTROLLED):
            raise ValueError("a full-ICE offerer controls: answer it LITE or CONTROLLED")
        self._full_ice_role = full_ice_role
        self._signal = signal
        self._open_pc = open_pc
        self._owner_of = owner_of
        self._on_error = on_error
        self.pc: ClientPeerConnection | None = None
        self.subscriptions: dict[str, RemoteTrack] = {}
        #: (track sid, SubscriptionError) of every subscription the server reported failed.
        self.failures: list[tuple[str, int]] = []
        #: Our last answer, as sent (a new node gets it back in sync_state).
        self.last_answer: rtc.SessionDescription | None = None
        self.unknown_ssrc_packets = 0
        # Padding-only packets (the server's bandwidth probes, on a track's RTX SSRC): they carry
        # no media, and a receiver discards them (libwebrtc does) — counted here, not per track.
        self.padding_packets = 0
        self.receiver_reports_sent = 0
        self._track_by_ssrc: dict[int, RemoteTrack] = {}
        self._track_by_mid: dict[str, RemoteTrack] = {}
        #: RFC 3550 reception statistics per received SSRC, for our receiver reports.
        self._reception: dict[int, ReceiveStatistics] = {}
        self._rtcp_ssrc = secrets.randbits(32) or 1
        self._tracks_send, self._tracks_recv = trio.open_memory_channel[RemoteTrack](TRACK_QUEUE)
        self._answers = 0
        self._ice_mode: IceMode | None = None
        self._retire_unoffered = False

    # ------------------------------------------------------------------ queries

    async def tracks(self) -> AsyncIterator[RemoteTrack]:
        """Each subscribed track once, as the server's offers add them (one consumer); ends on leave."""
        try:
            async for track in self._tracks_recv:
                yield track
        except trio.ClosedResourceError:
            return

    async def wait_connected(self, timeout: float = 15.0) -> None:
        """Until the subscriber PC has ICE and DTLS up."""
        with trio.fail_after(timeout):
            while self.pc is None:
                await trio.sleep(0.01)
            await self.pc.connected.wait()

    async def wait_for_tracks(self, count: int, timeout: float = 15.0) -> list[RemoteTrack]:
        with trio.fail_after(timeout):
            while len(self.subscriptions) < count:
                await trio.sleep(0.02)
        return list(self.subscriptions.values())

    def close_tracks(self) -> None:
        """Ends every ``async for`` over :meth:`tracks` (we left)."""
        self._tracks_send.close()

    # ------------------------------------------------------------------ the server's offers

    async def answer(self, description: rtc.SessionDescription) -> None:
        """Answer a subscriber offer (opening the PC on the first) and trickle our candidate once.
        Raises RtpStackError/ValueError for an offer that cannot be answered (the reader reports it)."""
        reply, first_mid = self._answer(description)
        pc = self.pc
        assert pc is not None  # _answer opened it
        await self._signal.send(rtc.SignalRequest(answer=reply))
        if not pc.candidate_trickled:
            # Once per PC, after its first description, as a browser trickles its host candidate.
            pc.candidate_trickled = True
            await self._signal.send_candidate(rtc.SignalTarget.SUBSCRIBER, pc.candidate_line(), first_mid,
                                              pc.local.ice_ufrag)

    def _answer(self, description: rtc.SessionDescription) -> tuple[rtc.SessionDescription, str]:
        """Our answer to a subscriber offer, and the mid of its first m-line."""
        offer = parse_sdp(description.sdp)
        if self.pc is None:
            self.pc = self._open_pc()
        pc = self.pc
        self._answers += 1
        if self._ice_mode is None:
            # An ICE-lite server (ours, LiveKit's default) leaves control to us; a full-ICE offerer
            # is controlling itself (RFC 8445 §6.1.1), so we answer as a lite agent, or as a full
            # controlled one, instead of fighting it for the role. Fixed for the PC's life:
            # renegotiations keep the transport.
            self._ice_mode = IceMode.CONTROLLING if offer.ice_lite else self._full_ice_role
        policy = attrs.evolve(RECEIVER_ANSWER, ice_lite=self._ice_mode is IceMode.LITE)
        answer = answer_offer(offer, pc.local, session_version=self._answers, policy=policy)
        pc.set_remote(remote_transport(offer), DtlsRole(local_dtls_role(answer, local_is_offerer=False).value),
                      self._ice_mode)
        self._learn_tracks(offer, answer)
        if self._retire_unoffered:
            # The first offer on a new node's subscriber PC lists everything that node sends us;
            # a track of the old node it does not carry is no longer ours.
            self._retire_unoffered = False
            offered = {m.mid for m in offer.media}
            for mid in [mid for mid in self._track_by_mid if mid not in offered]:
                self._retire_track_on(mid)
        reply = rtc.SessionDescription(type="answer", sdp=serialize_sdp(answer), id=description.id)
        self.last_answer = reply
        return reply, answer.media[0].mid or "0"

    def _learn_tracks(self, offer: SessionDescription, answer: SessionDescription) -> None:
        for m, a in zip(offer.media, answer.media):
            if m.kind not in ("audio", "video"):
                continue
            if m.rejected or a.rejected or not m.direction.sends:
                self._retire_track_on(m.mid)
                continue
            ssrc_tracks: dict[int, str] = {}
            for line in m.all(Ssrc):
                if line.attribute == "msid" and line.value and " " in line.value:
                    ssrc_tracks[line.ssrc] = line.value.split(" ", 1)[1]
            msid = m.msid
            track_sid = msid.track_id if msid is not None and msid.track_id else None
            if track_sid is None and ssrc_tracks:
                track_sid = next(iter(ssrc_tracks.values()))
            if track_sid is None:
                continue
            stream = msid.stream_id if msid is not None else ""
            participant_sid = stream.split("|", 1)[0] if stream.startswith("PA_") else self._owner_of(track_sid)
            current = self._track_by_mid.get(m.mid or "")
            if current is not None and current.sid != track_sid:
                self._retire_track_on(m.mid)  # the m-line was recycled for another track
            track = self.subscriptions.get(track_sid)
            if track is None:
                track = RemoteTrack(track_sid, participant_sid, m.kind, m.mid or "")
                self.subscriptions[track_sid] = track
                with contextlib.suppress(trio.WouldBlock, trio.ClosedResourceError):
                    self._tracks_send.send_nowait(track)
            if m.mid and track.mid != m.mid and self._track_by_mid.get(track.mid) is track:
                del self._track_by_mid[track.mid]  # moved to another m-line (possible on a new node)
            track.mid = m.mid or track.mid
            track.active = True
            self._track_by_mid[track.mid] = track
            for ssrc in set(m.ssrcs):
                track.ssrcs.add(ssrc)
                self._track_by_ssrc[ssrc] = track

    def _retire_track_on(self, mid: str | None) -> None:
        track = self._track_by_mid.pop(mid or "", None)
        if track is None:
            return
        track.active = False
        for ssrc in track.ssrcs:
            if self._track_by_ssrc.get(ssrc) is track:
                del self._track_by_ssrc[ssrc]

    def on_failure(self, failure: rtc.SubscriptionResponse) -> None:
        """A subscription the server gave up on (SE_UNKNOWN is 0, still a failure): an answer about
        a request, kept apart from the client's errors (livekit-client emits an event)."""
        self.failures.append((failure.track_sid, failure.err))

    # ------------------------------------------------------------------ moving to another node

    def leave_node(self) -> None:
        """The node that sent us media is gone (a move): its PC closes; the next offer opens a
        new one and chooses the ICE role again. Tracks and their statistics stay."""
        if self.pc is not None:
            self.pc.close()
            self.pc = None
        self._ice_mode = None

    def expect_new_node(self) -> None:
        """The next offer comes from a node that took us over: it lists all it sends us."""
        self._retire_unoffered = True

    # ------------------------------------------------------------------ media and RTCP

    def on_rtp(self, packet: bytes, now: float) -> None:
        try:
            ssrc = read_ssrc(packet)
            seq = read_sequence_number(packet)
            offset = payload_offset(packet)
        except ParseError:
            self.unknown_ssrc_packets += 1
            return
        if packet[0] & 0x20 and offset + packet[-1] >= len(packet):
            self.padding_packets += 1  # RFC 3550 padding and nothing else
            return
        track = self._track_by_ssrc.get(ssrc)
        if track is None:
            self.unknown_ssrc_packets += 1
            return
        reception = self._reception.get(ssrc)
        if reception is None:
            # Announced in the offer's a=ssrc lines: no probation needed.
            reception = self._reception[ssrc] = ReceiveStatistics(
                ssrc, 48000 if track.kind == "audio" else 90000, probation=0)
        reception.on_packet(seq, read_timestamp(packet), now, len(packet))
        stamp = read_send_stamp(packet[offset:offset + 32])
        # One-way latency against the publisher's wall-clock stamp (same machine in our tests).
        latency = (time.time() * 1e6 - stamp) / 1000 if stamp is not None else None
        track.stats.on_packet(ssrc, seq, len(packet), now, latency)
        if track.stats.packets == 1:
            track.first_packet.set()

    def on_rtcp(self, packet: bytes, now: float) -> None:
        try:
            packets = rtcp.parse_rtcp(packet)
        except ParseError:
            return
        for item in packets:
            if isinstance(item, rtcp.SenderReport):
                reception = self._reception.get(item.ssrc)
                if reception is not None:
                    reception.on_sender_report(item.ntp_timestamp, now)  # for LSR/DLSR in our RRs

    def send_reports(self, now: float) -> None:
        """Our receiver reports (31 blocks each at most), once the PC is up and media arrived."""
        pc = self.pc
        if pc is None or not pc.connected.is_set() or not self._reception:
            return
        blocks = [b for r in self._reception.values() if (b := r.report_block(now)) is not None]
        for start in range(0, len(blocks), MAX_REPORT_BLOCKS):
            report = rtcp.ReceiverReport(self._rtcp_ssrc, blocks[start:start + MAX_REPORT_BLOCKS])
            if pc.send_rtcp(report.serialize()):
                self.receiver_reports_sent += 1


__all__ = ["MAX_REPORT_BLOCKS", "RemoteTrack", "Subscriber"]
