"""aioice as an independent controlling full ICE agent, for tests/test_ice.py (not a test itself).

Usage: ice_aioice_peer.py LITE_PORT LITE_UFRAG LITE_PWD OUR_UFRAG OUR_PWD {lite|full}

Connects to a host candidate on 127.0.0.1:LITE_PORT, sends one datagram over
the nominated pair, waits for the echo and prints one JSON line. ``lite`` tells
aioice its peer is ICE-lite, so it uses regular nomination; ``full`` makes it
nominate aggressively (USE-CANDIDATE on every check).
"""

import asyncio
import json
import sys

import aioice.ice
from aioice import Candidate, Connection


async def main() -> None:
    port, lite_ufrag, lite_pwd, our_ufrag, our_pwd, mode = sys.argv[1:]
    # aioice gathers host candidates from interfaces and skips 127.0.0.1; the
    # test runs on loopback only, so hand it that address explicitly.
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]
    conn = Connection(
        ice_controlling=True,
        components=1,
        use_ipv6=False,
        local_username=our_ufrag,
        local_password=our_pwd,
    )
    conn.remote_is_lite = mode == "lite"
    await conn.gather_candidates()
    conn.remote_username = lite_ufrag
    conn.remote_password = lite_pwd
    await conn.add_remote_candidate(Candidate("1", 1, "udp", 2130706431, "127.0.0.1", int(port), "host"))
    await conn.add_remote_candidate(None)
    report = {"connected": False, "local_port": conn.local_candidates[0].port, "echo": None}
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
