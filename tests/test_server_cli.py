"""`trio-sfu` as a real subprocess: ready line with the bound port, serving, clean signal exit."""

from __future__ import annotations

import os
import pathlib
import re
import signal
import socket
import subprocess
import sys

import pytest
import trio
import trio_websocket
from livekit import api
from livekit.protocol import models, rtc

from server_fixtures import http

READY = re.compile(rb"trio-sfu ready url=ws://127\.0\.0\.1:(\d+)")


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "trio_sfu.cli", *args]


async def read_until_ready(proc: trio.Process) -> tuple[int, bytes]:
    assert proc.stdout is not None
    seen = b""
    with trio.fail_after(15):
        while not (match := READY.search(seen)):
            chunk = await proc.stdout.receive_some(4096)
            if not chunk:
                raise AssertionError(f"server exited before ready: {seen!r}")
            seen += chunk
    return int(match.group(1)), seen


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_dev_server_serves_and_exits_cleanly_on_signal(signum: int, tmp_path: pathlib.Path) -> None:
    env = dict(os.environ)
    env.pop("LIVEKIT_KEYS", None)
    # An ICE/TCP port of its own: dev mode's 7881 is the machine's, and another server may hold it.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        tcp_port = probe.getsockname()[1]
    config = tmp_path / "tcp.yaml"
    config.write_text(f"rtc:\n  tcp_port: {tcp_port}\n")
    proc = await trio.lowlevel.open_process(
        cli_command("--dev", "--port", "0", "--udp-port", "0", "--config", str(config)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    try:
        port, banner = await read_until_ready(proc)
        assert port != 0
        assert b"devkey" in banner and b"secret" in banner
        status, _, body, _ = await http(port, "GET", "/")
        assert (status, body) == (200, b"OK")

        token = api.AccessToken("devkey", "secret").with_identity("u").with_grants(api.VideoGrants(room_join=True, room="r")).to_jwt()
        url = f"ws://127.0.0.1:{port}/rtc?protocol=17"
        async with trio_websocket.open_websocket_url(url, extra_headers=[(b"authorization", f"Bearer {token}".encode())]) as ws:
            first = rtc.SignalResponse()
            first.ParseFromString(await ws.get_message())
            assert first.WhichOneof("message") == "join"
            proc.send_signal(signum)
            with trio.fail_after(10):
                leave = rtc.SignalResponse()
                # The media layer's first subscriber offer (and its candidate) may come first.
                while leave.WhichOneof("message") != "leave":
                    leave.ParseFromString(await ws.get_message())
            assert leave.leave.reason == models.DisconnectReason.SERVER_SHUTDOWN
        with trio.fail_after(10):
            code = await proc.wait()
        assert code == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_config_file_errors_and_warnings(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("port: 0\nkeys:\n  k: s\nrtc:\n  udp_port: lots\n")
    result = await trio.run_process(cli_command("--config", str(bad)), capture_stdout=True, capture_stderr=True, check=False)
    assert result.returncode == 2
    assert b"rtc.udp_port" in result.stderr and b"Traceback" not in result.stderr

    odd = tmp_path / "odd.yaml"
    odd.write_text("port: 0\nbind_addresses: [127.0.0.1]\nkeys:\n  k: s-long-enough-secret-0123456789abcdef\nmystery_knob: 3\n")
    proc = await trio.lowlevel.open_process(cli_command("--config", str(odd)), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        await read_until_ready(proc)
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            assert await proc.wait() == 0
        assert proc.stderr is not None
        err = b""
        while chunk := await proc.stderr.receive_some(65536):
            err += chunk
        assert b"mystery_knob" in err
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_no_keys_is_a_clear_error() -> None:
    env = {k: v for k, v in os.environ.items() if k != "LIVEKIT_KEYS"}
    result = await trio.run_process(cli_command("--port", "0"), capture_stdout=True, capture_stderr=True, check=False, env=env)
    assert result.returncode == 2 and b"no API keys" in result.stderr


async def test_bad_webhook_section_is_a_one_line_error(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "hook.yaml"
    bad.write_text("port: 0\nkeys:\n  k: s-long-enough-secret-0123456789abcdef\nwebhook:\n  urls: http://not-a-list\n")
    result = await trio.run_process(cli_command("--config", str(bad)), capture_stdout=True, capture_stderr=True, check=False)
    assert result.returncode == 2
    assert b"webhook.urls" in result.stderr and b"Traceback" not in result.stderr
