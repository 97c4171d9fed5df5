"""Two real servers ("nodes") hosting one room, joined by the node-to-node relay (issue 5).

Everything real but the link, which is the in-memory `RelayLink` (the network link and Redis come
with the cluster): our own client stack over loopback UDP to each server's media stack, the relay
carrying RTP, RTCP and the migration hand-off between the two servers' NodeRelays.
"""

from __future__ import annotations

import trio
from livekit.protocol import models

from rtp.packet import read_sequence_number, read_ssrc, read_timestamp
from server_fixtures import media_nodes, mint_token
from trio_sfu.client import LiveKitClient
from trio_sfu.client.senders import send_synthetic_audio
from trio_sfu.tracks import SourceOrigin


def recording(monkeypatch) -> dict[int, list[tuple[int, int, int]]]:
    """id(client) -> (ssrc, seq, ts) of every subscriber RTP packet it decrypted, in order."""
    received: dict[int, list[tuple[int, int, int]]] = {}
    original = LiveKitClient._on_subscriber_rtp

    def record(self: LiveKitClient, packet: bytes, now: float) -> None:
        received.setdefault(id(self), []).append((read_ssrc(packet), read_sequence_number(packet), read_timestamp(packet)))
        original(self, packet, now)

    monkeypatch.setattr(LiveKitClient, "_on_subscriber_rtp", record)
    return received


async def wait_until(predicate, timeout: float = 10.0, step: float = 0.02) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(step)


async def test_a_track_published_on_one_node_reaches_a_subscriber_on_the_other(monkeypatch) -> None:
    received = recording(monkeypatch)
    async with media_nodes("node-a", "node-b") as (a, b):
        async with LiveKitClient.connect(a.url, mint_token("pub", room="shared")) as publisher, \
                LiveKitClient.connect(b.url, mint_token("sub", room="shared")) as subscriber, \
                trio.open_nursery() as senders:
            audio = await publisher.publish_audio()
            senders.start_soon(send_synthetic_audio, audio, 20.0)
            (track,) = await subscriber.wait_for_tracks(1)
            assert track.sid == audio.sid
            packets = received.setdefault(id(subscriber), [])
            await wait_until(lambda: len(packets) >= 50)
            senders.cancel_scope.cancel()

            (room_b,) = b.media.rooms.values()
            (source,) = room_b.track_manager.sources(audio.sid)
            assert source.origin is SourceOrigin.REMOTE and source.node_id == "node-a"
            assert source.has_subscriber(subscriber.participant_sid)
            # Continuous numbering on the subscriber's SSRC, nothing lost over the relay.
            for (_, seq0, _), (_, seq1, _) in zip(packets, packets[1:]):
                assert (seq1 - seq0) & 0xFFFF == 1
            assert len({ssrc for ssrc, _, _ in packets}) == 1
            assert track.stats.lost == 0 and subscriber.errors == []
            assert a.metrics.get("relay_rejected_total") == b.metrics.get("relay_rejected_total") == 0


async def test_participants_on_both_nodes_see_each_other_and_a_migration_is_not_a_departure() -> None:
    """Presence crosses the relay: a participant on B is in the join response of one joining A
    and hears updates about it; leaving is heard on the other node; a participant that migrates
    is never announced as gone (LiveKit clients would drop its tracks), and its info keeps the
    version numbering it had."""
    async with media_nodes("node-a", "node-b") as (a, b):
        async with LiveKitClient.connect(b.url, mint_token("on-b", room="shared")) as on_b:
            async with LiveKitClient.connect(a.url, mint_token("on-a", room="shared")) as on_a, \
                    LiveKitClient.connect(a.url, mint_token("mover", room="shared")) as mover:
                assert on_b.participant_sid in {p.sid for p in on_a.join.other_participants}
                await wait_until(lambda: {on_a.participant_sid, mover.participant_sid} <= set(on_b.remote_participants))
                disconnected: list[str] = []
                dispatch = on_a._dispatch

                async def watching(response):
                    if response.WhichOneof("message") == "update":
                        disconnected.extend(p.identity for p in response.update.participants
                                            if p.state == models.ParticipantInfo.State.DISCONNECTED)
                    await dispatch(response)

                on_a._dispatch = watching  # type: ignore[method-assign]
                version_before = a.registry.rooms["shared"].participants["mover"].version
                assert await a.relay.migrate("shared", mover.participant_sid, "node-b")
                await mover.wait_resumed(1)
                moved = b.registry.rooms["shared"].participants["mover"]
                assert moved.sid == mover.participant_sid and moved.version > version_before
                await wait_until(lambda: on_a.remote_participants.get(mover.participant_sid) is not None
                                 and on_a.remote_participants[mover.participant_sid].version == moved.version)
                assert disconnected == []
            # on-a and mover (now on B) left: on-b hears both.
            await wait_until(lambda: not on_b.remote_participants)
        assert not a.relay.remote_participants("shared") and not b.relay.remote_participants("shared")


async def test_a_migration_is_neither_a_departure_nor_a_join_for_webhook_observers() -> None:
    """Room observers (the webhook notifier among them) hear one participant_joined when the
    participant first joins and nothing when it moves between nodes."""
    events: list[tuple[str, str]] = []

    class Observer:
        def room_event(self, event, room, participant=None, track=None):
            if participant is not None:
                events.append((event, participant.identity))

    async with media_nodes("node-a", "node-b") as (a, b):
        a.registry.observers.append(Observer())
        b.registry.observers.append(Observer())
        async with LiveKitClient.connect(a.url, mint_token("mover", room="shared")) as mover:
            await mover.wait_connected(timeout=10)
            assert await a.relay.migrate("shared", mover.participant_sid, "node-b")
            await mover.wait_resumed(1)
            await wait_until(lambda: "mover" in b.registry.rooms["shared"].participants
                             and b.registry.rooms["shared"].participants["mover"].announced)
            assert events == [("participant_joined", "mover")]
        await wait_until(lambda: ("participant_left", "mover") in events)
        assert events == [("participant_joined", "mover"), ("participant_left", "mover")]
