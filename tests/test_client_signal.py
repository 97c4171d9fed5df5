"""Our LiveKit client against the in-process server, at the signalling level.

The server is the project's own (``running_server``, which also proves the
server leaks no task); tokens come from livekit-api. What is checked is what
the server and a second, independent observer (a raw trio-websocket signal
client from ``server_fixtures``) see of our client: the join, the query
parameters and token placement, ``add_track`` → ``track_published`` with the
AddTrackRequest we promised (layers, simulcast codec), ping_req → pong_resp,
the publisher offer reaching the server, and a clean leave with no task left.
"""

from __future__ import annotations

import json

import pytest
import trio
from aioice.candidate import Candidate as IceCandidate
from livekit.protocol import models, rtc

from server_fixtures import all_tasks, join, mint_token, recv_kind, running_server, signal_client
from sdp.parser import parse as parse_sdp
from trio_sfu.client import ClientError, JoinError, LiveKitClient, signal_url
from trio_sfu.signal.media_port import UnavailableMediaSession


def test_signal_url_appends_rtc_and_keeps_prefix() -> None:
    url = signal_url("https://example.com/prefix/", access_token="t.k.n", auto_subscribe=False)
    assert url.startswith("wss://example.com/prefix/rtc?")
    assert "access_token=t.k.n" in url and "auto_subscribe=0" in url and "protocol=17" in url
    assert signal_url("ws://h:1").startswith("ws://h:1/rtc?")
    with pytest.raises(ValueError):
        signal_url("ftp://h")


@pytest.mark.parametrize("token_in_query", [False, True], ids=["bearer-header", "access-token-query"])
async def test_join_publish_leave_seen_by_another_participant(token_in_query: bool) -> None:
    before = all_tasks()
    async with running_server() as server:
        async with signal_client(server, mint_token("observer")) as observer:
            await join(observer)
            url = f"ws://127.0.0.1:{server.port}"
            async with LiveKitClient.connect(url, mint_token("ours"), token_in_query=token_in_query) as client:
                assert client.participant_sid.startswith("PA_")
                assert client.identity == "ours" and client.room_name == "room1"
                assert set(client.remote_participants) and all(
                    p.identity == "observer" for p in client.remote_participants.values())
                room = server.registry.rooms["room1"]
                ours = room.participants["ours"]
                assert ours.sid == client.participant_sid
                assert ours.options.protocol == 17

                audio = await client.publish_audio("mic")
                video = await client.publish_video("cam", width=640, height=360, simulcast=True)
                assert audio.sid.startswith("TR_A") and video.sid.startswith("TR_V")
                # The server filed the tracks under the cids we sent.
                assert ours.track_by_cid == {audio.cid: audio.sid, video.cid: video.sid}
                video_info = ours.tracks[video.sid]
                assert [layer.rid for layer in video_info.layers] == ["q", "h", "f"]
                assert [layer.quality for layer in video_info.layers] == [
                    models.VideoQuality.LOW, models.VideoQuality.MEDIUM, models.VideoQuality.HIGH]
                assert video_info.layers[2].width == 640 and video_info.source == models.TrackSource.CAMERA
                assert video_info.codecs[0].mime_type.lower() == "video/vp8"

                # The observer learns of both tracks through ParticipantUpdate.
                seen: set[str] = set()
                with trio.fail_after(5):
                    while seen != {audio.sid, video.sid}:
                        update = await recv_kind(observer, "update")
                        for info in update.update.participants:
                            if info.sid == client.participant_sid:
                                seen = {t.sid for t in info.tracks}
                # The client keeps the observer's info current too.
                assert any(p.identity == "observer" for p in client.remote_participants.values())
            # Leaving: the observer sees us disconnect, the room forgets us.
            with trio.fail_after(5):
                while True:
                    update = await recv_kind(observer, "update")
                    states = {i.sid: i.state for i in update.update.participants}
                    if states.get(client.participant_sid) == models.ParticipantInfo.State.DISCONNECTED:
                        break
            assert client.leave_reason == "client initiated"
            with trio.fail_after(1):
                assert [t async for t in client.tracks()] == []  # the iterator ends once we left
            assert "ours" not in server.registry.rooms["room1"].participants
    leaked = {t for t in all_tasks() - before if t is not trio.lowlevel.current_task()}
    assert not leaked, [t.name for t in leaked]


async def test_publisher_offer_reaches_the_server_and_parses() -> None:
    """The offer our client builds goes out with the ids it promised; with a media-less server
    (the placeholder refuses) the client records the refusal instead of hanging."""
    offers: list[rtc.SessionDescription] = []
    trickles: list[tuple[str, int, bool]] = []

    class RecordingMedia(UnavailableMediaSession):

        async def handle_publisher_offer(self, offer: rtc.SessionDescription) -> None:
            offers.append(offer)
            self.context.send(rtc.SignalResponse(request_response=rtc.RequestResponse(
                request_id=offer.id, reason=rtc.RequestResponse.Reason.UNSUPPORTED_TYPE, message="no media")))

        async def handle_subscriber_answer(self, answer: rtc.SessionDescription) -> None:
            pass

        async def handle_trickle(self, candidate_init_json: str, target: int, final: bool) -> None:
            trickles.append((candidate_init_json, target, final))

    from server_fixtures import make_config

    # server_fixtures.running_server: shutdown, then its leak check (tasks, sockets, rooms, sources).
    async with running_server(make_config(), media_factory=RecordingMedia) as server:
        async with LiveKitClient.connect(server.url, mint_token("pub")) as client:
            video = await client.publish_video(simulcast=True)
            with trio.fail_after(5):
                while not client.errors:
                    await trio.sleep(0.01)
            assert any("no media" in e for e in client.errors)
            (offer,) = offers
            assert offer.type == "offer" and offer.id == 1
            sdp = parse_sdp(offer.sdp)
            (section,) = sdp.media
            assert section.kind == "video" and section.mid == video.mid
            assert section.msid is not None and section.msid.track_id == video.cid
            assert [r.rid for r in section.rids] == ["q", "h", "f"]
            assert section.simulcast is not None and section.simulcast.send_rids() == ["q", "h", "f"]
            assert sdp.effective_setup(section).value == "actpass"
            assert sdp.effective_fingerprints(section)[0].value == client.publisher_pc.certificate.fingerprint()
            assert not video.ready and not video.send_rtp(b"x", timestamp=0)
            # Our host candidate was trickled for the publisher PC, as a browser does, in the JSON shape
            # of an RTCIceCandidateInit that aioice can read.
            with trio.fail_after(5):
                while not trickles:
                    await trio.sleep(0.01)
            ((init_json, target, final),) = trickles
            init = json.loads(init_json)
            assert target == rtc.SignalTarget.PUBLISHER and not final
            assert init["sdpMid"] == video.mid and init["sdpMLineIndex"] == 0
            assert init["usernameFragment"] == client.publisher_pc.local.ice_ufrag
            candidate = IceCandidate.from_sdp(init["candidate"].removeprefix("candidate:"))
            assert (candidate.host, candidate.port) == (client.publisher_pc.host, client.publisher_pc.port)
            assert candidate.type == "host" and candidate.transport == "udp"


async def test_ping_loop_gets_pong_resp() -> None:
    async with running_server() as server:
        async with LiveKitClient.connect(server.url, mint_token("pinger"), ping_interval=0.05) as client:
            assert client.join.ping_interval == 5  # what the server asked for; overridden here
            with trio.fail_after(5):
                while client.pongs < 3:
                    await trio.sleep(0.01)
            assert client.rtt_ms is not None and 0 <= client.rtt_ms < 1000


async def test_join_refused_with_bad_token_and_publish_denied() -> None:
    async with running_server() as server:
        with pytest.raises(JoinError) as info:
            async with LiveKitClient.connect(server.url, mint_token("x", secret="wrong-secret-0123456789abcdefghijkl")):
                pass
        assert info.value.status_code == 401
        async with LiveKitClient.connect(server.url, mint_token("viewer", can_publish=False)) as client:
            with pytest.raises(ClientError, match="refused"):
                await client.publish_audio()
            assert client.publications == [] and client.publisher_pc is None


async def test_concurrent_joins_into_a_new_room_all_succeed() -> None:
    """A load test's burst: eight clients join a room that does not exist yet, at once.
    (Regression: a join arriving while the first one was still starting the room got
    HTTP 503 "room is closing".)"""
    async with running_server() as server:
        sids: list[str] = []

        async def one(index: int) -> None:
            async with LiveKitClient.connect(server.url, mint_token(f"p{index}", room="fresh")) as client:
                sids.append(client.participant_sid)
                with trio.fail_after(5):
                    while len(sids) < 8:
                        await trio.sleep(0.01)

        async with trio.open_nursery() as nursery:
            for index in range(8):
                nursery.start_soon(one, index)
        assert len(set(sids)) == 8 and all(s.startswith("PA_") for s in sids)
