"""Simulcast under impairment with real `livekit` SDK peers (issue 15): two peers publish 640×360@30
VP8 with simulcast on, through trio-sfu behind the user-space impairing proxy
(trio_sfu.testing.impair_proxy) in the test's network namespace, and each must decode the other's
video at ≥ 27 fps under 20 ± 5 ms of jitter (which reorders) and ≥ 25 fps under 5 % loss on top,
each direction of each client's link impaired on its own; a clean link through the same proxy is
the control (≥ 27 fps too). The server's forwarding counters and the
proxy's link counters are printed with the run (a `METRICS` line).

Under loss the server gives each subscriber a playout-delay floor (trio_sfu.forwarding.
playout_delay) so that frames a two-hop repair completed are still rendered: without it these
peers decoded every frame but rendered 24.4-28 fps (libwebrtc's renderer drops frames that come
due together); with it three runs of all three links rendered 29.55-29.95 fps under loss and
30.0 on the others, where no floor was raised.
"""

from __future__ import annotations

import json
import sys

import pytest
from e2e_harness import E2E_DIR, Client, downstream_losses, run_impaired_sfu, udp_counters

pytestmark = pytest.mark.slow

JITTER = "delay=0.02,jitter=0.005"
LOSS_AND_JITTER = "delay=0.02,jitter=0.005,loss=0.05"
#: Seconds before the 20 s window: the publishers' send-side estimates ramp up first. Under 5 %
#: loss that took the SDK longer than the scenario's default 6 s once, in a full CI run on this
#: 2-core machine: one publisher's top layer sent 588 frames where the other sent 793, the
#: first 7 s of the window at 11-19 fps, then 25-32 (its subscriber decoded what it got).
WARMUP_S = 10.0


#: The server's counts of jitter-buffer floors it raised (playout delay, issue 15): for a subscriber's
#: lossy downlink, and for the subscribers of a publisher whose packets needed resending.
PLAYOUT_RAISED = "trio_sfu_media_playout_delay_raised_total"
UPSTREAM_PLAYOUT_RAISED = "trio_sfu_media_receiver_playout_floor_raised_total"


@pytest.mark.parametrize(("link", "min_fps"), [("", 27.0), (JITTER, 27.0), (LOSS_AND_JITTER, 25.0)],
                         ids=["clean", "jitter", "loss-jitter"])
def test_sdk_simulcast_keeps_its_frame_rate_under_impairment(netns, tmp_path, link, min_fps):
    impaired = run_impaired_sfu(netns, tmp_path, to_server=link, to_client=link)
    world = next(impaired)
    try:
        udp_before = udp_counters(netns)
        argv = netns.wrap([sys.executable, str(E2E_DIR / "simulcast_fps_scenario.py"), "--url", world.sfu.ws_url,
                           "--simulcast", "1", "--warmup", str(WARMUP_S)])
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
        # Loss, and only loss, gets the subscribers a playout-delay floor (trio_sfu.forwarding.
        # playout_delay): a clean or merely jittery link pays no latency for it.
        raised = (summary["server"].get(PLAYOUT_RAISED, 0), summary["server"].get(UPSTREAM_PLAYOUT_RAISED, 0))
        assert (min(raised) >= 2) if "loss" in link else (raised == (0, 0)), summary["server"]
        for peer in ("alice", "bob"):
            assert summary[peer]["fps"] >= min_fps, f"{peer} decoded {summary[peer]}\n{summary['server']}"
    finally:
        impaired.close()
