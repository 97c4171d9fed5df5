"""Bad agent workers against trio-sfu's /agent, one after another, from inside the test's
namespace: no token, a token without the agent grant, then a worker that registers properly
and sends bytes that are no WorkerMessage. Prints one JSON line per attempt, then {"done": true}.
"""

from __future__ import annotations

import argparse
import json

import trio
import trio_websocket
from livekit import api
from livekit.protocol import agent as agent_pb


def say(**item: object) -> None:
    print(json.dumps(item), flush=True)


async def refused(url: str, headers: list[tuple[str, str]]) -> int | None:
    try:
        async with trio_websocket.open_websocket_url(url, extra_headers=headers):
            return None
    except trio_websocket.HandshakeError as exc:
        return getattr(exc, "status_code", -1)


async def main(args: argparse.Namespace) -> None:
    url = args.url + "/agent"
    say(no_token=await refused(url, []))
    not_agent = api.AccessToken(args.api_key, args.api_secret).with_identity("intruder").with_grants(
        api.VideoGrants(room_join=True, room="x")).to_jwt()
    say(wrong_grant=await refused(url, [("authorization", f"Bearer {not_agent}")]))
    token = api.AccessToken(args.api_key, args.api_secret).with_grants(api.VideoGrants(agent=True)).to_jwt()
    async with trio_websocket.open_websocket_url(url, extra_headers=[("authorization", f"Bearer {token}")]) as ws:
        await ws.send_message(agent_pb.WorkerMessage(register=agent_pb.RegisterWorkerRequest(
            type=agent_pb.JobType.JT_ROOM)).SerializeToString())
        reply = agent_pb.ServerMessage.FromString(await ws.get_message())
        say(registered=reply.register.worker_id)
        await ws.send_message(b"\xff\xff\xff\xff not a protobuf")
        try:
            with trio.fail_after(10):
                while True:
                    await ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            say(closed={"code": exc.reason.code, "reason": exc.reason.reason})
    say(done=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--api-key", default="devkey")
    parser.add_argument("--api-secret", default="secret")
    trio.run(main, parser.parse_args())
