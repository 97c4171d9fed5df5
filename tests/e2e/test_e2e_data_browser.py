"""Data through trio-sfu between livekit-client in Chromium and the `livekit` Python SDK: each
sends a reliable broadcast, a packet to the other's identity and a text stream, and calls the
other's RPC method; each must receive all of it, attributed to the sender, the text whole.
Drivers: data_browser_driver.mjs (the tab) and data_browser_peer.py (the SDK).
"""

from __future__ import annotations

import json
import os
import sys

import pytest
from e2e_harness import E2E_DIR, Client, browser_missing
from livekit import api

from trio_sfu.config import DEV_API_KEY, DEV_API_SECRET

pytestmark = pytest.mark.slow

ROOM = "e2e-data-browser"
WEB_TEXT = "".join(f"web line {i:04d}: pack my box with five dozen liquor jugs\n" for i in range(300))
PY_TEXT = "".join(f"py line {i:04d}: sphinx of black quartz, judge my vow\n" for i in range(300))


@pytest.fixture(autouse=True)
def _need_browser():
    reason = browser_missing()
    if reason is not None:
        pytest.skip(f"browser e2e: {reason}")


def token(identity: str) -> str:
    grants = api.VideoGrants(room_join=True, room=ROOM)
    return api.AccessToken(DEV_API_KEY, DEV_API_SECRET).with_identity(identity).with_grants(grants).to_jwt()


def test_chromium_and_python_sdk_exchange_data(netns, sfu, clients, tmp_path):
    config = {"wsUrl": sfu.ws_url, "identity": "web", "token": token("web"), "remote": "py",
              "text": WEB_TEXT, "remoteText": PY_TEXT, "timeoutMs": 60000}
    env = dict(os.environ, HOME=str(tmp_path))
    browser = Client("chromium", netns.wrap(["node", str(E2E_DIR / "data_browser_driver.mjs"), json.dumps(config)]),
                     tmp_path / "chromium.log", env=env)
    clients.append(browser)
    sdk = Client("sdk", netns.wrap([sys.executable, str(E2E_DIR / "data_browser_peer.py"), "--url", sfu.ws_url,
                                    "--room", ROOM, "--remote", "web", "--text", PY_TEXT,
                                    "--remote-text", WEB_TEXT]),
                 tmp_path / "sdk.log")
    clients.append(sdk)
    browser_done = browser.wait_for("result", timeout_s=90)
    sdk_done = sdk.wait_for("summary", timeout_s=30)
    browser.finish()
    sdk.finish()
    context = f"{browser.log_tail()}\n{sdk.log_tail()}\n{sfu.log_tail()}"
    assert browser_done is not None and sdk_done is not None, context
    web, py = browser_done["result"], sdk_done["summary"]
    (tmp_path / "results.json").write_text(json.dumps({"web": web, "py": py}, indent=1))
    assert not web["errors"] and "error" not in py, f"{web}\n{py}\n{context}"

    # The tab received the SDK's packets, attributed to "py" by the server.
    got = web["got"]
    texts = {(d["from"], d["text"], d["reliable"]) for d in got["data"]}
    assert ("py", "py-hello", True) in texts and ("py", "py-to-web", True) in texts, got["data"]
    assert got["rpcCalls"] == [["py", "from-py"]] and py["rpc_response"] == "FROM-PY from web", (got, py)
    assert web["textWhole"], [len(t[1]) for t in got["texts"]]

    # The SDK received the tab's packets (the lossy one on the lossy channel, if it arrived).
    received = {(d["from"], d["text"], d["reliable"]) for d in py["data"]}
    assert ("web", "web-hello", True) in received and ("web", "web-to-py", True) in received, py["data"]
    assert ("web", "web-lossy", True) not in received
    assert py["rpc_calls"] == [["web", "from-web"]] and web["sent"]["rpc"] == "FROM-WEB from py", (py, web)
    assert py["text_whole"], py["text_lens"]
