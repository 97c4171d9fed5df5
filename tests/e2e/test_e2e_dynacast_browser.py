"""Dynacast observed from livekit-client 2.23 in Debian's headless Chromium: a publisher tab
(dynacast on, simulcast camera with rids q/h/f) and a subscriber tab.

While the subscriber takes the default HIGH the publisher's top layer (rid "f") sends; when the
subscriber asks for LOW the server tells the publisher (`subscribed_quality_update`, after its
5 s pause delay) and the publisher's `getStats`/`getParameters` show the top layer stopped —
encoding `active: false`, its bytesSent not increasing for 3 s — while rid "q" keeps sending and
the subscriber keeps decoding; asked for HIGH again, the top layer is active and sending again.
Driver: scripts/browser/dynacast_driver.mjs and dynacast_page.html, in the test's network namespace.
"""

from __future__ import annotations

import json
import os

import pytest
from e2e_harness import BROWSER_DIR, Client, browser_missing
from livekit import api

from trio_sfu.config import DEV_API_KEY, DEV_API_SECRET

pytestmark = pytest.mark.slow

DRIVER = BROWSER_DIR / "dynacast_driver.mjs"


@pytest.fixture(autouse=True)
def _need_browser():
    reason = browser_missing()
    if reason is not None:
        pytest.skip(f"browser e2e: {reason}")


def token(identity: str, room: str) -> str:
    grants = api.VideoGrants(room_join=True, room=room)
    return api.AccessToken(DEV_API_KEY, DEV_API_SECRET).with_identity(identity).with_grants(grants).to_jwt()


def test_dynacast_stops_and_restarts_the_publishers_top_layer(netns, sfu, clients, tmp_path):
    room = "e2e-dynacast"
    config = {"wsUrl": sfu.ws_url, "publisherToken": token("pub", room), "subscriberToken": token("sub", room),
              "camera": {"width": 960, "height": 540}, "phaseTimeoutMs": 30000, "quietMs": 3000}
    browser = Client("chromium", netns.wrap(["node", str(DRIVER), json.dumps(config)]),
                     tmp_path / "chromium.log", env=dict(os.environ, HOME=str(tmp_path)))
    clients.append(browser)
    done = browser.wait_for("result", timeout_s=150)
    browser.finish()
    context = f"{browser.log_tail()}\n{sfu.log_tail()}"
    assert done is not None, f"the dynacast driver produced no result\n{context}"
    result = done["result"]
    (tmp_path / "dynacast_result.json").write_text(json.dumps(result, indent=1))
    phases = result["phases"]
    for name, what in (("high1", "the top layer sending while the subscriber takes HIGH"),
                       ("low", "the top layer stopped (inactive, no bytes) with a LOW-only subscriber"),
                       ("high2", "the top layer sending again once the subscriber asks for HIGH")):
        assert name in phases and phases[name]["ok"], f"not seen: {what}: {json.dumps(phases.get(name))}\n{context}"
    low = phases["low"]
    before, after = low["before"]["pub"]["layers"], low["after"]["pub"]["layers"]
    assert after["f"]["bytesSent"] == before["f"]["bytesSent"] and after["f"]["encodingActive"] is False
    assert after["q"]["bytesSent"] > before["q"]["bytesSent"]
    # Qualities above the highest wanted are off, as LiveKit announces them: the middle one too.
    assert after["h"]["encodingActive"] is False
