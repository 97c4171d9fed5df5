"""Two `livekit` Python SDK peers (real libwebrtc) each publish a 640×360@30 VP8 camera, simulcast on
or off, subscribe to each other, and count the frames each decodes per second, by resolution.

The field report's setup (/work/shared/docs/field-reports.md): TrackPublishOptions(simulcast=...,
video_encoding=VideoEncoding(max_bitrate=1_000_000, max_framerate=30)). The frames move (a bar
of noise sweeping a gradient) so the encoder spends a real bitrate. At the end the server's
forwarding counters are read from its /metrics (dev credentials) and printed with the summary.

Prints JSON lines on stdout; the last one is {"summary": ...}. Run inside the test's network
namespace by tests/e2e/test_e2e_simulcast_impaired.py.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import json
import os
import sys
import time
import urllib.request

from livekit import api, rtc

WIDTH, HEIGHT, FPS = 640, 360, 30
BAR = 64

#: The server's counters that say where frames go (names from trio_sfu.api.prometheus).
COUNTER_PREFIXES = (
    "trio_sfu_media_downtrack_layer_switches_total", "trio_sfu_media_downtrack_source_switches_total",
    "trio_sfu_media_downtrack_dropped_waiting_keyframe_total", "trio_sfu_media_downtrack_dropped_other_layer_total",
    "trio_sfu_media_downtrack_dropped_too_old_total", "trio_sfu_media_downtrack_nack_requests_total",
    "trio_sfu_media_downtrack_nack_resent_total", "trio_sfu_media_downtrack_nack_missing_total",
    "trio_sfu_media_downtrack_nack_throttled_total", "trio_sfu_media_downtrack_keyframe_requests_received_total",
    "trio_sfu_media_downtrack_packets_sent_total", "trio_sfu_media_downtrack_catch_up_resent_total",
    "trio_sfu_media_receiver_keyframe_requests_sent_total", "trio_sfu_media_receiver_keyframe_requests_limited_total",
    "trio_sfu_media_receiver_keyframes_total", "trio_sfu_media_receiver_nack_seqs_requested_total",
    "trio_sfu_media_receiver_rtx_recovered_total", "trio_sfu_media_receiver_packets_total",
    "livekit_pli_total", "livekit_nack_total", "trio_sfu_media_downtrack_dropped_padding_total",
    "trio_sfu_media_downtrack_nack_late_forwarded_total", "trio_sfu_media_receiver_padding_only_total",
    "trio_sfu_media_receiver_rtx_dropped_total", "trio_sfu_media_receiver_nack_seqs_given_up_total",
    "trio_sfu_media_receiver_dropped_duplicate_total", "trio_sfu_media_receiver_rtx_duplicate_total",
    "trio_sfu_media_receiver_nack_padding_skipped_total", "trio_sfu_media_downtrack_padding_closed_late_total",
    "trio_sfu_media_receiver_nack_media_given_up_total", "trio_sfu_media_playout_delay_raised_total",
    "trio_sfu_media_playout_delay_lifted_total", "trio_sfu_media_receiver_playout_floor_raised_total",
    "trio_sfu_media_receiver_nack_repaired_total",
)
#: What libwebrtc's own stats say about each encoding sent and the stream decoded.
STAT_KEYS = ("rid", "frameWidth", "framesEncoded", "framesSent", "framesPerSecond", "targetBitrate", "bytesSent",
             "qualityLimitationReason", "active", "framesDecoded", "framesDropped", "keyFramesDecoded",
             "packetsLost", "packetsReceived", "nackCount", "pliCount", "firCount", "freezeCount",
             "totalFreezesDuration", "jitter", "retransmittedPacketsSent", "packetsSent")


def say(**item: object) -> None:
    print(json.dumps(item), flush=True)


def make_frames(count: int = FPS) -> list[bytes]:
    """`count` RGBA frames: a grey gradient with a bar of noise at a different place in each."""
    background = bytes(v for x in range(WIDTH) for v in (x * 255 // WIDTH, 128, 255 - x * 255 // WIDTH, 255))
    frames = []
    for i in range(count):
        at = (i * (WIDTH - BAR) // count) * 4
        rows = [background[:at] + os.urandom(BAR * 4) + background[at + BAR * 4:] for _ in range(HEIGHT)]
        frames.append(b"".join(rows))
    return frames


def _flatten(item: dict, out: dict) -> dict:
    for key, value in item.items():
        if isinstance(value, dict):
            _flatten(value, out)
        elif key in STAT_KEYS:
            out[key] = value
    return out


async def track_stats(track: rtc.Track) -> list[dict]:
    """The outbound-rtp (per encoding) or inbound-rtp stats of a track, the fields in STAT_KEYS."""
    from google.protobuf.json_format import MessageToDict

    out = []
    for stat in await track.get_stats():
        kind = stat.WhichOneof("stats")
        if kind in ("outbound_rtp", "inbound_rtp"):
            out.append(_flatten(MessageToDict(getattr(stat, kind)), {"type": kind}))
    return out


class Peer:
    def __init__(self, identity: str) -> None:
        self.identity = identity
        self.room = rtc.Room()
        self.tasks: list[asyncio.Future] = []
        # decoded frames per whole second since the start, and by width
        self.per_second: collections.Counter[int] = collections.Counter()
        self.by_width: collections.Counter[int] = collections.Counter()
        self.start = time.monotonic()
        self.local_video: rtc.LocalVideoTrack | None = None
        self.remote_video: rtc.Track | None = None


async def count_video(peer: Peer, track: rtc.Track) -> None:
    async for event in rtc.VideoStream(track):
        peer.per_second[int(time.monotonic() - peer.start)] += 1
        peer.by_width[event.frame.width] += 1


async def feed_video(source: rtc.VideoSource, frames: list[bytes]) -> None:
    start = time.monotonic()
    n = 0
    while True:
        frame = rtc.VideoFrame(WIDTH, HEIGHT, rtc.VideoBufferType.RGBA, frames[n % len(frames)])
        source.capture_frame(frame, timestamp_us=int((time.monotonic() - start) * 1e6))
        n += 1
        await asyncio.sleep(max(0.0, start + n / FPS - time.monotonic()))


async def join(args: argparse.Namespace, peer: Peer, frames: list[bytes]) -> None:
    def on_subscribed(track: rtc.Track, publication: rtc.RemoteTrackPublication,
                      participant: rtc.RemoteParticipant) -> None:
        if track.kind == rtc.TrackKind.KIND_VIDEO:
            say(event="video_subscribed", at=peer.identity, of=participant.identity)
            peer.remote_video = track
            peer.tasks.append(asyncio.ensure_future(count_video(peer, track)))

    peer.room.on("track_subscribed", on_subscribed)
    grants = api.VideoGrants(room_join=True, room=args.room)
    token = api.AccessToken(args.api_key, args.api_secret).with_identity(peer.identity).with_grants(grants).to_jwt()
    await peer.room.connect(args.url, token, rtc.RoomOptions(auto_subscribe=True))
    source = rtc.VideoSource(WIDTH, HEIGHT)
    peer.tasks.append(asyncio.ensure_future(feed_video(source, frames)))
    cam = peer.local_video = rtc.LocalVideoTrack.create_video_track("camera", source)
    await peer.room.local_participant.publish_track(cam, rtc.TrackPublishOptions(
        source=rtc.TrackSource.SOURCE_CAMERA, simulcast=args.simulcast,
        video_encoding=rtc.VideoEncoding(max_bitrate=1_000_000, max_framerate=FPS)))


def server_counters(url: str, key: str, secret: str) -> dict[str, float]:
    http = url.replace("ws://", "http://").replace("wss://", "https://").rstrip("/") + "/metrics"
    auth = base64.b64encode(f"{key}:{secret}".encode()).decode()
    request = urllib.request.Request(http, headers={"Authorization": f"Basic {auth}"})
    text = urllib.request.urlopen(request, timeout=5).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(COUNTER_PREFIXES):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


async def run(args: argparse.Namespace) -> dict[str, object]:
    frames = make_frames()
    peers = [Peer("alice"), Peer("bob")]
    summary: dict[str, object] = {"simulcast": args.simulcast}
    try:
        await asyncio.wait_for(asyncio.gather(*(join(args, p, frames) for p in peers)), 30)
        # Warm up (the publishers' estimates ramp to their top layer), then measure.
        for p in peers:
            p.start = time.monotonic()
        await asyncio.sleep(args.warmup + args.seconds + 0.5)
        first, last = int(args.warmup), int(args.warmup + args.seconds)
        for p in peers:
            window = [p.per_second.get(s, 0) for s in range(first, last)]
            summary[p.identity] = {"fps": sum(window) / len(window), "per_second": window,
                                   "by_width": dict(p.by_width)}
            try:
                summary[p.identity]["sent"] = await track_stats(p.local_video) if p.local_video else None
                summary[p.identity]["received"] = await track_stats(p.remote_video) if p.remote_video else None
            except Exception as exc:  # stats are for the report; their absence fails nothing
                summary[p.identity]["stats_error"] = repr(exc)
        summary["server"] = server_counters(args.url, args.api_key, args.api_secret)
    except Exception as exc:  # reported in the summary; the test says what failed
        summary["error"] = repr(exc)
    for p in peers:
        for task in p.tasks:
            task.cancel()
        await p.room.disconnect()
    return summary


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--room", default="simulcast-fps")
    parser.add_argument("--api-key", default="devkey")
    parser.add_argument("--api-secret", default="secret")
    parser.add_argument("--simulcast", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=6.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--counters-only", action="store_true", help="print the server's counters and exit")
    args = parser.parse_args()
    if args.counters_only:
        say(server=server_counters(args.url, args.api_key, args.api_secret))
        return 0
    args.simulcast = bool(args.simulcast)
    say(summary=asyncio.run(run(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
