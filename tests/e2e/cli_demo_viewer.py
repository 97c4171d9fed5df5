"""A `livekit` Python SDK participant (real libwebrtc) that watches `trio-sfu join --publish-demo`.

It joins, waits for the publisher's camera and microphone tracks, decodes them for a few
seconds, and prints one JSON line: `{"summary": {...}}` with the publisher's tracks as the SDK
saw them (kind, source, name), the decoded video frames and size, how far a coarse grid of the
picture changed between the first and the last frame it sampled (a moving picture changes), and
the tone's frequency from zero crossings (tests/e2e/sdk_scenario.py's count_audio).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from livekit import api, rtc

from sdk_scenario import Participant, count_audio, say

GRID = (16, 9)


def luma_grid(frame: rtc.VideoFrame) -> list[int]:
    """Green of a GRID of points across the frame (enough to tell a still picture from a moving one)."""
    rgba = frame.convert(rtc.VideoBufferType.RGBA)
    data = rgba.data.cast("B") if isinstance(rgba.data, memoryview) else memoryview(rgba.data)
    cols, rows = GRID
    out = []
    for r in range(rows):
        for c in range(cols):
            x = (2 * c + 1) * rgba.width // (2 * cols)
            y = (2 * r + 1) * rgba.height // (2 * rows)
            out.append(data[(y * rgba.width + x) * 4 + 1])
    return out


async def watch_video(track: rtc.Track, seen: dict[str, object]) -> None:
    stream = rtc.VideoStream(track)
    try:
        async for event in stream:
            frame = event.frame
            seen["frames"] = int(seen.get("frames", 0)) + 1
            seen["size"] = [frame.width, frame.height]
            if "first" not in seen:
                seen["first"] = luma_grid(frame)
            elif seen["frames"] % 10 == 0:
                seen["last"] = luma_grid(frame)
    finally:
        await stream.aclose()


async def run(args: argparse.Namespace) -> dict[str, object]:
    me = Participant(identity="sdk-viewer", index=0)
    video: dict[str, object] = {}
    tasks: list[asyncio.Task[None]] = []

    @me.room.on("track_subscribed")
    def on_subscribed(track: rtc.Track, publication: rtc.RemoteTrackPublication,
                      participant: rtc.RemoteParticipant) -> None:
        if participant.identity != args.publisher:
            return
        if track.kind == rtc.TrackKind.KIND_VIDEO:
            tasks.append(asyncio.ensure_future(watch_video(track, video)))
        else:
            tasks.append(asyncio.ensure_future(count_audio(me, participant.identity, track)))

    grants = api.VideoGrants(room_join=True, room=args.room)
    token = api.AccessToken(args.api_key, args.api_secret).with_identity(me.identity).with_grants(grants).to_jwt()
    await me.room.connect(args.url, token, rtc.RoomOptions(auto_subscribe=True))
    say(event="joined")
    deadline = time.monotonic() + args.watch
    while time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    publisher = next((p for p in me.room.remote_participants.values() if p.identity == args.publisher), None)
    tracks = []
    if publisher is not None:
        tracks = [{"sid": pub.sid, "kind": rtc.TrackKind.Name(pub.kind), "source": rtc.TrackSource.Name(pub.source),
                   "name": pub.name, "subscribed": pub.subscribed} for pub in publisher.track_publications.values()]
    first, last = video.get("first"), video.get("last")
    changed = (sum(1 for a, b in zip(first, last) if abs(a - b) > 16) / len(first)  # type: ignore[arg-type]
               if first and last else None)
    audio = me.remotes.get(args.publisher)
    summary = {
        "publisher_seen": publisher is not None,
        "tracks": tracks,
        "video_frames": video.get("frames", 0),
        "video_size": video.get("size"),
        "grid_changed": changed,
        "audio": audio.as_json() if audio is not None else None,
    }
    for task in tasks:
        task.cancel()
    await me.room.disconnect()
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--room", required=True)
    parser.add_argument("--publisher", required=True)
    parser.add_argument("--api-key", default="devkey")
    parser.add_argument("--api-secret", default="secret")
    parser.add_argument("--watch", type=float, default=5.0, help="seconds of media to decode")
    args = parser.parse_args()
    say(summary=asyncio.run(run(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
