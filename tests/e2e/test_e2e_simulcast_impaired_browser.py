"""Simulcast under impairment with Chromium tabs (issue 15): two `livekit-client` tabs (simulcast on,
the library's default) publish a 640×360 fake camera at 30 fps through trio-sfu behind the
user-space impairing proxy (trio_sfu.testing.impair_proxy) in the test's network namespace, each
client's link impaired both ways. Each tab must decode the other's video at ≥ 27 fps under 20 ± 5 ms
of jitter and ≥ 25 fps with 5 % loss on top, measured by getStats' framesDecoded over 20 s after a
warm-up. The server's forwarding counters, and where each tab's frames went (framesDropped,
jitter buffer delay, PLIs...), are printed with the run (a `METRICS` line).
Driver: scripts/browser/e2e_driver.mjs (its check's first/later snapshots are the window).

Under loss the server gives each subscriber a playout-delay floor (trio_sfu.forwarding.
playout_delay): without it Chromium's jitter buffer stayed at ~30 ms, each frame a repair
completed came too late, and 38-81 frames in 20 s were skipped (`framesDropped`; 21.1-27.9 fps
over many runs); with it three runs decoded 28.75-29.38 fps under loss (3-15 frames skipped),
30 fps under jitter alone, where no floor was raised.
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


#: The server's counts of jitter-buffer floors it raised (playout delay, issue 15): for a subscriber's
#: lossy downlink, and for the subscribers of a publisher whose packets needed resending.
PLAYOUT_RAISED = "trio_sfu_media_playout_delay_raised_total"
UPSTREAM_PLAYOUT_RAISED = "trio_sfu_media_receiver_playout_floor_raised_total"


@pytest.mark.parametrize(("link", "min_fps"), [(JITTER, 27.0), (LOSS_AND_JITTER, 25.0)],
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
        # Loss, and only loss, gets the subscribers a playout-delay floor (trio_sfu.forwarding.
        # playout_delay): a merely jittery link pays no latency for it.
        assert counters is not None, f"no server counters\n{context}"
        raised = (counters["server"].get(PLAYOUT_RAISED, 0), counters["server"].get(UPSTREAM_PLAYOUT_RAISED, 0))
        assert (min(raised) >= 2) if "loss" in link else (raised == (0, 0)), counters["server"]
        for tab in tabs:
            assert tab in fps, f"{tab} never decoded {WARMUP_FRAMES} frames and then kept going: {checks}\n{context}"
            assert fps[tab] >= min_fps, f"{tab} decoded {fps[tab]} fps (want ≥ {min_fps}): {checks[tab]}"
    finally:
        impaired.close()
