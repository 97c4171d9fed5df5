"""Our client against a server whose media side is aiortc: an independent, *full*-ICE WebRTC stack.

The server is the project's fake LiveKit signal server (scripts/capture_sdp/,
used to capture real clients' SDP) with aiortc PeerConnections behind it
(connect mode, gathering on 127.0.0.1 only): aiortc makes the subscriber offer
(full ICE, so it is controlling as the offerer) and answers our publisher offer
(choosing ``a=setup:active``, so there we are the DTLS *server*). Both of our
PCs must connect, each side checking the other's certificate, which exercises
the role decisions a real LiveKit server may ask of a client: ICE-lite answer to
a full offerer on the subscriber PC, controlling ICE with a DTLS server role on
the publisher PC. aiortc's own view (``connectionState``) and its receiver's
RTP statistics confirm it from the other side.
"""

from __future__ import annotations

import sys
from pathlib import Path

import aioice.ice
import pytest
import trio

from rtp.dtls import DtlsRole
from rtp.peer_transport import IceMode
from trio_sfu.client import LiveKitClient
from trio_sfu.client.synthetic import opus_payload

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts" / "capture_sdp"))

from aiortc_peers import AiortcPeers  # noqa: E402
from fake_signal_server import CaptureLog, FakeLiveKitServer, serve  # noqa: E402


async def aiortc_state(peers: AiortcPeers, key: str) -> str:
    async def read() -> str:
        return peers._pcs[key].connectionState

    return await trio.to_thread.run_sync(peers._call, read())


async def aiortc_inbound_packets(peers: AiortcPeers, key: str) -> int:
    async def read() -> int:
        total = 0
        for receiver in peers._pcs[key].getReceivers():
            for stat in (await receiver.getStats()).values():
                if stat.type == "inbound-rtp":
                    total += stat.packetsReceived
        return total

    return await trio.to_thread.run_sync(peers._call, read())


async def test_client_connects_both_pcs_to_aiortc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    peers = AiortcPeers(connect=True)
    captures = CaptureLog()
    try:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve, FakeLiveKitServer(captures, peers))
            async with LiveKitClient.connect(f"ws://127.0.0.1:{port}", "unchecked-token") as client:
                audio = await client.publish_audio()
                await audio.wait_ready(timeout=20)
                with trio.fail_after(20):
                    while client.subscriber_pc is None or not client.subscriber_pc.connected.is_set():
                        await trio.sleep(0.05)
                subscriber, publisher = client.subscriber_pc, client.publisher_pc
                # aiortc offered full ICE: we answered as lite and it controls; DTLS: we are the client.
                assert client.subscriber_pc.transport.ice_mode is IceMode.LITE
                assert subscriber.transport.dtls_role is DtlsRole.CLIENT
                assert "a=ice-lite" in captures.for_sdk("python").subscriber_answer
                # aiortc answered our actpass with active: we are the DTLS server, still ICE controlling.
                assert publisher.transport.ice_mode is IceMode.CONTROLLING
                assert publisher.transport.dtls_role is DtlsRole.SERVER
                sdk_key = next(k for k in peers._pcs if k.endswith("/subscriber")).rsplit("/", 1)[0]
                with trio.fail_after(10):
                    while (await aiortc_state(peers, sdk_key + "/subscriber") != "connected"
                           or await aiortc_state(peers, sdk_key + "/publisher") != "connected"):
                        await trio.sleep(0.05)

                # RTP from us, decrypted and counted by aiortc's receiver for our SSRC.
                for index in range(20):
                    assert audio.send_rtp(opus_payload(index), timestamp=960 * index)
                    await trio.sleep(0.005)
                with trio.fail_after(10):
                    while await aiortc_inbound_packets(peers, sdk_key + "/publisher") < 20:
                        await trio.sleep(0.05)
                assert subscriber.failure is None and publisher.failure is None
                assert not client.errors, client.errors
            nursery.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(peers.close)
