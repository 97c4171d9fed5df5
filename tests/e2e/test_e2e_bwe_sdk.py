"""Downstream transport-wide CC with a real libwebrtc subscriber (the `livekit` Python SDK).

libwebrtc does receive-side transport-cc: it answers our subscriber offer keeping the
transport-wide sequence number extension and sends feedback about the numbers we stamp. Two SDK
participants exchange audio and video (half of each frame noise, so the encoder needs real
bitrate) for a while (tests/e2e/media_sdk_pair.py --noise --hold); the
server's log says, per subscriber, how much feedback it matched and the estimate. What must hold:
each subscriber's feedback arrived and was matched (acknowledged packets, about as many as were
stamped), and the estimate rose above the estimator's start value. Both signalling paths: /rtc/v1
(one PC both ways, the SDK's default: the down tracks are stamped on it with the id the client's
offer chose) and /rtc (v0, a subscriber PC). The stream allocator now asks for probes while a track
wants more than the estimate, so probing may lift the estimate too.
"""

from __future__ import annotations

import os
import re
import sys
import time

import pytest
from e2e_harness import E2E_DIR, Client, run_sfu

from rtp.bwe.estimator import DEFAULT_START_BPS

pytestmark = pytest.mark.slow

#: What the allocator's stand-in asks the probing server's subscribers to probe up to.
PROBE_BPS = 3_000_000

_LINE = re.compile(r"downstream bandwidth at close .*participant=(\S+)(.*)")
_FIELD = re.compile(r"(\w+)=(\d+)(?=\s|$)")
_NAMES = ("bps", "feedback", "acked", "lost", "remb", "probes", "probe_results", "stamped")


def closing_lines(log: str) -> dict[str, dict[str, int]]:
    """Each subscriber's closing bandwidth line, by participant: its integer key=value fields
    (the line grows fields as the estimator does; a line missing one of `_NAMES` is no match)."""
    out = {}
    for match in _LINE.finditer(log):
        fields = {key: int(value) for key, value in _FIELD.findall(match.group(2))}
        if all(name in fields for name in _NAMES):
            out[match.group(1)] = {name: fields[name] for name in _NAMES}
    return out


@pytest.fixture
def probing_sfu(netns, tmp_path):
    """The server with the allocator's stand-in asking every subscriber for probes (probing_sfu.py)."""
    os.environ["TRIO_SFU_TEST_PROBE_BPS"] = str(PROBE_BPS)
    try:
        yield from run_sfu(netns, tmp_path, ["--node-ip", netns.address],
                           command=(sys.executable, str(E2E_DIR / "probing_sfu.py")))
    finally:
        os.environ.pop("TRIO_SFU_TEST_PROBE_BPS", None)


#: The SDK's signalling paths: its default (/rtc/v1, one PC) and /rtc (v0) for both sides.
PATHS = {"v1": [], "v0": ["--v0", "alice", "--v0", "bob"]}


def run_pair(netns, sfu, clients, tmp_path, path: str = "v1") -> dict[str, dict[str, int]]:
    """Two SDK participants exchanging noisy video and audio for 10 s; each subscriber's closing
    bandwidth line from the server's log."""
    argv = netns.wrap([sys.executable, str(E2E_DIR / "media_sdk_pair.py"), "--url", sfu.ws_url, "--hold", "10",
                       "--noise", *PATHS[path]])
    client = Client("pair", argv, tmp_path / "pair.log")
    clients.append(client)
    done = client.wait_for("summary", timeout_s=90)
    client.finish()
    context = f"{client.log_tail()}\n{sfu.log_tail()}"
    assert done is not None and "error" not in done["summary"] and done["summary"]["media"], f"{done}\n{context}"
    deadline = time.monotonic() + 15
    while len(found := closing_lines(sfu.log.read_text(errors="replace"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    estimates = [line for line in sfu.log.read_text(errors="replace").splitlines() if "downstream estimate" in line]
    print("\n" + "\n".join(estimates[-6:]))
    for participant, got in found.items():
        print(f"{participant}: {got}")
    assert len(found) == 2, f"no closing bandwidth line for both subscribers: {found}\n{context}"
    for participant, got in found.items():
        assert got["feedback"] > 10 and got["stamped"] > 100, (participant, got)
        # Nearly every stamped packet reported back as received (the last few may be in flight).
        assert got["acked"] >= 0.9 * got["stamped"] and got["lost"] <= 0.05 * got["stamped"], (participant, got)
    return found


@pytest.mark.parametrize("path", list(PATHS))
def test_sdk_subscribers_send_transport_cc_feedback_that_is_matched(netns, sfu, clients, tmp_path, path):
    for participant, got in run_pair(netns, sfu, clients, tmp_path, path).items():
        # The estimate rose from its start on that feedback (by a fifth at least: not rounding).
        assert got["bps"] >= 1.2 * DEFAULT_START_BPS, (participant, got)


@pytest.mark.parametrize("path", list(PATHS))
def test_probes_to_a_libwebrtc_subscriber_raise_the_estimate(netns, probing_sfu, clients, tmp_path, path):
    """Padding-only packets on the video RTX SSRC, paced in clusters: libwebrtc reports them like
    media (they are in the feedback, so matched), and the clusters' arrival rates lift the estimate
    well past what the delay-based increase alone reaches (1.5 × the acknowledged media)."""
    for participant, got in run_pair(netns, probing_sfu, clients, tmp_path, path).items():
        assert got["probes"] >= 1 and got["probe_results"] >= 1, (participant, got)
        assert got["bps"] >= 1_000_000, (participant, got)
