"""aioice as an independent full ICE agent, for tests/test_ice.py (not a test itself).

Usage: ice_aioice_peer.py ROLE PEER_PORT PEER_UFRAG PEER_PWD OUR_UFRAG OUR_PWD

ROLE is ``controlling-lite`` (aioice controlling, told its peer is ICE-lite, so
it uses regular nomination), ``controlling-full`` (aioice controlling with
aggressive nomination: USE-CANDIDATE on every check) or ``controlled``.

The peer is a host candidate on 127.0.0.1:PEER_PORT. The script prints one JSON
line with its own candidate port as soon as it has gathered, then connects,
sends one datagram over the nominated pair, waits for the echo and prints a
final JSON report.
"""

import asyncio
import json
import sys

import aioice.ice
from aioice import Candidate, Connection


async def main() -> None:
    role, port, peer_ufrag, peer_pwd, our_ufrag, our_pwd = sys.argv[1:]
    # aioice gathers host candidates from interfaces and skips 127.0.0.1; the
    # test runs on loopback only, so hand it that address explicitly.
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]
    conn = Connection(
        ice_controlling=role.startswith("controlling"),
        components=1,
        use_ipv6=False,
        local_username=our_ufrag,
        local_password=our_pwd,
    )
    conn.remote_is_lite = role == "controlling-lite"
    await conn.gather_candidates()
    local_port = conn.local_candidates[0].port
    print(json.dumps({"local_port": local_port}), flush=True)
    conn.remote_username = peer_ufrag
    conn.remote_password = peer_pwd
    await conn.add_remote_candidate(Candidate("1", 1, "udp", 2130706431, "127.0.0.1", int(port), "host"))
    await conn.add_remote_candidate(None)
    report = {"connected": False, "local_port": local_port, "echo": None}
    try:
        await asyncio.wait_for(conn.connect(), 10)
        report["connected"] = True
        await conn.send(b"hello from aioice")
        report["echo"] = (await asyncio.wait_for(conn.recv(), 5)).decode()
    finally:
        await conn.close()
        print(json.dumps(report), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
