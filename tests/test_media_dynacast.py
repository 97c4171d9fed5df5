"""Dynacast and the stream allocator through the in-process server, with our own PCs as the
simulcast publisher (rids q/h/f, as Chromium sends) and the subscriber.

Dynacast: the publisher hears `subscribed_quality_update` — only LOW enabled once its only
subscriber asks for LOW (after the pause delay, as LiveKit debounces downgrades), HIGH again at
once when the subscriber asks for it. The allocator: the subscriber's downlink estimate
(`SubscriberMedia.set_available_bitrate`, the estimator's input) pauses the track when not even
its lowest layer fits — the subscriber hears `stream_state_update` PAUSED, the down track stops
forwarding — and resumes it, ACTIVE, when the estimate allows.
"""

from __future__ import annotations

import trio
from livekit.protocol import models, rtc

from rtp.header_extensions import encode_mid, encode_rid
from rtp.packet import RtpPacket
from server_fixtures import media_config, media_server, mint_token, recv, send, signal_client
from test_media_forwarding import ClientPc, answer_subscriber, recv_until
from test_media_simulcast import LAYER_SSRCS, MID_ID, RID_ID, payload, simulcast_offer

PAUSE_DELAY = 3.0
LAYERS = [models.VideoLayer(quality=q, width=w, height=h, bitrate=b)
          for q, w, h, b in ((0, 160, 90, 150_000), (1, 320, 180, 500_000), (2, 640, 360, 1_500_000))]


class Signal:
    """A participant's signal responses, read on a task of their own so nothing is skipped."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.seen: list[tuple[float, rtc.SignalResponse]] = []
        self.changed = trio.Event()

    async def run(self) -> None:
        while True:
            response = await recv(self.ws, 60)
            self.seen.append((trio.current_time(), response))
            self.changed.set()
            self.changed = trio.Event()

    async def wait_for(self, predicate, since: float = 0.0, timeout: float = 15.0):
        with trio.fail_after(timeout):
            while True:
                for at, response in self.seen:
                    if at >= since and predicate(response):
                        return at, response
                await self.changed.wait()


def enabled(update: rtc.SubscribedQualityUpdate) -> dict[int, bool]:
    return {q.quality: q.enabled for q in update.subscribed_qualities}


def quality_update(sid: str, want: dict[int, bool]):
    def match(response: rtc.SignalResponse) -> bool:
        if response.WhichOneof("message") != "subscribed_quality_update":
            return False
        update = response.subscribed_quality_update
        # As LiveKit: the codec entry carries the same qualities, named like "vp8".
        codecs = {c.codec: {q.quality: q.enabled for q in c.qualities} for c in update.subscribed_codecs}
        return update.track_sid == sid and enabled(update) == want and codecs == {"vp8": want}
    return match


async def simulcast_call(server, nursery, ws_a, ws_b):
    """Alice publishes a simulcast camera, Bob subscribes; returns what the tests drive."""
    join_a, join_b = await recv(ws_a), await recv(ws_b)
    alice_sub, bob_sub, alice_pub = ClientPc(), ClientPc(), ClientPc()
    await answer_subscriber(ws_a, alice_sub, nursery)
    await answer_subscriber(ws_b, bob_sub, nursery)
    await send(ws_a, rtc.SignalRequest(add_track=rtc.AddTrackRequest(
        cid="cid-cam", type=models.TrackType.VIDEO, source=models.TrackSource.CAMERA,
        width=640, height=360, layers=LAYERS)))
    sid = (await recv_until(ws_a, "track_published")).track_published.track.sid
    await send(ws_a, rtc.SignalRequest(offer=rtc.SessionDescription(type="offer", sdp=simulcast_offer(alice_pub), id=1)))
    answer = (await recv_until(ws_a, "answer")).answer
    alice_pub.connect(answer.sdp)
    nursery.start_soon(alice_pub.run)
    await alice_pub.connected.wait()
    seq = {rid: 100 * i for i, rid in enumerate(LAYER_SSRCS)}
    n = 0

    async def send_round(keyframes=frozenset(LAYER_SSRCS)) -> None:
        nonlocal n
        n += 1
        for rid, ssrc in LAYER_SSRCS.items():
            seq[rid] += 1
            await alice_pub.send_rtp(RtpPacket(
                96, seq[rid], 3000 * n, ssrc, extensions={MID_ID: encode_mid("0"), RID_ID: encode_rid(rid)},
                payload=payload(rid, rid in keyframes, n)))

    await send_round()
    await answer_subscriber(ws_b, bob_sub, nursery)
    await bob_sub.connected.wait()
    return join_a.join, join_b.join, sid, send_round


async def test_publisher_hears_low_only_when_its_only_subscriber_wants_low_and_high_again_at_once():
    config = media_config()
    config.video.dynacast_pause_delay = PAUSE_DELAY
    async with media_server(config) as server:
        async with trio.open_nursery() as nursery, \
                signal_client(server, mint_token("alice")) as ws_a, \
                signal_client(server, mint_token("bob")) as ws_b:
            alice = Signal(ws_a)
            _, _, sid, _ = await simulcast_call(server, nursery, ws_a, ws_b)
            nursery.start_soon(alice.run)

            asked = trio.current_time()
            await send(ws_b, rtc.SignalRequest(track_setting=rtc.UpdateTrackSettings(
                track_sids=[sid], quality=models.VideoQuality.LOW)))
            at, _ = await alice.wait_for(quality_update(sid, {0: True, 1: False, 2: False}), since=asked)
            assert at - asked >= PAUSE_DELAY - 0.2, "a downgrade waits for the pause delay"

            asked = trio.current_time()
            await send(ws_b, rtc.SignalRequest(track_setting=rtc.UpdateTrackSettings(
                track_sids=[sid], quality=models.VideoQuality.HIGH)))
            at, _ = await alice.wait_for(quality_update(sid, {0: True, 1: True, 2: True}), since=asked)
            assert at - asked < PAUSE_DELAY - 0.5, "an upgrade is announced at once"
            assert server.metrics.get("media_dynacast_updates_total") >= 2
            nursery.cancel_scope.cancel()


async def test_dynacast_off_sends_no_quality_updates():
    config = media_config()
    config.video.dynacast = False
    config.video.dynacast_pause_delay = 0.2
    async with media_server(config) as server:
        async with trio.open_nursery() as nursery, \
                signal_client(server, mint_token("alice")) as ws_a, \
                signal_client(server, mint_token("bob")) as ws_b:
            alice = Signal(ws_a)
            _, _, sid, _ = await simulcast_call(server, nursery, ws_a, ws_b)
            nursery.start_soon(alice.run)
            await send(ws_b, rtc.SignalRequest(track_setting=rtc.UpdateTrackSettings(
                track_sids=[sid], quality=models.VideoQuality.LOW)))
            await trio.sleep(1.0)
            kinds = [r.WhichOneof("message") for _, r in alice.seen]
            assert "subscribed_quality_update" not in kinds
            assert server.metrics.get("media_dynacast_updates_total") == 0
            nursery.cancel_scope.cancel()


async def test_estimate_below_the_lowest_layer_pauses_the_track_and_the_subscriber_hears_it():
    config = media_config()
    config.rtc.congestion_control_allow_pause = True  # LiveKit's rtc.congestion_control.allow_pause (off by default)
    async with media_server(config) as server:
        async with trio.open_nursery() as nursery, \
                signal_client(server, mint_token("alice")) as ws_a, \
                signal_client(server, mint_token("bob")) as ws_b:
            bob = Signal(ws_b)
            _, join_b, sid, send_round = await simulcast_call(server, nursery, ws_a, ws_b)
            nursery.start_soon(bob.run)
            media = server.media.participant_media(join_b.room.name, join_b.participant.sid)
            subscribing = media.subscribing
            with trio.fail_after(10):
                while (binding := subscribing.endpoint.bindings.get(sid)) is None or binding.down is None:
                    await trio.sleep(0.02)
            down = binding.down
            assert down.target_layer == 2  # no estimate yet: what the settings ask (the top)

            def state_update(state):
                def match(response):
                    return response.WhichOneof("message") == "stream_state_update" and any(
                        s.track_sid == sid and s.state == state
                        and s.participant_sid == subscribing.endpoint.bindings[sid].source.publisher_id
                        for s in response.stream_state_update.stream_states)
                return match

            # 100 kbit/s: not even the low layer (150k announced) fits.
            subscribing.set_available_bitrate(100_000, trio.current_time())
            await bob.wait_for(state_update(rtc.StreamState.PAUSED))
            assert down.target_layer is None and down.disabled
            before = down.counters.dropped_disabled
            for _ in range(3):
                await send_round()
            with trio.fail_after(5):
                while down.counters.dropped_disabled < before + 3:
                    await trio.sleep(0.02)

            # 700 kbit/s: the medium layer fits with headroom (a resume is not held back).
            subscribing.set_available_bitrate(700_000, trio.current_time())
            await bob.wait_for(state_update(rtc.StreamState.ACTIVE))
            assert down.target_layer == 1 and not down.disabled
            assert server.metrics.get("media_stream_state_updates_total") == 2
            # Bob leaves (a closed socket alone keeps his media up for a resume, as LiveKit does).
            await send(ws_b, rtc.SignalRequest(leave=rtc.LeaveRequest()))
            nursery.cancel_scope.cancel()
        # Bob left: his allocator's counters outlive him in the node's metrics.
        with trio.fail_after(10):
            while not server.metrics.get("media_allocator_pauses_total"):
                await trio.sleep(0.02)
        assert server.metrics.get("media_allocator_pauses_total") == 1
        assert server.metrics.get("media_allocator_resumes_total") == 1


async def test_a_subscriber_on_another_node_counts_in_the_publishers_qualities():
    """Alice publishes on node A, where nobody subscribes; Bob subscribes on node B. What B's
    copy asks of A through the relay (RelaySubscribe layers) is what Alice hears: nothing while
    nobody subscribes, HIGH as soon as Bob subscribes, LOW once he wants only that."""
    from server_fixtures import media_nodes
    from test_node_relay_on_demand import Call, LinkRecord, bob_offer, publish_forever, received, subscribe

    delay = 1.0

    def configure(config) -> None:
        config.video.dynacast_pause_delay = delay

    async with media_nodes("node-a", "node-b", configure=configure) as (a, b):
        async with trio.open_nursery() as nursery, \
                signal_client(a, mint_token("alice")) as ws_a, \
                signal_client(b, mint_token("bob"), query="auto_subscribe=0") as ws_b:
            await recv(ws_a), await recv(ws_b)
            alice_sub, bob_sub, alice_pub = ClientPc(), ClientPc(), ClientPc()
            await answer_subscriber(ws_a, alice_sub, nursery)
            await answer_subscriber(ws_b, bob_sub, nursery)
            await send(ws_a, rtc.SignalRequest(add_track=rtc.AddTrackRequest(
                cid="cid-cam", type=models.TrackType.VIDEO, source=models.TrackSource.CAMERA,
                width=640, height=360, layers=LAYERS)))
            sid = (await recv_until(ws_a, "track_published")).track_published.track.sid
            await send(ws_a, rtc.SignalRequest(offer=rtc.SessionDescription(
                type="offer", sdp=simulcast_offer(alice_pub), id=1)))
            answer = (await recv_until(ws_a, "answer")).answer
            alice = Signal(ws_a)
            nursery.start_soon(alice.run)
            alice_pub.connect(answer.sdp)
            nursery.start_soon(alice_pub.run)
            await alice_pub.connected.wait()
            await bob_sub.connected.wait()
            call = Call(a, b, ws_a, ws_b, alice_pub, bob_sub, sid, LinkRecord())
            nursery.start_soon(publish_forever, call)

            # Nobody anywhere receives the track: after the pause delay every layer is off.
            await alice.wait_for(quality_update(sid, {0: False, 1: False, 2: False}))
            asked = trio.current_time()
            await subscribe(call, nursery, True)
            bob_ssrc, _ = await bob_offer(call, nursery)
            await alice.wait_for(quality_update(sid, {0: True, 1: True, 2: True}), since=asked)
            await bob_sub.wait_for(lambda: len(received(call, bob_ssrc)) >= 5)
            assert all(not member.subscriptions for room in a.media.rooms.values()
                       for member in room.sessions.values()), "no subscriber on A: the demand came through the relay"

            # Bob wants LOW: B's copy asks A for layer 0 alone; after the delay Alice hears it.
            asked = trio.current_time()
            await send(ws_b, rtc.SignalRequest(track_setting=rtc.UpdateTrackSettings(
                track_sids=[sid], quality=models.VideoQuality.LOW)))
            at, _ = await alice.wait_for(quality_update(sid, {0: True, 1: False, 2: False}), since=asked)
            assert at - asked >= delay - 0.2
            # And MEDIUM again at once.
            asked = trio.current_time()
            await send(ws_b, rtc.SignalRequest(track_setting=rtc.UpdateTrackSettings(
                track_sids=[sid], quality=models.VideoQuality.MEDIUM)))
            at, _ = await alice.wait_for(quality_update(sid, {0: True, 1: True, 2: False}), since=asked)
            assert at - asked < delay
            nursery.cancel_scope.cancel()


async def test_adaptive_stream_size_caps_the_allocation_and_hidden_is_not_a_bandwidth_pause():
    """The element size a client reports (UpdateTrackSettings width/height) caps the layer the
    allocator gives even with bandwidth to spare; a hidden element (disabled) stops the track
    without a PAUSED stream state (that one means: for lack of bandwidth); a tight estimate
    lowers a track under its cap, and room again raises it after the allocator's hold."""
    async with media_server() as server:
        async with trio.open_nursery() as nursery, \
                signal_client(server, mint_token("alice")) as ws_a, \
                signal_client(server, mint_token("bob")) as ws_b:
            bob = Signal(ws_b)
            _, join_b, sid, _ = await simulcast_call(server, nursery, ws_a, ws_b)
            nursery.start_soon(bob.run)
            subscribing = server.media.participant_media(join_b.room.name, join_b.participant.sid).subscribing
            with trio.fail_after(10):
                while (binding := subscribing.endpoint.bindings.get(sid)) is None or binding.down is None:
                    await trio.sleep(0.02)
            down = binding.down

            async def settings(**kw) -> None:
                await send(ws_b, rtc.SignalRequest(track_setting=rtc.UpdateTrackSettings(track_sids=[sid], **kw)))

            async def target(layer) -> None:
                with trio.fail_after(10):
                    while down.target_layer != layer:
                        await trio.sleep(0.02)

            subscribing.set_available_bitrate(5_000_000, trio.current_time())
            assert down.target_layer == 2
            await settings(width=320, height=180)
            await target(1)
            await settings(width=150, height=80)
            await target(0)
            await settings(disabled=True)
            await target(None)
            await settings(width=640, height=360)
            await target(2)
            # 400 kbit/s: the medium layer (500k announced) no longer fits: the low one does.
            subscribing.set_available_bitrate(400_000, trio.current_time())
            assert down.target_layer == 0
            # Room again: the upgrade waits for the allocator's hold, then the participant's
            # timer loop (SubscriberMedia as a Timed part) applies it with no new estimate.
            raised = trio.current_time()
            subscribing.set_available_bitrate(5_000_000, raised)
            assert down.target_layer == 0
            await target(2)
            assert trio.current_time() - raised >= subscribing.allocator.upgrade_hold - 0.05
            kinds = [r.WhichOneof("message") for _, r in bob.seen]
            assert "stream_state_update" not in kinds, "no bandwidth pause happened"
            nursery.cancel_scope.cancel()


async def test_a_subscriber_held_low_for_bandwidth_still_counts_its_wish_in_dynacast():
    """As LiveKit's max subscribed quality: the allocator forwarding only the low layer to a
    subscriber with a tight downlink does not turn the publisher's upper layers off (it will want
    them back when its estimate recovers); its own request for LOW does."""
    delay = 1.0
    config = media_config()
    config.video.dynacast_pause_delay = delay
    async with media_server(config) as server:
        async with trio.open_nursery() as nursery, \
                signal_client(server, mint_token("alice")) as ws_a, \
                signal_client(server, mint_token("bob")) as ws_b:
            alice = Signal(ws_a)
            _, join_b, sid, _ = await simulcast_call(server, nursery, ws_a, ws_b)
            nursery.start_soon(alice.run)
            subscribing = server.media.participant_media(join_b.room.name, join_b.participant.sid).subscribing
            with trio.fail_after(10):
                while (binding := subscribing.endpoint.bindings.get(sid)) is None or binding.down is None:
                    await trio.sleep(0.02)
            down = binding.down
            subscribing.set_available_bitrate(400_000, trio.current_time())
            assert down.target_layer == 0 and down.subscribed_max_layer == 2
            await trio.sleep(3 * delay)
            downgrades = [r for _, r in alice.seen if r.WhichOneof("message") == "subscribed_quality_update"
                          and not enabled(r.subscribed_quality_update).get(2, True)]
            assert downgrades == [], "the publisher was told to stop a layer its subscriber asks for"

            asked = trio.current_time()
            await send(ws_b, rtc.SignalRequest(track_setting=rtc.UpdateTrackSettings(
                track_sids=[sid], quality=models.VideoQuality.LOW)))
            await alice.wait_for(quality_update(sid, {0: True, 1: False, 2: False}), since=asked)
            nursery.cancel_scope.cancel()
