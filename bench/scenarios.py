"""The load scenarios: the server as its own process, driven by ``trio-sfu load-test`` in another.

A run: start ``python -m trio_sfu.cli --dev --port 0 --udp-port 0 --node-ip 127.0.0.1`` and read
its ready line; note its RSS; start the load tester (``--duration 0``, it runs until SIGINT) and
read its once-a-second progress lines from stderr. When everyone has joined and every expected
track is subscribed, wait ``warmup`` seconds, then sample the server's and the tester's CPU
(/proc, see ``procstat``) at a progress line and again ``window`` seconds later; the packets
the subscribers received between those two lines are the packets the server forwarded (on
loopback with zero loss; the loss is reported too). Then a *probe* subscriber joins from this
process to time join → first packet on every track; then SIGINT to the tester, whose JSON
summary gives latency and loss; then SIGTERM to the server.

``server="janus"`` runs the same traffic through Janus instead (``bench/janus_server.py``: its
own config dir, the videoroom plugin, the WebSocket transport on loopback), the load tester
speaking Janus' API (``--server-api janus``); its probe subscribes through the same adapter.
``tester_workers`` spreads the load tester over that many processes (``load-test --workers``);
their CPU is the tester's.

Why progress lines and not a server counter (the server's /metrics counts what it sent): the
tester's received count is what actually arrived, which is what a forwarding rate should mean.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Optional

import attrs

from trio_sfu.sockstat import process_drops

from . import procstat

#: A config for the servers benchmarks start: ICE/TCP off (see start_server).
NO_ICE_TCP_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "no_ice_tcp.yaml")

_WORKER = re.compile(r"load-test worker \d+ pid=(\d+)")
_PROGRESS = re.compile(
    r"\[\s*([\d.]+)s\] joined (\d+)/(\d+)\s+tracks (\d+)/(\d+)\s+out (\d+) pps\s+in (\d+) pps\s+loss ([\d.]+)%\s+errors (\d+)"
)


@attrs.frozen
class Scenario:
    name: str
    description: str
    video_publishers: int = 0
    audio_publishers: int = 0
    subscribers: int = 0
    video_bitrate: int = 1_700_000
    simulcast: bool = True
    join_rate: float = 20.0

    @property
    def publishers(self) -> int:
        return max(self.video_publishers, self.audio_publishers)

    @property
    def participants(self) -> int:
        return self.publishers + self.subscribers

    @property
    def tracks_per_subscriber(self) -> int:
        return self.video_publishers + self.audio_publishers

    def scaled(self, subscribers: int) -> "Scenario":
        return attrs.evolve(self, subscribers=subscribers)

    def floor_shape(self) -> dict[str, Any]:
        return {"publishers": self.publishers, "audio": self.audio_publishers > 0,
                "video": self.video_publishers > 0, "video_bitrate": self.video_bitrate,
                "simulcast": self.simulcast, "subscribers": self.subscribers}


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("audio-room", "10 audio publishers x 200 subscribers", audio_publishers=10, subscribers=200),
        # The load tester's publishers do not subscribe, so a 12-person meeting is 12 publishers
        # (audio + simulcast video) and 12 subscribe-only participants: each of those receives
        # 12 publishers' tracks where a meeting member would receive 11.
        Scenario("meeting", "12 publishers (audio+video) + 12 subscribers receiving all",
                 video_publishers=12, audio_publishers=12, subscribers=12),
        Scenario("livestream", "1 video publisher (simulcast 1.7 Mbps top layer) x 200 subscribers",
                 video_publishers=1, subscribers=200),
        Scenario("smoke", "1 audio+video publisher x 2 subscribers (for the smoke test)",
                 video_publishers=1, audio_publishers=1, subscribers=2, video_bitrate=500_000),
    )
}


class BenchError(RuntimeError):
    pass


@attrs.define
class _Progress:
    at: float  # time.monotonic() when the line was read
    joined: int
    participants: int
    tracks: int
    tracks_expected: int
    out_pps: int
    in_pps: int
    loss_percent: float
    errors: int


def _python() -> list[str]:
    return [sys.executable]


def start_server(env: Optional[dict[str, str]] = None, command: Optional[list[str]] = None, *,
                 redis: Optional[str] = None, workers: int = 0) -> tuple[subprocess.Popen, str, str, str, list[int]]:
    """The server process, its URL, API key and secret (from the --dev banner), and the pids
    that do its work (itself; with `workers`, its worker processes, nodes of a cluster on the
    Redis at `redis`). `command` runs instead of ``python -m trio_sfu.cli`` and takes the CLI's
    arguments (bench.server_profile runs the CLI under its profiler)."""
    # ICE/TCP off (rtc.tcp_port 0): the benchmarks measure the UDP path, and dev mode's 7881
    # is the machine's, which another server may hold.
    arguments = ["--dev", "--node-ip", "127.0.0.1", "--config", NO_ICE_TCP_CONFIG]
    if workers:
        arguments += ["--port", str(_free_port()), "--udp-port", str(_free_udp_base(workers)),
                      "--redis-host", str(redis), "--workers", str(workers)]
    else:
        arguments += ["--port", "0", "--udp-port", "0"]
    proc = subprocess.Popen((command or _python() + ["-m", "trio_sfu.cli"]) + arguments,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    key = secret = url = None
    pids: list[int] = []
    deadline = time.monotonic() + 30
    assert proc.stdout is not None
    while url is None or len(pids) < workers:
        line = proc.stdout.readline()
        if not line or time.monotonic() > deadline:
            proc.kill()
            raise BenchError(f"server did not print its ready line (exit {proc.poll()})")
        if line.startswith("dev API key:"):
            match = re.match(r"dev API key: (\S+)\s+secret: (\S+)", line)
            if match:
                key, secret = match.groups()
        elif line.startswith("trio-sfu ready url="):
            url = line.strip().split("=", 1)[1].split()[0]
            worker = re.search(r"\bpid=(\d+)", line)
            if worker:
                pids.append(int(worker.group(1)))
    if key is None or secret is None:
        proc.kill()
        raise BenchError("server printed no dev API key")
    # Keep draining stdout so a chatty server never blocks on a full pipe.
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    return proc, url, key, secret, (pids if workers else [proc.pid])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_udp_base(count: int) -> int:
    """A UDP port with `count` free ports from it (the workers take one each)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + count > 65535:
            continue
        try:
            probes = []
            for port in range(base, base + count):
                probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                probes.append(probe)
                probe.bind(("0.0.0.0", port))
            return base
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()
    raise BenchError("no run of free UDP ports for the workers")


class RedisServer:
    """A throwaway redis-server on a free loopback port (Debian's), for the workers' cluster."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.dir = tempfile.mkdtemp(prefix="bench-redis-")
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", self.dir],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise BenchError("redis-server did not start (apt-get install redis-server)")
            time.sleep(0.05)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _probe_join_to_first_media(url: str, key: str, secret: str, room: str, tracks: int,
                                     timeout: float = 20.0) -> dict[str, Optional[float]]:
    import trio

    from trio_sfu.client import LiveKitClient
    from trio_sfu.client.loadtest import LoadTestParams, make_token

    params = LoadTestParams(url=url, api_key=key, api_secret=secret, room=room, subscribers=1)
    token = make_token(params, "bench_probe", publish=False, subscribe=True)
    started = trio.current_time()
    result: dict[str, Optional[float]] = {"joined_s": None, "subscriber_pc_connected_s": None,
                                          "tracks_offered_s": None, "first_packet_s": None,
                                          "all_tracks_first_packet_s": None}
    # Each stage's time is kept, so a run that times out says which stage never came.
    with trio.move_on_after(timeout):
        async with LiveKitClient.connect(url, token) as client:
            result["joined_s"] = trio.current_time() - started
            await client.wait_connected(timeout=timeout)
            result["subscriber_pc_connected_s"] = trio.current_time() - started
            remote = await client.wait_for_tracks(tracks, timeout=timeout)
            result["tracks_offered_s"] = trio.current_time() - started
            firsts = []
            for track in remote:
                await track.first_packet.wait()
                firsts.append(track.stats.first_arrival - started)
            result["first_packet_s"] = min(firsts)
            result["all_tracks_first_packet_s"] = max(firsts)
    return result


SERVERS = ("trio-sfu", "janus")


async def _probe_janus_join_to_first_media(url: str, room: int, bind_host: str, publishers: int, tracks: int,
                                           timeout: float = 20.0) -> dict[str, Optional[float]]:
    """The same stages as the LiveKit probe, through Janus: the session is up (joined), the
    subscription offered and answered (tracks offered), the PC connected, the first packets."""
    import trio

    from trio_sfu.client.janus import JanusError, JanusParticipant

    started = trio.current_time()
    result: dict[str, Optional[float]] = {"joined_s": None, "subscriber_pc_connected_s": None,
                                          "tracks_offered_s": None, "first_packet_s": None,
                                          "all_tracks_first_packet_s": None}
    try:
        with trio.move_on_after(timeout):
            async with JanusParticipant.connect(url, room, "bench_probe", bind_host=bind_host) as client:
                result["joined_s"] = trio.current_time() - started
                await client.subscribe(await client.wait_for_feeds(publishers, timeout=timeout))
                result["tracks_offered_s"] = trio.current_time() - started
                await client.wait_connected(timeout=timeout)
                result["subscriber_pc_connected_s"] = trio.current_time() - started
                firsts = []
                for track in client.subscriptions.values():
                    await track.first_packet.wait()
                    firsts.append(track.stats.first_arrival - started)
                if len(firsts) == tracks:
                    result["first_packet_s"] = min(firsts)
                    result["all_tracks_first_packet_s"] = max(firsts)
    except JanusError:
        pass  # the stages reached so far say where it stopped
    return result


def run_scenario(scenario: Scenario, *, warmup: float = 3.0, window: float = 10.0,
                 setup_timeout: float = 180.0, stall_timeout: float = 20.0, probe: bool = True,
                 workers: int = 0, server_kind: str = "trio-sfu", tester_workers: int = 0,
                 log=lambda text: print(text, file=sys.stderr, flush=True),
                 server_command: Optional[list[str]] = None, server_env: Optional[dict[str, str]] = None,
                 on_window: Callable[[int, bool], None] = lambda pid, started: None) -> dict[str, Any]:
    """One run of `scenario`. `workers`: 0 runs the lone server (no Redis); N runs `--workers N`,
    N nodes of a cluster on a throwaway redis-server sharing one port, the load tester's
    participants spread over them by the kernel and the room spanning them. `on_window(server_pid,
    started)` is called at the measuring window's start and end (bench.server_profile signals its
    profiled server there)."""
    import trio

    if server_kind not in SERVERS:
        raise BenchError(f"unknown server {server_kind!r} (one of {', '.join(SERVERS)})")
    room = f"bench-{scenario.name}"
    redis = janus = None
    bind_host = "127.0.0.1"
    extra: list[str] = []
    if server_kind == "janus":
        from .janus_server import JanusServer, JanusUnavailable

        if workers:
            raise BenchError("--workers runs trio-sfu as a cluster; Janus runs as one process")
        try:
            janus = JanusServer()
        except JanusUnavailable as exc:
            raise BenchError(str(exc)) from None
        server, url, key, secret, pids = janus.proc, janus.url, "unused", "unused", [janus.pid]
        room, bind_host = str(janus.room), janus.media_ip
        extra = ["--server-api", "janus"]
    else:
        redis = RedisServer() if workers else None
        server, url, key, secret, pids = start_server(server_env, server_command,
                                                      redis=redis.address if redis else None, workers=workers)
    if tester_workers:
        extra += ["--workers", str(tester_workers)]
    tester = None
    tester_pids: list[int] = []
    json_path = tempfile.mktemp(prefix="bench-loadtest-", suffix=".json")
    try:
        time.sleep(0.5)
        rss_idle = procstat.sample_many(pids).rss_bytes
        cmd = _python() + [
            "-m", "trio_sfu.cli", "load-test", "--url", url, "--api-key", key, "--api-secret", secret,
            "--bind-host", bind_host, *extra,
            "--room", room, "--video-publishers", str(scenario.video_publishers),
            "--audio-publishers", str(scenario.audio_publishers), "--subscribers", str(scenario.subscribers),
            "--duration", "0", "--video-bitrate", str(scenario.video_bitrate),
            "--simulcast" if scenario.simulcast else "--no-simulcast",
            "--num-per-second", str(scenario.join_rate), "--json", json_path,
        ]
        tester = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        lines: "queue.Queue[Optional[_Progress]]" = queue.Queue()

        def read_progress() -> None:
            assert tester is not None and tester.stderr is not None
            for text in tester.stderr:
                worker = _WORKER.search(text)
                if worker:
                    tester_pids.append(int(worker.group(1)))
                    continue
                match = _PROGRESS.search(text)
                if match:
                    g = match.groups()
                    lines.put(_Progress(time.monotonic(), int(g[1]), int(g[2]), int(g[3]), int(g[4]), int(g[5]),
                                        int(g[6]), float(g[7]), int(g[8])))
            lines.put(None)

        threading.Thread(target=read_progress, daemon=True).start()

        def next_line(timeout: float = 15.0) -> _Progress:
            try:
                item = lines.get(timeout=timeout)
            except queue.Empty:
                raise BenchError("load tester stopped reporting progress") from None
            if item is None:
                raise BenchError(f"load tester exited early (status {tester.poll()})")
            if server.poll() is not None:
                raise BenchError(f"the server exited during the run (status {server.returncode})")
            return item

        setup_started = changed_at = time.monotonic()
        seen = (0, 0)
        while True:
            p = next_line()
            if p.joined == p.participants and p.tracks >= p.tracks_expected:
                break
            if (p.joined, p.tracks) != seen:
                seen, changed_at = (p.joined, p.tracks), time.monotonic()
            elif time.monotonic() - changed_at > stall_timeout and p.tracks > 0:
                # Some participants failed to join (the tester counts them as errors): measure
                # the ones that did, and say so in the result rather than give up.
                log(f"{scenario.name}: setup stalled at joined {p.joined}/{p.participants}, "
                    f"tracks {p.tracks}/{p.tracks_expected}; measuring what joined")
                break
            if time.monotonic() - setup_started > setup_timeout:
                raise BenchError(f"setup incomplete after {setup_timeout:.0f} s: joined {p.joined}/{p.participants}, "
                                 f"tracks {p.tracks}/{p.tracks_expected}")
        setup_s = time.monotonic() - setup_started
        joined, tracks_subscribed = p.joined, p.tracks
        log(f"{scenario.name}: joined {joined}/{p.participants}, tracks {tracks_subscribed}/{p.tracks_expected} "
            f"after {setup_s:.1f} s; warming up {warmup:g} s")
        warm_end = time.monotonic() + warmup
        while time.monotonic() < warm_end:
            p = next_line()
        on_window(server.pid, True)
        testers = [tester.pid] + list(tester_pids)
        first = (p, procstat.sample_many(pids), procstat.sample_many(testers), procstat.machine_busy_seconds())
        in_packets = out_packets = 0
        errors_at_start = p.errors
        while True:
            p = next_line()
            in_packets += p.in_pps
            out_packets += p.out_pps
            if p.at - first[0].at >= window:
                break
        last = (p, procstat.sample_many(pids), procstat.sample_many(testers), procstat.machine_busy_seconds())
        on_window(server.pid, False)
        wall = last[1].wall - first[1].wall
        server_cpu = last[1].cpu_seconds - first[1].cpu_seconds
        log(f"{scenario.name}: window {wall:.1f} s, {in_packets / wall:.0f} pps forwarded, "
            f"server {server_cpu / wall:.2f} cores, tester {procstat.cpu_share(first[2], last[2]):.2f} cores")

        probe_result = None
        if probe and janus is not None:
            probe_result = trio.run(_probe_janus_join_to_first_media, url, janus.room, bind_host,
                                    scenario.publishers, scenario.tracks_per_subscriber)
            log(f"{scenario.name}: probe {probe_result}")
        elif probe:
            probe_result = trio.run(_probe_join_to_first_media, url, key, secret, room,
                                    scenario.tracks_per_subscriber)
            log(f"{scenario.name}: probe {probe_result}")

        stop(tester, signal.SIGINT, timeout=60)
        # Read with the tester gone and the server still up: every receive-buffer overflow of
        # the run is in these counts (the tester's own are in its summary).
        server_drops = sum(process_drops(pid) or 0 for pid in pids) if workers else process_drops(pids[0])
        summary: dict[str, Any] = {}
        if os.path.exists(json_path):
            with open(json_path, encoding="utf-8") as handle:
                summary = json.load(handle)
        totals = summary.get("totals", {})
        rss_loaded = last[1].rss_bytes
        forwarded_pps = in_packets / wall
        return {
            "scenario": scenario.name,
            "description": scenario.description,
            "server": server_kind,
            "workers": workers,
            "tester_workers": tester_workers,
            "participants": scenario.participants,
            "publishers": scenario.publishers,
            "subscribers": scenario.subscribers,
            "setup_s": setup_s,
            "joined": joined,
            "tracks_subscribed": tracks_subscribed,
            "tracks_expected": scenario.subscribers * scenario.tracks_per_subscriber,
            "window_s": wall,
            "published_pps": out_packets / wall,
            "forwarded_pps": forwarded_pps,
            "server_cpu_cores": server_cpu / wall,
            "pps_per_core": in_packets / server_cpu if server_cpu > 0 else None,
            "cpu_us_per_packet": server_cpu / in_packets * 1e6 if in_packets else None,
            "tester_cpu_cores": procstat.cpu_share(first[2], last[2]),
            # Everything else busy on the machine meanwhile (other users, this bench's reader):
            # when it is large the server and tester were competing for the cores.
            "other_cpu_cores": (last[3] - first[3]) / wall - server_cpu / wall - procstat.cpu_share(first[2], last[2]),
            "loss_percent_in_window": last[0].loss_percent,
            "errors_in_window": last[0].errors - errors_at_start,
            "latency_ms_p50": totals.get("latency_ms_p50"),
            "latency_ms_p99": totals.get("latency_ms_p99"),
            "loss_total": totals.get("loss"),
            "packets_lost_total": totals.get("packets_lost"),
            # Datagrams the kernel dropped because a receive buffer was full (a starved reader):
            # loss that is the machine's, not the SFU's. None where the platform does not say.
            "udp_drops": {"server": server_drops, "tester": totals.get("socket_drops")},
            "errors_total": totals.get("errors"),
            "rss_idle_mb": rss_idle / 2**20,
            "rss_loaded_mb": rss_loaded / 2**20,
            "rss_per_participant_kb": (rss_loaded - rss_idle) / max(1, joined) / 1024,
            "join_to_first_media": probe_result,
        }
    finally:
        if tester is not None:
            stop(tester, signal.SIGINT, timeout=30)
        if janus is not None:
            janus.stop()
        else:
            stop(server, timeout=90)
        if redis is not None:
            redis.stop()
        if os.path.exists(json_path):
            os.unlink(json_path)
