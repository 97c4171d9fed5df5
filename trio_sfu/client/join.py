"""`trio-sfu join`: one participant in a room through our own client, with a live line of stats.

With `--publish-demo` it publishes a camera track (a moving picture in VP8) and a microphone
track (a tone in Opus) from `demo_media` -- or, where PyAV is not installed, the load tester's
synthetic VP8-framed and Opus-sized payloads, which an SFU forwards but no player can show (it
says so). It auto-subscribes to everyone else. Once a second a line on stderr says what went out
(packets, bitrate per track), how many others in the room may subscribe to it, and what came in.

It runs until Ctrl-C (SIGINT or SIGTERM) or `--duration`, then leaves; the exit code is 0 when
it ended so, 1 when the server ended the session (removed, room deleted) or something failed.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
from typing import Awaitable, Callable, TextIO

import attrs
import trio

from trio_sfu.client.client import LiveKitClient
from trio_sfu.client.demo_media import DemoMediaUnavailable, load_codecs, send_demo_audio, send_demo_video
from trio_sfu.client.errors import ClientError
from trio_sfu.client.publisher import LocalPublication
from trio_sfu.client.senders import send_synthetic_audio, send_synthetic_video

STATS_INTERVAL = 1.0
#: How long the publisher PC may take to connect before the demo gives up.
READY_TIMEOUT = 15.0


@attrs.frozen
class JoinOptions:
    url: str
    token: str
    room: str
    identity: str
    publish_demo: bool = False
    width: int = 640
    height: int = 360
    fps: int = 20
    video_bitrate: int = 600_000
    tone_hz: float = 440.0
    duration: float = 0.0  # 0 = until Ctrl-C
    bind_host: str = "127.0.0.1"


@attrs.define
class JoinOutcome:
    """How the session ended: `error` is None when the user (or --duration) ended it."""

    error: str | None = None
    published: list[str] = attrs.field(factory=list)


def _rate(bits_per_second: float) -> str:
    return f"{bits_per_second / 1e6:.2f} Mbps" if bits_per_second >= 1e6 else f"{bits_per_second / 1e3:.0f} kbps"


class StatsLine:
    """The once-a-second line: what we send, who may watch, what we receive."""

    def __init__(self, client: LiveKitClient, publications: list[LocalPublication], out: TextIO) -> None:
        self.client = client
        self.publications = publications
        self.out = out
        self._tty = bool(getattr(out, "isatty", lambda: False)())
        self._last: dict[str, tuple[float, int]] = {}
        self.started = trio.current_time()

    def subscribers(self) -> int:
        """Others in the room allowed to subscribe (hidden participants are not listed to us)."""
        return sum(1 for p in self.client.remote_participants.values() if p.permission.can_subscribe
                   or not p.HasField("permission"))

    def _bitrate(self, key: str, now: float, octets: int) -> float:
        last = self._last.get(key, (self.started, 0))  # a publication starts with the line
        self._last[key] = (now, octets)
        if now <= last[0]:
            return 0.0
        return 8 * (octets - last[1]) / (now - last[0])

    def line(self) -> str:
        now = trio.current_time()
        parts = []
        for publication in self.publications:
            rate = self._bitrate(publication.cid, now, publication.octets_sent)
            parts.append(f"{publication.kind} {publication.packets_sent} pkt {_rate(rate)}")
        tracks = list(self.client.subscriptions.values())
        received = sum(t.stats.bytes for t in tracks)
        in_rate = self._bitrate("in", now, received)
        sending = ", ".join(parts) if parts else "publishing nothing"
        return (f"[{now - self.started:6.1f}s] {self.client.room_name}/{self.client.identity}: {sending} | "
                f"subscribers {self.subscribers()} | in {len(tracks)} tracks "
                f"{sum(t.stats.packets for t in tracks)} pkt {_rate(in_rate)}")

    def write(self) -> None:
        text = self.line()
        if self._tty:
            self.out.write("\r\x1b[2K" + text)
        else:
            self.out.write(text + "\n")
        self.out.flush()

    async def run(self) -> None:
        while True:
            await trio.sleep(STATS_INTERVAL)
            self.write()

    def finish(self) -> None:
        if self._tty:
            self.out.write("\n")
            self.out.flush()


async def _guarded(outcome: JoinOutcome, stop: trio.Event, sender: Awaitable[None]) -> None:
    """A sender whose PC never came up ends the session with a reason, not a traceback."""
    try:
        await sender
    except trio.TooSlowError:
        outcome.error = (f"the publisher PeerConnection did not connect within {READY_TIMEOUT:g} s "
                         f"(can this machine reach the server's UDP media port?)")
        stop.set()


def _media_senders(options: JoinOptions, video: LocalPublication, audio: LocalPublication,
                   note: Callable[[str], None]) -> list[Awaitable[None]]:
    try:
        av, numpy = load_codecs()
    except DemoMediaUnavailable as exc:
        note(f"no real encoders ({exc}): sending synthetic VP8-framed and Opus-sized payloads, "
             f"which are forwarded but show no picture and play no sound")
        return [send_synthetic_video(video), send_synthetic_audio(audio)]
    return [send_demo_video(video, av, numpy, fps=options.fps),
            send_demo_audio(audio, av, numpy, frequency=options.tone_hz)]


async def run_join(options: JoinOptions, out: TextIO = sys.stderr) -> JoinOutcome:
    """Join, publish the demo if asked, show stats until stopped; raises ClientError (JoinError)
    when the join or a publication is refused, or the client's sockets cannot be opened."""
    outcome = JoinOutcome()
    failures: list[ClientError] = []
    try:
        await _session(options, out, outcome)
    except* ClientError as group:
        # Raised inside nurseries, so it comes wrapped: hand the caller the error itself.
        failures += [e for e in _leaves(group) if isinstance(e, ClientError)]
    except* OSError as group:
        failures += [ClientError(f"network error: {e}") for e in _leaves(group)]
    if failures:
        raise failures[0]
    return outcome


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found += _leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return found


async def _session(options: JoinOptions, out: TextIO, outcome: JoinOutcome) -> None:
    stop = trio.Event()

    def note(text: str) -> None:
        print(text, file=out, flush=True)

    with contextlib.ExitStack() as stack:
        # Signals are ours from the start (a Ctrl-C while joining leaves cleanly too); only the
        # main thread can receive them (tests call main() from other threads).
        signals = (stack.enter_context(trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM))
                   if threading.current_thread() is threading.main_thread() else None)
        async with trio.open_nursery() as outer:
            session = trio.CancelScope()
            steady = False

            async def stop_on_signal() -> None:
                assert signals is not None
                async for _ in signals:
                    stop.set()
                    if not steady:
                        session.cancel()  # still joining or publishing: give up now
                    return

            if signals is not None:
                outer.start_soon(stop_on_signal)
            with session:
                async with LiveKitClient.connect(options.url, options.token, bind_host=options.bind_host) as client:
                    note(f"joined room {client.room_name!r} as {client.identity!r} ({client.participant_sid}); "
                         f"{len(client.remote_participants)} other participant(s); Ctrl-C to leave")
                    publications: list[LocalPublication] = []
                    async with trio.open_nursery() as nursery:
                        if options.publish_demo:
                            video = await client.publish_video("demo", width=options.width, height=options.height,
                                                               bitrate=options.video_bitrate, simulcast=False)
                            audio = await client.publish_audio("tone")
                            publications += [video, audio]
                            outcome.published = [f"{p.kind} {p.sid}" for p in publications]
                            note(f"publishing {video.sid} (video {options.width}x{options.height} @ {options.fps} fps)"
                                 f" and {audio.sid} (audio, {options.tone_hz:g} Hz tone)")
                            for sender in _media_senders(options, video, audio, note):
                                nursery.start_soon(_guarded, outcome, stop, sender)
                        steady = True
                        stats = StatsLine(client, publications, out)
                        nursery.start_soon(stats.run)
                        with trio.move_on_after(options.duration if options.duration > 0 else math.inf):
                            await _first_of(stop, client.left)
                        if client.left.is_set() and not stop.is_set():
                            outcome.error = f"the server ended the session: {client.leave_reason}"
                        nursery.cancel_scope.cancel()
                    stats.finish()
                    sent = ", ".join(f"{p.kind} {p.packets_sent} packets" for p in publications)
                    note(f"leaving room {client.room_name!r}" + (f" (sent {sent})" if sent else ""))
            if session.cancelled_caught:
                note("stopped before the session was set up")
            outer.cancel_scope.cancel()


async def _first_of(*events: trio.Event) -> None:
    """Until any of `events` is set."""
    async with trio.open_nursery() as nursery:
        async def until(event: trio.Event) -> None:
            await event.wait()
            nursery.cancel_scope.cancel()

        for event in events:
            nursery.start_soon(until, event)


__all__ = ["JoinOptions", "JoinOutcome", "StatsLine", "run_join"]
