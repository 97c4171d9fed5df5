"""The signal session end to end over real WebSockets: an in-process server on an ephemeral
port, clients built from trio-websocket and livekit-protocol messages, tokens from livekit-api.
Every test runs the server through `running_server`, which fails if any server task survives
shutdown."""

from __future__ import annotations

import pytest
import trio
import trio_websocket
from livekit.protocol import models, rtc

import trio_sfu.signal.participant as participant_module
from trio_sfu import metrics as m
from server_fixtures import (
    join,
    make_config,
    mint_token,
    recv,
    recv_kind,
    running_server,
    send,
    signal_client,
)

State = models.ParticipantInfo.State
# These tests mix virtual time with real loopback sockets. With a zero threshold the clock could
# jump while a reply is in flight in the kernel (a task waiting on I/O counts as blocked), so
# virtual time only jumps after this much real idleness.
AUTOJUMP_WITH_REAL_IO = 0.25


async def next_update_for(ws: trio_websocket.WebSocketConnection, identity: str) -> models.ParticipantInfo:
    while True:
        response = await recv_kind(ws, "update")
        for info in response.update.participants:
            if info.identity == identity:
                return info


async def test_join_response_has_what_clients_require() -> None:
    async with running_server() as server:
        token = mint_token("alice", name="Alice", metadata='{"a":1}', attributes={"k": "v"}, can_publish_sources=["camera"])
        async with signal_client(server, token) as ws:
            j = await join(ws)
    assert j.room.name == "room1" and j.room.sid.startswith("RM_")
    assert j.participant.sid.startswith("PA_")
    assert (j.participant.identity, j.participant.name, j.participant.metadata) == ("alice", "Alice", '{"a":1}')
    assert dict(j.participant.attributes) == {"k": "v"}
    perm = j.participant.permission
    assert perm.can_publish and perm.can_subscribe and perm.can_publish_data
    assert list(perm.can_publish_sources) == [models.TrackSource.CAMERA]
    assert not perm.can_update_metadata
    assert j.server_info.version and j.server_version == j.server_info.version
    assert j.server_info.protocol >= 15
    assert j.ping_interval > 0 and j.ping_timeout > j.ping_interval
    assert j.subscriber_primary is True and j.fast_publish is False
    assert list(j.other_participants) == []


async def test_full_flow_ping_publish_mute_leave() -> None:
    async with running_server() as server:
        async with signal_client(server, mint_token("alice")) as alice:
            ja = await join(alice)
            async with signal_client(server, mint_token("bob")) as bob:
                jb = await join(bob)
                assert [p.identity for p in jb.other_participants] == ["alice"]
                assert jb.room.sid == ja.room.sid
                seen = await next_update_for(alice, "bob")
                assert seen.state == State.JOINED and seen.sid == jb.participant.sid

                await send(bob, rtc.SignalRequest(ping=1234))
                assert (await recv_kind(bob, "pong")).pong > 0
                await send(bob, rtc.SignalRequest(ping_req=rtc.Ping(timestamp=555, rtt=7)))
                pong = (await recv_kind(bob, "pong_resp")).pong_resp
                assert pong.last_ping_timestamp == 555 and pong.timestamp > 0

                layers = [
                    models.VideoLayer(quality=models.VideoQuality.LOW, width=320, height=180, bitrate=150_000),
                    models.VideoLayer(quality=models.VideoQuality.HIGH, width=1280, height=720, bitrate=1_700_000),
                ]
                add = rtc.AddTrackRequest(
                    cid="cam-1", name="camera", type=models.TrackType.VIDEO, source=models.TrackSource.CAMERA,
                    width=1280, height=720, layers=layers, encryption=models.Encryption.GCM, stream="camera",
                    simulcast_codecs=[rtc.SimulcastCodec(codec="vp8", cid="cam-1", layers=layers)],
                )
                await send(bob, rtc.SignalRequest(add_track=add))
                published = (await recv_kind(bob, "track_published")).track_published
                track = published.track
                assert published.cid == "cam-1"
                assert track.sid.startswith("TR_")
                assert (track.type, track.name, track.source) == (models.TrackType.VIDEO, "camera", models.TrackSource.CAMERA)
                assert (track.width, track.height, track.simulcast) == (1280, 720, True)
                assert list(track.layers) == layers and track.encryption == models.Encryption.GCM
                assert track.codecs[0].mime_type == "video/vp8" and track.codecs[0].cid == "cam-1"

                audio = rtc.AddTrackRequest(
                    cid="mic-1", name="mic", type=models.TrackType.AUDIO, source=models.TrackSource.MICROPHONE,
                    disable_dtx=True, stereo=True, audio_features=[models.AudioTrackFeature.TF_STEREO],
                )
                await send(bob, rtc.SignalRequest(add_track=audio))
                mic = (await recv_kind(bob, "track_published")).track_published.track
                assert mic.disable_dtx and mic.stereo and list(mic.audio_features) == [models.AudioTrackFeature.TF_STEREO]

                info = await next_update_for(alice, "bob")
                while len(info.tracks) < 2:
                    info = await next_update_for(alice, "bob")
                version_before = info.version
                await send(bob, rtc.SignalRequest(mute=rtc.MuteTrackRequest(sid=track.sid, muted=True)))
                info = await next_update_for(alice, "bob")
                assert info.version > version_before
                assert {t.sid: t.muted for t in info.tracks} == {track.sid: True, mic.sid: False}

                await send(bob, rtc.SignalRequest(leave=rtc.LeaveRequest(reason=models.DisconnectReason.CLIENT_INITIATED)))
                gone = await next_update_for(alice, "bob")
                assert gone.state == State.DISCONNECTED and gone.version > info.version
            assert list(server.registry.rooms["room1"].participants) == ["alice"]


async def test_versions_increase_per_participant() -> None:
    async with running_server() as server:
        async with signal_client(server, mint_token("watcher")) as watcher, signal_client(
            server, mint_token("actor", can_update_own_metadata=True)
        ) as actor:
            await join(watcher)
            await join(actor)
            versions = [(await next_update_for(watcher, "actor")).version]
            for i in range(3):
                await send(actor, rtc.SignalRequest(update_metadata=rtc.UpdateParticipantMetadata(metadata=f"m{i}", request_id=10 + i)))
                info = await next_update_for(watcher, "actor")
                assert info.metadata == f"m{i}"
                versions.append(info.version)
                ok = (await recv_kind(actor, "request_response")).request_response
                assert (ok.request_id, ok.reason) == (10 + i, rtc.RequestResponse.Reason.OK)
            assert versions == sorted(set(versions)), versions


async def test_permissions_are_enforced() -> None:
    async with running_server() as server:
        token = mint_token("viewer", can_publish=False)
        async with signal_client(server, token) as ws:
            j = await join(ws)
            assert not j.participant.permission.can_publish
            add = rtc.AddTrackRequest(cid="c", type=models.TrackType.AUDIO, source=models.TrackSource.MICROPHONE)
            await send(ws, rtc.SignalRequest(add_track=add))
            denied = (await recv_kind(ws, "request_response")).request_response
            assert denied.reason == rtc.RequestResponse.Reason.NOT_ALLOWED and denied.add_track.cid == "c"
            await send(ws, rtc.SignalRequest(update_metadata=rtc.UpdateParticipantMetadata(metadata="x", request_id=3)))
            denied = (await recv_kind(ws, "request_response")).request_response
            assert denied.reason == rtc.RequestResponse.Reason.NOT_ALLOWED and denied.request_id == 3
        async with signal_client(server, mint_token("cam-only", can_publish_sources=["camera"])) as ws:
            await join(ws)
            mic = rtc.AddTrackRequest(cid="m", type=models.TrackType.AUDIO, source=models.TrackSource.MICROPHONE)
            await send(ws, rtc.SignalRequest(add_track=mic))
            assert (await recv_kind(ws, "request_response")).request_response.reason == rtc.RequestResponse.Reason.NOT_ALLOWED
            cam = rtc.AddTrackRequest(cid="v", type=models.TrackType.VIDEO, source=models.TrackSource.CAMERA)
            await send(ws, rtc.SignalRequest(add_track=cam))
            assert (await recv_kind(ws, "track_published")).track_published.cid == "v"
        assert server.metrics.get(m.SIGNAL_REQUEST_DENIED) == 3


async def test_mute_of_unknown_track_is_refused() -> None:
    async with running_server() as server:
        async with signal_client(server, mint_token("a")) as ws:
            await join(ws)
            await send(ws, rtc.SignalRequest(mute=rtc.MuteTrackRequest(sid="TR_nope", muted=True)))
            response = (await recv_kind(ws, "request_response")).request_response
            assert response.reason == rtc.RequestResponse.Reason.NOT_FOUND and response.mute.sid == "TR_nope"


async def test_subscription_and_track_settings_are_recorded() -> None:
    async with running_server() as server:
        async with signal_client(server, mint_token("a")) as ws:
            j = await join(ws)
            await send(ws, rtc.SignalRequest(subscription=rtc.UpdateSubscription(track_sids=["TR_1"], subscribe=False)))
            await send(ws, rtc.SignalRequest(subscription=rtc.UpdateSubscription(
                participant_tracks=[models.ParticipantTracks(participant_sid="PA_x", track_sids=["TR_2"])], subscribe=True)))
            await send(ws, rtc.SignalRequest(track_setting=rtc.UpdateTrackSettings(track_sids=["TR_2"], disabled=True, width=640, height=360)))
            # A ping round trip orders us after the three requests above.
            await send(ws, rtc.SignalRequest(ping_req=rtc.Ping(timestamp=1)))
            await recv_kind(ws, "pong_resp")
            p = server.registry.rooms["room1"].participants["a"]
            assert p.sid == j.participant.sid
            assert p.subscriptions == {"TR_1": False, "TR_2": True}
            assert p.track_settings["TR_2"].disabled and p.track_settings["TR_2"].width == 640


async def test_media_requests_get_a_clear_refusal_until_media_exists() -> None:
    async with running_server() as server:
        async with signal_client(server, mint_token("a")) as ws:
            await join(ws)
            await send(ws, rtc.SignalRequest(offer=rtc.SessionDescription(type="offer", sdp="v=0\r\n", id=4)))
            refused = (await recv_kind(ws, "request_response")).request_response
            assert refused.reason == rtc.RequestResponse.Reason.UNSUPPORTED_TYPE and refused.request_id == 4
            assert "media" in refused.message
            cand = '{"candidate":"candidate:1 1 udp 1 127.0.0.1 9 typ host","sdpMid":"0","sdpMLineIndex":0}'
            await send(ws, rtc.SignalRequest(trickle=rtc.TrickleRequest(candidateInit=cand, target=rtc.SignalTarget.SUBSCRIBER)))
            refused = (await recv_kind(ws, "request_response")).request_response
            assert refused.trickle.candidateInit == cand and refused.trickle.target == rtc.SignalTarget.SUBSCRIBER


async def test_duplicate_identity_replaces_old_session() -> None:
    async with running_server() as server:
        async with signal_client(server, mint_token("watcher")) as watcher:
            await join(watcher)
            async with signal_client(server, mint_token("dup")) as first:
                j1 = await join(first)
                async with signal_client(server, mint_token("dup")) as second:
                    j2 = await join(second)
                    assert j2.participant.sid != j1.participant.sid
                    leave = (await recv_kind(first, "leave")).leave
                    assert leave.reason == models.DisconnectReason.DUPLICATE_IDENTITY
                    old_gone = False
                    while not old_gone:
                        response = await recv_kind(watcher, "update")
                        old_gone = any(p.sid == j1.participant.sid and p.state == State.DISCONNECTED for p in response.update.participants)
                    room = server.registry.rooms["room1"]
                    assert room.participants["dup"].sid == j2.participant.sid
        assert server.metrics.get(m.SIGNAL_DUPLICATE_IDENTITY) == 1


async def test_shutdown_sends_server_shutdown_leave() -> None:
    async with running_server() as server:
        async with signal_client(server, mint_token("a")) as ws:
            await join(ws)
            server.request_shutdown()
            leave = (await recv_kind(ws, "leave")).leave
            assert leave.reason == models.DisconnectReason.SERVER_SHUTDOWN
            assert leave.action == rtc.LeaveRequest.Action.DISCONNECT


async def test_resume_is_refused_with_reconnect_action() -> None:
    async with running_server() as server:
        async with signal_client(server, mint_token("a"), query="reconnect=1&sid=PA_unknown") as ws:
            first = await recv(ws)
            assert first.WhichOneof("message") == "leave"
            assert first.leave.reason == models.DisconnectReason.STATE_MISMATCH
            assert first.leave.action == rtc.LeaveRequest.Action.RECONNECT
        assert server.metrics.get(m.SIGNAL_RESUME_REFUSED) == 1


async def test_room_closes_after_departure_timeout(mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = AUTOJUMP_WITH_REAL_IO
    async with running_server(make_config(departure_timeout=20)) as server:
        async with signal_client(server, mint_token("a")) as ws:
            j = await join(ws)
        room_sid = j.room.sid
        await trio.sleep(19)
        assert server.registry.rooms["room1"].sid == room_sid
        await trio.sleep(2)
        assert "room1" not in server.registry.rooms
        async with signal_client(server, mint_token("a")) as ws:
            assert (await join(ws)).room.sid != room_sid
        assert server.metrics.get(m.ROOMS_CLOSED) >= 1


async def test_ping_timeout_disconnects_silent_client(mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = AUTOJUMP_WITH_REAL_IO
    async with running_server() as server:
        async with signal_client(server, mint_token("watcher")) as watcher, signal_client(server, mint_token("silent")) as silent:
            await join(watcher)
            await join(silent)
            await send(watcher, rtc.SignalRequest(ping_req=rtc.Ping(timestamp=1)))
            await recv_kind(watcher, "pong_resp")
            # Keep the watcher alive past the timeout; the silent client never sends anything.
            for _ in range(4):
                await trio.sleep(participant_module.PING_TIMEOUT / 3)
                await send(watcher, rtc.SignalRequest(ping_req=rtc.Ping(timestamp=2)))
            leave = (await recv_kind(silent, "leave", timeout=60)).leave
            assert leave.reason == models.DisconnectReason.CONNECTION_TIMEOUT
            info = await next_update_for(watcher, "silent")
            while info.state != State.DISCONNECTED:
                info = await next_update_for(watcher, "silent")
            assert "watcher" in server.registry.rooms["room1"].participants
        assert server.metrics.get(m.SIGNAL_PING_TIMEOUT) == 1


async def test_unused_room_closes_after_empty_timeout(mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = AUTOJUMP_WITH_REAL_IO
    # A room nobody joined (as Twirp CreateRoom will make) uses empty_timeout, not departure_timeout.
    async with running_server(make_config(empty_timeout=300, departure_timeout=20)) as server:
        room = await server.registry.get_or_create("made-by-api")
        await trio.sleep(299)
        assert server.registry.rooms.get("made-by-api") is room
        await trio.sleep(2)
        assert "made-by-api" not in server.registry.rooms and room.closed


async def test_client_that_stops_reading_is_dropped_and_others_are_not_blocked() -> None:
    from livekit.protocol import room as room_pb

    from trio_sfu.signal.grants import ClaimGrants, VideoGrant

    async with running_server() as server:
        async with signal_client(server, mint_token("stuck")) as stuck:
            await join(stuck)
            # `stuck` never reads again: trio-websocket's 1-message queue fills, then TCP backs
            # up, then its outbox. ParticipantUpdates coalesce per participant, so what grows a
            # backlog is traffic that does not: room updates, here from the Server API.
            async with signal_client(server, mint_token("reader")) as reader:
                await join(reader)
                admin = ClaimGrants(api_key="testkey", video=VideoGrant(room_admin=True, room="room1"))
                blob = "x" * 60_000
                with trio.fail_after(30):
                    for i in range(600):
                        await server.room_service.update_room_metadata(
                            admin, room_pb.UpdateRoomMetadataRequest(room="room1", metadata=f"{i}{blob}"))
                        assert (await recv_kind(reader, "room_update")).room_update.room.metadata.startswith(f"{i}x")
                        if "stuck" not in server.registry.rooms["room1"].participants:
                            break
                assert "stuck" not in server.registry.rooms["room1"].participants
                assert "reader" in server.registry.rooms["room1"].participants
                assert server.metrics.get(m.SIGNAL_SEND_OVERFLOW) == 1
                await send(reader, rtc.SignalRequest(ping_req=rtc.Ping(timestamp=9)))
                assert (await recv_kind(reader, "pong_resp")).pong_resp.last_ping_timestamp == 9


async def test_attributes_query_param_merges_into_token_attributes() -> None:
    import base64
    import json

    encoded = base64.urlsafe_b64encode(json.dumps({"role": "host", "k": ""}).encode()).decode()
    async with running_server() as server:
        token = mint_token("a", attributes={"k": "from-token"}, can_update_own_metadata=True)
        async with signal_client(server, token, query=f"attributes={encoded}") as ws:
            j = await join(ws)
        assert dict(j.participant.attributes) == {"k": "from-token", "role": "host"}


async def test_max_participants_refuses_with_429_but_allows_replacing_yourself() -> None:
    async with running_server(make_config(max_participants=1)) as server:
        async with signal_client(server, mint_token("first")) as first:
            await join(first)
            with pytest.raises(trio_websocket.ConnectionRejected) as info:
                async with signal_client(server, mint_token("second")):
                    pass
            assert info.value.status_code == 429
            async with signal_client(server, mint_token("first")) as again:
                await join(again)
        assert server.metrics.get(m.SIGNAL_ROOM_FULL) == 1


async def test_hidden_participant_is_invisible_to_others() -> None:
    async with running_server() as server:
        async with signal_client(server, mint_token("ghost", hidden=True)) as ghost:
            await join(ghost)
            async with signal_client(server, mint_token("visible")) as visible:
                j = await join(visible)
                assert [p.identity for p in j.other_participants] == []
                # The ghost still sees the visible participant arrive.
                assert (await next_update_for(ghost, "visible")).state == State.JOINED


async def test_media_session_plugs_in_through_the_factory() -> None:
    from trio_sfu.signal.media_port import MediaContext, UnavailableMediaSession

    calls: list[tuple] = []

    class EchoMedia(UnavailableMediaSession):
        def __init__(self, context: MediaContext) -> None:
            super().__init__(context)
            calls.append(("created", context.identity, context.participant.sid == context.participant_sid))

        async def handle_publisher_offer(self, offer: rtc.SessionDescription) -> None:
            calls.append(("offer", offer.id))
            self.context.send(rtc.SignalResponse(answer=rtc.SessionDescription(type="answer", sdp="v=0\r\n", id=offer.id)))

        async def handle_subscriber_answer(self, answer: rtc.SessionDescription) -> None:
            calls.append(("answer", answer.id))

        async def handle_trickle(self, candidate_init_json: str, target: int, final: bool) -> None:
            calls.append(("trickle", candidate_init_json, target, final))

    server_config = make_config()
    async with running_server(server_config) as server:
        server.registry.media_factory = EchoMedia
        async with signal_client(server, mint_token("a")) as ws:
            await join(ws)
            await send(ws, rtc.SignalRequest(offer=rtc.SessionDescription(type="offer", sdp="v=0\r\n", id=3)))
            answer = (await recv_kind(ws, "answer")).answer
            assert (answer.type, answer.id) == ("answer", 3)
            await send(ws, rtc.SignalRequest(answer=rtc.SessionDescription(type="answer", sdp="v=0\r\n", id=9)))
            await send(ws, rtc.SignalRequest(trickle=rtc.TrickleRequest(candidateInit="{}", target=rtc.SignalTarget.PUBLISHER, final=True)))
            await send(ws, rtc.SignalRequest(ping_req=rtc.Ping(timestamp=1)))
            await recv_kind(ws, "pong_resp")
    assert calls == [("created", "a", True), ("offer", 3), ("answer", 9), ("trickle", "{}", rtc.SignalTarget.PUBLISHER, True)]
