"""`/rtc/v1` (one peer connection per participant) with the real clients, and v0 and v1 side by side.

livekit-client 2.23 in Chromium and the `livekit` Python SDK 1.2 both try `/rtc/v1` first and fall
back to `/rtc` only when v1 is refused. Here each must stay on v1: seen from the client (the
page records every signalling URL path it opens and every RTCPeerConnection it makes; the SDK
logs "falling back to v0 path" when it falls back) and from the server (its `/metrics` counts
requests per signalling path, and each join is logged with its signalling). Each one publishes
and decodes the others' media. A client forced onto v0 and a v1 client in one room see each
other's media: both signalling modes share one room and one forwarding path.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from e2e_harness import E2E_DIR, Client, browser_missing
from test_e2e_browser import TAB_CAMERA, TAB_TONE_HZ, assert_received, start_browser

pytestmark = pytest.mark.slow

V0_REQUESTS = "trio_sfu_http_rtc_v0_requests_total"
V1_REQUESTS = "trio_sfu_http_rtc_v1_requests_total"
SDK_FALLBACK = "falling back to v0 path"


def server_counters(netns, sfu) -> dict[str, float]:
    """The server's `/metrics` counters, fetched from inside the namespace (loopback needs no
    credentials with `--dev`)."""
    fetch = "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
    done = subprocess.run(netns.wrap([sys.executable, "-c", fetch, f"http://{sfu.host}:{sfu.port}/metrics"]),
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    counters = {}
    for line in done.stdout.splitlines():
        match = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})? ([0-9.e+-]+)$", line)
        if match:
            counters[match.group(1)] = float(match.group(2))
    return counters


def joins_logged(sfu) -> dict[str, str]:
    """identity -> the signalling its join was logged with."""
    return {m.group(1): m.group(2) for m in re.finditer(
        r'participant joined .*identity=(\S+) signalling="([^"]+)"', sfu.log.read_text(errors="replace"))}


def run_sdk_pair(netns, sfu, clients, tmp_path, room: str, v0: tuple[str, ...] = (),
                 resubscribe: bool = False, extra_audio: int = 0) -> tuple[dict, str]:
    argv = [sys.executable, str(E2E_DIR / "media_sdk_pair.py"), "--url", sfu.ws_url, "--room", room,
            *(["--resubscribe"] if resubscribe else []), "--extra-audio", str(extra_audio)]
    for side in v0:
        argv += ["--v0", side]
    client = Client("pair", netns.wrap(argv), tmp_path / "pair.log")
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
    # Renegotiation after an unpublish reaches the subscriber.
    assert summary["unpublish"], f"bob was not told alice unpublished her video: {summary}\n{context}"
    return summary, (tmp_path / "pair.log").read_text(errors="replace")


def test_python_sdk_joins_through_rtc_v1_without_fallback(netns, sfu, clients, tmp_path):
    # alice publishes four audio tracks: one more than bob's join offer has audio m-lines.
    summary, client_log = run_sdk_pair(netns, sfu, clients, tmp_path, "v1-sdk", resubscribe=True, extra_audio=3)
    context = f"{client_log[-3000:]}\n{sfu.log_tail()}"
    # The server asked bob for another m-line and bob hears all four tracks.
    assert summary["all_audio"], f"{summary['bob']['loud_by_track']}\n{context}"
    assert re.search(r"asking the client for more m-lines .*audio=1",
                     sfu.log.read_text(errors="replace")), context
    # Unsubscribe and subscribe again on the one peer connection: both renegotiations land,
    # and the audio comes back.
    assert summary["unsubscribe"] and summary["resubscribe"], f"{summary}\n{context}"
    assert SDK_FALLBACK not in client_log, context
    assert joins_logged(sfu) == {"alice": "v1 single-pc", "bob": "v1 single-pc"}, context
    counters = server_counters(netns, sfu)
    assert counters.get(V0_REQUESTS, 0) == 0, counters
    assert counters.get(V1_REQUESTS, 0) >= 2, counters


def test_v0_and_v1_python_sdk_clients_see_each_other(netns, sfu, clients, tmp_path):
    # alice on /rtc (two peer connections), bob on /rtc/v1 (one).
    _, client_log = run_sdk_pair(netns, sfu, clients, tmp_path, "v0-meets-v1", v0=("alice",))
    context = f"{client_log[-3000:]}\n{sfu.log_tail()}"
    assert joins_logged(sfu) == {"alice": "v0 dual-pc", "bob": "v1 single-pc"}, context
    counters = server_counters(netns, sfu)
    assert counters.get(V0_REQUESTS, 0) >= 1 and counters.get(V1_REQUESTS, 0) >= 1, counters


@pytest.fixture
def _need_browser():
    reason = browser_missing()
    if reason is not None:
        pytest.skip(f"browser e2e: {reason}")


def run_tabs(netns, sfu, clients, tmp_path, room: str, v0: frozenset[str] = frozenset()) -> tuple[dict, str]:
    browser = start_browser(netns, sfu, clients, tmp_path, room, {"tab-a": ["tab-b"], "tab-b": ["tab-a"]},
                            tones=TAB_TONE_HZ, cameras=TAB_CAMERA, v0=v0)
    done = browser.wait_for("result", timeout_s=90)
    browser.finish()
    context = f"{browser.log_tail()}\n{sfu.log_tail()}"
    assert done is not None, f"the browser driver produced no result\n{context}"
    result = done["result"]
    for tab, remote in (("tab-a", "tab-b"), ("tab-b", "tab-a")):
        # The other tab's tone and camera shape: decoded from the other participant.
        assert_received(result, tab, remote, context, tone_hz=TAB_TONE_HZ[remote], camera=TAB_CAMERA[remote])
    return result, context


def test_chromium_joins_through_rtc_v1_with_one_peer_connection(_need_browser, netns, sfu, clients, tmp_path):
    result, context = run_tabs(netns, sfu, clients, tmp_path, "v1-tabs")
    for tab in ("tab-a", "tab-b"):
        status = result["statuses"][tab]
        # Seen from the client: one RTCPeerConnection, and only /rtc/v1 was ever opened (no
        # /rtc, no validate call: a failed v1 attempt would have fetched /rtc/v1/validate).
        assert status["peerConnections"] == 1, (tab, status, context)
        assert status["signalPaths"] and all(p == "ws /rtc/v1" for p in status["signalPaths"]), (tab, status)
    assert joins_logged(sfu) == {"tab-a": "v1 single-pc", "tab-b": "v1 single-pc"}, context
    counters = server_counters(netns, sfu)
    assert counters.get(V0_REQUESTS, 0) == 0, counters
    assert counters.get(V1_REQUESTS, 0) >= 2, counters


def test_chromium_v0_and_v1_tabs_see_each_other(_need_browser, netns, sfu, clients, tmp_path):
    result, context = run_tabs(netns, sfu, clients, tmp_path, "v0-meets-v1-tabs", v0=frozenset({"tab-b"}))
    a, b = result["statuses"]["tab-a"], result["statuses"]["tab-b"]
    assert a["peerConnections"] == 1 and all(p == "ws /rtc/v1" for p in a["signalPaths"]), a
    # The v0 tab: a publisher and a subscriber PC, signalling on /rtc.
    assert b["peerConnections"] == 2 and b["signalPaths"] and all(p == "ws /rtc" for p in b["signalPaths"]), b
    assert joins_logged(sfu) == {"tab-a": "v1 single-pc", "tab-b": "v0 dual-pc"}, context
