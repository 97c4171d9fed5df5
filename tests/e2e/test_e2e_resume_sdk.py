"""A real `livekit` Python SDK participant (libwebrtc) resumes on the same trio-sfu after losing
its signal connection (`room.simulate_scenario(SIMULATE_SIGNAL_RECONNECT)`): first bob, who
receives alice's video, then alice, who publishes it. Each time the SDK reports `reconnected`,
keeps its sid (the server joined each identity once, resumed it once), video keeps being
decoded after the resume on both sides, and the other participant sees no disconnect. The
longest stretch without a decoded frame around each resume is printed as an E2E METRIC
(`sdk_resume_media_gap_ms`, also in <pytest basetemp>/e2e_metrics.json).

The server runs as `python -m trio_sfu.cli --dev` inside the test's network namespace
(tests/e2e/conftest.py), the two SDK participants in tests/e2e/resume_sdk_scenario.py.
"""

from __future__ import annotations

import json
import sys

import pytest
from e2e_harness import E2E_DIR, Client
from test_e2e_browser import record_metric

pytestmark = pytest.mark.slow

# 15 fps: a second without a frame is a real gap, not jitter; a resume with ICE restarts on both
# PCs must not stall the picture for longer than this.
MAX_GAP_MS = 3000
MIN_FRAMES_AFTER = 20  # of 4 s at 15 fps


@pytest.mark.parametrize("signalling", ["v1", "v0"])
def test_sdk_signal_reconnect_resumes_on_the_same_node(signalling, netns, sfu, clients, tmp_path, tmp_path_factory,
                                                       pytestconfig):
    """`v1`: the SDK's default, one peer connection (/rtc/v1); `v0`: two (/rtc)."""
    argv = netns.wrap([sys.executable, str(E2E_DIR / "resume_sdk_scenario.py"), "--url", sfu.ws_url,
                       *(["--v0"] if signalling == "v0" else [])])
    client = Client("resume", argv, tmp_path / "resume.log")
    clients.append(client)
    done = client.wait_for("summary", timeout_s=120)
    client.finish()
    context = f"{client.log_tail(120)}\n{sfu.log_tail(120)}"
    assert done is not None, f"no summary\n{context}"
    summary = done["summary"]
    brief = json.dumps({k: v for k, v in summary.items() if k != "events"}, indent=1)
    assert "error" not in summary, f"{brief}\n{context}"
    assert summary["media"], f"media did not flow both ways before the resumes\n{brief}\n{context}"
    assert [r["who"] for r in summary["resumes"]] == ["bob", "alice"], brief

    # Recorded before the checks: the gaps are worth seeing when a resume goes wrong too.
    record_metric(tmp_path_factory, pytestconfig, f"sdk_resume_media_gap_ms_{signalling}",
                  {f"{r['who']}_resumed": {side: r[side] for side in ("alice", "bob")} for r in summary["resumes"]})
    for resume in summary["resumes"]:
        who = resume["who"]
        assert resume["reconnected"], f"{who}'s SDK never reported reconnected\n{brief}\n{context}"
        assert resume["sid_before"] == resume["sid_after"] == summary["sids"][who], brief
        for side in ("alice", "bob"):
            got = resume[side]
            assert got["frames_after"] >= MIN_FRAMES_AFTER, \
                f"{side} decoded too little video after {who}'s resume: {got}\n{brief}\n{context}"
            assert got["since_last_ms"] is not None and got["since_last_ms"] <= MAX_GAP_MS, \
                f"{side}'s video stopped after {who}'s resume: {got}\n{brief}\n{context}"
            assert got["gap_ms"] is not None and got["gap_ms"] <= MAX_GAP_MS, \
                f"{side}'s video stalled {got['gap_ms']} ms around {who}'s resume\n{brief}\n{context}"

    events = summary["events"]
    for bad in ("participant_disconnected", "disconnected", "track_unsubscribed"):
        seen = [e for e in events if e["event"] == bad]
        assert not seen, f"{bad} during the resumes: {seen}\n{brief}\n{context}"

    # The server's word: each identity joined once and resumed once, on this node.
    log = sfu.log.read_text(errors="replace")
    joins = [line for line in log.splitlines() if "participant joined" in line]
    resumes = [line for line in log.splitlines() if "resumed on a new signal connection" in line]
    for identity, sid in summary["sids"].items():
        assert sum(sid in line for line in joins) == 1, f"{identity} joined again: {joins}"
        assert sum(sid in line for line in resumes) == 1, f"{identity} was not resumed once: {resumes}\n{context}"
        # Each PC restarted ICE (v0: the subscriber with our offer, the publisher with the SDK's;
        # v1: the one PC, with the SDK's offer), and the SDK completed each: its checks under the
        # new credentials arrived.
        for pc in ("subscriber", "publisher") if signalling == "v0" else ("publisher",):
            for what in ("ICE restarted", "ICE restart completed"):
                assert any(what in line and sid in line and f"pc={pc} " in line for line in log.splitlines()), \
                    f"no '{what}' for {identity}'s {pc} PC\n{context}"
