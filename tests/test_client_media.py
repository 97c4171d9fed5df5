"""Our client end to end through the project's server with its real media stack.

Two clients on 127.0.0.1: one publishes Opus-sized audio and simulcast VP8-framed
video from ``trio_sfu.client.senders``; the other is auto-subscribed. Everything
between them is real: our publisher offer answered by the server's negotiator,
the server's subscriber offer answered by our client, ICE (controlling) against
the server's ICE-lite mux, DTLS as client on both PCs, SRTP both ways, and the
server's forwarding. What the assertions prove: both tracks arrive at the
subscriber under the sids the publisher was given, with packets on one SSRC per
track, no sequence gap on loopback that the kernel did not count dropping (a
receive buffer that overflowed while its reader was starved: tests count what
arrives after the first packet and wait on counters, never on the clock), the
publisher's send stamps intact in the payload (so the latency measured is real),
and both clients leave without a task surviving the server.
"""

from __future__ import annotations


import pytest
import trio

from rtp.peer_transport import IceMode
import server_fixtures
from server_fixtures import mint_token
from trio_sfu.client import LiveKitClient
from trio_sfu.client.senders import send_synthetic_audio, send_synthetic_video
from trio_sfu.sockstat import socket_drops



def media_server():
    """The server with its media stack on loopback; server_fixtures' leak check runs at exit
    (tasks, sockets, rooms, track sources and their subscribers)."""
    return server_fixtures.media_server()


def kernel_drops(server, *clients: LiveKitClient) -> int:
    """Datagrams the kernel dropped on the server's UDP socket and the clients' PC sockets (receive
    buffers full while a reader was starved of CPU): the only loss loopback may show. One dropped
    on its way into the server is lost to every subscriber; here there is one."""
    counts = [socket_drops(server.media.mux.sock)]
    counts += [pc.socket_drops() for c in clients for pc in (c.publisher_pc, c.subscriber_pc) if pc is not None]
    assert None not in counts, "the kernel's drop counts are unreadable here (Linux /proc/net/udp)"
    return sum(counts)


async def until(condition, timeout: float = 20.0) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.02)


async def test_one_publishes_audio_and_simulcast_video_the_other_receives() -> None:
    async with media_server() as server:
        async with LiveKitClient.connect(server.url, mint_token("sub")) as subscriber, \
                LiveKitClient.connect(server.url, mint_token("pub")) as publisher:
            # Connected before anything is published: the server's first offer (data channel only)
            # already gives the subscriber PC its transport.
            await subscriber.wait_connected(timeout=10)
            assert subscriber.subscriptions == {}
            audio = await publisher.publish_audio()
            video = await publisher.publish_video(width=640, height=360, bitrate=600_000, simulcast=True)
            async with trio.open_nursery() as senders:
                # Sent until enough has arrived, counted from the first packet on: however long
                # the PCs take to come up on a busy machine, the counts below are reached.
                senders.start_soon(send_synthetic_audio, audio, 60.0)
                senders.start_soon(send_synthetic_video, video, 60.0)
                tracks = []
                with trio.fail_after(15):
                    async for track in subscriber.tracks():
                        tracks.append(track)
                        if len(tracks) == 2:
                            break
                    for track in tracks:
                        await track.first_packet.wait()
                by_sid = {t.sid: t for t in tracks}
                received_audio, received_video = by_sid.get(audio.sid), by_sid.get(video.sid)
                assert received_audio is not None and received_video is not None, (by_sid, audio.sid, video.sid)
                # RTCP both ways too: our SRs (one per stream per second) reached the SFU, whose RRs
                # came back with our SR's LSR echoed, giving a round trip; our RRs went out too.
                await until(lambda: received_audio.stats.packets >= 50 and received_video.stats.packets >= 30
                            and publisher.sender_reports_sent >= 4 and subscriber.receiver_reports_sent >= 1
                            and audio.receiver_reports >= 1 and video.receiver_reports >= 1
                            and audio.rtt_ms is not None)
                senders.cancel_scope.cancel()
            drops = kernel_drops(server, subscriber, publisher)

            assert {t.participant_sid for t in tracks} == {publisher.participant_sid}
            assert received_audio.kind == "audio" and received_video.kind == "video"
            for track in tracks:
                # No gap the SFU made: whatever is missing, the kernel counted dropping.
                assert track.stats.lost <= drops, (track.sid, track.stats.expected, track.stats.packets, drops)
                # Every payload kept our stamp: one latency sample per packet (loopback: well under 1 s).
                assert len(track.stats.latencies_ms) == track.stats.packets
                assert 0 <= track.stats.latency_percentile(0.5) < 1000
            assert subscriber.unknown_ssrc_packets == 0
            # Our server is ICE-lite: both of our PCs control ICE, and we answered without a=ice-lite.
            assert subscriber.subscriber_pc.transport.ice_mode is IceMode.CONTROLLING
            assert publisher.publisher_pc.transport.ice_mode is IceMode.CONTROLLING
            # A loopback round trip from LSR/DLSR: a real number of milliseconds (a unit error
            # would be off by orders of magnitude), bounded for a loaded machine.
            assert 0 <= audio.rtt_ms < 1000
            assert audio.packets_sent >= 50 and video.packets_sent >= 30
            assert not [e for e in subscriber.errors + publisher.errors if "refused" in e], (
                subscriber.errors, publisher.errors)


async def test_wrong_fingerprint_in_answer_fails_the_publisher_pc() -> None:
    """A publisher answer whose fingerprint is not the server's certificate's: our DTLS client
    must refuse the server, the PC fails, the client reports it and the track never gets ready."""
    import re

    async with media_server() as server:
        async with LiveKitClient.connect(server.url, mint_token("pub")) as client:
            dispatch = client._dispatch

            async def tampering_dispatch(response):
                if response.WhichOneof("message") == "answer":
                    response.answer.sdp = re.sub(
                        r"a=fingerprint:sha-256 [0-9A-Fa-f:]+", "a=fingerprint:sha-256 " + ":".join(["00"] * 32),
                        response.answer.sdp)
                await dispatch(response)

            client._dispatch = tampering_dispatch
            audio = await client.publish_audio()
            with trio.fail_after(10):
                while not any("publisher PC failed" in e for e in client.errors):
                    await trio.sleep(0.02)
            assert not client.publisher_pc.connected.is_set()
            assert "DTLS" in client.publisher_pc.failure
            with pytest.raises(trio.TooSlowError):
                await audio.wait_ready(timeout=0.2)
            assert not audio.send_rtp(b"\xf8" + bytes(40), timestamp=0)


async def test_subscriber_counts_packets_the_publisher_never_sent_as_lost() -> None:
    """Every 10th audio packet is built (taking its sequence number) but not sent: the SFU
    forwards the gaps, and the subscriber's loss count must equal the packets missing."""
    async with media_server() as server:
        async with LiveKitClient.connect(server.url, mint_token("sub")) as subscriber, \
                LiveKitClient.connect(server.url, mint_token("pub")) as publisher:
            audio = await publisher.publish_audio()
            await audio.wait_ready()
            pc = publisher.publisher_pc
            send = pc.send_rtp
            dropped: list[int] = []

            def lossy_send(packet: bytes) -> bool:
                seq = int.from_bytes(packet[2:4], "big")
                if seq % 10 == 0:
                    dropped.append(seq)
                    return True
                return send(packet)

            pc.send_rtp = lossy_send
            async with trio.open_nursery() as senders:
                senders.start_soon(send_synthetic_audio, audio, 60.0)
                (track,) = await subscriber.wait_for_tracks(1)
                with trio.fail_after(10):
                    await track.first_packet.wait()
                await until(lambda: track.stats.packets >= 40)  # counted from its first packet
                senders.cancel_scope.cancel()
            drops = kernel_drops(server, subscriber, publisher)
            stats = track.stats
            assert stats.packets >= 40 and dropped
            # Gaps inside what the subscriber saw: the dropped packets after its first arrival
            # (and any datagram the kernel dropped, which it counts).
            assert stats.lost == stats.expected - stats.packets > 0
            assert abs(stats.lost - stats.packets / 9) <= 2 + drops, (stats.lost, stats.packets, len(dropped), drops)


async def test_track_goes_inactive_when_its_publisher_leaves() -> None:
    async with media_server() as server:
        async with LiveKitClient.connect(server.url, mint_token("sub")) as subscriber:
            async with LiveKitClient.connect(server.url, mint_token("pub")) as publisher:
                audio = await publisher.publish_audio()
                async with trio.open_nursery() as senders:
                    senders.start_soon(send_synthetic_audio, audio, 0.5)
                    (track,) = await subscriber.wait_for_tracks(1)
                    with trio.fail_after(10):
                        await track.first_packet.wait()
                assert track.active and track.sid == audio.sid
            # The server renegotiates the subscriber PC without the departed publisher's track.
            with trio.fail_after(10):
                while track.active:
                    await trio.sleep(0.02)
            assert not subscriber.errors, subscriber.errors


async def test_late_subscriber_gets_video_through_a_keyframe_request() -> None:
    """Key frames only on request (the periodic interval is 1000 s): a subscriber joining after the
    first key frame only sees video if the SFU's PLI reaches our publisher and it answers with one."""
    async with media_server() as server:
        async with LiveKitClient.connect(server.url, mint_token("pub")) as publisher:
            video = await publisher.publish_video(width=320, height=180, bitrate=200_000, simulcast=False)
            async with trio.open_nursery() as senders:
                senders.start_soon(lambda: send_synthetic_video(video, 6.0, keyframe_interval=1000.0))
                await video.wait_ready()
                await trio.sleep(0.5)  # the first key frame is long gone
                requests_before = video.keyframe_requests
                async with LiveKitClient.connect(server.url, mint_token("late")) as late:
                    (track,) = await late.wait_for_tracks(1)
                    with trio.fail_after(5):
                        await track.first_packet.wait()
                    assert video.keyframe_requests > requests_before
                senders.cancel_scope.cancel()
