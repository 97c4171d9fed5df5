"""A publisher's signal connection is lost (its WebSocket closed without a `leave`) while its
media is up, on the real server with its media stack and two of our clients over loopback: the
server keeps the participant for the resume window, its audio keeps reaching the subscriber the
whole time, and the subscriber hears of no departure. Once the window passes, the participant
leaves (SIGNAL_CLOSE) and its track with it.

(Our client does not resume on the same node itself — it follows a migration's resume leave —
so the resume half runs with the SDKs in tests/e2e/test_e2e_resume_*.py.)
"""

from __future__ import annotations

import trio
from livekit.protocol import models, rtc

import trio_sfu.signal.participant as participant_module
from server_fixtures import media_server, mint_token
from trio_sfu import metrics as m
from trio_sfu.client import LiveKitClient
from trio_sfu.client.senders import send_synthetic_audio
from trio_sfu.signal.participant import SignalLink

WINDOW = 3.0


async def test_media_flows_while_the_publisher_waits_for_a_resume(monkeypatch) -> None:
    monkeypatch.setattr(participant_module, "RESUME_WINDOW", WINDOW)
    received: list[float] = []
    original = LiveKitClient._on_subscriber_rtp

    def recording(self: LiveKitClient, packet: bytes, now: float) -> None:
        if self.identity == "sub":
            received.append(trio.current_time())
        original(self, packet, now)

    monkeypatch.setattr(LiveKitClient, "_on_subscriber_rtp", recording)
    updates: list[models.ParticipantInfo] = []

    async with media_server() as server:
        async with LiveKitClient.connect(server.url, mint_token("sub")) as subscriber, \
                LiveKitClient.connect(server.url, mint_token("pub")) as publisher:
            dispatch = subscriber._dispatch

            async def watching(response: rtc.SignalResponse) -> None:
                if response.WhichOneof("message") == "update":
                    updates.extend(p for p in response.update.participants if p.identity == "pub")
                await dispatch(response)

            subscriber._dispatch = watching  # type: ignore[method-assign]
            await subscriber.wait_connected(timeout=10)
            audio = await publisher.publish_audio()
            room = server.registry.rooms["room1"]
            participant = room.participants["pub"]
            async with trio.open_nursery() as senders:
                senders.start_soon(send_synthetic_audio, audio, 30.0)
                await subscriber.wait_for_tracks(1)
                with trio.fail_after(10):
                    while len(received) < 25:
                        await trio.sleep(0.02)

                # The publisher's signal connection goes; its PCs do not.
                await publisher.signal.aclose()
                with trio.fail_after(5):
                    while participant.link is not SignalLink.AWAITING_RESUME:
                        await trio.sleep(0.01)
                lost_at = trio.current_time()
                await trio.sleep(WINDOW * 0.6)
                during = [t for t in received if t > lost_at]
                assert len(during) >= 40, f"audio stopped reaching the subscriber: {len(during)} packets"
                assert max(b - a for a, b in zip(during, during[1:])) < 0.5
                assert room.participants.get("pub") is participant and not participant.is_closed
                assert all(p.state != models.ParticipantInfo.State.DISCONNECTED for p in updates)
                assert audio.sid in room.track_ids()

                # No resume came: the participant leaves, its track with it.
                with trio.fail_after(WINDOW * 3):
                    while not participant.is_closed:
                        await trio.sleep(0.05)
                    while not any(p.state == models.ParticipantInfo.State.DISCONNECTED for p in updates):
                        await trio.sleep(0.05)
                senders.cancel_scope.cancel()
            gone = [p for p in updates if p.state == models.ParticipantInfo.State.DISCONNECTED][-1]
            assert gone.disconnect_reason == models.DisconnectReason.SIGNAL_CLOSE
            assert trio.current_time() - lost_at >= WINDOW * 0.9
            assert "pub" not in room.participants and audio.sid not in room.track_ids()
    assert server.metrics.get(m.SIGNAL_CONNECTION_LOST) == 1
    assert server.metrics.get(m.SIGNAL_RESUME_EXPIRED) == 1


async def test_a_resume_with_a_dead_pc_is_a_full_reconnect() -> None:
    """A client resumes (say its PC failed on its side) but the server's transport for that PC
    is dead: no ICE restart can revive it, so the participant leaves with a RECONNECT leave on
    the connection still up and the resume is refused; the client joins anew."""
    from server_fixtures import recv, signal_client

    async with media_server() as server:
        async with LiveKitClient.connect(server.url, mint_token("pub")) as publisher:
            audio = await publisher.publish_audio()
            async with trio.open_nursery() as senders:
                senders.start_soon(send_synthetic_audio, audio, 10.0)
                room = server.registry.rooms["room1"]
                participant = room.participants["pub"]
                session = server.media.rooms[room.sid].sessions[participant.sid]
                with trio.fail_after(10):
                    while session.transports.publisher is None or not session.transports.publisher.connected:
                        await trio.sleep(0.02)
                session.transports.publisher.session.close(trio.current_time(), drain=False)  # the PC dies
                async with signal_client(server, mint_token("pub"),
                                         query=f"reconnect=1&sid={participant.sid}&reconnect_reason=2") as again:
                    refusal = (await recv(again)).leave
                assert (refusal.reason, refusal.action) == (models.DisconnectReason.STATE_MISMATCH,
                                                            rtc.LeaveRequest.Action.RECONNECT)
                assert participant.is_closed and participant.disconnect_reason == models.DisconnectReason.STATE_MISMATCH
                with trio.fail_after(5):
                    await publisher.left.wait()  # told on its own connection too
                senders.cancel_scope.cancel()
    assert server.metrics.get(m.SIGNAL_RESUMED) == 0
