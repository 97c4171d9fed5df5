"""Moderation reaches the media path, end to end through the in-process server.

Our client stack (trio_sfu.client) publishes Opus-sized audio and VP8-framed video on one
LiveKitClient and receives on another, over real ICE/DTLS/SRTP against the server. The
moderation requests go in the way a deployment sends them: the publisher's own MuteTrackRequest
on its signal connection, and the Server API called by livekit-api's `LiveKitAPI` (its own
Twirp client and token signing) with a roomAdmin token.

What the assertions prove, against what the subscriber actually receives:
* a muted track stops arriving while the publisher keeps sending it (so it is the SFU that
  stops, and the server's down track counts the packets it paused), and a muted track's new
  subscriber receives nothing until the unmute;
* on unmute packets resume, the publisher sees a keyframe request (PLI) for video that it did
  not see while muted, and the subscriber's stream has no sequence gap across the pause (the
  paused packets were never numbered) and stays on one SSRC;
* UpdateParticipant revoking canPublish unpublishes the tracks: the subscriber's next offer
  no longer sends them on their m-lines, no packet of them reaches the subscriber any more
  (not even as an unknown SSRC), and the publisher's continuing RTP on the revoked m-line is
  not matched to any track.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, AsyncIterator, Awaitable, Callable

import attrs
import trio
from livekit import api
from livekit.protocol import models, rtc

import server_fixtures
from server_fixtures import API_KEY, API_SECRET, http_base, make_config, mint_token
from trio_sfu.client import LiveKitClient
from trio_sfu.client.client import LocalPublication, RemoteTrack
from trio_sfu.client.senders import send_synthetic_audio, send_synthetic_video
from trio_sfu.server import Server
from sdp.parser import parse as parse_sdp

import trio_sfu.metrics as server_metrics  # noqa: E402

#: A paused track is watched while the server holds back this many more of its packets (audio
#: comes at 50/s): the window is counted in packets the server handled, not in seconds, so a busy
#: machine makes it longer, never emptier.
HELD_BACK = 30


@attrs.define
class Scene:
    server: Server
    subscriber: LiveKitClient
    publisher: LiveKitClient
    audio: LocalPublication
    video: LocalPublication
    received: dict[str, RemoteTrack]
    offers: list[str]  # the subscriber's offers from the server, in order


async def call_api(server: Server, fn: Callable[[api.LiveKitAPI], Awaitable[Any]]) -> Any:
    """`fn(LiveKitAPI)` on its own asyncio loop in a thread, so the server's Trio loop runs on."""

    def run() -> Any:
        async def main() -> Any:
            async with api.LiveKitAPI(http_base(server), API_KEY, API_SECRET) as lkapi:
                return await fn(lkapi)

        return asyncio.run(main())

    return await trio.to_thread.run_sync(run)


def record_offers(client: LiveKitClient) -> list[str]:
    offers: list[str] = []
    dispatch = client._dispatch

    async def recording_dispatch(response: rtc.SignalResponse) -> None:
        if response.WhichOneof("message") == "offer":
            offers.append(response.offer.sdp)
        await dispatch(response)

    client._dispatch = recording_dispatch  # type: ignore[method-assign]
    return offers


def media_server(config: Any):
    """The server with media enabled; server_fixtures' leak check runs at exit."""
    return server_fixtures.media_server(config)


@contextlib.asynccontextmanager
async def publishing_scene(**room: Any) -> AsyncIterator[Scene]:
    """A subscriber and a publisher whose audio and (single-layer) video already flow."""
    config = make_config(**room)
    config.rtc.udp_port = 0
    config.rtc.node_ip = "127.0.0.1"
    async with media_server(config) as server:
        async with LiveKitClient.connect(server.url, mint_token("sub")) as subscriber, \
                LiveKitClient.connect(server.url, mint_token("pub")) as publisher:
            offers = record_offers(subscriber)
            audio = await publisher.publish_audio()
            video = await publisher.publish_video(width=640, height=360, bitrate=500_000, simulcast=False)
            async with trio.open_nursery() as senders:
                senders.start_soon(send_synthetic_audio, audio, 60.0)
                senders.start_soon(send_synthetic_video, video, 60.0, 30.0)  # keyframes only on request
                received = {t.sid: t for t in await subscriber.wait_for_tracks(2, timeout=15)}
                with trio.fail_after(15):
                    for track in received.values():
                        await track.first_packet.wait()
                yield Scene(server, subscriber, publisher, audio, video, received, offers)
                senders.cancel_scope.cancel()


async def client_mute(publisher: LiveKitClient, publication: LocalPublication, muted: bool) -> None:
    await publisher._send(rtc.SignalRequest(mute=rtc.MuteTrackRequest(sid=publication.sid, muted=muted)))


async def wait_listed_muted(subscriber: LiveKitClient, publisher: LiveKitClient, sid: str, muted: bool) -> None:
    """Until the room's ParticipantUpdate shows the track with `muted` (the signalling side)."""
    with trio.fail_after(5):
        while True:
            info = subscriber.remote_participants.get(publisher.participant_sid)
            if info is not None and any(t.sid == sid and t.muted == muted for t in info.tracks):
                return
            await trio.sleep(0.02)


async def until(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    with trio.move_on_after(timeout):
        while not condition():
            await trio.sleep(0.01)
        return
    raise AssertionError(f"not within {timeout:g} s: {what}")


def subscriber_drops(client: LiveKitClient) -> int:
    """Datagrams the kernel dropped on the client's subscriber socket (its reader starved)."""
    drops = client.subscriber_pc.socket_drops() if client.subscriber_pc is not None else 0
    assert drops is not None, "the kernel's drop counts are unreadable here (Linux /proc/net/udp)"
    return drops


async def assert_held_back(scene: Scene, downs: dict[str, Any], held: Callable[[], tuple[int, ...]]) -> None:
    """The server holds back the tracks of `downs` (their down tracks to the subscriber) while
    the publisher sends on: each of the server's counters in `held` moves by HELD_BACK while the
    down tracks forward nothing and the subscriber receives nothing of them, not even under an
    unknown SSRC.

    The pause is in force from the first packet held back; what was forwarded before it is waited
    for at the subscriber (less what the kernel counted dropping), so in-flight packets cannot
    land inside the window."""
    start = held()
    await until(lambda: all(now > then for now, then in zip(held(), start)), "the server holding a packet back")
    forwarded = {sid: down.counters.packets_sent for sid, down in downs.items()}
    await until(lambda: all(scene.received[sid].stats.packets + subscriber_drops(scene.subscriber) >= n
                            for sid, n in forwarded.items()), f"what was forwarded before the pause: {forwarded}")
    before = {sid: scene.received[sid].stats.packets for sid in downs}
    unknown_before = scene.subscriber.unknown_ssrc_packets
    sent_before = scene.audio.packets_sent + scene.video.packets_sent
    mark = held()
    await until(lambda: all(now >= then + HELD_BACK for now, then in zip(held(), mark)),
                f"{HELD_BACK} more packets held back by the server")
    assert {sid: down.counters.packets_sent for sid, down in downs.items()} == forwarded
    assert {sid: scene.received[sid].stats.packets for sid in downs} == before
    assert scene.subscriber.unknown_ssrc_packets == unknown_before
    # The publisher went on sending all along: the SFU is what stopped.
    assert scene.audio.packets_sent + scene.video.packets_sent - sent_before >= HELD_BACK


def disabled_drops(downs: dict[str, Any]) -> Callable[[], tuple[int, ...]]:
    """Each down track's count of packets it skipped because its track is paused."""
    return lambda: tuple(down.counters.dropped_disabled for down in downs.values())


async def settled(track: RemoteTrack, down: Any, subscriber: LiveKitClient) -> None:
    """Until everything the server forwarded on `down` has reached the subscriber (less what the
    kernel counted dropping) — instead of sleeping for the packets in flight."""
    await until(lambda: track.stats.packets + subscriber_drops(subscriber) >= down.counters.packets_sent,
                "the forwarded packets reaching the subscriber")


async def wait_flowing(track: RemoteTrack, packets: int = 10) -> None:
    before = track.stats.packets
    with trio.fail_after(5):
        while track.stats.packets < before + packets:
            await trio.sleep(0.02)


def down_track(scene: Scene, subscriber: LiveKitClient, sid: str):
    assert scene.server.media is not None
    for room in scene.server.media.rooms.values():
        session = room.sessions.get(subscriber.participant_sid)
        if session is not None and sid in session.subscriptions:
            return session.subscriptions[sid].down
    return None


def assert_continuous(track: RemoteTrack) -> None:
    """One SSRC, no sequence gap: the pause left no hole for the subscriber to NACK or conceal."""
    assert len(track.stats.ssrcs) == 1, track.stats.ssrcs
    assert track.stats.lost == 0, (track.sid, track.stats.expected, track.stats.packets)


async def test_client_mute_pauses_forwarding_and_unmute_resumes_at_a_keyframe() -> None:
    async with publishing_scene() as scene:
        audio_in, video_in = scene.received[scene.audio.sid], scene.received[scene.video.sid]
        await client_mute(scene.publisher, scene.video, True)
        await client_mute(scene.publisher, scene.audio, True)
        await wait_listed_muted(scene.subscriber, scene.publisher, scene.video.sid, True)
        await wait_listed_muted(scene.subscriber, scene.publisher, scene.audio.sid, True)
        keyframe_requests = scene.video.keyframe_requests
        downs = {sid: down_track(scene, scene.subscriber, sid) for sid in (scene.audio.sid, scene.video.sid)}
        assert None not in downs.values(), downs
        await assert_held_back(scene, downs, disabled_drops(downs))
        # Nobody asked the muted publisher for a keyframe; the SFU paused the packets itself.
        assert scene.video.keyframe_requests == keyframe_requests

        await client_mute(scene.publisher, scene.video, False)
        await client_mute(scene.publisher, scene.audio, False)
        await wait_flowing(video_in)
        await wait_flowing(audio_in)
        assert scene.video.keyframe_requests > keyframe_requests
        await settled(audio_in, downs[scene.audio.sid], scene.subscriber)
        await settled(video_in, downs[scene.video.sid], scene.subscriber)
        assert_continuous(audio_in)
        assert_continuous(video_in)
        assert scene.subscriber.unknown_ssrc_packets == 0


async def test_server_api_mute_pauses_forwarding_also_for_a_later_subscriber() -> None:
    async with publishing_scene(enable_remote_unmute=True) as scene:
        video_in = scene.received[scene.video.sid]
        mute = api.MuteRoomTrackRequest(room="room1", identity="pub", track_sid=scene.video.sid, muted=True)
        response = await call_api(scene.server, lambda lk: lk.room.mute_published_track(mute))
        assert response.track.sid == scene.video.sid and response.track.muted
        await wait_listed_muted(scene.subscriber, scene.publisher, scene.video.sid, True)
        keyframe_requests = scene.video.keyframe_requests
        # The audio track was not muted and keeps flowing past the muted video.
        audio_in = scene.received[scene.audio.sid]
        audio_before = audio_in.stats.packets
        downs = {scene.video.sid: down_track(scene, scene.subscriber, scene.video.sid)}
        assert None not in downs.values(), downs
        await assert_held_back(scene, downs, disabled_drops(downs))
        assert audio_in.stats.packets > audio_before + 20

        # A subscriber joining now is offered the muted track but receives none of it.
        async with LiveKitClient.connect(scene.server.url, mint_token("late")) as late:
            late_tracks = {t.sid: t for t in await late.wait_for_tracks(2, timeout=15)}
            with trio.fail_after(10):
                await late_tracks[scene.audio.sid].first_packet.wait()
            await until(lambda: down_track(scene, late, scene.video.sid) is not None, "the late video down track")
            late_down = down_track(scene, late, scene.video.sid)
            # Counted on the server: HELD_BACK of the muted track's packets came for `late` and
            # none went out, so none can be on the way.
            await until(lambda: late_down.counters.dropped_disabled >= HELD_BACK, f"{HELD_BACK} packets held back")
            assert late_down.counters.packets_sent == 0
            assert late_tracks[scene.video.sid].stats.packets == 0
            assert scene.video.keyframe_requests == keyframe_requests

            unmute = api.MuteRoomTrackRequest(room="room1", identity="pub", track_sid=scene.video.sid, muted=False)
            response = await call_api(scene.server, lambda lk: lk.room.mute_published_track(unmute))
            assert not response.track.muted
            await wait_flowing(video_in)
            await wait_flowing(late_tracks[scene.video.sid])
            assert scene.video.keyframe_requests > keyframe_requests
            await settled(video_in, downs[scene.video.sid], scene.subscriber)
            await settled(late_tracks[scene.video.sid], late_down, late)
            assert_continuous(video_in)
            assert_continuous(late_tracks[scene.video.sid])


async def test_revoking_can_publish_unpublishes_the_tracks_from_the_media_path() -> None:
    async with publishing_scene() as scene:
        sids = [scene.audio.sid, scene.video.sid]
        # Kept to read what they forwarded in all: the revoke closes them.
        downs = {sid: down_track(scene, scene.subscriber, sid) for sid in sids}
        assert None not in downs.values(), downs
        unmatched_before = scene.server.metrics.get(server_metrics.MEDIA_RTP_UNMATCHED)
        offers_before = len(scene.offers)
        permission = models.ParticipantPermission(can_subscribe=True, can_publish=False, can_publish_data=True)
        request = api.UpdateParticipantRequest(room="room1", identity="pub", permission=permission)
        info = await call_api(scene.server, lambda lk: lk.room.update_participant(request))
        assert not info.permission.can_publish and not info.tracks

        with trio.fail_after(5):
            while any(scene.received[sid].active for sid in sids):
                await trio.sleep(0.02)
        # The offer that retired them: each track's m-line is stopped (port 0) or no longer sends.
        assert len(scene.offers) > offers_before
        last = parse_sdp(scene.offers[-1])
        for sid in sids:
            section = next(m for m in last.media if m.mid == scene.received[sid].mid)
            assert section.rejected or not section.direction.sends, (sid, section.direction)
        # The publisher's RTP on the revoked m-lines reaches the server but feeds no track.
        await assert_held_back(scene, downs, lambda: (scene.server.metrics.get(server_metrics.MEDIA_RTP_UNMATCHED),))
        assert scene.server.metrics.get(server_metrics.MEDIA_RTP_UNMATCHED) - unmatched_before >= HELD_BACK
        room_media = next(iter(scene.server.media.rooms.values()))
        assert room_media.tracks == {}
        assert all(not s.subscriptions for s in room_media.sessions.values())


async def test_a_revoked_m_line_still_sending_never_feeds_a_track_published_later() -> None:
    """After the revoke the client keeps sending on its old m-lines (nothing tells our client to
    stop). Publishing is granted again and a new audio track announced: the old m-line's packets
    must not be taken for it (it is the oldest unmatched audio track), only its own m-line's."""
    async with publishing_scene() as scene:
        revoke = models.ParticipantPermission(can_subscribe=True, can_publish=False, can_publish_data=True)
        grant = models.ParticipantPermission(can_subscribe=True, can_publish=True, can_publish_data=True)
        for permission in (revoke, grant):
            request = api.UpdateParticipantRequest(room="room1", identity="pub", permission=permission)
            await call_api(scene.server, lambda lk: lk.room.update_participant(request))
        second = await scene.publisher.publish_audio("second")
        await second.wait_ready()
        # The old m-line's audio arrives all along: HELD_BACK more of it reach the server, unmatched.
        unmatched = scene.server.metrics.get(server_metrics.MEDIA_RTP_UNMATCHED)
        await until(lambda: scene.server.metrics.get(server_metrics.MEDIA_RTP_UNMATCHED) >= unmatched + HELD_BACK,
                    f"{HELD_BACK} packets of the revoked m-line reaching the server")
        room_media = next(iter(scene.server.media.rooms.values()))
        assert room_media.tracks == {}
        assert not scene.subscriber.subscriptions.get(second.sid)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_synthetic_audio, second, 5.0)
            with trio.fail_after(10):
                while (track := scene.subscriber.subscriptions.get(second.sid)) is None or not track.active:
                    await trio.sleep(0.02)
                await wait_flowing(track)
            nursery.cancel_scope.cancel()
        assert set(room_media.tracks) == {second.sid}
        assert scene.received[scene.audio.sid].stats.packets > 0 and not scene.received[scene.audio.sid].active
