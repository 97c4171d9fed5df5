"""Same-node resume over real WebSockets against the in-process server: a participant whose
signal connection is lost (no `leave`) while its media is up stays in the room for the resume
window, unseen as gone by the others; a WebSocket with `reconnect=1`, its sid and a token for
the same identity and room rebinds it (`reconnect` first, then the room's state, what waited in
its outbox, and the subscriber ICE restart); anything else is refused as LiveKit refuses it.

The media session is the seam's test double (`UnavailableMediaSession`) saying its peer
connections are up: these tests are about the signal session. The media side of a resume (ICE
restart on both PCs, media continuing) runs with real SDKs in tests/e2e/test_e2e_resume_*.py.
"""

from __future__ import annotations

import trio
import trio.testing
import trio_websocket
from livekit.protocol import models, rtc

import trio_sfu.signal.participant as participant_module
from server_fixtures import join, mint_token, recv, recv_kind, running_server, send, signal_client
from trio_sfu import metrics as m
from trio_sfu.signal.media_port import MediaContext, UnavailableMediaSession
from trio_sfu.signal.participant import SignalLink

State = models.ParticipantInfo.State
RECONNECT = rtc.LeaveRequest.Action.RECONNECT
LEAVE = rtc.SignalRequest(leave=rtc.LeaveRequest(reason=models.DisconnectReason.CLIENT_INITIATED))


class MediaUp(UnavailableMediaSession):
    """A media session whose peer connections are up; it records the resumes it is told of."""

    resumes: list[str] = []

    def __init__(self, context: MediaContext) -> None:
        super().__init__(context)

    def resumable(self) -> bool:
        return True

    def resumed(self) -> None:
        MediaUp.resumes.append(self.context.participant_sid)


def resume_query(sid: str, reason: int = models.ReconnectReason.RR_SIGNAL_DISCONNECTED) -> str:
    return f"reconnect=1&sid={sid}&reconnect_reason={reason}"


async def until(predicate, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


async def updates_about(ws: trio_websocket.WebSocketConnection, sid: str, quiet_for: float) -> list[models.ParticipantInfo]:
    """Every ParticipantUpdate entry about `sid` that arrives until `quiet_for` passes without a message."""
    seen = []
    while True:
        with trio.move_on_after(quiet_for):
            response = await recv(ws, timeout=quiet_for + 1)
            if response.WhichOneof("message") == "update":
                seen += [p for p in response.update.participants if p.sid == sid]
            continue
        return seen


class RoomEvents:
    """The registry's observer (what webhooks hear): (event, identity) in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def room_event(self, event, room, participant=None, track=None) -> None:
        if participant is not None:
            self.seen.append((event, participant.identity))


async def test_lost_connection_resumes_with_same_sid_and_queued_updates() -> None:
    MediaUp.resumes = []
    events = RoomEvents()
    async with running_server() as server:
        server.registry.media_factory = MediaUp
        server.registry.observers.append(events)
        async with signal_client(server, mint_token("bob")) as bob:
            await join(bob)
            async with signal_client(server, mint_token("alice")) as alice:
                sid = (await join(alice)).participant.sid
            # alice's socket is gone without a leave: she waits for a resume.
            room = server.registry.rooms["room1"]
            await until(lambda: room.participants["alice"].link is SignalLink.AWAITING_RESUME)
            # Meanwhile bob changes: the update waits in alice's outbox.
            await send(bob, rtc.SignalRequest(add_track=rtc.AddTrackRequest(
                cid="mic", name="mic", type=models.TrackType.AUDIO, source=models.TrackSource.MICROPHONE)))
            bob_track = (await recv_kind(bob, "track_published")).track_published.track.sid

            async with signal_client(server, mint_token("alice"), query=resume_query(sid)) as again:
                first = await recv(again)
                assert first.WhichOneof("message") == "reconnect", first
                assert first.reconnect.client_configuration.resume_connection == models.ClientConfigSetting.ENABLED
                bob_seen = None
                with trio.fail_after(5):
                    while bob_seen is None or not bob_seen.tracks:
                        response = await recv_kind(again, "update")
                        bob_seen = next((p for p in response.update.participants if p.identity == "bob"), bob_seen)
                assert [t.sid for t in bob_seen.tracks] == [bob_track]
                assert room.participants["alice"].sid == sid and room.participants["alice"].link is SignalLink.CONNECTED
                assert MediaUp.resumes == [sid]
                await send(again, rtc.SignalRequest(ping_req=rtc.Ping(timestamp=7)))
                assert (await recv_kind(again, "pong_resp")).pong_resp.last_ping_timestamp == 7
                # bob never saw alice leave.
                assert all(p.state != State.DISCONNECTED for p in await updates_about(bob, sid, quiet_for=0.3))
                assert ("participant_left", "alice") not in events.seen  # no webhook either
                await send(again, rtc.SignalRequest(leave=rtc.LeaveRequest(reason=models.DisconnectReason.CLIENT_INITIATED)))
            # A real leave is seen at once.
            gone = [p for p in await updates_about(bob, sid, quiet_for=0.5) if p.state == State.DISCONNECTED]
            assert gone and gone[-1].disconnect_reason == models.DisconnectReason.CLIENT_INITIATED
            assert events.seen.count(("participant_joined", "alice")) == 1
            assert events.seen.count(("participant_left", "alice")) == 1
            await send(bob, LEAVE)  # bob leaves: his socket closing would be a lost connection
    assert server.metrics.get(m.SIGNAL_CONNECTION_LOST) == 1
    assert server.metrics.get(m.SIGNAL_RESUMED) == 1
    assert server.metrics.get(m.SIGNAL_RESUME_REFUSED) == 0


async def refused(server, token: str, sid: str) -> None:
    async with signal_client(server, token, query=resume_query(sid)) as ws:
        first = await recv(ws)
        assert first.WhichOneof("message") == "leave", first
        assert (first.leave.reason, first.leave.action) == (models.DisconnectReason.STATE_MISMATCH, RECONNECT)


async def test_resume_refused_for_wrong_identity_room_or_sid() -> None:
    async with running_server() as server:
        server.registry.media_factory = MediaUp
        async with signal_client(server, mint_token("alice")) as alice:
            sid = (await join(alice)).participant.sid
        room = server.registry.rooms["room1"]
        await until(lambda: room.participants["alice"].link is SignalLink.AWAITING_RESUME)
        await refused(server, mint_token("mallory"), sid)  # another identity, alice's sid
        await refused(server, mint_token("alice", room="room2"), sid)  # alice, but another room
        await refused(server, mint_token("alice"), "PA_unknown")  # alice, not her sid
        assert server.metrics.get(m.SIGNAL_RESUME_REFUSED) == 3
        # None of them disturbed the participant: the right resume still works.
        assert room.participants["alice"].link is SignalLink.AWAITING_RESUME
        async with signal_client(server, mint_token("alice"), query=resume_query(sid)) as again:
            assert (await recv(again)).WhichOneof("message") == "reconnect"
            await send(again, rtc.SignalRequest(leave=rtc.LeaveRequest()))


async def test_no_resume_within_the_window_leaves_then_refuses(monkeypatch) -> None:
    monkeypatch.setattr(participant_module, "RESUME_WINDOW", 0.5)
    async with running_server() as server:
        server.registry.media_factory = MediaUp
        async with signal_client(server, mint_token("bob")) as bob:
            await join(bob)
            async with signal_client(server, mint_token("alice")) as alice:
                sid = (await join(alice)).participant.sid
            started = trio.current_time()
            with trio.fail_after(5):
                while True:
                    info = await next_update(bob, sid)
                    if info.state == State.DISCONNECTED:
                        break
            assert trio.current_time() - started >= 0.4, "left before the resume window passed"
            assert info.disconnect_reason == models.DisconnectReason.SIGNAL_CLOSE
            await refused(server, mint_token("alice"), sid)
            await send(bob, LEAVE)
    assert server.metrics.get(m.SIGNAL_RESUME_EXPIRED) == 1


async def next_update(ws: trio_websocket.WebSocketConnection, sid: str) -> models.ParticipantInfo:
    while True:
        response = await recv_kind(ws, "update")
        for info in response.update.participants:
            if info.sid == sid:
                return info


async def test_without_media_a_lost_connection_leaves_at_once() -> None:
    async with running_server() as server:  # the signal-only server: no media to keep
        async with signal_client(server, mint_token("bob")) as bob:
            await join(bob)
            async with signal_client(server, mint_token("alice")) as alice:
                sid = (await join(alice)).participant.sid
            with trio.fail_after(2):
                while (info := await next_update(bob, sid)).state != State.DISCONNECTED:
                    pass
            assert info.disconnect_reason == models.DisconnectReason.SIGNAL_CLOSE
            await refused(server, mint_token("alice"), sid)


async def test_racing_resumes_the_last_one_wins() -> None:
    MediaUp.resumes = []
    async with running_server() as server:
        server.registry.media_factory = MediaUp
        async with signal_client(server, mint_token("alice")) as original:
            sid = (await join(original)).participant.sid
            participant = server.registry.rooms["room1"].participants["alice"]
            # The client believes its connection dead (half-open) and resumes: the original gives way.
            async with signal_client(server, mint_token("alice"), query=resume_query(sid)) as first:
                assert (await recv(first)).WhichOneof("message") == "reconnect"
                with trio.fail_after(5):
                    try:
                        while True:
                            await original.get_message()
                    except trio_websocket.ConnectionClosed:
                        pass
                # A second resume while the first is served: the first is closed, the second serves.
                async with signal_client(server, mint_token("alice"), query=resume_query(sid)) as second:
                    assert (await recv(second)).WhichOneof("message") == "reconnect"
                    with trio.fail_after(5):
                        try:
                            while True:
                                await first.get_message()
                        except trio_websocket.ConnectionClosed:
                            pass
                    await send(second, rtc.SignalRequest(ping_req=rtc.Ping(timestamp=3)))
                    assert (await recv_kind(second, "pong_resp")).pong_resp.last_ping_timestamp == 3
                    assert participant.link is SignalLink.CONNECTED and participant.resumes == 2
                    assert server.registry.rooms["room1"].participants["alice"] is participant
                    await send(second, rtc.SignalRequest(leave=rtc.LeaveRequest()))
    assert MediaUp.resumes == [sid, sid]
    assert server.metrics.get(m.SIGNAL_RESUME_SUPERSEDED) == 2
    # running_server asserted on exit that no task of any of the connections survived.


async def test_pending_resume_superseded_before_it_is_served() -> None:
    """Two resumes arrive before the participant serves either (it is still tearing the lost
    connection down): the older is closed unserved, the newer serves; one pending at a time."""
    async with running_server() as server:
        server.registry.media_factory = MediaUp
        async with signal_client(server, mint_token("alice")) as alice:
            sid = (await join(alice)).participant.sid
        room = server.registry.rooms["room1"]
        participant = room.participants["alice"]
        await until(lambda: participant.link is SignalLink.AWAITING_RESUME)
        older_stream, older_peer = trio.testing.memory_stream_pair()
        older = participant.offer_resume(older_stream)
        async with signal_client(server, mint_token("alice"), query=resume_query(sid)) as newer:
            assert (await recv(newer)).WhichOneof("message") == "reconnect"
            assert older is not None and older.ended.is_set()
            assert participant.resumes == 1
            await send(newer, rtc.SignalRequest(leave=rtc.LeaveRequest()))
        await older_peer.aclose()
    assert server.metrics.get(m.SIGNAL_RESUME_SUPERSEDED) == 1


async def test_sync_state_reconciles_and_a_foreign_track_forces_a_full_reconnect() -> None:
    async with running_server() as server:
        server.registry.media_factory = MediaUp
        async with signal_client(server, mint_token("bob")) as bob:
            await join(bob)
            await send(bob, rtc.SignalRequest(add_track=rtc.AddTrackRequest(
                cid="cam", name="cam", type=models.TrackType.VIDEO, source=models.TrackSource.CAMERA)))
            bob_track = (await recv_kind(bob, "track_published")).track_published.track.sid
            async with signal_client(server, mint_token("alice")) as alice:
                sid = (await join(alice)).participant.sid
                await send(alice, rtc.SignalRequest(add_track=rtc.AddTrackRequest(
                    cid="mic", name="mic", type=models.TrackType.AUDIO, source=models.TrackSource.MICROPHONE)))
                mine = (await recv_kind(alice, "track_published")).track_published
            participant = server.registry.rooms["room1"].participants["alice"]
            await until(lambda: participant.link is SignalLink.AWAITING_RESUME)
            async with signal_client(server, mint_token("alice"), query=resume_query(sid)) as again:
                assert (await recv(again)).WhichOneof("message") == "reconnect"
                await send(again, rtc.SignalRequest(sync_state=rtc.SyncState(
                    publish_tracks=[mine],
                    subscription=rtc.UpdateSubscription(track_sids=[bob_track], subscribe=False),
                    track_sids_disabled=[bob_track])))
                await send(again, rtc.SignalRequest(ping_req=rtc.Ping(timestamp=1)))
                await recv_kind(again, "pong_resp")
                assert participant.subscriptions == {bob_track: False}
                assert participant.track_settings[bob_track].disabled
                # A publication the server does not have: the two sides disagree.
                foreign = rtc.TrackPublishedResponse(cid="x", track=models.TrackInfo(sid="TR_notmine"))
                await send(again, rtc.SignalRequest(sync_state=rtc.SyncState(publish_tracks=[mine, foreign])))
                leave = (await recv_kind(again, "leave")).leave
                assert (leave.reason, leave.action) == (models.DisconnectReason.STATE_MISMATCH, RECONNECT)
            assert participant.is_closed
            await send(bob, LEAVE)
    assert server.metrics.get(m.SIGNAL_SYNC_STATE_MISMATCH) == 1


async def test_ping_timeout_with_media_up_drops_the_connection_not_the_participant(
        mock_clock: trio.testing.MockClock) -> None:
    """A half-open socket (the client stopped being heard) with the media up: the connection is
    dropped at the ping timeout, no leave is sent, and the client may still resume."""
    mock_clock.autojump_threshold = 0.25  # virtual time jumps only after real idleness (loopback I/O)
    async with running_server() as server:
        server.registry.media_factory = MediaUp
        async with signal_client(server, mint_token("silent")) as silent:
            sid = (await join(silent)).participant.sid
            participant = server.registry.rooms["room1"].participants["silent"]
            messages = []
            with trio.fail_after(participant_module.PING_TIMEOUT * 4):
                try:
                    while True:
                        messages.append(await recv(silent, timeout=participant_module.PING_TIMEOUT * 4))
                except trio_websocket.ConnectionClosed:
                    pass
            assert all(r.WhichOneof("message") != "leave" for r in messages), messages
            assert participant.link is SignalLink.AWAITING_RESUME and not participant.is_closed
        async with signal_client(server, mint_token("silent"), query=resume_query(sid)) as again:
            assert (await recv(again)).WhichOneof("message") == "reconnect"
            await send(again, rtc.SignalRequest(leave=rtc.LeaveRequest()))
    assert server.metrics.get(m.SIGNAL_PING_TIMEOUT) == 1 and server.metrics.get(m.SIGNAL_RESUMED) == 1


async def test_offers_queued_while_waiting_for_a_resume_coalesce_to_the_newest() -> None:
    async with running_server() as server:
        server.registry.media_factory = MediaUp
        async with signal_client(server, mint_token("alice")) as alice:
            sid = (await join(alice)).participant.sid
        participant = server.registry.rooms["room1"].participants["alice"]
        await until(lambda: participant.link is SignalLink.AWAITING_RESUME)
        for offer_id in (1, 2, 3):  # what the subscription manager offers while nobody listens
            participant.send(rtc.SignalResponse(offer=rtc.SessionDescription(type="offer", sdp="v=0\r\n", id=offer_id)))
        async with signal_client(server, mint_token("alice"), query=resume_query(sid)) as again:
            assert (await recv(again)).WhichOneof("message") == "reconnect"
            await send(again, rtc.SignalRequest(ping_req=rtc.Ping(timestamp=5)))
            offers = []
            with trio.fail_after(5):
                while (response := await recv(again)).WhichOneof("message") != "pong_resp":
                    if response.WhichOneof("message") == "offer":
                        offers.append(response.offer.id)
            assert offers == [3]
            await send(again, LEAVE)
