"""The transceiver cache on the real server (issue 5): a published track whose source closes
expected-to-resume and comes back under the same track id through a new source — what a
migration hand-back does on a node — reaches the subscriber on the same m-line and SSRC, with
sequence numbers and timestamps continuing where they stopped.

Everything is real: two of our clients over loopback against the in-process server with its
media stack; the subscriber's offers are read as the client received them and its RTP as it
arrived (after SRTP). `ParticipantMedia.restart_published_track` is the server's hand-back step:
the old source closes with expected-to-resume, the publisher's next packet publishes a fresh
receiver (a new TrackSource) for the same track id.
"""

from __future__ import annotations

import trio
from livekit.protocol import rtc

from rtp.packet import read_sequence_number, read_ssrc, read_timestamp
from sdp.model import Ssrc
from sdp.parser import parse as parse_sdp
from server_fixtures import media_server, mint_token
from trio_sfu.client import LiveKitClient
from trio_sfu.client.senders import send_synthetic_audio
from trio_sfu.tracks import SourceOrigin



def audio_lines(sdp: str, track_sid: str) -> list[tuple[str, tuple[int, ...]]]:
    """(mid, SSRCs) of every m-line of `sdp` that sends `track_sid`."""
    out = []
    for m in parse_sdp(sdp).media:
        if m.kind != "audio" or m.rejected or not m.direction.sends:
            continue
        ssrc_track = {line.ssrc for line in m.all(Ssrc) if line.attribute == "msid" and line.value.endswith(" " + track_sid)}
        if (m.msid is not None and m.msid.track_id == track_sid) or ssrc_track:
            out.append((m.mid or "", tuple(sorted(set(m.ssrcs)))))
    return out


async def test_source_closed_expected_to_resume_then_republished_keeps_mid_ssrc_and_numbering(monkeypatch) -> None:
    received: dict[int, list[tuple[int, int, int]]] = {}  # id(client) -> (ssrc, seq, ts) in order
    original = LiveKitClient._on_subscriber_rtp

    def recording(self: LiveKitClient, packet: bytes, now: float) -> None:
        received.setdefault(id(self), []).append((read_ssrc(packet), read_sequence_number(packet), read_timestamp(packet)))
        original(self, packet, now)

    monkeypatch.setattr(LiveKitClient, "_on_subscriber_rtp", recording)

    async with media_server() as server:
        async with LiveKitClient.connect(server.url, mint_token("sub")) as subscriber, \
                LiveKitClient.connect(server.url, mint_token("pub")) as publisher:
            offers: list[str] = []
            dispatch = subscriber._dispatch

            async def recording_dispatch(response: rtc.SignalResponse) -> None:
                if response.WhichOneof("message") == "offer":
                    offers.append(response.offer.sdp)
                await dispatch(response)

            subscriber._dispatch = recording_dispatch  # type: ignore[method-assign]
            await subscriber.wait_connected(timeout=10)
            audio = await publisher.publish_audio()
            packets = received.setdefault(id(subscriber), [])
            async with trio.open_nursery() as senders:
                senders.start_soon(send_synthetic_audio, audio, 20.0)
                (track,) = await subscriber.wait_for_tracks(1)
                with trio.fail_after(10):
                    while len(packets) < 25:
                        await trio.sleep(0.02)
                (room,) = server.media.rooms.values()
                (first_source,) = room.track_manager.sources(audio.sid)
                sub_session = room.sessions[subscriber.participant_sid]
                first_down = sub_session.subscriptions[audio.sid].down
                assert first_down is not None
                (line_before,) = audio_lines(offers[-1], audio.sid)
                offers_before = len(offers)

                assert room.sessions[publisher.participant_sid].restart_published_track(audio.sid)
                # The old source is gone only after the subscriber let go of it, and the
                # subscriber's m-line waits in its cache, idle, under the track id.
                assert first_source.state.value == "closed" and not first_source.subscriber_ids
                assert audio.sid not in sub_session.subscriptions
                cached = sub_session.sub_offer.table.cache.peek(audio.sid)
                assert cached is not None and (cached.mid, (cached.ssrc,)) == (line_before[0], line_before[1][:1])
                restart_at = len(packets)

                # The publisher's next packet publishes a new source for the same track id; the
                # subscriber rebinds through it on the cached m-line and forwarding resumes.
                with trio.fail_after(10):
                    while len(packets) < restart_at + 25:
                        await trio.sleep(0.02)
                senders.cancel_scope.cancel()
            await trio.sleep(0.1)  # the last packets in flight

            (second_source,) = room.track_manager.sources(audio.sid)
            assert second_source is not first_source and second_source.origin is SourceOrigin.LOCAL
            assert second_source.has_subscriber(subscriber.participant_sid)
            second_down = sub_session.subscriptions[audio.sid].down
            assert second_down is not None and second_down is not first_down

            # The cached m-line came back with the same mid, SSRC and track, so the client's view
            # is already right: no offer at all, hence never a second m-line for the track.
            assert len(offers) == offers_before, "a reused m-line needs no renegotiation"
            for sdp in offers:
                assert len(audio_lines(sdp, audio.sid)) <= 1
            assert track.mid == line_before[0] and track.active
            assert {ssrc for ssrc, _, _ in packets} == {line_before[1][0]}
            assert subscriber.unknown_ssrc_packets == 0

            # Continuous numbering across the switch: every sequence number exactly one past the
            # previous, timestamps moving forward by no more than the time that passed.
            for (_, seq0, ts0), (_, seq1, ts1) in zip(packets, packets[1:]):
                assert (seq1 - seq0) & 0xFFFF == 1, (seq0, seq1)
                assert 0 < (ts1 - ts0) & 0xFFFFFFFF < 48000 * 2, (ts0, ts1)
            assert track.stats.lost == 0
            # The new down track took over the old one's rewrite state (its send count too).
            assert second_down.counters.packets_sent == len(packets)
