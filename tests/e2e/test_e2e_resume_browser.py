"""livekit-client 2.23 in Chromium loses its signal WebSocket and resumes on the same trio-sfu.

Two tabs join one server: `pub` publishes the fake camera and a 1 kHz microphone tone, `sub`
only subscribes. Once `sub` decodes `pub`'s media, the test closes `sub`'s signal WebSocket from
its page (under livekit-client, as a network blip would), then `pub`'s. livekit-client resumes
each time: `reconnect=1` with its sid, its own publisher ICE restart, our subscriber offer with
new ICE credentials, its SyncState.

Asserted: each tab emitted Reconnected and no Disconnected, kept its sid (the server joined each
identity once and resumed it once, and restarted ICE on both of its PCs), kept the peer
connections it had (a full reconnect makes new ones), neither saw a participant or track go away,
and `sub` keeps decoding video and hearing the tone after each drop. The longest gap in decoded
video, presented frames and heard tone around each drop is printed as an E2E METRIC and bounded.
Driver: scripts/browser/migration_driver.mjs (its `dropSignal` command) and migration_page.html,
the server `python -m trio_sfu.cli --dev`, all inside the test's network namespace.
"""

from __future__ import annotations

import json
import os
import time

import pytest
from e2e_harness import BROWSER_DIR, Client, browser_missing
from test_e2e_browser import BROWSER_TONE_HZ, record_metric, token, write_tone_wav
from test_e2e_migration_browser import (
    MAX_MOVE_GAP_MS,
    MIN_LOUD_SHARE,
    MIN_FRAMES,
    MIN_FRAMES_PER_PHASE,
    longest_gap_ms,
    longest_quiet_ms,
    phase_summary,
    window,
)
from test_e2e_migration_sdk import send, wait_nth

pytestmark = pytest.mark.slow

DRIVER = BROWSER_DIR / "migration_driver.mjs"
ROOM = "browser-resume"
PHASE_S = 5.0
RECONNECTED_WAIT_S = 20.0


@pytest.fixture(autouse=True)
def _need_browser():
    reason = browser_missing()
    if reason is not None:
        pytest.skip(f"browser e2e: {reason}")


@pytest.mark.parametrize("signalling", ["v1", "v0"])
def test_chromium_tabs_resume_after_losing_the_signal_connection(signalling, netns, sfu, clients, tmp_path,
                                                                 tmp_path_factory, pytestconfig):
    """`v1`: livekit-client's default, one peer connection (/rtc/v1); `v0`: two (/rtc)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    wav = tmp_path / "microphone.wav"
    write_tone_wav(wav, BROWSER_TONE_HZ)
    config = {
        "wsUrl": sfu.ws_url, "fakeAudioFile": str(wav), "logLevel": "debug",
        "participants": [{"identity": "pub", "token": token("pub", ROOM), "publish": True},
                         {"identity": "sub", "token": token("sub", ROOM), "publish": False}],
        "watch": {"tab": "sub", "remote": "pub"}, "minFrames": MIN_FRAMES, "minAudioPackets": 50,
        "timeoutMs": 45000, "simulcast": False, "singlePeerConnection": signalling == "v1",
    }
    browser = Client("chromium", netns.wrap(["node", str(DRIVER), json.dumps(config)]), tmp_path / "chromium.log",
                     env=dict(env, HOME=str(tmp_path)))
    clients.append(browser)

    def context() -> str:  # read at failure time, so the tails include the end
        return f"{browser.log_tail(200)}\n{sfu.log_tail(200)}"

    receiving = browser.wait_for("receiving", timeout_s=60)
    assert receiving is not None, f"sub never decoded pub's media\n{context()}"
    time.sleep(2.0)

    drops = []
    for n, identity in enumerate(("sub", "pub"), start=1):
        send(browser, {"mark": f"drop-{identity}"})
        send(browser, {"dropSignal": identity})
        dropped = wait_nth(browser, "dropped", n, 10)
        assert dropped is not None and dropped["dropped"].get("ok"), f"could not drop {identity}'s signal\n{context()}"
        drops.append(dropped["dropped"])
        time.sleep(PHASE_S)
    send(browser, {"mark": "end"})
    wait_nth(browser, "marked", 3, 5)

    browser.close_stdin()
    done = browser.wait_for("result", timeout_s=30)
    browser.finish()
    logs = context()
    assert done is not None, f"the browser driver printed no result\n{logs}"
    result = done["result"]
    (tmp_path / "browser_result.json").write_text(json.dumps(result, indent=1))
    marks = {m["label"]: m["t"] for m in result["marks"]}
    tabs = result["tabs"]
    events = {tab: [e for e in tabs[tab]["events"] if not e["event"].startswith("pc ")] for tab in tabs}
    timeline = tabs["sub"]["timeline"]
    phases = {
        "sub-dropped": phase_summary(window(timeline, marks["drop-sub"], marks["drop-pub"])),
        "pub-dropped": phase_summary(window(timeline, marks["drop-pub"], marks["end"])),
    }
    gaps = {}
    for identity, until in (("sub", marks["drop-pub"]), ("pub", marks["end"])):
        around = window(timeline, marks[f"drop-{identity}"] - 1000, until)
        gaps[f"drop_{identity}"] = {
            "decoded_gap_ms": longest_gap_ms(around, "framesDecoded"),
            "presented_gap_ms": longest_gap_ms(around, "presented"),
            "audio_quiet_ms": longest_quiet_ms(around),
            "reconnected_after_ms": next((e["t"] - marks[f"drop-{identity}"] for e in events[identity]
                                          if e["event"] == "Reconnected" and e["t"] >= marks[f"drop-{identity}"]), None),
        }
    record_metric(tmp_path_factory, pytestconfig, f"chromium_resume_media_gap_ms_{signalling}", gaps)
    brief = json.dumps({"drops": drops, "marks": marks, "phases": phases, "gaps": gaps, "events": events,
                        "pcs": {t: tabs[t]["pcs"] for t in tabs}, "errors": {t: tabs[t]["errors"] for t in tabs}},
                       indent=1)
    detail = f"{brief}\n(full result in {tmp_path / 'browser_result.json'})\n{logs}"

    sids = {tab: tabs[tab]["sid"] for tab in ("pub", "sub")}
    assert all(sids.values()), detail
    for tab in ("pub", "sub"):
        reconnected = [e for e in events[tab] if e["event"] == "Reconnected" and e["t"] >= marks[f"drop-{tab}"]]
        assert reconnected, f"{tab} never reported Reconnected after its signal dropped\n{detail}"
        assert gaps[f"drop_{tab}"]["reconnected_after_ms"] < RECONNECTED_WAIT_S * 1000, detail
        disconnected = [e for e in events[tab] if e["event"] == "Disconnected"]
        assert not disconnected, f"{tab}'s Room disconnected instead of resuming: {disconnected}\n{detail}"
        churn = [e for e in events[tab] if e["event"] in ("ParticipantDisconnected", "TrackUnpublished",
                                                           "TrackUnsubscribed", "LocalTrackUnpublished")]
        assert not churn, f"{tab} saw a participant or track go away: {churn}\n{detail}"
        assert tabs[tab]["state"] == "connected", detail
        # A resume keeps the PCs (ICE-restarted); a full reconnect closes them and makes new ones.
        new_pcs = [e for e in tabs[tab]["events"] if e["event"] == "pc created" and e["t"] >= marks["drop-sub"]]
        assert not new_pcs, f"{tab} made new peer connections after its signal dropped: {new_pcs}\n{detail}"

    # The server's word: each joined once, was resumed once, and both its PCs restarted ICE.
    log = sfu.log.read_text(errors="replace").splitlines()
    for identity, sid in sids.items():
        assert sum("participant joined" in line and sid in line for line in log) == 1, \
            f"{identity} joined again under a new sid instead of resuming\n{detail}"
        assert sum("resumed on a new signal connection" in line and sid in line for line in log) == 1, \
            f"{identity} was not resumed exactly once\n{detail}"
        # v0: each tab's subscriber PC (our offer) and pub's publisher PC (its own offer); v1: the
        # one PC, restarted by the tab's offer.
        pcs = (("subscriber", "publisher") if identity == "pub" else ("subscriber",)) if signalling == "v0" \
            else ("publisher",)
        for pc in pcs:
            # Restarted by the offer (ours, or the tab's), completed by the tab's checks under the new credentials.
            for what in ("ICE restarted", "ICE restart completed"):
                assert any(what in line and sid in line and f"pc={pc} " in line for line in log), \
                    f"no '{what}' for {identity}'s {pc} PC\n{detail}"

    for drop in ("drop_sub", "drop_pub"):
        for gap in ("decoded_gap_ms", "presented_gap_ms", "audio_quiet_ms"):
            got = gaps[drop][gap]
            assert got is not None and got < MAX_MOVE_GAP_MS, \
                f"{drop}: {gap} {got} ms (at most {MAX_MOVE_GAP_MS} ms): `sub` froze across the resume\n{detail}"
    for name, got in phases.items():
        assert got["samples"] >= 20, f"too few samples in phase {name}: {got}\n{detail}"
        assert got["frames_decoded"] >= MIN_FRAMES_PER_PHASE and got["frames_presented"] >= MIN_FRAMES_PER_PHASE, \
            f"sub stopped decoding pub's video in phase {name}: {got}\n{detail}"
        assert got["audio_samples"] > 0 and got["loud_share"] >= MIN_LOUD_SHARE, \
            f"sub stopped hearing pub in phase {name}: {got}\n{detail}"
