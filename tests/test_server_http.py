"""The one-port HTTP front, spoken to with a raw h11 client over a real loopback socket."""

from __future__ import annotations

import base64
import gzip
import json
from urllib.parse import quote

import jwt
import pytest
import trio
import trio_websocket
from livekit.protocol import models, rtc

import trio_sfu.api.http_front as http_front
from trio_sfu import metrics as m
from server_fixtures import API_KEY, API_SECRET, http, mint_token, running_server


async def raw_exchange(port: int, data: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(data)
    received = b""
    with trio.fail_after(5):
        while chunk := await stream.receive_some(65536):
            received += chunk
    await stream.aclose()
    return received


async def test_root_is_ok() -> None:
    async with running_server() as server:
        status, _, body, version = await http(server.port, "GET", "/")
        assert (status, body, version) == (200, b"OK", b"1.1")
        status, _, body, _ = await http(server.port, "HEAD", "/")
        assert (status, body) == (200, b"")


async def test_validate_success_with_header_and_query_token() -> None:
    async with running_server() as server:
        token = mint_token("alice")
        status, headers, body, _ = await http(server.port, "GET", "/rtc/validate?protocol=17", [("authorization", f"Bearer {token}")])
        assert (status, body) == (200, b"success")
        assert headers["access-control-allow-origin"] == "*"
        status, headers, body, _ = await http(server.port, "GET", f"/rtc/validate?access_token={token}")
        assert (status, body) == (200, b"success")


@pytest.mark.parametrize(
    "case,status",
    [
        ("no-token", 401),
        ("not-bearer", 401),
        ("wrong-secret", 401),
        ("no-room-join", 401),
        ("no-identity", 400),
    ],
)
async def test_validate_refusals(case: str, status: int) -> None:
    async with running_server() as server:
        headers = []
        if case == "not-bearer":
            headers = [("authorization", "Basic dXNlcjpwYXNz")]
        elif case == "wrong-secret":
            headers = [("authorization", "Bearer " + mint_token("a", secret="another-secret-of-sufficient-length-123"))]
        elif case == "no-room-join":
            headers = [("authorization", "Bearer " + mint_token("a", room_join=False))]
        elif case == "no-identity":
            token = jwt.encode({"iss": API_KEY, "exp": 4102444800, "video": {"roomJoin": True, "room": "r"}}, API_SECRET, "HS256")
            headers = [("authorization", "Bearer " + token)]
        got, hdrs, body, _ = await http(server.port, "GET", "/rtc/validate", headers)
        assert got == status
        assert hdrs["access-control-allow-origin"] == "*"
        assert hdrs["content-type"].startswith("text/plain") and body.strip()
        assert b"Traceback" not in body
        assert server.metrics.get(m.AUTH_FAILED) == 1


async def test_validate_preflight() -> None:
    async with running_server() as server:
        status, headers, _, _ = await http(
            server.port, "OPTIONS", "/rtc/validate",
            [("origin", "https://app.example"), ("access-control-request-method", "GET"),
             ("access-control-request-headers", "authorization")],
        )
        assert status == 204
        assert headers["access-control-allow-origin"] == "*"
        assert "GET" in headers["access-control-allow-methods"]
        assert "authorization" in headers["access-control-allow-headers"].lower()


def join_request_param(join: rtc.JoinRequest, *, gzip_it: bool = False) -> str:
    """`join_request` as the clients send it: base64url of a WrappedJoinRequest, percent-encoded."""
    payload = join.SerializeToString()
    wrapped = rtc.WrappedJoinRequest(
        compression=rtc.WrappedJoinRequest.Compression.GZIP if gzip_it else rtc.WrappedJoinRequest.Compression.NONE,
        join_request=gzip.compress(payload) if gzip_it else payload)
    return quote(base64.urlsafe_b64encode(wrapped.SerializeToString()).decode())


@pytest.mark.parametrize("path", ["/rtc/v1/validate", "//rtc/v1/validate"])
async def test_v1_validate_mirrors_validate(path: str) -> None:
    async with running_server() as server:
        token = mint_token("alice")
        param = join_request_param(rtc.JoinRequest(client_info=models.ClientInfo(protocol=17)), gzip_it=True)
        status, headers, body, version = await http(server.port, "GET", f"{path}?join_request={param}",
                                                    [("authorization", f"Bearer {token}")])
        assert (status, body, version) == (200, b"success", b"1.1")
        assert headers["access-control-allow-origin"] == "*"
        # The same refusal as /rtc/validate for a bad token.
        status, headers, body, _ = await http(server.port, "GET", f"{path}?join_request={param}")
        assert status == 401 and headers["access-control-allow-origin"] == "*"
        assert server.metrics.get(m.HTTP_RTC_V1_REQUESTS) == 2
        assert server.metrics.get(m.HTTP_RTC_V0_REQUESTS) == 0


@pytest.mark.parametrize("query,reason", [
    ("", b"join_request is required"),
    ("?join_request=", b"join_request is required"),
    ("?join_request=%%%%", b"cannot base64 decode wrapped join request"),
    ("?join_request=AAAA", b"cannot unmarshal wrapped join request"),
])
async def test_v1_validate_refuses_an_unusable_join_request(query: str, reason: bytes) -> None:
    async with running_server() as server:
        token = mint_token("alice")
        status, headers, body, _ = await http(server.port, "GET", f"/rtc/v1/validate{query}",
                                              [("authorization", f"Bearer {token}")])
        assert status == 400, body
        assert reason in body
        assert headers["access-control-allow-origin"] == "*"
        assert server.metrics.get(m.SIGNAL_JOIN_REQUEST_INVALID) == 1


async def test_v1_upgrade_with_a_bad_join_request_is_a_400_before_the_upgrade() -> None:
    async with running_server() as server:
        url = f"ws://127.0.0.1:{server.port}/rtc/v1?join_request=AAAA&access_token={mint_token('alice')}"
        with pytest.raises(trio_websocket.ConnectionRejected) as info:
            async with trio_websocket.open_websocket_url(url, connect_timeout=5):
                pass
        assert info.value.status_code == 400
        assert b"cannot unmarshal wrapped join request" in (info.value.body or b"")
        assert "alice" not in getattr(server.registry.rooms.get("room1"), "participants", {})
        assert server.metrics.get(m.SIGNAL_JOINS) == 0


async def test_v1_attributes_need_the_metadata_permission() -> None:
    async with running_server() as server:
        param = join_request_param(rtc.JoinRequest(participant_attributes={"k": "v"}))
        status, _, body, _ = await http(server.port, "GET", f"/rtc/v1/validate?join_request={param}",
                                        [("authorization", f"Bearer {mint_token('alice')}")])
        assert status == 401, body


async def test_v1_without_upgrade_is_404() -> None:
    async with running_server() as server:
        status, _, _, _ = await http(server.port, "GET", "/rtc/v1?join_request=AAAA",
                                     [("authorization", "Bearer " + mint_token("a"))])
        assert status == 404


async def test_rtc_without_upgrade_is_404() -> None:
    async with running_server() as server:
        status, _, _, _ = await http(server.port, "GET", "/rtc", [("authorization", "Bearer " + mint_token("a"))])
        assert status == 404


async def test_rtc_upgrade_with_bad_token_is_an_http_401() -> None:
    async with running_server() as server:
        bad = mint_token("a", secret="not-the-server-secret-0123456789abcdef")
        url = f"ws://127.0.0.1:{server.port}/rtc?protocol=17"
        with pytest.raises(trio_websocket.ConnectionRejected) as info:
            async with trio_websocket.open_websocket_url(url, extra_headers=[(b"authorization", f"Bearer {bad}".encode())], connect_timeout=5):
                pass
        assert info.value.status_code == 401
        assert b"signature" in (info.value.body or b"")
        assert bad.encode() not in (info.value.body or b"")
        assert not server.registry.rooms


async def test_twirp_unknown_method_is_json_bad_route() -> None:
    async with running_server() as server:
        status, headers, body, _ = await http(
            server.port, "POST", "/twirp/livekit.RoomService/NoSuchMethod",
            [("content-type", "application/json")], body=b"{}",
        )
        assert status == 404 and headers["content-type"] == "application/json"
        assert json.loads(body)["code"] == "bad_route"


async def test_unknown_path_is_404() -> None:
    async with running_server() as server:
        status, _, _, _ = await http(server.port, "GET", "/nope")
        assert status == 404


async def test_oversized_head_is_refused_without_a_trace() -> None:
    async with running_server() as server:
        request = b"GET / HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * (http_front.MAX_HEAD * 2) + b"\r\n\r\n"
        response = await raw_exchange(server.port, request)
        assert response.startswith(b"HTTP/1.1 431")
        assert b"Traceback" not in response


async def test_garbage_request_line_is_400() -> None:
    async with running_server() as server:
        response = await raw_exchange(server.port, b"\x16\x03\x01\x02\x00garbage\r\n\r\n")
        assert response.startswith(b"HTTP/1.1 400")
        assert server.metrics.get(m.HTTP_BAD_REQUEST) == 1
        # The server still answers afterwards.
        status, _, _, _ = await http(server.port, "GET", "/")
        assert status == 200


async def test_slow_head_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_front, "HEAD_TIMEOUT", 0.3)
    async with running_server() as server:
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        await stream.send_all(b"GET / HTTP/1.1\r\nhost: x\r\n")  # never finishes the head
        received = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some(4096):
                received += chunk
        await stream.aclose()
        assert received.startswith(b"HTTP/1.1 408")
        assert server.metrics.get(m.HTTP_TIMEOUT) == 1


async def test_bad_websocket_handshake_is_400_and_joins_nothing() -> None:
    async with running_server() as server:
        token = mint_token("a")
        status, _, _, _ = await http(
            server.port, "GET", "/rtc",
            [("authorization", f"Bearer {token}"), ("upgrade", "websocket"), ("connection", "Upgrade")],
        )
        assert status == 400
        assert not server.registry.rooms


async def test_attributes_param_needs_permission_and_valid_encoding() -> None:
    import base64 as b64

    encoded = b64.urlsafe_b64encode(json.dumps({"role": "host"}).encode()).decode()
    async with running_server() as server:
        allowed = mint_token("a", can_update_own_metadata=True)
        status, _, body, _ = await http(server.port, "GET", f"/rtc/validate?attributes={encoded}", [("authorization", f"Bearer {allowed}")])
        assert (status, body) == (200, b"success")
        status, _, _, _ = await http(server.port, "GET", "/rtc/validate?attributes=%%%not-base64", [("authorization", f"Bearer {allowed}")])
        assert status == 400
        plain = mint_token("b")
        status, _, _, _ = await http(server.port, "GET", f"/rtc/validate?attributes={encoded}", [("authorization", f"Bearer {plain}")])
        assert status == 401


async def test_validate_reports_missing_room_when_auto_create_is_off() -> None:
    from server_fixtures import make_config

    config = make_config()
    config.room.auto_create = False
    async with running_server(config) as server:
        token = mint_token("a", room="not-there")
        status, headers, body, _ = await http(server.port, "GET", "/rtc/validate", [("authorization", f"Bearer {token}")])
        assert (status, body.strip()) == (404, b"requested room does not exist")
        assert headers["access-control-allow-origin"] == "*"
        await server.registry.get_or_create("not-there")
        status, _, body, _ = await http(server.port, "GET", "/rtc/validate", [("authorization", f"Bearer {token}")])
        assert (status, body) == (200, b"success")
