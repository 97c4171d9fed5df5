"""Two `livekit` Python SDK participants (real libwebrtc) in one room while the test moves them
between trio-sfu nodes: alice publishes a sine, bob subscribes and counts the loud audio frames he
decodes, per phase.

    python migration_sdk_scenario.py --url ws://127.0.0.1:P1 [--room R]

Both connect to --url (node A; bob to --bob-url if given) and stay connected; the SDK resumes
there after each move.
stdout is JSON lines: {"receiving": ...} once bob decodes loud audio from alice. Each stdin line
{"phase": "name"} starts a new counting phase (the first one is "start"). On stdin EOF both leave
and the last line is {"summary": ...}: frames per phase, every SDK room event of both with its
time, each participant's own sid at the start and at the end, and the track sids bob received.
Run inside the test's network namespace by tests/e2e/test_e2e_migration_sdk.py.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import json
import logging
import math
import sys
import time

from livekit import api, rtc

SAMPLE_RATE = 48000
FRAME_SAMPLES = SAMPLE_RATE // 100  # 10 ms
TONE_HZ = 500  # whole cycles per 10 ms frame: one precomputed frame repeats without a click
LOUD = 2000  # the sine's amplitude is 12000; concealment and silence stay far below this
RECEIVING_FRAMES = 25
JOIN_TIMEOUT_S = 20.0
RECEIVING_TIMEOUT_S = 30.0
# Events of either room worth a timestamp: signal/transport trouble and anything that would
# mean the participant or its track was torn down and rebuilt instead of resumed.
WATCHED_EVENTS = (
    "connection_state_changed", "connected", "disconnected", "reconnecting", "reconnected", "moved",
    "participant_connected", "participant_disconnected", "track_published", "track_unpublished",
    "track_subscribed", "track_unsubscribed", "track_subscription_failed",
    "local_track_published", "local_track_unpublished", "local_track_republished",
)

START = time.monotonic()


def now() -> float:
    return round(time.monotonic() - START, 3)


def say(**item: object) -> None:
    print(json.dumps(item), flush=True)


def describe(value: object) -> object:
    """A JSON-able word about an event argument: identity/sid for SDK objects, else repr."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, rtc.Participant):
        return {"identity": value.identity, "sid": value.sid}
    if isinstance(value, rtc.TrackPublication):
        return {"track_sid": value.sid, "name": value.name}
    if isinstance(value, rtc.Track):
        return {"track_sid": value.sid, "kind": int(value.kind)}
    return repr(value)[:200]


class Phases:
    """Bob's decoded audio, counted per phase."""

    def __init__(self) -> None:
        self.current = "start"
        self.stats: dict[str, dict[str, float]] = {}
        self.total_loud = 0
        self._last_loud: float | None = None
        self.begin("start")

    def begin(self, name: str) -> None:
        self.current = name
        self.stats[name] = {"started_s": now(), "frames": 0, "loud": 0, "max_loud_gap_s": 0.0}
        say(event="phase", name=name, at_s=now())

    def frame(self, loud: bool) -> None:
        stats = self.stats[self.current]
        stats["frames"] += 1
        if not loud:
            return
        stats["loud"] += 1
        self.total_loud += 1
        t = time.monotonic()
        if self._last_loud is not None:
            stats["max_loud_gap_s"] = max(stats["max_loud_gap_s"], round(t - self._last_loud, 3))
        self._last_loud = t


class Participant:
    def __init__(self, identity: str) -> None:
        self.identity = identity
        self.room = rtc.Room()
        self.events: list[dict[str, object]] = []
        self.sid_start = ""
        for name in WATCHED_EVENTS:
            self.room.on(name, self._recorder(name))

    def _recorder(self, name: str):
        def record(*args: object) -> None:
            entry = {"at_s": now(), "who": self.identity, "event": name, "args": [describe(a) for a in args]}
            self.events.append(entry)
            say(event=entry)
        return record

    async def connect(self, args: argparse.Namespace) -> None:
        grants = api.VideoGrants(room_join=True, room=args.room)
        token = (api.AccessToken(args.api_key, args.api_secret).with_identity(self.identity)
                 .with_grants(grants).to_jwt())
        url = args.bob_url if self.identity == "bob" and args.bob_url else args.url
        options = rtc.RoomOptions(auto_subscribe=True)
        if args.v0:
            options.single_peer_connection = False  # /rtc, two peer connections
        await self.room.connect(url, token, options)
        self.sid_start = self.room.local_participant.sid

    def report(self) -> dict[str, object]:
        """Taken before leaving, so the events are the session's, not the goodbye's."""
        return {"sid_start": self.sid_start, "sid_end": self.room.local_participant.sid,
                "connection_state_end": int(self.room.connection_state), "events": list(self.events),
                "remote_end": {p.identity: {"sid": p.sid, "tracks": [
                    {"sid": pub.sid, "subscribed": pub.subscribed, "has_track": pub.track is not None}
                    for pub in p.track_publications.values()]}
                    for p in self.room.remote_participants.values()}}


async def feed_sine(source: rtc.AudioSource) -> None:
    frame = rtc.AudioFrame.create(SAMPLE_RATE, 1, FRAME_SAMPLES)
    pcm = array.array("h", (int(12000 * math.sin(2 * math.pi * TONE_HZ * i / SAMPLE_RATE))
                            for i in range(FRAME_SAMPLES)))
    frame.data.cast("B")[:] = pcm.tobytes()
    while True:
        await source.capture_frame(frame)  # paced by the source's queue: real time


async def count_audio(track: rtc.Track, phases: Phases) -> None:
    stream = rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1)
    async for event in stream:
        samples = event.frame.data
        phases.frame(bool(len(samples)) and max(max(samples), -min(samples)) >= LOUD)


async def read_phases(phases: Phases) -> None:
    while True:
        line = await asyncio.to_thread(sys.stdin.readline)
        if not line:
            return  # EOF: the test is done with us
        try:
            command = json.loads(line)
        except ValueError:
            continue
        if isinstance(command, dict) and isinstance(command.get("phase"), str):
            phases.begin(command["phase"])


async def run(args: argparse.Namespace) -> dict[str, object]:
    alice, bob = Participant("alice"), Participant("bob")
    phases = Phases()
    tasks: list[asyncio.Future] = []
    received_track_sids: list[str] = []
    published_track_sid = ""
    summary: dict[str, object] = {}

    def on_subscribed(track: rtc.Track, publication: rtc.RemoteTrackPublication,
                      participant: rtc.RemoteParticipant) -> None:
        if participant.identity == "alice" and track.kind == rtc.TrackKind.KIND_AUDIO:
            received_track_sids.append(publication.sid)
            tasks.append(asyncio.ensure_future(count_audio(track, phases)))

    bob.room.on("track_subscribed", on_subscribed)
    try:
        await asyncio.wait_for(asyncio.gather(alice.connect(args), bob.connect(args)), JOIN_TIMEOUT_S)
        source = rtc.AudioSource(SAMPLE_RATE, 1)
        tasks.append(asyncio.ensure_future(feed_sine(source)))
        mic = rtc.LocalAudioTrack.create_audio_track("mic", source)
        publication = await alice.room.local_participant.publish_track(
            mic, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
        published_track_sid = publication.sid
        deadline = time.monotonic() + RECEIVING_TIMEOUT_S
        while phases.total_loud < RECEIVING_FRAMES and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if phases.total_loud < RECEIVING_FRAMES:
            raise TimeoutError(f"bob decoded {phases.total_loud} loud frames in {RECEIVING_TIMEOUT_S} s")
        say(receiving={"alice": alice.sid_start, "bob": bob.sid_start, "track": published_track_sid,
                       "at_s": now()})
        await read_phases(phases)
    except Exception as exc:  # reported in the summary; the test says what failed
        summary["error"] = repr(exc)
        logging.getLogger("scenario").exception("scenario failed")
    summary.update({
        "phases": phases.stats, "published_track_sid": published_track_sid,
        "bob_received_track_sids": received_track_sids,
        "alice": alice.report(), "bob": bob.report(), "ended_s": now(),
    })
    for task in tasks:
        task.cancel()
    for participant in (alice, bob):
        try:
            await asyncio.wait_for(participant.room.disconnect(), 10)
        except Exception as exc:  # the summary must still be printed
            logging.getLogger("scenario").exception("disconnect failed")
            summary.setdefault("disconnect_errors", []).append(f"{participant.identity}: {exc!r}")
    return summary


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True, help="node A's signal URL")
    parser.add_argument("--bob-url", help="bob's signal URL, if not --url (another node of a cluster)")
    parser.add_argument("--room", default="migration")
    parser.add_argument("--v0", action="store_true", help="join through /rtc (else the SDK's default, /rtc/v1)")
    parser.add_argument("--api-key", default="devkey")
    parser.add_argument("--api-secret", default="secret")
    args = parser.parse_args()
    # The SDK's Rust log records arrive through the `livekit` logger; INFO shows its
    # reconnect/resume decisions in the client log the test prints on failure.
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    summary = asyncio.run(run(args))
    say(summary=summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
