"""Fixtures and helpers for the end-to-end tests with real LiveKit clients: a private network
namespace, the server as a subprocess inside it, and client processes there that speak JSON
lines on stdout.

Why a namespace: libwebrtc (Chromium, the Python SDK) ignores loopback for ICE; see
trio_sfu/testing/netns.py.  Everything here needs root and `ip`; without them the tests skip
and say which is missing.

tests/e2e/conftest.py makes the fixtures here visible to the tests in this directory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Iterator

import attrs
import pytest

from trio_sfu.testing.netns import NetnsUnavailable, NetworkNamespace, unavailable_reason

ROOT = Path(__file__).resolve().parents[2]
E2E_DIR = Path(__file__).resolve().parent
BROWSER_DIR = ROOT / "scripts" / "browser"
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")


def tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"<no log: {exc}>"


@attrs.define
class SfuProcess:
    proc: subprocess.Popen[bytes]
    log: Path
    host: str
    port: int
    #: "host:port" of each media address the ready line names, highest priority first.
    media: tuple[str, ...] = ()

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def log_tail(self, lines: int = 60) -> str:
        return f"--- server log (last {lines} lines) ---\n{tail(self.log, lines)}"

    def limit_hits(self) -> list[str]:
        """Server log lines saying a client met a signal bound (trio_sfu.signal.limits,
        rate_limit, the outbox): real SDKs in normal use never may."""
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return []
        return [line for line in lines if any(marker in line for marker in LIMIT_LOG_MARKERS)]


# What the server logs when a client meets one of the signal bounds.
LIMIT_LOG_MARKERS = ("over their rate limit", "signal request over a limit", "signal queue over its bounds")


def stop_process(proc: subprocess.Popen, grace_s: float = 10.0) -> bool:
    """SIGTERM, then SIGKILL after `grace_s`; True when the process exited by itself."""
    if proc.poll() is not None:
        return True
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace_s)
        return True
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        return False


class Client:
    """A client process in the namespace whose stdout is JSON lines; stdin closing tells it to leave."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log = log
        self.lines: list[dict] = []
        self._cond = threading.Condition()
        self._log_file: IO[str] = open(log, "w")
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log_file, cwd=ROOT, env=env, text=True)
        self._reader = threading.Thread(target=self._read, name=f"e2e-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self._log_file.write("[stdout] " + raw)
            self._log_file.flush()
            try:
                item = json.loads(raw)
            except ValueError:
                continue
            if isinstance(item, dict):
                with self._cond:
                    self.lines.append(item)
                    self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, key: str, timeout_s: float) -> dict | None:
        """The first stdout JSON object that has `key`, or None after the timeout or process exit."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                for item in self.lines:
                    if key in item:
                        return item
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    return None
                self._cond.wait(min(left, 0.5))

    def close_stdin(self) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        except (OSError, ValueError):
            pass

    def finish(self, timeout_s: float = 15.0) -> int:
        """Ask the client to leave (stdin EOF), kill it if it does not; idempotent."""
        if self._log_file.closed:
            return self.proc.returncode
        self.close_stdin()
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._reader.join(5)
        self._log_file.close()
        return self.proc.returncode

    def log_tail(self, lines: int = 80) -> str:
        if not self._log_file.closed:
            self._log_file.flush()
        return f"--- {self.name} log (last {lines} lines) ---\n{tail(self.log, lines)}"


def assert_clean_exit(name: str, returncode: int | None, log: Path, stopped_line: str | None = None) -> None:
    """A server process ended as it should: exit status 0, its last words printed, and no
    traceback anywhere in its log (an exception the server caught and logged is a bug too)."""
    text = log.read_text(errors="replace") if log.exists() else ""
    assert returncode == 0, f"{name} exited with {returncode}\n{tail(log)}"
    if stopped_line is not None:
        assert stopped_line in text, f"{name} did not print {stopped_line!r} on its way out\n{tail(log)}"
    if "Traceback (most recent call last)" in text:
        at = text.index("Traceback (most recent call last)")
        raise AssertionError(f"{name} logged a traceback ({log}):\n{text[max(0, at - 600):at + 3000]}")


def browser_missing() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed (scripts/test-deps.sh installs nodejs)"
    if not os.path.exists(CHROMIUM):
        return f"no Chromium at {CHROMIUM} (scripts/test-deps.sh installs Debian's chromium)"
    for package in ("playwright-core", "livekit-client"):
        if not (BROWSER_DIR / "node_modules" / package).is_dir():
            return f"scripts/browser/node_modules/{package} is missing (scripts/test-deps.sh runs npm ci)"
    return None


def failure_report(*parts: object) -> str:
    return "\n".join(str(p) for p in parts)


READY = re.compile(r"trio-sfu ready url=(?:ws|http)://([0-9.]+):(\d+)")
READY_MEDIA = re.compile(r"trio-sfu ready url=\S+.* media reachable at ([^\n]+)")
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
    yield from run_sfu(netns, tmp_path, ["--node-ip", netns.address])


@pytest.fixture
def sfu_dev_defaults(netns: NetworkNamespace, tmp_path: Path) -> Iterator[SfuProcess]:
    """`python -m trio_sfu.cli --dev` inside the namespace with no address flag: HTTP on 127.0.0.1,
    media on whatever addresses the server finds (the namespace's test address and loopback)."""
    yield from run_sfu(netns, tmp_path, [])


def run_sfu(netns: NetworkNamespace, tmp_path: Path, extra: list[str], udp_port: int = 0,
            command: tuple[str, ...] = (sys.executable, "-m", "trio_sfu.cli")) -> Iterator[SfuProcess]:
    """The server in the namespace until the generator is closed; then its clean exit is checked.
    `command` runs the CLI (a test may wrap it, as tests/e2e/probing_sfu.py does)."""
    log = tmp_path / "server.log"
    argv = netns.wrap([*command, "--dev", "--port", "0", "--udp-port", str(udp_port), *extra])
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
        media = READY_MEDIA.search(log.read_text(errors="replace"))
        server = SfuProcess(proc, log, match.group(1), int(match.group(2)),
                            tuple(a.strip() for a in media.group(1).split(",")) if media else ())
        yield server
    finally:
        exited = stop_process(proc)
    # Teardown (also after a failed test, as its own error): the server's end is checked too.
    assert exited, f"trio-sfu did not exit within 10 s of SIGTERM and was killed\n{tail(log)}"
    assert_clean_exit("trio-sfu", proc.returncode, log, stopped_line="trio-sfu stopped")
    # Every test with real SDKs also proves they never meet a signal limit in normal use.
    hits = server.limit_hits()
    assert not hits, "a real SDK met a signal limit:\n" + "\n".join(hits[:20])


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    """Register clients here; every one is stopped at teardown even if the test failed."""
    started: list[Client] = []
    try:
        yield started
    finally:
        for client in started:
            client.finish(10.0)




#: Where the server binds when an impairing proxy holds the advertised address (netns.address).
SERVER_BEHIND_PROXY = "198.18.0.2"
#: The media port of both (the proxy listens on the port the server advertises).
IMPAIRED_MEDIA_PORT = 7882


def udp_counters(netns: NetworkNamespace) -> dict[str, int]:
    """The namespace's UDP counters (/proc/net/snmp is per network namespace): RcvbufErrors
    counts the datagrams some socket in it (the proxy's, the server's, a client's) dropped for a
    full receive buffer, a loss no impairment chose. Empty when they cannot be read."""
    done = subprocess.run(netns.wrap(["cat", "/proc/net/snmp"]), capture_output=True, text=True, timeout=10)
    rows = [line.split()[1:] for line in done.stdout.splitlines() if line.startswith("Udp:")]
    if done.returncode != 0 or len(rows) < 2:
        return {}
    return {key: int(value) for key, value in zip(rows[0], rows[1])}


#: What a subscriber's estimator logged (trio_sfu.media.subscribing: "downstream estimate" lines).
_ESTIMATE_LINE = re.compile(r"downstream (?:estimate|bandwidth at close) .*")
_KV = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


def downstream_losses(log: Path) -> dict[str, dict]:
    """Each subscriber's last downstream estimate line in the server's log, by participant: packets
    its transport-wide feedback reported received (acked) and lost in their final state, losses
    taken back (recovered), the loss-based half's window and its cuts' result."""
    out: dict[str, dict] = {}
    for line in log.read_text(errors="replace").splitlines():
        match = _ESTIMATE_LINE.search(line)
        if match is None:
            continue
        fields = {k: v.strip('"') for k, v in _KV.findall(match.group(0))}
        try:
            acked, lost = int(fields["acked"]), int(fields["lost"])
        except (KeyError, ValueError):
            continue
        out[fields.get("identity") or fields.get("participant", "?")] = {
            "acked": acked, "lost": lost, "recovered": fields.get("recovered"),
            "loss": round(lost / (acked + lost), 4) if acked + lost else None,
            "window_loss": fields.get("loss"), "loss_cuts": fields.get("loss_cuts"), "bps": fields.get("bps"),
            "loss_based": fields.get("loss_based")}
    return out


@attrs.define
class ImpairedSfu:
    sfu: SfuProcess
    proxy: Client

    def change(self, **directions: str) -> dict:
        """Change the proxy's impairment now (to_client= / to_server=: Impairment.parse text, ""
        for none), on every client's link; the proxy's acknowledgement (its Unix time `at`)."""
        stdin = self.proxy.proc.stdin
        assert stdin is not None
        seen = len([line for line in self.proxy.lines if "proxy_changed" in line])
        stdin.write(json.dumps(directions) + "\n")
        stdin.flush()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            acks = [line["proxy_changed"] for line in self.proxy.lines if "proxy_changed" in line]
            if len(acks) > seen:
                return acks[-1]
            errors = [line for line in self.proxy.lines if "proxy_control_error" in line]
            assert not errors, errors
            time.sleep(0.05)
        raise AssertionError(f"the proxy did not take {directions}\n{self.proxy.log_tail()}")

    def proxy_counters(self) -> dict | None:
        """The proxy's link counters (it prints them as it stops)."""
        self.proxy.finish()
        done = self.proxy.wait_for("proxy_counters", timeout_s=5)
        return done["proxy_counters"] if done else None


def run_impaired_sfu(netns: NetworkNamespace, tmp_path: Path, to_server: str, to_client: str,
                     seed: int = 1, congestion_control: bool = False) -> Iterator[ImpairedSfu]:
    """The server in the namespace behind trio_sfu.testing.impair_proxy: the server binds
    SERVER_BEHIND_PROXY and advertises only netns.address, where the proxy listens on the same
    port and impairs each client's media both ways (`to_server`, `to_client`: Impairment.parse
    text). Signalling (HTTP/WebSocket) goes to the server directly, unimpaired."""
    netns.add_address(SERVER_BEHIND_PROXY)
    extra = ["--bind", SERVER_BEHIND_PROXY, "--node-ip", netns.address]
    if congestion_control:
        # `congestion_control`: subscribers' estimates drive their stream allocators (on by default;
        # the file says so explicitly, so these tests keep it whatever the default).
        config = tmp_path / "congestion_control.yaml"
        config.write_text("rtc:\n  congestion_control:\n    enabled: true\n")
        extra += ["--config", str(config)]
    server = run_sfu(netns, tmp_path, extra, udp_port=IMPAIRED_MEDIA_PORT)
    sfu = next(server)
    argv = netns.wrap([sys.executable, "-m", "trio_sfu.testing.impair_proxy",
                       "--listen", f"{netns.address}:{IMPAIRED_MEDIA_PORT}",
                       "--upstream", f"{SERVER_BEHIND_PROXY}:{IMPAIRED_MEDIA_PORT}",
                       "--to-server", to_server, "--to-client", to_client, "--seed", str(seed)])
    proxy = Client("impair-proxy", argv, tmp_path / "proxy.log", env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        if proxy.wait_for("proxy_ready", timeout_s=15) is None:
            pytest.fail(f"the impairing proxy did not start\n{proxy.log_tail()}")
        yield ImpairedSfu(sfu, proxy)
    finally:
        proxy.finish()
        server.close()
