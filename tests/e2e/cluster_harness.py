"""A cluster of real trio-sfu node processes and a real redis-server, inside the test's network
namespace (tests/e2e/test_e2e_cluster.py).

`ClusterHarness.start_redis` runs Debian's redis-server in the namespace; `start_nodes` runs
`python -m trio_sfu.cli --dev --redis-host ... [--workers N | --reuse-port]` there and waits for
every node's ready line:

    trio-sfu ready url=ws://127.0.0.1:7880 node=ND_abc node_url=ws://127.0.0.1:41234 pid=4321

(`url` is the public, possibly shared, port; `node_url` the node's own). Nodes heartbeat every
`HEARTBEAT_S` (a config file sets it), so a killed node's entry expires in three of them.
Everything started is stopped at teardown, and each node group's log is checked for a clean exit.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import attrs

from e2e_harness import ROOT, stop_process, tail
from trio_sfu.testing.netns import NetworkNamespace

REDIS_SERVER = "/usr/bin/redis-server"
REDIS_PORT = 6390
HEARTBEAT_S = 0.5
READY = re.compile(r"trio-sfu ready url=(\S+) node=(\S+) node_url=(\S+) pid=(\d+)")
START_TIMEOUT_S = 30.0

_PING = f"""
import socket, sys, time
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    try:
        s = socket.create_connection(("127.0.0.1", {REDIS_PORT}), timeout=1)
        s.sendall(b"PING\\r\\n")
        if s.recv(16).startswith(b"+PONG"):
            sys.exit(0)
    except OSError:
        time.sleep(0.05)
sys.exit(1)
"""


@attrs.define
class Node:
    node_id: str
    url: str  # the public URL clients are given
    node_url: str  # the node's own
    pid: int


@attrs.define
class NodeGroup:
    """One `trio-sfu` command: a single node, or a supervisor and its workers."""

    proc: subprocess.Popen[bytes]
    log: Path
    nodes: list[Node] = attrs.field(factory=list)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def log_tail(self, lines: int = 80) -> str:
        return f"--- {self.log.name} (last {lines} lines) ---\n{tail(self.log, lines)}"


class ClusterHarness:
    def __init__(self, netns: NetworkNamespace, tmp_path: Path) -> None:
        self.netns = netns
        self.tmp_path = tmp_path
        self.redis: subprocess.Popen[bytes] | None = None
        self.groups: list[NodeGroup] = []
        self.config = tmp_path / "cluster.yaml"
        self.config.write_text(f"cluster:\n  heartbeat_interval: {HEARTBEAT_S}\n")

    # ---- redis ------------------------------------------------------------------------------

    def start_redis(self) -> None:
        directory = self.tmp_path / "redis"
        directory.mkdir(exist_ok=True)
        log = open(self.tmp_path / "redis.log", "wb")
        self.redis = subprocess.Popen(
            self.netns.wrap([REDIS_SERVER, "--port", str(REDIS_PORT), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(directory)]),
            stdout=log, stderr=subprocess.STDOUT)
        ok = subprocess.run(self.netns.wrap([sys.executable, "-c", _PING]), timeout=20).returncode == 0
        assert ok, f"redis-server did not answer PING\n{tail(self.tmp_path / 'redis.log')}"

    def stop_redis(self) -> None:
        if self.redis is not None:
            stop_process(self.redis)
            self.redis = None

    # ---- nodes ------------------------------------------------------------------------------

    def start_nodes(self, name: str, port: int, udp_port: int, *extra: str, expect: int = 1) -> NodeGroup:
        log = self.tmp_path / f"{name}.log"
        # Each group its own ICE/TCP port (there is no flag for it, as in LiveKit): the one below
        # its UDP port, and a worker of the group takes the next ones as it does UDP ports.
        config = self.tmp_path / f"{name}.yaml"
        config.write_text(self.config.read_text() + f"rtc:\n  tcp_port: {udp_port - 1}\n")
        argv = self.netns.wrap([sys.executable, "-m", "trio_sfu.cli", "--dev", "--config", str(config),
                                "--port", str(port), "--udp-port", str(udp_port), "--node-ip", self.netns.address,
                                "--redis-host", f"127.0.0.1:{REDIS_PORT}", *extra])
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        group = NodeGroup(proc, log)
        self.groups.append(group)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            found = READY.findall(group.log_text())
            if len(found) >= expect:
                group.nodes = [Node(node_id, url, node_url, int(pid)) for url, node_id, node_url, pid in found]
                return group
            assert proc.poll() is None, f"{name} exited with {proc.returncode}\n{group.log_tail()}"
            assert time.monotonic() < deadline, f"{name}: {len(found)} of {expect} nodes ready\n{group.log_tail()}"
            time.sleep(0.05)

    def wait_linked(self, count: int, timeout_s: float = 20.0) -> None:
        """Until every node's latest 'cluster nodes' log line names `count - 1` others."""
        nodes = [n for g in self.groups for n in g.nodes if g.proc.poll() is None]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(self._peers_seen(n) == count - 1 and self._links(n) == count - 1 for n in nodes):
                return
            time.sleep(0.1)
        raise AssertionError(f"nodes did not link up ({count} expected)\n" + self.logs())

    def _peers_seen(self, node: Node) -> int:
        for group in self.groups:
            if node in group.nodes:
                lines = [line for line in group.log_text().splitlines()
                         if "cluster nodes" in line and f"node={node.node_id}" in line]
                if not lines:
                    return 0
                match = re.search(r"\bnodes=(\S+)", lines[-1])
                return 0 if match is None or match.group(1) == "-" else len(match.group(1).split(","))
        return 0

    def _links(self, node: Node) -> int:
        """Relay links up minus links down, as the node logged them."""
        lines = [line for g in self.groups for line in g.log_text().splitlines() if f"node={node.node_id}" in line]
        return sum("relay link up" in line for line in lines) - sum("relay link down" in line for line in lines)

    def kill(self, node: Node) -> None:
        os.kill(node.pid, signal.SIGKILL)

    def terminate(self, node: Node) -> None:
        os.kill(node.pid, signal.SIGTERM)

    def logs(self, lines: int = 80) -> str:
        return "\n".join(g.log_tail(lines) for g in self.groups)

    def stop(self) -> list[tuple[NodeGroup, int | None]]:
        results = []
        for group in self.groups:
            exited = stop_process(group.proc, grace_s=40.0)
            results.append((group, group.proc.returncode if exited else None))
        self.stop_redis()
        return results


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
