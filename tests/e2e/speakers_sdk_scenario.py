"""Two `livekit` Python SDK participants (real libwebrtc) in one room through trio-sfu: alice
publishes a loud tone on her microphone (libwebrtc writes the RFC 6464 audio level into every
packet once the answer negotiates the extension), bob only listens. Bob records the SDK's
`active_speakers_changed` and `connection_quality_changed` events; then alice's microphone
goes silent and bob should see her drop out of the speakers.

Prints JSON lines on stdout; the last one is {"summary": ...}. Run inside the test's network
namespace by tests/e2e/test_e2e_speakers_sdk.py.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import json
import math
import sys
import time

from livekit import api, rtc

SAMPLE_RATE = 48000
FRAME_SAMPLES = SAMPLE_RATE // 100


def say(**item: object) -> None:
    print(json.dumps(item), flush=True)


class Tone:
    """A 440 Hz sine at `amplitude` (0 for silence), 10 ms a frame, paced by capture_frame."""

    def __init__(self) -> None:
        self.amplitude = 16000

    async def feed(self, source: rtc.AudioSource) -> None:
        frame = rtc.AudioFrame.create(SAMPLE_RATE, 1, FRAME_SAMPLES)
        n = 0
        while True:
            amplitude = self.amplitude
            pcm = array.array("h", (int(amplitude * math.sin(2 * math.pi * 440 * (n + i) / SAMPLE_RATE))
                                    for i in range(FRAME_SAMPLES)))
            n += FRAME_SAMPLES
            frame.data.cast("B")[:] = pcm.tobytes()
            await source.capture_frame(frame)


async def connect(args: argparse.Namespace, identity: str, room: rtc.Room) -> None:
    grants = api.VideoGrants(room_join=True, room=args.room)
    token = api.AccessToken(args.api_key, args.api_secret).with_identity(identity).with_grants(grants).to_jwt()
    await room.connect(args.url, token, rtc.RoomOptions(auto_subscribe=True))


async def until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


async def run(args: argparse.Namespace) -> dict[str, object]:
    alice, bob = rtc.Room(), rtc.Room()
    # What bob's SDK told him, in order: each speakers list, and (identity, quality) pairs.
    speaker_lists: list[list[str]] = []
    qualities: list[tuple[str, int]] = []
    subscribed: list[str] = []

    def on_speakers(speakers: list[rtc.Participant]) -> None:
        identities = [p.identity for p in speakers]
        speaker_lists.append(identities)
        say(event="active_speakers_changed", speakers=identities)

    def on_quality(participant: rtc.Participant, quality: int) -> None:
        qualities.append((participant.identity, int(quality)))
        say(event="connection_quality_changed", of=participant.identity, quality=int(quality))

    def on_subscribed(track: rtc.Track, publication: rtc.RemoteTrackPublication,
                      participant: rtc.RemoteParticipant) -> None:
        subscribed.append(participant.identity)
        say(event="track_subscribed", of=participant.identity, kind=int(track.kind))

    bob.on("active_speakers_changed", on_speakers)
    bob.on("connection_quality_changed", on_quality)
    bob.on("track_subscribed", on_subscribed)
    tone = Tone()
    tasks: list[asyncio.Future] = []
    summary: dict[str, object] = {}
    try:
        await asyncio.wait_for(asyncio.gather(connect(args, "alice", alice), connect(args, "bob", bob)), 20)
        source = rtc.AudioSource(SAMPLE_RATE, 1)
        tasks.append(asyncio.ensure_future(tone.feed(source)))
        mic = rtc.LocalAudioTrack.create_audio_track("mic", source)
        await alice.local_participant.publish_track(mic, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
        summary["subscribed"] = await until(lambda: "alice" in subscribed, 20)
        summary["alice_speaking"] = await until(lambda: any("alice" in s for s in speaker_lists), 20)
        summary["quality_events"] = await until(lambda: any(who == "alice" for who, _ in qualities), 20)
        tone.amplitude = 0
        summary["alice_silent"] = await until(
            lambda: bool(speaker_lists) and "alice" not in speaker_lists[-1], 10)
    except Exception as exc:  # reported in the summary; the test says what failed
        summary["error"] = repr(exc)
    summary["speaker_lists"] = speaker_lists
    summary["qualities"] = qualities
    for task in tasks:
        task.cancel()
    for room in (alice, bob):
        await room.disconnect()
    return summary


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--room", default="speakers")
    parser.add_argument("--api-key", default="devkey")
    parser.add_argument("--api-secret", default="secret")
    args = parser.parse_args()
    summary = asyncio.run(run(args))
    say(summary=summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
