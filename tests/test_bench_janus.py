"""`python -m bench smoke --server janus --tester-workers 2 --json`: the smoke scenario through a
real Janus (started by the bench with bench/janus's config, stopped at the end), the load tester
in two worker processes. Not a benchmark: it checks the run produces the documented JSON, says
which server it measured, that every subscriber got every track from Janus with no errors, and
that the join probe got first packets through Janus too."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench.janus_server import janus_available

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(not janus_available(), reason="janus not installed (bench/janus/setup.sh)")
@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs Linux /proc for CPU and RSS")
def test_smoke_scenario_through_janus_with_tester_workers() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "smoke", "--server", "janus", "--tester-workers", "2", "--json",
         "--warmup", "0.5", "--window", "1.5", "--no-floor"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (result,) = json.loads(proc.stdout)["results"]
    assert result["server"] == "janus" and result["tester_workers"] == 2 and result["workers"] == 0
    assert result["participants"] == result["joined"] == 3
    assert result["tracks_subscribed"] == result["tracks_expected"] == 4
    assert result["errors_total"] == 0
    assert result["forwarded_pps"] > 0 and result["server_cpu_cores"] >= 0
    probe = result["join_to_first_media"]
    assert probe is not None and probe["all_tracks_first_packet_s"] is not None, probe
