"""Three `livekit` Python SDK participants (real libwebrtc data channels over our SCTP) exchange
data through trio-sfu: a reliable broadcast, a packet to one destination identity (the third
participant must not get it), 50 numbered reliable packets that must arrive in order, lossy
packets, an RPC call and a ~40 KB text stream that must arrive whole.

Prints JSON lines on stdout; the last one is {"summary": ...}. Run inside the test's network
namespace by tests/e2e/test_e2e_data_sdk.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from livekit import api, rtc

IDENTITIES = ("alice", "bob", "carol")
TEXT = "".join(f"line {i:05d} of the document: the quick brown fox\n" for i in range(800))


def say(**item: object) -> None:
    print(json.dumps(item), flush=True)


class Side:
    def __init__(self, identity: str) -> None:
        self.identity = identity
        self.room = rtc.Room()
        # (sender identity, topic, payload text, reliable)
        self.received: list[tuple[str, str, str, bool]] = []
        self.texts: list[tuple[str, str]] = []
        self.rpc_calls: list[tuple[str, str]] = []
        self.tasks: list[asyncio.Future] = []


async def join(args: argparse.Namespace, side: Side) -> None:
    def on_data(packet: rtc.DataPacket) -> None:
        sender = packet.participant.identity if packet.participant is not None else ""
        side.received.append((sender, packet.topic or "", packet.data.decode(errors="replace"),
                              packet.kind == rtc.DataPacketKind.KIND_RELIABLE))

    async def read_text(reader: rtc.TextStreamReader, sender: str) -> None:
        side.texts.append((sender, await reader.read_all()))

    def on_text(reader: rtc.TextStreamReader, sender: str) -> None:
        side.tasks.append(asyncio.ensure_future(read_text(reader, sender)))

    async def echo(data: rtc.RpcInvocationData) -> str:
        side.rpc_calls.append((data.caller_identity, data.payload))
        return f"{data.payload.upper()} from {data.caller_identity}"

    side.room.on("data_received", on_data)
    side.room.register_text_stream_handler("doc", on_text)
    grants = api.VideoGrants(room_join=True, room=args.room)
    token = api.AccessToken(args.api_key, args.api_secret).with_identity(side.identity).with_grants(grants).to_jwt()
    await side.room.connect(args.url, token, rtc.RoomOptions(auto_subscribe=True))
    # The SDK has no local participant before the join.
    side.room.local_participant.register_rpc_method("echo", echo)


async def until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def payloads(side: Side, sender: str, prefix: str) -> list[str]:
    return [p for s, _, p, _ in side.received if s == sender and p.startswith(prefix)]


async def run(args: argparse.Namespace) -> dict[str, object]:
    a, b, c = (Side(i) for i in IDENTITIES)
    summary: dict[str, object] = {}
    try:
        await asyncio.wait_for(asyncio.gather(*(join(args, s) for s in (a, b, c))), 25)
        summary["joined"] = await until(lambda: all(len(s.room.remote_participants) == 2 for s in (a, b, c)), 10)
        say(event="joined", ok=summary["joined"])

        await a.room.local_participant.publish_data(b"hello-all", reliable=True, topic="greet")
        summary["broadcast"] = await until(
            lambda: all(("alice", "greet", "hello-all", True) in s.received for s in (b, c)), 20)
        say(event="broadcast", ok=summary["broadcast"])

        await b.room.local_participant.publish_data(b"bob-to-alice", reliable=True, destination_identities=["alice"])
        summary["targeted"] = await until(lambda: bool(payloads(a, "bob", "bob-to-alice")), 10)

        for i in range(50):
            await b.room.local_participant.publish_data(f"seq-{i}".encode(), reliable=True, topic="seq")
        summary["ordered"] = await until(lambda: len(payloads(a, "bob", "seq-")) >= 50, 10)
        summary["order_at_alice"] = payloads(a, "bob", "seq-")

        for i in range(10):
            await c.room.local_participant.publish_data(f"lossy-{i}".encode(), reliable=False, topic="lossy")
        summary["lossy"] = await until(lambda: len(payloads(a, "carol", "lossy-")) >= 1
                                       and len(payloads(b, "carol", "lossy-")) >= 1, 10)
        await asyncio.sleep(0.5)
        summary["lossy_counts"] = {s.identity: len(payloads(s, "carol", "lossy-")) for s in (a, b)}
        summary["lossy_kinds_reliable"] = [r for s in (a, b) for (snd, _, p, r) in s.received
                                           if snd == "carol" and p.startswith("lossy-") and r]

        summary["rpc_response"] = await asyncio.wait_for(
            a.room.local_participant.perform_rpc(destination_identity="bob", method="echo", payload="ping"), 15)
        summary["rpc_calls_at_bob"] = b.rpc_calls

        await a.room.local_participant.send_text(TEXT, topic="doc", destination_identities=["bob"])
        summary["text"] = await until(lambda: bool(b.texts), 15)
        summary["text_whole"] = bool(b.texts) and b.texts[0] == ("alice", TEXT)
        summary["text_len_at_bob"] = len(b.texts[0][1]) if b.texts else 0
        summary["text_sent_len"] = len(TEXT)
        await asyncio.sleep(0.5)
        summary["carol_texts"] = len(c.texts)
    except Exception as exc:  # reported in the summary; the test says what failed
        summary["error"] = repr(exc)
    summary["carol_got_targeted"] = bool(payloads(c, "bob", "bob-to-alice"))
    summary["received"] = {s.identity: [list(r) for r in s.received if not r[2].startswith("seq-")] for s in (a, b, c)}
    for side in (a, b, c):
        for task in side.tasks:
            task.cancel()
        await side.room.disconnect()
    return summary


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--room", default="data-sdk")
    parser.add_argument("--api-key", default="devkey")
    parser.add_argument("--api-secret", default="secret")
    args = parser.parse_args()
    summary = asyncio.run(run(args))
    say(summary=summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
