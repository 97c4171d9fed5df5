"""Janus (Debian's ``janus`` package) as the benchmark's other server, with its own config dir.

The config files in ``bench/janus/`` hold ``@…@`` placeholders (the config dir, the WebSocket
port, the RTP port range); :class:`JanusServer` fills them into a fresh temporary directory,
links only the videoroom plugin and the WebSocket transport into it (Janus loads every library
in its plugin and transport folders), starts ``janus --configs-folder DIR --config
DIR/janus.jcfg`` and waits until the WebSocket port accepts connections. ``stop()`` ends it and
removes the directory. Install Janus with ``bench/janus/setup.sh``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Optional

JANUS_BINARY = "janus"
CONFIG_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "janus")
#: Where Debian's package puts Janus' plugins and transports.
LIBRARY_DIRS = ("/usr/lib/x86_64-linux-gnu/janus", "/usr/lib/aarch64-linux-gnu/janus", "/usr/lib/janus")
PLUGIN = "libjanus_videoroom.so"
TRANSPORT = "libjanus_websockets.so"
#: The room ``bench/janus/janus.plugin.videoroom.jcfg`` creates.
ROOM = 1234


class JanusUnavailable(RuntimeError):
    """Janus is not installed (or its videoroom plugin / WebSocket transport is missing)."""


def janus_library_dir() -> Optional[str]:
    for directory in LIBRARY_DIRS:
        if os.path.exists(os.path.join(directory, "plugins", PLUGIN)) and \
                os.path.exists(os.path.join(directory, "transports", TRANSPORT)):
            return directory
    return None


def janus_available() -> bool:
    return shutil.which(JANUS_BINARY) is not None and janus_library_dir() is not None


def local_media_ip() -> Optional[str]:
    """This machine's own IPv4 address on its default route (no packet is sent): where Janus
    gathers its host candidate and the load tester binds, since libnice skips loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("198.51.100.1", 9))  # TEST-NET-2, via the default route: the kernel picks the source
        except OSError:
            return None
        address = s.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JanusServer:
    """One Janus process on loopback; ``url`` is its WebSocket API (``ws://127.0.0.1:PORT``)."""

    def __init__(self, rtp_port_range: str = "30000-39999", ready_timeout: float = 20.0,
                 log_path: Optional[str] = None) -> None:
        library = janus_library_dir()
        if shutil.which(JANUS_BINARY) is None or library is None:
            raise JanusUnavailable("janus not installed (bench/janus/setup.sh installs Debian's package)")
        media_ip = local_media_ip()
        if media_ip is None:
            raise JanusUnavailable("no non-loopback IPv4 address for Janus' ICE candidates")
        #: The address Janus' candidates are on; the load tester's sockets bind to it too.
        self.media_ip = media_ip
        self.dir = tempfile.mkdtemp(prefix="bench-janus-")
        self.port = _free_tcp_port()
        self.url = f"ws://127.0.0.1:{self.port}"
        self.room = ROOM
        values = {"@CONFIG_DIR@": self.dir, "@MEDIA_IP@": media_ip, "@WS_PORT@": str(self.port), "@RTP_PORT_RANGE@": rtp_port_range}
        for name in os.listdir(CONFIG_SOURCE):
            if not name.endswith(".jcfg"):
                continue
            with open(os.path.join(CONFIG_SOURCE, name), encoding="utf-8") as handle:
                text = handle.read()
            for key, value in values.items():
                text = text.replace(key, value)
            with open(os.path.join(self.dir, name), "w", encoding="utf-8") as handle:
                handle.write(text)
        for folder, library_name in (("plugins", PLUGIN), ("transports", TRANSPORT)):
            os.makedirs(os.path.join(self.dir, folder))
            os.symlink(os.path.join(library, folder, library_name), os.path.join(self.dir, folder, library_name))
        for folder in ("events", "loggers"):
            os.makedirs(os.path.join(self.dir, folder))
        self.log_path = log_path or os.path.join(self.dir, "janus.log")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [JANUS_BINARY, "--configs-folder", self.dir, "--config", os.path.join(self.dir, "janus.jcfg")],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.dir)
        deadline = time.monotonic() + ready_timeout
        while True:
            if self.proc.poll() is not None:
                self._log.close()
                raise RuntimeError(f"janus exited at start (status {self.proc.returncode}): {self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"janus did not listen on {self.port} within {ready_timeout:g} s")
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, size: int = 2000) -> str:
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                handle.seek(max(0, handle.tell() - size))
                return handle.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # Janus' clean shutdown
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self._log.closed:
            self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "JanusServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["JANUS_BINARY", "JanusServer", "JanusUnavailable", "ROOM", "janus_available"]
