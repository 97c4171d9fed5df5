"""`python -m bench smoke --json` end to end: the server and the load tester as their own
processes, /proc sampling, the probe and the floor, in a few seconds. Not a benchmark: it only
checks that a run produces the documented JSON with real (positive, consistent) figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from trio_sfu import native

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT_KEYS = {
    "scenario", "description", "participants", "publishers", "subscribers", "setup_s", "joined", "tracks_subscribed", "tracks_expected", "window_s",
    "published_pps", "forwarded_pps", "server_cpu_cores", "pps_per_core", "cpu_us_per_packet",
    "tester_cpu_cores", "other_cpu_cores", "loss_percent_in_window", "errors_in_window", "latency_ms_p50", "latency_ms_p99",
    "loss_total", "packets_lost_total", "udp_drops", "errors_total", "rss_idle_mb", "rss_loaded_mb",
    "rss_per_participant_kb", "join_to_first_media", "floor", "ratio_to_floor", "fast_path",
}


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs Linux /proc for CPU and RSS")
def test_smoke_scenario_json_shape() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "smoke", "--json", "--warmup", "0.5", "--window", "1.5"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["machine"]["nproc"] >= 1 and report["machine"]["python"]
    (result,) = report["results"]
    assert RESULT_KEYS <= set(result), RESULT_KEYS - set(result)
    assert result["scenario"] == "smoke" and result["participants"] == result["joined"] == 3
    assert result["tracks_subscribed"] == result["tracks_expected"] == 4
    assert result["errors_total"] == 0
    assert result["fast_path"] is native.FAST_PATH  # the fan-out the server used (same environment)
    # No loss but what the kernel counted dropping (a receive buffer that overflowed while its
    # reader was starved: the machine's loss, not the SFU's); a datagram dropped on its way into
    # the server is lost to each of its subscribers.
    drops = result["udp_drops"]
    assert drops["server"] is not None and drops["tester"] is not None, drops
    allowed = drops["tester"] + drops["server"] * result["subscribers"]
    assert result["packets_lost_total"] <= allowed, (result["packets_lost_total"], drops)
    if allowed == 0:
        assert result["packets_lost_total"] == 0 and result["loss_total"] == 0.0
    assert result["forwarded_pps"] > 0 and result["published_pps"] > 0
    assert result["server_cpu_cores"] > 0 and result["cpu_us_per_packet"] > 0
    # The derived figures agree with each other.
    assert result["pps_per_core"] == pytest.approx(1e6 / result["cpu_us_per_packet"], rel=1e-6)
    assert 0 <= result["latency_ms_p50"] <= result["latency_ms_p99"] < 1000
    assert result["rss_loaded_mb"] > 0
    probe = result["join_to_first_media"]
    assert 0 < probe["joined_s"] <= probe["first_packet_s"] <= probe["all_tracks_first_packet_s"] < 20
    floor = result["floor"]
    assert floor["forwarded_pps"] > 0 and floor["cpu_us_per_packet"] > 0
    assert result["ratio_to_floor"] == pytest.approx(floor["cpu_us_per_packet"] / result["cpu_us_per_packet"])


@pytest.mark.skipif(not os.path.exists("/usr/bin/redis-server"), reason="needs Debian's redis-server (scripts/test-deps.sh)")
def test_smoke_scenario_on_two_workers_measures_both() -> None:
    # `python -m bench smoke --workers 2`: the server as two cluster workers on a throwaway
    # redis-server; the tester's participants spread over both, CPU summed over the workers.
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "smoke", "--json", "--workers", "2", "--no-floor", "--no-probe",
         "--warmup", "0.5", "--window", "1.5"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (result,) = json.loads(proc.stdout)["results"]
    assert result["workers"] == 2 and result["joined"] == 3 and result["errors_total"] == 0
    assert result["tracks_subscribed"] == result["tracks_expected"] == 4
    assert result["forwarded_pps"] > 0 and result["server_cpu_cores"] > 0


def test_fanout_server_path_drives_the_servers_objects() -> None:
    # `python -m bench.fanout --server-path` keys the server's transports the way a handshake
    # would (it sets their state): this keeps that harness working as the media layer changes.
    # Its own checks: every packet taken in (and forwarded), the timers' feedback and reports sent.
    from bench.fanout import run_server_path

    assert run_server_path(2, 300) > 0
    assert run_server_path(0, 2000) > 0  # 0.4 s of packets: transport-cc feedback is due and sent


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs Linux /proc for CPU and RSS")
def test_server_profile_counts_the_window(tmp_path) -> None:
    # bench.server_profile: the real server under its profiler for the smoke scenario's window,
    # then the comparison of that run with itself (every difference zero).
    out = str(tmp_path / "smoke")
    proc = subprocess.run(
        [sys.executable, "-m", "bench.server_profile", "run", "smoke", "--out", out, "--warmup", "0.5", "--window", "1.5"],
        cwd=ROOT, capture_output=True, text=True, timeout=90,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["joined"] == 3
    with open(out + ".steps.json", encoding="utf-8") as handle:
        steps = json.load(handle)
    assert steps["seconds"] >= 1.0 and steps["io_waits"] > 0
    # Each participant's media session woke its timers in the window (they serve RTCP at least once a second).
    assert steps["steps"].get("trio_sfu.media.participant_media.ParticipantMedia.run", 0) >= 3
    assert steps["objects"]["trio_sfu.media.participant_media.ParticipantMedia"] == 3
    sys.path.insert(0, ROOT)
    try:
        from bench.server_profile import compare, load_counts
    finally:
        sys.path.remove(ROOT)
    counts = load_counts(out)
    # The unit: media packets the receivers took in (forwarded ones no longer pass one Python
    # function on both fan-out paths: the compiled one sends from C).
    received = sum(calls for (path, function), (calls, _own) in counts.items()
                   if (path, function) == ("trio_sfu/forwarding/receiver.py", "_receive_media"))
    assert received > 0
    report = compare(out, out, "_receive_media", 5)
    assert report.startswith(f"units: {received:,} vs {received:,}")
    assert "+0.0000" in report and "-0." not in report.split("largest differences")[1]


def test_relay_link_bench_relays_every_packet_over_both_links() -> None:
    # `python -m bench.relay_link`: the relayed-packet cost over the in-memory and the TCP link
    # through a real RelayTap (on demand: the bench requests the layer it sends).
    proc = subprocess.run([sys.executable, "-m", "bench.relay_link", "--packets", "3000", "--repeat", "1", "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {r["link"]: r for r in json.loads(proc.stdout)["results"]}
    for link in ("in-memory link", "tcp link"):
        assert rows[link]["packets"] == 3000 and rows[link]["dropped"] == 0
        assert rows[link]["cpu_us_per_packet"] > 0
