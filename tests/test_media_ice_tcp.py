"""ICE over TCP against the real server (trio_sfu.media.ice_tcp), with our client's PCs tunnelled.

Each client PC here is a real ICE-TCP client to the server (tests/ice_tcp_peer.py): its checks,
DTLS, SRTP and SCTP go RFC 4571-framed over a TCP connection to the server's ICE/TCP port, and
nothing reaches the server's UDP port. What the assertions prove: the server advertises its
passive TCP candidate below its UDP one in answers and trickles; a connection is identified by
its first authenticated check and becomes the transport's selected path; DTLS and media ride on
it both ways (publisher in, subscriber out) alongside a UDP participant; and bad input (framing,
garbage, floods, silence, a reader too slow for its media) is refused or dropped, bounded and
counted, while the other participants' media keeps flowing. The server's leak check proves every
connection ended with its owner.

No aiortc peer here: aioice (0.13) gathers UDP host candidates only and pairs a remote candidate
only with a local one of the same transport (`Candidate.can_pair_with`); its `turn_transport="tcp"`
is TURN over TCP, not ICE-TCP. The independent ICE-TCP peers are Chromium and the `livekit` SDK's
libwebrtc (tests/e2e/test_e2e_ice_tcp.py).
"""

from __future__ import annotations

import contextlib
import logging
from typing import AsyncIterator, Callable

import trio
import trio.testing
from aioice import stun as aioice_stun
from livekit.protocol import models, rtc

import server_fixtures
from ice_tcp_peer import TcpTunnel
from rtp.peer_transport_events import TcpAddress
from rtp.tcp_framing import encode_frame
from server_fixtures import ice_tcp_server, mint_token
from trio_sfu.client import LiveKitClient
from trio_sfu.client.senders import send_synthetic_audio, send_synthetic_video
from trio_sfu.media import ice_tcp
from trio_sfu.media.ice_tcp import IceTcpLimits
from trio_sfu.media.service import candidates_for, tcp_candidates_for


async def until(condition, timeout: float = 20.0) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.02)


def count(server, name: str) -> int:
    return server.metrics.snapshot().get(name, 0)


def tunnel_to(server, made: list[TcpTunnel] | None = None):
    media = server.media
    return TcpTunnel.binder(media.reachable[0], (media.reachable[0][0], media.tcp_port), made)


def server_transports(server, identity: str):
    room = server.media.room_by_name("room1")
    for member in room.sessions.values():
        if member.participant.identity == identity:
            return member.transports
    raise AssertionError(f"{identity} has no media session")


async def stream_until_received(publisher: LiveKitClient, *subscribers: LiveKitClient, audio_packets: int = 40,
                                video_packets: int = 20) -> list[dict]:
    """Publish audio and video from `publisher` until every subscriber got that much of each;
    each subscriber's tracks by sid."""
    audio = await publisher.publish_audio()
    video = await publisher.publish_video(width=640, height=360, bitrate=400_000, simulcast=False)
    received: list[dict] = []
    async with trio.open_nursery() as senders:
        senders.start_soon(send_synthetic_audio, audio, 60.0)
        senders.start_soon(send_synthetic_video, video, 60.0)
        for subscriber in subscribers:
            by_sid = {}
            with trio.fail_after(20):
                async for track in subscriber.tracks():
                    by_sid[track.sid] = track
                    if len(by_sid) == 2:
                        break
            assert set(by_sid) == {audio.sid, video.sid}
            assert {t.participant_sid for t in by_sid.values()} == {publisher.participant_sid}
            received.append(by_sid)
        await until(lambda: all(r[audio.sid].stats.packets >= audio_packets
                                and r[video.sid].stats.packets >= video_packets for r in received))
        senders.cancel_scope.cancel()
    return received


async def test_candidates_offer_ice_tcp_passive_below_udp() -> None:
    async with ice_tcp_server() as server:
        media = server.media
        udp, tcp = media.candidates
        ip, udp_port = media.reachable[0]
        assert udp.split()[2:] == ["udp", udp.split()[3], ip, str(udp_port), "typ", "host"]
        fields = tcp.split()
        assert fields[2] == "tcp" and fields[4:] == [ip, str(media.tcp_port), "typ", "host", "tcptype", "passive"]
        assert int(fields[3]) < int(udp.split()[3])
        assert fields[0] != udp.split()[0]  # its own foundation
        async with LiveKitClient.connect(server.url, mint_token("pub")) as publisher:
            seen = []
            original = publisher._dispatch

            async def record(response):
                kind = response.WhichOneof("message")
                if kind == "trickle":
                    seen.append(("trickle", response.trickle.target, response.trickle.candidateInit))
                elif kind in ("answer", "offer"):
                    seen.append((kind, None, getattr(response, kind).sdp))
                await original(response)

            publisher._dispatch = record
            await publisher.publish_audio()
            # In the subscriber offer and the publisher answer as in the trickles for both PCs,
            # as LiveKit sends them.
            wanted = {("trickle", rtc.SignalTarget.PUBLISHER), ("trickle", rtc.SignalTarget.SUBSCRIBER),
                      ("answer", None), ("offer", None)}
            await until(lambda: wanted <= {(kind, target) for kind, target, text in seen if tcp in text})
            # The SDPs carry it as an a=candidate line.
            assert any(f"a=candidate:{tcp}" in text for kind, _, text in seen if kind == "answer")


def test_tcp_candidates_of_a_multihomed_host_follow_the_udp_order_below_udp() -> None:
    addresses = ["192.168.1.5", "10.0.0.7", "127.0.0.1"]
    udp = candidates_for(addresses, 7882)
    tcp = tcp_candidates_for(addresses, 7881, first_foundation=len(udp) + 1)
    udp_priority = [int(c.split()[3]) for c in udp]
    tcp_priority = [int(c.split()[3]) for c in tcp]
    # Each list in the address order, loopback last; each TCP candidate below the UDP one of
    # its address and below every UDP candidate of a real address.
    assert udp_priority == sorted(udp_priority, reverse=True) and len(set(udp_priority)) == 3
    assert tcp_priority == sorted(tcp_priority, reverse=True) and len(set(tcp_priority)) == 3
    assert all(t < u for t, u in zip(tcp_priority, udp_priority))
    assert max(tcp_priority) < min(udp_priority[:2])
    assert [c.split()[4] for c in tcp] == addresses
    assert all(c.endswith("typ host tcptype passive") and " 7881 " in c for c in tcp)
    assert len({c.split()[0] for c in udp + tcp}) == 6  # a foundation each
    # RFC 6544 §4.2: host type preference, direction 4 (passive), other-pref 8191 for the first.
    assert int(tcp[0].split()[3]) == (126 << 24) | (((4 << 13) | 8191) << 8) | 255


async def test_tcp_port_zero_turns_ice_tcp_off() -> None:
    """LiveKit's `rtc.tcp_port: 0`: no listener and no TCP candidate."""
    async with server_fixtures.media_server() as server:
        assert server.config.rtc.tcp_port == 0
        assert server.media.ice_tcp is None and server.media.tcp_port is None
        assert server.media.candidates and all(" udp " in c and "tcp" not in c for c in server.media.candidates)


async def test_publisher_and_subscriber_over_ice_tcp_with_a_udp_participant() -> None:
    async with ice_tcp_server() as server:
        tunnels: list[TcpTunnel] = []
        async with LiveKitClient.connect(server.url, mint_token("tcp-sub"),
                                         bind_datagram=tunnel_to(server, tunnels)) as tcp_sub, \
                LiveKitClient.connect(server.url, mint_token("tcp-pub"),
                                      bind_datagram=tunnel_to(server, tunnels)) as tcp_pub, \
                LiveKitClient.connect(server.url, mint_token("udp-sub")) as udp_sub:
            # The TCP publisher's media reaches the TCP subscriber and the UDP one.
            await stream_until_received(tcp_pub, tcp_sub, udp_sub)
            # On the server each TCP client's PCs chose its TCP connection, and hold only it.
            for identity, pc in (("tcp-pub", "publisher"), ("tcp-sub", "subscriber"), ("tcp-pub", "subscriber")):
                endpoint = getattr(server_transports(server, identity), pc)
                selected = endpoint.transport.selected_address
                assert type(selected) is TcpAddress, (identity, pc, selected)
                assert list(endpoint.tcp_paths) == [selected]
            udp = server_transports(server, "udp-sub").subscriber
            assert type(udp.transport.selected_address) is tuple and not udp.tcp_paths
            assert count(server, ice_tcp.ICE_TCP_IDENTIFIED) == 3
            assert count(server, ice_tcp.ICE_TCP_FRAMES_SENT) > 50
            # The clients' side: every datagram went through a tunnel, none anywhere else.
            assert len(tunnels) == 3 and all(t.sent_elsewhere == 0 for t in tunnels)
            assert not tcp_pub.errors and not tcp_sub.errors


# ---- bad input ---------------------------------------------------------------------------------


def binding_request(username: str, key: bytes) -> bytes:
    """An ICE check as a client sends it: USERNAME, PRIORITY, ICE-CONTROLLING, integrity, fingerprint."""
    message = aioice_stun.Message(aioice_stun.Method.BINDING, aioice_stun.Class.REQUEST)
    message.attributes["USERNAME"] = username
    message.attributes["PRIORITY"] = 1853824767
    message.attributes["ICE-CONTROLLING"] = 0x1234
    message.add_message_integrity(key)
    message.add_fingerprint()
    return bytes(message)


async def connect(server, local: str | None = None) -> trio.SocketStream:
    ip = server.media.reachable[0][0]
    return await trio.open_tcp_stream(ip, server.media.tcp_port, local_address=local)


async def until_closed(stream: trio.SocketStream, timeout: float = 10.0) -> bytes:
    """Everything the server sent until it closed the connection."""
    received = b""
    with trio.fail_after(timeout):
        while True:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                break  # reset: closed with our bytes unread
            if not data:
                break
            received += data
    await stream.aclose()
    return received


@contextlib.asynccontextmanager
async def media_flowing(server) -> AsyncIterator[Callable[[], int]]:
    """A UDP publisher streaming to a UDP subscriber for the body; yields a function giving the
    packets the subscriber received so far (to show bad TCP clients do not touch them)."""
    async with LiveKitClient.connect(server.url, mint_token("udp-sub")) as subscriber, \
            LiveKitClient.connect(server.url, mint_token("udp-pub")) as publisher:
        audio = await publisher.publish_audio()
        async with trio.open_nursery() as senders:
            senders.start_soon(send_synthetic_audio, audio, 120.0)
            with trio.fail_after(20):
                async for track in subscriber.tracks():
                    break
            await until(lambda: track.stats.packets >= 10)
            yield lambda: track.stats.packets
            senders.cancel_scope.cancel()


async def still_flowing(received: Callable[[], int]) -> None:
    before = received()
    await until(lambda: received() >= before + 20)


async def test_bad_framing_garbage_and_unknown_checks_are_closed_and_counted() -> None:
    limits = IceTcpLimits(max_failed_checks=3, identify_timeout=1.0)
    async with ice_tcp_server(limits) as server, media_flowing(server) as received:
        real_ufrag = server_transports(server, "udp-pub").pub_local.ice_ufrag

        # A length over the cap: here what an HTTP client sends ("GE" = 18245 bytes).
        stream = await connect(server)
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: sfu\r\n\r\n")
        assert await until_closed(stream) == b""
        assert count(server, ice_tcp.ICE_TCP_OVERSIZED_FRAME) == 1

        # A well-framed DTLS ClientHello-looking record before any check.
        stream = await connect(server)
        await stream.send_all(encode_frame(b"\x16\xfe\xfd" + bytes(60)))
        assert await until_closed(stream) == b""
        assert count(server, ice_tcp.ICE_TCP_NOT_STUN) == 1

        # Checks for a transport we do not have: no answer, closed after the third.
        stream = await connect(server)
        for _ in range(3):
            await stream.send_all(encode_frame(binding_request("nobody:x", b"k" * 22)))
        assert await until_closed(stream) == b""
        assert count(server, ice_tcp.ICE_TCP_UNKNOWN_UFRAG) == 3

        # Checks naming a real transport with the wrong password: answered 401, never a path.
        stream = await connect(server)
        for _ in range(3):
            await stream.send_all(encode_frame(binding_request(f"{real_ufrag}:x", b"wrong password 22 chars")))
        answers = await until_closed(stream)
        assert count(server, ice_tcp.ICE_TCP_UNAUTHENTICATED) == 3
        first = aioice_stun.parse_message(answers[2:2 + int.from_bytes(answers[:2], "big")])
        assert first.message_class == aioice_stun.Class.ERROR and first.attributes["ERROR-CODE"][0] == 401
        assert not server_transports(server, "udp-pub").publisher.tcp_paths

        # Silence: closed at the identify deadline.
        stream = await connect(server)
        await stream.send_all(b"\x00")  # half a length prefix, then nothing
        assert await until_closed(stream) == b""
        assert count(server, ice_tcp.ICE_TCP_IDENTIFY_TIMEOUT) == 1

        assert count(server, ice_tcp.ICE_TCP_CLOSED_UNIDENTIFIED) == 5
        assert count(server, ice_tcp.ICE_TCP_IDENTIFIED) == 0
        assert server.media.ice_tcp.unidentified_total == 0 and server.media.ice_tcp.unidentified == {}
        await still_flowing(received)


async def test_a_connection_flood_is_bounded_per_address_and_in_total() -> None:
    limits = IceTcpLimits(max_unidentified=6, max_unidentified_per_ip=4, identify_timeout=30.0)
    async with ice_tcp_server(limits) as server, media_flowing(server) as received:
        listener = server.media.ice_tcp
        flood = [await connect(server) for _ in range(10)]
        await until(lambda: count(server, ice_tcp.ICE_TCP_ACCEPTED) == 10)
        assert count(server, ice_tcp.ICE_TCP_REFUSED_PER_IP_CAP) == 6
        assert listener.unidentified == {"127.0.0.1": 4}
        # From another address: what the total leaves (2 of 4).
        others = [await connect(server, local="127.0.0.2") for _ in range(4)]
        await until(lambda: count(server, ice_tcp.ICE_TCP_ACCEPTED) == 14)
        assert count(server, ice_tcp.ICE_TCP_REFUSED_TOTAL_CAP) == 2
        assert listener.unidentified == {"127.0.0.1": 4, "127.0.0.2": 2} and listener.unidentified_total == 6
        await still_flowing(received)
        # The refused were closed at once; the held ones are still open.
        closed = 0
        for stream in flood + others:
            with trio.move_on_after(0.5):
                if await stream.receive_some(1) == b"":
                    closed += 1
        assert closed == 8
        for stream in flood + others:
            await stream.aclose()
        await until(lambda: listener.unidentified_total == 0)
        assert count(server, ice_tcp.ICE_TCP_CLOSED_UNIDENTIFIED) == 6
        # The bounds free up: an ICE-TCP client connects afterwards.
        async with LiveKitClient.connect(server.url, mint_token("tcp-late"), bind_datagram=tunnel_to(server)) as late:
            await late.wait_connected(timeout=10)
        assert count(server, ice_tcp.ICE_TCP_IDENTIFIED) == 1


async def test_a_slow_tcp_reader_is_dropped_and_others_keep_their_media() -> None:
    limits = IceTcpLimits(max_send_queue_bytes=24 * 1024, socket_send_buffer=8 * 1024)
    async with ice_tcp_server(limits) as server:
        tunnels: list[TcpTunnel] = []
        async with LiveKitClient.connect(server.url, mint_token("slow"), bind_datagram=tunnel_to(server, tunnels)) as slow, \
                LiveKitClient.connect(server.url, mint_token("udp-sub")) as udp_sub, \
                LiveKitClient.connect(server.url, mint_token("pub")) as publisher:
            video = await publisher.publish_video(width=640, height=360, bitrate=1_500_000, simulcast=False)
            async with trio.open_nursery() as senders:
                senders.start_soon(send_synthetic_video, video, 120.0)
                tracks = []
                for subscriber in (slow, udp_sub):
                    with trio.fail_after(20):
                        async for track in subscriber.tracks():
                            tracks.append(track)
                            break
                slow_track, udp_track = tracks
                await until(lambda: slow_track.stats.packets >= 10 and udp_track.stats.packets >= 10)
                # The TCP subscriber stops reading: the kernel's buffers fill, then our queue.
                (tunnel,) = tunnels
                tunnel.paused = True
                await until(lambda: count(server, ice_tcp.ICE_TCP_SEND_OVERFLOW) == 1)
                path_owner = server_transports(server, "slow").subscriber
                await until(lambda: not path_owner.tcp_paths)  # its connection ended with the drop
                before = udp_track.stats.packets
                await until(lambda: udp_track.stats.packets >= before + 50)
                # Media for the dropped path is counted, not queued anywhere.
                await until(lambda: count(server, ice_tcp.ICE_TCP_SEND_NO_PATH) > 0)
                senders.cancel_scope.cancel()
        assert count(server, ice_tcp.ICE_TCP_PATH_CLOSED) >= 1


async def receive_frame(stream: trio.SocketStream) -> bytes:
    data = b""
    with trio.fail_after(10):
        while len(data) < 2 or len(data) < 2 + int.from_bytes(data[:2], "big"):
            chunk = await stream.receive_some(65536)
            assert chunk, "closed before a whole frame"
            data += chunk
    return data[2:2 + int.from_bytes(data[:2], "big")]


async def test_an_identified_connection_belongs_to_its_participant_and_ends_with_it() -> None:
    """Raw ICE-TCP connections with the real credentials of a UDP participant's publisher PC: each
    is identified by its check (answered over TCP), becomes one more path of that transport (not
    selected: the client nominated UDP), ends alone on a frame over the cap, and ends with the
    participant when the server removes it, though the client side still holds it open."""
    async with ice_tcp_server() as server:
        async with LiveKitClient.connect(server.url, mint_token("pub")) as publisher, \
                LiveKitClient.connect(server.url, mint_token("sub")) as subscriber:
            await stream_until_received(publisher, subscriber, audio_packets=10, video_packets=5)
            transports = server_transports(server, "pub")
            endpoint = transports.publisher
            username = f"{transports.pub_local.ice_ufrag}:{publisher.publisher_pc.local.ice_ufrag}"
            key = transports.pub_local.ice_pwd.encode()

            streams = []
            for index in range(2):
                stream = await connect(server)
                await stream.send_all(encode_frame(binding_request(username, key)))
                answer = aioice_stun.parse_message(await receive_frame(stream))
                assert answer.message_class == aioice_stun.Class.RESPONSE
                assert answer.attributes["XOR-MAPPED-ADDRESS"] == stream.socket.getsockname()[:2]
                await until(lambda: count(server, ice_tcp.ICE_TCP_IDENTIFIED) == index + 1)
                streams.append(stream)
            paths = {TcpAddress(*s.socket.getsockname()[:2]) for s in streams}
            await until(lambda: set(endpoint.tcp_paths) == paths)
            assert type(endpoint.transport.selected_address) is tuple  # media stays on UDP

            # A frame over the cap on one: that path alone ends.
            doomed, kept = streams
            await doomed.send_all(b"\xff\xff" + bytes(100))
            assert await until_closed(doomed) == b""
            await until(lambda: set(endpoint.tcp_paths) == {TcpAddress(*kept.socket.getsockname()[:2])})
            assert count(server, ice_tcp.ICE_TCP_OVERSIZED_FRAME) == 1

            # The participant goes (as RemoveParticipant does it): its connection goes with it.
            room = server.registry.rooms["room1"]
            room.participants["pub"].close(models.DisconnectReason.PARTICIPANT_REMOVED, send_leave=True)
            assert await until_closed(kept) == b""
            await until(lambda: count(server, ice_tcp.ICE_TCP_PATH_CLOSED) == 2)


def test_flood_lines_are_logged_once_a_second_with_what_was_left_out(caplog) -> None:
    async def main() -> list[bool]:
        flood = ice_tcp.FloodLog(interval=1.0)
        logged = [flood.log(logging.WARNING, "refused", {"remote": f"192.0.2.1:{port}"}) for port in range(5)]
        await trio.sleep(1.0)
        logged.append(flood.log(logging.WARNING, "refused", {"remote": "192.0.2.1:9"}))
        logged.append(flood.log(logging.WARNING, "other", {}))
        return logged

    with caplog.at_level(logging.WARNING, logger="trio_sfu.media.ice_tcp"):
        logged = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert logged == [True, False, False, False, False, True, True]
    assert [r.getMessage() for r in caplog.records] == [
        "refused remote=192.0.2.1:0", "refused remote=192.0.2.1:9 suppressed=4", "other"]
