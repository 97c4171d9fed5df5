"""Three `livekit` Python SDK participants (real libwebrtc) in one room on our server.

Each publishes a sine (a tone unique to it) and solid-colour video (a colour unique to it); each
must decode both others' video and audio, and the decoded colour and tone must be the sender's,
which proves the SFU forwarded each stream to the right subscriber.  Then one participant
unpublishes its video (the others get `track_unpublished`, its audio keeps flowing) and one
leaves (the others get `participant_disconnected`).  The scenario runs in tests/e2e/sdk_scenario.py
inside the test's network namespace.
"""

from __future__ import annotations

import json
import sys

import pytest
from e2e_harness import E2E_DIR, Client

pytestmark = pytest.mark.slow

PARTICIPANTS = ["alice", "bob", "carol"]


def dominant_channel(rgb: list[int]) -> int:
    return max(range(3), key=lambda i: rgb[i])


def test_three_python_sdk_participants(netns, sfu, clients, tmp_path):
    argv = netns.wrap([sys.executable, str(E2E_DIR / "sdk_scenario.py"), "--url", sfu.ws_url,
                       "--room", "e2e-sdk", *[a for p in PARTICIPANTS for a in ("-p", p)], "--churn"])
    client = Client("sdk", argv, tmp_path / "sdk.log")
    clients.append(client)
    done = client.wait_for("summary", timeout_s=90)
    client.finish()
    context = f"{client.log_tail()}\n{sfu.log_tail()}"
    assert done is not None, f"the SDK scenario produced no summary\n{context}"
    summary = done["summary"]
    (tmp_path / "sdk_summary.json").write_text(json.dumps(summary, indent=1))
    phases = summary["phases"]
    detail = f"phases: {json.dumps(phases)}\n{context}"

    assert phases.get("join", {}).get("ok"), f"participants could not join and publish\n{detail}"
    assert phases.get("media", {}).get("ok"), (
        f"not every participant decoded audio and video from both others: "
        f"{json.dumps(summary.get('media'))}\n{detail}")

    expected = summary["expected"]
    for me in PARTICIPANTS:
        for them in PARTICIPANTS:
            if them == me:
                continue
            got = summary["media"][me][them]
            assert got["video_frames"] >= 15
            assert got["video_size"][0] > 0 and got["video_size"][1] > 0
            # Video round-trips RGB -> I420 -> VP8 -> I420 -> RGB: only the dominant channel is stable.
            assert dominant_channel(got["centre_rgb"]) == dominant_channel(expected[them]["colour"]), (
                f"{me} decoded {got['centre_rgb']} on {them}'s video track, {them} sends "
                f"{expected[them]['colour']}: forwarded the wrong stream?")
            tone = got["tone_hz"]
            assert tone is not None, f"{me} decoded too little sound from {them}: {got}"
            assert abs(tone - expected[them]["tone_hz"]) < 0.1 * expected[them]["tone_hz"], (
                f"{me} hears {tone:.0f} Hz from {them}, which sends {expected[them]['tone_hz']} Hz")
        # libwebrtc's own counters agree that RTP arrived (not only decoder output).
        inbound = summary["inbound_rtp"][me]
        audio = [s for s in inbound if s.get("kind") == "audio"]
        video = [s for s in inbound if s.get("kind") == "video"]
        assert len(audio) >= 2 and all(s["packets_received"] > 0 for s in audio), inbound
        assert len(video) >= 2 and all(s["frames_decoded"] > 0 for s in video), inbound

    roles = summary["roles"]
    unpublisher, leaver = roles["unpublisher"], roles["leaver"]
    participants = summary["participants"]
    assert phases.get("unpublish", {}).get("ok"), (
        f"after {unpublisher} unpublished its video: unpublished events "
        f"{ {p: participants[p]['unpublished'] for p in PARTICIPANTS} }, audio from it "
        f"{summary.get('audio_after_unpublish')}\n{detail}")
    for p in PARTICIPANTS:
        if p == unpublisher:
            continue
        events = [u for u in participants[p]["unpublished"] if u["identity"] == unpublisher]
        assert [u["kind"] for u in events] == ["video"], (p, participants[p]["unpublished"])
        assert events[0]["sid"] == participants[unpublisher]["video_sid"]
    assert phases.get("leave", {}).get("ok"), (
        f"after {leaver} left: disconnected events "
        f"{ {p: participants[p]['disconnected'] for p in PARTICIPANTS} }\n{detail}")
    for p in PARTICIPANTS:
        if p != leaver:
            assert participants[p]["disconnected"] == [leaver]
    # No wall-clock budget for the whole: each phase has its own deadline in sdk_scenario.py
    # (join 20 s, media 25 s, events 10 s), and one that misses it is not ok above.
