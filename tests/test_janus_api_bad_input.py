"""The Janus adapter against a WebSocket peer that misbehaves: replies of the wrong shape, text
that is not JSON, a connection closed mid-request. Each ends in a JanusError (what the load
tester counts as a participant's error), never another exception or a task left running. The
peer is a real trio-websocket server on loopback speaking the `janus-protocol` subprotocol."""

from __future__ import annotations

import json
from typing import Callable

import pytest
import trio
from trio_websocket import serve_websocket

from trio_sfu.client.janus import SUBPROTOCOL, JanusError, JanusParticipant

#: What the peer answers to a request: a list of texts to send (or None: close the connection).
Script = Callable[[dict], list[str] | None]


async def _serve(script: Script, task_status=trio.TASK_STATUS_IGNORED) -> None:
    async def handler(request) -> None:
        ws = await request.accept(subprotocol=SUBPROTOCOL)
        while True:
            message = json.loads(await ws.get_message())
            replies = script(message)
            if replies is None:
                await ws.aclose()
                return
            for text in replies:
                await ws.send_message(text)

    await serve_websocket(handler, "127.0.0.1", 0, ssl_context=None, task_status=task_status)


def _ok(message: dict, **fields) -> str:
    return json.dumps({"janus": "success", "transaction": message["transaction"], **fields})


def _session_then(after_attach: Callable[[dict], list[str] | None]) -> Script:
    """A peer that creates sessions and handles as Janus does, then misbehaves on plugin messages."""
    def script(message: dict) -> list[str] | None:
        kind = message["janus"]
        if kind in ("create", "attach"):
            return [_ok(message, data={"id": 42})]
        if kind in ("destroy", "detach", "keepalive"):
            return [_ok(message)]
        return after_attach(message)
    return script


async def _publish_against(script: Script) -> BaseException | None:
    """What publishing against the scripted peer raised (outside any exception group), if anything."""
    raised: BaseException | None = None
    async with trio.open_nursery() as nursery:
        server = await nursery.start(_serve, script)
        url = f"ws://127.0.0.1:{server.port}"
        try:
            with trio.fail_after(20):
                async with JanusParticipant.connect(url, 1234, "pub") as participant:
                    await participant.publish(video=False, audio=True)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            raised = exc
        nursery.cancel_scope.cancel()
    return raised


@pytest.mark.parametrize("name, after_attach", [
    ("no plugin data", lambda m: [json.dumps({"janus": "event", "transaction": m["transaction"]})]),
    ("plugin data not an object", lambda m: [json.dumps({"janus": "event", "transaction": m["transaction"],
                                                         "plugindata": {"data": "joined"}})]),
    ("publisher id not a number", lambda m: [json.dumps({"janus": "event", "transaction": m["transaction"],
                                                         "plugindata": {"data": {"id": "x"}}})]),
    ("videoroom error", lambda m: [json.dumps({"janus": "event", "transaction": m["transaction"],
                                               "plugindata": {"data": {"error_code": 426, "error": "No such room"}}})]),
    ("no answer to the publish", lambda m: [json.dumps({"janus": "event", "transaction": m["transaction"],
                                                        "plugindata": {"data": {"id": 7}},
                                                        "jsep": {"type": "offer", "sdp": 5}})]),
    ("an answer that is not SDP", lambda m: [json.dumps({"janus": "event", "transaction": m["transaction"],
                                                         "plugindata": {"data": {"id": 7}},
                                                         "jsep": {"type": "answer", "sdp": "not sdp"}})]),
    ("garbage then the connection closes", lambda m: None),
])
async def test_misbehaving_peer_gives_a_janus_error(name: str, after_attach) -> None:
    garbage = ["not json", "[1, 2]", json.dumps({"janus": "event", "transaction": "nobody asked"})]

    def with_garbage(message: dict) -> list[str] | None:
        replies = after_attach(message)
        return None if replies is None else garbage + replies

    raised = await _publish_against(_session_then(with_garbage))
    assert isinstance(raised, JanusError), repr(raised)


async def test_unreachable_janus_is_a_janus_error() -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connection refused
        with pytest.raises(JanusError, match="cannot reach janus"):
            async with JanusParticipant.connect(f"ws://127.0.0.1:{port}", 1234, "x"):
                pass
