"""Simulcast under impairment with real `livekit` SDK peers (issue 15): two peers publish 640×360@30
VP8 with simulcast on, through trio-sfu behind the user-space impairing proxy
(trio_sfu.testing.impair_proxy) in the test's network namespace, and each must decode the other's
video at ≥ 27 fps under 20 ± 5 ms of jitter (which reorders) and ≥ 25 fps under 5 % loss on top,
each direction of each client's link impaired on its own; a clean link through the same proxy is
the control (≥ 27 fps too). The server's forwarding counters and the
proxy's link counters are printed with the run (a `METRICS` line).
"""

from __future__ import annotations

import json
import sys

import pytest
from e2e_harness import E2E_DIR, Client, downstream_losses, run_impaired_sfu, udp_counters

pytestmark = pytest.mark.slow

JITTER = "delay=0.02,jitter=0.005"
LOSS_AND_JITTER = "delay=0.02,jitter=0.005,loss=0.05"


#: Not reliable yet (issue 15). Since the estimator stopped reading jitter as over-use and 5 %
#: random loss as congestion (rtp/bwe), subscribers stay on the top layer (0 layer switches in 9
#: of 10 runs) and 19 of 20 peers decoded ≥ 25 fps (25.0–27.9, often within 0.3 of it); one run's
#: subscriber started on the low layer (its startup probe gave no result; retried since) and
#: decoded 24.4. What is left is two-hop repair: ~10 % of the subscribers' NACKs find the packet
#: missing (lost upstream, not yet repaired). Three later runs: 26.9/28.0, 26.7/27.7, 27.1/26.4 fps,
#: the subscribers' feedback reading 4.7-5.8 % loss for 4.7-5.3 % the proxy dropped, no layer
#: switch (and no loss-based cut in the run that counted them). The 12-17 % of its upstream NACKs
#: the server gave up were lost padding (these publishers pad on the media SSRC, without RTX, and
#: never resend padding): no longer NACKed, two runs gave up 7 of 522 and 2 of 471 (none media)
#: and decoded 27.15/26.95 and 27.3/26.95 fps, 5 and 1 PLIs from the subscribers.
LOSS_NOT_MET = pytest.mark.xfail(reason="issue 15: ≥ 25 fps under 5 % loss + 20 ± 5 ms met in 19 of 20 peers (24.4–27.9)",
                                 strict=False)


@pytest.mark.parametrize(("link", "min_fps"), [("", 27.0), (JITTER, 27.0),
                                               pytest.param(LOSS_AND_JITTER, 25.0, marks=LOSS_NOT_MET)],
                         ids=["clean", "jitter", "loss-jitter"])
def test_sdk_simulcast_keeps_its_frame_rate_under_impairment(netns, tmp_path, link, min_fps):
    impaired = run_impaired_sfu(netns, tmp_path, to_server=link, to_client=link)
    world = next(impaired)
    try:
        udp_before = udp_counters(netns)
        argv = netns.wrap([sys.executable, str(E2E_DIR / "simulcast_fps_scenario.py"), "--url", world.sfu.ws_url,
                           "--simulcast", "1"])
        client = Client("simulcast-fps", argv, tmp_path / "fps.log")
        try:
            done = client.wait_for("summary", timeout_s=120)
        finally:
            client.finish()
        proxy = world.proxy_counters()
        udp = udp_counters(netns)
        context = f"{client.log_tail()}\n{world.sfu.log_tail()}"
        assert done is not None, f"no summary\n{context}"
        summary = done["summary"]
        print("METRICS", json.dumps({"link": link, "fps": {p: summary.get(p, {}).get("fps") for p in ("alice", "bob")},
                                     "by_width": {p: summary.get(p, {}).get("by_width") for p in ("alice", "bob")},
                                     "sdk_stats": {p: {k: summary.get(p, {}).get(k) for k in ("sent", "received")}
                                                   for p in ("alice", "bob")},
                                     "server": summary.get("server"), "proxy": proxy,
                                     # what the subscribers' feedback reported lost, and the datagrams
                                     # sockets in the namespace dropped for a full buffer meanwhile
                                     "downstream": downstream_losses(world.sfu.log),
                                     "udp": {k: udp[k] - udp_before.get(k, 0) for k in udp}}))
        assert "error" not in summary, f"{summary}\n{context}"
        # The proxy really impaired: every client link lost and reordered what it was told to.
        # (A client's candidate pairs that lost the ICE race leave links with a few checks only.)
        media_links = [l for l in (proxy or {}).get("links", []) if l["to_server"]["sent"] > 300]
        assert len(media_links) >= 2, proxy
        for direction in ("to_server", "to_client"):
            if "jitter" in link:
                assert all(l[direction]["reordered"] > 0 for l in media_links), proxy
            if "loss" in link:
                assert all(l[direction]["dropped_loss"] > 0 for l in media_links), proxy
        for peer in ("alice", "bob"):
            assert summary[peer]["fps"] >= min_fps, f"{peer} decoded {summary[peer]}\n{summary['server']}"
    finally:
        impaired.close()
