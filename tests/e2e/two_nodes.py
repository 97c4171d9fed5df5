"""Two trio-sfu nodes (node-a, node-b) of one room in one Trio run, linked by the in-memory relay,
for end-to-end migration tests with real SDK clients.

    python two_nodes.py --node-ip 198.18.0.1

Runs inside the test's network namespace: HTTP/WebSocket on 127.0.0.1 (ephemeral ports), media on
an ephemeral UDP port advertised at --node-ip (libwebrtc ignores loopback candidates).

stdout is JSON lines:
  {"ready": {"node-a": "ws://127.0.0.1:P1", "node-b": "ws://127.0.0.1:P2"}}
stdin takes JSON commands, one per line:
  {"migrate": {"room": R, "identity": I, "to": "node-b"}}
    -> {"migrated": {"identity": I, "sid": S, "ok": bool, "seconds": float}}
On stdin EOF both nodes shut down and the last line is {"stopped": {"a": {...}, "b": {...}}} with
the migration and relay counters and, per node, the sids each identity joined under. Logs go to
stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import trio

from trio_sfu.config import DEV_API_KEY, DEV_API_SECRET, ServerConfig
from trio_sfu.log import configure, get_logger
from trio_sfu.cluster.node_relay import (
    MIGRATIONS_FAILED,
    MIGRATIONS_IN,
    MIGRATIONS_OUT,
    RELAY_REJECTED,
)
from trio_sfu.signal.participant import Participant
from trio_sfu.cluster.link import in_memory_link_pair
from trio_sfu.server import Server

#: Longer than any of NodeRelay's own waits (accept 10 s + hand-over 15 s), so a migration that
#: hangs past them is a bug this script reports rather than waits out forever.
MIGRATE_TIMEOUT_S = 40.0
REPORTED_COUNTERS = (MIGRATIONS_OUT, MIGRATIONS_IN, MIGRATIONS_FAILED, RELAY_REJECTED)

_log = get_logger("two_nodes")


def say(**item: object) -> None:
    print(json.dumps(item), flush=True)


def dev_config(node_ip: str) -> ServerConfig:
    """What `trio-sfu --dev --port 0 --udp-port 0 --node-ip <node_ip>` builds (without ICE/TCP)."""
    config = ServerConfig()
    config.development = True
    config.keys = {DEV_API_KEY: DEV_API_SECRET}
    config.port = 0
    config.rtc.udp_port = 0
    # ICE/TCP off: two nodes in one process cannot both listen on 7881.
    config.rtc.tcp_port = 0
    config.rtc.node_ip = node_ip
    return config


async def stdin_lines():
    # A dup so closing the stream does not close the process's fd 0 under sys.stdin.
    stream = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    buffer = b""
    async with stream:
        while True:
            chunk = await stream.receive_some(65536)
            if not chunk:
                if buffer.strip():
                    yield buffer.decode(errors="replace")
                return
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if line.strip():
                    yield line.decode(errors="replace")


async def migrate(a: Server, command: dict) -> dict[str, object]:
    room_name, identity, to_node = command.get("room"), command.get("identity"), command.get("to", "node-b")
    result: dict[str, object] = {"identity": identity, "ok": False}
    room = a.registry.rooms.get(room_name)
    participant = room.participants.get(identity) if room is not None else None
    if participant is None:
        result["error"] = f"no participant {identity!r} in room {room_name!r} on node-a"
        return result
    result["sid"] = participant.sid
    assert a.relay is not None
    started = time.monotonic()
    with trio.move_on_after(MIGRATE_TIMEOUT_S) as scope:
        result["ok"] = await a.relay.migrate(room_name, participant.sid, to_node)
    if scope.cancelled_caught:
        result["error"] = f"migrate did not return within {MIGRATE_TIMEOUT_S} s"
    result["seconds"] = round(time.monotonic() - started, 3)
    return result


class JoinLog:
    """Every sid each identity joined a node under (the webhook events' `participant_joined`):
    a client that rejoins instead of resuming shows up here with a second sid."""

    def __init__(self) -> None:
        self.sids: dict[str, list[str]] = {}

    def room_event(self, event: str, room: object, participant: Participant | None = None, track: object = None) -> None:
        if event == "participant_joined" and participant is not None:
            self.sids.setdefault(participant.identity, []).append(participant.sid)


def counters(server: Server, joins: JoinLog) -> dict[str, object]:
    report: dict[str, object] = {name: server.metrics.get(name) for name in REPORTED_COUNTERS}
    report["joined"] = joins.sids
    report["shutdown_clean"] = server.shutdown_clean
    if server.relay is not None:
        report["rejections"] = list(server.relay.rejections)[-20:]
    return report


async def run(node_ip: str) -> None:
    a = Server(dev_config(node_ip), enable_media=True, node_id="node-a")
    b = Server(dev_config(node_ip), enable_media=True, node_id="node-b")
    joins_a, joins_b = JoinLog(), JoinLog()
    a.registry.observers.append(joins_a)
    b.registry.observers.append(joins_b)
    assert a.relay is not None and b.relay is not None
    link_a, link_b = in_memory_link_pair("node-a", "node-b")
    a.relay.add_link(link_a)
    b.relay.add_link(link_b)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await nursery.start(b.run)
        say(ready={"node-a": a.url, "node-b": b.url})
        async for line in stdin_lines():
            try:
                command = json.loads(line)
            except ValueError:
                _log.warning("ignoring a line that is not JSON", kv={"line": line[:200]})
                continue
            if isinstance(command, dict) and isinstance(command.get("migrate"), dict):
                _log.info("migrate command", kv=command["migrate"])
                say(migrated=await migrate(a, command["migrate"]))
            else:
                _log.warning("ignoring an unknown command", kv={"line": line[:200]})
        _log.info("stdin closed, shutting down both nodes")
        a.request_shutdown()
        b.request_shutdown()
    say(stopped={"a": counters(a, joins_a), "b": counters(b, joins_b)})


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--node-ip", required=True, help="address advertised in ICE candidates")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args()
    configure(args.log_level)  # logging.basicConfig: stderr
    trio.run(run, args.node_ip)
    return 0


if __name__ == "__main__":
    sys.exit(main())
