"""The load tester's Janus adapter against a real Janus (Debian's ``janus``, started with the
bench's config from ``bench/janus/``): one publisher's audio and simulcast video forwarded to two
subscribers, with our own ICE (controlling on the publisher PC, answering Janus' full agent on
the subscriber PC), DTLS and SRTP.

What arrives must be our publisher's packets, decrypted: each carries the send stamp the
synthetic publisher wrote into its payload, and every SSRC's sequence numbers run without a gap
or a repeat. Waits are for packet counts, bounded only so a broken run ends.
"""

from __future__ import annotations

import pytest
import trio

from bench.janus_server import JanusServer, JanusUnavailable, janus_available, local_media_ip
from rtp.packet import payload_offset, read_sequence_number, read_ssrc
from trio_sfu.client.janus import JanusParticipant
from trio_sfu.client.senders import send_synthetic_audio, send_synthetic_video
from trio_sfu.client.synthetic import read_send_stamp

pytestmark = pytest.mark.skipif(not janus_available(), reason="janus not installed (bench/janus/setup.sh)")

#: Packets per subscriber and track before the run ends (video at 30 fps, audio at 50 pps).
ENOUGH = 100


@pytest.fixture
def janus():
    if local_media_ip() is None:
        pytest.skip("no non-loopback IPv4 address for Janus' ICE candidates (libnice skips loopback)")
    try:
        server = JanusServer()
    except JanusUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        server.stop()


def _recording(participant: JanusParticipant, seen: dict[int, list[int]], stamped: list[bool]) -> None:
    """Record every decrypted RTP packet's SSRC, sequence number and whether its payload holds
    the publisher's send stamp (replaces the subscriber's packet handler before its PC opens)."""
    counted = participant.subscriber.on_rtp

    def on_rtp(packet: bytes, now: float) -> None:
        seen.setdefault(read_ssrc(packet), []).append(read_sequence_number(packet))
        offset = payload_offset(packet)
        stamped.append(read_send_stamp(packet[offset:offset + 32]) is not None)
        counted(packet, now)

    participant.subscriber.on_rtp = on_rtp  # type: ignore[method-assign]


async def test_one_publisher_to_two_subscribers_through_janus(janus: JanusServer) -> None:
    ip = janus.media_ip
    seen: list[dict[int, list[int]]] = [{}, {}]
    stamped: list[list[bool]] = [[], []]
    with trio.fail_after(60):
        async with JanusParticipant.connect(janus.url, janus.room, "pub", bind_host=ip) as publisher, \
                JanusParticipant.connect(janus.url, janus.room, "sub_0", bind_host=ip) as sub_0, \
                JanusParticipant.connect(janus.url, janus.room, "sub_1", bind_host=ip) as sub_1, \
                trio.open_nursery() as senders:
            publications = await publisher.publish(video=True, audio=True, bitrate=300_000, simulcast=True)
            assert [p.kind for p in publications] == ["video", "audio"]
            for publication in publications:
                sender = send_synthetic_video if publication.kind == "video" else send_synthetic_audio
                senders.start_soon(sender, publication)
            subscribers = (sub_0, sub_1)
            for index, subscriber in enumerate(subscribers):
                _recording(subscriber, seen[index], stamped[index])
                feeds = await subscriber.wait_for_feeds(1)
                assert feeds == [publisher.feed_id]
                await subscriber.subscribe(feeds)
            for subscriber in subscribers:
                await subscriber.wait_connected()
                while len(subscriber.subscriptions) < 2 or \
                        min(t.stats.packets for t in subscriber.subscriptions.values()) < ENOUGH:
                    await trio.sleep(0.1)
            senders.cancel_scope.cancel()
            assert publisher.errors == sub_0.errors == sub_1.errors == []
            for subscriber in subscribers:
                kinds = sorted(t.kind for t in subscriber.subscriptions.values())
                assert kinds == ["audio", "video"]
                assert subscriber.unknown_ssrc_packets == 0
                for track in subscriber.subscriptions.values():
                    assert track.stats.lost == 0
    for index in range(2):
        assert all(stamped[index]) and len(stamped[index]) >= 2 * ENOUGH
        # One SSRC per track from Janus (it rewrites simulcast layers onto its own stream).
        assert len(seen[index]) == 2
        for ssrc, sequence in seen[index].items():
            steps = {(b - a) & 0xFFFF for a, b in zip(sequence, sequence[1:])}
            assert steps == {1}, f"subscriber {index} SSRC {ssrc}: sequence steps {sorted(steps)[:10]}"
