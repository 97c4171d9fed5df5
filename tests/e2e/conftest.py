"""Fixtures for end-to-end tests with real LiveKit clients: a private network namespace, the
server as a subprocess inside it, and helpers to run client processes there.

Why a namespace: libwebrtc (Chromium, the Python SDK) ignores loopback for ICE; see
trio_sfu/testing/netns.py.  Everything here needs root and `ip`; without them the tests skip
and say which is missing.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
from e2e_harness import ROOT, Client, SfuProcess, stop_process, tail

from trio_sfu.testing.netns import NetnsUnavailable, NetworkNamespace, unavailable_reason

READY = re.compile(r"trio-sfu ready url=(?:ws|http)://([0-9.]+):(\d+)")
SERVER_START_TIMEOUT_S = 20.0


@pytest.fixture
def netns() -> Iterator[NetworkNamespace]:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"e2e needs a private network namespace: {reason}")
    try:
        ns = NetworkNamespace.create()
    except NetnsUnavailable as exc:
        pytest.skip(f"e2e needs a private network namespace: {exc}")
    try:
        yield ns
    finally:
        ns.delete()


@pytest.fixture
def sfu(netns: NetworkNamespace, tmp_path: Path) -> Iterator[SfuProcess]:
    """`python -m trio_sfu.cli --dev` inside the namespace: HTTP on 127.0.0.1, media on the test address."""
    log = tmp_path / "server.log"
    argv = netns.wrap([sys.executable, "-m", "trio_sfu.cli", "--dev", "--port", "0", "--udp-port", "0",
                       "--node-ip", netns.address])
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log, "wb") as out:
        # `ip netns exec` execs the command, so this pid is the server's and SIGTERM reaches it.
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        match = None
        while match is None:
            match = READY.search(log.read_text(errors="replace"))
            if match is None:
                if proc.poll() is not None:
                    pytest.fail(f"server exited with {proc.returncode} before ready\n{tail(log)}")
                if time.monotonic() > deadline:
                    pytest.fail(f"server not ready within {SERVER_START_TIMEOUT_S} s\n{tail(log)}")
                time.sleep(0.05)
        yield SfuProcess(proc, log, match.group(1), int(match.group(2)))
    finally:
        stop_process(proc)


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    """Register clients here; every one is stopped at teardown even if the test failed."""
    started: list[Client] = []
    try:
        yield started
    finally:
        for client in started:
            client.finish(10.0)


