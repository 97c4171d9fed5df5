"""Simulcast under impairment with Chromium tabs (issue 15): two `livekit-client` tabs (simulcast on,
the library's default) publish a 640×360 fake camera at 30 fps through trio-sfu behind the
user-space impairing proxy (trio_sfu.testing.impair_proxy) in the test's network namespace, each
client's link impaired both ways. Each tab must decode the other's video at ≥ 27 fps under 20 ± 5 ms
of jitter and ≥ 25 fps with 5 % loss on top, measured by getStats' framesDecoded over 20 s after a
warm-up. The server's forwarding counters are printed with the run (a `METRICS` line).
Driver: scripts/browser/e2e_driver.mjs (its check's first/later snapshots are the window).
"""

from __future__ import annotations

import json
import os
import sys

import pytest
from e2e_harness import (BROWSER_DIR, E2E_DIR, Client, browser_missing, downstream_losses, run_impaired_sfu,
                         udp_counters)
from livekit import api

from trio_sfu.config import DEV_API_KEY, DEV_API_SECRET

pytestmark = pytest.mark.slow

JITTER = "delay=0.02,jitter=0.005"
LOSS_AND_JITTER = "delay=0.02,jitter=0.005,loss=0.05"
CAMERA = {"width": 640, "height": 360, "fps": 30}
WARMUP_FRAMES = 150  # ~5 s at 30 fps: the publishers' estimates ramp up first
WINDOW_MS = 20_000


@pytest.fixture(autouse=True)
def _need_browser():
    reason = browser_missing()
    if reason is not None:
        pytest.skip(f"browser e2e: {reason}")


def token(identity: str, room: str) -> str:
    grants = api.VideoGrants(room_join=True, room=room)
    return api.AccessToken(DEV_API_KEY, DEV_API_SECRET).with_identity(identity).with_grants(grants).to_jwt()


#: Borderline (issue 15): with the estimator's fixes (rtp/bwe: no false over-use under jitter, loss
#: judged beyond chance) seven runs decoded 21.6/24.1, 26.0/24.7, 22.3/24.8, 24.6/27.3, 23.3/27.6,
#: 26.8/27.9, 26.6/21.1 fps of 30 under 5 % loss + 20 ± 5 ms, 0-6 layer switches a run. Since
#: copies of held packets are no longer forwarded (the receiver's dropped_duplicate) and with the
#: estimator's loss counted in its final state, four runs decoded 25.4/28.8, 25.4/25.4,
#: 27.7/27.8, 25.6/25.8: the subscribers' feedback read 4.5-5.7 % loss for 4.7-5.4 % the proxy
#: dropped, and no layer switched (nor did the loss-based half cut, in the run that counted its
#: cuts). What is left costs frames at keyframes: 4-10 PLIs from the subscribers a run (not
#: traced yet; two-hop repair of packets lost upstream is the suspect). Not counted as passing
#: until it is reliable. Two runs with the padding fixes (issue 15's NACK branch; Chromium pads
#: on RTX, so its upstream NACKs gave up nothing before either): 26.33/26.65 and 26.49/25.41
#: fps, 8 and 4 PLIs from the subscribers, 0 upstream sequence numbers given up, no layer switch.
LOSS_NOT_MET = pytest.mark.xfail(reason="issue 15: ≥ 25 fps under 5 % loss + 20 ± 5 ms is borderline (21.1–27.9)",
                                 strict=False)


@pytest.mark.parametrize(("link", "min_fps"), [(JITTER, 27.0), pytest.param(LOSS_AND_JITTER, 25.0, marks=LOSS_NOT_MET)],
                         ids=["jitter", "loss-jitter"])
def test_browser_simulcast_keeps_its_frame_rate_under_impairment(netns, tmp_path, link, min_fps):
    impaired = run_impaired_sfu(netns, tmp_path, to_server=link, to_client=link)
    world = next(impaired)
    try:
        udp_before = udp_counters(netns)
        tabs = ("tab-a", "tab-b")
        config = {
            "wsUrl": world.sfu.ws_url,
            "participants": [{"identity": t, "token": token(t, "simulcast-fps-browser"), "camera": CAMERA} for t in tabs],
            "expect": {"tab-a": ["tab-b"], "tab-b": ["tab-a"]},
            "minFrames": WARMUP_FRAMES, "minAudioPackets": 50, "risingMs": WINDOW_MS,
            "timeoutMs": WINDOW_MS + 40_000, "holdMs": 5_000, "fakeCameraFps": CAMERA["fps"],
        }
        browser = Client("chromium", netns.wrap(["node", str(BROWSER_DIR / "e2e_driver.mjs"), json.dumps(config)]),
                         tmp_path / "chromium.log", env=dict(os.environ, HOME=str(tmp_path)))
        try:
            done = browser.wait_for("result", timeout_s=WINDOW_MS / 1000 + 90)
            counters_client = Client("counters", netns.wrap([
                sys.executable, str(E2E_DIR / "simulcast_fps_scenario.py"), "--url", world.sfu.ws_url,
                "--counters-only"]), tmp_path / "counters.log")
            counters = counters_client.wait_for("server", timeout_s=20)
            counters_client.finish()
        finally:
            browser.finish()
        proxy = world.proxy_counters()
        udp = udp_counters(netns)
        context = f"{browser.log_tail()}\n{world.sfu.log_tail()}"
        assert done is not None, f"no result from the browser driver\n{context}"
        checks = done["result"]["checks"]
        fps, window_diag = {}, {}
        for tab, remote in (("tab-a", "tab-b"), ("tab-b", "tab-a")):
            check = checks[tab][remote]
            first, later = check.get("first"), check.get("later")
            if first and later and later["at"] > first["at"]:
                fps[tab] = round((later["framesDecoded"] - first["framesDecoded"]) * 1000 / (later["at"] - first["at"]), 2)
                window_diag[tab] = {k: round(later.get("videoDiag", {}).get(k, 0) - first.get("videoDiag", {}).get(k, 0), 3)
                                    for k in later.get("videoDiag", {})}
        outbound = {t: done["result"]["statuses"].get(t, {}).get("outbound") for t in tabs}
        print("METRICS", json.dumps({"link": link, "browser_fps": fps, "inbound_window": window_diag, "outbound": outbound,
                                     "server": counters and counters["server"],
                                     "proxy": proxy and [{k: l[k] for k in ("to_server", "to_client")}
                                                         for l in proxy["links"] if l["to_server"]["sent"] > 300],
                                     # what the subscribers' feedback reported lost, and the datagrams
                                     # sockets in the namespace dropped for a full buffer meanwhile
                                     "downstream": downstream_losses(world.sfu.log),
                                     "udp": {k: udp[k] - udp_before.get(k, 0) for k in udp}}))
        media_links = [l for l in (proxy or {}).get("links", []) if l["to_server"]["sent"] > 300]
        assert len(media_links) >= 2 and all(l["to_client"]["reordered"] > 0 for l in media_links), proxy
        for tab in tabs:
            assert tab in fps, f"{tab} never decoded {WARMUP_FRAMES} frames and then kept going: {checks}\n{context}"
            assert fps[tab] >= min_fps, f"{tab} decoded {fps[tab]} fps (want ≥ {min_fps}): {checks[tab]}"
    finally:
        impaired.close()
