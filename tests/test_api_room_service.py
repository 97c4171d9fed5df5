"""The Server API driven by livekit-api's own `LiveKitAPI` client (aiohttp, protobuf bodies, its
own tokens), against the in-process server, while signal clients (trio-websocket +
livekit-protocol) watch what each call does to live sessions.

livekit-api is asyncio-only; each call runs `asyncio.run` in a worker thread so the Trio loop
(server and signal clients) keeps running meanwhile.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

import pytest
import trio
import trio_websocket
from livekit import api
from livekit.protocol import models, rtc

from server_fixtures import (
    API_KEY,
    API_SECRET,
    http_base,
    join,
    make_config,
    mint_token,
    recv_kind,
    running_server,
    send,
    signal_client,
)
from trio_sfu.server import Server
from trio_sfu.signal.media_port import UnavailableMediaSession

State = models.ParticipantInfo.State
Reason = models.DisconnectReason


async def call(server: Server, fn: Callable[[api.LiveKitAPI], Awaitable[Any]]) -> Any:
    """Run `fn(LiveKitAPI)` on a fresh asyncio loop in a thread; exceptions propagate."""

    def run() -> Any:
        async def main() -> Any:
            async with api.LiveKitAPI(http_base(server), API_KEY, API_SECRET) as lkapi:
                return await fn(lkapi)

        return asyncio.run(main())

    return await trio.to_thread.run_sync(run)


async def update_for(ws: trio_websocket.WebSocketConnection, identity: str) -> models.ParticipantInfo:
    while True:
        response = await recv_kind(ws, "update")
        for info in response.update.participants:
            if info.identity == identity:
                return info


async def update_until(
    ws: trio_websocket.WebSocketConnection, identity: str, condition: Callable[[models.ParticipantInfo], bool]
) -> models.ParticipantInfo:
    """The first update about `identity` that satisfies `condition` (earlier ones skipped)."""
    while True:
        info = await update_for(ws, identity)
        if condition(info):
            return info


async def publish(ws: trio_websocket.WebSocketConnection, cid: str, kind: int = models.TrackType.AUDIO) -> models.TrackInfo:
    source = models.TrackSource.MICROPHONE if kind == models.TrackType.AUDIO else models.TrackSource.CAMERA
    await send(ws, rtc.SignalRequest(add_track=rtc.AddTrackRequest(cid=cid, name=cid, type=kind, source=source)))
    return (await recv_kind(ws, "track_published")).track_published.track


async def expect_leave(ws: trio_websocket.WebSocketConnection) -> rtc.LeaveRequest:
    leave = (await recv_kind(ws, "leave")).leave
    with trio.fail_after(5):
        with pytest.raises(trio_websocket.ConnectionClosed):
            while True:
                await ws.get_message()
    return leave


async def test_rooms_create_list_metadata_delete() -> None:
    async with running_server(make_config(auto_create=False)) as server:
        room = await call(
            server,
            lambda lk: lk.room.create_room(
                api.CreateRoomRequest(name="r1", empty_timeout=600, departure_timeout=7, max_participants=2, metadata="m0")
            ),
        )
        assert room.name == "r1" and room.sid.startswith("RM_")
        assert (room.empty_timeout, room.departure_timeout, room.max_participants, room.metadata) == (600, 7, 2, "m0")
        # Creating it again returns the same room.
        again = await call(server, lambda lk: lk.room.create_room(api.CreateRoomRequest(name="r1")))
        assert again.sid == room.sid
        await call(server, lambda lk: lk.room.create_room(api.CreateRoomRequest(name="r2")))

        listed = await call(server, lambda lk: lk.room.list_rooms(api.ListRoomsRequest()))
        assert sorted(r.name for r in listed.rooms) == ["r1", "r2"]
        only = await call(server, lambda lk: lk.room.list_rooms(api.ListRoomsRequest(names=["r2", "nope"])))
        assert [r.name for r in only.rooms] == ["r2"]

        # auto_create is off, so joining works only because CreateRoom made the room.
        async with signal_client(server, mint_token("alice", "r1")) as alice:
            joined = await join(alice)
            assert joined.room.sid == room.sid and joined.room.metadata == "m0"
            async with signal_client(server, mint_token("bob", "r1")) as bob:
                await join(bob)
                # max_participants=2 from CreateRoom is enforced.
                with pytest.raises(trio_websocket.HandshakeError) as full:
                    async with signal_client(server, mint_token("carol", "r1")):
                        pass
                assert getattr(full.value, "status_code", None) == 429

                updated = await call(
                    server, lambda lk: lk.room.update_room_metadata(api.UpdateRoomMetadataRequest(room="r1", metadata="m1"))
                )
                assert updated.metadata == "m1"
                for ws in (alice, bob):
                    assert (await recv_kind(ws, "room_update")).room_update.room.metadata == "m1"
                listed = await call(server, lambda lk: lk.room.list_rooms(api.ListRoomsRequest(names=["r1"])))
                assert listed.rooms[0].num_participants == 2 and listed.rooms[0].metadata == "m1"

                await call(server, lambda lk: lk.room.delete_room(api.DeleteRoomRequest(room="r1")))
                for ws in (alice, bob):
                    assert (await expect_leave(ws)).reason == Reason.ROOM_DELETED
        listed = await call(server, lambda lk: lk.room.list_rooms(api.ListRoomsRequest()))
        assert [r.name for r in listed.rooms] == ["r2"]
        with pytest.raises(api.TwirpError) as missing:
            await call(server, lambda lk: lk.room.delete_room(api.DeleteRoomRequest(room="r1")))
        assert (missing.value.code, missing.value.status) == ("not_found", 404)


async def test_departure_timeout_from_create_room_closes_the_room() -> None:
    async with running_server() as server:
        await call(server, lambda lk: lk.room.create_room(api.CreateRoomRequest(name="short", departure_timeout=1)))
        async with signal_client(server, mint_token("alice", "short")) as alice:
            await join(alice)
        room = server.registry.rooms["short"]
        with trio.fail_after(4):
            await room.finished.wait()
        assert "short" not in server.registry.rooms


async def test_participants_list_get_remove() -> None:
    async with running_server() as server:
        async with signal_client(server, mint_token("alice")) as alice, signal_client(server, mint_token("bob")) as bob:
            await join(alice)
            jb = await join(bob)
            listed = await call(server, lambda lk: lk.room.list_participants(api.ListParticipantsRequest(room="room1")))
            assert sorted(p.identity for p in listed.participants) == ["alice", "bob"]
            got = await call(server, lambda lk: lk.room.get_participant(api.RoomParticipantIdentity(room="room1", identity="bob")))
            assert got.sid == jb.participant.sid and got.state == State.JOINED

            await call(server, lambda lk: lk.room.remove_participant(api.RoomParticipantIdentity(room="room1", identity="bob")))
            leave = await expect_leave(bob)
            assert leave.reason == Reason.PARTICIPANT_REMOVED and leave.action == rtc.LeaveRequest.Action.DISCONNECT
            gone = await update_until(alice, "bob", lambda i: i.state == State.DISCONNECTED)
            assert gone.disconnect_reason == Reason.PARTICIPANT_REMOVED
            with pytest.raises(api.TwirpError) as missing:
                await call(server, lambda lk: lk.room.get_participant(api.RoomParticipantIdentity(room="room1", identity="bob")))
            assert (missing.value.code, missing.value.message) == ("not_found", "participant does not exist")
            with pytest.raises(api.TwirpError) as no_room:
                await call(server, lambda lk: lk.room.list_participants(api.ListParticipantsRequest(room="nowhere")))
            assert (no_room.value.code, no_room.value.message) == ("not_found", "requested room does not exist")


@pytest.mark.parametrize("remote_unmute", [False, True])
async def test_mute_published_track_reaches_publisher_and_others(remote_unmute: bool) -> None:
    config = make_config()
    config.room.enable_remote_unmute = remote_unmute
    muted_hook: list[tuple[str, bool]] = []

    class MuteRecordingMedia(UnavailableMediaSession):
        """The media session is told about every mute change of its participant's tracks."""

        def track_muted(self, track: models.TrackInfo) -> None:
            if self.context.identity == "bob":
                muted_hook.append((track.sid, track.muted))

    async with running_server(config, media_factory=MuteRecordingMedia) as server:
        async with signal_client(server, mint_token("alice")) as alice, signal_client(server, mint_token("bob")) as bob:
            await join(alice)
            await join(bob)
            mic = await publish(bob, "mic")
            info = await update_for(alice, "bob")
            while not info.tracks:
                info = await update_for(alice, "bob")

            response = await call(
                server,
                lambda lk: lk.room.mute_published_track(api.MuteRoomTrackRequest(room="room1", identity="bob", track_sid=mic.sid, muted=True)),
            )
            assert response.track.sid == mic.sid and response.track.muted
            told = (await recv_kind(bob, "mute")).mute
            assert (told.sid, told.muted) == (mic.sid, True)
            seen = await update_until(alice, "bob", lambda i: any(t.muted for t in i.tracks))
            assert [(t.sid, t.muted) for t in seen.tracks] == [(mic.sid, True)]
            assert muted_hook == [(mic.sid, True)]

            unmute = api.MuteRoomTrackRequest(room="room1", identity="bob", track_sid=mic.sid, muted=False)
            if remote_unmute:
                response = await call(server, lambda lk: lk.room.mute_published_track(unmute))
                assert not response.track.muted
                told = (await recv_kind(bob, "mute")).mute
                assert (told.sid, told.muted) == (mic.sid, False)
                seen = await update_for(alice, "bob")
                assert [(t.sid, t.muted) for t in seen.tracks] == [(mic.sid, False)]
            else:
                with pytest.raises(api.TwirpError) as refused:
                    await call(server, lambda lk: lk.room.mute_published_track(unmute))
                assert (refused.value.code, refused.value.status) == ("failed_precondition", 412)
                assert server.registry.rooms["room1"].participants["bob"].tracks[mic.sid].muted

            with pytest.raises(api.TwirpError) as no_track:
                await call(
                    server,
                    lambda lk: lk.room.mute_published_track(api.MuteRoomTrackRequest(room="room1", identity="bob", track_sid="TR_nope", muted=True)),
                )
            assert no_track.value.code == "not_found"


async def test_update_participant_metadata_name_attributes_reach_everyone() -> None:
    async with running_server() as server:
        async with signal_client(server, mint_token("alice")) as alice, signal_client(server, mint_token("bob", attributes={"a": "1", "b": "2"})) as bob:
            await join(alice)
            jb = await join(bob)
            result = await call(
                server,
                lambda lk: lk.room.update_participant(
                    api.UpdateParticipantRequest(room="room1", identity="bob", metadata="meta", name="Bobby", attributes={"b": "", "c": "3"})
                ),
            )
            assert (result.metadata, result.name, dict(result.attributes)) == ("meta", "Bobby", {"a": "1", "c": "3"})
            assert result.version > jb.participant.version
            for ws in (alice, bob):
                info = await update_until(ws, "bob", lambda i: i.version == result.version)
                assert (info.metadata, info.name, dict(info.attributes)) == ("meta", "Bobby", {"a": "1", "c": "3"})


async def test_revoking_publish_unpublishes_and_blocks_new_tracks() -> None:
    unpublished_hook: list[str] = []

    class UnpublishRecordingMedia(UnavailableMediaSession):
        """The media session hears of each track the server unpublishes for its participant."""

        def track_unpublished(self, track: models.TrackInfo) -> None:
            if self.context.identity == "bob":
                unpublished_hook.append(track.sid)

    async with running_server(media_factory=UnpublishRecordingMedia) as server:
        async with signal_client(server, mint_token("alice")) as alice, signal_client(server, mint_token("bob")) as bob:
            await join(alice)
            await join(bob)
            mic = await publish(bob, "mic")
            cam = await publish(bob, "cam", models.TrackType.VIDEO)
            info = await update_for(alice, "bob")
            while len(info.tracks) < 2:
                info = await update_for(alice, "bob")

            # Only microphones from now on: the camera goes, the microphone stays.
            perm = models.ParticipantPermission(
                can_publish=True, can_subscribe=True, can_publish_data=True, can_publish_sources=[models.TrackSource.MICROPHONE]
            )
            await call(server, lambda lk: lk.room.update_participant(api.UpdateParticipantRequest(room="room1", identity="bob", permission=perm)))
            assert (await recv_kind(bob, "track_unpublished")).track_unpublished.track_sid == cam.sid
            info = await update_for(alice, "bob")
            while len(info.tracks) != 1:
                info = await update_for(alice, "bob")
            assert [t.sid for t in info.tracks] == [mic.sid]

            perm = models.ParticipantPermission(can_publish=False, can_subscribe=True)
            result = await call(server, lambda lk: lk.room.update_participant(api.UpdateParticipantRequest(room="room1", identity="bob", permission=perm)))
            assert not result.permission.can_publish and list(result.tracks) == []
            assert (await recv_kind(bob, "track_unpublished")).track_unpublished.track_sid == mic.sid
            info = await update_for(alice, "bob")
            while info.tracks or info.permission.can_publish:
                info = await update_for(alice, "bob")
            assert unpublished_hook == [cam.sid, mic.sid]
            # Bob's own view carries the new permission ...
            own = await update_for(bob, "bob")
            while own.permission.can_publish:
                own = await update_for(bob, "bob")
            # ... and the server enforces it.
            await send(bob, rtc.SignalRequest(add_track=rtc.AddTrackRequest(cid="again", name="m", type=models.TrackType.AUDIO)))
            refused = (await recv_kind(bob, "request_response")).request_response
            assert refused.reason == rtc.RequestResponse.Reason.NOT_ALLOWED


async def test_revoking_subscribe_drops_subscriptions_and_hidden_disappears() -> None:
    async with running_server() as server:
        async with signal_client(server, mint_token("alice")) as alice, signal_client(server, mint_token("bob")) as bob:
            await join(alice)
            await join(bob)
            mic = await publish(alice, "mic")
            await call(
                server,
                lambda lk: lk.room.update_subscriptions(api.UpdateSubscriptionsRequest(room="room1", identity="bob", track_sids=[mic.sid], subscribe=True)),
            )
            bob_p = server.registry.rooms["room1"].participants["bob"]
            assert bob_p.subscriptions == {mic.sid: True}

            perm = models.ParticipantPermission(can_publish=True, can_subscribe=False, hidden=True)
            await call(server, lambda lk: lk.room.update_participant(api.UpdateParticipantRequest(room="room1", identity="bob", permission=perm)))
            assert bob_p.subscriptions == {mic.sid: False}
            assert not bob_p.grants.video.may_subscribe
            await update_until(alice, "bob", lambda i: i.state == State.DISCONNECTED)
            own = await update_until(bob, "bob", lambda i: i.permission.hidden)
            assert not own.permission.can_subscribe
            # Hidden, bob's later changes stay invisible to alice; bob still sees them.
            await call(server, lambda lk: lk.room.update_participant(api.UpdateParticipantRequest(room="room1", identity="bob", metadata="secret")))
            await update_until(bob, "bob", lambda i: i.metadata == "secret")
            await call(server, lambda lk: lk.room.update_room_metadata(api.UpdateRoomMetadataRequest(room="room1", metadata="fence")))
            while True:
                response = await _next_message(alice)
                kind = response.WhichOneof("message")
                if kind == "room_update":
                    break
                assert kind != "update" or all(p.identity != "bob" for p in response.update.participants)
            listed = await call(server, lambda lk: lk.room.list_participants(api.ListParticipantsRequest(room="room1")))
            assert sorted(p.identity for p in listed.participants) == ["alice", "bob"]


async def _next_message(ws: trio_websocket.WebSocketConnection) -> rtc.SignalResponse:
    with trio.fail_after(5):
        data = await ws.get_message()
    response = rtc.SignalResponse()
    response.ParseFromString(data)
    return response


async def test_update_subscriptions_acts_as_the_participant() -> None:
    async with running_server() as server:
        async with signal_client(server, mint_token("alice")) as alice, signal_client(server, mint_token("bob")) as bob:
            await join(alice)
            await join(bob)
            mic = await publish(alice, "mic")
            cam = await publish(alice, "cam", models.TrackType.VIDEO)
            ja = server.registry.rooms["room1"].participants["alice"]
            await call(
                server,
                lambda lk: lk.room.update_subscriptions(
                    api.UpdateSubscriptionsRequest(
                        room="room1",
                        identity="bob",
                        subscribe=False,
                        participant_tracks=[models.ParticipantTracks(participant_sid=ja.sid, track_sids=[mic.sid, cam.sid])],
                    )
                ),
            )
            assert server.registry.rooms["room1"].participants["bob"].subscriptions == {mic.sid: False, cam.sid: False}
            with pytest.raises(api.TwirpError) as missing:
                await call(
                    server,
                    lambda lk: lk.room.update_subscriptions(api.UpdateSubscriptionsRequest(room="room1", identity="nobody", track_sids=[mic.sid])),
                )
            assert missing.value.code == "not_found"


async def test_send_data_reaches_the_named_destinations_or_everyone() -> None:
    delivered: dict[str, list[tuple[models.DataPacket, int]]] = {"alice": [], "bob": []}

    class DataRecordingMedia(UnavailableMediaSession):
        """Server-originated data reaches the participant's media session (its data channels)."""

        def deliver_data(self, packet: models.DataPacket, kind: int) -> None:
            delivered[self.context.identity].append((packet, kind))

    async with running_server(media_factory=DataRecordingMedia) as server:
        async with signal_client(server, mint_token("alice")) as alice, signal_client(server, mint_token("bob")) as bob:
            await join(alice)
            await join(bob)
            await call(
                server,
                lambda lk: lk.room.send_data(
                    api.SendDataRequest(room="room1", data=b"hello", kind=models.DataPacket.Kind.RELIABLE, topic="chat")
                ),
            )
            assert [p.user.payload for p, _ in delivered["alice"]] == [b"hello"]
            # livekit-api always sets a fresh 16-byte nonce; it is passed through.
            first = delivered["alice"][0][0]
            assert first.user.topic == "chat" and len(first.user.nonce) == 16
            assert [(p.user.payload, p.user.nonce, k) for p, k in delivered["bob"]] == [
                (b"hello", first.user.nonce, models.DataPacket.Kind.RELIABLE)
            ]

            await call(
                server,
                lambda lk: lk.room.send_data(
                    api.SendDataRequest(room="room1", data=b"psst", kind=models.DataPacket.Kind.LOSSY, destination_identities=["bob"])
                ),
            )
            assert len(delivered["alice"]) == 1
            packet, kind = delivered["bob"][-1]
            assert (packet.user.payload, kind, list(packet.destination_identities)) == (b"psst", models.DataPacket.Kind.LOSSY, ["bob"])


async def test_hidden_participant_updating_own_metadata_stays_hidden() -> None:
    # Regression: broadcast_participant(include_self=True) used to send a hidden participant's
    # info to everyone.
    async with running_server() as server:
        async with signal_client(server, mint_token("alice")) as alice:
            await join(alice)
            async with signal_client(server, mint_token("ghost", hidden=True, can_update_own_metadata=True)) as ghost:
                await join(ghost)
                await send(ghost, rtc.SignalRequest(update_metadata=rtc.UpdateParticipantMetadata(metadata="boo", request_id=7)))
                assert (await update_for(ghost, "ghost")).metadata == "boo"
                await call(server, lambda lk: lk.room.update_room_metadata(api.UpdateRoomMetadataRequest(room="room1", metadata="fence")))
                while True:
                    response = await _next_message(alice)
                    kind = response.WhichOneof("message")
                    if kind == "room_update":
                        break
                    assert kind != "update" or all(p.identity != "ghost" for p in response.update.participants)
