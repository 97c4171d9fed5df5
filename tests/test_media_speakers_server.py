"""Active speakers and connection quality through the server's real media stack: two of our
clients on loopback (real ICE, DTLS, SRTP, the server's receive path and its room reports).

Alice publishes Opus-sized audio whose packets carry RFC 6464 levels (the client writes the
element once the answer negotiates it); Bob publishes audio that says it is silent. What the
assertions prove: Bob hears `speakers_changed` naming Alice and never himself; Alice, silent
again or muted, drops out of Bob's list; both hear `connection_quality` about themselves and the
publisher they receive, EXCELLENT on loopback, and Carol, who receives nobody, hears of no
speaker and of her own quality only; the server counted the updates it sent.
"""

from __future__ import annotations

import trio
from livekit.protocol import models, rtc

import server_fixtures
from server_fixtures import mint_token
from trio_sfu import metrics as m
from trio_sfu.client import LiveKitClient
from trio_sfu.client.senders import send_synthetic_audio


async def until(condition, timeout: float) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.05)


async def test_speakers_and_connection_quality_reach_the_room() -> None:
    async with server_fixtures.media_server() as server:
        async with LiveKitClient.connect(server.url, mint_token("alice")) as alice, \
                LiveKitClient.connect(server.url, mint_token("bob")) as bob, \
                LiveKitClient.connect(server.url, mint_token("carol"), auto_subscribe=False) as carol:
            alice_mic = await alice.publish_audio("mic")
            bob_mic = await bob.publish_audio("mic")
            alice_mic.set_audio_level(10)  # -10 dBov: speech
            bob_mic.set_audio_level(127)  # silence
            async with trio.open_nursery() as senders:
                senders.start_soon(send_synthetic_audio, alice_mic, 60.0)
                senders.start_soon(send_synthetic_audio, bob_mic, 60.0)

                await until(lambda: alice.participant_sid in bob.active_speakers, 20)
                assert set(bob.active_speakers) == {alice.participant_sid}
                speaker = bob.active_speakers[alice.participant_sid]
                assert 0 < speaker.level <= 1
                # Alice is told about herself too.
                await until(lambda: alice.participant_sid in alice.active_speakers, 5)
                assert bob.participant_sid not in alice.active_speakers

                # Bob unsubscribes from her while she speaks: he is told she stopped (for him);
                # subscribed again, he is told she speaks though her level did not change.
                assert alice_mic.sid is not None
                await bob.signal.send(rtc.SignalRequest(subscription=rtc.UpdateSubscription(
                    track_sids=[alice_mic.sid], subscribe=False)))
                await until(lambda: not bob.active_speakers, 10)
                await bob.signal.send(rtc.SignalRequest(subscription=rtc.UpdateSubscription(
                    track_sids=[alice_mic.sid], subscribe=True)))
                await until(lambda: alice.participant_sid in bob.active_speakers, 10)

                # Quiet again: she drops out of the list.
                alice_mic.set_audio_level(90)
                await until(lambda: not bob.active_speakers, 5)

                # Speaking, then muted: muted tracks are no speakers.
                alice_mic.set_audio_level(5)
                await until(lambda: alice.participant_sid in bob.active_speakers, 5)
                await alice.signal.send(rtc.SignalRequest(mute=rtc.MuteTrackRequest(sid=alice_mic.sid, muted=True)))
                await until(lambda: not bob.active_speakers, 5)

                # Connection quality: the first report comes within one 5 s interval of the room's
                # first timer wake-up; each hears about itself and the publisher it receives.
                both = {alice.participant_sid, bob.participant_sid}
                await until(lambda: set(bob.connection_quality) == both and set(alice.connection_quality) == both, 15)
                # Carol receives nobody: she hears of no speaker and of her own quality only.
                await until(lambda: carol.connection_quality_updates >= 1, 10)
                assert set(carol.connection_quality) == {carol.participant_sid}
                assert carol.speaker_updates == 0 and not carol.active_speakers
                senders.cancel_scope.cancel()
            for client in (alice, bob, carol):
                for info in client.connection_quality.values():
                    assert info.quality == models.ConnectionQuality.EXCELLENT, (client.identity, info)
                    assert 4.0 < info.score <= 4.5
            assert not alice.errors and not bob.errors and not carol.errors, (alice.errors, bob.errors, carol.errors)
        assert server.metrics.get(m.MEDIA_SPEAKER_UPDATES_SENT) >= 4
        assert server.metrics.get(m.MEDIA_QUALITY_UPDATES_SENT) >= 2
        assert server.metrics.get(m.MEDIA_AUDIO_LEVEL_MALFORMED) == 0


async def test_a_speaker_on_another_node_reaches_the_listeners_here() -> None:
    # The relay carries alice's packets as she sent them, her audio level element included; the
    # node bob is on meters its copy of her track.
    async with server_fixtures.media_nodes("node-a", "node-b") as (a, b):
        async with LiveKitClient.connect(a.url, mint_token("alice", room="shared")) as alice, \
                LiveKitClient.connect(b.url, mint_token("bob", room="shared")) as bob:
            alice_mic = await alice.publish_audio("mic")
            alice_mic.set_audio_level(10)
            async with trio.open_nursery() as senders:
                senders.start_soon(send_synthetic_audio, alice_mic, 60.0)
                await until(lambda: alice.participant_sid in bob.active_speakers, 20)
                assert set(bob.active_speakers) == {alice.participant_sid}
                assert b.metrics.get(m.MEDIA_SPEAKER_UPDATES_SENT) >= 1
                # Muted on her node: the relayed copy's meter no longer counts at bob's.
                assert alice_mic.sid is not None
                await alice.signal.send(rtc.SignalRequest(mute=rtc.MuteTrackRequest(sid=alice_mic.sid, muted=True)))
                await until(lambda: not bob.active_speakers, 10)
                senders.cancel_scope.cancel()
            assert not alice.errors and not bob.errors, (alice.errors, bob.errors)


async def test_a_lossy_publisher_is_poor_and_its_loss_is_not_held_against_its_listener() -> None:
    # Alice's PC loses one packet in ten on the way out (our client does not answer NACKs): 10 %
    # loss on Opus scores 100 - 10 x 8 = 20 for the window, POOR at once. Bob receives her stream
    # with the same gaps and reports them, but the server never had those packets: his own link
    # stays EXCELLENT.
    async with server_fixtures.media_server() as server:
        async with LiveKitClient.connect(server.url, mint_token("alice")) as alice, \
                LiveKitClient.connect(server.url, mint_token("bob")) as bob:
            alice_mic = await alice.publish_audio("mic")
            await alice_mic.wait_ready()
            pc = alice.publisher_pc
            assert pc is not None
            send = pc.send_rtp
            calls = 0

            def lossy(packet: bytes) -> bool:
                nonlocal calls
                calls += 1
                return True if calls % 10 == 0 else send(packet)  # "sent", and lost on the way

            pc.send_rtp = lossy  # type: ignore[method-assign]
            async with trio.open_nursery() as senders:
                senders.start_soon(send_synthetic_audio, alice_mic, 60.0)
                poor = models.ConnectionQuality.POOR

                def heard(client: LiveKitClient, sid: str, quality: int) -> bool:
                    info = client.connection_quality.get(sid)
                    return info is not None and info.quality == quality

                await until(lambda: heard(bob, alice.participant_sid, poor) and heard(alice, alice.participant_sid, poor), 25)
                assert bob.connection_quality[alice.participant_sid].score < 2.5  # MOS of a POOR score
                # Bob's stream is scored from his receiver reports once two of them frame a
                # window (the first only sets the base): two windows of his, with the gaps in them.
                (room,) = server.media.rooms.values()
                await until(lambda: room.reports.windows_scored(bob.participant_sid) >= 2, 25)
                last = room.reports.last_quality(bob.participant_sid)
                assert last is not None and last.quality == models.ConnectionQuality.EXCELLENT, last
                assert heard(bob, bob.participant_sid, models.ConnectionQuality.EXCELLENT), bob.connection_quality
                senders.cancel_scope.cancel()
