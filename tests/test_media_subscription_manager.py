"""Subscription tolerance on the real server (issue 5), with our own client on both ends.

An UpdateSubscription naming a track that resolves to nothing is not refused at once: as in
LiveKit, the server waits up to its not-found timeout (shortened here on the MediaService) for
the track to appear. A track whose media starts within that time is subscribed without a new
request; one that never appears is reported as `subscription_response{SE_TRACK_NOTFOUND}` once
the timeout has passed on Trio's clock, and only then.
"""

from __future__ import annotations

import trio
from livekit.protocol import models, rtc

import server_fixtures
from server_fixtures import mint_token
from trio_sfu.client import LiveKitClient
from trio_sfu.client.senders import send_synthetic_audio

#: The not-found timeout: long enough that a track whose media starts once the server is waiting
#: for it arrives in time on a busy machine; every wait below is on an event, not on this.
TIMEOUT = 5.0
#: How late after the timeout the report may come: the reconcile loop's wake-up on a loaded
#: machine, bounded generously (a report that never comes is what this catches).
REPORT_SLACK = 10.0


def record_subscription_responses(client: LiveKitClient) -> list[tuple[float, rtc.SubscriptionResponse]]:
    """Our client does not keep subscription_response yet: observe its dispatch."""
    seen: list[tuple[float, rtc.SubscriptionResponse]] = []
    dispatch = client._dispatch

    async def observing(response: rtc.SignalResponse) -> None:
        if response.WhichOneof("message") == "subscription_response":
            seen.append((trio.current_time(), response.subscription_response))
        await dispatch(response)

    client._dispatch = observing  # type: ignore[method-assign]
    return seen


async def request(client: LiveKitClient, *track_sids: str) -> None:
    await client._send(rtc.SignalRequest(subscription=rtc.UpdateSubscription(
        track_sids=list(track_sids), subscribe=True)))


async def test_unknown_track_is_reported_not_found_and_a_late_track_is_subscribed() -> None:
    async with server_fixtures.media_server() as server:
        assert server.media is not None
        server.media.not_found_timeout = TIMEOUT
        async with LiveKitClient.connect(server.url, mint_token("sub"), auto_subscribe=False) as subscriber, \
                LiveKitClient.connect(server.url, mint_token("pub")) as publisher:
            responses = record_subscription_responses(subscriber)
            await subscriber.wait_connected(timeout=10)
            # The track exists on the signal side, but no media has reached the server: it
            # resolves to nothing when the subscriber asks for it.
            audio = await publisher.publish_audio()
            assert audio.sid not in server.media.rooms[next(iter(server.media.rooms))].tracks
            await request(subscriber, "TR_Anot_a_track", audio.sid)
            room = next(iter(server.media.rooms.values()))
            # The server has both wanted and looked for them, finding neither: now the media
            # starts, late — how late the machine's load made it does not matter.
            with trio.fail_after(10):
                while (session := room.sessions.get(subscriber.participant_sid)) is None or not all(
                        (wanted := session.subscribing.manager.subscriptions.get(sid)) is not None
                        and "not_found" in wanted.transient_errors for sid in ("TR_Anot_a_track", audio.sid)):
                    await trio.sleep(0.01)
            wanted_since = session.subscribing.manager.subscriptions["TR_Anot_a_track"].wanted_since
            async with trio.open_nursery() as senders:
                senders.start_soon(send_synthetic_audio, audio, TIMEOUT * 4)
                with trio.fail_after(TIMEOUT + REPORT_SLACK):
                    async for track in subscriber.tracks():
                        break
                    await track.first_packet.wait()
                assert track.sid == audio.sid
                with trio.fail_after(TIMEOUT + REPORT_SLACK):
                    while not responses:
                        await trio.sleep(0.05)
                senders.cancel_scope.cancel()

            assert [(r.track_sid, r.err) for _, r in responses] == [
                ("TR_Anot_a_track", models.SubscriptionError.SE_TRACK_NOTFOUND)]
            # Reported once the timeout has passed since the server began to want it (the server's
            # own record; one Trio clock here), not at once, and not long after.
            assert TIMEOUT <= responses[0][0] - wanted_since < TIMEOUT + REPORT_SLACK
            assert track.stats.packets > 0
            assert set(subscriber.subscriptions) == {audio.sid}
            assert subscriber.errors == []
