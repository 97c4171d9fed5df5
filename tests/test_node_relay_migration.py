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

from sdp.parser import parse as parse_sdp
from server_fixtures import media_nodes, mint_token
from test_node_relay_servers import recording
from trio_sfu.client import LiveKitClient
from trio_sfu.client.senders import send_synthetic_audio
from trio_sfu.tracks import SourceOrigin

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


def record_offers(client: LiveKitClient) -> list[str]:
    """Every subscriber offer the client answers, on whichever node, in order."""
    offers: list[str] = []
    dispatch = client._dispatch

    async def observing(response: rtc.SignalResponse) -> None:
        if response.WhichOneof("message") == "offer":
            offers.append(response.offer.sdp)
        await dispatch(response)

    client._dispatch = observing  # type: ignore[method-assign]
    return offers


def lines_for(sdp: str, track_sid: str) -> list[tuple[str, tuple[int, ...]]]:
    """(mid, SSRCs) of every live m-line of the offer that carries `track_sid`."""
    return [(m.mid or "", tuple(sorted(set(m.ssrcs)))) for m in parse_sdp(sdp).media
            if not m.rejected and m.msid is not None and m.msid.track_id == track_sid]


async def test_both_participants_migrate_and_the_subscription_moves_from_remote_to_local_without_a_new_m_line(monkeypatch) -> None:
    """The seed story on two real servers: pA (subscriber) and pB (publisher) start on node A;
    pA moves to B first and is served pB's track through B's remote copy; then pB moves, its
    own media publishes a local source on B behind the remote one, A lets its copy go expecting a
    resume, and B switches pA to the local source. pA's client sees one m-line, one mid, one
    SSRC and continuous sequence numbers and timestamps through both moves."""
    received = recording(monkeypatch)
    async with media_nodes("node-a", "node-b") as (a, b):
        async with LiveKitClient.connect(a.url, mint_token("pa", room=ROOM)) as pa, \
                LiveKitClient.connect(a.url, mint_token("pb", room=ROOM)) as pb, \
                trio.open_nursery() as senders:
            offers = record_offers(pa)
            audio = await pb.publish_audio()
            senders.start_soon(send_synthetic_audio, audio, 60.0)
            (track,) = await pa.wait_for_tracks(1)
            packets = received.setdefault(id(pa), [])
            await wait_until(lambda: len(packets) >= 25)
            (line,) = lines_for(offers[-1], audio.sid)

            # 1. pA moves to B: its subscription there resolves to B's remote copy of pB's track.
            assert await a.relay.migrate(ROOM, pa.participant_sid, "node-b")
            await pa.wait_resumed(1)
            mark = len(packets)
            moves = [mark]
            await wait_until(lambda: len(packets) >= mark + 25)
            room_b = b.media.room_by_name(ROOM)
            (remote,) = room_b.track_manager.sources(audio.sid)
            assert remote.origin is SourceOrigin.REMOTE and remote.has_subscriber(pa.participant_sid)
            assert room_b.sessions[pa.participant_sid].subscriptions[audio.sid].reused

            # 2. pB moves to B: its media publishes the local source; the remote copy closes with
            # resume (pA's m-line cached first), then pA rebinds on the local source.
            offers_before = len(offers)
            assert await b.relay.migrate(ROOM, pb.participant_sid, "node-b") is False  # not on B yet
            assert await a.relay.migrate(ROOM, pb.participant_sid, "node-b")
            await pb.wait_resumed(1)
            mark = len(packets)
            moves.append(mark)
            await wait_until(lambda: len(packets) >= mark + 25)
            (local,) = room_b.track_manager.sources(audio.sid)
            assert local.origin is SourceOrigin.LOCAL and local.has_subscriber(pa.participant_sid)
            assert remote.state.value == "closed" and not remote.subscriber_ids
            senders.cancel_scope.cancel()

            # Nothing of either participant or the track stays on A.
            assert a.media.room_by_name(ROOM) is None or not a.media.room_by_name(ROOM).track_manager.track_ids()
            assert not a.relay._handed_over and not b.relay._pending_in and not b.relay._arriving
            # pA: the same m-line (mid, SSRC) in every offer on both nodes, never two for the
            # track, and none at all for the remote -> local switch (the cached m-line came back).
            assert len(offers) == offers_before
            assert all(lines_for(sdp, audio.sid) == [line] for sdp in offers[1:]), [lines_for(s, audio.sid) for s in offers]
            assert track.mid == line[0] and track.active and pa.errors == [] and pb.errors == []
            # Continuous numbering through both moves: one SSRC, every sequence number one past
            # the previous, timestamps moving forward by no more than the time that passed.
            assert {ssrc for ssrc, _, _ in packets} == {line[1][0]}
            for i, ((_, seq0, ts0), (_, seq1, ts1)) in enumerate(zip(packets, packets[1:])):
                assert (seq1 - seq0) & 0xFFFF == 1, (i, seq0, seq1, moves)
                assert 0 < (ts1 - ts0) & 0xFFFFFFFF < 48000 * 5, (ts0, ts1)
            assert track.stats.lost == 0
            assert a.metrics.get("migrations_out_total") == 2 and b.metrics.get("migrations_in_total") == 2


async def test_both_participants_migrating_at_once_keep_one_m_line_and_continuous_numbering(monkeypatch) -> None:
    """The two moves overlap (pB's starts a little after pA's, at several offsets): whatever
    order the relay messages, resumes and first packets land in, pA ends subscribed to pB's
    local source on B with one m-line for the track in every offer and continuous numbering."""
    received = recording(monkeypatch)
    for offset in (0.0, 0.05, 0.3):
        async with media_nodes("node-a", "node-b") as (a, b):
            async with LiveKitClient.connect(a.url, mint_token("pa", room=ROOM)) as pa, \
                    LiveKitClient.connect(a.url, mint_token("pb", room=ROOM)) as pb, \
                    trio.open_nursery() as senders:
                offers = record_offers(pa)
                audio = await pb.publish_audio()
                senders.start_soon(send_synthetic_audio, audio, 60.0)
                (track,) = await pa.wait_for_tracks(1)
                packets = received.setdefault(id(pa), [])
                await wait_until(lambda: len(packets) >= 25)
                results: dict[str, bool] = {}

                async def move(name: str, client: LiveKitClient, delay: float) -> None:
                    await trio.sleep(delay)
                    results[name] = await a.relay.migrate(ROOM, client.participant_sid, "node-b")

                async with trio.open_nursery() as moves:
                    moves.start_soon(move, "pa", pa, 0.0)
                    moves.start_soon(move, "pb", pb, offset)
                assert results == {"pa": True, "pb": True}, (offset, results)
                await pa.wait_resumed(1)
                await pb.wait_resumed(1)
                mark = len(packets)
                await wait_until(lambda: len(packets) >= mark + 25)
                room_b = b.media.room_by_name(ROOM)
                await wait_until(lambda: [s.origin for s in room_b.track_manager.sources(audio.sid)] == [SourceOrigin.LOCAL])
                (local,) = room_b.track_manager.sources(audio.sid)
                await wait_until(lambda: local.has_subscriber(pa.participant_sid))
                senders.cancel_scope.cancel()

                for sdp in offers:
                    assert len(lines_for(sdp, audio.sid)) <= 1, (offset, sdp)
                mids = {line[0] for sdp in offers for line in lines_for(sdp, audio.sid)}
                assert mids == {track.mid}, (offset, mids)
                assert len({ssrc for ssrc, _, _ in packets}) == 1, offset
                for (_, seq0, ts0), (_, seq1, ts1) in zip(packets, packets[1:]):
                    assert (seq1 - seq0) & 0xFFFF == 1, (offset, seq0, seq1)
                    assert 0 < (ts1 - ts0) & 0xFFFFFFFF < 48000 * 5, (offset, ts0, ts1)
                assert pa.errors == [] and pb.errors == []
                for server in (a, b):
                    for room_media in list(server.media.rooms.values()):
                        for source in room_media.track_manager.all_sources():
                            assert source.is_open or not source.subscriber_ids
        received.clear()


async def test_a_client_resuming_where_it_first_connected_is_forwarded_to_the_new_node() -> None:
    """LiveKit SDKs resume at the URL they joined (they ignore the leave's region URL): the old
    node splices such a resume through to the participant's new node, which runs it."""
    async with media_nodes("node-a", "node-b") as (a, b):
        async with LiveKitClient.connect(a.url, mint_token("pub", room=ROOM)) as pub, \
                LiveKitClient.connect(a.url, mint_token("sub", room=ROOM)) as sub, \
                trio.open_nursery() as senders:
            dispatch = sub._dispatch

            async def without_region(response: rtc.SignalResponse) -> None:
                if response.WhichOneof("message") == "leave":
                    del response.leave.regions.regions[:]  # resume at the URL we joined
                await dispatch(response)

            sub._dispatch = without_region  # type: ignore[method-assign]
            audio = await pub.publish_audio()
            senders.start_soon(send_synthetic_audio, audio, 30.0)
            (track,) = await sub.wait_for_tracks(1)
            await wait_until(lambda: track.stats.packets > 20)
            assert await a.relay.migrate(ROOM, sub.participant_sid, "node-b")
            await sub.wait_resumed(1)
            assert sub.url == a.url  # it went back to A ...
            room_b = b.media.room_by_name(ROOM)
            assert sub.participant_sid in room_b.sessions  # ... and runs on B
            before = track.stats.packets
            await wait_until(lambda: track.stats.packets > before + 25)
            assert a.metrics.get("signal_resume_forwarded_total") == 1
            assert track.stats.lost == 0 and sub.errors == []
            senders.cancel_scope.cancel()


def layout(sdp: str) -> list[tuple[str, str, bool]]:
    """(mid, kind, live) of every m-line, in order."""
    return [(m.mid or "", m.kind, not m.rejected) for m in parse_sdp(sdp).media]


async def test_the_new_node_offers_every_m_line_the_client_had_in_place() -> None:
    """A LiveKit SDK keeps its subscriber peer connection across a migration, so the new node's
    first offer must carry every m-line of the old node's last one, same mids, kinds and order —
    including one idle since its track was unsubscribed — with the still-subscribed track on its
    own m-line and SSRC."""
    async with media_nodes("node-a", "node-b") as (a, b):
        async with LiveKitClient.connect(a.url, mint_token("pub", room=ROOM)) as pub, \
                LiveKitClient.connect(a.url, mint_token("sub", room=ROOM)) as sub, \
                trio.open_nursery() as senders:
            offers = record_offers(sub)
            first = await pub.publish_audio("first")
            second = await pub.publish_audio("second")
            senders.start_soon(send_synthetic_audio, first, 30.0)
            senders.start_soon(send_synthetic_audio, second, 30.0)
            await sub.wait_for_tracks(2)
            # sub lets the first track go: its m-line stays, idle.
            await sub._send(rtc.SignalRequest(subscription=rtc.UpdateSubscription(track_sids=[first.sid], subscribe=False)))
            await wait_until(lambda: offers and not lines_for(offers[-1], first.sid))
            (line,) = lines_for(offers[-1], second.sid)
            before = layout(offers[-1])
            count = len(offers)
            assert await a.relay.migrate(ROOM, sub.participant_sid, "node-b")
            await sub.wait_resumed(1)
            await wait_until(lambda: len(offers) > count)
            assert layout(offers[count]) == before
            assert lines_for(offers[count], second.sid) == [line]
            senders.cancel_scope.cancel()
