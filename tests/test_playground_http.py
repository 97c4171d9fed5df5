"""The playground's HTTP side on a real server: `/` by Accept, the page's files, and the
development-only dev-token endpoint (refused outside --dev, its inputs bounded by the limits)."""

from __future__ import annotations

import json
import time
from importlib import resources

import pytest
import trio

from trio_sfu import metrics as m
from trio_sfu.api import playground
from trio_sfu.config import ServerConfig
from server_fixtures import API_KEY, API_SECRET, http, make_config, running_server

#: What Chromium sends when it navigates to a page.
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"
HTML = [("accept", BROWSER_ACCEPT)]
JSON_TYPE = [("content-type", "application/json")]
ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "livekit-client.js": "text/javascript; charset=utf-8",
}


def dev_config(**limits: int) -> ServerConfig:
    config = make_config()
    config.development = True
    for name, value in limits.items():
        setattr(config.limit, name, value)
    return config


async def ask_token(port: int, request: object, headers: list[tuple[str, str]] | None = None):
    body = request if isinstance(request, bytes) else json.dumps(request).encode()
    return await http(port, "POST", playground.TOKEN_PATH, JSON_TYPE if headers is None else headers, body=body)


async def test_root_serves_the_page_to_a_browser() -> None:
    async with running_server() as server:
        status, headers, body, _ = await http(server.port, "GET", "/", HTML)
        assert status == 200
        assert headers["content-type"] == "text/html; charset=utf-8"
        assert b'<script type="module" src="/playground/app.js"></script>' in body
        # Outside development mode the page asks for a token; the server's limits bound the form.
        assert b'data-mode="production"' in body and b"{{" not in body
        assert b'maxlength="256"' in body
        assert headers["vary"] == "accept"
        assert headers["cache-control"] == "no-cache" and headers["etag"].startswith('"')

        status, headers, head_body, _ = await http(server.port, "HEAD", "/", HTML)
        assert (status, head_body) == (200, b"")
        assert headers["content-length"] == str(len(body))


@pytest.mark.parametrize("accept", [None, "*/*", "text/plain", "application/json", "text/html;q=0",
                                    "text/*", "application/xhtml+xml", "text/html;q=zero"])
async def test_root_stays_ok_for_everything_else(accept: str | None) -> None:
    async with running_server() as server:
        status, headers, body, _ = await http(server.port, "GET", "/", [("accept", accept)] if accept else [])
        assert (status, body) == (200, b"OK")
        assert headers["content-type"].startswith("text/plain")
        assert headers["vary"] == "accept"


@pytest.mark.parametrize("accept", ["text/html", "TEXT/HTML; q=0.5", "application/json, text/html;q=0.1"])
async def test_root_serves_the_page_when_html_is_named(accept: str) -> None:
    async with running_server() as server:
        status, headers, _, _ = await http(server.port, "GET", "/", [("accept", accept)])
        assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"


async def test_root_refuses_other_methods_either_way() -> None:
    async with running_server() as server:
        status, headers, _, _ = await http(server.port, "POST", "/", HTML, body=b"x")
        assert status == 405 and headers["allow"] == "GET, HEAD"


@pytest.mark.parametrize("name,content_type", list(ASSETS.items()))
async def test_assets_with_their_types_and_revalidation(name: str, content_type: str) -> None:
    on_disk = resources.files(playground).joinpath(name).read_bytes()
    async with running_server() as server:
        status, headers, body, _ = await http(server.port, "GET", playground.PREFIX + name)
        assert status == 200 and body == on_disk
        assert headers["content-type"] == content_type
        assert headers["cache-control"] == "no-cache"
        assert headers["x-content-type-options"] == "nosniff"
        etag = headers["etag"]
        # A browser revalidating an unchanged file: 304, no content and no length of it.
        for if_none_match in (etag, f'"other", {etag}', "*"):
            status, headers304, body, _ = await http(server.port, "GET", playground.PREFIX + name,
                                                     [("if-none-match", if_none_match)])
            assert (status, body) == (304, b"")
            assert headers304["etag"] == etag and "content-length" not in headers304
        status, _, body, _ = await http(server.port, "GET", playground.PREFIX + name,
                                        [("if-none-match", '"stale"')])
        assert status == 200 and body == on_disk
        status, headers, body, _ = await http(server.port, "HEAD", playground.PREFIX + name)
        assert (status, body) == (200, b"") and headers["content-length"] == str(len(on_disk))


@pytest.mark.parametrize("path", ["/playground/", "/playground/index.html", "/playground/__init__.py",
                                  "/playground/../pyproject.toml", "/playground/%2e%2e/config.py",
                                  "/playground/app.js/x", "/playground/APP.JS"])
async def test_nothing_else_under_the_prefix(path: str) -> None:
    async with running_server() as server:
        status, _, body, _ = await http(server.port, "GET", path)
        assert status == 404 and body == b"not found\n"


async def test_assets_are_read_only() -> None:
    async with running_server() as server:
        status, headers, _, _ = await http(server.port, "POST", playground.PREFIX + "app.js", body=b"x")
        assert status == 405 and headers["allow"] == "GET, HEAD"


# ---- the dev-token endpoint ----------------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_no_dev_tokens_outside_development_mode(method: str) -> None:
    async with running_server() as server:
        body = json.dumps({"room": "r", "identity": "a"}).encode() if method == "POST" else b""
        status, _, reply, _ = await http(server.port, method, playground.TOKEN_PATH, JSON_TYPE, body=body)
        assert (status, reply) == (404, b"not found\n")


async def test_dev_token_joins_its_room() -> None:
    async with running_server(dev_config()) as server:
        status, headers, body, _ = await http(server.port, "GET", "/", HTML)
        assert b'data-mode="development"' in body
        status, headers, body, _ = await ask_token(server.port, {"room": "demo", "identity": "ada-1f2e",
                                                                 "name": "Ada Lovelace"})
        assert status == 200 and headers["content-type"] == "application/json"
        assert headers["cache-control"] == "no-store"
        token = json.loads(body)["token"]
        grants = server.verifier.verify(token)
        assert (grants.api_key, grants.identity, grants.name) == (API_KEY, "ada-1f2e", "Ada Lovelace")
        video = grants.video
        assert video is not None and video.room == "demo" and video.room_join
        assert video.may_publish and video.may_subscribe and video.may_publish_data
        assert not (video.room_admin or video.room_create or video.room_list)
        assert time.time() + 5 * 3600 < grants.expires_at <= time.time() + playground.DEV_TOKEN_TTL_SECONDS
        # The server's own join check accepts it, for that room.
        status, _, body, _ = await http(server.port, "GET", "/rtc/validate", [("authorization", f"Bearer {token}")])
        assert (status, body) == (200, b"success")


async def test_dev_token_name_defaults_to_the_identity() -> None:
    async with running_server(dev_config()) as server:
        status, _, body, _ = await ask_token(server.port, {"room": "demo", "identity": "grace"})
        assert status == 200
        assert server.verifier.verify(json.loads(body)["token"]).name == "grace"


async def test_dev_token_for_the_page_itself_but_not_another_origin() -> None:
    async with running_server(dev_config()) as server:
        request = {"room": "demo", "identity": "a"}
        # The http helper sends `host: localhost`.
        status, _, _, _ = await ask_token(server.port, request, [*JSON_TYPE, ("origin", "http://localhost")])
        assert status == 200
        for origin in ("https://evil.example", "null", "http://localhost.evil.example"):
            status, _, body, _ = await ask_token(server.port, request, [*JSON_TYPE, ("origin", origin)])
            assert status == 403 and "own page" in json.loads(body)["error"]


# (body or request, headers, status, words the error must contain)
BAD_TOKEN_REQUESTS = [
    ({"room": "r", "identity": "a"}, [("content-type", "text/plain")], 415, "application/json"),
    ({"room": "r", "identity": "a"}, [], 415, "application/json"),
    (b"not json", None, 400, "not JSON"),
    (b"\xff\xfe\x00", None, 400, "not JSON"),
    (b"[" * 3000 + b"]" * 3000, None, 413, "exceeds"),
    (b"[" * 2000, None, 400, "not JSON"),
    (b"[" * 2000 + b"]" * 2000, None, 400, "not JSON"),  # deeper than Python's JSON parser goes
    (b'["room", "identity"]', None, 400, "JSON object"),
    (b"null", None, 400, "JSON object"),
    ({"room": 5, "identity": "a"}, None, 400, "room must be a string"),
    ({"room": "r", "identity": ["a"]}, None, 400, "identity must be a string"),
    ({"room": "r", "identity": "a", "name": None}, None, 400, "name must be a string"),
    ({"identity": "a"}, None, 400, "room name cannot be empty"),
    ({"room": "  ", "identity": "a"}, None, 400, "room name cannot be empty"),
    ({"room": "r"}, None, 400, "identity cannot be empty"),
    # Lengths are UTF-8 bytes, as the join counts them: 129 characters, 258 bytes.
    ({"room": "é" * 129, "identity": "a"}, None, 400, "room name exceeds limits: max length 256"),
    ({"room": "r", "identity": "x" * 257}, None, 400, "identity exceeds limits: max length 256"),
    ({"room": "r", "identity": "a", "name": "n" * 257}, None, 400, "name exceeds limits: max length 256"),
    ({"room": "r", "identity": "a", "pad": "p" * 5000}, None, 413, "exceeds 4096 bytes"),
]


@pytest.mark.parametrize("request_,headers,status,words", BAD_TOKEN_REQUESTS)
async def test_bad_dev_token_requests_get_clear_errors(request_, headers, status, words) -> None:
    async with running_server(dev_config()) as server:
        got, reply_headers, body, _ = await ask_token(server.port, request_, headers)
        assert got == status, body
        assert reply_headers["content-type"] == "application/json"
        assert words in json.loads(body)["error"]
        assert server.metrics.get(m.HTTP_INTERNAL_ERROR) == 0


async def test_dev_token_refuses_other_methods() -> None:
    async with running_server(dev_config()) as server:
        status, headers, body, _ = await http(server.port, "GET", playground.TOKEN_PATH)
        assert status == 405 and headers["allow"] == "POST"
        assert "POST" in json.loads(body)["error"]


async def test_dev_token_body_too_large_without_a_declared_length() -> None:
    """Chunked, so only reading tells: the read stops at the bound."""
    async with running_server(dev_config()) as server:
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        chunk = b"x" * (playground.MAX_TOKEN_REQUEST + 100)
        await stream.send_all(
            b"POST " + playground.TOKEN_PATH.encode() + b" HTTP/1.1\r\nhost: localhost\r\n"
            b"content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
            + f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n0\r\n\r\n")
        received = b""
        with trio.fail_after(5):
            while data := await stream.receive_some(65536):
                received += data
        await stream.aclose()
        assert received.startswith(b"HTTP/1.1 413 ")
        assert b"exceeds 4096 bytes" in received


async def test_dev_token_follows_the_servers_limits() -> None:
    async with running_server(dev_config(max_room_name_length=8, max_participant_identity_length=5,
                                         max_participant_name_length=3)) as server:
        status, _, body, _ = await http(server.port, "GET", "/", HTML)
        assert b'maxlength="8"' in body and b'data-max-identity="5"' in body
        assert (await ask_token(server.port, {"room": "12345678", "identity": "abcde", "name": "abc"}))[0] == 200
        for request, words in (({"room": "123456789", "identity": "a"}, "room name exceeds limits: max length 8"),
                               ({"room": "r", "identity": "abcdef"}, "identity exceeds limits: max length 5"),
                               ({"room": "r", "identity": "a", "name": "abcd"}, "name exceeds limits: max length 3")):
            status, _, body, _ = await ask_token(server.port, request)
            assert status == 400 and words in json.loads(body)["error"]


def test_dev_token_with_limits_off_stays_a_token_the_server_accepts(monkeypatch) -> None:
    """Limits of 0 mean none (as in LiveKit): then only the token's own bound stops long strings."""
    from trio_sfu.api.auth import MAX_TOKEN_LENGTH, TokenVerifier
    from trio_sfu.signal.limits import SignalLimits

    limits = SignalLimits(max_room_name_length=0, max_participant_identity_length=0, max_participant_name_length=0)
    ground = playground.Playground(development=True, keys={API_KEY: API_SECRET}, limits=limits)
    body = json.dumps({"room": "r" * 1300, "identity": "i" * 1300, "name": "n" * 1300}).encode()
    reply = ground.token_reply(body)
    assert reply.status == 200
    token = json.loads(reply.body)["token"]
    assert len(token) <= MAX_TOKEN_LENGTH
    assert TokenVerifier({API_KEY: API_SECRET}).verify(token).video.room == "r" * 1300
    # A token the verifier would refuse as too long is never handed out.
    monkeypatch.setattr(playground, "MAX_TOKEN_LENGTH", len(token) - 1)
    reply = ground.token_reply(body)
    assert reply.status == 400 and b"too long" in reply.body
