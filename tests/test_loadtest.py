"""``trio-sfu load-test`` against the project's server with its real media stack, on loopback.

The in-process test runs :class:`trio_sfu.client.loadtest.LoadTest` (one participant
publishing simulcast video and audio, two subscribers) and checks its summary
against what must be true on loopback: everyone joined, each subscriber got
both tracks, packets flowed with no loss but what the kernel counted dropping
(receive buffers that overflowed on a starved machine), the latency percentiles are real
numbers from the payload stamps, no errors, and the progress lines were written.
The command-line test runs ``python -m trio_sfu.cli load-test`` as a separate
process against a server in this test and reads its ``--json`` file.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
import trio

import server_fixtures
from server_fixtures import API_KEY, API_SECRET
from trio_sfu.cli import build_parser
from trio_sfu.client.loadtest import LoadTest, LoadTestParams, format_summary
from trio_sfu.sockstat import socket_drops



def media_server():
    """The server with its media stack on loopback; server_fixtures' leak check runs at exit
    (tasks, sockets, rooms, track sources and their subscribers)."""
    return server_fixtures.media_server()


def server_drops(server) -> int:
    """Datagrams the kernel dropped on the server's UDP socket (receive buffer full while the server
    was starved of CPU); each is lost to every subscriber of its track."""
    drops = socket_drops(server.media.mux.sock)
    assert drops is not None, "the kernel's drop counts are unreadable here (Linux /proc/net/udp)"
    return drops


def check_loopback_summary(summary: dict, subscribers: int, kinds: list[str], server_dropped: int) -> None:
    """Zero loss on loopback, except what the kernel counted dropping: the tester's own sockets
    (the summary's socket_drops) and the server's, which every subscriber of a track loses."""
    tracks = len(kinds)
    assert summary["joined"] == summary["participants"] == 1 + subscribers
    assert summary["totals"]["errors"] == 0, summary
    tester_dropped = summary["totals"]["socket_drops"]
    assert tester_dropped is not None, summary["totals"]
    allowed = tester_dropped + server_dropped * subscribers
    assert summary["totals"]["packets_lost"] <= allowed, (summary["totals"], server_dropped)
    if allowed == 0:
        assert summary["totals"]["packets_lost"] == 0 and summary["totals"]["loss"] == 0.0
    assert len(summary["subscribers"]) == subscribers
    for sub in summary["subscribers"]:
        assert sub["tracks_received"] == sub["tracks_expected"] == tracks, sub
        assert sub["packets"] > 0 and sub["bitrate_bps"] > 0
        assert sub["packets_lost"] <= sub["socket_drops"] + server_dropped, (sub, server_dropped)
        assert 0 <= sub["latency_ms_p50"] <= sub["latency_ms_p99"] < 1000
        assert sub["unknown_ssrc_packets"] == 0
    assert len(summary["tracks"]) == tracks
    assert sorted(t["kind"] for t in summary["tracks"]) == sorted(kinds)
    for track in summary["tracks"]:
        assert track["publisher"] == "pub_0" and track["subscribers"] == subscribers
        assert track["packets_sent"] > 0 and track["packets"] > 0
        assert track["packets_lost"] <= allowed, (track, server_dropped)
        assert track["latency_ms_p50"] is not None
    # What subscribers got can't exceed what was sent to them (a simulcast track forwards one layer).
    assert summary["totals"]["packets_received"] <= subscribers * summary["totals"]["packets_sent"]


async def test_load_test_reports_zero_loss_on_loopback() -> None:
    async with media_server() as server:
        params = LoadTestParams(
            url=server.url, api_key=API_KEY, api_secret=API_SECRET, room="lt",
            video_publishers=1, audio_publishers=1, subscribers=2, duration=2.5,
            video_bitrate=500_000, width=640, height=360, simulcast=True, num_per_second=20,
        )
        progress = io.StringIO()
        load_test = LoadTest(params, progress=progress)
        with trio.fail_after(30):
            summary = await load_test.run()
        dropped = server_drops(server)
    check_loopback_summary(summary, subscribers=2, kinds=["audio", "video"], server_dropped=dropped)
    video = next(p for p in summary["publishers"][0]["tracks"] if p["kind"] == "video")
    assert video["layers"] == ["q", "h", "f"]
    # From the SFU's RRs (LSR/DLSR): a real loopback round trip in ms — a unit error would be
    # orders of magnitude off — bounded for a loaded machine.
    assert video["rtt_ms"] is not None and 0 <= video["rtt_ms"] < 1000
    lines = progress.getvalue().splitlines()
    assert len(lines) >= 2 and all("joined" in line and "loss" in line for line in lines)
    text = format_summary(summary)
    assert "sub_0" in text and "sub_1" in text and "%" in text
    json.dumps(summary)  # machine-readable as is


def test_cli_keeps_server_flags_and_adds_load_test() -> None:
    parser = build_parser()
    args = parser.parse_args(["--dev"])
    assert args.dev and getattr(args, "command", None) is None
    args = parser.parse_args(["load-test", "--url", "ws://h:1", "--api-key", "k", "--api-secret", "s",
                              "--video-publishers", "2", "--no-simulcast", "--json", "out.json"])
    assert args.command == "load-test" and args.video_publishers == 2 and args.simulcast is False
    assert args.json == "out.json"


def test_load_test_arguments_from_environment_and_refusals() -> None:
    import argparse

    from trio_sfu.client.loadtest import add_arguments, params_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser, {"LIVEKIT_URL": "wss://x.example", "LIVEKIT_API_KEY": "k", "LIVEKIT_API_SECRET": "s"})
    params = params_from_args(parser.parse_args(["--video-resolution", "640x360", "--identity-prefix", "w2_"]))
    assert [p.identity for p in LoadTest(params, progress=None).participants] == ["w2_pub_0", "w2_sub_0"]
    assert (params.url, params.api_key, params.api_secret, params.width, params.height) == (
        "wss://x.example", "k", "s", 640, 360)
    # lk's default when nothing is asked for: one video publisher, one subscriber.
    assert (params.video_publishers, params.subscribers, params.simulcast) == (1, 1, True)
    with pytest.raises(ValueError, match="resolution"):
        params_from_args(parser.parse_args(["--video-resolution", "big"]))
    with pytest.raises(ValueError, match="negative"):
        params_from_args(parser.parse_args(["--subscribers", "-1"]))
    with pytest.raises(ValueError, match="ws://"):
        params_from_args(parser.parse_args(["--url", "ftp://x"]))
    with pytest.raises(ValueError, match="LiveKit Cloud"):
        params_from_args(parser.parse_args(["--url", "wss://p.livekit.cloud", "--subscribers", "51"]))
    strict = argparse.ArgumentParser()
    add_arguments(strict, {})
    with pytest.raises(SystemExit):
        strict.parse_args([])  # no URL/key/secret anywhere


async def test_cli_load_test_subprocess_writes_json(tmp_path) -> None:
    json_path = tmp_path / "summary.json"
    async with media_server() as server:
        command = [
            sys.executable, "-m", "trio_sfu.cli", "load-test", "--url", server.url, "--api-key", API_KEY,
            "--api-secret", API_SECRET, "--room", "cli", "--audio-publishers", "1", "--subscribers", "1",
            "--duration", "1.5", "--num-per-second", "20", "--json", str(json_path),
        ]
        with trio.fail_after(60):
            result = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False,
                                            env=dict(os.environ))
        dropped = server_drops(server)
    assert result.returncode == 0, (result.stdout.decode(), result.stderr.decode())
    assert b"Subscriber" in result.stdout and b"sub_0" in result.stdout
    summary = json.loads(json_path.read_text())
    check_loopback_summary(summary, subscribers=1, kinds=["audio"], server_dropped=dropped)
    assert "api_secret" not in summary["params"]


async def test_cli_load_test_without_duration_stops_on_sigint_with_a_summary() -> None:
    import signal

    async with media_server() as server:
        command = [
            sys.executable, "-m", "trio_sfu.cli", "load-test", "--url", server.url, "--api-key", API_KEY,
            "--api-secret", API_SECRET, "--room", "forever", "--audio-publishers", "1", "--subscribers", "1",
            "--duration", "0", "--num-per-second", "20",
        ]
        proc = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            seen = b""
            with trio.fail_after(30):
                while b"tracks 1/1" not in seen or b" 0 pps" in seen.splitlines()[-1]:
                    chunk = await proc.stderr.receive_some(4096)
                    assert chunk, seen
                    seen += chunk
                proc.send_signal(signal.SIGINT)
                stdout = b""
                while chunk := await proc.stdout.receive_some(65536):
                    stdout += chunk
                await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 0, (stdout, seen)
    assert b"sub_0            1/1" in stdout and b"errors 0" in stdout


async def test_summary_lists_a_track_nobody_received() -> None:
    """Against a signal-only server (no media), publishing works but nothing flows: the summary
    must say so (track listed with 0 subscribers, subscriber 0/1, errors counted), not hide it."""
    from server_fixtures import running_server

    async with running_server() as server:
        params = LoadTestParams(url=server.url, api_key=API_KEY, api_secret=API_SECRET, room="nomedia",
                                audio_publishers=1, subscribers=1, duration=0.5, num_per_second=50)
        summary = await LoadTest(params, progress=None).run()
    (track,) = summary["tracks"]
    assert track["kind"] == "audio" and track["subscribers"] == 0 and track["packets"] == 0
    assert track["latency_ms_p50"] is None
    (sub,) = summary["subscribers"]
    assert sub["tracks_received"] == 0 and sub["tracks_expected"] == 1
    assert summary["totals"]["errors"] >= 1  # the server refused the publisher offer
    assert "0/1" in format_summary(summary)


async def test_run_ends_promptly_when_the_server_never_answers_the_join() -> None:
    """A server that accepts TCP and then says nothing: the run still ends on time (not after
    the 10 s join timeout), and the summary says nobody joined, with an error per participant."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    accepted: list[trio.SocketStream] = []

    async def hold(stream: trio.SocketStream) -> None:
        accepted.append(stream)
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, hold, listeners)
        params = LoadTestParams(url=f"ws://127.0.0.1:{port}", api_key=API_KEY, api_secret=API_SECRET,
                                audio_publishers=1, subscribers=1, duration=0.3, num_per_second=50)
        start = trio.current_time()
        summary = await LoadTest(params, progress=None).run()
        # Well short of the 10 s join timeout it would otherwise sit out (generous for a busy machine).
        assert trio.current_time() - start < 7
        nursery.cancel_scope.cancel()
    assert len(accepted) == 2
    assert summary["joined"] == 0 and summary["totals"]["errors"] == 2
    assert all("still joining" in e for p in summary["publishers"] + summary["subscribers"] for e in p["errors"])


def _progress(phase, elapsed: float = 1.0, joined: int = 1, **changes):
    from trio_sfu.client.progress import Progress

    fields = dict(phase=phase, elapsed=elapsed, joined=joined, participants=3, tracks=2, tracks_expected=4,
                  out_pps=150, in_pps=290, loss_percent=0.25, errors=1)
    fields.update(changes)
    return Progress(**fields)


def test_progress_lines_parse_with_the_bench_regex() -> None:
    """bench/scenarios.py reads the tester's stderr with `_PROGRESS`: every phase's line must
    parse, and to the numbers it was made of."""
    from bench.scenarios import _PROGRESS
    from trio_sfu.client.progress import Phase, format_progress

    for phase in Phase:
        line = format_progress(_progress(phase, elapsed=12.5, joined=2))
        assert line.startswith(phase.value)
        match = _PROGRESS.search(line)
        assert match is not None, line
        assert match.groups() == ("12.5", "2", "3", "2", "4", "150", "290", "0.25", "1")


def test_progress_is_rewritten_in_place_per_phase_on_a_terminal(monkeypatch) -> None:
    from trio_sfu.client.progress import Phase, ProgressWriter, format_progress

    monkeypatch.setenv("COLUMNS", "200")  # the terminal's width, as shutil.get_terminal_size reads it

    reports = [_progress(Phase.JOINING, 1.0, 1), _progress(Phase.JOINING, 2.0, 3),
               _progress(Phase.STEADY, 3.0, 3), _progress(Phase.STEADY, 4.0, 3)]
    live = io.StringIO()
    writer = ProgressWriter(live, live=True)
    for report in reports:
        writer.show(report)
    writer.note("stopping: participants are leaving")
    writer.finish()  # nothing open any more: no empty line
    # What a terminal shows: each line as its last carriage return left it.
    screen = [row.rsplit("\r", 1)[-1].replace("\x1b[K", "") for row in live.getvalue().split("\n")]
    assert screen == [format_progress(reports[1]), format_progress(reports[3]),
                      "stopping: participants are leaving", ""]
    assert live.getvalue().count("\r") == 4
    # A line wider than the terminal would wrap and leave rows behind: it is cut to fit.
    monkeypatch.setenv("COLUMNS", "40")
    narrow = io.StringIO()
    ProgressWriter(narrow, live=True).show(reports[0])
    assert narrow.getvalue() == "\r" + format_progress(reports[0])[:39] + "\x1b[K"

    # Anywhere else (a pipe: bench, CI logs) one plain line per report.
    piped = io.StringIO()
    writer = ProgressWriter(piped)  # StringIO is no terminal
    for report in reports:
        writer.show(report)
    writer.finish()
    assert piped.getvalue().splitlines() == [format_progress(r) for r in reports]
    assert "\r" not in piped.getvalue() and "\x1b" not in piped.getvalue()


def test_load_test_phase_is_joining_until_everyone_is_ready_or_failed() -> None:
    from trio_sfu.client.progress import Phase

    params = LoadTestParams(url="ws://127.0.0.1:1", api_key=API_KEY, api_secret=API_SECRET,
                            audio_publishers=1, subscribers=2)
    load_test = LoadTest(params, progress=None)
    pub, sub_0, sub_1 = load_test.participants
    assert load_test.phase() is Phase.JOINING  # nobody started yet
    load_test.media_started_at = 1.0  # everyone started
    pub.ready = sub_0.ready = True
    assert load_test.phase() is Phase.JOINING  # sub_1 still connecting
    sub_1.errors.append("refused")
    assert load_test.phase() is Phase.STEADY  # a failure settles it too
