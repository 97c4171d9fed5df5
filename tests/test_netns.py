"""trio_sfu.testing.netns: the private namespace the end-to-end tests run clients in.

Checked with iproute2 itself: the namespace exists while open, holds only `lo` and the test
interface with the test address, has no route out of it, and is gone after `delete` (also
when the body raised).
"""

import json
import subprocess
import sys

import pytest

from trio_sfu.testing.netns import NetworkNamespace, unavailable_reason

reason = unavailable_reason()
pytestmark = pytest.mark.skipif(reason is not None, reason=f"needs network namespaces: {reason}")


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "-j", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {entry["name"] for entry in json.loads(out or "[]")}


def test_namespace_holds_only_the_test_address_and_no_routes_out():
    with NetworkNamespace.create() as ns:
        assert ns.name in namespaces()
        links = json.loads(subprocess.run(ns.wrap(["ip", "-j", "addr"]), capture_output=True, text=True,
                                          check=True).stdout)
        ipv4 = {(link["ifname"], a["local"]) for link in links for a in link.get("addr_info", [])
                if a["family"] == "inet"}
        assert ipv4 == {("lo", "127.0.0.1"), ("t0", ns.address)}
        assert all("UP" in link["flags"] for link in links)
        routes = json.loads(subprocess.run(ns.wrap(["ip", "-j", "route", "show", "default"]),
                                           capture_output=True, text=True, check=True).stdout or "[]")
        assert routes == []
        # The address is reachable from inside: a UDP datagram to it arrives.
        probe = ("import socket; r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                 f"r.bind(('{ns.address}', 0)); s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                 "s.sendto(b'ping', r.getsockname()); r.settimeout(5); print(r.recv(16).decode())")
        got = subprocess.run(ns.wrap([sys.executable, "-c", probe]), capture_output=True, text=True, timeout=30)
        assert got.stdout.strip() == "ping", got.stderr
    assert ns.name not in namespaces()


def test_namespace_is_deleted_when_the_body_raises():
    with pytest.raises(RuntimeError, match="boom"):
        with NetworkNamespace.create() as ns:
            raise RuntimeError("boom")
    assert ns.name not in namespaces()
    ns.delete()  # idempotent
