"""The Server API with JSON bodies (raw httpx, as curl or a non-Python SDK would call it), and
every kind of bad request: each must get Twirp's error JSON with the right status, never a 500
with a trace. Also the Twirp body codec on its own: arbitrary bytes only ever raise `malformed`,
and protobuf/JSON round-trip."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import httpx
import jwt
import pytest
import trio
from budgets import examples
from hypothesis import given, settings, strategies as st
from livekit import api
from livekit.protocol import models, room as room_pb, rtc

from server_fixtures import API_KEY, API_SECRET, http_base, join, mint_token, recv_kind, running_server, send, signal_client
from trio_sfu.server import Server
from trio_sfu.api.twirp import Encoding, TwirpError, TwirpMethod, decode_request, encode_response
from trio_sfu.signal.media_port import UnavailableMediaSession

PATH = "/twirp/livekit.RoomService/"


def admin_token(room: str = "", **grants: Any) -> str:
    if not grants:
        grants = {"room_admin": True, "room": room}
    return api.AccessToken(API_KEY, API_SECRET).with_grants(api.VideoGrants(**grants)).to_jwt()


async def post(
    server: Server,
    method: str,
    body: bytes | dict[str, Any],
    token: str | None,
    content_type: str = "application/json",
    path: str = PATH,
) -> httpx.Response:
    headers = {"content-type": content_type} if content_type else {}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    content = json.dumps(body).encode() if isinstance(body, dict) else body
    async with httpx.AsyncClient(base_url=http_base(server), timeout=10) as client:
        return await client.post(path + method, content=content, headers=headers)


async def ok_json(server: Server, method: str, body: dict[str, Any], token: str) -> dict[str, Any]:
    response = await post(server, method, body, token)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    return response.json()


class DataRecordingMedia(UnavailableMediaSession):
    """Records the server-originated data each participant's media session is given."""

    delivered: dict[str, list[tuple[models.DataPacket, int]]] = {}

    def deliver_data(self, packet: models.DataPacket, kind: int) -> None:
        self.delivered.setdefault(self.context.identity, []).append((packet, kind))


async def test_every_method_with_json_bodies() -> None:
    DataRecordingMedia.delivered = {}
    async with running_server(media_factory=DataRecordingMedia) as server:
        create = admin_token(room_create=True)
        # camelCase and unknown fields in; snake_case with defaults out.
        room = await ok_json(server, "CreateRoom", {"name": "j1", "emptyTimeout": 120, "maxParticipants": 5, "futureField": [1]}, create)
        assert room["name"] == "j1" and room["empty_timeout"] == 120 and room["max_participants"] == 5
        assert room["metadata"] == "" and room["num_participants"] == 0 and room["sid"].startswith("RM_")
        rooms = await ok_json(server, "ListRooms", {"names": ["j1"]}, admin_token(room_list=True))
        assert [r["name"] for r in rooms["rooms"]] == ["j1"]
        # An empty body is an empty request.
        response = await post(server, "ListRooms", b"", admin_token(room_list=True), "application/json; charset=utf-8")
        assert response.status_code == 200 and [r["name"] for r in response.json()["rooms"]] == ["j1"]

        admin = admin_token("j1")
        async with signal_client(server, mint_token("alice", "j1")) as alice, signal_client(server, mint_token("bob", "j1")) as bob:
            await join(alice)
            await join(bob)
            await send(bob, rtc.SignalRequest(add_track=rtc.AddTrackRequest(cid="m", name="m", type=models.TrackType.AUDIO)))
            mic = (await recv_kind(bob, "track_published")).track_published.track

            listed = await ok_json(server, "ListParticipants", {"room": "j1"}, admin)
            assert sorted(p["identity"] for p in listed["participants"]) == ["alice", "bob"]
            bob_info = await ok_json(server, "GetParticipant", {"room": "j1", "identity": "bob"}, admin)
            assert bob_info["tracks"][0]["sid"] == mic.sid and bob_info["state"] == "JOINED"

            muted = await ok_json(server, "MutePublishedTrack", {"room": "j1", "identity": "bob", "track_sid": mic.sid, "muted": True}, admin)
            assert muted["track"]["muted"] is True
            assert (await recv_kind(bob, "mute")).mute.sid == mic.sid

            updated = await ok_json(
                server,
                "UpdateParticipant",
                {"room": "j1", "identity": "alice", "metadata": "hi", "attributes": {"x": "y"}, "permission": {"canSubscribe": True, "canPublish": False}},
                admin,
            )
            assert updated["metadata"] == "hi" and updated["attributes"] == {"x": "y"}
            assert updated["permission"]["can_publish"] is False and updated["permission"]["can_subscribe"] is True

            await ok_json(server, "UpdateSubscriptions", {"room": "j1", "identity": "alice", "trackSids": [mic.sid], "subscribe": True}, admin)
            assert server.registry.rooms["j1"].participants["alice"].subscriptions == {mic.sid: True}

            data = base64.b64encode(b"\x00payload").decode()
            nonce = base64.b64encode(bytes(16)).decode()
            assert await ok_json(server, "SendData", {"room": "j1", "data": data, "kind": "LOSSY", "destinationIdentities": ["alice"], "nonce": nonce}, admin) == {}
            packet, kind = DataRecordingMedia.delivered["alice"][-1]
            assert (packet.user.payload, kind) == (b"\x00payload", models.DataPacket.Kind.LOSSY)
            assert "bob" not in DataRecordingMedia.delivered
            bad_nonce = await post(server, "SendData", {"room": "j1", "data": data, "nonce": base64.b64encode(b"short").decode()}, admin)
            assert bad_nonce.status_code == 400 and bad_nonce.json()["code"] == "invalid_argument"

            meta = await ok_json(server, "UpdateRoomMetadata", {"room": "j1", "metadata": "new"}, admin)
            assert meta["metadata"] == "new" and meta["num_participants"] == 2

            assert await ok_json(server, "RemoveParticipant", {"room": "j1", "identity": "bob"}, admin) == {}
            assert (await recv_kind(bob, "leave")).leave.reason == models.DisconnectReason.PARTICIPANT_REMOVED
            assert await ok_json(server, "DeleteRoom", {"room": "j1"}, create) == {}
            assert (await recv_kind(alice, "leave")).leave.reason == models.DisconnectReason.ROOM_DELETED


def _token(claims: dict[str, Any], secret: str = API_SECRET) -> str:
    now = int(time.time())
    payload = {"iss": API_KEY, "nbf": now - 10, "exp": now + 600, **claims}
    return jwt.encode(payload, secret, algorithm="HS256")


LIST = {"video": {"roomList": True}}


class _LazyToken:
    """A case's token, minted when the case runs: minted at import, it expired before the test ran
    in a long suite (its TTL is ten minutes)."""

    def __init__(self, claims: dict[str, Any], secret: str = API_SECRET) -> None:
        self.claims, self.secret = claims, secret

    def mint(self) -> str:
        return _token(self.claims, self.secret)
BAD_REQUESTS = [
    # (id, method, body, token, content type, path, expected status, expected code)
    ("unknown method", "Nope", b"{}", _LazyToken(LIST), "application/json", PATH, 404, "bad_route"),
    ("unknown service", "ListRooms", b"{}", _LazyToken(LIST), "application/json", "/twirp/livekit.Nope/", 404, "bad_route"),
    ("nested path", "ListRooms/x", b"{}", _LazyToken(LIST), "application/json", PATH, 404, "bad_route"),
    ("text content type", "ListRooms", b"{}", _LazyToken(LIST), "text/plain", PATH, 404, "bad_route"),
    ("no content type", "ListRooms", b"{}", _LazyToken(LIST), "", PATH, 404, "bad_route"),
    ("garbage protobuf", "CreateRoom", b"\xff\xff\xff\xff", _LazyToken({"video": {"roomCreate": True}}), "application/protobuf", PATH, 400, "malformed"),
    ("invalid utf-8 in protobuf string", "CreateRoom", b"\x0a\x02\xff\xfe", _LazyToken({"video": {"roomCreate": True}}), "application/protobuf", PATH, 400, "malformed"),
    ("not json", "ListRooms", b"{names:", _LazyToken(LIST), "application/json", PATH, 400, "malformed"),
    ("json wrong type", "CreateRoom", b'{"name": 5}', _LazyToken({"video": {"roomCreate": True}}), "application/json", PATH, 400, "malformed"),
    ("json not object", "ListRooms", b"[1,2]", _LazyToken(LIST), "application/json", PATH, 400, "malformed"),
    ("json too deep", "ListRooms", b'{"x":' * 5000 + b"1" + b"}" * 5000, _LazyToken(LIST), "application/json", PATH, 400, "malformed"),
    ("json not utf-8", "ListRooms", b'{"names":["\xff"]}', _LazyToken(LIST), "application/json", PATH, 400, "malformed"),
    ("body too large", "ListRooms", b" " * (1024 * 1024 + 10), _LazyToken(LIST), "application/json", PATH, 400, "malformed"),
    ("no token", "ListRooms", b"{}", None, "application/json", PATH, 401, "unauthenticated"),
    ("expired token", "ListRooms", b"{}", _LazyToken({**LIST, "exp": int(time.time()) - 3600, "nbf": int(time.time()) - 7200}), "application/json", PATH, 401, "unauthenticated"),
    ("foreign key", "ListRooms", b"{}", _LazyToken({**LIST, "iss": "otherkey"}), "application/json", PATH, 401, "unauthenticated"),
    ("wrong secret", "ListRooms", b"{}", _LazyToken(LIST, secret="another-secret-0123456789abcdefghijklmn"), "application/json", PATH, 401, "unauthenticated"),
    ("garbage token", "ListRooms", b"{}", "not.a.jwt", "application/json", PATH, 401, "unauthenticated"),
    ("list without roomList", "ListRooms", b"{}", _LazyToken({"video": {"roomJoin": True, "room": "r"}}), "application/json", PATH, 401, "unauthenticated"),
    ("create with roomList", "CreateRoom", b'{"name":"x"}', _LazyToken(LIST), "application/json", PATH, 401, "unauthenticated"),
    ("delete with roomAdmin", "DeleteRoom", b'{"room":"x"}', _LazyToken({"video": {"roomAdmin": True, "room": "x"}}), "application/json", PATH, 401, "unauthenticated"),
    ("admin of another room", "ListParticipants", b'{"room":"b"}', _LazyToken({"video": {"roomAdmin": True, "room": "a"}}), "application/json", PATH, 401, "unauthenticated"),
    ("admin without room", "ListParticipants", b'{"room":"b"}', _LazyToken({"video": {"roomAdmin": True}}), "application/json", PATH, 401, "unauthenticated"),
    ("no video grant", "ListRooms", b"{}", _LazyToken({}), "application/json", PATH, 401, "unauthenticated"),
    ("empty room name", "CreateRoom", b'{"name":""}', _LazyToken({"video": {"roomCreate": True}}), "application/json", PATH, 400, "invalid_argument"),
    ("known but unimplemented", "PerformRpc", b'{"room":"x"}', _LazyToken({"video": {"roomAdmin": True, "room": "x"}}), "application/json", PATH, 501, "unimplemented"),
    ("unknown room", "UpdateRoomMetadata", b'{"room":"x"}', _LazyToken({"video": {"roomAdmin": True, "room": "x"}}), "application/json", PATH, 404, "not_found"),
]


@pytest.mark.parametrize(
    "method,body,token,content_type,path,status,code", [case[1:] for case in BAD_REQUESTS], ids=[case[0] for case in BAD_REQUESTS]
)
async def test_bad_requests_get_twirp_errors(
    method: str, body: bytes, token: "str | _LazyToken | None", content_type: str, path: str, status: int, code: str
) -> None:
    if isinstance(token, _LazyToken):
        token = token.mint()
    async with running_server() as server:
        response = await post(server, method, body, token, content_type, path)
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/json"
        error = response.json()
        assert error["code"] == code and isinstance(error["msg"], str) and error["msg"]
        assert "Traceback" not in response.text and API_SECRET not in response.text
        assert not server.registry.rooms


async def test_non_post_and_bearer_prefix_rules() -> None:
    async with running_server() as server:
        async with httpx.AsyncClient(base_url=http_base(server), timeout=10) as client:
            get = await client.get(PATH + "ListRooms", headers={"authorization": f"Bearer {_token(LIST)}"})
            assert get.status_code == 404 and get.json()["code"] == "bad_route"
            no_bearer = await client.post(
                PATH + "ListRooms", content=b"{}", headers={"content-type": "application/json", "authorization": _token(LIST)}
            )
            assert no_bearer.status_code == 401 and no_bearer.json()["code"] == "unauthenticated"


async def test_handler_crash_is_internal_without_trace() -> None:
    async def boom(grants: Any, request: Any) -> Any:
        raise KeyError("secret internals")

    async with running_server() as server:
        server.twirp.register("test.Crash", {"Boom": TwirpMethod(room_pb.ListRoomsRequest, boom)})
        response = await post(server, "Boom", b"{}", _token(LIST), path="/twirp/test.Crash/")
        assert response.status_code == 500 and response.json() == {"code": "internal", "msg": "internal server error"}
        assert "secret internals" not in response.text


async def test_livekit_api_client_sees_error_codes() -> None:
    # The SDK's error parsing on our JSON errors: code, message and status reach the caller.
    async with running_server() as server:

        def run() -> api.TwirpError:
            async def main() -> api.TwirpError:
                async with api.LiveKitAPI(http_base(server), API_KEY, "wrong-secret-0123456789abcdefghijklmnopq") as lk:
                    try:
                        await lk.room.list_rooms(api.ListRoomsRequest())
                    except api.TwirpError as exc:
                        return exc
                raise AssertionError("a wrong secret was accepted")

            return asyncio.run(main())

        error = await trio.to_thread.run_sync(run)
        assert (error.code, error.status) == ("unauthenticated", 401)
        assert "signature" in error.message


# ---- the codec on its own ------------------------------------------------------------------

REQUEST_TYPES = [
    room_pb.CreateRoomRequest,
    room_pb.SendDataRequest,
    room_pb.UpdateParticipantRequest,
    room_pb.UpdateSubscriptionsRequest,
    room_pb.ListRoomsRequest,
]


@settings(max_examples=examples(3), deadline=None)
@given(data=st.binary(max_size=300), type_index=st.integers(0, len(REQUEST_TYPES) - 1), as_json=st.booleans())
def test_arbitrary_bodies_only_raise_malformed(data: bytes, type_index: int, as_json: bool) -> None:
    encoding = Encoding.JSON if as_json else Encoding.PROTOBUF
    try:
        decode_request(encoding, data, REQUEST_TYPES[type_index])
    except TwirpError as exc:
        assert exc.code == "malformed" and exc.status == 400


json_text = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(["name", "room", "emptyTimeout", "permission", "x"]), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=examples(3), deadline=None)
@given(value=json_text, type_index=st.integers(0, len(REQUEST_TYPES) - 1))
def test_arbitrary_json_documents_only_raise_malformed(value: Any, type_index: int) -> None:
    try:
        decode_request(Encoding.JSON, json.dumps(value).encode(), REQUEST_TYPES[type_index])
    except TwirpError as exc:
        assert exc.code == "malformed"


@settings(max_examples=examples(2), deadline=None)
@given(
    name=st.text(max_size=40),
    metadata=st.text(max_size=40),
    empty_timeout=st.integers(0, 2**32 - 1),
    max_participants=st.integers(0, 2**32 - 1),
    tags=st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
)
def test_create_room_request_round_trips_in_both_encodings(
    name: str, metadata: str, empty_timeout: int, max_participants: int, tags: dict[str, str]
) -> None:
    request = room_pb.CreateRoomRequest(
        name=name, metadata=metadata, empty_timeout=empty_timeout, max_participants=max_participants, tags=tags
    )
    for encoding in Encoding:
        assert decode_request(encoding, encode_response(encoding, request), room_pb.CreateRoomRequest) == request
