"""Bounded signal input (issue 13): one hostile participant must not hurt anyone else.

Each test is one finding of the issue, replayed over real WebSockets against the real server:
the hostile request is refused with LiveKit's RequestResponse reason (or throttled, then the
sender disconnected), it is counted, and the other members of the room carry on -- nobody else
is disconnected and the server holds no more than the bounds say. The numbers of each finding
(3,000 track ids, 1,000 mute toggles, 20,000 made-up subscriptions, ...) are the ones it was
reproduced with.
"""

from __future__ import annotations

import tracemalloc

import pytest
import trio
import trio_websocket
from livekit.protocol import models, rtc
from livekit.protocol import room as room_pb

import server_fixtures
from server_fixtures import join, make_config, mint_token, recv, recv_kind, running_server, send, signal_client
from trio_sfu import metrics as m
from trio_sfu.api.twirp import TwirpError
from trio_sfu.config import config_from_mapping
from trio_sfu.signal import rate_limit

State = models.ParticipantInfo.State
Reason = rtc.RequestResponse.Reason


class Observer:
    """A well-behaved member that reads everything as it arrives and remembers what it saw."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws
        self.updates = 0
        self.latest: dict[str, models.ParticipantInfo] = {}
        self.closed: trio_websocket.CloseReason | None = None

    async def read(self) -> None:
        try:
            while True:
                response = await recv(self.ws, timeout=60)
                if response.WhichOneof("message") == "update":
                    for info in response.update.participants:
                        self.updates += 1
                        self.latest[info.identity] = info
        except trio_websocket.ConnectionClosed as exc:
            self.closed = exc.reason


async def ping(ws: trio_websocket.WebSocketConnection, stamp: int) -> None:
    await send(ws, rtc.SignalRequest(ping_req=rtc.Ping(timestamp=stamp)))
    assert (await recv_kind(ws, "pong_resp")).pong_resp.last_ping_timestamp == stamp


async def refusal(ws: trio_websocket.WebSocketConnection) -> rtc.RequestResponse:
    return (await recv_kind(ws, "request_response")).request_response


async def publish(ws: trio_websocket.WebSocketConnection, cid: str, name: str = "mic",
                  track_type: int = models.TrackType.AUDIO,
                  source: int = models.TrackSource.MICROPHONE) -> rtc.SignalResponse:
    await send(ws, rtc.SignalRequest(add_track=rtc.AddTrackRequest(cid=cid, name=name, type=track_type, source=source)))
    while True:
        response = await recv(ws)
        kind = response.WhichOneof("message")
        if kind in ("track_published", "request_response"):
            return response


def made_up_ids(count: int, prefix: str = "TR_MADEUP") -> list[str]:
    return [f"{prefix}{i:08d}" for i in range(count)]


# ---- finding 1: UpdateTrackSettings naming thousands of tracks ------------------------------


async def test_track_settings_naming_thousands_of_tracks_is_refused_and_costs_nothing() -> None:
    async with running_server() as server:
        async with signal_client(server, mint_token("good")) as good, signal_client(server, mint_token("bad")) as bad:
            await join(good)
            await join(bad)
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                # ~39 KB on the wire: it once added 288 MiB (every id kept a copy of the request).
                await send(bad, rtc.SignalRequest(track_setting=rtc.UpdateTrackSettings(
                    track_sids=made_up_ids(3000), quality=models.VideoQuality.HIGH, width=1280, height=720)))
                answer = await refusal(bad)
                grown = tracemalloc.get_traced_memory()[0] - before
            finally:
                tracemalloc.stop()
            assert answer.reason == Reason.LIMIT_EXCEEDED, answer
            assert grown < 4 * 1024 * 1024, f"one refused request grew the server by {grown} bytes"
            participant = server.registry.rooms["room1"].participants["bad"]
            assert participant.track_settings == {}

            # Within the bounds (tracks not in the room yet: up to the allowance) it is kept, one
            # settings object for every id of the request.
            ids = made_up_ids(20, "TR_SOON")
            await send(bad, rtc.SignalRequest(track_setting=rtc.UpdateTrackSettings(track_sids=ids, width=320, height=180)))
            await ping(bad, 1)
            assert list(participant.track_settings) == ids
            assert len({id(s) for s in participant.track_settings.values()}) == 1
            assert participant.track_settings[ids[0]].width == 320
            await ping(good, 2)
            assert "good" in server.registry.rooms["room1"].participants
        assert server.metrics.get(m.SIGNAL_LIMIT_EXCEEDED) == 1


# ---- finding 3: mute toggles broadcast to everyone ------------------------------------------


@pytest.mark.parametrize("rate_limited", [True, False], ids=["rate-limited", "coalescing-only"])
async def test_a_mute_toggle_flood_disconnects_nobody_but_perhaps_the_sender(
    rate_limited: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not rate_limited:
        # Without the sender's rate limit, coalescing alone must keep the recipients' queues short.
        monkeypatch.setitem(rate_limit.RATES, "mute", rate_limit.Rate(10**6, 10**6))
    async with running_server() as server:
        async with signal_client(server, mint_token("o1")) as w1, signal_client(server, mint_token("o2")) as w2, \
                signal_client(server, mint_token("o3")) as w3, signal_client(server, mint_token("bad")) as bad:
            for ws in (w1, w2, w3, bad):
                await join(ws)
            track = (await publish(bad, "mic")).track_published.track
            observers = [Observer(ws) for ws in (w1, w2, w3)]
            async with trio.open_nursery() as nursery:
                for observer in observers:
                    nursery.start_soon(observer.read)
                # 1,000 toggles (22 KB) once disconnected all three readers in 1.1 s.
                with trio.move_on_after(10):
                    for i in range(1000):
                        await send(bad, rtc.SignalRequest(mute=rtc.MuteTrackRequest(sid=track.sid, muted=i % 2 == 0)))
                await trio.sleep(0.5)
                nursery.cancel_scope.cancel()
            room = server.registry.rooms["room1"]
            assert {"o1", "o2", "o3"} <= set(room.participants)
            assert all(o.closed is None for o in observers), [o.closed for o in observers]
            assert server.metrics.get(m.SIGNAL_SEND_OVERFLOW) == 0
            for ws, stamp in ((w1, 1), (w2, 2), (w3, 3)):
                await ping(ws, stamp)
            if rate_limited:
                assert "bad" not in room.participants
                assert server.metrics.get(m.SIGNAL_RATE_LIMIT_DISCONNECT) == 1
            else:
                # Every toggle went through; each reader's last word on the track is the last toggle.
                assert "bad" in room.participants
                for observer in observers:
                    (info,) = [t for t in observer.latest["bad"].tracks if t.sid == track.sid]
                    assert info.muted is False


# ---- finding 4: subscriptions to made-up track ids ------------------------------------------


async def test_subscriptions_to_made_up_tracks_are_bounded() -> None:
    async with running_server() as server:
        async with signal_client(server, mint_token("pub")) as pub, signal_client(server, mint_token("bad")) as bad:
            await join(pub)
            await join(bad)
            real = (await publish(pub, "mic")).track_published.track.sid
            participant = server.registry.rooms["room1"].participants["bad"]

            await send(bad, rtc.SignalRequest(subscription=rtc.UpdateSubscription(
                track_sids=made_up_ids(20_000), subscribe=True)))
            assert (await refusal(bad)).reason == Reason.LIMIT_EXCEEDED
            assert participant.subscriptions == {}

            # A real track plus a few that do not exist (yet) is an ordinary request.
            await send(bad, rtc.SignalRequest(subscription=rtc.UpdateSubscription(
                track_sids=[real, *made_up_ids(10, "TR_SOON")], subscribe=True)))
            # 4,000 made-up ids in requests of 20 (within the subscription rate) are all
            # accepted, but only the newest allowance of them is remembered: the set every
            # request walks stays small.
            for batch in range(200):
                await send(bad, rtc.SignalRequest(subscription=rtc.UpdateSubscription(
                    track_sids=made_up_ids(20, f"TR_B{batch:04d}_"), subscribe=True)))
            await ping(bad, 1)
            allowance = server.registry.limits.max_pending_track_ids
            assert allowance == 32
            # The real track, and the newest 32 made-up ids: batch 199's 20 and batch 198's last 12.
            assert set(participant.subscriptions) == {real, *made_up_ids(20, "TR_B0199_"),
                                                      *made_up_ids(20, "TR_B0198_")[8:]}
            assert participant.subscriptions[real] is True
            await ping(pub, 2)
        assert server.metrics.get(m.SIGNAL_PENDING_TRACK_IDS_FORGOTTEN) == 10 + 200 * 20 - allowance
        assert server.metrics.get(m.SIGNAL_RATE_LIMITED) == 0


# ---- finding 5: long track names, rebroadcast to a member that never reads -------------------


async def test_track_descriptions_are_bounded_and_a_silent_member_holds_one_update_per_publisher(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(rate_limit.RATES, "mute", rate_limit.Rate(10**6, 10**6))
    async with running_server() as server:
        async with signal_client(server, mint_token("silent")) as silent, signal_client(server, mint_token("bad")) as bad:
            await join(silent)  # and never reads again
            await join(bad)
            answer = (await publish(bad, "long", name="n" * 10_000)).request_response
            assert answer.reason == Reason.LIMIT_EXCEEDED and answer.add_track.cid == "long"
            for i in range(64):
                response = await publish(bad, f"cid{i}", name=f"{i:03d}" + "n" * 253)
                assert response.WhichOneof("message") == "track_published", response
            answer = (await publish(bad, "one-too-many")).request_response
            assert answer.reason == Reason.LIMIT_EXCEEDED and answer.add_track.cid == "one-too-many"

            room = server.registry.rooms["room1"]
            tracks = list(room.participants["bad"].tracks)
            update_size = len(rtc.SignalResponse(update=rtc.ParticipantUpdate(
                participants=[room.participants["bad"].to_info()])).SerializeToString())
            # Every toggle rebroadcasts bad's whole info (~20 KB): 1,000 of them is ~20 MB for a
            # member that does not read, more than its socket buffers hold.
            silent_participant = room.participants["silent"]
            worst = 0
            for i in range(1000):
                await send(bad, rtc.SignalRequest(mute=rtc.MuteTrackRequest(sid=tracks[i % 64], muted=i % 2 == 0)))
                if i % 50 == 0:
                    await trio.sleep(0.01)
                    worst = max(worst, silent_participant.backlog[1])
            await ping(bad, 1)
            worst = max(worst, silent_participant.backlog[1])
            assert "silent" in room.participants
            messages, queued = silent_participant.backlog
            assert messages <= 2 and worst <= 2 * update_size, (messages, queued, worst, update_size)
        assert server.metrics.get(m.SIGNAL_SEND_OVERFLOW) == 0


# ---- finding 6: own metadata, name and attributes ------------------------------------------


@pytest.mark.parametrize(
    "update",
    [
        rtc.UpdateParticipantMetadata(metadata="m" * 900_000, request_id=7),
        rtc.UpdateParticipantMetadata(name="n" * 50_000, request_id=7),
        rtc.UpdateParticipantMetadata(attributes={f"key{i:05d}": "v" * 20 for i in range(5000)}, request_id=7),
    ],
    ids=["metadata-900KB", "name-50KB", "attributes-5000"],
)
async def test_own_metadata_name_and_attributes_over_livekit_limits_are_refused(
    update: rtc.UpdateParticipantMetadata,
) -> None:
    async with running_server() as server:
        async with signal_client(server, mint_token("good")) as good, \
                signal_client(server, mint_token("bad", can_update_own_metadata=True)) as bad:
            await join(good)
            await join(bad)
            await send(bad, rtc.SignalRequest(update_metadata=update))
            answer = await refusal(bad)
            assert (answer.reason, answer.request_id, answer.update_metadata.request_id) == (
                Reason.LIMIT_EXCEEDED, 7, 7)
            assert answer.ByteSize() < 1000  # the refusal does not carry the oversized request back
            participant = server.registry.rooms["room1"].participants["bad"]
            assert (participant.metadata, participant.name, dict(participant.attributes)) == ("", "", {})
            # Nothing the others heard about bad carries it.
            await send(good, rtc.SignalRequest(ping_req=rtc.Ping(timestamp=5)))
            while (response := await recv(good)).WhichOneof("message") != "pong_resp":
                for info in response.update.participants:
                    assert (info.metadata, info.name, dict(info.attributes)) == ("", "", {})
        assert server.metrics.get(m.SIGNAL_LIMIT_EXCEEDED) == 1


async def test_attributes_cannot_grow_past_the_limit_over_several_updates() -> None:
    async with running_server() as server:
        async with signal_client(server, mint_token("bad", can_update_own_metadata=True)) as bad:
            await join(bad)
            first = {f"a{i:03d}": "v" * 400 for i in range(100)}  # ~40 KB
            second = {f"b{i:03d}": "v" * 400 for i in range(100)}  # ~40 KB more
            await send(bad, rtc.SignalRequest(update_metadata=rtc.UpdateParticipantMetadata(attributes=first, request_id=1)))
            assert (await refusal(bad)).reason == Reason.OK
            await send(bad, rtc.SignalRequest(update_metadata=rtc.UpdateParticipantMetadata(attributes=second, request_id=2)))
            answer = await refusal(bad)
            assert (answer.request_id, answer.reason) == (2, Reason.LIMIT_EXCEEDED)
            # Deleting keys (empty values) to make room is fine.
            swap = {**{k: "" for k in first}, **second}
            await send(bad, rtc.SignalRequest(update_metadata=rtc.UpdateParticipantMetadata(attributes=swap, request_id=3)))
            assert (await refusal(bad)).reason == Reason.OK
            assert dict(server.registry.rooms["room1"].participants["bad"].attributes) == second


async def test_room_max_metadata_size_from_the_config_is_applied_everywhere() -> None:
    config, warnings = config_from_mapping({"room": {"max_metadata_size": 100}, "limit": {"max_participant_name_length": 8}})
    assert not warnings and config.limit.max_metadata_size == 100
    base = make_config()
    base.room, base.limit = config.room, config.limit
    async with running_server(base) as server:
        async with signal_client(server, mint_token("bad", can_update_own_metadata=True)) as bad:
            await join(bad)
            await send(bad, rtc.SignalRequest(update_metadata=rtc.UpdateParticipantMetadata(metadata="m" * 101, request_id=1)))
            assert (await refusal(bad)).reason == Reason.LIMIT_EXCEEDED
            await send(bad, rtc.SignalRequest(update_metadata=rtc.UpdateParticipantMetadata(name="ninechars", request_id=2)))
            assert (await refusal(bad)).reason == Reason.LIMIT_EXCEEDED
            await send(bad, rtc.SignalRequest(update_metadata=rtc.UpdateParticipantMetadata(metadata="m" * 100, request_id=3)))
            assert (await refusal(bad)).reason == Reason.OK
            # The Server API is held to the same limits, with Twirp's invalid_argument as LiveKit.
            from trio_sfu.signal.grants import ClaimGrants, VideoGrant

            admin = ClaimGrants(api_key="testkey", video=VideoGrant(room_admin=True, room_create=True, room="room1"))
            service = server.room_service
            for call in (
                service.update_participant(admin, room_pb.UpdateParticipantRequest(room="room1", identity="bad",
                                                                                    metadata="m" * 101)),
                service.update_room_metadata(admin, room_pb.UpdateRoomMetadataRequest(room="room1", metadata="m" * 101)),
                service.create_room(admin, room_pb.CreateRoomRequest(name="other", metadata="m" * 101)),
            ):
                with pytest.raises(TwirpError) as info:
                    await call
                assert info.value.code == "invalid_argument"


# ---- finding 7: track type against the allowed sources ---------------------------------------


@pytest.mark.parametrize(
    "sources, track_type, source, allowed",
    [
        (["microphone"], models.TrackType.VIDEO, models.TrackSource.MICROPHONE, False),
        (["microphone"], models.TrackType.AUDIO, models.TrackSource.MICROPHONE, True),
        (["camera"], models.TrackType.AUDIO, models.TrackSource.CAMERA, False),
        (None, models.TrackType.AUDIO, models.TrackSource.CAMERA, False),
        (None, models.TrackType.VIDEO, models.TrackSource.SCREEN_SHARE_AUDIO, False),
        (None, models.TrackType.VIDEO, models.TrackSource.SCREEN_SHARE, True),
    ],
)
async def test_a_track_type_must_match_its_source(sources: list[str] | None, track_type: int, source: int,
                                                  allowed: bool) -> None:
    grants = {"can_publish_sources": sources} if sources else {}
    async with running_server() as server:
        async with signal_client(server, mint_token("pub", **grants)) as pub:
            await join(pub)
            response = await publish(pub, "t1", track_type=track_type, source=source)
            if allowed:
                assert response.WhichOneof("message") == "track_published"
            else:
                answer = response.request_response
                assert answer.reason == Reason.INVALID_REQUEST and answer.add_track.cid == "t1", answer
                assert not server.registry.rooms["room1"].participants["pub"].tracks


# ---- finding 9: a deeply nested trickle candidate -------------------------------------------


async def test_a_deeply_nested_trickle_candidate_is_refused_before_parsing() -> None:
    async with server_fixtures.media_server() as server:
        async with signal_client(server, mint_token("bad")) as bad:
            await join(bad)
            await send(bad, rtc.SignalRequest(trickle=rtc.TrickleRequest(
                candidateInit="[" * 200_000, target=rtc.SignalTarget.PUBLISHER)))
            answer = await refusal(bad)
            assert answer.reason == Reason.LIMIT_EXCEEDED and answer.trickle.target == rtc.SignalTarget.PUBLISHER
            deep_but_small = '{"candidate":' + "[" * 2000 + "]" * 2000 + "}"
            await send(bad, rtc.SignalRequest(trickle=rtc.TrickleRequest(candidateInit=deep_but_small)))
            assert (await refusal(bad)).reason == Reason.INVALID_REQUEST
            await ping(bad, 1)
            assert "bad" in server.registry.rooms["room1"].participants
        assert server.metrics.get(m.SIGNAL_SESSION_CRASHED) == 0
        assert server.metrics.get(m.SIGNAL_LIMIT_EXCEEDED) == 2


# ---- rate limits: the sender is throttled, then disconnected -------------------------------


async def test_a_request_flood_is_throttled_then_the_sender_alone_is_disconnected() -> None:
    async with running_server() as server:
        async with signal_client(server, mint_token("good")) as good, signal_client(server, mint_token("bad")) as bad:
            await join(good)
            await join(bad)
            with trio.fail_after(20):
                try:
                    for i in range(2000):
                        await send(bad, rtc.SignalRequest(ping_req=rtc.Ping(timestamp=i)))
                except trio_websocket.ConnectionClosed:
                    pass
                # What bad hears: pongs, LIMIT_EXCEEDED refusals, then leave and a 1008 close.
                kinds: list[str] = []
                with pytest.raises(trio_websocket.ConnectionClosed) as info:
                    while True:
                        response = await recv(bad)
                        kinds.append(response.WhichOneof("message"))
                        if kinds[-1] == "leave":
                            assert response.leave.reason == models.DisconnectReason.SIGNAL_CLOSE
                assert info.value.reason.code == 1008
            # The burst, and what the bucket refilled while the flood was read (5/s).
            assert rate_limit.RATES["ping_req"].burst <= kinds.count("pong_resp") <= rate_limit.RATES["ping_req"].burst + 10
            assert "request_response" in kinds and kinds[-1] == "leave"
            await ping(good, 1)
            room = server.registry.rooms["room1"]
            assert "good" in room.participants and "bad" not in room.participants
        assert server.metrics.get(m.SIGNAL_RATE_LIMIT_DISCONNECT) == 1
        assert server.metrics.get(m.SIGNAL_RATE_LIMITED) > 0


# ---- the other bounds: SDP size, the Server API's subscriptions ------------------------------


async def test_an_oversized_session_description_is_refused_before_parsing() -> None:
    async with running_server() as server:
        async with signal_client(server, mint_token("bad")) as bad:
            await join(bad)
            sdp = "v=0\r\n" + "a=x-padding:" + "p" * (300 * 1024) + "\r\n"
            await send(bad, rtc.SignalRequest(offer=rtc.SessionDescription(type="offer", sdp=sdp, id=41)))
            answer = await refusal(bad)
            assert (answer.reason, answer.request_id) == (Reason.LIMIT_EXCEEDED, 41)
            await send(bad, rtc.SignalRequest(answer=rtc.SessionDescription(type="answer", sdp=sdp, id=42)))
            answer = await refusal(bad)
            assert (answer.reason, answer.request_id) == (Reason.LIMIT_EXCEEDED, 42)
        assert server.metrics.get(m.SIGNAL_LIMIT_EXCEEDED) == 2


async def test_the_server_apis_update_subscriptions_is_held_to_the_same_bounds() -> None:
    from trio_sfu.signal.grants import ClaimGrants, VideoGrant

    async with running_server() as server:
        async with signal_client(server, mint_token("member")) as member:
            await join(member)
            admin = ClaimGrants(api_key="testkey", video=VideoGrant(room_admin=True, room="room1"))
            for ids in (made_up_ids(600), made_up_ids(40)):  # too many ids; too many that do not exist
                with pytest.raises(TwirpError) as info:
                    await server.room_service.update_subscriptions(admin, room_pb.UpdateSubscriptionsRequest(
                        room="room1", identity="member", track_sids=ids, subscribe=True))
                assert info.value.code == "invalid_argument"
            await server.room_service.update_subscriptions(admin, room_pb.UpdateSubscriptionsRequest(
                room="room1", identity="member", track_sids=made_up_ids(5), subscribe=True))
            assert len(server.registry.rooms["room1"].participants["member"].subscriptions) == 5
