"""Data through trio-sfu between three real `livekit` Python SDK clients (libwebrtc's SCTP against
ours on both PCs): broadcast, one destination identity, ordered reliable delivery, lossy, an RPC
round trip and a text stream received whole. Scenario in data_sdk_scenario.py.
"""

from __future__ import annotations

import sys

import pytest
from e2e_harness import E2E_DIR, Client

pytestmark = pytest.mark.slow


def test_sdk_clients_exchange_data_rpc_and_text_streams(netns, sfu, clients, tmp_path):
    argv = netns.wrap([sys.executable, str(E2E_DIR / "data_sdk_scenario.py"), "--url", sfu.ws_url])
    client = Client("data", argv, tmp_path / "data.log")
    clients.append(client)
    done = client.wait_for("summary", timeout_s=120)
    client.finish()
    context = f"{client.log_tail()}\n{sfu.log_tail()}"
    assert done is not None, f"no summary\n{context}"
    s = done["summary"]
    assert "error" not in s, f"{s}\n{context}"
    assert s["joined"] and s["broadcast"], f"{s}\n{context}"
    # To one destination: alice got it, carol did not.
    assert s["targeted"] and not s["carol_got_targeted"], s
    assert s["order_at_alice"] == [f"seq-{i}" for i in range(50)], s["order_at_alice"]
    # Lossy in, lossy out (loopback loses nothing, but only kind is promised).
    assert s["lossy"] and not s["lossy_kinds_reliable"], s
    assert s["rpc_response"] == "PING from alice" and s["rpc_calls_at_bob"] == [["alice", "ping"]], s
    assert s["text"] and s["text_whole"], (s["text_len_at_bob"], s["text_sent_len"])
    assert s["carol_texts"] == 0, s
