"""The HTTP front under hostile clients (issue 13, findings 8 and 9): connection caps with early
refusal, the Twirp token checked before the body is read, an exact head limit, pipelined
requests all answered, and any token that cannot be parsed a 401 -- never a 500.

Spoken to over real loopback sockets with raw bytes, so nothing a polite client library does
hides what the server does.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import h11
import trio
import trio_websocket
from livekit.protocol import rtc

import trio_sfu.api.http_front as http_front
from trio_sfu import metrics as m
from trio_sfu.api.http_front import ConnectionLimits, ConnectionCounter
from server_fixtures import API_KEY, API_SECRET, http, join, mint_token, recv_kind, running_server, send, signal_client


async def read_until_closed(stream: trio.SocketStream, timeout: float = 3.0) -> bytes:
    received = b""
    with trio.fail_after(timeout):
        while chunk := await stream.receive_some(65536):
            received += chunk
    return received


async def exchange(port: int, data: bytes, timeout: float = 3.0) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        return await read_until_closed(stream, timeout)


def statuses(response: bytes) -> list[int]:
    """The status of each response in `response`, parsed with h11 as a client would."""
    found = []
    while response:
        client = h11.Connection(h11.CLIENT)
        client.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
        client.send(h11.EndOfMessage())
        client.receive_data(response)
        while (event := client.next_event()) is not h11.NEED_DATA:
            if isinstance(event, h11.Response):
                found.append(event.status_code)
            elif isinstance(event, h11.EndOfMessage):
                break
        response = client.trailing_data[0]
    return found


def raw_jwt(payload_json: str, secret: str = API_SECRET) -> str:
    """A signed HS256 token whose payload is exactly `payload_json` (libraries would normalise it)."""
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(payload_json.encode())
    signature = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(signature)


# ---- finding 8: connection caps -------------------------------------------------------------


async def test_connections_over_the_per_address_cap_are_refused_on_arrival_with_429() -> None:
    async with running_server() as server:
        async with signal_client(server, mint_token("member")) as member:
            await join(member)
            per_ip = http_front.MAX_CONNECTIONS_PER_IP
            idle = []
            try:
                # The member's socket is one of the address's connections already.
                for _ in range(per_ip - 1):
                    idle.append(await trio.open_tcp_stream("127.0.0.1", server.port))
                # Refused before it sends a byte: the answer comes unasked.
                extra = await trio.open_tcp_stream("127.0.0.1", server.port)
                async with extra:
                    response = await read_until_closed(extra)
                assert response.startswith(b"HTTP/1.1 429 "), response[:200]
                assert b"retry-after: 1" in response.lower()
                assert server.metrics.get(m.HTTP_REFUSED_PER_IP_CAP) == 1
                # The member that was already connected is untouched.
                await send(member, rtc.SignalRequest(ping_req=rtc.Ping(timestamp=3)))
                assert (await recv_kind(member, "pong_resp")).pong_resp.last_ping_timestamp == 3
            finally:
                for stream in idle:
                    await stream.aclose()
            # Closed connections give their places back.
            with trio.fail_after(5):
                while server.front.connections.total > 1:
                    await trio.sleep(0.02)
            status, _, body, _ = await http(server.port, "GET", "/")
            assert (status, body) == (200, b"OK")


async def test_connections_over_the_total_cap_are_refused_with_503() -> None:
    async with running_server() as server:
        server.front.connections.limits = ConnectionLimits(total=3, per_ip=100)
        held = [await trio.open_tcp_stream("127.0.0.1", server.port) for _ in range(3)]
        try:
            response = await exchange(server.port, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            assert response.startswith(b"HTTP/1.1 503 "), response[:200]
            assert server.metrics.get(m.HTTP_REFUSED_TOTAL_CAP) == 1
        finally:
            for stream in held:
                await stream.aclose()


def test_connection_counter_counts_per_address() -> None:
    counter = ConnectionCounter(ConnectionLimits(total=3, per_ip=2))
    assert counter.admit("a") is None and counter.admit("a") is None
    assert counter.admit("a") == 429
    assert counter.admit("b") is None
    assert counter.admit("c") == 503
    counter.release("a")
    assert counter.admit("c") is None and counter.by_ip == {"a": 1, "b": 1, "c": 1}
    for ip in ("a", "b", "c"):
        counter.release(ip)
    assert counter.total == 0 and counter.by_ip == {}


# ---- finding 8: the Twirp token is checked before the body is read --------------------------


async def test_an_unauthenticated_twirp_call_is_refused_before_its_body_is_read() -> None:
    async with running_server() as server:
        # A 1 MiB body is announced but never sent: the refusal must not wait for it.
        head = (b"POST /twirp/livekit.RoomService/ListRooms HTTP/1.1\r\nhost: x\r\n"
                b"content-type: application/json\r\ncontent-length: 1048576\r\n\r\n")
        started = trio.current_time()
        response = await exchange(server.port, head, timeout=3)
        assert response.startswith(b"HTTP/1.1 401 "), response[:200]
        assert json.loads(response.split(b"\r\n\r\n", 1)[1])["code"] == "unauthenticated"
        assert trio.current_time() - started < 2
        assert server.metrics.get(m.AUTH_FAILED) == 1


async def test_a_twirp_body_announced_too_large_is_refused_before_it_is_read() -> None:
    async with running_server() as server:
        token = mint_token("admin", room_list=True)
        head = (b"POST /twirp/livekit.RoomService/ListRooms HTTP/1.1\r\nhost: x\r\n"
                b"authorization: Bearer " + token.encode() + b"\r\n"
                b"content-type: application/json\r\ncontent-length: 2000000\r\n\r\n")
        response = await exchange(server.port, head, timeout=3)
        assert response.startswith(b"HTTP/1.1 400 "), response[:200]
        assert json.loads(response.split(b"\r\n\r\n", 1)[1])["code"] == "malformed"


# ---- finding 8: the head limit is exact ------------------------------------------------------


async def test_the_request_head_limit_is_exact() -> None:
    async with running_server() as server:
        def request(head_size: int) -> bytes:
            start = b"GET / HTTP/1.1\r\nhost: x\r\nx-pad: "
            return start + b"a" * (head_size - len(start) - 4) + b"\r\n\r\n"

        assert len(request(http_front.MAX_HEAD)) == http_front.MAX_HEAD
        # One 8 KiB read more than the limit used to be accepted (~24 KiB heads passed).
        for size, status in ((http_front.MAX_HEAD, 200), (http_front.MAX_HEAD + 1, 431),
                             (http_front.MAX_HEAD + 600, 431), (http_front.MAX_HEAD + 7000, 431)):
            response = await exchange(server.port, request(size))
            assert statuses(response) == [status], (size, response[:100])


# ---- finding 8: pipelined requests -----------------------------------------------------------


async def test_pipelined_requests_are_all_answered_in_order() -> None:
    async with running_server() as server:
        token = mint_token("admin", room_list=True)
        twirp = (b"POST /twirp/livekit.RoomService/ListRooms HTTP/1.1\r\nhost: x\r\n"
                 b"authorization: Bearer " + token.encode() + b"\r\ncontent-type: application/json\r\n"
                 b"content-length: 2\r\n\r\n{}")
        requests = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n" + twirp + b"GET /nope HTTP/1.1\r\nhost: x\r\n\r\n"
        response = await exchange(server.port, requests)
        assert statuses(response) == [200, 200, 404], response
        # Only the last response closes the connection.
        assert response.lower().count(b"connection: close") == 1
        assert server.metrics.get(m.HTTP_PIPELINED) == 2


async def test_pipelining_is_bounded_per_connection() -> None:
    async with running_server() as server:
        response = await exchange(server.port, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n" * 40)
        # Answered up to the bound; the last answer says the connection closes.
        assert statuses(response) == [200] * http_front.MAX_REQUESTS_PER_CONNECTION
        assert response.lower().count(b"connection: close") == 1


async def test_a_lone_request_still_closes_the_connection() -> None:
    async with running_server() as server:
        response = await exchange(server.port, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        assert statuses(response) == [200] and b"connection: close" in response.lower()


# ---- finding 9: tokens that cannot be parsed are a 401 ----------------------------------------


async def test_tokens_with_out_of_range_times_or_deep_nesting_are_401_not_500() -> None:
    cases = {
        "exp 10**400": raw_jwt(f'{{"iss":"{API_KEY}","sub":"x","exp":1{"0" * 400},"video":{{"roomJoin":true,"room":"r"}}}}'),
        "exp Infinity": raw_jwt(f'{{"iss":"{API_KEY}","sub":"x","exp":Infinity,"video":{{"roomJoin":true,"room":"r"}}}}'),
        "nbf -10**400": raw_jwt(f'{{"iss":"{API_KEY}","sub":"x","exp":9999999999,"nbf":-1{"0" * 400},'
                                f'"video":{{"roomJoin":true,"room":"r"}}}}'),
        "nested payload": raw_jwt(f'{{"iss":"{API_KEY}","exp":9999999999,"x":' + "[" * 5000 + "]" * 5000 + "}"),
    }
    async with running_server() as server:
        for name, token in cases.items():
            assert len(token) < 16 * 1024, name
            status, _, body, _ = await http(server.port, "GET", f"/rtc/validate?access_token={token}")
            assert status == 401, (name, status, body)
            twirp = await http(server.port, "POST", "/twirp/livekit.RoomService/ListRooms",
                               [("authorization", f"Bearer {token}"), ("content-type", "application/json")], b"{}")
            assert twirp[0] == 401 and json.loads(twirp[2])["code"] == "unauthenticated", (name, twirp)
        try:
            async with signal_client(server, cases["exp 10**400"]):
                raise AssertionError("joined with an unusable token")
        except trio_websocket.ConnectionRejected as exc:
            assert exc.status_code == 401
        assert server.metrics.get(m.HTTP_INTERNAL_ERROR) == 0
