"""Two real servers ("nodes") hosting one room, joined by the node-to-node relay (issue 5).

Everything real but the link, which is the in-memory `RelayLink` (the network link and Redis come
with the cluster): our own client stack over loopback UDP to each server's media stack, the relay
carrying RTP, RTCP and the migration hand-off between the two servers' NodeRelays.
"""

from __future__ import annotations

import trio
from livekit.protocol import models

from rtp.packet import read_sequence_number, read_ssrc, read_timestamp
from server_fixtures import API_KEY, API_SECRET, media_nodes, mint_token
from trio_sfu.client import LiveKitClient
from trio_sfu.client.senders import send_synthetic_audio
from trio_sfu.api.webhooks import WebhookConfig, WebhookNotifier
from trio_sfu.signal.rooms import MOVED_IN, MOVED_OUT
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
    """Room observers hear one participant_joined when the participant first joins and, when it
    moves between nodes, only the move's own events (moved out of A, moved into B: what the
    cluster directory follows); the webhook notifier sends nothing for those."""
    events: list[tuple[str, str, str]] = []
    sent: list[str] = []

    class Observer:
        def __init__(self, node: str) -> None:
            self.node = node

        def room_event(self, event, room, participant=None, track=None):
            if participant is not None:
                events.append((self.node, event, participant.identity))

    async with media_nodes("node-a", "node-b") as (a, b):
        a.registry.observers.append(Observer("a"))
        b.registry.observers.append(Observer("b"))
        # The webhook notifier's own filter, on the events the registries emit.
        notifier = WebhookNotifier(WebhookConfig(API_KEY, API_SECRET, ("http://127.0.0.1:9/",)), a.metrics)
        notifier.enqueue = lambda message: sent.append(message.event)  # type: ignore[method-assign]
        a.registry.observers.append(notifier)
        b.registry.observers.append(notifier)
        async with LiveKitClient.connect(a.url, mint_token("mover", room="shared")) as mover:
            await mover.wait_connected(timeout=10)
            assert await a.relay.migrate("shared", mover.participant_sid, "node-b")
            await mover.wait_resumed(1)
            await wait_until(lambda: "mover" in b.registry.rooms["shared"].participants
                             and b.registry.rooms["shared"].participants["mover"].announced)
            assert events == [("a", "participant_joined", "mover"), ("a", MOVED_OUT, "mover"),
                              ("b", MOVED_IN, "mover")]
            assert sent == ["room_started", "participant_joined", "room_started"]
        await wait_until(lambda: ("b", "participant_left", "mover") in events)
        assert [e for e in events if e[1] not in (MOVED_IN, MOVED_OUT)] == [
            ("a", "participant_joined", "mover"), ("b", "participant_left", "mover")]
        assert "participant_left" in sent and MOVED_IN not in sent and MOVED_OUT not in sent
