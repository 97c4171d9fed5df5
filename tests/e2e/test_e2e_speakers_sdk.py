"""Active speakers and connection quality with the real `livekit` Python SDK (libwebrtc), through
trio-sfu in a network namespace: the SDK's own audio levels (RFC 6464, written by libwebrtc) make
the publisher an active speaker at the listening SDK, silence makes her drop out, and the
listener's SDK raises connection_quality_changed for both participants. The server runs as
`python -m trio_sfu.cli` inside the namespace (fixtures in tests/e2e/conftest.py)."""

from __future__ import annotations

import sys

import pytest
from e2e_harness import E2E_DIR, Client

pytestmark = pytest.mark.slow

#: The protobuf values of ConnectionQuality the SDK passes on (POOR 0, GOOD 1, EXCELLENT 2, LOST 3).
EXCELLENT, GOOD = 2, 1


def test_sdk_sees_the_speaker_and_connection_quality(netns, sfu, clients, tmp_path):
    argv = netns.wrap([sys.executable, str(E2E_DIR / "speakers_sdk_scenario.py"), "--url", sfu.ws_url])
    client = Client("speakers", argv, tmp_path / "speakers.log")
    clients.append(client)
    done = client.wait_for("summary", timeout_s=90)
    client.finish()
    context = f"{client.log_tail()}\n{sfu.log_tail()}"
    assert done is not None, f"no summary\n{context}"
    summary = done["summary"]
    assert "error" not in summary, f"{summary}\n{context}"
    assert summary["subscribed"], f"bob never received alice's microphone: {summary}\n{context}"
    assert summary["alice_speaking"], f"bob's SDK never named alice an active speaker: {summary}\n{context}"
    # Only alice speaks: bob publishes nothing and is never in a speakers list.
    assert all(s == ["alice"] or s == [] for s in summary["speaker_lists"]), summary["speaker_lists"]
    assert summary["alice_silent"], f"alice stayed an active speaker in silence: {summary}\n{context}"
    assert summary["quality_events"], f"no connection quality for alice at bob: {summary}\n{context}"
    who = {identity for identity, _ in summary["qualities"]}
    assert who >= {"alice", "bob"}, summary["qualities"]
    # A private namespace on one machine: nothing is lost, so nothing is worse than GOOD.
    assert all(quality in (EXCELLENT, GOOD) for _, quality in summary["qualities"]), summary["qualities"]
