"""Participants driven by the `livekit` Python SDK (real libwebrtc) against a LiveKit URL.

    python sdk_scenario.py --url ws://127.0.0.1:PORT --room R -p alice -p bob -p carol --churn

Each local participant (-p, one `rtc.Room` each, all in this process) publishes a microphone
track fed a sine and a camera track fed solid-colour RGBA frames at 15 fps.  Tone and colour
are unique per participant, so a subscriber can tell from the decoded media alone whose
track it got: a forwarding mix-up fails the test, not only a missing stream.

Phase "media": every local participant waits until, from every other participant (local, and
each --remote one, e.g. a browser), it has decoded video frames and audio.
Phase "unpublish" (--churn): the last participant unpublishes its video; the others must see
`track_unpublished`, and its audio must keep arriving.
Phase "leave" (--churn): the second participant disconnects; the others must see
`participant_disconnected`.

Output: JSON lines; the last one is {"summary": ...}.  With --wait-stdin the participants stay
connected after the media phase (printing {"media_ready": ...}) until stdin closes, so a
peer in another process can finish its own checks.  Every wait is bounded.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import json
import math
import sys
import time
from dataclasses import dataclass, field

from livekit import api, rtc
from livekit.rtc._proto import stats_pb2

WIDTH, HEIGHT, FPS = 320, 240, 15
SAMPLE_RATE = 48000
FRAME_SAMPLES = SAMPLE_RATE // 100  # 10 ms
# Whole cycles per 10 ms frame, so one precomputed frame repeats without a discontinuity.
TONES_HZ = (400, 600, 800, 1000, 1200)
COLOURS = ((210, 40, 40), (40, 210, 40), (40, 40, 210), (210, 210, 40), (40, 210, 210))
# Audio decoded before this many samples per remote is not analysed (jitter-buffer warm-up).
AUDIO_WARMUP_SAMPLES = SAMPLE_RATE // 2
# A frame whose peak exceeds this counts as carrying sound (not concealment/silence).
LOUD = 1000


def say(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


@dataclass
class RemoteMedia:
    """What one local participant decoded from one remote participant."""

    video_frames: int = 0
    video_size: tuple[int, int] = (0, 0)
    centre_rgb: tuple[int, int, int] | None = None
    first_video_s: float | None = None
    audio_frames: int = 0
    loud_audio_frames: int = 0
    audio_samples_analysed: int = 0
    audio_zero_crossings: int = 0
    audio_peak: int = 0
    audio_seen_samples: int = 0
    audio_last_sample: int | None = None

    def tone_hz(self) -> float | None:
        if self.audio_samples_analysed < SAMPLE_RATE // 4:
            return None
        return self.audio_zero_crossings / 2 / (self.audio_samples_analysed / SAMPLE_RATE)

    def as_json(self) -> dict[str, object]:
        return {
            "video_frames": self.video_frames, "video_size": list(self.video_size),
            "centre_rgb": list(self.centre_rgb) if self.centre_rgb else None,
            "first_video_s": self.first_video_s, "audio_frames": self.audio_frames,
            "loud_audio_frames": self.loud_audio_frames, "audio_peak": self.audio_peak,
            "tone_hz": self.tone_hz(),
        }


@dataclass
class Participant:
    identity: str
    index: int
    room: rtc.Room = field(default_factory=rtc.Room)
    remotes: dict[str, RemoteMedia] = field(default_factory=dict)
    unpublished: list[dict[str, str]] = field(default_factory=list)
    disconnected: list[str] = field(default_factory=list)
    video_sid: str = ""
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    task_errors: list[str] = field(default_factory=list)
    joined_at: float = 0.0

    @property
    def tone_hz(self) -> int:
        return TONES_HZ[self.index % len(TONES_HZ)]

    @property
    def colour(self) -> tuple[int, int, int]:
        return COLOURS[self.index % len(COLOURS)]


async def count_video(p: Participant, who: str, track: rtc.Track) -> None:
    media = p.remotes.setdefault(who, RemoteMedia())
    stream = rtc.VideoStream(track)
    try:
        async for event in stream:
            frame = event.frame
            media.video_frames += 1
            media.video_size = (frame.width, frame.height)
            if media.first_video_s is None:
                media.first_video_s = round(time.monotonic() - p.joined_at, 3)
            # Converting costs CPU; a sample every few frames is enough to know whose video it is.
            if media.video_frames % 5 == 1:
                rgba = frame.convert(rtc.VideoBufferType.RGBA)
                data = rgba.data.cast("B") if isinstance(rgba.data, memoryview) else memoryview(rgba.data)
                at = ((rgba.height // 2) * rgba.width + rgba.width // 2) * 4
                media.centre_rgb = (data[at], data[at + 1], data[at + 2])
    finally:
        await stream.aclose()


async def count_audio(p: Participant, who: str, track: rtc.Track) -> None:
    media = p.remotes.setdefault(who, RemoteMedia())
    stream = rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1)
    try:
        async for event in stream:
            samples = event.frame.data  # memoryview of int16
            media.audio_frames += 1
            # builtin max/min run in C; this loop runs 100 times a second per remote track.
            peak = max(max(samples), -min(samples)) if len(samples) else 0
            media.audio_peak = max(media.audio_peak, peak)
            if peak < LOUD:
                media.audio_last_sample = None
                continue
            media.loud_audio_frames += 1
            media.audio_seen_samples += len(samples)
            # One second of sound pins the tone down; counting more only costs CPU.
            if media.audio_seen_samples <= AUDIO_WARMUP_SAMPLES or media.audio_samples_analysed >= SAMPLE_RATE:
                media.audio_last_sample = None
                continue
            crossings = sum(1 for a, b in zip(samples, samples[1:]) if (a < 0) != (b < 0))
            # The crossing between this frame and the previous one counts too, or the estimate
            # would be low by up to one crossing per frame (50 Hz).
            if media.audio_last_sample is not None and (media.audio_last_sample < 0) != (samples[0] < 0):
                crossings += 1
            media.audio_zero_crossings += crossings
            media.audio_samples_analysed += len(samples)
            media.audio_last_sample = samples[-1]
    finally:
        await stream.aclose()


def spawn(p: Participant, coro) -> None:
    """Run a background task whose failure is reported (an unretrieved exception would be silent)."""
    task = asyncio.ensure_future(coro)

    def report(t: asyncio.Task[None]) -> None:
        if not t.cancelled() and t.exception() is not None:
            say(task_error=repr(t.exception()), at=p.identity)
            p.task_errors.append(repr(t.exception()))

    task.add_done_callback(report)
    p.tasks.append(task)


def attach_handlers(p: Participant) -> None:
    def on_track_subscribed(track: rtc.Track, publication: rtc.RemoteTrackPublication,
                            participant: rtc.RemoteParticipant) -> None:
        who = participant.identity
        say(event="track_subscribed", at=p.identity, of=who, kind=int(track.kind), sid=publication.sid)
        counter = count_video if track.kind == rtc.TrackKind.KIND_VIDEO else count_audio
        spawn(p, counter(p, who, track))

    def on_track_unpublished(publication: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant) -> None:
        say(event="track_unpublished", at=p.identity, of=participant.identity, sid=publication.sid)
        p.unpublished.append({"identity": participant.identity, "sid": publication.sid,
                              "kind": "video" if publication.kind == rtc.TrackKind.KIND_VIDEO else "audio"})

    def on_participant_disconnected(participant: rtc.RemoteParticipant) -> None:
        say(event="participant_disconnected", at=p.identity, of=participant.identity)
        p.disconnected.append(participant.identity)

    p.room.on("track_subscribed", on_track_subscribed)
    p.room.on("track_unpublished", on_track_unpublished)
    p.room.on("participant_disconnected", on_participant_disconnected)


async def feed_audio(source: rtc.AudioSource, tone_hz: int) -> None:
    frame = rtc.AudioFrame.create(SAMPLE_RATE, 1, FRAME_SAMPLES)
    pcm = [int(12000 * math.sin(2 * math.pi * tone_hz * i / SAMPLE_RATE)) for i in range(FRAME_SAMPLES)]
    frame.data[:] = array.array("h", pcm)
    while True:
        # capture_frame waits while the source's queue is full, which paces this loop in real time.
        await source.capture_frame(frame)


async def feed_video(source: rtc.VideoSource, colour: tuple[int, int, int]) -> None:
    frame = rtc.VideoFrame(WIDTH, HEIGHT, rtc.VideoBufferType.RGBA, bytes((*colour, 255)) * (WIDTH * HEIGHT))
    start = time.monotonic()
    n = 0
    while True:
        source.capture_frame(frame, timestamp_us=int((time.monotonic() - start) * 1e6))
        n += 1
        await asyncio.sleep(max(0.0, start + n / FPS - time.monotonic()))


def token(args: argparse.Namespace, identity: str) -> str:
    grants = api.VideoGrants(room_join=True, room=args.room)
    return api.AccessToken(args.api_key, args.api_secret).with_identity(identity).with_grants(grants).to_jwt()


async def join(args: argparse.Namespace, p: Participant) -> None:
    attach_handlers(p)
    p.joined_at = time.monotonic()
    await p.room.connect(args.url, token(args, p.identity), rtc.RoomOptions(auto_subscribe=True))
    audio = rtc.AudioSource(SAMPLE_RATE, 1)
    video = rtc.VideoSource(WIDTH, HEIGHT)
    spawn(p, feed_audio(audio, p.tone_hz))
    spawn(p, feed_video(video, p.colour))
    mic = rtc.LocalAudioTrack.create_audio_track("mic", audio)
    cam = rtc.LocalVideoTrack.create_video_track("camera", video)
    await p.room.local_participant.publish_track(mic, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
    pub = await p.room.local_participant.publish_track(
        cam, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA, simulcast=False))
    p.video_sid = pub.sid
    say(event="published", identity=p.identity, video_sid=pub.sid, seconds=round(time.monotonic() - p.joined_at, 3))


def media_complete(p: Participant, others: list[str], min_frames: int, min_loud: dict[str, int]) -> bool:
    for who in others:
        m = p.remotes.get(who)
        if m is None or m.video_frames < min_frames or m.centre_rgb is None:
            return False
        if who in min_loud:
            if m.loud_audio_frames < min_loud[who]:
                return False
        elif m.tone_hz() is None:  # our own participants' tone: enough sound to measure it
            return False
    return True


async def until(predicate, poll_s: float = 0.1) -> None:
    while not predicate():
        await asyncio.sleep(poll_s)


async def inbound_stats(p: Participant) -> list[dict[str, object]]:
    """libwebrtc's own inbound-rtp counters for what this participant receives: on its subscriber
    PC (dual-PC, `/rtc`), or on its one PC (single-PC, `/rtc/v1`: the SDK files that PC's stats
    as the publisher's)."""
    try:
        stats = await asyncio.wait_for(p.room.get_rtc_stats(), 5)
    except Exception as exc:  # reported, not fatal: the decoded-media counters are the proof
        return [{"error": repr(exc)}]
    out = []
    for s in [*stats.subscriber_stats, *stats.publisher_stats]:
        if s.WhichOneof("stats") != "inbound_rtp":
            continue
        r = s.inbound_rtp
        out.append({"kind": r.stream.kind, "track": r.inbound.track_identifier,
                    "packets_received": r.received.packets_received,
                    "frames_decoded": r.inbound.frames_decoded,
                    "total_audio_energy": r.inbound.total_audio_energy})
    return out


async def selected_pairs(p: Participant) -> list[dict[str, object]]:
    """libwebrtc's selected ICE candidate pair of each of this participant's PeerConnections
    (transport -> selected_candidate_pair_id -> local and remote candidates): which path and
    transport protocol its media really took."""
    try:
        stats = await asyncio.wait_for(p.room.get_rtc_stats(), 5)
    except Exception as exc:
        return [{"error": repr(exc)}]
    out = []
    for pc, items in (("publisher", stats.publisher_stats), ("subscriber", stats.subscriber_stats)):
        by_id = {}
        for item in items:
            kind = item.WhichOneof("stats")
            if kind is not None:
                by_id[getattr(item, kind).rtc.id] = (kind, getattr(item, kind))
        for kind, item in by_id.values():
            if kind != "transport" or not item.transport.selected_candidate_pair_id:
                continue
            pair = by_id.get(item.transport.selected_candidate_pair_id)
            if pair is None:
                continue

            def side(candidate_id: str) -> dict[str, object] | None:
                found = by_id.get(candidate_id)
                if found is None:
                    return None
                c = found[1].candidate
                return {"protocol": c.protocol, "address": c.address, "port": c.port,
                        "tcp_type": rtc.stats.IceTcpCandidateType.Name(c.tcp_type) if c.protocol == "tcp" else None,
                        "candidate_type": stats_pb2.IceCandidateType.Name(c.candidate_type),
                        "relay_protocol": (stats_pb2.IceServerTransportProtocol.Name(c.relay_protocol)
                                           if c.HasField("relay_protocol") else None)}

            out.append({"pc": pc, "local": side(pair[1].candidate_pair.local_candidate_id),
                        "remote": side(pair[1].candidate_pair.remote_candidate_id)})
    return out


async def run(args: argparse.Namespace) -> dict[str, object]:
    people = [Participant(identity, i) for i, identity in enumerate(args.participant)]
    summary: dict[str, object] = {"phases": {}, "participants": {}}
    phases: dict[str, object] = summary["phases"]  # type: ignore[assignment]
    started = time.monotonic()
    # Our sine is continuous; another client's microphone (Chromium's fake one beeps) may be
    # loud only now and then.
    remote_loud = {who: args.remote_min_loud for who in args.remote}

    def others_of(p: Participant, present: list[Participant]) -> list[str]:
        return [q.identity for q in present if q is not p] + list(args.remote)

    def record(name: str, ok: bool) -> bool:
        phases[name] = {"ok": ok, "at_s": round(time.monotonic() - started, 3)}
        say(phase=name, ok=ok)
        return ok

    try:
        try:
            await asyncio.wait_for(asyncio.gather(*(join(args, p) for p in people)), args.join_timeout)
            ok = record("join", True)
        except Exception as exc:
            phases["join_error"] = repr(exc)
            ok = record("join", False)

        if ok:
            try:
                await asyncio.wait_for(
                    until(lambda: all(media_complete(p, others_of(p, people), args.min_frames, remote_loud)
                                      for p in people)),
                    args.media_timeout)
                ok = record("media", True)
            except asyncio.TimeoutError:
                ok = record("media", False)
            summary["media"] = {p.identity: {w: m.as_json() for w, m in p.remotes.items()} for p in people}
            summary["inbound_rtp"] = {p.identity: await inbound_stats(p) for p in people}
            summary["selected_pairs"] = {p.identity: await selected_pairs(p) for p in people}
            summary["expected"] = {p.identity: {"tone_hz": p.tone_hz, "colour": list(p.colour)} for p in people}

        if ok and args.wait_stdin:
            say(media_ready=summary)
            loop = asyncio.get_running_loop()
            await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.read), args.hold_timeout)

        if ok and args.churn and len(people) >= 3:
            leaver, unpublisher = people[1], people[-1]
            watchers = [p for p in people if p is not unpublisher]
            loud_before = {p.identity: p.remotes[unpublisher.identity].loud_audio_frames for p in watchers}
            await unpublisher.room.local_participant.unpublish_track(unpublisher.video_sid)
            try:
                await asyncio.wait_for(until(lambda: all(
                    any(u["identity"] == unpublisher.identity and u["sid"] == unpublisher.video_sid
                        for u in p.unpublished) for p in watchers)), args.event_timeout)
                # Its audio must survive the renegotiation that removed its video: 200 ms more of sound.
                await asyncio.wait_for(until(lambda: all(
                    p.remotes[unpublisher.identity].loud_audio_frames >= loud_before[p.identity] + 20
                    for p in watchers)), args.event_timeout)
                record("unpublish", True)
            except asyncio.TimeoutError:
                record("unpublish", False)
            summary["audio_after_unpublish"] = {
                p.identity: {"before": loud_before[p.identity],
                             "after": p.remotes[unpublisher.identity].loud_audio_frames} for p in watchers}

            await asyncio.wait_for(leaver.room.disconnect(), args.event_timeout)
            stayers = [p for p in people if p is not leaver]
            try:
                await asyncio.wait_for(until(lambda: all(leaver.identity in p.disconnected for p in stayers)),
                                       args.event_timeout)
                record("leave", True)
            except asyncio.TimeoutError:
                record("leave", False)
            summary["roles"] = {"unpublisher": unpublisher.identity, "leaver": leaver.identity}
    finally:
        for p in people:
            summary["participants"][p.identity] = {  # type: ignore[index]
                # Copies: the final disconnects below still append events to the live lists.
                "unpublished": list(p.unpublished), "disconnected": list(p.disconnected),
                "video_sid": p.video_sid, "task_errors": list(p.task_errors),
                "remotes": {w: m.as_json() for w, m in p.remotes.items()},
            }
            for t in p.tasks:
                t.cancel()
        for p in people:
            try:
                await asyncio.wait_for(p.room.disconnect(), 5)
            except Exception:
                pass
    summary["seconds"] = round(time.monotonic() - started, 3)
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--room", required=True)
    parser.add_argument("--api-key", default="devkey")
    parser.add_argument("--api-secret", default="secret")
    parser.add_argument("-p", "--participant", action="append", required=True)
    parser.add_argument("--remote", action="append", default=[], help="identity of a participant in another process")
    parser.add_argument("--remote-min-loud", type=int, default=3,
                        help="audio frames with sound needed from each --remote participant")
    parser.add_argument("--churn", action="store_true", help="unpublish and leave phases (needs 3 participants)")
    parser.add_argument("--wait-stdin", action="store_true")
    parser.add_argument("--min-frames", type=int, default=15)
    parser.add_argument("--join-timeout", type=float, default=20)
    parser.add_argument("--media-timeout", type=float, default=25)
    parser.add_argument("--event-timeout", type=float, default=10)
    parser.add_argument("--hold-timeout", type=float, default=60)
    args = parser.parse_args()
    say(livekit=rtc.__version__)
    summary = asyncio.run(run(args))
    say(summary=summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
