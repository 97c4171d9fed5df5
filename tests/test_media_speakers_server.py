"""Active speakers and connection quality through the server's real media stack: two of our
clients on loopback (real ICE, DTLS, SRTP, the server's receive path and its room reports).

Alice publishes Opus-sized audio whose packets carry RFC 6464 levels (the client writes the
element once the answer negotiates it); Bob publishes audio that says it is silent. What the
assertions prove: Bob hears `speakers_changed` naming Alice and never himself; Alice, silent
again or muted, drops out of Bob's list; both hear `connection_quality` about themselves and the
publisher they receive, EXCELLENT on loopback; the server counted the updates it sent.
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
                LiveKitClient.connect(server.url, mint_token("bob")) as bob:
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

                # Quiet again: she drops out of the list.
                alice_mic.set_audio_level(90)
                await until(lambda: not bob.active_speakers, 5)

                # Speaking, then muted: muted tracks are no speakers.
                alice_mic.set_audio_level(5)
                await until(lambda: alice.participant_sid in bob.active_speakers, 5)
                assert alice_mic.sid is not None
                await alice.signal.send(rtc.SignalRequest(mute=rtc.MuteTrackRequest(sid=alice_mic.sid, muted=True)))
                await until(lambda: not bob.active_speakers, 5)

                # Connection quality: the first report comes within one 5 s interval of the room's
                # first timer wake-up; each hears about itself and the publisher it receives.
                both = {alice.participant_sid, bob.participant_sid}
                await until(lambda: set(bob.connection_quality) == both and set(alice.connection_quality) == both, 15)
                senders.cancel_scope.cancel()
            for client in (alice, bob):
                for info in client.connection_quality.values():
                    assert info.quality == models.ConnectionQuality.EXCELLENT, (client.identity, info)
                    assert 4.0 < info.score <= 4.5
            assert not alice.errors and not bob.errors, (alice.errors, bob.errors)
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
