"""Downstream transport-wide CC through the real server (in process): our numbers, its feedback.

Alice publishes video and audio carrying *her* transport-wide sequence numbers (from 40000);
Bob's subscriber PC is our client PeerConnection, its answer keeping the transport-cc extension
the server offered, and it reports arrivals with rtp.twcc.TransportFeedbackRecorder (the receive
side our server runs for publishers) — as libwebrtc's receiver does. What must hold:
- every RTP packet Bob gets (both tracks' media, an RTX resend, probe padding) carries a
  transport-wide seq in the id Bob negotiated, and they are contiguous across all of them, from 0;
  Alice's numbers never reach him;
- Bob's feedback is matched to what the server sent (parsed, nothing unmatched), the estimator
  counts the acknowledged packets, and the probe the allocator's interface asked for went out as
  padding-only packets on Bob's video RTX SSRC.
"""

from __future__ import annotations

import trio
from livekit.protocol import models, rtc

from rtp import rtcp
from rtp.header_extensions import encode_mid
from rtp.packet import RtpPacket
from rtp.twcc import TransportFeedbackRecorder
from sdp.codecs import EXT_TWCC
from sdp.parser import parse as parse_sdp
from trio_sfu import native
from server_fixtures import mint_token, recv, send, signal_client
from test_media_forwarding import (
    MID_EXT_ID, VIDEO_SSRC, ClientPc, media_server, recv_until, subscriber_answer, vp8_payload,
)
from test_media_twcc import TWCC_EXT_ID, offer_with_transport_cc

PUBLISHER_TWCC_START = 40000
AUDIO_SSRC = 0x3333


class FeedbackClientPc(ClientPc):
    """A subscriber PC that reports transport-wide arrivals, as a browser does."""

    def __init__(self) -> None:
        super().__init__()
        self.twcc_id: int | None = None
        self.recorder = TransportFeedbackRecorder(sender_ssrc=0xB0B, interval=0.05)
        self.arrival_order: list[RtpPacket] = []

    async def flush(self) -> None:
        seen = len(self.rtp)
        await super().flush()
        now = trio.current_time()
        for packet in self.rtp[seen:]:
            self.arrival_order.append(packet)
            value = packet.extensions.get(self.twcc_id) if self.twcc_id is not None else None
            if value is not None and len(value) == 2:
                self.recorder.record(int.from_bytes(value, "big"), packet.ssrc, now)
        due = self.recorder.next_deadline()
        if due is not None and due <= now and self.transport is not None:
            for report in self.recorder.packets_to_send(now):
                self.transport.send_rtcp(report)
            await super().flush()


def answer_keeping_transport_cc(offer_sdp: str, pc: ClientPc) -> tuple[str, int]:
    """test_media_forwarding's browser-like answer, keeping the offer's transport-cc extmap."""
    offer = parse_sdp(offer_sdp)
    ids = {e.id for m in offer.media if not m.rejected for e in m.extmaps if e.uri == EXT_TWCC}
    assert len(ids) == 1, "one id for transport-cc across the BUNDLE"
    (ext_id,) = ids
    sections = subscriber_answer(offer_sdp, pc.ufrag, pc.pwd, pc.fingerprint).split("\r\nm=")
    out = [sections[0]]
    for section, m in zip(sections[1:], offer.media):
        if m.kind in ("audio", "video") and not m.rejected:
            section += f"\r\na=extmap:{ext_id} {EXT_TWCC}"
        out.append(section)
    return "\r\nm=".join(out), ext_id


async def answer(ws, pc: FeedbackClientPc, nursery) -> str:
    offer = (await recv_until(ws, "offer")).offer
    sdp, ext_id = (answer_keeping_transport_cc(offer.sdp, pc) if any(
        m.kind != "application" for m in parse_sdp(offer.sdp).media)
        else (subscriber_answer(offer.sdp, pc.ufrag, pc.pwd, pc.fingerprint), None))
    if ext_id is not None:
        pc.twcc_id = ext_id
    await send(ws, rtc.SignalRequest(answer=rtc.SessionDescription(type="answer", sdp=sdp, id=offer.id)))
    if pc.transport is None:
        pc.connect(offer.sdp)
        nursery.start_soon(pc.run)
    return offer.sdp


async def test_subscriber_gets_our_contiguous_transport_seqs_and_its_feedback_is_matched() -> None:
    async with media_server() as server:
        async with trio.open_nursery() as nursery, \
                signal_client(server, mint_token("alice")) as ws_a, \
                signal_client(server, mint_token("bob")) as ws_b:
            assert (await recv(ws_a)).WhichOneof("message") == "join"
            bob_join = await recv(ws_b)
            bob_sid = bob_join.join.participant.sid
            alice_pub, bob_sub = ClientPc(), FeedbackClientPc()
            await answer(ws_a, ClientPc(), nursery)  # Alice's own (data-only) subscriber offer
            await answer(ws_b, bob_sub, nursery)
            await bob_sub.connected.wait()

            for cid, kind, source in (("cid-video", models.TrackType.VIDEO, models.TrackSource.CAMERA),
                                      ("cid-audio", models.TrackType.AUDIO, models.TrackSource.MICROPHONE)):
                await send(ws_a, rtc.SignalRequest(add_track=rtc.AddTrackRequest(cid=cid, type=kind, source=source, name=cid)))
                await recv_until(ws_a, "track_published")
            await send(ws_a, rtc.SignalRequest(offer=rtc.SessionDescription(
                type="offer", sdp=offer_with_transport_cc(alice_pub), id=1)))
            alice_pub.connect((await recv_until(ws_a, "answer")).answer.sdp)
            nursery.start_soon(alice_pub.run)
            await alice_pub.connected.wait()

            alice_twcc = iter(range(PUBLISHER_TWCC_START, PUBLISHER_TWCC_START + 1000))
            seq, ts = 1000, 5000

            async def video(keyframe: bool) -> None:
                nonlocal seq, ts
                seq, ts = seq + 1, ts + 3000
                await alice_pub.send_rtp(RtpPacket(96, seq, ts, VIDEO_SSRC, payload=vp8_payload(keyframe, 400),
                                                   extensions={TWCC_EXT_ID: next(alice_twcc).to_bytes(2, "big")}))

            async def audio(i: int) -> None:
                await alice_pub.send_rtp(RtpPacket(111, 300 + i, 960 * i, AUDIO_SSRC, payload=b"\xfc" + bytes([i]) * 40,
                                                   extensions={MID_EXT_ID: encode_mid("1"),
                                                               TWCC_EXT_ID: next(alice_twcc).to_bytes(2, "big")}))

            await video(True)
            await audio(0)
            offer_b = parse_sdp(await answer(ws_b, bob_sub, nursery))
            if sum(1 for m in offer_b.media if m.msid is not None) < 2:
                offer_b = parse_sdp(await answer(ws_b, bob_sub, nursery))
            video_m = next(m for m in offer_b.media if m.kind == "video" and m.msid is not None)
            # The offer negotiates transport-cc where LiveKit does: the extension on both kinds,
            # the feedback on every video codec and on Opus.
            for m in offer_b.media:
                if m.kind in ("audio", "video") and m.msid is not None:
                    assert EXT_TWCC in [e.uri for e in m.extmaps], m.kind
                    for codec in m.codecs():
                        if codec.name.lower() in ("vp8", "vp9", "h264", "av1", "opus"):
                            assert ("transport-cc", None) in codec.feedback, (m.kind, codec.name)
            bob_video_ssrc, bob_rtx_ssrc = video_m.ssrcs[0], video_m.ssrcs[1]
            bob_sub.drop_nth[bob_video_ssrc] = 6  # the network loses Bob's 6th video packet

            for i in range(40):
                await video(i % 10 == 0)
                await audio(1 + i)
                await trio.sleep(0.005)
            await bob_sub.wait_for(lambda: len([p for p in bob_sub.rtp if p.ssrc == bob_video_ssrc]) >= 25)
            (lost_seq,) = bob_sub.dropped
            await bob_sub.send_rtcp([rtcp.Nack.from_lost(0xB0B, bob_video_ssrc, [lost_seq])])
            await bob_sub.wait_for(lambda: [p for p in bob_sub.rtp if p.ssrc == bob_rtx_ssrc])

            # Nothing has asked for more bitrate: nothing probed.
            assert not [p for p in bob_sub.rtp if not p.payload]
            assert server.metrics.get("media_bwe_probe_clusters_total") == 0
            # Malformed feedback is counted and dropped (a status count past what its chunks cover).
            good = rtcp.TransportCc.build(0xB0B, bob_video_ssrc, 1, 0, [(0, True, 1000)]).serialize()
            bad = bytearray(good)
            bad[14:16] = (5000).to_bytes(2, "big")
            bad[16:18] = (0x2000 | 1).to_bytes(2, "big")  # a run of one received packet: 4999 uncovered
            assert bob_sub.transport is not None and bob_sub.transport.send_rtcp(bytes(bad))
            await bob_sub.flush()
            with trio.fail_after(5):
                while server.metrics.get("media_twcc_feedback_malformed_total") < 1:
                    await trio.sleep(0.01)

            # The allocator's interface asks for more than the estimate: a probe cluster goes out.
            room = next(iter(server.media.rooms.values()))
            bandwidth = room.sessions[bob_sid].subscribing.bandwidth
            assert bandwidth is not None and bandwidth.sequencer.ext_id == bob_sub.twcc_id
            start_estimate = bandwidth.estimate_bps
            bandwidth.request_probe(10 * start_estimate, trio.current_time())

            def padding() -> list[RtpPacket]:
                return [p for p in bob_sub.rtp if p.ssrc == bob_rtx_ssrc and not p.payload and p.padding_size]

            await bob_sub.wait_for(lambda: len(padding()) >= 5)
            for i in range(40, 60):  # media goes on after the probe
                await video(False)
                await audio(1 + i)
                await trio.sleep(0.005)
            await bob_sub.wait_for(lambda: len([p for p in bob_sub.rtp if p.ssrc == bob_video_ssrc]) >= 45)
            with trio.fail_after(5):
                while (bandwidth.estimator.counters.packets_acked < len(bob_sub.arrival_order)
                       or bandwidth.estimator.counters.probe_results < 1):
                    await bob_sub.flush()
                    await trio.sleep(0.02)

            got = bob_sub.arrival_order
            kinds = {"video": [p for p in got if p.ssrc == bob_video_ssrc],
                     "audio": [p for p in got if p.payload_type == 111],
                     "rtx": [p for p in got if p.ssrc == bob_rtx_ssrc and p.payload],
                     "padding": padding()}
            assert all(kinds.values()), {k: len(v) for k, v in kinds.items()}
            twcc = [int.from_bytes(p.extensions[bob_sub.twcc_id], "big") for p in got]
            # Contiguous from 0 across tracks, RTX and padding: only the packet the network lost is missing.
            assert len(set(twcc)) == len(twcc)
            assert sorted(twcc + [missing for missing in range(len(twcc) + 1) if missing not in twcc]) == \
                list(range(len(twcc) + 1))
            assert len([s for s in range(max(twcc) + 1) if s not in twcc]) == 1
            assert not set(twcc) & set(range(PUBLISHER_TWCC_START, PUBLISHER_TWCC_START + 1000))
            print(f"\nBob got {len(got)} packets: " + ", ".join(f"{k} {len(v)}" for k, v in kinds.items()),
                  f"transport seqs 0..{max(twcc)}; feedback reports {server.metrics.get('media_twcc_feedback_total')},",
                  f"estimator {bandwidth.estimator.counters}, estimate {start_estimate} -> {bandwidth.estimate_bps} bps")

            assert server.metrics.get("media_twcc_feedback_unmatched_packets_total") == 0
            assert server.metrics.get("media_bwe_probe_clusters_total") >= 1
            assert server.metrics.get("media_bwe_probe_packets_total") >= len(kinds["padding"])
            counters = bandwidth.estimator.counters
            # Every packet Bob got was reported and matched as received; the one lost, as lost.
            assert counters.packets_acked == len(got) and counters.packets_lost == 1
            await send(ws_b, rtc.SignalRequest(leave=rtc.LeaveRequest()))
            with trio.fail_after(5):
                while bob_sid in room.sessions:
                    await trio.sleep(0.02)
            assert server.metrics.get("media_twcc_unstampable_total") == 0  # folded in at close
            # All of the above held whichever fan-out forwarded: the compiled one when it is built.
            compiled = server.metrics.get("forwarding_compiled_packets_total")
            assert compiled > 0 if native.FAST_PATH else compiled == 0, (native.DESCRIPTION, compiled)
            nursery.cancel_scope.cancel()
