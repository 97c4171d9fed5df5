"""Two `livekit` Python SDK participants (real libwebrtc) publish a sine and a solid colour through
trio-sfu and count what they decode from each other; then one unpublishes its video.

Prints JSON lines on stdout; the last one is {"summary": ...}. Run inside the test's network
namespace by tests/e2e/test_media_sdk_pair.py.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import json
import math
import os
import sys
import time

from livekit import api, rtc

SAMPLE_RATE = 48000
FRAME_SAMPLES = SAMPLE_RATE // 100
WIDTH, HEIGHT, FPS = 320, 240, 15
LOUD = 2000


def say(**item: object) -> None:
    print(json.dumps(item), flush=True)


class Side:
    def __init__(self, identity: str, tone_hz: int, colour: tuple[int, int, int]) -> None:
        self.identity = identity
        self.tone_hz = tone_hz
        self.colour = colour
        self.room = rtc.Room()
        self.video_frames = 0
        self.audio_frames = 0
        self.loud_audio_frames = 0
        self.centre_rgb: list[int] | None = None
        self.unpublished: list[str] = []
        self.unsubscribed: list[str] = []
        # Loud audio frames per remote audio track sid (the extra tracks are told apart by it).
        self.loud_by_track: dict[str, int] = {}
        self.subscribed: list[str] = []
        self.tasks: list[asyncio.Future] = []
        self.video_publication: rtc.LocalTrackPublication | None = None


async def count_video(side: Side, track: rtc.Track) -> None:
    stream = rtc.VideoStream(track)
    async for event in stream:
        side.video_frames += 1
        if side.video_frames % 5 == 1:
            rgba = event.frame.convert(rtc.VideoBufferType.RGBA)
            data = memoryview(rgba.data).cast("B")
            at = ((rgba.height // 2) * rgba.width + rgba.width // 2) * 4
            side.centre_rgb = [data[at], data[at + 1], data[at + 2]]


async def count_audio(side: Side, track: rtc.Track) -> None:
    stream = rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1)
    async for event in stream:
        samples = event.frame.data
        side.audio_frames += 1
        if len(samples) and max(max(samples), -min(samples)) >= LOUD:
            side.loud_audio_frames += 1
            side.loud_by_track[track.sid] = side.loud_by_track.get(track.sid, 0) + 1


async def feed_audio(source: rtc.AudioSource, tone_hz: int) -> None:
    frame = rtc.AudioFrame.create(SAMPLE_RATE, 1, FRAME_SAMPLES)
    n = 0
    while True:
        pcm = array.array("h", (int(12000 * math.sin(2 * math.pi * tone_hz * (n + i) / SAMPLE_RATE))
                                for i in range(FRAME_SAMPLES)))
        n += FRAME_SAMPLES
        frame.data.cast("B")[:] = pcm.tobytes()  # memoryview slices take bytes, not tuples
        await source.capture_frame(frame)


async def feed_video(source: rtc.VideoSource, colour: tuple[int, int, int], noise: bool = False) -> None:
    """Solid `colour`; with `noise`, the top and bottom thirds are fresh random pixels every frame
    (the encoder then needs real bitrate), the middle third stays the colour the peer checks."""
    solid = bytes((*colour, 255)) * (WIDTH * HEIGHT)
    frame = rtc.VideoFrame(WIDTH, HEIGHT, rtc.VideoBufferType.RGBA, solid)
    third = (HEIGHT // 3) * WIDTH * 4
    start = time.monotonic()
    n = 0
    while True:
        if noise:
            frame = rtc.VideoFrame(WIDTH, HEIGHT, rtc.VideoBufferType.RGBA,
                                   os.urandom(third) + solid[third:len(solid) - third] + os.urandom(third))
        source.capture_frame(frame, timestamp_us=int((time.monotonic() - start) * 1e6))
        n += 1
        await asyncio.sleep(max(0.0, start + n / FPS - time.monotonic()))


async def join(args: argparse.Namespace, side: Side) -> None:
    def on_subscribed(track: rtc.Track, publication: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant) -> None:
        say(event="track_subscribed", at=side.identity, of=participant.identity, kind=int(track.kind))
        side.subscribed.append(publication.sid)
        counter = count_video if track.kind == rtc.TrackKind.KIND_VIDEO else count_audio
        side.tasks.append(asyncio.ensure_future(counter(side, track)))

    def on_unpublished(publication: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant) -> None:
        say(event="track_unpublished", at=side.identity, of=participant.identity, sid=publication.sid)
        side.unpublished.append(publication.sid)

    def on_unsubscribed(track: rtc.Track, publication: rtc.RemoteTrackPublication,
                        participant: rtc.RemoteParticipant) -> None:
        say(event="track_unsubscribed", at=side.identity, of=participant.identity, sid=publication.sid)
        side.unsubscribed.append(publication.sid)

    side.room.on("track_subscribed", on_subscribed)
    side.room.on("track_unpublished", on_unpublished)
    side.room.on("track_unsubscribed", on_unsubscribed)
    grants = api.VideoGrants(room_join=True, room=args.room)
    token = api.AccessToken(args.api_key, args.api_secret).with_identity(side.identity).with_grants(grants).to_jwt()
    # `--v0 NAME`: that side takes the v0 path (/rtc, two peer connections); else the SDK's
    # default, /rtc/v1 (one peer connection) for livekit >= 1.2.
    options = rtc.RoomOptions(auto_subscribe=True)
    if side.identity in args.v0:
        options.single_peer_connection = False
    await side.room.connect(args.url, token, options)
    audio = rtc.AudioSource(SAMPLE_RATE, 1)
    video = rtc.VideoSource(WIDTH, HEIGHT)
    side.tasks.append(asyncio.ensure_future(feed_audio(audio, side.tone_hz)))
    side.tasks.append(asyncio.ensure_future(feed_video(video, side.colour, args.noise)))
    mic = rtc.LocalAudioTrack.create_audio_track("mic", audio)
    cam = rtc.LocalVideoTrack.create_video_track("camera", video)
    await side.room.local_participant.publish_track(mic, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
    if side.identity == "alice":
        # `--extra-audio N`: more audio tracks than the m-lines a single-PC client offers at
        # first (three per kind), so the server must ask it for more (MediaSectionsRequirement).
        for i in range(args.extra_audio):
            extra = rtc.AudioSource(SAMPLE_RATE, 1)
            side.tasks.append(asyncio.ensure_future(feed_audio(extra, side.tone_hz + 110 * (i + 1))))
            track = rtc.LocalAudioTrack.create_audio_track(f"extra-{i}", extra)
            await side.room.local_participant.publish_track(
                track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_SCREENSHARE_AUDIO if i == 0
                                               else rtc.TrackSource.SOURCE_UNKNOWN))
    side.video_publication = await side.room.local_participant.publish_track(
        cam, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA))


async def until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


async def stays_quiet(count, quiet_s: float, timeout: float) -> bool:
    """Whether `count()` stops growing for `quiet_s` within `timeout`."""
    deadline = time.monotonic() + timeout
    last, since = count(), time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        now = count()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return True
    return False


async def run(args: argparse.Namespace) -> dict[str, object]:
    a = Side("alice", 440, (210, 40, 40))
    b = Side("bob", 660, (40, 40, 210))
    summary: dict[str, object] = {}
    try:
        await asyncio.wait_for(asyncio.gather(join(args, a), join(args, b)), 20)
        summary["media"] = await until(
            lambda: all(s.video_frames >= 15 and s.loud_audio_frames >= 25 for s in (a, b)), 25)
        # Media keeps flowing for a while (the downstream estimator's e2e check wants feedback).
        await asyncio.sleep(args.hold)
        if args.extra_audio:
            # bob hears every one of alice's audio tracks.
            wanted = 1 + args.extra_audio
            summary["all_audio"] = await until(
                lambda: sum(1 for n in b.loud_by_track.values() if n >= 25) >= wanted, 20)
        assert a.video_publication is not None
        unpublished_sid = a.video_publication.sid
        await a.room.local_participant.unpublish_track(unpublished_sid)
        summary["unpublish"] = await until(lambda: unpublished_sid in b.unpublished, 10)
        summary["unpublished_sid"] = unpublished_sid
        if args.resubscribe:
            # bob lets alice's audio go and takes it back: a renegotiation each way, and the
            # second subscription must bring sound again.
            audio = next(p for p in b.room.remote_participants["alice"].track_publications.values()
                         if p.kind == rtc.TrackKind.KIND_AUDIO)
            audio.set_subscribed(False)
            # The SDK reports the unsubscription at once; the server has acted on it when that
            # track's sound stops (a quick resubscribe could otherwise land before the server saw
            # the unsubscribe, and nothing would change on the wire).
            summary["unsubscribe"] = await until(lambda: audio.sid in b.unsubscribed, 10) and await stays_quiet(
                lambda: b.loud_by_track.get(audio.sid, 0), 1.0, 10)
            loud_before = b.loud_by_track.get(audio.sid, 0)
            audio.set_subscribed(True)
            summary["resubscribe"] = await until(
                lambda: b.subscribed.count(audio.sid) >= 2 and b.loud_by_track.get(audio.sid, 0) >= loud_before + 25, 15)
            summary["loud_after_resubscribe"] = b.loud_by_track.get(audio.sid, 0) - loud_before
    except Exception as exc:  # reported in the summary; the test says what failed
        summary["error"] = repr(exc)
    for side in (a, b):
        summary[side.identity] = {
            "video_frames": side.video_frames, "audio_frames": side.audio_frames,
            "loud_audio_frames": side.loud_audio_frames, "centre_rgb": side.centre_rgb,
            "unpublished": list(side.unpublished), "sent_colour": list(side.colour),
            "unsubscribed": list(side.unsubscribed), "subscribed": list(side.subscribed),
            "loud_by_track": dict(side.loud_by_track),
        }
    for side in (a, b):
        for task in side.tasks:
            task.cancel()
        await side.room.disconnect()
    return summary


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--room", default="media-pair")
    parser.add_argument("--api-key", default="devkey")
    parser.add_argument("--api-secret", default="secret")
    parser.add_argument("--noise", action="store_true", help="video that needs real bitrate (see feed_video)")
    parser.add_argument("--hold", type=float, default=0.0, help="seconds of media before the unpublish")
    parser.add_argument("--extra-audio", type=int, default=0, help="alice publishes this many more audio tracks")
    parser.add_argument("--resubscribe", action="store_true", help="then bob unsubscribes alice's audio and back")
    parser.add_argument("--v0", action="append", default=[], help="a side (alice, bob) that joins through /rtc")
    args = parser.parse_args()
    summary = asyncio.run(run(args))
    say(summary=summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
