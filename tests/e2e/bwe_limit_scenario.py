"""A `livekit` Python SDK subscriber behind a downlink limit (issue 15): Alice publishes a 640×360@30
VP8 camera (simulcast on, max 1 Mbit/s, the frames of simulcast_fps_scenario.py) and a 48 kHz
tone; Bob only subscribes. For every wall-clock second Bob's decoded video frames (by width) and
audio frames are counted, so the test can line them up with the moment the impairing proxy's
limit lifted (its acknowledgement carries the same Unix time). `--v0` joins both through /rtc;
`--subscriber-only`: no Alice, Bob receives whoever publishes in the room (a Chromium tab).

Prints JSON lines on stdout: {"event": "video_subscribed", "at": ...} and, after `--seconds`,
{"summary": {"per_second": {second: {"video": n, "widths": {w: n}, "audio": n}}, "server": {...}}}
with the server's counters read from its /metrics after Bob left (his allocator's counters are
folded in then).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import json
import math
import sys
import time
import urllib.request

from livekit import api, rtc
from simulcast_fps_scenario import FPS, HEIGHT, WIDTH, feed_video, make_frames

SAMPLE_RATE = 48_000
#: Counters that tell what the estimate and the allocator did (Prometheus names).
COUNTER_PREFIXES = (
    "trio_sfu_media_allocator_", "trio_sfu_media_bwe_", "trio_sfu_media_stream_state_updates_total",
    "trio_sfu_media_downtrack_layer_switches_total", "trio_sfu_media_twcc_feedback_total",
    "trio_sfu_media_downtrack_dropped_waiting_keyframe_total", "trio_sfu_media_downtrack_packets_sent_total",
    "livekit_pli_total",
)


def say(**item: object) -> None:
    print(json.dumps(item), flush=True)


class Counts:
    def __init__(self) -> None:
        self.video: collections.Counter[int] = collections.Counter()
        self.widths: dict[int, collections.Counter[int]] = collections.defaultdict(collections.Counter)
        self.audio: collections.Counter[int] = collections.Counter()


async def count_video(counts: Counts, track: rtc.Track) -> None:
    async for event in rtc.VideoStream(track):
        second = int(time.time())
        counts.video[second] += 1
        counts.widths[second][event.frame.width] += 1


async def count_audio(counts: Counts, track: rtc.Track) -> None:
    async for _ in rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1):
        counts.audio[int(time.time())] += 1


async def feed_audio(source: rtc.AudioSource) -> None:
    """A 400 Hz tone (a whole number of periods per frame) in 10 ms frames, paced by the clock."""
    samples = SAMPLE_RATE // 100
    tone = [int(8000 * math.sin(2 * math.pi * 400 * i / SAMPLE_RATE)) for i in range(samples)]
    start = time.monotonic()
    n = 0
    while True:
        frame = rtc.AudioFrame.create(SAMPLE_RATE, 1, samples)
        frame.data[:] = tone
        await source.capture_frame(frame)
        n += 1
        await asyncio.sleep(max(0.0, start + n / 100 - time.monotonic()))


def token(args: argparse.Namespace, identity: str) -> str:
    grants = api.VideoGrants(room_join=True, room=args.room)
    return api.AccessToken(args.api_key, args.api_secret).with_identity(identity).with_grants(grants).to_jwt()


def options(args: argparse.Namespace) -> rtc.RoomOptions:
    room_options = rtc.RoomOptions(auto_subscribe=True)
    if args.v0:
        room_options.single_peer_connection = False
    return room_options


def server_counters(url: str, key: str, secret: str) -> dict[str, float]:
    http = url.replace("ws://", "http://").rstrip("/") + "/metrics"
    auth = base64.b64encode(f"{key}:{secret}".encode()).decode()
    request = urllib.request.Request(http, headers={"Authorization": f"Basic {auth}"})
    text = urllib.request.urlopen(request, timeout=5).read().decode()
    return {name: float(value) for name, _, value in (line.rpartition(" ") for line in text.splitlines()
                                                       if line.startswith(COUNTER_PREFIXES))}


async def run(args: argparse.Namespace) -> dict[str, object]:
    alice, bob = rtc.Room(), rtc.Room()
    counts = Counts()
    tasks: list[asyncio.Future] = []
    summary: dict[str, object] = {}
    subscribed = asyncio.Event()

    def on_subscribed(track: rtc.Track, publication: rtc.RemoteTrackPublication,
                      participant: rtc.RemoteParticipant) -> None:
        if track.kind == rtc.TrackKind.KIND_VIDEO:
            tasks.append(asyncio.ensure_future(count_video(counts, track)))
            say(event="video_subscribed", at=time.time())
            subscribed.set()
        elif track.kind == rtc.TrackKind.KIND_AUDIO:
            tasks.append(asyncio.ensure_future(count_audio(counts, track)))

    bob.on("track_subscribed", on_subscribed)
    try:
        await asyncio.wait_for(bob.connect(args.url, token(args, "bob"), options(args)), 30)
        if not args.subscriber_only:
            await asyncio.wait_for(alice.connect(args.url, token(args, "alice"), options(args)), 30)
            await publish(alice, tasks)
        await asyncio.wait_for(subscribed.wait(), 60)
        await asyncio.sleep(args.seconds)
        seen = set(counts.video) | set(counts.audio) or {int(time.time())}
        summary["per_second"] = {second: {"video": counts.video.get(second, 0),
                                          "widths": dict(counts.widths.get(second, {})),
                                          "audio": counts.audio.get(second, 0)}
                                 for second in range(min(seen), max(seen) + 1)}
    except Exception as exc:  # reported in the summary; the test says what failed
        summary["error"] = repr(exc)
    for task in tasks:
        task.cancel()
    await bob.disconnect()
    await alice.disconnect()
    await asyncio.sleep(1.5)  # Bob's media closes on the server: his allocator's counters are folded
    try:
        summary["server"] = server_counters(args.url, args.api_key, args.api_secret)
    except Exception as exc:
        summary["server_error"] = repr(exc)
    return summary


async def publish(alice: rtc.Room, tasks: list[asyncio.Future]) -> None:
    """Alice's tone and simulcast camera."""
    video = rtc.VideoSource(WIDTH, HEIGHT)
    audio = rtc.AudioSource(SAMPLE_RATE, 1)
    tasks.append(asyncio.ensure_future(feed_video(video, make_frames())))
    tasks.append(asyncio.ensure_future(feed_audio(audio)))
    await alice.local_participant.publish_track(
        rtc.LocalAudioTrack.create_audio_track("mic", audio),
        rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
    await alice.local_participant.publish_track(
        rtc.LocalVideoTrack.create_video_track("camera", video),
        rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA, simulcast=True,
                                video_encoding=rtc.VideoEncoding(max_bitrate=1_000_000, max_framerate=FPS)))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--room", default="bwe-limit")
    parser.add_argument("--api-key", default="devkey")
    parser.add_argument("--api-secret", default="secret")
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--v0", action="store_true", help="both join through /rtc (two peer connections)")
    parser.add_argument("--subscriber-only", action="store_true", help="no Alice: Bob receives whoever publishes")
    args = parser.parse_args()
    say(summary=asyncio.run(run(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
