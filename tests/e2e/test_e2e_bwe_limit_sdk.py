"""A real libwebrtc subscriber behind a 600 kbit/s downlink (issue 15's must-show), with the `livekit`
Python SDK on both ends (tests/e2e/bwe_limit_scenario.py): Alice publishes a simulcast camera
(640×360@30, max 1 Mbit/s) and a tone; Bob's link from the server crosses the impairing proxy
(trio_sfu.testing.impair_proxy) limited to 600 kbit/s, which lifts at runtime (its control on
stdin) after LIMITED_S seconds. What must hold: while limited, Bob decodes ≥ 15 fps on a lower
layer (the estimate and the stream allocator keep the top layer away) instead of freezing;
within 10 s of the lift he decodes the top layer again; his audio never stops. The server's
counters (layer switches, pauses, probes, estimates) and its estimate log lines are printed with
the run (`METRICS`). Both signalling paths: /rtc/v1 (the SDK's default) and /rtc (v0).

The SDK publisher's lowest simulcast layer (640×360 source, 1 Mbit/s) takes ~450 kbit/s, which
with audio and headers hardly fits 600 kbit/s; the must-show's publisher is a Chromium tab
(`livekit-client`, whose 640×360 simulcast ladder has a low layer that fits), with the SDK
subscriber behind the limit: `test_browser_publisher_sdk_subscriber_...`.
"""

from __future__ import annotations

import json
import os
import sys
import time

import pytest
from e2e_harness import BROWSER_DIR, E2E_DIR, Client, browser_missing, run_impaired_sfu
from livekit import api

from trio_sfu.config import DEV_API_KEY, DEV_API_SECRET

pytestmark = pytest.mark.slow

LIMIT = "rate_bps=600000"
LIMITED_S = 25
AFTER_LIFT_S = 20
#: Seconds after Bob first decodes video before the limited window is measured (the estimate
#: finds the limit first: the top layer overflows the link until it does).
SETTLE_S = 8
TOP_WIDTH = 640
MIN_FPS_LIMITED = 15.0
MAX_RETURN_S = 10.0


def analyse(per_second: dict[int, dict], subscribed_at: float, lifted_at: float) -> dict:
    seconds = sorted(per_second)
    limited = [s for s in seconds if subscribed_at + SETTLE_S <= s and s + 1 <= lifted_at]
    after = [s for s in seconds if s >= int(lifted_at)]
    frames = sum(per_second[s]["video"] for s in limited)
    lower = sum(n for s in limited for w, n in per_second[s]["widths"].items() if int(w) < TOP_WIDTH)
    # The top layer is back from the first second after the lift whose frames are all top-layer.
    back = next((s for s in after if per_second[s]["video"] and
                 all(int(w) >= TOP_WIDTH for w in per_second[s]["widths"])), None)
    audio = [per_second[s]["audio"] for s in seconds if subscribed_at + 1 <= s < seconds[-1]]
    return {
        "limited_fps": frames / len(limited) if limited else 0.0,
        "limited_min_fps": min((per_second[s]["video"] for s in limited), default=0),
        "limited_lower_share": lower / frames if frames else 0.0,
        "top_back_after_s": None if back is None else round(back + 1 - lifted_at, 1),
        "audio_min_per_s": min(audio, default=0), "audio_median_per_s": sorted(audio)[len(audio) // 2] if audio else 0,
    }


#: Not met with the SDK as publisher: its lowest layer measures 450–530 kbit/s, which with audio
#: and headers hardly fits 600 kbit/s, and it is 640 wide (at 15 fps), so the frame width cannot
#: tell the layers apart. With congestion control on by default and no pause (LiveKit's
#: allow_pause default), one run each decoded 15.7 (/rtc/v1) and 15.5 (/rtc) fps while limited,
#: the top layer back 0.4 / 0.9 s after the lift, audio whole; what fails is
#: `limited_lower_share` (0.0: every frame 640 wide). Before (pausing): 2.9–5.2 fps.
SDK_LOW_LAYER_TOO_BIG = pytest.mark.xfail(
    reason="issue 15: the SDK publisher's lowest layer (~450-530 kbit/s) hardly fits 600 kbit/s and is as wide "
           "as the top one (15.5-15.7 fps while limited, no width to tell the layer)", strict=False)


@SDK_LOW_LAYER_TOO_BIG
@pytest.mark.parametrize("path", ["v1", "v0"])
def test_sdk_subscriber_behind_600_kbit_gets_a_lower_layer_then_the_top_one_back(netns, tmp_path, path):
    impaired = run_impaired_sfu(netns, tmp_path, to_server="", to_client=LIMIT, congestion_control=True)
    world = next(impaired)
    try:
        argv = netns.wrap([sys.executable, str(E2E_DIR / "bwe_limit_scenario.py"), "--url", world.sfu.ws_url,
                           "--seconds", str(LIMITED_S + AFTER_LIFT_S), *(["--v0"] if path == "v0" else [])])
        client = Client("bwe-limit", argv, tmp_path / "scenario.log")
        try:
            started = client.wait_for("event", timeout_s=60)
            assert started is not None, f"Bob never got the video\n{client.log_tail()}\n{world.sfu.log_tail()}"
            subscribed_at = started["at"]
            time.sleep(max(0.0, subscribed_at + LIMITED_S - time.time()))
            lifted_at = world.change(to_client="")["at"]
            done = client.wait_for("summary", timeout_s=AFTER_LIFT_S + 60)
        finally:
            client.finish()
        proxy = world.proxy_counters()
        context = f"{client.log_tail()}\n{world.sfu.log_tail()}"
        assert done is not None, f"no summary\n{context}"
        summary = done["summary"]
        assert "error" not in summary, f"{summary}\n{context}"
        per_second = {int(s): v for s, v in summary["per_second"].items()}
        result = analyse(per_second, subscribed_at, lifted_at)
        estimates = [line.split("downstream estimate ")[-1] for line in world.sfu.log.read_text(errors="replace")
                     .splitlines() if "downstream estimate" in line]
        print("METRICS", json.dumps({"path": path, "result": result, "server": summary.get("server"),
                                     "per_second": {s - int(subscribed_at): v for s, v in per_second.items()},
                                     "proxy": proxy}))
        print("\n".join(estimates[-12:]))
        media_links = [l for l in (proxy or {}).get("links", []) if l["to_client"]["sent"] > 300]
        assert media_links and any(l["to_client"]["dropped_queue"] >= 0 for l in media_links), proxy
        assert result["limited_fps"] >= MIN_FPS_LIMITED, result
        assert result["limited_lower_share"] >= 0.8, result
        assert result["top_back_after_s"] is not None and result["top_back_after_s"] <= MAX_RETURN_S, result
        # Audio went on the whole time: no second with less than half its usual frames.
        assert result["audio_min_per_s"] >= 0.5 * result["audio_median_per_s"] > 0, result
    finally:
        impaired.close()


def browser_token(identity: str, room: str) -> str:
    grants = api.VideoGrants(room_join=True, room=room)
    return api.AccessToken(DEV_API_KEY, DEV_API_SECRET).with_identity(identity).with_grants(grants).to_jwt()


def test_browser_publisher_sdk_subscriber_behind_600_kbit_gets_a_lower_layer_then_the_top_one_back(netns, tmp_path):
    reason = browser_missing()
    if reason is not None:
        pytest.skip(f"browser e2e: {reason}")
    impaired = run_impaired_sfu(netns, tmp_path, to_server="", to_client=LIMIT, congestion_control=True)
    world = next(impaired)
    browser = scenario = None
    try:
        config = {
            "wsUrl": world.sfu.ws_url,
            "participants": [{"identity": "tab", "token": browser_token("tab", "bwe-limit"),
                              "camera": {"width": 640, "height": 360, "fps": 30}}],
            "expect": {"tab": []}, "timeoutMs": 5_000, "holdMs": (LIMITED_S + AFTER_LIFT_S + 60) * 1000,
            "fakeCameraFps": 30,
        }
        browser = Client("chromium", netns.wrap(["node", str(BROWSER_DIR / "e2e_driver.mjs"), json.dumps(config)]),
                         tmp_path / "chromium.log", env=dict(os.environ, HOME=str(tmp_path)))
        scenario = Client("bwe-limit", netns.wrap([
            sys.executable, str(E2E_DIR / "bwe_limit_scenario.py"), "--url", world.sfu.ws_url, "--subscriber-only",
            "--seconds", str(LIMITED_S + AFTER_LIFT_S)]), tmp_path / "scenario.log")
        started = scenario.wait_for("event", timeout_s=90)
        assert started is not None, f"Bob never got the tab's video\n{scenario.log_tail()}\n{browser.log_tail()}"
        subscribed_at = started["at"]
        time.sleep(max(0.0, subscribed_at + LIMITED_S - time.time()))
        lifted_at = world.change(to_client="")["at"]
        done = scenario.wait_for("summary", timeout_s=AFTER_LIFT_S + 60)
        scenario.finish()
        browser.finish()
        proxy = world.proxy_counters()
        context = f"{scenario.log_tail()}\n{world.sfu.log_tail()}"
        assert done is not None, f"no summary\n{context}"
        summary = done["summary"]
        assert "error" not in summary, f"{summary}\n{context}"
        per_second = {int(s): v for s, v in summary["per_second"].items()}
        result = analyse(per_second, subscribed_at, lifted_at)
        log = world.sfu.log.read_text(errors="replace").splitlines()
        print("METRICS", json.dumps({"publisher": "chromium", "result": result, "server": summary.get("server"),
                                     "per_second": {s - int(subscribed_at): v for s, v in per_second.items()},
                                     "proxy": proxy}))
        print("\n".join(line.split("trio_sfu.media: ")[-1] for line in log
                        if "downstream estimate" in line or "allocation changed" in line))
        assert result["limited_fps"] >= MIN_FPS_LIMITED, result
        assert result["limited_lower_share"] >= 0.8, result
        assert result["top_back_after_s"] is not None and result["top_back_after_s"] <= MAX_RETURN_S, result
        assert result["audio_min_per_s"] >= 0.5 * result["audio_median_per_s"] > 0, result
    finally:
        for client in (scenario, browser):
            if client is not None:
                client.finish()
        impaired.close()
