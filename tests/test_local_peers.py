"""No test peer is configured with an ICE server: the suite's packets stay on this machine.

Tests send packets only to loopback or to network namespaces they create. The ways a peer could
reach further, each checked here:
* an aiortc peer built without a configuration gathers against aiortc's public default STUN
  server — the guard tests/conftest.py installs (local_peers.forbid_ice_servers) refuses to build
  such an ICE agent, and every aiortc peer in the repository is built with an empty server list;
* a STUN or TURN URL written into a test peer, a browser page or a driver script;
* the ICE servers our own server hands to the LiveKit clients (livekit-client, the Python SDK) in
  its JoinResponse: there must be none.
"""

from __future__ import annotations

import ast
import asyncio
import pathlib
import re

import aioice
import pytest

from local_peers import IceServerConfigured, forbid_ice_servers, loopback_peer_connection
from server_fixtures import join, mint_token, running_server, signal_client

ROOT = pathlib.Path(__file__).resolve().parent.parent
#: Where peers live: the suite, its helper scripts, the benchmarks and our own client.
PEER_DIRS = ("tests", "scripts", "bench", "trio_sfu")
TEXT_SUFFIXES = {".py", ".mjs", ".js", ".html", ".sh", ".json", ".yaml", ".yml"}
#: A STUN/TURN URL naming anything but loopback (the TURN tests assert the URLs our own server
#: hands out on 127.0.0.1; a public server in a test peer's configuration is what this guards against).
ICE_SERVER_URL = re.compile(r"\b(?:stuns?|turns?):(?://)?(?!127\.|localhost\b|\[::1\])[A-Za-z0-9\[]")


def repository_files(suffixes: set[str]) -> list[pathlib.Path]:
    found = []
    for top in PEER_DIRS:
        for path in (ROOT / top).rglob("*"):
            if "node_modules" in path.parts or "__pycache__" in path.parts:
                continue
            if path.suffix in suffixes and path.is_file():
                found.append(path)
    return sorted(found)


def test_guard_refuses_aiortcs_default_configuration() -> None:
    """What the guard is for: aiortc given no configuration names its public STUN server."""
    from aiortc import RTCPeerConnection

    async def build() -> None:
        pc = RTCPeerConnection()
        try:
            pc.addTransceiver("audio", direction="sendonly")  # builds the ICE gatherer
        finally:
            await pc.close()

    with pytest.raises(IceServerConfigured, match="stun_server"):
        asyncio.run(build())


@pytest.mark.parametrize("server", ["stun_server", "turn_server"])
def test_guard_refuses_an_ice_agent_naming_a_server(server: str) -> None:
    forbid_ice_servers()  # idempotent: conftest installed it already
    with pytest.raises(IceServerConfigured, match=server):
        aioice.Connection(ice_controlling=True, **{server: ("ice.example", 3478)})
    # Positional arguments are read the same way.
    with pytest.raises(IceServerConfigured):
        aioice.Connection(True, 1, ("ice.example", 3478))
    aioice.Connection(ice_controlling=True)  # no server: built as usual


def test_loopback_peer_connection_names_no_ice_server() -> None:
    async def build() -> tuple:
        pc = loopback_peer_connection()
        try:
            transceiver = pc.addTransceiver("audio", direction="sendonly")
            agent = transceiver.sender.transport.transport.iceGatherer._connection
            return agent.stun_server, agent.turn_server
        finally:
            await pc.close()

    assert asyncio.run(build()) == (None, None)


def _configuration_names_no_server(call: ast.Call) -> bool:
    """RTCPeerConnection(RTCConfiguration(iceServers=[])) — an empty list, literally."""
    given = [*call.args, *(k.value for k in call.keywords if k.arg == "configuration")]
    if len(given) != 1 or not isinstance(given[0], ast.Call):
        return False
    servers = [k.value for k in given[0].keywords if k.arg == "iceServers"]
    return len(servers) == 1 and isinstance(servers[0], ast.List) and not servers[0].elts


def test_every_aiortc_peer_connection_is_built_without_ice_servers() -> None:
    this_file = pathlib.Path(__file__).resolve()
    offenders = []
    for path in repository_files({".py"}):
        if path == this_file:
            continue  # builds aiortc's default on purpose, to prove the guard refuses it
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if name == "RTCPeerConnection" and not _configuration_names_no_server(node):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, f"aiortc peers built with aiortc's default (public) ICE servers: {offenders}"


def test_no_stun_or_turn_url_in_test_peers_pages_or_scripts() -> None:
    this_file = pathlib.Path(__file__).resolve()
    found = []
    for path in repository_files(TEXT_SUFFIXES):
        if path == this_file:
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
            if ICE_SERVER_URL.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}")
    assert not found, f"ICE server URLs where test peers are configured: {found}"


async def test_server_hands_clients_no_ice_servers() -> None:
    """livekit-client and the Python SDK take their ICE servers from our JoinResponse."""
    async with running_server() as server:
        async with signal_client(server, mint_token("alice")) as ws:
            response = await join(ws)
    assert list(response.ice_servers) == []
