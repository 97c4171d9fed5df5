"""Two `livekit` Python SDK participants (real libwebrtc) exchange video and audio through
trio-sfu; then each in turn loses its signal connection on purpose
(`room.simulate_scenario(SIMULATE_SIGNAL_RECONNECT)`: the SDK closes its WebSocket and resumes).
bob (receiving alice) goes first, then alice (publishing to bob).

Recorded: every room event with its time, each side's sid before and after, and the time of each
video frame each side decodes from the other, from which the test reads the media gap around
each resume. Prints JSON lines on stdout; the last one is {"summary": ...}. Run inside the
test's network namespace by tests/e2e/test_e2e_resume_sdk.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from livekit import api, rtc


from media_sdk_pair import HEIGHT, SAMPLE_RATE, WIDTH, feed_audio, feed_video

START = time.monotonic()
RECONNECT_TIMEOUT_S = 20.0
AFTER_RESUME_S = 4.0


def now() -> float:
    return round(time.monotonic() - START, 3)


def say(**item: object) -> None:
    print(json.dumps(item), flush=True)


class Side:
    def __init__(self, identity: str, tone_hz: int, colour: tuple[int, int, int]) -> None:
        self.identity = identity
        self.tone_hz = tone_hz
        self.colour = colour
        self.room = rtc.Room()
        self.frames: list[float] = []  # when each video frame from the other was decoded
        self.events: list[dict] = []
        self.reconnected = asyncio.Event()
        self.tasks: list[asyncio.Future] = []

    def event(self, name: str, **extra: object) -> None:
        item = {"at": self.identity, "event": name, "t": now(), **extra}
        self.events.append(item)
        say(**item)


async def count_video(side: Side, track: rtc.Track) -> None:
    async for _ in rtc.VideoStream(track):
        side.frames.append(time.monotonic() - START)


async def drain_audio(track: rtc.Track) -> None:
    async for _ in rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1):
        pass


async def join(args: argparse.Namespace, side: Side) -> None:
    room = side.room

    def on_subscribed(track: rtc.Track, publication: rtc.RemoteTrackPublication,
                      participant: rtc.RemoteParticipant) -> None:
        side.event("track_subscribed", of=participant.identity, kind=int(track.kind), sid=publication.sid)
        coro = count_video(side, track) if track.kind == rtc.TrackKind.KIND_VIDEO else drain_audio(track)
        side.tasks.append(asyncio.ensure_future(coro))

    room.on("track_subscribed", on_subscribed)
    room.on("track_unsubscribed", lambda t, pub, p: side.event("track_unsubscribed", of=p.identity, sid=pub.sid))
    room.on("participant_disconnected", lambda p: side.event("participant_disconnected", of=p.identity))
    room.on("participant_connected", lambda p: side.event("participant_connected", of=p.identity))
    room.on("disconnected", lambda reason: side.event("disconnected", reason=int(reason)))
    room.on("reconnecting", lambda: side.event("reconnecting"))

    def on_reconnected() -> None:
        side.event("reconnected")
        side.reconnected.set()

    room.on("reconnected", on_reconnected)
    grants = api.VideoGrants(room_join=True, room=args.room)
    token = api.AccessToken(args.api_key, args.api_secret).with_identity(side.identity).with_grants(grants).to_jwt()
    options = rtc.RoomOptions(auto_subscribe=True)
    if args.v0:
        options.single_peer_connection = False  # /rtc, two peer connections
    await room.connect(args.url, token, options)
    audio = rtc.AudioSource(SAMPLE_RATE, 1)
    video = rtc.VideoSource(WIDTH, HEIGHT)
    side.tasks.append(asyncio.ensure_future(feed_audio(audio, side.tone_hz)))
    side.tasks.append(asyncio.ensure_future(feed_video(video, side.colour)))
    await room.local_participant.publish_track(rtc.LocalAudioTrack.create_audio_track("mic", audio),
                                               rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
    await room.local_participant.publish_track(rtc.LocalVideoTrack.create_video_track("camera", video),
                                               rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA))


async def until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def resume(who: Side, sides: tuple[Side, Side]) -> dict[str, object]:
    """`who` drops its signal connection and resumes; what each side decoded around it."""
    sid_before = who.room.local_participant.sid
    who.reconnected.clear()
    started = now()
    await who.room.simulate_scenario(rtc.SimulateScenarioKind.SIMULATE_SIGNAL_RECONNECT)
    reconnected = False
    try:
        await asyncio.wait_for(who.reconnected.wait(), RECONNECT_TIMEOUT_S)
        reconnected = True
    except asyncio.TimeoutError:
        pass
    at = now()
    await asyncio.sleep(AFTER_RESUME_S)
    result: dict[str, object] = {
        "who": who.identity, "started": started, "reconnected": reconnected, "reconnected_at": at,
        "sid_before": sid_before, "sid_after": who.room.local_participant.sid,
    }
    for side in sides:
        window = [t for t in side.frames if t >= started - 1.0]
        after = [t for t in window if t > at]
        gaps = [b - a for a, b in zip(window, window[1:])]
        result[side.identity] = {
            "frames_after": len(after),
            "gap_ms": round(1000 * max(gaps), 1) if gaps else None,
            # A decoder that stopped and never restarted: the time since its last frame.
            "since_last_ms": round(1000 * (now() - window[-1]), 1) if window else None,
        }
    say(resume=result)
    return result


async def run(args: argparse.Namespace) -> dict[str, object]:
    alice = Side("alice", 440, (210, 40, 40))
    bob = Side("bob", 660, (40, 40, 210))
    sides = (alice, bob)
    summary: dict[str, object] = {"resumes": []}
    try:
        await asyncio.wait_for(asyncio.gather(join(args, alice), join(args, bob)), 30)
        summary["sids"] = {s.identity: s.room.local_participant.sid for s in sides}
        summary["media"] = await until(lambda: all(len(s.frames) >= 30 for s in sides), 30)
        if summary["media"]:
            for who in (bob, alice):
                summary["resumes"].append(await resume(who, sides))  # type: ignore[union-attr]
    except Exception as exc:  # reported in the summary; the test says what failed
        summary["error"] = repr(exc)
    summary["events"] = [e for s in sides for e in s.events]
    for side in sides:
        for task in side.tasks:
            task.cancel()
        await side.room.disconnect()
    return summary


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--room", default="resume")
    parser.add_argument("--v0", action="store_true", help="join through /rtc (else the SDK's default, /rtc/v1)")
    parser.add_argument("--api-key", default="devkey")
    parser.add_argument("--api-secret", default="secret")
    args = parser.parse_args()
    say(summary=asyncio.run(run(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
