"""A participant migrating between two real servers (issue 5), and migrations that do not finish.

Real servers with media, our own client stack over loopback UDP, the in-memory relay link
between the nodes. A migration that is cancelled (the old node's `migrate` task cancelled before
or after the new node accepted) or abandoned (the client never resumes on the new node) leaves
nothing behind on either node: no pending sync state, no handed-over track, no remote copy, no
subscriber on a closed source — and the shared fixture's leak check after both nodes stop.
"""

from __future__ import annotations

import trio
from livekit.protocol import models, rtc

from server_fixtures import media_nodes, mint_token
from trio_sfu.client import LiveKitClient
from trio_sfu.client.senders import send_synthetic_audio

ROOM = "shared"


def stay_behind(client: LiveKitClient) -> list[rtc.LeaveRequest]:
    """The client hears a migration's `leave{RESUME}` but does not follow it (it "drops" on
    the way to the new node); returns the leaves it got."""
    leaves: list[rtc.LeaveRequest] = []
    dispatch = client._dispatch

    async def observing(response: rtc.SignalResponse) -> None:
        if response.WhichOneof("message") == "leave":
            leaves.append(response.leave)
            if response.leave.action == rtc.LeaveRequest.Action.RESUME:
                return
        await dispatch(response)

    client._dispatch = observing  # type: ignore[method-assign]
    return leaves


async def wait_until(predicate, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.02)


def assert_nothing_left(a, b, mover_sid: str, track_sid: str) -> None:
    assert not a.relay._out and not a.relay._handed_over
    assert not b.relay._pending_in and not b.relay._arriving
    for server in (a, b):
        room = server.registry.rooms.get(ROOM)
        assert room is None or all(p.sid != mover_sid for p in room.participants.values())
        media = server.media.room_by_name(ROOM)
        if media is not None:
            for source in media.track_manager.sources(track_sid):
                assert source.is_open is False or source.publisher_id != mover_sid, source
            for source in media.track_manager.all_sources():
                assert source.is_open or not source.subscriber_ids


async def run_cancel_case(when: str) -> None:
    async with media_nodes("node-a", "node-b") as (a, b):
        b.relay.resume_timeout = 2.0
        async with LiveKitClient.connect(a.url, mint_token("pub", room=ROOM)) as pub, \
                LiveKitClient.connect(a.url, mint_token("sub", room=ROOM)) as sub, \
                LiveKitClient.connect(b.url, mint_token("watcher", room=ROOM)) as watcher, \
                trio.open_nursery() as senders:
            leaves = stay_behind(pub)
            audio = await pub.publish_audio()
            senders.start_soon(send_synthetic_audio, audio, 30.0)
            (on_a,) = await sub.wait_for_tracks(1)
            (on_b,) = await watcher.wait_for_tracks(1)
            await wait_until(lambda: on_a.stats.packets > 10 and on_b.stats.packets > 10)

            result: list[bool] = []
            with trio.CancelScope() as scope:
                if when == "before-accept":
                    scope.cancel()  # cancelled at its first await: right after the sync state went out
                elif when == "waiting-for-tracks":
                    async def cancel_once_accepted() -> None:
                        await wait_until(lambda: bool(leaves))
                        scope.cancel()
                    senders.start_soon(cancel_once_accepted)
                result.append(await a.relay.migrate(ROOM, pub.participant_sid, "node-b"))
            if when == "never-resumed":
                assert result == [False]  # B gave up after resume_timeout and told A
            else:
                assert result == [] and scope.cancelled_caught

            # The mover is gone from A (told to rejoin, or told to resume and never did) ...
            await wait_until(lambda: pub.left.is_set())
            if when != "before-accept":
                assert leaves[0].reason == models.DisconnectReason.MIGRATION
                assert leaves[0].action == rtc.LeaveRequest.Action.RESUME
                assert [r.url for r in leaves[0].regions.regions] == [b.url]
            # ... its track ended without resume on both nodes, so subscribers let it go.
            await wait_until(lambda: not on_a.active and not on_b.active)
            await wait_until(lambda: not b.relay._pending_in)
            assert_nothing_left(a, b, pub.participant_sid, audio.sid)
            assert a.metrics.get("migrations_failed_total") == 1
            senders.cancel_scope.cancel()


async def test_a_migration_cancelled_before_the_new_node_accepts_leaves_nothing() -> None:
    await run_cancel_case("before-accept")


async def test_a_migration_cancelled_while_its_tracks_wait_for_the_new_node_leaves_nothing() -> None:
    await run_cancel_case("waiting-for-tracks")


async def test_a_client_that_never_resumes_on_the_new_node_is_given_up_on_both_nodes() -> None:
    await run_cancel_case("never-resumed")
