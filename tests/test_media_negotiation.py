"""Subscriber negotiation on the real server, now that each participant's SubscriptionManager
makes the offers (issue 5): one offer for everything a pass binds, an unanswered offer offered
again after `MediaService.answer_timeout`, and an m-line the client refuses reported once as a
permanent error instead of being offered in a loop.

Our own client stack on both ends over loopback; the subscriber's offers and signal responses are
recorded as the client received them.
"""

from __future__ import annotations

import trio
from livekit.protocol import models, rtc

import trio_sfu.client.subscriber as subscriber_module
from sdp.model import SetupRole
from sdp.negotiator import rejected_answer_media
from sdp.parser import parse as parse_sdp
from server_fixtures import media_server, mint_token
from trio_sfu.client import LiveKitClient
from trio_sfu.client.senders import send_synthetic_audio


def record(client: LiveKitClient, *, drop_offers: int = 0) -> list[tuple[float, rtc.SignalResponse]]:
    """Every signal response `client` gets, with its arrival time; the first `drop_offers`
    offers are recorded but never reach the client (it does not answer them)."""
    seen: list[tuple[float, rtc.SignalResponse]] = []
    dispatch = client._dispatch
    dropped = 0

    async def observing(response: rtc.SignalResponse) -> None:
        nonlocal dropped
        seen.append((trio.current_time(), response))
        if response.WhichOneof("message") == "offer" and dropped < drop_offers:
            dropped += 1
            return
        await dispatch(response)

    client._dispatch = observing  # type: ignore[method-assign]
    return seen


def offers(seen: list[tuple[float, rtc.SignalResponse]]) -> list[tuple[float, str]]:
    return [(t, r.offer.sdp) for t, r in seen if r.WhichOneof("message") == "offer"]


def live_tracks(sdp: str) -> list[str]:
    """Track ids on the offer's live audio/video m-lines (a repeat would be the invariant broken)."""
    return [m.msid.track_id for m in parse_sdp(sdp).media
            if m.kind in ("audio", "video") and not m.rejected and m.msid is not None]


async def wait_packets(track, count: int, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while track.stats.packets < count:
            await trio.sleep(0.02)


async def test_a_joiner_gets_one_offer_for_every_track_already_published() -> None:
    async with media_server() as server:
        async with LiveKitClient.connect(server.url, mint_token("pub1")) as pub1, \
                LiveKitClient.connect(server.url, mint_token("pub2")) as pub2, \
                trio.open_nursery() as senders:
            a1 = await pub1.publish_audio()
            a2 = await pub2.publish_audio()
            senders.start_soon(send_synthetic_audio, a1, 20.0)
            senders.start_soon(send_synthetic_audio, a2, 20.0)
            (room,) = server.media.rooms.values()
            with trio.fail_after(10):
                while set(room.tracks) != {a1.sid, a2.sid}:
                    await trio.sleep(0.02)
            async with LiveKitClient.connect(server.url, mint_token("late")) as late:
                seen = record(late)
                tracks = await late.wait_for_tracks(2)
                for track in tracks:
                    await wait_packets(track, 10)
                made = offers(seen)
                # The first pass bound both tracks and made one offer for both (with the data
                # channel): no offer per track, no empty offer first.
                assert len(made) == 1, [live_tracks(sdp) for _, sdp in made]
                assert sorted(live_tracks(made[0][1])) == sorted([a1.sid, a2.sid])
                assert any(m.kind == "application" for m in parse_sdp(made[0][1]).media)
                assert late.errors == []
            senders.cancel_scope.cancel()


async def test_an_unanswered_offer_is_offered_again_after_the_answer_timeout() -> None:
    async with media_server() as server:
        server.media.answer_timeout = 2.0
        async with LiveKitClient.connect(server.url, mint_token("pub")) as publisher, \
                trio.open_nursery() as senders:
            audio = await publisher.publish_audio()
            senders.start_soon(send_synthetic_audio, audio, 30.0)
            (room,) = server.media.rooms.values()
            with trio.fail_after(10):
                while audio.sid not in room.tracks:
                    await trio.sleep(0.02)
            async with LiveKitClient.connect(server.url, mint_token("sub")) as subscriber:
                seen = record(subscriber, drop_offers=1)  # the client "loses" the first offer
                (track,) = await subscriber.wait_for_tracks(1, timeout=15)
                await wait_packets(track, 10)
                made = offers(seen)
                # (A third offer only if the loaded machine answered the second one late too.)
                assert len(made) >= 2, [live_tracks(sdp) for _, sdp in made]
                assert all(live_tracks(sdp) == [audio.sid] for _, sdp in made)
                # Offered again only once the first offer had waited out the timeout (arrival
                # times at the client: allow them half a second of scheduling jitter).
                assert made[1][0] - made[0][0] >= 1.5
                assert server.metrics.get("media_subscriber_answer_timeout_total") == len(made) - 1
                # The trickled candidate for the dropped offer found no PC: the drop's own echo.
                assert [e for e in subscriber.errors if "trickle for a PC we do not have" not in e] == []
            senders.cancel_scope.cancel()


async def test_a_refused_m_line_is_reported_once_and_not_offered_again(monkeypatch) -> None:
    answer = subscriber_module.answer_offer

    def refusing_audio(offer, local, **options):
        reply = answer(offer, local, **options)
        reply.media = [rejected_answer_media(m, local, SetupRole.ACTIVE) if m.kind == "audio" and not m.rejected
                       else a for m, a in zip(offer.media, reply.media)]
        return reply

    async with media_server() as server:
        async with LiveKitClient.connect(server.url, mint_token("pub")) as publisher, \
                LiveKitClient.connect(server.url, mint_token("sub")) as subscriber, \
                trio.open_nursery() as senders:
            monkeypatch.setattr(subscriber_module, "answer_offer", refusing_audio)
            seen = record(subscriber)
            await subscriber.wait_connected(timeout=10)
            audio = await publisher.publish_audio()
            senders.start_soon(send_synthetic_audio, audio, 30.0)
            with trio.fail_after(10):
                while not any(r.WhichOneof("message") == "subscription_response" for _, r in seen):
                    await trio.sleep(0.02)
            # Several reconcile ticks later the track has still been offered only once.
            await trio.sleep(2 * server.media.reconcile_interval + 0.5)
            responses = [r.subscription_response for _, r in seen if r.WhichOneof("message") == "subscription_response"]
            assert [(r.track_sid, r.err) for r in responses] == [
                (audio.sid, models.SubscriptionError.SE_CODEC_UNSUPPORTED)]
            assert sum(audio.sid in live_tracks(sdp) for _, sdp in offers(seen)) == 1
            (room,) = server.media.rooms.values()
            (source,) = room.track_manager.sources(audio.sid)
            assert source.is_open and not source.subscriber_ids and not source.receiver.down_tracks
            assert audio.sid not in room.sessions[subscriber.participant_sid].subscriptions
            senders.cancel_scope.cancel()


async def test_an_m_line_refused_after_it_was_forwarding_is_let_go_for_good(monkeypatch) -> None:
    """The client accepts a track, then turns its m-line down in the answer to a later offer:
    the down track stops, the subscriber leaves the source, and the track is reported once."""
    answer = subscriber_module.answer_offer
    refuse = {"audio": False}

    def answering(offer, local, **options):
        reply = answer(offer, local, **options)
        if refuse["audio"]:
            reply.media = [rejected_answer_media(m, local, SetupRole.ACTIVE) if m.kind == "audio" and not m.rejected
                           else a for m, a in zip(offer.media, reply.media)]
        return reply

    monkeypatch.setattr(subscriber_module, "answer_offer", answering)
    async with media_server() as server:
        async with LiveKitClient.connect(server.url, mint_token("pub")) as publisher, \
                LiveKitClient.connect(server.url, mint_token("sub")) as subscriber, \
                trio.open_nursery() as senders:
            seen = record(subscriber)
            audio = await publisher.publish_audio()
            senders.start_soon(send_synthetic_audio, audio, 30.0)
            (track,) = await subscriber.wait_for_tracks(1)
            await wait_packets(track, 10)
            refuse["audio"] = True
            second = await publisher.publish_audio("second")  # the next offer carries both
            senders.start_soon(send_synthetic_audio, second, 30.0)
            with trio.fail_after(10):
                while sum(r.WhichOneof("message") == "subscription_response" for _, r in seen) < 2:
                    await trio.sleep(0.02)
            responses = sorted((r.subscription_response.track_sid, r.subscription_response.err)
                               for _, r in seen if r.WhichOneof("message") == "subscription_response")
            assert responses == sorted([(audio.sid, models.SubscriptionError.SE_CODEC_UNSUPPORTED),
                                        (second.sid, models.SubscriptionError.SE_CODEC_UNSUPPORTED)])
            (room,) = server.media.rooms.values()
            for sid in (audio.sid, second.sid):
                (source,) = room.track_manager.sources(sid)
                assert not source.subscriber_ids and not source.receiver.down_tracks
            assert not room.sessions[subscriber.participant_sid].subscriptions
            senders.cancel_scope.cancel()
