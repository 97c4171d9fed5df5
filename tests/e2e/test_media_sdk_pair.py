"""Two real `livekit` Python SDK clients (libwebrtc) through trio-sfu in a network namespace: each
decodes the other's video (the right colour) and audio (loud frames from the other's sine), and
when one unpublishes its video the other is told. The server runs as `python -m trio_sfu.cli`
inside the namespace (fixtures in tests/e2e/conftest.py).
"""

from __future__ import annotations

import sys

import pytest
from e2e_harness import E2E_DIR, Client

pytestmark = pytest.mark.slow


def test_two_sdk_clients_exchange_audio_and_video(netns, sfu, clients, tmp_path):
    argv = netns.wrap([sys.executable, str(E2E_DIR / "media_sdk_pair.py"), "--url", sfu.ws_url])
    client = Client("pair", argv, tmp_path / "pair.log")
    clients.append(client)
    done = client.wait_for("summary", timeout_s=75)
    client.finish()
    context = f"{client.log_tail()}\n{sfu.log_tail()}"
    assert done is not None, f"no summary\n{context}"
    summary = done["summary"]
    assert "error" not in summary, f"{summary}\n{context}"
    assert summary["media"], f"media did not flow both ways: {summary}\n{context}"
    for me, them in (("alice", "bob"), ("bob", "alice")):
        got = summary[me]
        assert got["video_frames"] >= 15 and got["loud_audio_frames"] >= 25, got
        # RGB -> I420 -> VP8 -> I420 -> RGB keeps the dominant channel: it is the other's colour.
        sent = summary[them]["sent_colour"]
        assert max(range(3), key=lambda i: got["centre_rgb"][i]) == max(range(3), key=lambda i: sent[i]), (got, sent)
    assert summary["unpublish"], f"bob was not told alice unpublished her video: {summary}\n{context}"
    assert summary["bob"]["unpublished"] == [summary["unpublished_sid"]]
