"""The `livekit` Python SDK side of the Chromium data test: joins as `py`, waits for the tab,
sends it a reliable broadcast, a packet to its identity, an RPC call and a text stream; answers
RPC "echo"; records what the tab sends. Prints {"summary": ...} once everything expected from the
tab arrived (or at the timeout), then stays in the room until stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from livekit import api, rtc


def say(**item: object) -> None:
    print(json.dumps(item), flush=True)


async def wait_stdin_closed() -> None:
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)


async def run(args: argparse.Namespace) -> None:
    room = rtc.Room()
    data: list[dict] = []
    rpc_calls: list[list[str]] = []
    texts: list[list[str]] = []
    tasks: list[asyncio.Future] = []
    summary: dict[str, object] = {}

    def on_data(packet: rtc.DataPacket) -> None:
        data.append({"from": packet.participant.identity if packet.participant else None,
                     "text": packet.data.decode(errors="replace"), "topic": packet.topic or "",
                     "reliable": packet.kind == rtc.DataPacketKind.KIND_RELIABLE})

    async def read_text(reader: rtc.TextStreamReader, sender: str) -> None:
        texts.append([sender, await reader.read_all()])

    async def echo(invocation: rtc.RpcInvocationData) -> str:
        rpc_calls.append([invocation.caller_identity, invocation.payload])
        return f"{invocation.payload.upper()} from py"

    room.on("data_received", on_data)
    room.register_text_stream_handler("doc", lambda reader, sender: tasks.append(
        asyncio.ensure_future(read_text(reader, sender))))
    try:
        grants = api.VideoGrants(room_join=True, room=args.room)
        token = api.AccessToken(args.api_key, args.api_secret).with_identity("py").with_grants(grants).to_jwt()
        await asyncio.wait_for(room.connect(args.url, token), 20)
        room.local_participant.register_rpc_method("echo", echo)
        deadline = time.monotonic() + args.timeout
        while not any(p.identity == args.remote for p in room.remote_participants.values()):
            if time.monotonic() > deadline:
                raise TimeoutError("the tab never joined")
            await asyncio.sleep(0.1)
        lp = room.local_participant
        await lp.publish_data(b"py-hello", reliable=True, topic="greet")
        await lp.publish_data(b"py-to-web", reliable=True, destination_identities=[args.remote])
        for attempt in range(5):
            try:
                summary["rpc_response"] = await lp.perform_rpc(destination_identity=args.remote, method="echo",
                                                               payload="from-py")
                break
            except rtc.RpcError as exc:
                summary["rpc_error"] = str(exc)
                await asyncio.sleep(1)
        await lp.send_text(args.text, topic="doc", destination_identities=[args.remote])

        def complete() -> bool:
            have = {d["text"] for d in data}
            return {"web-hello", "web-to-py"} <= have and bool(rpc_calls) and bool(texts)

        while not complete() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.3)
    except Exception as exc:  # reported in the summary; the test says what failed
        summary["error"] = repr(exc)
    summary.update(data=data, rpc_calls=rpc_calls,
                   text_whole=bool(texts) and texts[0] == [args.remote, args.remote_text],
                   text_lens=[len(t[1]) for t in texts])
    say(summary=summary)
    await wait_stdin_closed()
    for task in tasks:
        task.cancel()
    await room.disconnect()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--room", default="data-browser")
    parser.add_argument("--remote", default="web")
    parser.add_argument("--text", required=True)
    parser.add_argument("--remote-text", required=True)
    parser.add_argument("--timeout", type=float, default=60)
    parser.add_argument("--api-key", default="devkey")
    parser.add_argument("--api-secret", default="secret")
    asyncio.run(run(parser.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
