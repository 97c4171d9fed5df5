"""A real `redis-server` for the cluster tests: Debian's package, started on a free loopback port
in a temporary directory with persistence off, stopped after the test.

The server can be stopped and started again on the same port (an outage; it comes back empty,
as a restarted Redis without persistence does) and paused with SIGSTOP (a server that accepts
connections but never answers). Where `redis-server` is missing the test skips naming it, and
with TRIO_SFU_REQUIRE_E2E=1 that skip is a failure (tests/must_run.py); scripts/test-deps.sh
installs the package.

    from redis_server import RedisServer, running_redis_server

Imported as a top-level module (tests/ has no __init__.py).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import time
from typing import Iterator

import pytest

REDIS_SERVER = os.environ.get("REDIS_SERVER_PATH") or shutil.which("redis-server") or "/usr/bin/redis-server"
# How long a starting server may take to answer PING (a busy 2-core machine, cold start).
READY_DEADLINE = 10.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ping(port: int, timeout: float = 1.0) -> bool:
    """True when a Redis server on 127.0.0.1:`port` is up: it answers PING (with PONG, or by
    asking for a password when it requires one)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
            return reply.startswith(b"+PONG") or reply.startswith(b"-NOAUTH")
    except OSError:
        return False


class RedisServer:
    """One `redis-server` process on a fixed loopback port, startable again after a stop."""

    def __init__(self, directory: pathlib.Path, port: int | None = None, extra_args: tuple[str, ...] = ()) -> None:
        self.directory = directory
        self.port = port or _free_port()
        self.extra_args = extra_args  # e.g. ("--requirepass", "secret")
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = directory / "redis.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self.process is None, "already running"
        command = [
            REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(self.directory),
            "--logfile", str(self.log_path), "--daemonize", "no", *self.extra_args,
        ]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + READY_DEADLINE
        while not ping(self.port):
            if self.process.poll() is not None:
                log = self.log_path.read_text() if self.log_path.exists() else ""
                self.process = None
                raise RuntimeError(f"redis-server exited at start on port {self.port}:\n{log[-2000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} did not answer PING within {READY_DEADLINE}s")
            time.sleep(0.02)

    def stop(self) -> None:
        """Terminate the server (SIGTERM; SIGKILL if it does not go) and wait for it."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)  # a paused server cannot act on SIGTERM
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def restart(self) -> None:
        """Stop, then start on the same port: the server comes back empty (no persistence)."""
        self.stop()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: the listening socket stays open, nothing answers (a hung server)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


def require_redis_server() -> None:
    if not os.access(REDIS_SERVER, os.X_OK):
        pytest.skip(f"needs Debian's redis-server at {REDIS_SERVER} (scripts/test-deps.sh installs it)")


@contextlib.contextmanager
def running_redis_server(tmp_path: pathlib.Path) -> Iterator[RedisServer]:
    """A running `redis-server` on a free loopback port, stopped on exit. A test module's
    fixture wraps it:

        @pytest.fixture
        def redis_server(tmp_path: pathlib.Path) -> Iterator[RedisServer]:
            with running_redis_server(tmp_path) as server:
                yield server
    """
    require_redis_server()
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()
