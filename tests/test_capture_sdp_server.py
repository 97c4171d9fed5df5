"""The fake LiveKit signal server behind the SDP capture (scripts/capture_sdp/).

Checked from the client side with independent pieces: trio-websocket as the
WebSocket client, raw bytes for the HTTP refusals, livekit-protocol to decode,
and the captured Chromium offer as the publisher offer aiortc must answer.
"""

from __future__ import annotations

import base64
import gzip
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aioice.ice
import pytest
import trio
from livekit.protocol import models
from livekit.protocol import rtc as lk_rtc
from trio_websocket import open_websocket_url

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts" / "capture_sdp"))

from aiortc_peers import AiortcPeers  # noqa: E402
from fake_signal_server import CaptureLog, FakeLiveKitServer, serve  # noqa: E402

SDP_DIR = Path(__file__).parent / "fixtures" / "sdp"
CHROMIUM_OFFER = (SDP_DIR / "chromium_publisher_offer_simulcast.sdp").read_bytes().decode()


@pytest.fixture
async def server(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[int, CaptureLog]]:
    # Loopback only, and no ICE at all (connect=False): these tests are about signalling.
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    peers = AiortcPeers(connect=False)
    captures = CaptureLog()
    try:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve, FakeLiveKitServer(captures, peers))
            yield port, captures
            nursery.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(peers.close)


async def http_exchange(port: int, request: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        received = b""
        with trio.fail_after(5):
            while b"\r\n\r\n" not in received:
                chunk = await stream.receive_some(4096)
                assert chunk, "server closed before a full response head"
                received += chunk
    return received


@pytest.mark.parametrize("upgrade", [False, True])
@pytest.mark.parametrize("path", ["/rtc/v1", "/rtc/v1/validate"])
async def test_v1_is_refused_so_clients_fall_back(server, path: str, upgrade: bool) -> None:
    port, _ = server
    headers = b"Host: x\r\n"
    if upgrade:
        headers += (b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n")
    response = await http_exchange(port, b"GET " + path.encode() + b"?sdk=js HTTP/1.1\r\n" + headers + b"\r\n")
    # The Python SDK only falls back on a real HTTP/1.1 404; browsers need the CORS header.
    assert response.startswith(b"HTTP/1.1 404 ")
    assert b"\r\naccess-control-allow-origin: *\r\n" in response.lower()
    assert b"requested room does not exist" not in response


async def test_websocket_accept_key_is_rfc6455(server) -> None:
    port, _ = server
    response = await http_exchange(
        port,
        b"GET /rtc?sdk=js HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    assert response.startswith(b"HTTP/1.1 101 ")
    # The worked example of RFC 6455 section 1.3.
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in response


async def test_v1_join_request_offer_is_recorded(server) -> None:
    port, captures = server
    join = lk_rtc.JoinRequest(
        client_info=models.ClientInfo(sdk=models.ClientInfo.JS, version="2.23.0", protocol=17),
        publisher_offer=lk_rtc.SessionDescription(type="offer", sdp=CHROMIUM_OFFER, id=1),
    )
    wrapped = lk_rtc.WrappedJoinRequest(
        compression=lk_rtc.WrappedJoinRequest.GZIP, join_request=gzip.compress(join.SerializeToString()),
    )
    param = base64.urlsafe_b64encode(wrapped.SerializeToString()).decode().replace("=", "%3D")
    await http_exchange(port, f"GET /rtc/v1?join_request={param} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert captures.for_sdk("js").v1_join_offer == CHROMIUM_OFFER


async def receive(ws) -> lk_rtc.SignalResponse:
    with trio.fail_after(10):
        response = lk_rtc.SignalResponse()
        response.ParseFromString(await ws.get_message())
        return response


async def test_dual_pc_join_publish_and_capture(server) -> None:
    port, captures = server
    async with open_websocket_url(f"ws://127.0.0.1:{port}/rtc?sdk=js&protocol=17&auto_subscribe=1") as ws:
        join = (await receive(ws)).join
        assert join.room.sid.startswith("RM_")
        assert join.participant.sid.startswith("PA_")
        assert join.participant.permission.can_publish
        assert join.server_info.version and join.server_info.protocol >= 16
        assert join.ping_interval > 0 and join.ping_timeout > 0
        assert join.subscriber_primary and not join.ice_servers

        first = await receive(ws)
        assert first.WhichOneof("message") == "offer"
        assert "\r\nm=application " in first.offer.sdp and "\r\na=sendonly\r\n" in first.offer.sdp

        layers = [models.VideoLayer(quality=q, width=w, height=h, bitrate=b)
                  for q, w, h, b in [(0, 320, 180, 150_000), (1, 640, 360, 500_000), (2, 1280, 720, 1_700_000)]]
        add = lk_rtc.AddTrackRequest(cid="cam-cid", name="camera", type=models.TrackType.VIDEO,
                                     width=1280, height=720, source=models.TrackSource.CAMERA, layers=layers)
        await ws.send_message(lk_rtc.SignalRequest(add_track=add).SerializeToString())
        published = (await receive(ws)).track_published
        assert published.cid == "cam-cid"
        assert published.track.sid.startswith("TR_")
        assert list(published.track.layers) == layers and published.track.simulcast

        await ws.send_message(lk_rtc.SignalRequest(
            offer=lk_rtc.SessionDescription(type="offer", sdp=CHROMIUM_OFFER, id=7),
        ).SerializeToString())
        answer = (await receive(ws)).answer
        # aiortc accepted Chromium's simulcast offer and the id is echoed.
        assert answer.type == "answer" and answer.id == 7
        assert answer.sdp.startswith("v=0\r\n") and "\r\nm=video " in answer.sdp

        await ws.send_message(lk_rtc.SignalRequest(ping_req=lk_rtc.Ping(timestamp=1234)).SerializeToString())
        assert (await receive(ws)).pong_resp.last_ping_timestamp == 1234

    capture = captures.for_sdk("js")
    assert capture.publisher_offer == CHROMIUM_OFFER
    assert capture.subscriber_offer_sent == first.offer.sdp
    assert not capture.done.is_set()  # no subscriber answer yet
