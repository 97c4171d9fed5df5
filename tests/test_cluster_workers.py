"""`trio-sfu --workers 2` as a process tree on a real redis-server (loopback only): two worker
nodes sharing one HTTP port, a worker that dies is restarted as a new node, and SIGTERM stops
the supervisor and its workers cleanly."""

from __future__ import annotations

import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Iterator

import pytest

from redis_server import RedisServer, running_redis_server

ROOT = pathlib.Path(__file__).resolve().parents[1]
READY = re.compile(r"trio-sfu ready url=(\S+) node=(\S+) node_url=(\S+) pid=(\d+)")


@pytest.fixture
def redis_server(tmp_path: pathlib.Path) -> Iterator[RedisServer]:
    with running_redis_server(tmp_path) as server:
        yield server


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, log: list[str]) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} within {timeout} s\n" + "".join(log[-60:])
        time.sleep(0.05)


def test_workers_share_a_port_a_dead_worker_is_restarted_and_sigterm_stops_them_all(redis_server, tmp_path) -> None:
    port, udp, tcp = free_port(), free_port(socket.SOCK_DGRAM), free_port()
    config = tmp_path / "cluster.yaml"
    config.write_text(f"cluster:\n  heartbeat_interval: 0.3\nrtc:\n  tcp_port: {tcp}\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "trio_sfu.cli", "--dev", "--config", str(config), "--port", str(port),
         "--udp-port", str(udp), "--node-ip", "127.0.0.1", "--redis-host", redis_server.address, "--workers", "2"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"))
    log: list[str] = []
    reader = threading.Thread(target=lambda: log.extend(iter(proc.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        def ready() -> list[tuple[str, str, str, str]]:
            return READY.findall("".join(log))

        wait_for(lambda: len(ready()) >= 2, 30, "two workers ready", log)
        (url0, node0, own0, pid0), (url1, node1, own1, pid1) = ready()[:2]
        assert url0 == url1 == f"ws://127.0.0.1:{port}" and node0 != node1 and own0 != own1
        # Each worker serves the shared port, and its own.
        for own in (own0, own1):
            with socket.create_connection(("127.0.0.1", int(own.rsplit(":", 1)[1])), timeout=2):
                pass
        # ICE/TCP: each worker its own port, after the configured one, as its UDP port.
        listening = [line for line in log if "media ICE/TCP listening" in line]
        assert sorted(re.search(r"reachable=127\.0\.0\.1:(\d+)", line).group(1) for line in listening) == [
            str(tcp), str(tcp + 1)], listening
        for tcp_port in (tcp, tcp + 1):
            with socket.create_connection(("127.0.0.1", tcp_port), timeout=2):
                pass
        wait_for(lambda: any("cluster nodes" in line and f"node={node0}" in line and node1 in line for line in log),
                 15, "worker 0 sees worker 1 in the directory", log)

        os.kill(int(pid0), signal.SIGKILL)
        wait_for(lambda: len(ready()) >= 3, 30, "the killed worker restarted", log)
        _, node2, _, pid2 = ready()[2]
        assert node2 not in (node0, node1) and int(pid2) != int(pid0)  # a new node: its state died with it
        assert any("worker died, restarting" in line for line in log)
        # The survivor's view, as it last logged it: the newcomer in, the dead node's entry expired.
        def survivor_view() -> set[str]:
            lines = [line for line in log if "cluster nodes" in line and f"node={node1}" in line]
            match = re.search(r"\bnodes=(\S+)", lines[-1]) if lines else None
            return set(match.group(1).split(",")) if match else set()

        wait_for(lambda: survivor_view() == {node2}, 15, "worker 1 sees the restarted worker and not the dead one", log)

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, "".join(log[-60:])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(5)
    text = "".join(log)
    assert text.count("trio-sfu stopped") == 2, text[-3000:]  # both live workers drained and stopped
    assert "Traceback" not in text, text[-3000:]
