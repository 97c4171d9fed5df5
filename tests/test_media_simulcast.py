"""Simulcast through the server, as Chromium sends it: one m-line with rids q/h/f, no a=ssrc lines,
SSRCs learned from the mid/rid header extensions. The subscriber gets one layer: the highest by
default; after UpdateTrackSettings(quality=LOW) the server asks the publisher for a keyframe on
the low layer and switches there only at that keyframe, with the subscriber's sequence numbers
continuing without a gap.
"""

from __future__ import annotations

import trio
from livekit.protocol import models, rtc

from rtp import rtcp
from rtp.header_extensions import encode_mid, encode_rid
from rtp.packet import RtpPacket
from sdp.parser import parse as parse_sdp
from server_fixtures import mint_token, recv, send, signal_client
from test_media_forwarding import ClientPc, answer_subscriber, media_server, recv_until

MID_ID, RID_ID = 4, 10
LAYER_SSRCS = {"q": 0xA1, "h": 0xA2, "f": 0xA3}


def simulcast_offer(pc: ClientPc) -> str:
    lines = [
        "v=0", "o=- 9 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0", "a=msid-semantic: WMS *",
        "m=video 9 UDP/TLS/RTP/SAVPF 96", "c=IN IP4 0.0.0.0",
        f"a=ice-ufrag:{pc.ufrag}", f"a=ice-pwd:{pc.pwd}", f"a=fingerprint:sha-256 {pc.fingerprint}",
        "a=setup:actpass", "a=mid:0",
        f"a=extmap:{MID_ID} urn:ietf:params:rtp-hdrext:sdes:mid",
        f"a=extmap:{RID_ID} urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
        "a=sendonly", "a=msid:stream cid-cam", "a=rtcp-mux",
        "a=rtpmap:96 VP8/90000", "a=rtcp-fb:96 nack", "a=rtcp-fb:96 nack pli",
        "a=rid:q send", "a=rid:h send", "a=rid:f send", "a=simulcast:send q;h;f",
    ]
    return "\r\n".join(lines) + "\r\n"


def payload(layer: str, keyframe: bool, n: int) -> bytes:
    # VP8 descriptor S=1 PID=0, then the payload header's P bit (0 = keyframe); the rest names
    # the layer and the round so the test can tell what was forwarded.
    return bytes([0x10, 0x00 if keyframe else 0x01]) + f"{layer}{n:04d}".encode() * 8


async def test_simulcast_highest_layer_then_switch_down_at_keyframe():
    async with media_server() as server:
        async with trio.open_nursery() as nursery, \
                signal_client(server, mint_token("alice")) as ws_a, \
                signal_client(server, mint_token("bob")) as ws_b:
            await recv(ws_a), await recv(ws_b)
            alice_sub, bob_sub, alice_pub = ClientPc(), ClientPc(), ClientPc()
            await answer_subscriber(ws_a, alice_sub, nursery)
            await answer_subscriber(ws_b, bob_sub, nursery)
            layers = [models.VideoLayer(quality=q, width=w, height=h)
                      for q, w, h in ((0, 160, 90), (1, 320, 180), (2, 640, 360))]
            await send(ws_a, rtc.SignalRequest(add_track=rtc.AddTrackRequest(
                cid="cid-cam", type=models.TrackType.VIDEO, source=models.TrackSource.CAMERA,
                width=640, height=360, layers=layers)))
            sid = (await recv_until(ws_a, "track_published")).track_published.track.sid
            await send(ws_a, rtc.SignalRequest(offer=rtc.SessionDescription(type="offer", sdp=simulcast_offer(alice_pub), id=1)))
            answer = (await recv_until(ws_a, "answer")).answer
            (video_answer,) = parse_sdp(answer.sdp).media
            assert [r.rid for r in video_answer.rids] == ["q", "h", "f"]
            alice_pub.connect(answer.sdp)
            nursery.start_soon(alice_pub.run)
            await alice_pub.connected.wait()

            seq = {rid: 100 * i for i, rid in enumerate(LAYER_SSRCS)}
            n = 0

            async def send_round(keyframes: set[str]) -> None:
                nonlocal n
                n += 1
                for rid, ssrc in LAYER_SSRCS.items():
                    seq[rid] += 1
                    await alice_pub.send_rtp(RtpPacket(
                        96, seq[rid], 3000 * n, ssrc,
                        extensions={MID_ID: encode_mid("0"), RID_ID: encode_rid(rid)},
                        payload=payload(rid, rid in keyframes, n)))
                await trio.sleep(0.01)

            await send_round(set(LAYER_SSRCS))
            offer_b = parse_sdp(await answer_subscriber(ws_b, bob_sub, nursery))
            (bob_video,) = [m for m in offer_b.media if m.msid is not None]
            assert bob_video.msid.track_id == sid
            bob_ssrc = bob_video.ssrcs[0]
            # The publisher hears that its track got its first subscriber.
            assert (await recv_until(ws_a, "track_subscribed")).track_subscribed.track_sid == sid

            def forwarded() -> list[RtpPacket]:
                return [p for p in bob_sub.rtp if p.ssrc == bob_ssrc]

            await bob_sub.connected.wait()
            # Bob waits for a keyframe of the highest layer; the server asks for one.
            await alice_pub.wait_for(lambda: any(isinstance(p, rtcp.Pli) and p.media_ssrc == LAYER_SSRCS["f"] for p in alice_pub.rtcp))
            await send_round(set(LAYER_SSRCS))
            for _ in range(5):
                await send_round(set())
            got = await bob_sub.wait_for(lambda: forwarded() if len(forwarded()) >= 6 else None)
            assert {p.payload[2:3] for p in got} == {b"f"}, "only the highest layer is forwarded"

            # Bob asks for the low layer: nothing changes until the low layer's keyframe.
            plis_q = lambda: [p for p in alice_pub.rtcp if isinstance(p, rtcp.Pli) and p.media_ssrc == LAYER_SSRCS["q"]]
            await send(ws_b, rtc.SignalRequest(track_setting=rtc.UpdateTrackSettings(track_sids=[sid], quality=models.VideoQuality.LOW)))
            await alice_pub.wait_for(plis_q)
            for _ in range(3):
                await send_round(set())
            await send_round({"q"})
            for _ in range(3):
                await send_round(set())
            got = await bob_sub.wait_for(lambda: forwarded() if any(p.payload[2:3] == b"q" for p in forwarded())
                                         and len([p for p in forwarded() if p.payload[2:3] == b"q"]) >= 4 else None)
            tags = [p.payload[2:3] for p in got]
            first_q = tags.index(b"q")
            assert set(tags[:first_q]) == {b"f"} and set(tags[first_q:]) == {b"q"}
            assert got[first_q].payload[1] & 0x01 == 0, "the switch happens on a keyframe"
            assert all((b.sequence_number - a.sequence_number) & 0xFFFF == 1 for a, b in zip(got, got[1:]))
            assert all(0 < (b.timestamp - a.timestamp) & 0xFFFFFFFF < 90000 for a, b in zip(got, got[1:]))
            nursery.cancel_scope.cancel()
