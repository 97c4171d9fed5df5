"""The client's signal connection on its own: what it promises the client's other parts.

Requests wait while a move to another node has no connection, and a request built for the node
we left never reaches the new one; what the server sends that cannot be read is reported and
skipped, and a close ends the responses with its reason. The WebSocket is a scripted stand-in
(the whole client against real servers is in the other test_client_* files).
"""

from __future__ import annotations

import trio
import trio_websocket
from livekit.protocol import rtc

from trio_sfu.client.signal_connection import SignalConnection, trickled_candidate


class ScriptedWebSocket:
    """Records what is sent; hands out the scripted messages, then closes."""

    closed = None

    def __init__(self, incoming: list[bytes | str] = ()) -> None:
        self.sent: list[rtc.SignalRequest] = []
        self._incoming = list(incoming)

    async def send_message(self, message: bytes) -> None:
        request = rtc.SignalRequest()
        request.ParseFromString(message)
        self.sent.append(request)

    async def get_message(self) -> bytes | str:
        await trio.lowlevel.checkpoint()
        if not self._incoming:
            raise trio_websocket.ConnectionClosed(trio_websocket.CloseReason(1001, "going away"))
        return self._incoming.pop(0)

    async def aclose(self) -> None:
        self.closed = trio_websocket.CloseReason(1000, "bye")


def ping(timestamp: int) -> rtc.SignalRequest:
    return rtc.SignalRequest(ping_req=rtc.Ping(timestamp=timestamp))


async def test_requests_wait_out_a_move_and_those_for_the_old_node_are_dropped() -> None:
    ws = ScriptedWebSocket()
    signal = SignalConnection(ws)  # type: ignore[arg-type]
    assert await signal.send(ping(1), signal.generation)
    old = signal.generation
    signal.hold()  # a resume leave arrived
    results: dict[str, bool] = {}

    async def sending(name: str, request: rtc.SignalRequest, generation: int | None) -> None:
        results[name] = await signal.send(request, generation)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sending, "built for the old node", ping(2), old)
        nursery.start_soon(sending, "for whichever node", ping(3), None)
        await trio.testing.wait_all_tasks_blocked()
        assert [r.ping_req.timestamp for r in ws.sent] == [1]  # nothing goes out during the move
        new = signal.next_generation()
        nursery.start_soon(sending, "built for the new node", ping(4), new)
        await trio.testing.wait_all_tasks_blocked()
        assert not results
        signal.release()
    assert results == {"built for the old node": False, "for whichever node": True, "built for the new node": True}
    assert sorted(r.ping_req.timestamp for r in ws.sent) == [1, 3, 4]


async def test_what_cannot_be_read_is_reported_and_skipped_and_a_close_ends_the_responses() -> None:
    pong = rtc.SignalResponse(pong_resp=rtc.Pong(last_ping_timestamp=1)).SerializeToString()
    ws = ScriptedWebSocket(["text", b"\xff\xff\xff", pong])
    errors: list[str] = []
    signal = SignalConnection(ws, on_error=errors.append)  # type: ignore[arg-type]
    response = await signal.receive()
    assert response is not None and response.WhichOneof("message") == "pong_resp"
    assert len(errors) == 2 and "text frame" in errors[0] and "undecodable" in errors[1]
    assert await signal.receive() is None
    assert signal.closed_reason is not None and "going away" in signal.closed_reason


async def test_our_leave_goes_out_once_and_not_on_a_closed_connection() -> None:
    ws = ScriptedWebSocket()
    signal = SignalConnection(ws)  # type: ignore[arg-type]
    await signal.send_leave()
    await signal.send_leave()
    assert [r.WhichOneof("message") for r in ws.sent] == ["leave"] and signal.leave_sent
    closed = ScriptedWebSocket()
    await closed.aclose()
    signal = SignalConnection(closed)  # type: ignore[arg-type]
    await signal.send_leave()
    assert closed.sent == [] and not signal.leave_sent


def test_a_trickle_names_its_candidate_or_none() -> None:
    line = "candidate:1 1 udp 2130706431 127.0.0.1 9 typ host"
    assert trickled_candidate(rtc.TrickleRequest(candidateInit=f'{{"candidate": "{line}"}}')) == line
    assert trickled_candidate(rtc.TrickleRequest(candidateInit='{"candidate": ""}', final=True)) is None
    assert trickled_candidate(rtc.TrickleRequest(final=True)) is None
    for bad in ("[1]", '{"candidate": 7}', "not json"):
        try:
            trickled_candidate(rtc.TrickleRequest(candidateInit=bad))
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} was taken")
