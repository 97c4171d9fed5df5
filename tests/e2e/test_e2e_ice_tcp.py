"""ICE over TCP with real clients: UDP to the SFU's media port is dropped by iptables inside the
test's network namespace, so a client can reach media only through the passive TCP candidate on
`rtc.tcp_port` (7881, the dev default, in the namespace).

Two Chromium tabs (livekit-client) must then publish, subscribe and decode each other's video
and hear each other's tone, with every PeerConnection's selected candidate pair TCP by the tab's
own getStats (local tcpType active, remote the server's passive candidate on 7881), and every
transport the server connected on the TCP path by its log. The same with the `livekit` Python
SDK (its libwebrtc gathers TCP candidates too) beside a tab. The iptables counters show the
clients did try UDP and were dropped.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
from e2e_harness import browser_missing
from test_e2e_browser import TAB_CAMERA, TAB_TONE_HZ, assert_received, chromium_and_python_sdk, run_two_tabs

pytestmark = pytest.mark.slow

ICE_TCP_PORT = 7881
IPTABLES = shutil.which("iptables") or "/usr/sbin/iptables"


@pytest.fixture(autouse=True)
def _need_browser_and_iptables():
    reason = browser_missing()
    if reason is not None:
        pytest.skip(f"browser e2e: {reason}")
    if not shutil.which(IPTABLES):
        pytest.skip("no iptables to block UDP (Debian package iptables; scripts/test-deps.sh installs it)")


def block_udp_to_media(netns, sfu) -> int:
    """Drop every UDP datagram to the SFU's media port inside the namespace; returns the port."""
    assert sfu.media, f"the ready line names no media address\n{sfu.log_tail()}"
    udp_port = int(sfu.media[0].rsplit(":", 1)[1])
    subprocess.run(netns.wrap([IPTABLES, "-A", "INPUT", "-p", "udp", "--dport", str(udp_port), "-j", "DROP"]),
                   check=True, timeout=15)
    return udp_port


def udp_dropped(netns, udp_port: int) -> int:
    """Packets the rule has dropped so far."""
    listing = subprocess.run(netns.wrap([IPTABLES, "-L", "INPUT", "-v", "-n", "-x"]), check=True, timeout=15,
                             capture_output=True, text=True).stdout
    for line in listing.splitlines():
        if "DROP" in line and f"dpt:{udp_port}" in line:
            return int(line.split()[0])
    raise AssertionError(f"the UDP drop rule is gone:\n{listing}")


def assert_server_connected_only_over_tcp(sfu, participants: int) -> None:
    """Each of `participants` connected its PCs (two over /rtc, the one over /rtc/v1, the clients'
    default), all on TCP paths."""
    lines = [line for line in sfu.log.read_text(errors="replace").splitlines() if "transport connected" in line]
    connected = {(re.search(r"participant=(\S+)", line).group(1), re.search(r"pc=(\S+)", line).group(1))
                 for line in lines}
    assert len({who for who, _ in connected}) == participants, (
        f"transports connected: {sorted(connected)}\n{sfu.log_tail()}")
    assert all("path=tcp" in line for line in lines), "\n".join(lines)


def assert_tab_on_tcp(result: dict, tab: str, context: str) -> None:
    pairs = result["statuses"][tab].get("selectedPairs") or []
    # Each of its PCs (one over /rtc/v1) on a TCP pair to the server's passive candidate.
    assert pairs, f"{tab} reports no selected pair\n{context}"
    for pair in pairs:
        local, remote = pair["local"], pair["remote"]
        assert local["protocol"] == "tcp" and remote["protocol"] == "tcp", f"{tab}: {pair}\n{context}"
        assert remote["port"] == ICE_TCP_PORT and remote["tcpType"] == "passive", f"{tab}: {pair}\n{context}"
        assert pair["bytesReceived"] > 0 and pair["bytesSent"] > 0, f"{tab}: {pair}\n{context}"


def test_two_chromium_tabs_over_ice_tcp_with_udp_blocked(netns, sfu, clients, tmp_path):
    udp_port = block_udp_to_media(netns, sfu)
    result, context = run_two_tabs(netns, sfu, clients, tmp_path)
    for tab, remote in (("tab-a", "tab-b"), ("tab-b", "tab-a")):
        assert_received(result, tab, remote, context, tone_hz=TAB_TONE_HZ[remote], camera=TAB_CAMERA[remote])
        assert_tab_on_tcp(result, tab, context)
    # On the server too, every PC of both tabs on the TCP path; and the tabs did try UDP first.
    assert_server_connected_only_over_tcp(sfu, participants=2)
    assert udp_dropped(netns, udp_port) > 0


def test_chromium_and_python_sdk_over_ice_tcp_with_udp_blocked(netns, sfu, clients, tmp_path):
    udp_port = block_udp_to_media(netns, sfu)
    chromium_and_python_sdk(netns, sfu, clients, tmp_path, "e2e-ice-tcp")
    result = json.loads((tmp_path / "browser_result.json").read_text())
    assert_tab_on_tcp(result, "web", sfu.log_tail())
    # The SDK's own view (libwebrtc's stats): both PCs on a TCP pair to the passive candidate.
    pairs = json.loads((tmp_path / "sdk_summary.json").read_text())["selected_pairs"]["py"]
    assert pairs and {p["pc"] for p in pairs} <= {"publisher", "subscriber"}, pairs
    for pair in pairs:
        assert pair["local"]["protocol"] == pair["remote"]["protocol"] == "tcp", pairs
        assert pair["remote"]["port"] == ICE_TCP_PORT and pair["remote"]["tcp_type"] == "CANDIDATE_PASSIVE", pairs
    # The tab's PCs and the SDK's: the SDK's libwebrtc connected over TCP as well.
    assert_server_connected_only_over_tcp(sfu, participants=2)
    assert udp_dropped(netns, udp_port) > 0
