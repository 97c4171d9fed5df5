"""livekit-client 2.23 in Debian's headless Chromium (fake camera and microphone) on our server.

Two tabs in one room must each decode the other's video (inbound-rtp `framesDecoded` rising),
receive its audio (`packetsReceived` and `totalSamplesReceived` rising) and hear its microphone
tone (Web Audio in the page: RMS and the strongest frequency). Each tab sends its own tone and
captures its camera in its own shape (16:9 and 4:3), so media the SFU routed back to its sender,
or to the wrong tab, fails on the frequency heard and the aspect ratio decoded; a tab and a `livekit` Python SDK
participant in one room must decode each other's video and hear each other's tone.  The time from
join to the first decoded frame is measured in the page, recorded to
<pytest basetemp>/e2e_metrics.json and printed to the terminal.
Driver: scripts/browser/e2e_driver.mjs and e2e_page.html, run inside the test's network namespace.
"""

from __future__ import annotations

import array
import contextlib
import json
import math
import os
import sys
import wave

import pytest
from e2e_harness import BROWSER_DIR, E2E_DIR, Client, browser_missing
from sdk_scenario import TONES_HZ
from livekit import api

from trio_sfu.config import DEV_API_KEY, DEV_API_SECRET

pytestmark = pytest.mark.slow

DRIVER = BROWSER_DIR / "e2e_driver.mjs"
MIN_FRAMES = 15
# A tab's microphone (a WAV file Chromium loops); 10 whole cycles per 10 ms frame.
BROWSER_TONE_HZ = 1000
#: The two tabs' own tones and camera sizes (whole cycles per 10 ms frame; aspect ratios that
#: every simulcast layer keeps): each must hear and see the other's, not its own.
TAB_TONE_HZ = {"tab-a": BROWSER_TONE_HZ, "tab-b": 700}
TAB_CAMERA = {"tab-a": (640, 360), "tab-b": (640, 480)}


@pytest.fixture(autouse=True)
def _need_browser():
    reason = browser_missing()
    if reason is not None:
        pytest.skip(f"browser e2e: {reason}")


def token(identity: str, room: str) -> str:
    grants = api.VideoGrants(room_join=True, room=room)
    return api.AccessToken(DEV_API_KEY, DEV_API_SECRET).with_identity(identity).with_grants(grants).to_jwt()


def write_tone_wav(path, hz: int, seconds: float = 2.0, rate: int = 48000) -> None:
    """A looping microphone input for Chromium: whole cycles only, so the loop has no click."""
    samples = array.array("h", (int(12000 * math.sin(2 * math.pi * hz * i / rate)) for i in range(int(rate * seconds))))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())


def start_browser(netns, sfu, clients, tmp_path, room: str, expect: dict[str, list[str]], tones: dict[str, int],
                  cameras: dict[str, tuple[int, int]] | None = None, timeout_ms: int = 45000,
                  v0: frozenset[str] = frozenset()) -> Client:
    """One tab per identity in `expect`, each with its own microphone tone (and so its own Chromium)
    and, if given, its own camera size; the tabs in `v0` join through /rtc (two peer connections)."""
    participants = []
    for who in expect:
        wav = tmp_path / f"microphone-{who}.wav"
        write_tone_wav(wav, tones[who])
        participant = {"identity": who, "token": token(who, room), "fakeAudioFile": str(wav)}
        if cameras and who in cameras:
            participant["camera"] = {"width": cameras[who][0], "height": cameras[who][1]}
        if who in v0:
            participant["singlePeerConnection"] = False
        participants.append(participant)
    config = {
        "wsUrl": sfu.ws_url,
        "participants": participants,
        "expect": expect, "minFrames": MIN_FRAMES, "minAudioPackets": 50, "risingMs": 1000,
        "timeoutMs": timeout_ms, "holdMs": 60000,
    }
    env = dict(os.environ, HOME=str(tmp_path))
    client = Client("chromium", netns.wrap(["node", str(DRIVER), json.dumps(config)]),
                    tmp_path / "chromium.log", env=env)
    clients.append(client)
    return client


def assert_received(result: dict, tab: str, remote: str, context: str, *, tone_hz: int | None = None,
                    camera: tuple[int, int] | None = None) -> None:
    check = result["checks"][tab][remote]
    status = result["statuses"].get(tab, {})
    assert check["ok"], (
        f"{tab} did not decode video and receive audio from {remote}: check {json.dumps(check)}, "
        f"tab stats {json.dumps(status.get('stats'))}, errors {status.get('errors')}, "
        f"page log {status.get('log')}\n{context}")
    first, later = check["first"], check["later"]
    assert later["framesDecoded"] > first["framesDecoded"] >= MIN_FRAMES
    assert later["frameWidth"] > 0 and later["frameHeight"] > 0
    if camera is not None:
        # The remote's camera shape (whichever simulcast layer came): its video, not another's.
        decoded, sent = later["frameWidth"] / later["frameHeight"], camera[0] / camera[1]
        assert abs(decoded - sent) < 0.02, (
            f"{tab} decodes {later['frameWidth']}x{later['frameHeight']} video from {remote}, which captures "
            f"{camera[0]}x{camera[1]}: another participant's video?\n{context}")
    assert later["audioPackets"] > first["audioPackets"] >= 50
    assert later["totalSamplesReceived"] > first["totalSamplesReceived"]
    if tone_hz is not None:
        # What the page hears through Web Audio: the sender's tone, not silence or noise.
        # (getStats' totalAudioEnergy is no help here: this headless Chromium reports 0 for
        # some remote tracks that play the tone.)
        heard = status.get("heard", {}).get(remote)
        assert heard is not None and heard["maxRms"] > 0.05 and heard["peakHz"] is not None, (
            f"{tab} hears nothing from {remote}: {heard}, audio stats {json.dumps(later)}\n{context}")
        assert abs(heard["peakHz"] - tone_hz) < 0.1 * tone_hz, (
            f"{tab} hears {heard['peakHz']} Hz from {remote}, which sends {tone_hz} Hz\n{context}")


def record_metric(tmp_path_factory, pytestconfig, name: str, value: object) -> None:
    path = tmp_path_factory.getbasetemp() / "e2e_metrics.json"
    metrics = json.loads(path.read_text()) if path.exists() else {}
    metrics[name] = value
    path.write_text(json.dumps(metrics, indent=1, sort_keys=True))
    # Straight to the terminal, past output capture, so the CI log always shows it.
    line = f"E2E METRIC {name} = {json.dumps(value)} (recorded in {path})"
    capture = pytestconfig.pluginmanager.get_plugin("capturemanager")
    reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        if reporter is not None:
            reporter.write_line("")
            reporter.write_line(line)
        else:
            print(line, file=sys.__stderr__, flush=True)


def run_two_tabs(netns, sfu, clients, tmp_path) -> tuple[dict, str]:
    browser = start_browser(netns, sfu, clients, tmp_path, "e2e-tabs", {"tab-a": ["tab-b"], "tab-b": ["tab-a"]},
                            tones=TAB_TONE_HZ, cameras=TAB_CAMERA)
    done = browser.wait_for("result", timeout_s=90)
    browser.finish()
    context = f"{browser.log_tail()}\n{sfu.log_tail()}"
    assert done is not None, f"the browser driver produced no result\n{context}"
    result = done["result"]
    (tmp_path / "browser_result.json").write_text(json.dumps(result, indent=1))
    return result, context


def test_two_chromium_tabs(netns, sfu, clients, tmp_path, tmp_path_factory, pytestconfig):
    result, context = run_two_tabs(netns, sfu, clients, tmp_path)
    for tab, remote in (("tab-a", "tab-b"), ("tab-b", "tab-a")):
        # The other tab's tone and camera shape, not its own.
        assert_received(result, tab, remote, context, tone_hz=TAB_TONE_HZ[remote], camera=TAB_CAMERA[remote])
        # The server offers ICE/TCP too, below UDP: with UDP open, media takes UDP.
        pairs = result["statuses"][tab]["selectedPairs"]
        assert pairs and all(p["local"]["protocol"] == p["remote"]["protocol"] == "udp" for p in pairs), (
            f"{tab} selected {pairs}\n{context}")
    first_frame_ms = {tab: result["statuses"][tab]["firstFrameMs"] for tab in ("tab-a", "tab-b")}
    record_metric(tmp_path_factory, pytestconfig, "chromium_join_to_first_decoded_frame_ms", {
        "tab-a<-tab-b": first_frame_ms["tab-a"].get("tab-b"),
        "tab-b<-tab-a": first_frame_ms["tab-b"].get("tab-a"),
        "connected_ms": {tab: result["statuses"][tab]["connectedMs"] for tab in ("tab-a", "tab-b")},
    })


def test_chromium_and_python_sdk(netns, sfu, clients, tmp_path):
    chromium_and_python_sdk(netns, sfu, clients, tmp_path, "e2e-mixed")


def test_chromium_and_python_sdk_on_dev_defaults(netns, sfu_dev_defaults, clients, tmp_path):
    """`trio-sfu --dev` with no --node-ip: the server finds the namespace's own address (and
    loopback) by itself, says so on its ready line, and both libwebrtc clients connect through it."""
    sfu = sfu_dev_defaults
    port = sfu.media[0].rsplit(":", 1)[1] if sfu.media else "?"
    # The interface address above loopback; nothing else exists in the namespace.
    assert sfu.media == (f"{netns.address}:{port}", f"127.0.0.1:{port}"), (
        f"ready line names {sfu.media}\n{sfu.log_tail()}")
    chromium_and_python_sdk(netns, sfu, clients, tmp_path, "e2e-dev-defaults")


def chromium_and_python_sdk(netns, sfu, clients, tmp_path, room: str) -> None:
    browser = start_browser(netns, sfu, clients, tmp_path, room, {"web": ["py"]}, tones={"web": BROWSER_TONE_HZ})
    sdk = Client("sdk", netns.wrap([sys.executable, str(E2E_DIR / "sdk_scenario.py"), "--url", sfu.ws_url,
                                    "--room", room, "-p", "py", "--remote", "web", "--wait-stdin",
                                    # Enough sound from the tab to measure its tone.
                                    "--remote-min-loud", "100"]),
                 tmp_path / "sdk.log")
    clients.append(sdk)
    # Both stay in the room until both have finished their checks.
    browser_done = browser.wait_for("result", timeout_s=90)
    sdk_ready = sdk.wait_for("media_ready", timeout_s=60)
    sdk.close_stdin()
    sdk_done = sdk.wait_for("summary", timeout_s=20)
    browser.finish()
    sdk.finish()
    context = f"{browser.log_tail()}\n{sdk.log_tail()}\n{sfu.log_tail()}"
    assert browser_done is not None, f"the browser driver produced no result\n{context}"
    # The SDK's first (here only) participant sends the first tone.
    assert_received(browser_done["result"], "web", "py", context, tone_hz=TONES_HZ[0])

    assert sdk_done is not None, f"the SDK participant produced no summary\n{context}"
    summary = sdk_done["summary"]
    (tmp_path / "sdk_summary.json").write_text(json.dumps(summary, indent=1))
    (tmp_path / "browser_result.json").write_text(json.dumps(browser_done["result"], indent=1))
    assert sdk_ready is not None and summary["phases"].get("media", {}).get("ok"), (
        f"the SDK participant did not decode the browser's media: phases {summary['phases']}, "
        f"media {json.dumps(summary.get('media'))}\n{context}")
    got = summary["media"]["py"]["web"]
    assert got["video_frames"] >= 15 and got["video_size"][0] > 0
    # The tab's microphone plays BROWSER_TONE_HZ: the SDK must hear that tone, not only concealment.
    assert got["tone_hz"] is not None, got
    assert abs(got["tone_hz"] - BROWSER_TONE_HZ) < 0.1 * BROWSER_TONE_HZ, got
    inbound = summary["inbound_rtp"]["py"]
    assert any(s.get("kind") == "audio" and s["packets_received"] > 0 for s in inbound), inbound
    assert any(s.get("kind") == "video" and s["frames_decoded"] > 0 for s in inbound), inbound
