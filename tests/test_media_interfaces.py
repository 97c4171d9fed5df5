"""Interface addresses and the media addresses a configuration offers.

The OS enumeration (trio_sfu.media.interfaces: getifaddrs through ctypes) is checked against
`ip -j addr` (iproute2 asking the kernel over netlink: another path to the same truth) on this
machine and inside a fresh network namespace whose addresses the test chose; the policy
(which addresses become candidates, in which order) on lists written here; and the whole server
in development mode with two local addresses, joined by our own client, whose ICE agent fails
a check answered from another address than it was sent to.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio

import server_fixtures
from server_fixtures import API_KEY, API_SECRET, mint_token
from trio_sfu.client import LiveKitClient
from trio_sfu.client.senders import send_synthetic_audio
from trio_sfu.config import ServerConfig, config_from_mapping
from trio_sfu.media.interfaces import InterfaceAddress, interface_addresses, usable_addresses
from trio_sfu.media.service import (LOOPBACK_PREFERENCE, REAL_PREFERENCE, MediaAddresses, candidates_for,
                                    media_addresses)
from trio_sfu.server import Server
from trio_sfu.testing.netns import NetworkNamespace, unavailable_reason

V4, V6 = socket.AF_INET, socket.AF_INET6
ROOT = Path(__file__).resolve().parents[1]


def addr(interface: str, address: str, *, up: bool = True, loopback: bool = False) -> InterfaceAddress:
    family = V6 if ":" in address else V4
    return InterfaceAddress(interface, address, socket.AddressFamily(family), up, loopback)


#: A laptop: wired and Wi-Fi, a docker bridge, a downed VPN, a link-local leftover, IPv6, loopback.
LAPTOP = [
    addr("lo", "127.0.0.1", loopback=True),
    addr("lo", "::1", loopback=True),
    addr("eth0", "192.168.1.5"),
    addr("eth0", "fe80::1c2b:3cff:fe4d:5e6f"),
    addr("eth0", "2001:db8::5"),
    addr("wlan0", "169.254.10.20"),
    addr("wlan0", "10.1.2.3"),
    addr("docker0", "172.17.0.1"),
    addr("tun0", "10.8.0.2", up=False),
]


def ip_json_addresses(argv_prefix: list[str]) -> set[tuple[str, str]]:
    """(interface, address) of every IPv4/IPv6 address `ip -j addr` lists."""
    out = subprocess.run([*argv_prefix, "ip", "-j", "addr"], capture_output=True, text=True, check=True, timeout=15)
    found = set()
    for link in json.loads(out.stdout):
        for info in link.get("addr_info", []):
            if info.get("family") in ("inet", "inet6"):
                found.add((link["ifname"], info["local"]))
    return found


# ---- the OS's list -----------------------------------------------------------------------------

def test_interface_addresses_match_what_the_kernel_lists():
    found = interface_addresses()
    assert any(a.address == "127.0.0.1" and a.loopback and a.up and a.family == V4 for a in found), found
    names = {name for _, name in socket.if_nameindex()}
    assert {a.interface for a in found} <= names
    if shutil.which("ip") is None:
        pytest.skip("no `ip` command to compare with (Debian package iproute2)")
    assert {(a.interface, a.address) for a in found} == ip_json_addresses([])


def test_interface_addresses_in_a_namespace_of_known_addresses():
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"needs a private network namespace: {reason}")
    with NetworkNamespace.create() as ns:
        code = ("import json; from trio_sfu.media.interfaces import interface_addresses as f; "
                "print(json.dumps([[a.interface, a.address, a.up, a.loopback] for a in f()]))")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        out = subprocess.run(ns.wrap([sys.executable, "-c", code]), capture_output=True, text=True, timeout=30,
                             env=env, cwd=ROOT, check=True)
        found = [tuple(row) for row in json.loads(out.stdout)]
        ipv4 = sorted(row for row in found if ":" not in row[1])
        assert ipv4 == [("lo", "127.0.0.1", True, True), ("t0", ns.address, True, False)], found
        assert {(row[0], row[1]) for row in found} == ip_json_addresses(ns.wrap([]))


# ---- the policy --------------------------------------------------------------------------------

def addresses(found: list[InterfaceAddress]) -> list[str]:
    return [a.address for a in found]


def test_usable_addresses_skip_down_link_local_and_other_families_and_put_loopback_last():
    assert addresses(usable_addresses(LAPTOP, include_loopback=False)) == ["192.168.1.5", "10.1.2.3", "172.17.0.1"]
    assert addresses(usable_addresses(LAPTOP, include_loopback=True)) == [
        "192.168.1.5", "10.1.2.3", "172.17.0.1", "127.0.0.1"]
    # The default route's address leads; the rest keep the OS's order.
    assert addresses(usable_addresses(LAPTOP, include_loopback=True, preferred="10.1.2.3")) == [
        "10.1.2.3", "192.168.1.5", "172.17.0.1", "127.0.0.1"]
    # IPv6 when asked for: global only, never link-local.
    assert addresses(usable_addresses(LAPTOP, include_loopback=True, families=(V4, V6))) == [
        "192.168.1.5", "2001:db8::5", "10.1.2.3", "172.17.0.1", "127.0.0.1", "::1"]


def test_interface_filters_are_livekits():
    # includes: only those interfaces (loopback too is an interface the filter must name).
    assert addresses(usable_addresses(LAPTOP, include_loopback=True, includes=["docker0"])) == ["172.17.0.1"]
    assert addresses(usable_addresses(LAPTOP, include_loopback=True, includes=["docker0", "lo"])) == [
        "172.17.0.1", "127.0.0.1"]
    # includes win over excludes, as in LiveKit's filter.
    assert addresses(usable_addresses(LAPTOP, include_loopback=False, includes=["eth0"], excludes=["eth0"])) == [
        "192.168.1.5"]
    assert addresses(usable_addresses(LAPTOP, include_loopback=False, excludes=["docker0", "wlan0"])) == [
        "192.168.1.5"]
    # Nothing but loopback left: loopback, so a machine off the network still serves itself.
    assert addresses(usable_addresses(LAPTOP, include_loopback=False, includes=["lo"])) == ["127.0.0.1"]
    assert usable_addresses(LAPTOP, include_loopback=True, includes=["nope0"]) == []


def dev_config(**rtc: object) -> ServerConfig:
    config = ServerConfig(development=True, keys={"k": "s"})
    for name, value in rtc.items():
        setattr(config.rtc, name, value)
    return config


def plan(config: ServerConfig, found: list[InterfaceAddress] = LAPTOP, route: str = "10.1.2.3") -> MediaAddresses:
    return media_addresses(config, lambda: list(found), lambda: route)


def test_media_addresses_per_configuration():
    # --dev: every interface address, default route first, loopback last; signal stays on loopback.
    config = dev_config()
    assert config.effective_bind_addresses() == ["127.0.0.1"]
    assert plan(config) == MediaAddresses(bind=("10.1.2.3", "192.168.1.5", "172.17.0.1", "127.0.0.1"))
    # enable_loopback_candidate: false wins over the development default; outside dev it is off ...
    assert plan(dev_config(enable_loopback_candidate=False)).bind == ("10.1.2.3", "192.168.1.5", "172.17.0.1")
    production = ServerConfig(keys={"k": "s"})
    assert plan(production).bind == ("10.1.2.3", "192.168.1.5", "172.17.0.1")
    # ... unless asked for.
    production.rtc.enable_loopback_candidate = True
    assert plan(production).bind[-1] == "127.0.0.1"
    # A wildcard --bind is "every address" for media too.
    assert plan(ServerConfig(bind_addresses=["0.0.0.0"], development=True)).bind[-1] == "127.0.0.1"

    # --node-ip: that one address, bound on every address when the signal port is on loopback.
    assert plan(dev_config(node_ip="198.18.0.1")) == MediaAddresses(bind=("0.0.0.0",), advertise=("198.18.0.1",))
    assert plan(dev_config(node_ip="127.0.0.1")) == MediaAddresses(bind=("127.0.0.1",), advertise=("127.0.0.1",))
    assert plan(ServerConfig(bind_addresses=["192.168.1.5"], rtc=dev_config(node_ip="203.0.113.9").rtc)) == (
        MediaAddresses(bind=("192.168.1.5",), advertise=("203.0.113.9",)))
    # A specific --bind: that address.
    assert plan(ServerConfig(bind_addresses=["192.168.1.5"], development=True)) == MediaAddresses(
        bind=("192.168.1.5",), advertise=("192.168.1.5",))


def test_media_addresses_when_the_os_fails_or_the_filter_leaves_nothing():
    def broken() -> list[InterfaceAddress]:
        raise OSError(38, "getifaddrs is not available here")

    assert media_addresses(dev_config(), broken, lambda: "10.1.2.3") == MediaAddresses(bind=("10.1.2.3",))
    config = dev_config()
    config.rtc.interfaces.includes = ["eth9"]
    with pytest.raises(OSError, match="no usable media address.*eth0 192.168.1.5"):
        plan(config)


def test_candidates_rank_interface_addresses_above_loopback():
    candidates = candidates_for(["10.1.2.3", "192.168.1.5", "127.0.0.1"], 7882)
    priorities = [int(c.split()[3]) for c in candidates]
    assert priorities == sorted(priorities, reverse=True) and len(set(priorities)) == 3
    assert [c.split()[0] for c in candidates] == ["1", "2", "3"]  # a foundation per address
    assert priorities[0] == (126 << 24) | (REAL_PREFERENCE << 8) | 255
    assert priorities[2] == (126 << 24) | (LOOPBACK_PREFERENCE << 8) | 255
    assert [c.split()[4] for c in candidates] == ["10.1.2.3", "192.168.1.5", "127.0.0.1"]
    # A lone address (--node-ip 127.0.0.1) keeps the candidate it always had.
    assert candidates_for(["127.0.0.1"], 7882) == ("1 1 udp 2130706431 127.0.0.1 7882 typ host",)


def test_config_file_interfaces_and_loopback_keys():
    config, warnings = config_from_mapping({
        "keys": {"k": "s"},
        "rtc": {"interfaces": {"includes": ["eth0"], "excludes": ["docker0"]}, "enable_loopback_candidate": False},
    })
    assert warnings == []
    assert config.rtc.interfaces.includes == ["eth0"] and config.rtc.interfaces.excludes == ["docker0"]
    assert config.rtc.enable_loopback_candidate is False and not config.rtc.loopback_candidate(True)
    default, _ = config_from_mapping({"keys": {"k": "s"}})
    assert default.rtc.loopback_candidate(True) and not default.rtc.loopback_candidate(False)
    from trio_sfu.config import ConfigError
    with pytest.raises(ConfigError, match="rtc.interfaces.includes"):
        config_from_mapping({"rtc": {"interfaces": {"includes": [3]}}})
    with pytest.raises(ConfigError, match="rtc.interfaces"):
        config_from_mapping({"rtc": {"interfaces": ["eth0"]}})
    with pytest.raises(ConfigError, match="enable_loopback_candidate"):
        config_from_mapping({"rtc": {"enable_loopback_candidate": "yes"}})


# ---- the whole server --------------------------------------------------------------------------

#: 127.0.0.2 plays the LAN address (any 127/8 address is local on Linux), 127.0.0.1 loopback.
TWO_ADDRESSES = [addr("lo", "127.0.0.1", loopback=True), addr("t0", "127.0.0.2")]


async def test_dev_server_offers_every_address_and_answers_from_the_one_used():
    """A development server with two local addresses and no --node-ip offers both (the
    interface address first) and our client, whose ICE agent fails a check answered from an
    address other than the one it was sent to, connects on the first and gets media. Bound to one
    wildcard socket the server would answer checks to 127.0.0.2 from 127.0.0.1 (see
    test_media_udp_mux), the client would fail that pair and end up on loopback."""
    config = ServerConfig(port=0, keys={API_KEY: API_SECRET}, development=True)
    config.rtc.udp_port = 0
    config.rtc.tcp_port = 0  # ICE/TCP off: not what this test is about, and 7881 may be taken
    assert config.rtc.node_ip is None and config.effective_bind_addresses() == ["127.0.0.1"]
    baseline = server_fixtures.leak_baseline()
    server = Server(config, enable_media=True)
    assert server.media is not None
    server.media.list_interfaces = lambda: list(TWO_ADDRESSES)
    server.media.default_route_address = lambda: "127.0.0.1"  # no route here: the OS's fallback
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        ports = server_fixtures.server_ports(server)
        try:
            port = server.media.udp_port
            assert server.media.reachable == (("127.0.0.2", port), ("127.0.0.1", port))
            assert [c.split()[4] for c in server.media.candidates] == ["127.0.0.2", "127.0.0.1"]
            async with LiveKitClient.connect(server.url, mint_token("sub")) as subscriber, \
                    LiveKitClient.connect(server.url, mint_token("pub")) as publisher:
                await subscriber.wait_connected(timeout=10)
                audio = await publisher.publish_audio()
                async with trio.open_nursery() as senders:
                    senders.start_soon(send_synthetic_audio, audio, 60.0)
                    with trio.fail_after(15):
                        async for track in subscriber.tracks():
                            break
                        while track.stats.packets < 20:
                            await trio.sleep(0.02)
                    senders.cancel_scope.cancel()
                # The publisher PC's checks start once the server answered its offer (its
                # transport is registered by then), so its best pair is checked first and wins.
                # The subscriber PC's first check may beat the server's reading of its answer and
                # wait for a retransmission: which pair it ends on is a race, not ours to assert.
                assert publisher.publisher_pc is not None and subscriber.subscriber_pc is not None
                assert publisher.publisher_pc.transport.selected_address == ("127.0.0.2", port)
                assert subscriber.subscriber_pc.transport.selected_address in server.media.reachable
                for pc in (publisher.publisher_pc, subscriber.subscriber_pc):
                    # No check answered from an address it was not sent to.
                    assert pc.transport.ice_counters.address_mismatch == 0
        finally:
            server.request_shutdown()
    assert server.shutdown_clean
    server_fixtures.assert_no_leaks(server, baseline, ports)
