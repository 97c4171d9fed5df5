"""`/rtc/v1` signalling against the in-process server with its media stack, spoken to with
trio-websocket and livekit-protocol messages and the join offers the real clients sent
(tests/fixtures/sdp). What the clients rely on: the JoinResponse first and not subscriber
primary, the answer to the join's offer echoing its id (our candidates trickled for the
publisher PC), never a server offer (there is no subscriber PC), and a MediaSectionsRequirement
that makes the client offer again when the server has something new to send."""

from __future__ import annotations

import base64
import gzip
from pathlib import Path
from urllib.parse import quote

import pytest
import trio
import trio_websocket
from livekit.protocol import models, rtc

from sdp.model import Direction
from sdp.parser import parse
from trio_sfu import metrics as m
from server_fixtures import media_server, mint_token, recv, recv_kind, send

SDP_DIR = Path(__file__).parent / "fixtures" / "sdp"


def v1_url(server, join: rtc.JoinRequest) -> str:
    wrapped = rtc.WrappedJoinRequest(compression=rtc.WrappedJoinRequest.Compression.GZIP,
                                     join_request=gzip.compress(join.SerializeToString()))
    return f"ws://127.0.0.1:{server.port}/rtc/v1?join_request={quote(base64.urlsafe_b64encode(wrapped.SerializeToString()).decode())}"


def join_request(offer_file: str, offer_id: int = 1) -> rtc.JoinRequest:
    return rtc.JoinRequest(
        client_info=models.ClientInfo(sdk=models.ClientInfo.SDK.PYTHON, version="1.2.0", protocol=18),
        connection_settings=rtc.ConnectionSettings(auto_subscribe=True),
        publisher_offer=rtc.SessionDescription(type="offer", sdp=(SDP_DIR / offer_file).read_bytes().decode(),
                                               id=offer_id),
    )


async def open_v1(server, identity: str, join: rtc.JoinRequest):
    headers = [(b"authorization", f"Bearer {mint_token(identity)}".encode())]
    return trio_websocket.open_websocket_url(v1_url(server, join), extra_headers=headers, connect_timeout=5,
                                             disconnect_timeout=2)


@pytest.mark.parametrize("offer_file", ["python_sdk_v1_join_offer.sdp", "chromium_v1_join_offer.sdp"])
async def test_v1_join_is_answered_on_the_one_peer_connection(offer_file: str) -> None:
    async with media_server() as server:
        async with await open_v1(server, "alice", join_request(offer_file, offer_id=7)) as ws:
            first = await recv(ws)
            assert first.WhichOneof("message") == "join", first
            assert first.join.subscriber_primary is False and first.join.participant.sid.startswith("PA_")
            answer = await recv_kind(ws, "answer")
            assert answer.answer.type == "answer" and answer.answer.id == 7
            offer = parse((SDP_DIR / offer_file).read_bytes().decode())
            sdp = parse(answer.answer.sdp)
            assert [m.mid for m in sdp.media] == [m.mid for m in offer.media]
            # Nothing to send yet: the receive lines are inactive, the data channel accepted.
            assert [m.direction for m in sdp.media[:6]] == [Direction.INACTIVE] * 6
            assert sdp.media[6].kind == "application" and not sdp.media[6].rejected
            assert dict(answer.answer.mid_to_track_id) == {}
            trickle = await recv_kind(ws, "trickle")
            assert trickle.trickle.target == rtc.SignalTarget.PUBLISHER
            # No subscriber PC: the server never offers.
            with trio.move_on_after(1.0):
                while True:
                    response = await recv(ws, timeout=2)
                    assert response.WhichOneof("message") != "offer", response
        assert server.metrics.get(m.HTTP_RTC_V1_REQUESTS) == 1
        assert server.metrics.get(m.SIGNAL_JOINS) == 1


async def test_v1_join_without_an_offer_waits_for_the_clients_first_offer() -> None:
    """Firefox's livekit-client joins without an offer and negotiates right after the join."""
    async with media_server() as server:
        join = join_request("chromium_v1_join_offer.sdp")
        offer = join.publisher_offer
        join.ClearField("publisher_offer")
        async with await open_v1(server, "alice", join) as ws:
            assert (await recv(ws)).WhichOneof("message") == "join"
            await send(ws, rtc.SignalRequest(offer=rtc.SessionDescription(type="offer", sdp=offer.sdp, id=3)))
            answer = await recv_kind(ws, "answer")
            assert answer.answer.id == 3


async def test_v1_renegotiation_is_asked_of_the_client_when_a_subscription_changes() -> None:
    async with media_server() as server:
        async with await open_v1(server, "alice", join_request("chromium_v1_join_offer.sdp")) as ws:
            assert (await recv(ws)).WhichOneof("message") == "join"
            await recv_kind(ws, "answer")
            # An explicit subscription to a track that does not exist changes nothing to send:
            # no requirement. (A track that does exist needs a publisher with media; the
            # e2e tests cover that with real clients.)
            await send(ws, rtc.SignalRequest(subscription=rtc.UpdateSubscription(track_sids=["TR_none"], subscribe=True)))
            with trio.move_on_after(1.0):
                while True:
                    response = await recv(ws, timeout=2)
                    assert response.WhichOneof("message") not in ("media_sections_requirement", "offer"), response


async def test_v1_join_carries_add_tracks_attributes_and_metadata() -> None:
    async with media_server() as server:
        join = join_request("python_sdk_v1_join_offer.sdp")
        join.add_track_requests.append(rtc.AddTrackRequest(cid="mic-1", name="mic", type=models.TrackType.AUDIO,
                                                           source=models.TrackSource.MICROPHONE))
        join.participant_attributes["team"] = "blue"
        join.metadata = '{"seat": 3}'
        headers = [(b"authorization", f"Bearer {mint_token('alice', can_update_own_metadata=True)}".encode())]
        async with trio_websocket.open_websocket_url(v1_url(server, join), extra_headers=headers, connect_timeout=5,
                                                     disconnect_timeout=2) as ws:
            first = await recv(ws)
            assert first.WhichOneof("message") == "join", first
            assert dict(first.join.participant.attributes) == {"team": "blue"}
            assert first.join.participant.metadata == '{"seat": 3}'
            # The join's add_track is served before its offer, as if sent first on the socket.
            kinds = []
            with trio.fail_after(5):
                while "answer" not in kinds:
                    kinds.append((await recv(ws)).WhichOneof("message"))
            assert "track_published" in kinds and kinds.index("track_published") < kinds.index("answer"), kinds


@pytest.mark.parametrize("offer_file", ["python_sdk_v1_join_offer.sdp", "chromium_v1_join_offer.sdp"])
async def test_v1_estimates_the_downlink_on_the_one_peer_connection(offer_file: str) -> None:
    """One PC carries the down tracks too: the downstream estimate lives on it, stamping what we
    send with the transport-cc id the client's offer chose, while the same PC's receive side
    keeps recording what the client sends under that id (its feedback to the client)."""
    async with media_server() as server:
        async with await open_v1(server, "alice", join_request(offer_file)) as ws:
            join = (await recv(ws)).join
            answer = await recv_kind(ws, "answer")
            offered = {e.id for s in parse((SDP_DIR / offer_file).read_bytes().decode()).media
                       for e in s.extmaps if e.uri.endswith("transport-wide-cc-extensions-01")}
            assert len(offered) == 1
            (ext_id,) = offered
            assert ext_id in {e.id for s in parse(answer.answer.sdp).media for e in s.extmaps}
            media = server.media.participant_media(join.room.name, join.participant.sid)
            assert media is not None and media.transports.single_pc and media.transports.subscriber is None
            bandwidth = media.subscribing.bandwidth
            assert bandwidth is not None and bandwidth.sequencer.ext_id == ext_id
            publisher = media.transports.publisher
            assert publisher is not None and publisher.stamper is bandwidth
            assert media.publishing.transport_cc_extension == ext_id
