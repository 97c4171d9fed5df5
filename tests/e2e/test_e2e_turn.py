"""Real clients behind a firewall inside the namespace reach the server only through TURN.

livekit-client in Chromium, with only TCP to the TURN/TLS port let through: inside the test's
network namespace iptables drops every UDP datagram except those of the
server's media port and its TURN relayed sockets (so the browser's own UDP, to the media port
and to TURN/UDP alike, is gone) and TCP to the ICE/TCP port. Two tabs must still join, publish
and decode each other's video and audio, and getStats must show that every PeerConnection's
selected path is a relay candidate whose relay protocol is TLS: the media went browser → TLS →
our TURN server → relayed socket → our media port, and back.

Chromium trusts the TURN server's certificate because the driver adds it to the NSS database
of the browser's HOME (certutil, Debian's libnss3-tools): the dev server's self-signed
certificate, whose path the server logs at start-up (trio_sfu.media.turn_tls says how).

The `livekit` Python SDK with UDP to TURN open but not to the media port: relayed over UDP.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from e2e_harness import E2E_DIR, Client, browser_missing, run_sfu
from test_e2e_browser import DRIVER, MIN_FRAMES, TAB_CAMERA, TAB_TONE_HZ, assert_received, token, write_tone_wav

pytestmark = pytest.mark.slow

# Below Linux's ephemeral ports (32768-60999), so no browser socket can pass as a relayed one.
RELAY_RANGE = (20000, 20999)
ICE_TCP_PORT = 7881
TURN_UDP_PORT = 3478  # the dev default
CERTIFICATE_LOG = re.compile(r"certificate=(\S+turn-cert\.pem)")


@pytest.fixture(autouse=True)
def _need_browser_and_tools():
    reason = browser_missing()
    if reason is None and shutil.which("iptables") is None and not os.path.exists("/usr/sbin/iptables"):
        reason = "iptables is not installed (scripts/test-deps.sh installs it)"
    if reason is None and shutil.which("certutil") is None:
        reason = "certutil is not installed (scripts/test-deps.sh installs libnss3-tools)"
    if reason is not None:
        pytest.skip(f"TURN browser e2e: {reason}")


@pytest.fixture
def turn_sfu(netns, tmp_path):
    config = tmp_path / "turn.yaml"
    config.write_text(f"turn:\n  relay_range_start: {RELAY_RANGE[0]}\n  relay_range_end: {RELAY_RANGE[1]}\n")
    yield from run_sfu(netns, tmp_path, ["--node-ip", netns.address, "--config", str(config)])


def iptables(netns, *rule: str) -> None:
    binary = shutil.which("iptables") or "/usr/sbin/iptables"
    subprocess.run(netns.wrap([binary, *rule]), check=True, capture_output=True, timeout=20)


def block_all_but_turn_tls(netns, media_port: int) -> None:
    """The client's firewall: no UDP but the server's own (media port, relayed sockets), no ICE/TCP."""
    iptables(netns, "-A", "OUTPUT", "-p", "udp", "--sport", str(media_port), "-j", "ACCEPT")
    iptables(netns, "-A", "OUTPUT", "-p", "udp", "--sport", f"{RELAY_RANGE[0]}:{RELAY_RANGE[1]}", "-j", "ACCEPT")
    iptables(netns, "-A", "OUTPUT", "-p", "udp", "-j", "DROP")
    iptables(netns, "-A", "OUTPUT", "-p", "tcp", "--dport", str(ICE_TCP_PORT), "-j", "DROP")


def test_two_tabs_behind_a_firewall_talk_through_turn_over_tls(netns, turn_sfu, clients, tmp_path):
    log = turn_sfu.log.read_text(errors="replace")
    found = CERTIFICATE_LOG.search(log)
    assert found, f"the dev server did not log its TURN certificate\n{turn_sfu.log_tail()}"
    certificate = found.group(1)
    media_port = int(turn_sfu.media[0].rsplit(":", 1)[1])
    block_all_but_turn_tls(netns, media_port)

    expect = {"tab-a": ["tab-b"], "tab-b": ["tab-a"]}
    participants = []
    for who in expect:
        wav = tmp_path / f"microphone-{who}.wav"
        write_tone_wav(wav, TAB_TONE_HZ[who])
        width, height = TAB_CAMERA[who]
        participants.append({"identity": who, "token": token(who, "turn-room"), "fakeAudioFile": str(wav),
                             "camera": {"width": width, "height": height}})
    config = {
        "wsUrl": turn_sfu.ws_url, "participants": participants, "expect": expect,
        "minFrames": MIN_FRAMES, "minAudioPackets": 50, "risingMs": 1000, "timeoutMs": 60000, "holdMs": 60000,
        "trustCertificate": certificate,
    }
    env = dict(os.environ, HOME=str(tmp_path))
    browser = Client("chromium", netns.wrap(["node", str(DRIVER), json.dumps(config)]),
                     tmp_path / "chromium.log", env=env)
    clients.append(browser)
    done = browser.wait_for("result", timeout_s=120)
    context = f"{browser.log_tail()}\n{turn_sfu.log_tail()}"
    assert done is not None, f"no result from the browser driver\n{context}"
    result = done["result"]
    for tab, remotes in expect.items():
        for remote in remotes:
            assert_received(result, tab, remote, context, tone_hz=TAB_TONE_HZ[remote], camera=TAB_CAMERA[remote])
    for tab in expect:
        pairs = result["statuses"][tab].get("selectedPairs") or []
        # Every PeerConnection once connected (the one over /rtc/v1, both over /rtc).
        assert pairs, f"{tab}: no selected pair\n{context}"
        for pair in pairs:
            local = pair["local"] or {}
            assert local.get("candidateType") == "relay" and local.get("relayProtocol") == "tls", (
                f"{tab} did not go through TURN over TLS: {pairs}\n{context}")


def test_python_sdk_behind_a_firewall_talks_through_turn_over_udp(netns, turn_sfu, clients, tmp_path):
    """The `livekit` Python SDK (libwebrtc) with UDP to the media port and ICE/TCP blocked, but
    UDP to TURN open: two participants decode each other through relayed candidates (TURN/UDP).

    Not over TLS: the SDK's libwebrtc does not take the dev certificate from SSL_CERT_FILE
    (tried: with only TURN/TLS open, the join times out), and trusting it otherwise would mean
    the machine's own CA store, which a test must not touch."""
    media_port = int(turn_sfu.media[0].rsplit(":", 1)[1])
    iptables(netns, "-A", "OUTPUT", "-p", "udp", "--sport", str(media_port), "-j", "ACCEPT")
    iptables(netns, "-A", "OUTPUT", "-p", "udp", "--sport", f"{RELAY_RANGE[0]}:{RELAY_RANGE[1]}", "-j", "ACCEPT")
    iptables(netns, "-A", "OUTPUT", "-p", "udp", "--dport", str(TURN_UDP_PORT), "-j", "ACCEPT")
    iptables(netns, "-A", "OUTPUT", "-p", "udp", "--sport", str(TURN_UDP_PORT), "-j", "ACCEPT")
    iptables(netns, "-A", "OUTPUT", "-p", "udp", "-j", "DROP")
    iptables(netns, "-A", "OUTPUT", "-p", "tcp", "--dport", str(ICE_TCP_PORT), "-j", "DROP")
    people = ["alice", "bob"]
    argv = netns.wrap([sys.executable, str(E2E_DIR / "sdk_scenario.py"), "--url", turn_sfu.ws_url,
                       "--room", "turn-sdk", *[a for p in people for a in ("-p", p)],
                       "--join-timeout", "40", "--media-timeout", "40"])
    client = Client("sdk", argv, tmp_path / "sdk.log")
    clients.append(client)
    done = client.wait_for("summary", timeout_s=120)
    client.finish()
    context = f"{client.log_tail()}\n{turn_sfu.log_tail()}"
    assert done is not None, f"the SDK scenario produced no summary\n{context}"
    summary = done["summary"]
    assert summary["phases"].get("join", {}).get("ok"), f"could not join: {summary['phases']}\n{context}"
    assert summary["phases"].get("media", {}).get("ok"), (
        f"no media through TURN: {json.dumps(summary.get('media'))}\n{context}")
    for me in people:
        pairs = summary["selected_pairs"][me]
        assert pairs and {p["pc"] for p in pairs} <= {"publisher", "subscriber"}, f"{me}: {pairs}\n{context}"
        for pair in pairs:
            local = pair["local"] or {}
            assert local.get("candidate_type") == "RELAY" and local.get("relay_protocol") == "TRANSPORT_UDP", (
                f"{me} did not go through TURN over UDP: {pairs}\n{context}")
