"""Test peers stay on this machine: aiortc without ICE servers, and a guard that refuses any.

Tests send packets only to loopback or to network namespaces they create. aiortc, given no
configuration, gathers against a public STUN server (``RTCIceGatherer.getDefaultIceServers``):
a DNS lookup and a STUN request leave the machine, and gathering waits for them. Every aiortc peer
in the suite is built by :func:`loopback_peer_connection`; :func:`forbid_ice_servers` (installed
by tests/conftest.py for in-process peers, and by each peer script for its own process) makes
building an ICE agent that names a STUN or TURN server raise instead.
"""

from __future__ import annotations

import functools
import inspect
from typing import TYPE_CHECKING, Any

import aioice

if TYPE_CHECKING:
    from aiortc import RTCPeerConnection

_SERVER_ARGUMENTS = ("stun_server", "turn_server")


class IceServerConfigured(AssertionError):
    """A test peer named an ICE server: its packets would leave the machine."""


def loopback_peer_connection() -> "RTCPeerConnection":
    """An aiortc peer connection with an empty ICE server list (not aiortc's public default)."""
    from aiortc import RTCConfiguration, RTCPeerConnection

    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


def forbid_ice_servers() -> None:
    """From now on, building an aioice agent (aiortc's ICE) with a STUN or TURN server raises
    :class:`IceServerConfigured`. Idempotent."""
    original = aioice.Connection.__init__
    if getattr(original, "forbids_ice_servers", False):
        return
    signature = inspect.signature(original)

    @functools.wraps(original)
    def guarded_init(self: aioice.Connection, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        named = {name: bound.arguments[name] for name in _SERVER_ARGUMENTS if bound.arguments.get(name)}
        if named:
            raise IceServerConfigured(
                f"a test peer's ICE agent names {named}: tests send packets only to loopback or to "
                "namespaces they create (build aiortc peers with local_peers.loopback_peer_connection)")
        original(self, *args, **kwargs)

    guarded_init.forbids_ice_servers = True  # type: ignore[attr-defined]
    aioice.Connection.__init__ = guarded_init  # type: ignore[method-assign]
