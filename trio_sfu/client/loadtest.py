"""``trio-sfu load-test``: publishers and subscribers built on our own client, against any LiveKit server.

Modelled on ``lk load-test`` (docs/anchors.md §1.2): ``--video-publishers``,
``--audio-publishers`` (the first participants publish both when both are set),
``--subscribers``, a join rate, a duration (0 = until Ctrl-C). Publishers send
synthetic media (``trio_sfu.client.synthetic``): VP8-framed video at the target
bitrate, simulcast q/h/f unless ``--no-simulcast``, and 20 ms Opus-sized audio,
each payload stamped with its send time so subscribers on the same machine
measure one-way latency. Publishers do not subscribe; subscribers only subscribe
(auto-subscribe). Progress goes to stderr once a second, a line per phase (joining,
then steady) rewritten in place on a terminal (``trio_sfu.client.progress``); at the end a
summary per track and per subscriber, and ``--json FILE`` for machines.

``--server-api janus`` drives a Janus videoroom instead (``trio_sfu.client.janus``; ``--url``
is Janus' WebSocket API, ``--room`` the numeric room id): the same participants, media and
measurements. ``--workers N`` spreads the participants over N processes
(``trio_sfu.client.loadtest_workers``; the command that picks one or the other is
``trio_sfu.client.loadtest_command``), so the tester is not the busy side of a large run.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import urllib.parse
from typing import Any, Mapping, TextIO

import attrs
import trio

from trio_sfu.client import ClientError, LiveKitClient, LocalPublication, signal_url
from trio_sfu.client.janus import JanusError, JanusParticipant
from trio_sfu.client.progress import Phase, Progress, ProgressWriter
from trio_sfu.client.senders import send_synthetic_audio, send_synthetic_video
from trio_sfu.client.stats import percentile

#: ``lk load-test``'s default join rate.
DEFAULT_JOIN_RATE = 5.0
#: How long participants get to leave once the run ends.
LEAVE_GRACE = 10.0
LIVEKIT_CLOUD_SUFFIX = ".livekit.cloud"
LIVEKIT_CLOUD_MAX_PARTICIPANTS = 50
#: The signalling the tester speaks: LiveKit's (any LiveKit server, ours) or Janus' videoroom API.
SERVER_APIS = ("livekit", "janus")
#: How long a Janus subscriber waits for every publisher of the room to be publishing.
JANUS_FEEDS_TIMEOUT = 120.0


@attrs.define
class LoadTestParams:
    url: str
    api_key: str
    api_secret: str
    room: str = "load-test"
    video_publishers: int = 0
    audio_publishers: int = 0
    subscribers: int = 0
    duration: float = 0.0  # seconds of media after everyone joined; 0 = until cancelled
    video_bitrate: int = 1_700_000
    width: int = 1280
    height: int = 720
    simulcast: bool = True
    num_per_second: float = DEFAULT_JOIN_RATE
    json_path: str | None = None
    bind_host: str = "127.0.0.1"
    #: Prepended to every identity, so several load-test processes can share one room.
    identity_prefix: str = ""
    server_api: str = "livekit"
    #: Publishers and tracks in the whole room when this tester runs only part of it (a worker
    #: of ``--workers``): what its subscribers expect. 0: this tester's own publishers.
    room_publishers: int = 0
    room_tracks: int = 0

    def __attrs_post_init__(self) -> None:
        if self.video_publishers == self.audio_publishers == self.subscribers == 0 and not self.room_publishers:
            # lk's default: one video publisher and one subscriber.
            self.video_publishers, self.subscribers = 1, 1
        if self.num_per_second <= 0:
            raise ValueError("--num-per-second must be positive")
        if self.server_api not in SERVER_APIS:
            raise ValueError(f"--server-api must be one of {', '.join(SERVER_APIS)}")
        if self.server_api == "janus" and not self.room.isdigit():
            raise ValueError("a Janus videoroom is a number: --room 1234")

    @property
    def publishers(self) -> int:
        return max(self.video_publishers, self.audio_publishers)

    @property
    def tracks_expected(self) -> int:
        """Tracks each subscriber should receive: every track published in the room."""
        return self.room_tracks or self.video_publishers + self.audio_publishers

    @property
    def publishers_expected(self) -> int:
        return self.room_publishers or self.publishers


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    """The exceptions in a (nested) exception group."""
    leaves: list[BaseException] = []
    for exc in group.exceptions:
        leaves.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return leaves


@attrs.define(eq=False)
class Participant:
    identity: str
    publishes_video: bool = False
    publishes_audio: bool = False
    subscribes: bool = False
    client: LiveKitClient | JanusParticipant | None = None
    publications: list[LocalPublication] = attrs.field(factory=list)
    joined: bool = False
    ready: bool = False  # joined and its tracks published
    errors: list[str] = attrs.field(factory=list)


def make_token(params: LoadTestParams, identity: str, *, publish: bool, subscribe: bool) -> str:
    from livekit import api  # livekit-api: the token format any LiveKit server accepts

    grants = api.VideoGrants(room_join=True, room=params.room, can_publish=publish, can_subscribe=subscribe,
                             can_publish_data=False)
    return (api.AccessToken(params.api_key, params.api_secret).with_identity(identity).with_name(identity)
            .with_grants(grants).to_jwt())


class LoadTest:
    def __init__(self, params: LoadTestParams, progress: TextIO | None = sys.stderr, *,
                 live: bool | None = None) -> None:
        """`progress`: where the progress lines go (None: nowhere); `live`: rewrite them in place
        (default: when `progress` is a terminal)."""
        self.params = params
        self.progress = progress
        self.writer = ProgressWriter(progress, live) if progress is not None else None
        self.participants: list[Participant] = []
        for index in range(params.publishers):
            self.participants.append(Participant(
                f"{params.identity_prefix}pub_{index}", publishes_video=index < params.video_publishers,
                publishes_audio=index < params.audio_publishers))
        self.participants += [Participant(f"{params.identity_prefix}sub_{index}", subscribes=True)
                              for index in range(params.subscribers)]
        self.started_at: float | None = None
        self.media_started_at: float | None = None
        self.ended_at: float | None = None
        self._stop_requested = trio.Event()

    # ------------------------------------------------------------------ running

    def request_stop(self) -> None:
        """End the run early (Ctrl-C): stop joining, everyone leaves, the summary follows."""
        self._stop_requested.set()

    def note(self, text: str) -> None:
        """A message for whoever watches the progress (on its own line, not over the live one)."""
        if self.writer is not None:
            self.writer.note(text)

    def phase(self) -> Phase:
        """JOINING until every participant has been started and is ready (joined, its tracks
        published) or has failed; then STEADY."""
        if self.media_started_at is None:
            return Phase.JOINING
        if any(not p.ready and not self._errors_of(p) for p in self.participants):
            return Phase.JOINING
        return Phase.STEADY

    async def run(self) -> dict[str, Any]:
        """Join everyone at the join rate, send/receive for the duration, then leave; the summary."""
        self.started_at = trio.current_time()
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            progress_scope = trio.CancelScope()
            if self.writer is not None:
                nursery.start_soon(self._report_progress, progress_scope)
            interval = 1.0 / self.params.num_per_second
            for participant in self.participants:
                if self._stop_requested.is_set():
                    break
                nursery.start_soon(self._participant, participant, stop)
                with trio.move_on_after(interval):
                    await self._stop_requested.wait()
            self.media_started_at = trio.current_time()
            with trio.move_on_after(self.params.duration if self.params.duration > 0 else math.inf):
                await self._stop_requested.wait()
            self.ended_at = trio.current_time()
            stop.set()
            progress_scope.cancel()
            # Participants leave by themselves after `stop`; this only bounds a hung one.
            nursery.cancel_scope.deadline = trio.current_time() + LEAVE_GRACE
        return self.summary()

    async def _participant(self, participant: Participant, stop: trio.Event) -> None:
        async with trio.open_nursery() as nursery:
            async def abandon_setup_on_stop() -> None:
                # Ctrl-C (or the end) while still joining or publishing: give up now, not after
                # LEAVE_GRACE; a participant already sending leaves by itself.
                await stop.wait()
                if not participant.ready:
                    participant.errors.append("still joining or publishing when the run ended")
                    nursery.cancel_scope.cancel()

            nursery.start_soon(abandon_setup_on_stop)
            await self._run_participant(participant, stop)
            nursery.cancel_scope.cancel()

    async def _run_participant(self, participant: Participant, stop: trio.Event) -> None:
        params = self.params
        if params.server_api == "janus":
            await self._run_janus_participant(participant, stop)
            return
        publishes = participant.publishes_video or participant.publishes_audio
        token = make_token(params, participant.identity, publish=publishes, subscribe=participant.subscribes)
        try:
            async with LiveKitClient.connect(params.url, token, bind_host=params.bind_host,
                                             auto_subscribe=participant.subscribes) as client:
                participant.client = client
                participant.joined = True
                async with trio.open_nursery() as senders:
                    if participant.publishes_video:
                        video = await client.publish_video(width=params.width, height=params.height,
                                                           bitrate=params.video_bitrate, simulcast=params.simulcast)
                        participant.publications.append(video)
                        senders.start_soon(self._guard, participant, send_synthetic_video(video))
                    if participant.publishes_audio:
                        audio = await client.publish_audio()
                        participant.publications.append(audio)
                        senders.start_soon(self._guard, participant, send_synthetic_audio(audio))
                    participant.ready = True
                    await stop.wait()
                    senders.cancel_scope.cancel()
        # except*: an error raised inside the client's connection comes out of its nursery in
        # an exception group (a bare except ClientError missed it, and one participant's refused
        # publication ended the whole load test).
        except* ClientError as group:
            participant.errors.extend(str(exc) for exc in _leaves(group))
        except* (OSError, trio.TooSlowError) as group:
            participant.errors.extend(f"{type(exc).__name__}: {exc}" for exc in _leaves(group))

    async def _run_janus_participant(self, participant: Participant, stop: trio.Event) -> None:
        """The same participant in a Janus videoroom: publishers publish their tracks in one
        offer; subscribers wait until every publisher of the room publishes, then subscribe to
        all their feeds on one PC (Janus sends no later publishers to an existing subscription)."""
        params = self.params
        try:
            async with JanusParticipant.connect(params.url, int(params.room), participant.identity,
                                                bind_host=params.bind_host) as client:
                participant.client = client
                participant.joined = True
                async with trio.open_nursery() as senders:
                    if participant.publishes_video or participant.publishes_audio:
                        publications = await client.publish(
                            video=participant.publishes_video, audio=participant.publishes_audio,
                            width=params.width, height=params.height, bitrate=params.video_bitrate,
                            simulcast=params.simulcast)
                        for publication in publications:
                            participant.publications.append(publication)
                            sender = send_synthetic_video if publication.kind == "video" else send_synthetic_audio
                            senders.start_soon(self._guard, participant, sender(publication))
                    if participant.subscribes:
                        feeds = await client.wait_for_feeds(params.publishers_expected, timeout=JANUS_FEEDS_TIMEOUT)
                        await client.subscribe(feeds)
                    participant.ready = True
                    await stop.wait()
                    senders.cancel_scope.cancel()
        except* JanusError as group:
            participant.errors.extend(str(exc) for exc in _leaves(group))
        except* (OSError, trio.TooSlowError) as group:
            participant.errors.extend(f"{type(exc).__name__}: {exc}" for exc in _leaves(group))

    @staticmethod
    async def _guard(participant: Participant, sender) -> None:
        try:
            await sender
        except trio.TooSlowError:
            participant.errors.append("publisher PeerConnection did not connect within 15 s")

    async def _report_progress(self, scope: trio.CancelScope) -> None:
        assert self.writer is not None
        try:
            with scope:
                await self._progress_loop(self.writer)
        finally:
            self.writer.finish()

    async def _progress_loop(self, writer: ProgressWriter) -> None:
        last_in = last_out = 0
        while True:
            await trio.sleep(1.0)
            counts = self.counts()
            elapsed = trio.current_time() - (self.started_at or 0.0)
            writer.show(counts.progress(elapsed, counts.packets_sent - last_out, counts.packets_received - last_in))
            last_in, last_out = counts.packets_received, counts.packets_sent

    def counts(self) -> "LoadCounts":
        """Where the run is now, in running totals (a worker reports these to its parent)."""
        lost, expected_packets = self._loss_totals()
        return LoadCounts(
            phase=self.phase(),
            joined=sum(p.joined for p in self.participants),
            participants=len(self.participants),
            tracks=sum(len(p.client.subscriptions) for p in self.participants if p.subscribes and p.client),
            tracks_expected=self.params.subscribers * self.params.tracks_expected,
            packets_sent=self._packets_sent(),
            packets_received=self._packets_received(),
            packets_lost=lost,
            packets_expected=expected_packets,
            errors=sum(len(self._errors_of(p)) for p in self.participants),
        )

    # ------------------------------------------------------------------ measuring

    def _packets_received(self) -> int:
        return sum(t.stats.packets for p in self.participants if p.client for t in p.client.subscriptions.values())

    def _packets_sent(self) -> int:
        return sum(pub.packets_sent for p in self.participants for pub in p.publications)

    def _loss_totals(self) -> tuple[int, int]:
        lost = expected = 0
        for p in self.participants:
            if p.client is None:
                continue
            for track in p.client.subscriptions.values():
                lost += track.stats.lost
                expected += track.stats.expected
        return lost, expected

    @staticmethod
    def _socket_drops(participant: Participant) -> int | None:
        """Datagrams the kernel dropped on this participant's sockets (the tester too slow to
        read them): loss on the tester's side, not the server's. None where it is not known."""
        client = participant.client
        pcs = [pc for pc in ((client.publisher_pc, client.subscriber_pc) if client else ()) if pc is not None]
        counts = [pc.socket_drops() for pc in pcs]
        known = [n for n in counts if n is not None]
        return sum(known) if known or not pcs else None

    @staticmethod
    def _errors_of(participant: Participant) -> list[str]:
        return participant.errors + (participant.client.errors if participant.client else [])

    def summary(self, *, latency_samples: bool = False) -> dict[str, Any]:
        """Per track (over all subscribers), per subscriber and per publisher; JSON-ready.
        ``latency_samples``: keep each track's and the totals' samples (``latency_samples``),
        thinned to :data:`MAX_SUMMARY_SAMPLES`, so summaries of several workers can be merged."""
        params = self.params
        owner: dict[str, tuple[str, str, int]] = {}  # track sid -> (publisher identity, kind, packets sent)
        publishers = []
        for p in self.participants:
            if not (p.publishes_video or p.publishes_audio):
                continue
            for pub in p.publications:
                if pub.sid:
                    owner[pub.sid] = (p.identity, pub.kind, pub.packets_sent)
            publishers.append({
                "identity": p.identity, "joined": p.joined,
                "tracks": [{"sid": pub.sid, "kind": pub.kind, "packets_sent": pub.packets_sent,
                            "packets_dropped": pub.packets_dropped, "keyframe_requests": pub.keyframe_requests,
                            "rtt_ms": pub.rtt_ms,  # from the SFU's receiver reports (LSR/DLSR)
                            "layers": [layer.rid for layer in pub.layers if layer.rid]}
                           for pub in p.publications],
                "errors": self._errors_of(p),
            })

        per_track: dict[str, dict[str, Any]] = {}
        subscribers = []
        for p in self.participants:
            if not p.subscribes:
                continue
            tracks = list(p.client.subscriptions.values()) if p.client else []
            latencies = [x for t in tracks for x in t.stats.latencies_ms]
            lost = sum(t.stats.lost for t in tracks)
            expected = sum(t.stats.expected for t in tracks)
            subscribers.append({
                "identity": p.identity,
                "joined": p.joined,
                "tracks_expected": params.tracks_expected,
                "tracks_received": sum(1 for t in tracks if t.stats.packets),
                "tracks_subscribed": len(tracks),
                "packets": sum(t.stats.packets for t in tracks),
                "bytes": sum(t.stats.bytes for t in tracks),
                "bitrate_bps": sum(t.stats.bitrate() for t in tracks),
                "packets_lost": lost,
                "loss": lost / expected if expected else 0.0,
                "latency_ms_p50": percentile(latencies, 0.50),
                "latency_ms_p99": percentile(latencies, 0.99),
                "unknown_ssrc_packets": p.client.unknown_ssrc_packets if p.client else 0,
                "socket_drops": self._socket_drops(p),
                "errors": self._errors_of(p),
            })
            for t in tracks:
                entry = per_track.setdefault(t.sid, {
                    "sid": t.sid, "kind": t.kind, "publisher": owner.get(t.sid, ("?", t.kind, 0))[0],
                    "packets_sent": owner.get(t.sid, ("?", t.kind, 0))[2],
                    "subscribers": 0, "packets": 0, "bytes": 0, "bitrate_bps": 0.0, "packets_lost": 0,
                    "expected": 0, "_latencies": [],
                })
                entry["subscribers"] += 1 if t.stats.packets else 0
                entry["packets"] += t.stats.packets
                entry["bytes"] += t.stats.bytes
                entry["bitrate_bps"] += t.stats.bitrate()
                entry["packets_lost"] += t.stats.lost
                entry["expected"] += t.stats.expected
                entry["_latencies"].extend(t.stats.latencies_ms)
        for sid, (publisher, kind, sent) in owner.items():
            # A published track no subscriber got at all still belongs in the table, with zeros.
            per_track.setdefault(sid, {
                "sid": sid, "kind": kind, "publisher": publisher, "packets_sent": sent, "subscribers": 0,
                "packets": 0, "bytes": 0, "bitrate_bps": 0.0, "packets_lost": 0, "expected": 0, "_latencies": [],
            })
        tracks_out = []
        for entry in per_track.values():
            latencies = entry.pop("_latencies")
            expected = entry.pop("expected")
            receivers = entry["subscribers"] or 1
            entry["bitrate_bps"] /= receivers  # average per subscriber
            entry["loss"] = entry["packets_lost"] / expected if expected else 0.0
            entry["latency_ms_p50"] = percentile(latencies, 0.50)
            entry["latency_ms_p99"] = percentile(latencies, 0.99)
            if latency_samples:
                entry["expected"] = expected
                entry["latency_samples"] = thin(latencies)
            tracks_out.append(entry)

        all_latencies = [x for p in self.participants if p.client for t in p.client.subscriptions.values()
                         for x in t.stats.latencies_ms]
        lost, expected = self._loss_totals()
        drops = [self._socket_drops(p) for p in self.participants]
        end = self.ended_at if self.ended_at is not None else trio.current_time()
        totals: dict[str, Any] = {
            "packets_sent": self._packets_sent(),
            "packets_received": self._packets_received(),
            "packets_lost": lost,
            "packets_expected": expected,
            "loss": lost / expected if expected else 0.0,
            "latency_ms_p50": percentile(all_latencies, 0.50),
            "latency_ms_p99": percentile(all_latencies, 0.99),
            "errors": sum(len(self._errors_of(p)) for p in self.participants),
            "socket_drops": None if None in drops else sum(drops),  # type: ignore[arg-type]
        }
        if latency_samples:
            totals["latency_samples"] = thin(all_latencies)
        return {
            "params": {k: v for k, v in attrs.asdict(params).items() if k not in ("api_secret",)},
            "duration_s": end - self.media_started_at if self.media_started_at is not None else 0.0,
            "participants": len(self.participants),
            "joined": sum(p.joined for p in self.participants),
            "tracks": sorted(tracks_out, key=lambda e: (e["publisher"], e["kind"])),
            "subscribers": subscribers,
            "publishers": publishers,
            "totals": totals,
        }


#: Latency samples a worker's summary carries per track and in its totals.
MAX_SUMMARY_SAMPLES = 20000


def thin(samples: list[float], limit: int = MAX_SUMMARY_SAMPLES) -> list[float]:
    """Every n-th sample, at most ``limit`` of them (percentiles survive an even stride)."""
    stride = max(1, math.ceil(len(samples) / limit))
    return samples[::stride]


@attrs.frozen
class LoadCounts:
    """A load test's running totals at one moment."""

    phase: Phase
    joined: int
    participants: int
    tracks: int
    tracks_expected: int
    packets_sent: int
    packets_received: int
    packets_lost: int
    packets_expected: int
    errors: int

    def progress(self, elapsed: float, out_pps: int, in_pps: int) -> Progress:
        loss = 100.0 * self.packets_lost / self.packets_expected if self.packets_expected else 0.0
        return Progress(self.phase, elapsed, self.joined, self.participants, self.tracks, self.tracks_expected,
                        out_pps, in_pps, loss, self.errors)


# ---------------------------------------------------------------------- output


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _rate(bps: float) -> str:
    return f"{bps / 1e6:.2f} Mbps" if bps >= 1e6 else f"{bps / 1e3:.0f} kbps"


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"load test: {summary['joined']}/{summary['participants']} participants joined, "
             f"{summary['duration_s']:.1f} s of media"]
    lines.append("")
    lines.append(f"{'Track':<18} {'Kind':<6} {'Publisher':<10} {'Subs':>5} {'Sent':>8} {'Packets':>9} "
                 f"{'Bitrate':>11} {'Loss':>7} {'p50 ms':>7} {'p99 ms':>7}")
    for t in summary["tracks"]:
        lines.append(f"{t['sid']:<18} {t['kind']:<6} {t['publisher']:<10} {t['subscribers']:>5} "
                     f"{t['packets_sent']:>8} {t['packets']:>9} {_rate(t['bitrate_bps']):>11} "
                     f"{100 * t['loss']:>6.2f}% {_ms(t['latency_ms_p50']):>7} {_ms(t['latency_ms_p99']):>7}")
    lines.append("")
    lines.append(f"{'Subscriber':<12} {'Tracks':>7} {'Packets':>9} {'Bitrate':>11} {'Loss':>7} "
                 f"{'p50 ms':>7} {'p99 ms':>7} {'Errors':>7}")
    for s in summary["subscribers"]:
        tracks = f"{s['tracks_received']}/{s['tracks_expected']}"
        lines.append(f"{s['identity']:<12} {tracks:>7} {s['packets']:>9} {_rate(s['bitrate_bps']):>11} "
                     f"{100 * s['loss']:>6.2f}% {_ms(s['latency_ms_p50']):>7} {_ms(s['latency_ms_p99']):>7} "
                     f"{len(s['errors']):>7}")
    totals = summary["totals"]
    lines.append("")
    lines.append(f"total: sent {totals['packets_sent']} packets, received {totals['packets_received']}, "
                 f"lost {totals['packets_lost']} ({100 * totals['loss']:.2f}%), latency p50 "
                 f"{_ms(totals['latency_ms_p50'])} ms p99 {_ms(totals['latency_ms_p99'])} ms, "
                 f"errors {totals['errors']}")
    if totals.get("socket_drops"):
        lines.append(f"  the tester's own sockets dropped {totals['socket_drops']} datagrams (receive buffers full: "
                     f"the tester could not keep up), counted as loss above")
    errors = [(p["identity"], e) for p in summary["publishers"] + summary["subscribers"] for e in p["errors"]]
    for identity, error in errors[:20]:
        lines.append(f"  error {identity}: {error}")
    if len(errors) > 20:
        lines.append(f"  ... and {len(errors) - 20} more errors")
    return "\n".join(lines)


# ---------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser, environ: Mapping[str, str] = os.environ) -> None:
    # As `lk`: LIVEKIT_URL / LIVEKIT_API_KEY / LIVEKIT_API_SECRET stand in for the flags.
    for flag, variable, text in (("--url", "LIVEKIT_URL", "server URL, e.g. ws://127.0.0.1:7880"),
                                 ("--api-key", "LIVEKIT_API_KEY", "API key"),
                                 ("--api-secret", "LIVEKIT_API_SECRET", "API secret")):
        default = environ.get(variable)
        parser.add_argument(flag, default=default, required=default is None, help=f"{text} (env {variable})")
    parser.add_argument("--room", default="load-test")
    parser.add_argument("--video-publishers", type=int, default=0, metavar="N")
    parser.add_argument("--audio-publishers", type=int, default=0, metavar="N")
    parser.add_argument("--subscribers", type=int, default=0, metavar="N")
    parser.add_argument("--duration", type=float, default=0.0, metavar="SECONDS",
                        help="seconds of media after all joined (0 = until Ctrl-C)")
    parser.add_argument("--video-bitrate", type=int, default=1_700_000, metavar="BPS",
                        help="top layer bitrate in bit/s (h = 1/4, q = 1/16 with simulcast)")
    parser.add_argument("--video-resolution", default="1280x720", metavar="WxH")
    parser.add_argument("--simulcast", action=argparse.BooleanOptionalAction, default=True,
                        help="publish q/h/f simulcast layers (default on)")
    parser.add_argument("--num-per-second", type=float, default=DEFAULT_JOIN_RATE, metavar="RATE",
                        help="participants joining per second")
    parser.add_argument("--json", metavar="FILE", help="write the summary as JSON")
    parser.add_argument("--identity-prefix", default="", metavar="TEXT",
                        help="prefix for participant identities (run several load testers in one room)")
    parser.add_argument("--bind-host", default="127.0.0.1",
                        help="local address for the clients' UDP sockets (must reach the server's media address)")
    parser.add_argument("--server-api", choices=SERVER_APIS, default="livekit",
                        help="livekit (default), or janus: --url is Janus' WebSocket API, --room a videoroom number "
                             "(--api-key/--api-secret are not used)")
    parser.add_argument("--workers", type=int, default=0, metavar="N",
                        help="spread the participants over N worker processes (0: all in this one)")


def params_from_args(args: argparse.Namespace) -> LoadTestParams:
    try:
        width_text, height_text = args.video_resolution.lower().split("x")
        width, height = int(width_text), int(height_text)
    except ValueError:
        raise ValueError(f"--video-resolution must look like 1280x720, not {args.video_resolution!r}") from None
    for name in ("video_publishers", "audio_publishers", "subscribers"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must not be negative")
    signal_url(args.url)  # raises ValueError for a URL no LiveKit client could use
    host = urllib.parse.urlsplit(args.url).hostname or ""
    total = max(args.video_publishers, args.audio_publishers) + args.subscribers
    if host.endswith(LIVEKIT_CLOUD_SUFFIX) and total > LIVEKIT_CLOUD_MAX_PARTICIPANTS:
        # lk load-test refuses this too: LiveKit Cloud's acceptable-use policy.
        raise ValueError(f"refusing more than {LIVEKIT_CLOUD_MAX_PARTICIPANTS} participants against LiveKit Cloud")
    return LoadTestParams(
        url=args.url, api_key=args.api_key, api_secret=args.api_secret, room=args.room,
        video_publishers=args.video_publishers, audio_publishers=args.audio_publishers,
        subscribers=args.subscribers, duration=args.duration, video_bitrate=args.video_bitrate,
        width=width, height=height, simulcast=args.simulcast, num_per_second=args.num_per_second,
        json_path=args.json, bind_host=args.bind_host, identity_prefix=args.identity_prefix,
        server_api=getattr(args, "server_api", "livekit"),
    )


async def run_until_signalled(load_test: LoadTest) -> dict[str, Any]:
    """Run; SIGINT/SIGTERM ends it early and still produces the summary."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            async def watch() -> None:
                async for _ in signals:
                    load_test.note("stopping: participants are leaving")
                    load_test.request_stop()
                    return

            nursery.start_soon(watch)
            summary = await load_test.run()
            nursery.cancel_scope.cancel()
    return summary
