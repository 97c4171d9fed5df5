"""Chromium tabs behind a 600 kbit/s downlink (issue 15's must-show): two `livekit-client` tabs
(simulcast on, the library's default; /rtc/v1, its default signalling) publish a 640×360 fake
camera and microphone and receive each other through trio-sfu behind the impairing proxy, whose
link towards each tab is limited to 600 kbit/s and lifts at runtime (its stdin control) after
LIMITED_S seconds. From the driver's stats (scripts/browser/e2e_driver.mjs `progress` lines,
stamped here as they come, every ~2 s): while limited each tab decodes the other at ≥ 15 fps on a
lower layer instead of freezing; within 10 s of the lift it decodes the top layer (640 wide)
again; audio packets keep arriving all along. The server's estimate and allocation log lines and
its counters are printed with the run (`METRICS`).
"""

from __future__ import annotations

import json
import os
import sys
import time

import pytest
from e2e_harness import BROWSER_DIR, E2E_DIR, Client, browser_missing, run_impaired_sfu
from test_e2e_bwe_limit_sdk import AFTER_LIFT_S, LIMIT, LIMITED_S, MAX_RETURN_S, MIN_FPS_LIMITED, SETTLE_S, TOP_WIDTH
from test_e2e_bwe_limit_sdk import browser_token as token

pytestmark = pytest.mark.slow

TABS = ("tab-a", "tab-b")


@pytest.fixture(autouse=True)
def _need_browser():
    reason = browser_missing()
    if reason is not None:
        pytest.skip(f"browser e2e: {reason}")


def samples(browser: Client, seen: int, out: list) -> int:
    """Stamp the driver's new progress lines (wall time) into `out`: (t, tab, video, audio)."""
    lines = list(browser.lines)
    now = time.time()
    for line in lines[seen:]:
        progress = line.get("progress")
        if not progress:
            continue
        for tab, remote in zip(TABS, reversed(TABS)):
            stats = ((progress.get(tab) or {}).get("stats") or {}).get(remote) or {}
            out.append((now, tab, stats.get("video") or {}, stats.get("audio") or {}))
    return len(lines)


def analyse(rows: list, tab: str, first_frame_at: float, lifted_at: float) -> dict:
    mine = [(t, v, a) for t, who, v, a in rows if who == tab]
    intervals = []
    for (t0, v0, a0), (t1, v1, a1) in zip(mine, mine[1:]):
        if t1 - t0 < 0.5:
            continue
        intervals.append({"t": t1, "fps": (v1.get("framesDecoded", 0) - v0.get("framesDecoded", 0)) / (t1 - t0),
                          "width": v1.get("frameWidth", 0),
                          "audio_pps": (a1.get("packetsReceived", 0) - a0.get("packetsReceived", 0)) / (t1 - t0),
                          "concealed": a1.get("concealedSamples", 0) - a0.get("concealedSamples", 0)})
    limited = [i for i in intervals if first_frame_at + SETTLE_S <= i["t"] - 2 and i["t"] <= lifted_at]
    after = [i for i in intervals if i["t"] > lifted_at]
    back = next((i["t"] for i in after if i["width"] >= TOP_WIDTH), None)
    audio = [i["audio_pps"] for i in intervals if i["t"] > first_frame_at + 2]
    return {
        "limited_fps": round(sum(i["fps"] for i in limited) / len(limited), 1) if limited else 0.0,
        "limited_min_fps": round(min((i["fps"] for i in limited), default=0.0), 1),
        "limited_widths": sorted({i["width"] for i in limited}),
        "top_back_after_s": None if back is None else round(back - lifted_at, 1),
        "audio_min_pps": round(min(audio, default=0.0), 1),
        "audio_median_pps": round(sorted(audio)[len(audio) // 2], 1) if audio else 0.0,
        "timeline": [(round(i["t"] - lifted_at, 1), round(i["fps"], 1), i["width"], round(i["audio_pps"]))
                     for i in intervals],
    }


def test_browser_tabs_behind_600_kbit_get_a_lower_layer_then_the_top_one_back(netns, tmp_path):
    impaired = run_impaired_sfu(netns, tmp_path, to_server="", to_client=LIMIT, congestion_control=True)
    world = next(impaired)
    browser = None
    try:
        total_ms = (LIMITED_S + AFTER_LIFT_S + 40) * 1000
        config = {
            "wsUrl": world.sfu.ws_url,
            "participants": [{"identity": t, "token": token(t, "bwe-limit-browser"),
                              "camera": {"width": 640, "height": 360, "fps": 30}} for t in TABS],
            "expect": {"tab-a": ["tab-b"], "tab-b": ["tab-a"]},
            "minFrames": 1, "minAudioPackets": 1, "risingMs": total_ms, "timeoutMs": total_ms, "holdMs": 1_000,
            "fakeCameraFps": 30,
        }
        browser = Client("chromium", netns.wrap(["node", str(BROWSER_DIR / "e2e_driver.mjs"), json.dumps(config)]),
                         tmp_path / "chromium.log", env=dict(os.environ, HOME=str(tmp_path)))
        rows: list = []
        seen = 0
        first_frame_at = None
        deadline = time.time() + 90
        while first_frame_at is None and time.time() < deadline:
            seen = samples(browser, seen, rows)
            decoding = {tab for _, tab, v, _ in rows if v.get("framesDecoded", 0) > 0}
            if decoding == set(TABS):
                first_frame_at = time.time()
            time.sleep(0.2)
        assert first_frame_at is not None, f"the tabs never decoded each other\n{browser.log_tail()}"
        while time.time() < first_frame_at + LIMITED_S:
            seen = samples(browser, seen, rows)
            time.sleep(0.2)
        lifted_at = world.change(to_client="")["at"]
        while time.time() < lifted_at + AFTER_LIFT_S:
            seen = samples(browser, seen, rows)
            time.sleep(0.2)
        counters_client = Client("counters", netns.wrap([
            sys.executable, str(E2E_DIR / "simulcast_fps_scenario.py"), "--url", world.sfu.ws_url,
            "--counters-only"]), tmp_path / "counters.log")
        counters = counters_client.wait_for("server", timeout_s=20)
        counters_client.finish()
        browser.finish()
        proxy = world.proxy_counters()
        results = {tab: analyse(rows, tab, first_frame_at, lifted_at) for tab in TABS}
        log = world.sfu.log.read_text(errors="replace").splitlines()
        print("METRICS", json.dumps({"results": results, "server": counters and counters["server"],
                                     "proxy": proxy and [l["to_client"] for l in proxy["links"]
                                                         if l["to_client"]["sent"] > 300]}))
        print("\n".join(line.split("trio_sfu.media: ")[-1] for line in log
                        if "downstream estimate" in line or "allocation changed" in line))
        for tab, result in results.items():
            assert result["limited_fps"] >= MIN_FPS_LIMITED, (tab, result)
            assert result["limited_widths"] and max(result["limited_widths"]) < TOP_WIDTH, (tab, result)
            assert result["top_back_after_s"] is not None and result["top_back_after_s"] <= MAX_RETURN_S, (tab, result)
            assert result["audio_min_pps"] >= 0.5 * result["audio_median_pps"] > 0, (tab, result)
    finally:
        if browser is not None:
            browser.finish()
        impaired.close()
