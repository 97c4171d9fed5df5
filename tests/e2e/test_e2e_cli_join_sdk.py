"""`trio-sfu join --publish-demo` seen by the `livekit` Python SDK (real libwebrtc).

The server (`trio-sfu --dev`) and both clients run in the test's network namespace: our CLI
publishes its moving picture and tone through our own client stack, the SDK participant
(tests/e2e/cli_demo_viewer.py) subscribes, and must see a publisher with a camera and a
microphone track, decode video frames at the demo's size that change over time, and hear the
demo's 440 Hz tone. Then Ctrl-C (SIGINT) ends the CLI with exit code 0.
"""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from e2e_harness import E2E_DIR, ROOT, Client, tail

pytestmark = pytest.mark.slow


def test_sdk_sees_the_cli_demo_publisher(netns, sfu, clients, tmp_path):
    pytest.importorskip("av", reason="the demo's real encodings need PyAV")
    pytest.importorskip("livekit.rtc", reason="needs the livekit Python SDK")
    join_log = tmp_path / "join.log"
    join_argv = netns.wrap([sys.executable, "-m", "trio_sfu.cli", "join", "--url", sfu.ws_url, "--room", "cli-demo",
                            "--identity", "demo-bot", "--publish-demo", "--video-size", "320x180", "--fps", "15",
                            "--bind-host", netns.address])
    with open(join_log, "wb") as log:
        join = subprocess.Popen(join_argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        viewer = Client("sdk-viewer", netns.wrap([sys.executable, str(E2E_DIR / "cli_demo_viewer.py"), "--url",
                                                  sfu.ws_url, "--room", "cli-demo", "--publisher", "demo-bot",
                                                  "--watch", "6"]), tmp_path / "viewer.log")
        clients.append(viewer)
        done = viewer.wait_for("summary", timeout_s=60)
        viewer.finish()
        context = f"{viewer.log_tail()}\n--- join log ---\n{tail(join_log)}\n{sfu.log_tail()}"
        assert done is not None, f"the SDK viewer produced no summary\n{context}"
        summary = done["summary"]
        assert summary["publisher_seen"], context
        by_kind = {t["kind"]: t for t in summary["tracks"]}
        assert set(by_kind) == {"KIND_VIDEO", "KIND_AUDIO"}, summary["tracks"]
        assert by_kind["KIND_VIDEO"]["source"] == "SOURCE_CAMERA" and by_kind["KIND_VIDEO"]["name"] == "demo"
        assert by_kind["KIND_AUDIO"]["source"] == "SOURCE_MICROPHONE" and by_kind["KIND_AUDIO"]["name"] == "tone"
        assert all(t["subscribed"] for t in summary["tracks"]), summary["tracks"]
        assert summary["video_frames"] >= 30, f"{summary}\n{context}"  # 15 fps for most of 6 s
        assert summary["video_size"] == [320, 180]
        assert summary["grid_changed"] is not None and summary["grid_changed"] > 0.1, summary
        tone = (summary["audio"] or {}).get("tone_hz")
        assert tone is not None and abs(tone - 440) < 44, f"{summary['audio']}\n{context}"

        join.send_signal(signal.SIGINT)
        code = join.wait(15)
    finally:
        if join.poll() is None:
            join.kill()
            join.wait(5)
    text = join_log.read_text(errors="replace")
    assert code == 0, text
    assert "subscribers 1" in text and "leaving room 'cli-demo' (sent video " in text, text
    assert "Traceback" not in text, text
