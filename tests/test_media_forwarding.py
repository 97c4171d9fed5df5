"""Media through the server: two signal clients whose PeerConnections are our own PeerTransport
(controlling ICE, DTLS client) on their own UDP sockets, against an in-process server with the real
media stack (UDP mux on an ephemeral port).

What the assertions prove: the server answers a publisher offer and offers a subscriber PC over
the signal channel; ICE, DTLS and SRTP come up on both PCs through the one mux socket; RTP a
publisher sends arrives at the other participant rewritten to the SSRC and payload type the
subscriber negotiated, with contiguous sequence numbers and unchanged payload; a NACK is answered
from the buffer; a PLI reaches the publisher for the publisher's SSRC; SRs and RRs flow; leaving
empties the mux registry and the room's media, and no task survives the server.
"""

from __future__ import annotations

import math
import secrets

import trio
from aioice.candidate import Candidate as IceCandidate
from livekit.protocol import models, rtc

from dtls_helpers import make_certificate
from rtp import rtcp
from rtp.dtls import DtlsRole
from rtp.header_extensions import encode_mid
from rtp.packet import RtpPacket, parse as parse_rtp
from rtp.peer_transport import IceMode, PeerTransport
from rtp.peer_transport_events import RtcpReceived, RtpReceived, TransportConnected
from sdp.parser import parse as parse_sdp
import server_fixtures
from trio_sfu.forwarding.receiver import MAX_SSRCS_PER_TRACK
from trio_sfu.metrics import MEDIA_RTP_UNMATCHED
from server_fixtures import mint_token, recv, send, signal_client

VIDEO_SSRC, VIDEO_RTX_SSRC = 0x1111, 0x2222
MID_EXT_ID = 4


def media_server():
    """The server with its media stack on loopback; server_fixtures' leak check runs at exit
    (tasks, sockets, rooms, track sources and their subscribers)."""
    return server_fixtures.media_server()


def publisher_offer(ufrag: str, pwd: str, fingerprint: str) -> str:
    """A client offer as libwebrtc shapes it: BUNDLE, actpass, VP8+RTX video with a=ssrc lines,
    and Opus audio announced only through the mid header extension (no a=ssrc)."""
    common = [
        "c=IN IP4 0.0.0.0",
        f"a=ice-ufrag:{ufrag}",
        f"a=ice-pwd:{pwd}",
        f"a=fingerprint:sha-256 {fingerprint}",
        "a=setup:actpass",
        f"a=extmap:{MID_EXT_ID} urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=sendonly",
        "a=rtcp-mux",
    ]
    lines = [
        "v=0", "o=- 42 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0 1", "a=msid-semantic: WMS *",
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97", *common, "a=mid:0", "a=msid:stream cid-video",
        "a=rtpmap:96 VP8/90000", "a=rtcp-fb:96 nack", "a=rtcp-fb:96 nack pli",
        "a=rtpmap:97 rtx/90000", "a=fmtp:97 apt=96",
        f"a=ssrc-group:FID {VIDEO_SSRC} {VIDEO_RTX_SSRC}",
        f"a=ssrc:{VIDEO_SSRC} cname:pub", f"a=ssrc:{VIDEO_RTX_SSRC} cname:pub",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111", *common, "a=mid:1", "a=msid:stream cid-audio",
        "a=rtpmap:111 opus/48000/2", "a=fmtp:111 minptime=10;useinbandfec=1",
    ]
    return "\r\n".join(lines) + "\r\n"


def subscriber_answer(offer_sdp: str, ufrag: str, pwd: str, fingerprint: str) -> str:
    """What a browser answers to the server's subscriber offer: every live m-line accepted recvonly
    with all offered codecs, port 0 kept, a=setup:active (so the server is the DTLS server)."""
    offer = parse_sdp(offer_sdp)
    live = [m.mid for m in offer.media if not m.rejected]
    lines = ["v=0", "o=- 7 2 IN IP4 127.0.0.1", "s=-", "t=0 0", f"a=group:BUNDLE {' '.join(live)}"]
    for m in offer.media:
        port = 0 if m.rejected else 9
        lines.append(f"m={m.kind} {port} {m.proto} {' '.join(m.formats)}")
        lines += ["c=IN IP4 0.0.0.0", f"a=ice-ufrag:{ufrag}", f"a=ice-pwd:{pwd}",
                  f"a=fingerprint:sha-256 {fingerprint}", "a=setup:active", f"a=mid:{m.mid}"]
        if m.kind == "application":
            lines += ["a=sctp-port:5000", "a=max-message-size:262144"]
            continue
        lines += ["a=recvonly" if not m.rejected else "a=inactive", "a=rtcp-mux"]
        for c in m.codecs():
            channels = f"/{c.channels}" if c.channels else ""
            lines.append(f"a=rtpmap:{c.payload_type} {c.name}/{c.clock_rate}{channels}")
            if c.parameters:
                lines.append(f"a=fmtp:{c.payload_type} {c.parameters}")
    return "\r\n".join(lines) + "\r\n"


class ClientPc:
    """A client-side PeerConnection: controlling ICE and DTLS client over a Trio UDP socket."""

    def __init__(self) -> None:
        self.certificate = make_certificate()
        self.ufrag, self.pwd = secrets.token_hex(4), secrets.token_hex(12)
        self.transport: PeerTransport | None = None
        self.sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        self.rtp: list[RtpPacket] = []
        self.rtcp: list = []
        self.connected = trio.Event()
        self.changed = trio.Event()
        # Simulated loss: ssrc -> index of the RTP datagram of that SSRC to drop before SRTP.
        self.drop_nth: dict[int, int] = {}
        self._arrivals: dict[int, int] = {}
        self.dropped: list[int] = []  # sequence numbers of the dropped datagrams

    @property
    def fingerprint(self) -> str:
        return self.certificate.fingerprint()

    def connect(self, answer_or_offer_sdp: str) -> None:
        desc = parse_sdp(answer_or_offer_sdp)
        first = next(m for m in desc.media if not m.rejected)
        candidates = [IceCandidate.from_sdp(c.text) for c in first.candidates]
        assert candidates, "the server must put its host candidate in the SDP"
        self.transport = PeerTransport(
            IceMode.CONTROLLING,
            DtlsRole.CLIENT,
            local_ufrag=self.ufrag,
            local_pwd=self.pwd,
            certificate=self.certificate,
            remote_ufrag=desc.effective_ufrag(first),
            remote_pwd=desc.effective_pwd(first),
            remote_fingerprints=[(f.algorithm, f.value) for f in desc.effective_fingerprints(first)],
            remote_candidates=candidates,
        )

    async def flush(self) -> None:
        assert self.transport is not None
        for datagram, addr in self.transport.datagrams_to_send(trio.current_time()):
            await self.sock.sendto(datagram, addr)
        while (event := self.transport.next_event()) is not None:
            if isinstance(event, TransportConnected):
                self.connected.set()
            elif isinstance(event, RtpReceived):
                self.rtp.append(parse_rtp(event.packet))
            elif isinstance(event, RtcpReceived):
                self.rtcp.extend(rtcp.parse_rtcp(event.packet))
            self.changed.set()
            self.changed = trio.Event()

    async def run(self) -> None:
        await self.sock.bind(("127.0.0.1", 0))
        assert self.transport is not None
        self.transport.start(trio.current_time())
        while True:
            await self.flush()
            deadline = self.transport.next_deadline()
            with trio.move_on_at(math.inf if deadline is None else deadline):
                data, addr = await self.sock.recvfrom(65536)
                if self._lose(data):
                    continue
                self.transport.receive_datagram(data, addr[:2], trio.current_time())
                continue
            self.transport.handle_timeout(trio.current_time())

    def _lose(self, data: bytes) -> bool:
        if len(data) < 12 or not 127 < data[0] < 192 or 191 < data[1] < 224:
            return False
        ssrc = int.from_bytes(data[8:12], "big")
        n = self._arrivals[ssrc] = self._arrivals.get(ssrc, 0) + 1
        if self.drop_nth.get(ssrc) == n:
            self.dropped.append(int.from_bytes(data[2:4], "big"))
            return True
        return False

    async def send_rtp(self, packet: RtpPacket) -> None:
        assert self.transport is not None and self.transport.send_rtp(packet.serialize())
        await self.flush()

    async def send_rtcp(self, packets: list) -> None:
        assert self.transport is not None and self.transport.send_rtcp(rtcp.serialize_rtcp(packets))
        await self.flush()

    async def wait_for(self, predicate, timeout: float = 10.0):
        with trio.fail_after(timeout):
            while not (result := predicate()):
                await self.changed.wait()
            return result


async def recv_until(ws, kind: str, timeout: float = 10.0) -> rtc.SignalResponse:
    with trio.fail_after(timeout):
        while True:
            response = await recv(ws, timeout)
            if response.WhichOneof("message") == kind:
                return response


async def answer_subscriber(ws, pc: ClientPc, nursery) -> str:
    """Answer the next subscriber offer; start the subscriber PC on the first one."""
    offer = (await recv_until(ws, "offer")).offer
    answer = subscriber_answer(offer.sdp, pc.ufrag, pc.pwd, pc.fingerprint)
    await send(ws, rtc.SignalRequest(answer=rtc.SessionDescription(type="answer", sdp=answer, id=offer.id)))
    if pc.transport is None:
        pc.connect(offer.sdp)
        nursery.start_soon(pc.run)
    return offer.sdp


def vp8_payload(keyframe: bool, size: int = 60) -> bytes:
    # RFC 7741: descriptor S=1 PID=0; payload header P bit 0 on keyframes.
    return bytes([0x10, 0x00 if keyframe else 0x01]) + secrets.token_bytes(size)


async def test_publish_subscribe_nack_pli_and_teardown():
    async with media_server() as server:
        mux = server.media.mux
        async with trio.open_nursery() as nursery, \
                signal_client(server, mint_token("alice")) as ws_a, \
                signal_client(server, mint_token("bob")) as ws_b:
            assert (await recv(ws_a)).WhichOneof("message") == "join"
            assert (await recv(ws_b)).WhichOneof("message") == "join"
            alice_sub, bob_sub, alice_pub = ClientPc(), ClientPc(), ClientPc()
            # Both get a first subscriber offer right after join (m=application only).
            first = parse_sdp(await answer_subscriber(ws_a, alice_sub, nursery))
            assert [m.kind for m in first.media] == ["application"] and first.ice_lite
            await answer_subscriber(ws_b, bob_sub, nursery)
            await bob_sub.connected.wait()

            # Alice publishes video and audio.
            for cid, kind, source in (("cid-video", models.TrackType.VIDEO, models.TrackSource.CAMERA),
                                      ("cid-audio", models.TrackType.AUDIO, models.TrackSource.MICROPHONE)):
                await send(ws_a, rtc.SignalRequest(add_track=rtc.AddTrackRequest(cid=cid, type=kind, source=source, name=cid)))
                published = (await recv_until(ws_a, "track_published")).track_published
                assert published.cid == cid
            sids = {}
            offer_sdp = publisher_offer(alice_pub.ufrag, alice_pub.pwd, alice_pub.fingerprint)
            await send(ws_a, rtc.SignalRequest(offer=rtc.SessionDescription(type="offer", sdp=offer_sdp, id=7)))
            answer = (await recv_until(ws_a, "answer")).answer
            assert answer.id == 7
            answer_sdp = parse_sdp(answer.sdp)
            assert answer_sdp.ice_lite and [m.direction.value for m in answer_sdp.media] == ["recvonly", "recvonly"]
            alice_pub.connect(answer.sdp)
            nursery.start_soon(alice_pub.run)
            await alice_pub.connected.wait()
            for p in server.registry.rooms["room1"].participants.values():
                if p.identity == "alice":
                    sids = {info.name: sid for sid, info in p.tracks.items()}

            # Media starts flowing: the tracks go live and Bob is offered both.
            seq, ts = 1000, 5000
            await alice_pub.send_rtp(RtpPacket(96, seq, ts, VIDEO_SSRC, payload=vp8_payload(True)))
            await alice_pub.send_rtp(RtpPacket(111, 300, 960, 0x3333, extensions={MID_EXT_ID: encode_mid("1")}, payload=b"\xfc" + b"o" * 40))
            offer_b = parse_sdp(await answer_subscriber(ws_b, bob_sub, nursery))
            if sum(1 for m in offer_b.media if m.msid is not None) < 2:
                # The second track went live after the first offer: one more round.
                offer_b = parse_sdp(await answer_subscriber(ws_b, bob_sub, nursery))
            by_track = {m.msid.track_id: m for m in offer_b.media if m.msid is not None}
            assert set(by_track) == {sids["cid-video"], sids["cid-audio"]}
            video_m = by_track[sids["cid-video"]]
            # LiveKit's packed stream id names the publisher and the track (the SDKs read the track
            # sid from it on a reused transceiver).
            alice_sid = next(p.sid for p in server.registry.rooms["room1"].participants.values() if p.identity == "alice")
            assert video_m.msid.stream_id == f"{alice_sid}|{sids['cid-video']}"
            bob_video_ssrc = video_m.ssrcs[0]
            bob_vp8_pt = next(c.payload_type for c in video_m.codecs() if c.name == "VP8")
            bob_audio_ssrc = by_track[sids["cid-audio"]].ssrcs[0]
            bob_sub.drop_nth[bob_video_ssrc] = 6  # the network loses Bob's 6th video packet

            # The server asks Alice for a keyframe for the new subscriber.
            await alice_pub.wait_for(lambda: [p for p in alice_pub.rtcp if isinstance(p, rtcp.Pli) and p.media_ssrc == VIDEO_SSRC])
            payloads = []
            for i in range(30):
                seq, ts = seq + 1, ts + 3000
                payload = vp8_payload(i % 10 == 0)
                payloads.append(payload)
                await alice_pub.send_rtp(RtpPacket(96, seq, ts, VIDEO_SSRC, payload=payload))
                await alice_pub.send_rtp(RtpPacket(111, 301 + i, 960 * (2 + i), 0x3333, extensions={MID_EXT_ID: encode_mid("1")}, payload=b"\xfc" + bytes([i]) * 40))
                await trio.sleep(0.005)
            video = await bob_sub.wait_for(lambda: [p for p in bob_sub.rtp if p.ssrc == bob_video_ssrc] if
                                           len([p for p in bob_sub.rtp if p.ssrc == bob_video_ssrc]) >= 20 else None)
            (lost_seq,) = bob_sub.dropped
            # Forwarding starts at the first keyframe (i=0, then every 10th); from then on unchanged payloads.
            assert [p.payload for p in video[:20]] == payloads[:5] + payloads[6:21]
            assert lost_seq == (video[4].sequence_number + 1) & 0xFFFF
            assert {p.payload_type for p in video} == {bob_vp8_pt}
            steps = [((b.sequence_number - a.sequence_number) & 0xFFFF, (b.timestamp - a.timestamp) & 0xFFFFFFFF)
                     for a, b in zip(video, video[1:20])]
            assert steps == [(1, 3000)] * 4 + [(2, 6000)] + [(1, 3000)] * 14  # one hole: the lost packet
            assert not any(p.extensions for p in video)  # the publisher's extension ids are not Bob's
            audio = await bob_sub.wait_for(lambda: [p for p in bob_sub.rtp if p.ssrc == bob_audio_ssrc] or None)
            assert audio[0].payload_type == 111

            # NACK from Bob: the server resends from its buffer, same seq and payload.
            before = len(bob_sub.rtp)
            await bob_sub.send_rtcp([rtcp.ReceiverReport(0xB0B), rtcp.Nack.from_lost(0xB0B, bob_video_ssrc, [lost_seq])])
            # Bob's answer accepted RTX (97, apt=96): RFC 4588 on the RTX SSRC of the FID group,
            # the original sequence number first in the payload.
            (fid,) = [g for g in video_m.ssrc_groups if g.semantics == "FID"]
            assert fid.ssrcs[0] == bob_video_ssrc
            bob_rtx_pt = next(c.payload_type for c in video_m.codecs() if c.is_rtx and c.apt == bob_vp8_pt)
            resent = await bob_sub.wait_for(lambda: [p for p in bob_sub.rtp[before:] if p.ssrc == fid.ssrcs[1]])
            assert resent[0].payload_type == bob_rtx_pt
            assert resent[0].payload == lost_seq.to_bytes(2, "big") + payloads[5]
            assert resent[0].timestamp == (video[4].timestamp + 3000) & 0xFFFFFFFF

            # PLI from Bob goes upstream to Alice's video SSRC.
            plis_before = len([p for p in alice_pub.rtcp if isinstance(p, rtcp.Pli) and p.media_ssrc == VIDEO_SSRC])
            await trio.sleep(0.6)  # past the keyframe-request spacing
            await bob_sub.send_rtcp([rtcp.ReceiverReport(0xB0B), rtcp.Pli(0xB0B, bob_video_ssrc)])
            await alice_pub.wait_for(lambda: len([p for p in alice_pub.rtcp if isinstance(p, rtcp.Pli) and p.media_ssrc == VIDEO_SSRC]) > plis_before)

            # Reports: SRs for Bob's down tracks, RRs about Alice's uplink.
            await bob_sub.wait_for(lambda: [p for p in bob_sub.rtcp if isinstance(p, rtcp.SenderReport) and p.ssrc == bob_video_ssrc])
            rr = await alice_pub.wait_for(lambda: [b for p in alice_pub.rtcp if isinstance(p, rtcp.ReceiverReport) for b in p.reports if b.ssrc == VIDEO_SSRC])
            assert rr[-1].highest_sequence & 0xFFFF == seq

            assert len(mux.by_ufrag) == 3  # Alice: publisher + subscriber; Bob: subscriber only
            await send(ws_a, rtc.SignalRequest(leave=rtc.LeaveRequest()))
            # Bob is told Alice's tracks are gone by a renegotiation without them.
            offer_after = parse_sdp(await answer_subscriber(ws_b, bob_sub, nursery))
            assert not [m for m in offer_after.media if m.msid is not None and not m.rejected]
            await send(ws_b, rtc.SignalRequest(leave=rtc.LeaveRequest()))
            with trio.fail_after(5):
                while not mux.is_empty() or server.media.rooms:
                    await trio.sleep(0.02)
            # What the finished forwarding objects counted is kept in the server's metrics.
            counted = server.metrics.snapshot()
            assert counted["media_downtrack_nack_resent_total"] == 1
            assert counted["media_downtrack_packets_sent_total"] >= 21
            assert counted["media_receiver_keyframe_requests_sent_total"] >= 2
            assert counted["media_transport_rtp_received_total"] >= 62
            nursery.cancel_scope.cancel()


async def test_an_mline_of_the_wrong_kind_never_feeds_a_track_named_by_its_cid():
    """Regression (hardening): an m=video line whose msid names the cid of an AUDIO track must
    not be matched to that track -- the signal layer refuses a video track labelled microphone,
    and the media layer must not let the SDP relabel it. Before the fix the VP8 stream was
    published as the microphone track."""
    async with media_server() as server:
        async with trio.open_nursery() as nursery, signal_client(server, mint_token("alice")) as ws_a:
            assert (await recv(ws_a)).WhichOneof("message") == "join"
            alice_sub, alice_pub = ClientPc(), ClientPc()
            await answer_subscriber(ws_a, alice_sub, nursery)
            # One AUDIO track whose cid is the msid of the offer's m=video line.
            await send(ws_a, rtc.SignalRequest(add_track=rtc.AddTrackRequest(
                cid="cid-video", type=models.TrackType.AUDIO, source=models.TrackSource.MICROPHONE, name="mic")))
            mic = (await recv_until(ws_a, "track_published")).track_published.track
            offer_sdp = publisher_offer(alice_pub.ufrag, alice_pub.pwd, alice_pub.fingerprint)
            await send(ws_a, rtc.SignalRequest(offer=rtc.SessionDescription(type="offer", sdp=offer_sdp, id=3)))
            answer = (await recv_until(ws_a, "answer")).answer
            alice_pub.connect(answer.sdp)
            nursery.start_soon(alice_pub.run)
            await alice_pub.connected.wait()
            unmatched = server.metrics.get(MEDIA_RTP_UNMATCHED)
            await alice_pub.send_rtp(RtpPacket(96, 1000, 5000, VIDEO_SSRC, payload=vp8_payload(True)))
            await alice_pub.send_rtp(RtpPacket(111, 300, 960, 0x3333, extensions={MID_EXT_ID: encode_mid("1")},
                                               payload=b"\xfc" + b"o" * 40))
            room_media = next(iter(server.media.rooms.values()))
            with trio.fail_after(5):
                while server.metrics.get(MEDIA_RTP_UNMATCHED) == unmatched or mic.sid not in room_media.tracks:
                    await trio.sleep(0.01)
            # The microphone is fed by the audio m-line (Opus), never by the video one.
            source = room_media.tracks[mic.sid]
            assert source.kind.value == "audio" and [c.name.lower() for c in source.codecs] == ["opus"]
            nursery.cancel_scope.cancel()


async def test_a_publisher_inventing_ssrcs_does_not_grow_the_ssrc_table():
    """Regression (hardening, finding 10): every new SSRC on a matched m-line used to be
    remembered for good (SSRC -> track), so a publisher inventing SSRCs grew the table without
    bound. A track keeps at most MAX_SSRCS_PER_TRACK; the SSRC in use keeps feeding it."""
    async with media_server() as server:
        async with trio.open_nursery() as nursery, signal_client(server, mint_token("alice")) as ws_a:
            assert (await recv(ws_a)).WhichOneof("message") == "join"
            alice_sub, alice_pub = ClientPc(), ClientPc()
            await answer_subscriber(ws_a, alice_sub, nursery)
            await send(ws_a, rtc.SignalRequest(add_track=rtc.AddTrackRequest(
                cid="cid-audio", type=models.TrackType.AUDIO, source=models.TrackSource.MICROPHONE, name="mic")))
            mic = (await recv_until(ws_a, "track_published")).track_published.track
            offer_sdp = publisher_offer(alice_pub.ufrag, alice_pub.pwd, alice_pub.fingerprint)
            await send(ws_a, rtc.SignalRequest(offer=rtc.SessionDescription(type="offer", sdp=offer_sdp, id=3)))
            answer = (await recv_until(ws_a, "answer")).answer
            alice_pub.connect(answer.sdp)
            nursery.start_soon(alice_pub.run)
            await alice_pub.connected.wait()
            room_media = next(iter(server.media.rooms.values()))
            publishing = next(iter(room_media.sessions.values())).publishing
            invented = 4 * MAX_SSRCS_PER_TRACK
            for i in range(invented):
                await alice_pub.send_rtp(RtpPacket(111, 300 + i, 960 * i, 0x10000 + i,
                                                   extensions={MID_EXT_ID: encode_mid("1")},
                                                   payload=b"\xfc" + b"o" * 40))
                if i % 16 == 15:
                    await trio.sleep(0.01)  # let the server keep up: a real socket buffer
            last = 0x10000 + invented - 1
            with trio.fail_after(5):
                while mic.sid not in room_media.tracks or room_media.tracks[mic.sid].receiver.layer_ssrc(0) != last:
                    await trio.sleep(0.01)
            routed = publishing.routed_ssrcs()
            assert len(routed) <= MAX_SSRCS_PER_TRACK
            assert routed[last] == mic.sid  # the live SSRC still feeds the track
            nursery.cancel_scope.cancel()
