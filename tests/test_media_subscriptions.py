"""Explicit subscriptions and track settings through the server: a client joined with
auto_subscribe=0 is offered nothing until UpdateSubscription(subscribe=true); its media stops when
UpdateTrackSettings(disabled=true) and resumes (from a keyframe) when re-enabled;
UpdateSubscription(subscribe=false) renegotiates the track away."""

from __future__ import annotations

import trio
from livekit.protocol import models, rtc

from rtp import rtcp
from rtp.packet import RtpPacket
from sdp.parser import parse as parse_sdp
from server_fixtures import mint_token, recv, send, signal_client
from test_media_forwarding import (
    VIDEO_SSRC,
    ClientPc,
    answer_subscriber,
    media_server,
    publisher_offer,
    recv_until,
    vp8_payload,
)


async def barrier(ws) -> None:
    """The server handles a client's requests in order: its pong means everything before was applied."""
    await send(ws, rtc.SignalRequest(ping_req=rtc.Ping(timestamp=1)))
    await recv_until(ws, "pong_resp")


def down_track_of(server, track_sid: str):
    """The server's one down track of `track_sid` (only Bob subscribes to it here)."""
    downs = [session.subscriptions[track_sid].down for room in server.media.rooms.values()
             for session in room.sessions.values() if track_sid in session.subscriptions]
    assert len(downs) == 1, downs
    return downs[0]


async def until(condition, what: str, timeout: float = 10.0) -> None:
    with trio.move_on_after(timeout):
        while not condition():
            await trio.sleep(0.01)
        return
    raise AssertionError(f"not within {timeout:g} s: {what}")


async def test_explicit_subscription_disable_enable_and_unsubscribe():
    async with media_server() as server:
        async with trio.open_nursery() as nursery, \
                signal_client(server, mint_token("alice")) as ws_a, \
                signal_client(server, mint_token("bob"), query="auto_subscribe=0") as ws_b:
            await recv(ws_a), await recv(ws_b)
            alice_sub, bob_sub, alice_pub = ClientPc(), ClientPc(), ClientPc()
            await answer_subscriber(ws_a, alice_sub, nursery)
            await answer_subscriber(ws_b, bob_sub, nursery)
            await send(ws_a, rtc.SignalRequest(add_track=rtc.AddTrackRequest(
                cid="cid-video", type=models.TrackType.VIDEO, source=models.TrackSource.CAMERA)))
            sid = (await recv_until(ws_a, "track_published")).track_published.track.sid
            await send(ws_a, rtc.SignalRequest(add_track=rtc.AddTrackRequest(
                cid="cid-audio", type=models.TrackType.AUDIO, source=models.TrackSource.MICROPHONE)))
            await recv_until(ws_a, "track_published")
            offer = publisher_offer(alice_pub.ufrag, alice_pub.pwd, alice_pub.fingerprint)
            await send(ws_a, rtc.SignalRequest(offer=rtc.SessionDescription(type="offer", sdp=offer, id=1)))
            alice_pub.connect((await recv_until(ws_a, "answer")).answer.sdp)
            nursery.start_soon(alice_pub.run)
            await alice_pub.connected.wait()

            seq = 0

            async def send_video(n: int, keyframe_first: bool = False) -> None:
                nonlocal seq
                for i in range(n):
                    seq += 1
                    await alice_pub.send_rtp(RtpPacket(96, seq, 3000 * seq, VIDEO_SSRC,
                                                       payload=vp8_payload(keyframe_first and i == 0)))
                    await trio.sleep(0.005)

            await send_video(3, keyframe_first=True)
            # The track is live, but Bob did not ask for it: no offer for him.
            with trio.move_on_after(0.5):
                response = await recv_until(ws_b, "offer")
                raise AssertionError(f"unexpected offer to a client with auto_subscribe=0: {response}")
            # Not only quiet for a while: the server neither wants the track for anyone nor
            # forwards it (the decision an offer would follow from).
            sessions = [session for room in server.media.rooms.values() for session in room.sessions.values()]
            assert len(sessions) == 2 and not [s for s in sessions if sid in s.subscriptions or sid in s.subscribing.manager.subscriptions]

            def plis() -> int:
                return len([p for p in alice_pub.rtcp if isinstance(p, rtcp.Pli) and p.media_ssrc == VIDEO_SSRC])

            plis_before = plis()
            await send(ws_b, rtc.SignalRequest(subscription=rtc.UpdateSubscription(track_sids=[sid], subscribe=True)))
            offer_b = parse_sdp(await answer_subscriber(ws_b, bob_sub, nursery))
            await bob_sub.connected.wait()
            # The server applied Bob's answer and started his down track: it asks Alice for a keyframe.
            await alice_pub.wait_for(lambda: plis() > plis_before)
            (video_m,) = [m for m in offer_b.media if m.msid is not None and not m.rejected]
            assert video_m.msid.track_id == sid
            bob_ssrc = video_m.ssrcs[0]

            def received() -> int:
                return len([p for p in bob_sub.rtp if p.ssrc == bob_ssrc])

            await send_video(5, keyframe_first=True)
            await bob_sub.wait_for(lambda: received() >= 5)

            # Disabled: the server stops forwarding. Everything it forwarded before arrived (the
            # wait above); the server's counters, not a sleep, say when the 10 were handled.
            down = down_track_of(server, sid)
            forwarded = down.counters.packets_sent
            await send(ws_b, rtc.SignalRequest(track_setting=rtc.UpdateTrackSettings(track_sids=[sid], disabled=True)))
            await barrier(ws_b)
            before = received()
            paused = down.counters.dropped_disabled
            await send_video(10, keyframe_first=True)
            await until(lambda: down.counters.dropped_disabled >= paused + 10, "10 packets held back")
            assert down.counters.packets_sent == forwarded
            assert received() == before

            # Enabled again: forwarding resumes at the next keyframe, numbering continues.
            await send(ws_b, rtc.SignalRequest(track_setting=rtc.UpdateTrackSettings(track_sids=[sid], disabled=False, quality=models.VideoQuality.HIGH)))
            await barrier(ws_b)
            waiting = down.counters.dropped_waiting_keyframe
            await send_video(3)  # deltas: not decodable on their own, not forwarded
            await until(lambda: down.counters.dropped_waiting_keyframe >= waiting + 3, "3 deltas held back")
            assert down.counters.packets_sent == forwarded
            assert received() == before
            await send_video(4, keyframe_first=True)
            got = await bob_sub.wait_for(lambda: [p for p in bob_sub.rtp if p.ssrc == bob_ssrc] if received() >= before + 4 else None)
            assert got[before].payload[1] & 0x01 == 0  # resumed on the keyframe
            assert all((b.sequence_number - a.sequence_number) & 0xFFFF == 1 for a, b in zip(got, got[1:]))

            # Unsubscribed: an offer without the track.
            await send(ws_b, rtc.SignalRequest(subscription=rtc.UpdateSubscription(track_sids=[sid], subscribe=False)))
            offer_after = parse_sdp(await answer_subscriber(ws_b, bob_sub, nursery))
            assert not [m for m in offer_after.media if m.msid is not None and not m.rejected]
            nursery.cancel_scope.cancel()
