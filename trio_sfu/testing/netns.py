"""A private Linux network namespace for end-to-end tests with libwebrtc clients.

libwebrtc (Chromium, the `livekit` Python SDK) gathers no ICE candidate on loopback, so a
server that can only offer 127.0.0.1 is unreachable for it.  The namespace holds `lo` plus
one interface with a single test address from the RFC 2544 benchmarking range and no
routes, so every packet between the server and the clients stays inside it.

    with NetworkNamespace.create() as ns:
        subprocess.run(ns.wrap(["python", "-m", "trio_sfu.cli", ...]))

Also a command line: `python -m trio_sfu.testing.netns -- CMD ARGS...` runs CMD in a fresh
namespace and deletes the namespace afterwards.  Creating a namespace needs root.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from typing import Sequence

import attrs

# RFC 2544 benchmarking range: never routed, and here it exists only inside our namespace.
DEFAULT_ADDRESS = "198.18.0.1"
NAME_PREFIX = "trio-sfu-e2e-"


class NetnsUnavailable(RuntimeError):
    """This machine or user cannot create network namespaces; the message says what is missing."""


def unavailable_reason() -> str | None:
    """Why a namespace cannot be created here, or None when it can (checked without creating one)."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux, this is {sys.platform}"
    if shutil.which("ip") is None:
        return "the `ip` command (Debian package iproute2) is not installed"
    if os.geteuid() != 0:
        return "creating a network namespace needs root (CI runs as root)"
    return None


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=15)
    if done.returncode != 0:
        raise NetnsUnavailable(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")


@attrs.define
class NetworkNamespace:
    name: str
    address: str
    deleted: bool = False

    @classmethod
    def create(cls, address: str = DEFAULT_ADDRESS, name: str | None = None) -> "NetworkNamespace":
        reason = unavailable_reason()
        if reason is not None:
            raise NetnsUnavailable(reason)
        ns = cls(name or NAME_PREFIX + secrets.token_hex(4), address)
        _run(["ip", "netns", "add", ns.name])
        try:
            _run(["ip", "-n", ns.name, "link", "set", "lo", "up"])
            # `dummy` is the obvious link type but is missing from some kernels (this CI's among
            # them); `ifb` behaves the same for our purpose: an up interface that owns an address.
            for kind in ("dummy", "ifb"):
                added = subprocess.run(["ip", "-n", ns.name, "link", "add", "t0", "type", kind],
                                       capture_output=True, text=True, timeout=15)
                if added.returncode == 0:
                    break
            else:
                raise NetnsUnavailable(f"cannot add a dummy or ifb interface: {added.stderr.strip()}")
            _run(["ip", "-n", ns.name, "addr", "add", f"{address}/32", "dev", "t0"])
            _run(["ip", "-n", ns.name, "link", "set", "t0", "up"])
        except BaseException:
            ns.delete()
            raise
        return ns

    def add_address(self, address: str) -> None:
        """One more test address on the namespace's interface (e.g. the server's own address
        behind an impairing proxy that holds the first: trio_sfu.testing.impair_proxy)."""
        _run(["ip", "-n", self.name, "addr", "add", f"{address}/32", "dev", "t0"])

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """The command line that runs `argv` inside this namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def delete(self) -> None:
        """Delete the namespace; idempotent. Processes still inside keep it alive until they exit."""
        if self.deleted:
            return
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=15)
        self.deleted = True

    def __enter__(self) -> "NetworkNamespace":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.delete()


def main(argv: Sequence[str]) -> int:
    args = list(argv)
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        print("usage: python -m trio_sfu.testing.netns -- CMD [ARGS...]", file=sys.stderr)
        return 2
    try:
        with NetworkNamespace.create() as ns:
            print(f"netns {ns.name} address {ns.address}", file=sys.stderr, flush=True)
            return subprocess.run(ns.wrap(args)).returncode
    except NetnsUnavailable as exc:
        print(f"netns: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
