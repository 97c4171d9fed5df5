"""Hostile or broken input on one signal socket: the sender gets a clear close reason (or, for
forward-compatible unknown messages, is ignored), the event is counted, and another participant
in the same room carries on untouched."""

from __future__ import annotations

import pytest
import trio_websocket
from livekit.protocol import models, rtc

from trio_sfu import metrics as m
from trio_sfu.signal.participant import MAX_WS_MESSAGE
from server_fixtures import join, mint_token, recv, recv_kind, running_server, send, signal_client

State = models.ParticipantInfo.State


async def assert_bystander_fine(ws: trio_websocket.WebSocketConnection, culprit: str, culprit_gone: bool) -> None:
    if culprit_gone:
        while True:
            infos = (await recv_kind(ws, "update")).update.participants
            if any(p.identity == culprit and p.state == State.DISCONNECTED for p in infos):
                break
    await send(ws, rtc.SignalRequest(ping_req=rtc.Ping(timestamp=42)))
    assert (await recv_kind(ws, "pong_resp")).pong_resp.last_ping_timestamp == 42


async def expect_close(ws: trio_websocket.WebSocketConnection) -> trio_websocket.CloseReason:
    with pytest.raises(trio_websocket.ConnectionClosed) as info:
        while True:
            await recv(ws)
    assert info.value.reason is not None
    return info.value.reason


@pytest.mark.parametrize(
    "frame",
    [b"\xff\xff\xff", b"\x0a\x05ab", b"\x0a\x02\xff\xfe", b"\x08"],
    ids=["bad-tag", "truncated-field", "invalid-utf8", "truncated-varint"],
)
async def test_malformed_binary_frame_closes_sender_only(frame: bytes) -> None:
    async with running_server() as server:
        async with signal_client(server, mint_token("good")) as good:
            await join(good)
            async with signal_client(server, mint_token("bad")) as bad:
                await join(bad)
                await bad.send_message(frame)
                reason = await expect_close(bad)
                assert reason.code == 1007 and "malformed" in (reason.reason or "")
            await assert_bystander_fine(good, "bad", culprit_gone=True)
        assert server.metrics.get(m.SIGNAL_MALFORMED) == 1


async def test_text_frame_closes_with_reason() -> None:
    async with running_server() as server:
        async with signal_client(server, mint_token("good")) as good:
            await join(good)
            async with signal_client(server, mint_token("bad")) as bad:
                await join(bad)
                await bad.send_message('{"ping": "1"}')
                reason = await expect_close(bad)
                assert reason.code == 1003 and "binary" in (reason.reason or "")
            await assert_bystander_fine(good, "bad", culprit_gone=True)
        assert server.metrics.get(m.SIGNAL_TEXT_FRAME) == 1


async def test_unknown_oneof_field_is_ignored_and_session_continues() -> None:
    async with running_server() as server:
        async with signal_client(server, mint_token("good")) as good:
            await join(good)
            async with signal_client(server, mint_token("newer-client")) as newer:
                await join(newer)
                # Field 99 (varint): a message type from a future protocol revision.
                await newer.send_message(b"\x98\x06\x01")
                await newer.send_message(b"")  # an empty SignalRequest
                await send(newer, rtc.SignalRequest(ping_req=rtc.Ping(timestamp=7)))
                assert (await recv_kind(newer, "pong_resp")).pong_resp.last_ping_timestamp == 7
            await assert_bystander_fine(good, "newer-client", culprit_gone=True)
        assert server.metrics.get(m.SIGNAL_UNKNOWN_MESSAGE) == 2
        assert server.metrics.get(m.SIGNAL_MALFORMED) == 0


async def test_oversize_message_closes_with_1009() -> None:
    async with running_server() as server:
        async with signal_client(server, mint_token("good")) as good:
            await join(good)
            async with signal_client(server, mint_token("bad")) as bad:
                await join(bad)
                await bad.send_message(b"\x00" * (MAX_WS_MESSAGE + 1))
                reason = await expect_close(bad)
                assert reason.code == 1009
            await assert_bystander_fine(good, "bad", culprit_gone=True)
        assert server.metrics.get(m.SIGNAL_OVERSIZE) == 1


async def test_abrupt_socket_drop_removes_participant() -> None:
    async with running_server() as server:
        async with signal_client(server, mint_token("good")) as good:
            await join(good)
            async with signal_client(server, mint_token("dropper")) as dropper:
                await join(dropper)
                # Kill the TCP connection without a WebSocket close handshake.
                await dropper._stream.aclose()
            await assert_bystander_fine(good, "dropper", culprit_gone=True)
            assert list(server.registry.rooms["room1"].participants) == ["good"]


async def test_a_crashing_handler_ends_only_that_session(monkeypatch: pytest.MonkeyPatch) -> None:
    from trio_sfu.signal.participant import Participant

    async def explode(self: Participant, _req: rtc.MuteTrackRequest) -> None:
        raise RuntimeError("simulated bug")

    monkeypatch.setitem(Participant.HANDLERS, "mute", explode)
    async with running_server() as server:
        async with signal_client(server, mint_token("good")) as good:
            await join(good)
            async with signal_client(server, mint_token("bad")) as bad:
                await join(bad)
                await send(bad, rtc.SignalRequest(mute=rtc.MuteTrackRequest(sid="TR_x", muted=True)))
                with pytest.raises(trio_websocket.ConnectionClosed):
                    while True:
                        await recv(bad)
            await assert_bystander_fine(good, "bad", culprit_gone=True)
        assert server.metrics.get(m.SIGNAL_SESSION_CRASHED) == 1
