"""The playground page at `/`, used by two people in headless Chromium against `trio-sfu --dev`.

Each tab opens the page the server serves, types a room and a name and clicks Join (the page
mints its dev token through the server's development-only endpoint), then: each sees the other's
camera (the tile's <video> decodes frames, and keeps decoding), each tile's meter moves with the
other's microphone and shows a connection quality, a chat line typed in one tab appears in the
other (both ways), muting and unmuting the microphone and the camera shows on the other side,
a screen share appears as a tile of its own and goes away when stopped, and Leave takes the
first tab back to the form and its tiles off the second tab.

A screenshot of the first tab with both people in it is kept as an artifact in the test's
tmp_path; with TRIO_SFU_SAVE_SCREENSHOT=1 it also replaces docs/playground.png.
Driver: scripts/browser/playground_driver.mjs, run inside the test's network namespace.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
from e2e_harness import BROWSER_DIR, ROOT, Client, browser_missing
from test_e2e_browser import write_tone_wav

pytestmark = pytest.mark.slow

DRIVER = BROWSER_DIR / "playground_driver.mjs"
NAMES = ["Ada", "Grace"]
STEPS = ["open", "join", "video", "audio level and quality", "chat", "screenshot", "mute and unmute",
         "screen share", "leave"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _need_browser():
    reason = browser_missing()
    if reason is not None:
        pytest.skip(f"browser e2e: {reason}")


def test_two_people_in_the_playground(netns, sfu, clients, tmp_path):
    wav = tmp_path / "microphone.wav"
    write_tone_wav(wav, 440)
    screenshot = tmp_path / "playground.png"
    config = {
        "url": f"http://{sfu.host}:{sfu.port}/", "room": "playground-e2e", "names": NAMES,
        "minFrames": 15, "risingMs": 1000, "stepTimeoutMs": 30000,
        "fakeAudioFile": str(wav), "screenshot": str(screenshot),
    }
    env = dict(os.environ, HOME=str(tmp_path))
    browser = Client("chromium", netns.wrap(["node", str(DRIVER), json.dumps(config)]),
                     tmp_path / "chromium.log", env=env)
    clients.append(browser)
    done = browser.wait_for("result", timeout_s=240)
    browser.finish()
    context = f"{browser.log_tail()}\n{sfu.log_tail()}"
    assert done is not None, f"the playground driver produced no result\n{context}"
    result = done["result"]
    (tmp_path / "playground_result.json").write_text(json.dumps(result, indent=1))
    steps = result["steps"]
    for name in STEPS:
        assert name in steps, f"step {name!r} never ran (an earlier one failed): {json.dumps(steps)}\n{context}"
        assert steps[name]["ok"], f"step {name!r} failed: {json.dumps(steps[name])}\n{context}"

    opened = steps["open"]["opened"]
    assert all(o["contentType"] == "text/html; charset=utf-8" for o in opened), opened
    a, b = NAMES
    for viewer, shown in ((a, b), (b, a)):
        seen = steps["video"][f"{viewer} sees {shown}"]
        assert seen["later"]["frames"] > seen["first"]["frames"] >= 15, seen
        assert seen["later"]["width"] > 0 and seen["later"]["height"] > 0, seen
    for check in steps["audio level and quality"]["results"]:
        tile = check["tile"]
        assert tile["audioLevel"] > 0.01 and tile["quality"] in ("excellent", "good", "poor"), tile
    assert steps["chat"]["there"]["ok"] and steps["chat"]["back"]["ok"]

    assert screenshot.read_bytes().startswith(PNG_MAGIC), "the screenshot is not a PNG"
    if os.environ.get("TRIO_SFU_SAVE_SCREENSHOT") == "1":
        docs = ROOT / "docs"
        docs.mkdir(exist_ok=True)
        shutil.copyfile(screenshot, docs / "playground.png")
