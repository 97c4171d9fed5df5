"""On the real server, a subscriber's down track is registered on its track's source: while
subscribed the source lists the subscriber, and unpublishing closes the source with nobody
left on it (the media tests' publish/subscribe flow, observed at the sources)."""

from __future__ import annotations

import trio
from livekit.protocol import models, rtc

from server_fixtures import mint_token, recv, send, signal_client
from rtp.packet import RtpPacket
from test_media_forwarding import (
    VIDEO_SSRC, ClientPc, answer_subscriber, media_server, publisher_offer, recv_until, vp8_payload,
)
from trio_sfu.tracks import TrackSource


async def test_subscriber_is_registered_on_the_source_and_released_at_unpublish(monkeypatch):
    events: list[tuple[str, str, str]] = []
    add, remove = TrackSource.add_subscriber, TrackSource.remove_subscriber

    def spy_add(self, subscriber):
        add(self, subscriber)
        events.append(("add", self.track_id, subscriber.subscriber_id))

    def spy_remove(self, subscriber_id, expected_to_resume=None):
        removed = remove(self, subscriber_id, expected_to_resume)
        if removed:
            events.append(("remove", self.track_id, subscriber_id))
        return removed

    monkeypatch.setattr(TrackSource, "add_subscriber", spy_add)
    monkeypatch.setattr(TrackSource, "remove_subscriber", spy_remove)
    async with media_server() as server:
        async with trio.open_nursery() as nursery, \
                signal_client(server, mint_token("alice")) as ws_a, \
                signal_client(server, mint_token("bob")) as ws_b:
            await recv(ws_a), await recv(ws_b)
            alice_sub, bob_sub, alice_pub = ClientPc(), ClientPc(), ClientPc()
            await answer_subscriber(ws_a, alice_sub, nursery)
            await answer_subscriber(ws_b, bob_sub, nursery)
            for cid, kind, source in (("cid-video", models.TrackType.VIDEO, models.TrackSource.CAMERA),
                                      ("cid-audio", models.TrackType.AUDIO, models.TrackSource.MICROPHONE)):
                await send(ws_a, rtc.SignalRequest(add_track=rtc.AddTrackRequest(cid=cid, type=kind, source=source, name=cid)))
                await recv_until(ws_a, "track_published")
            offer = publisher_offer(alice_pub.ufrag, alice_pub.pwd, alice_pub.fingerprint)
            await send(ws_a, rtc.SignalRequest(offer=rtc.SessionDescription(type="offer", sdp=offer, id=1)))
            alice_pub.connect((await recv_until(ws_a, "answer")).answer.sdp)
            nursery.start_soon(alice_pub.run)
            await alice_pub.connected.wait()
            await alice_pub.send_rtp(RtpPacket(96, 1000, 5000, VIDEO_SSRC, payload=vp8_payload(True)))
            for p in server.registry.rooms["room1"].participants.values():
                if p.identity == "alice":
                    sid = next(s for s, info in p.tracks.items() if info.name == "cid-video")
                else:
                    bob = p.sid
            await answer_subscriber(ws_b, bob_sub, nursery)
            with trio.fail_after(10):
                while not any(e[0] == "add" and e[1] == sid for e in events):
                    await trio.sleep(0.01)
            sources = [s for room in server.media.rooms.values() for s in room.track_manager.sources(sid)]
            assert len(sources) == 1 and sources[0].subscriber_ids == (bob,)
            nursery.cancel_scope.cancel()
    # Everyone left: the track's source closed and let Bob go first.
    assert ("remove", sid, bob) in events
    assert sources[0].state.value == "closed" and sources[0].subscriber_ids == ()
