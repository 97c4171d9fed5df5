"""The server tests' leak check (server_fixtures.assert_no_leaks) is not vacuous: after a clean
shutdown it passes, and it fails for a track source left open, a socket on the server's port
and a task left running."""

from __future__ import annotations

import socket

import pytest
import trio

from server_fixtures import assert_no_leaks, leak_baseline, make_config
from trio_sfu.forwarding.receiver import TrackReceiver
from trio_sfu.server import Server
from trio_sfu.tracks import SourceOrigin, TrackSource


async def test_leak_check_passes_clean_and_catches_sources_sockets_and_tasks():
    baseline = leak_baseline()
    server = Server(make_config())
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        server.request_shutdown()
    assert_no_leaks(server, baseline)

    source = TrackSource("TR_leak", SourceOrigin.LOCAL, "n", TrackReceiver(
        "TR_leak", "audio/opus", 48000, send_rtcp=lambda p: True, local_ssrc=1, now=0.0))
    with pytest.raises(AssertionError, match="track sources survived"):
        assert_no_leaks(server, baseline)
    source.close_now(False)
    assert_no_leaks(server, baseline)

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", server.port))
    sock.listen()
    try:
        with pytest.raises(AssertionError, match="sockets survived"):
            assert_no_leaks(server, baseline)
    finally:
        sock.close()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.sleep_forever)
        await trio.sleep(0)
        with pytest.raises(AssertionError, match="tasks survived"):
            assert_no_leaks(server, baseline)
        nursery.cancel_scope.cancel()
