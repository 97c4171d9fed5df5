"""`trio-sfu --dev` as a real subprocess on this machine: with no address flag its ready line
names every usable interface address of the machine (as `ip -j addr` lists them: an independent
reading of the kernel) and loopback last, all on the media port; `rtc.interfaces` narrows that;
`--node-ip` still names only itself; a filter that leaves nothing is a one-line error."""

from __future__ import annotations

import ipaddress
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys

import pytest
import trio

READY = re.compile(rb"trio-sfu ready url=ws://127\.0\.0\.1:\d+ media reachable at ([^\n]+)\n")


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "trio_sfu.cli", *args]


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tcp_port_config(path: pathlib.Path, text: str = "") -> str:
    """A config file with `text` and an ICE/TCP port of its own: dev mode's 7881 is the
    machine's, and other servers (other tests, other checkouts) may hold it."""
    path.write_text(text + f"rtc:\n  tcp_port: {free_tcp_port()}\n" if "rtc:" not in text
                    else text + f"  tcp_port: {free_tcp_port()}\n")
    return str(path)


async def media_line(*args: str) -> list[tuple[str, int]]:
    """Start the server, read the media addresses off its ready line, stop it (exit 0)."""
    env = dict(os.environ)
    env.pop("LIVEKIT_KEYS", None)
    proc = await trio.lowlevel.open_process(cli_command("--dev", "--port", "0", "--udp-port", "0", *args),
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None
        seen = b""
        with trio.fail_after(15):
            while not (match := READY.search(seen)):
                chunk = await proc.stdout.receive_some(4096)
                if not chunk:
                    raise AssertionError(f"server exited before ready: {seen!r}")
                seen += chunk
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    out = []
    for item in match.group(1).decode().split(", "):
        host, port = item.rsplit(":", 1)
        out.append((host, int(port)))
    return out


def kernel_ipv4_addresses() -> set[str]:
    """The IPv4 addresses of up interfaces, link-local and loopback aside, per `ip -j addr`."""
    done = subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True, check=True, timeout=15)
    found = set()
    for link in json.loads(done.stdout):
        if "UP" not in link.get("flags", []):
            continue
        for info in link.get("addr_info", []):
            if info.get("family") != "inet":
                continue
            ip = ipaddress.ip_address(info["local"])
            if not ip.is_link_local and not ip.is_loopback:
                found.add(info["local"])
    return found


async def test_dev_ready_line_names_every_interface_address_then_loopback(tmp_path: pathlib.Path):
    if shutil.which("ip") is None:
        pytest.skip("no `ip` command to compare with (Debian package iproute2)")
    media = await media_line("--config", tcp_port_config(tmp_path / "tcp.yaml"))
    ports = {port for _, port in media}
    assert len(ports) == 1 and 0 not in ports, media
    hosts = [host for host, _ in media]
    assert hosts[-1] == "127.0.0.1" and hosts.count("127.0.0.1") == 1, media
    real = kernel_ipv4_addresses()
    assert set(hosts[:-1]) == real, (media, real)


async def test_interfaces_filter_and_node_ip_on_the_ready_line(tmp_path: pathlib.Path):
    only_loopback = tcp_port_config(tmp_path / "lo.yaml", "rtc:\n  interfaces:\n    includes: [lo]\n")
    assert [host for host, _ in await media_line("--config", only_loopback)] == ["127.0.0.1"]
    # --node-ip: exactly that address, as before this mode existed.
    node_ip = await media_line("--node-ip", "198.51.100.7", "--config", tcp_port_config(tmp_path / "tcp.yaml"))
    assert [host for host, _ in node_ip] == ["198.51.100.7"]


async def test_a_filter_that_leaves_no_address_is_a_clear_error(tmp_path: pathlib.Path):
    nothing = tmp_path / "none.yaml"
    nothing.write_text("rtc:\n  interfaces:\n    includes: [no-such-interface0]\n")
    result = await trio.run_process(cli_command("--dev", "--port", "0", "--udp-port", "0", "--config", str(nothing)),
                                    capture_stdout=True, capture_stderr=True, check=False)
    assert result.returncode == 1, result
    assert b"no usable media address" in result.stderr and b"lo 127.0.0.1" in result.stderr, result.stderr
    assert b"Traceback" not in result.stderr


def test_help_says_where_dev_media_listens():
    done = subprocess.run(cli_command("--help"), capture_output=True, text=True, timeout=30, check=True)
    assert "media on every interface address" in " ".join(done.stdout.split())
