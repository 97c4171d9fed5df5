"""The embedded TURN server in a real server, driven by aioice's TURN client (an independent
implementation, RFC 8656 over UDP and over TLS), relaying to the node's real media port.

The media port's side is the server's own UDP mux with a real ICE-lite `PeerTransport`
registered on it, so a Binding request the client sends through its allocation is answered
by our ICE agent, and the answer's XOR-MAPPED-ADDRESS is the relayed address: the media port
saw the relay, not the client. Then the no-open-relay rule: the same allocation cannot reach a
UDP socket on another loopback port, nor another port of this host.

aioice runs on asyncio in a worker thread; the server runs on Trio in the test.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import socket
import ssl
import struct

import pytest
import trio
from aioice import stun
from aioice.turn import create_turn_endpoint

from rtp.dtls import DtlsCertificate, DtlsRole
from rtp.peer_transport import IceMode, PeerTransport
from trio_sfu.config import ServerConfig, TurnConfig
from trio_sfu.media import turn_server
from trio_sfu.server import Server

API_KEY, API_SECRET = "turnkey", "turnsecret-turnsecret-turnsecret"
SERVER_UFRAG, SERVER_PWD = "srvU", "serverPassword0123456789ab"


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def turn_config(**turn) -> ServerConfig:
    config = ServerConfig(port=0, keys={API_KEY: API_SECRET}, bind_addresses=["127.0.0.1"])
    config.rtc.udp_port = 0
    ports = {"udp_port": free_port(socket.SOCK_DGRAM), "tls_port": free_port(socket.SOCK_STREAM)}
    ports.update(turn)
    config.turn = TurnConfig(enabled=True, relay_range_start=0, relay_range_end=0, **ports)
    return config


class MediaEndpoint:
    """A real lite PeerTransport on the server's UDP mux, as a participant's would be."""

    def __init__(self, server: Server) -> None:
        assert server.media is not None and server.media.mux is not None
        self.mux = server.media.mux
        self.transport = PeerTransport(
            IceMode.LITE, DtlsRole.SERVER, local_ufrag=SERVER_UFRAG, local_pwd=SERVER_PWD,
            certificate=DtlsCertificate.generate(datetime.datetime.now(datetime.timezone.utc)), remote_ufrag=None, remote_pwd=None,
            remote_fingerprints=[("sha-256", "00" * 32)],
        )
        self.transport.start(trio.current_time())
        self.mux.register(self)

    def on_datagram(self, data: bytes, addr, now: float) -> None:
        self.transport.receive_datagram(data, addr, now)
        self.mux.send(self.transport.datagrams_to_send(now))


def binding_request() -> stun.Message:
    request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    request.attributes["USERNAME"] = f"{SERVER_UFRAG}:cliU"
    request.attributes["PRIORITY"] = 0x7E0000FF
    request.attributes["ICE-CONTROLLING"] = 1234
    request.add_message_integrity(SERVER_PWD.encode())
    return request


class Receiver(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.datagrams: asyncio.Queue = asyncio.Queue()
        self.errors: list[Exception] = []

    def datagram_received(self, data, addr) -> None:
        self.datagrams.put_nowait((data, addr))

    def error_received(self, exc) -> None:
        self.errors.append(exc)


async def aioice_session(server_addr, username, password, media_addr, outsiders, *, over, tls_cafile=None):
    """Allocate, check the media port through the relay, then try each outsider address."""
    ssl_context = None
    if tls_cafile is not None:
        ssl_context = ssl.create_default_context(cafile=tls_cafile)
    transport, receiver = await create_turn_endpoint(
        Receiver, server_addr, username, password, ssl=ssl_context, transport="udp" if over == "udp" else "tcp")
    report = {"relayed": transport.get_extra_info("sockname"), "mapped": None, "outsider_errors": 0}
    try:
        request = binding_request()
        transport.sendto(bytes(request), media_addr)
        data, addr = await asyncio.wait_for(receiver.datagrams.get(), 10)
        response = stun.parse_message(data)
        assert response.transaction_id == request.transaction_id and addr == media_addr
        assert response.message_class == stun.Class.RESPONSE
        report["mapped"] = response.attributes["XOR-MAPPED-ADDRESS"]
        for outsider in outsiders:
            transport.sendto(b"let me out", outsider)
        for _ in range(50):
            if len(receiver.errors) >= len(outsiders):
                break
            await asyncio.sleep(0.1)
        report["outsider_errors"] = len(receiver.errors)
        report["error_text"] = [str(e) for e in receiver.errors]
    finally:
        transport.close()
        await asyncio.sleep(0.2)  # let the deletion (Refresh lifetime 0) go out
    return report


@pytest.mark.parametrize("over", ["udp", "tls", "tcp-behind-tls-terminator"])
async def test_aioice_allocates_and_reaches_only_the_media_port(over, nursery):
    # external_tls: a load balancer in front terminates TLS, so tls_port speaks TURN over TCP.
    config = turn_config(external_tls=over == "tcp-behind-tls-terminator")
    server = await nursery.start(Server(config, enable_media=True).run)
    assert server.turn is not None and server.turn.listening
    MediaEndpoint(server)
    media_addr = server.media.reachable[0]
    assert media_addr[0] == "127.0.0.1"
    (ice_server,) = server.turn.ice_servers("PA_turntest")
    assert list(ice_server.urls) == [f"turns:127.0.0.1:{server.turn.tls_port}?transport=tcp",
                                     f"turn:127.0.0.1:{server.turn.udp_port}?transport=udp"]
    # A UDP socket elsewhere on loopback, listening for anything the relay might let out.
    outsider = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await outsider.bind(("127.0.0.1", 0))
    # And this host's other ports: TURN's own, and the signal port (TCP; never relayed either).
    outsiders = [outsider.getsockname(), (media_addr[0], server.turn.udp_port), (media_addr[0], server.port)]
    port = server.turn.udp_port if over == "udp" else server.turn.tls_port
    cafile = server.turn.tls.self_signed_path if over == "tls" else None
    assert over != "tls" or cafile  # no cert configured: a self-signed one, trusted here
    assert (server.turn.tls is None) == (over == "tcp-behind-tls-terminator")

    report = await trio.to_thread.run_sync(lambda: asyncio.run(aioice_session(
        ("127.0.0.1", port), ice_server.username, ice_server.credential, media_addr, outsiders,
        over=over, tls_cafile=cafile)))

    # The media port answered the relay: what it saw as the source is the relayed address.
    assert report["mapped"] == tuple(report["relayed"])
    assert report["relayed"][0] == "127.0.0.1"
    # Each outsider was refused (aioice reports the failed ChannelBind), and nothing arrived.
    assert report["outsider_errors"] == len(outsiders), report
    assert all("403" in text for text in report["error_text"]), report
    with trio.move_on_after(0.5):
        data = await outsider.recv(2048)
        pytest.fail(f"the relay let a datagram out: {data!r}")
    metrics = server.metrics
    server.turn._fold_counters()
    assert metrics.get("turn_forbidden_peer_total") == len(outsiders)
    assert metrics.get("turn_allocations_total") == 1
    assert metrics.get("turn_relayed_to_peer_total") >= 1 and metrics.get("turn_relayed_to_client_total") >= 1
    # The allocation was deleted (Refresh lifetime 0) and its relayed socket closed.
    with trio.fail_after(5):
        while server.turn.relays:
            await trio.sleep(0.05)
    outsider.close()
    server.request_shutdown()


async def test_bad_input_on_udp_is_counted_and_tls_oversized_frames_close_the_connection(nursery, monkeypatch):
    config = turn_config()
    server = await nursery.start(Server(config, enable_media=True).run)
    turn = server.turn
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    junk = [b"", b"\x00", b"\x40\x00\x00\x10abc", b"\x00\x01\x00\x08" + bytes(16), b"\xff" * 200,
            struct.pack("!HHI", 0x0003, 0, 0x2112A442) + bytes(12)]  # Allocate without credentials
    for data in junk:
        if data:
            await sock.sendto(data, ("127.0.0.1", turn.udp_port))
    # Only the credential-less Allocate is answered (401); the rest is dropped and counted.
    with trio.fail_after(5):
        answer = await sock.recv(2048)
    response = stun.parse_message(answer)
    assert response.attributes["ERROR-CODE"][0] == 401
    with trio.fail_after(5):
        while True:
            turn._fold_counters()
            if server.metrics.get("turn_malformed_total") >= 4:
                break
            await trio.sleep(0.05)
    sock.close()

    # TLS: a frame announcing more than a TURN message may hold closes the connection.
    ctx = ssl.create_default_context(cafile=turn.tls.self_signed_path)
    stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", turn.tls_port, ssl_context=ctx)
    await stream.send_all(b"\x4f\xff\xff\xff" + bytes(64))
    with trio.fail_after(5):
        assert await stream.receive_some(100) == b""
    assert server.metrics.get("turn_stream_frame_refused_total") == 1
    await stream.aclose()

    # Clients that connect and never complete their handshake: beyond the handshakes allowed
    # in flight the next is refused on arrival, and each is cut at the deadline.
    monkeypatch.setattr(turn_server, "HANDSHAKE_TIMEOUT", 0.5)
    turn._handshakes = trio.Semaphore(2)
    silent = [await trio.open_tcp_stream("127.0.0.1", turn.tls_port) for _ in range(3)]
    with trio.fail_after(5):
        for tcp in silent:
            assert await tcp.receive_some(100) == b""
    assert server.metrics.get(turn_server.TURN_TLS_REFUSED_BUSY) == 1
    assert server.metrics.get(turn_server.TURN_TLS_HANDSHAKE_TIMEOUT) == 2
    for tcp in silent:
        await tcp.aclose()
    server.request_shutdown()


def allocate_request(username: str, realm: str, nonce: bytes, password: str) -> bytes:
    request = stun.Message(stun.Method.ALLOCATE, stun.Class.REQUEST)
    request.attributes["REQUESTED-TRANSPORT"] = 17 << 24
    request.attributes["USERNAME"] = username
    request.attributes["REALM"] = realm
    request.attributes["NONCE"] = nonce
    request.add_message_integrity(hashlib.md5(f"{username}:{realm}:{password}".encode()).digest())
    return bytes(request)


async def test_an_allocation_flood_from_one_credential_hits_its_quota(nursery):
    config = turn_config(tls_port=0)
    server = await nursery.start(Server(config, enable_media=True).run)
    turn = server.turn
    (ice_server,) = turn.ice_servers("PA_flood")
    target = ("127.0.0.1", turn.udp_port)
    sockets = []
    codes = []
    realm = nonce = None
    limit = turn.core.limits.max_allocations_per_user
    for _ in range(limit + 3):
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await sock.bind(("127.0.0.1", 0))
        sockets.append(sock)
        if nonce is None:
            challenge = stun.Message(stun.Method.ALLOCATE, stun.Class.REQUEST)
            challenge.attributes["REQUESTED-TRANSPORT"] = 17 << 24
            await sock.sendto(bytes(challenge), target)
            with trio.fail_after(5):
                answer = stun.parse_message(await sock.recv(2048))
            realm, nonce = answer.attributes["REALM"], answer.attributes["NONCE"]
        await sock.sendto(allocate_request(ice_server.username, realm, nonce, ice_server.credential), target)
        with trio.fail_after(5):
            answer = stun.parse_message(await sock.recv(2048))
        codes.append(answer.attributes["ERROR-CODE"][0] if answer.message_class == stun.Class.ERROR else 200)
    assert codes == [200] * limit + [486] * 3
    assert len(turn.relays) == limit
    turn._fold_counters()
    assert server.metrics.get("turn_quota_user_total") == 3
    for sock in sockets:
        sock.close()
    server.request_shutdown()


async def test_join_response_carries_turn_credentials_that_allocate():
    """A participant's JoinResponse names the TURN server (turns: and turn:) with a credential
    of its own, which the TURN server accepts; the server then shuts down leaving nothing."""
    from server_fixtures import join, media_config, media_server, mint_token, signal_client

    config = media_config()
    config.turn = turn_config().turn
    async with media_server(config) as server:
        async with signal_client(server, mint_token(identity="alice", room="turn-room")) as ws:
            response = await join(ws)
            (ice_server,) = response.ice_servers
            turn = server.turn
            assert list(ice_server.urls) == [f"turns:127.0.0.1:{turn.tls_port}?transport=tcp",
                                             f"turn:127.0.0.1:{turn.udp_port}?transport=udp"]
            assert ice_server.username.endswith(":" + response.participant.sid)
            sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
            await sock.bind(("127.0.0.1", 0))
            target = ("127.0.0.1", turn.udp_port)
            challenge = stun.Message(stun.Method.ALLOCATE, stun.Class.REQUEST)
            challenge.attributes["REQUESTED-TRANSPORT"] = 17 << 24
            await sock.sendto(bytes(challenge), target)
            with trio.fail_after(5):
                answer = stun.parse_message(await sock.recv(2048))
            await sock.sendto(allocate_request(ice_server.username, answer.attributes["REALM"],
                                               answer.attributes["NONCE"], ice_server.credential), target)
            with trio.fail_after(5):
                answer = stun.parse_message(await sock.recv(2048))
            assert answer.message_class == stun.Class.RESPONSE
            assert answer.attributes["XOR-MAPPED-ADDRESS"] == sock.getsockname()
            assert len(turn.relays) == 1
            sock.close()


async def test_tls_connections_per_ip_and_idle_ones_are_bounded(nursery, monkeypatch):
    monkeypatch.setattr(turn_server, "ALLOCATE_WITHIN", 0.5)
    monkeypatch.setattr(turn_server, "MAX_TLS_CONNECTIONS_PER_IP", 2)
    server = await nursery.start(Server(turn_config(udp_port=0), enable_media=True).run)
    turn = server.turn
    ctx = ssl.create_default_context(cafile=turn.tls.self_signed_path)
    idle = await trio.open_ssl_over_tcp_stream("127.0.0.1", turn.tls_port, ssl_context=ctx)
    await idle.do_handshake()
    other = await trio.open_tcp_stream("127.0.0.1", turn.tls_port)
    refused = await trio.open_tcp_stream("127.0.0.1", turn.tls_port)
    with trio.fail_after(5):
        assert await refused.receive_some(100) == b""  # the third from one IP: closed on arrival
    assert server.metrics.get(turn_server.TURN_TLS_REFUSED_PER_IP) == 1
    # The handshaken connection that never allocates is closed (with close_notify) after the wait.
    with trio.fail_after(5):
        assert await idle.receive_some(100) == b""
    assert server.metrics.get(turn_server.TURN_STREAM_IDLE_CLOSED) == 1
    for stream in (idle, other, refused):
        await stream.aclose()
    server.request_shutdown()


async def test_a_stream_clients_outgoing_queue_is_bounded_in_bytes():
    """A TLS client that stops reading: what the relay has for it queues up to the byte bound,
    then is dropped and counted (the connection's writer would take the rest off in order)."""
    from trio_sfu import metrics as m

    service = turn_server.TurnService(turn_config(), m.Metrics(), media_addresses=lambda: [],
                                      listen_hosts=lambda: [])
    send, receive = trio.open_memory_channel[bytes](turn_server.TLS_SEND_QUEUE)
    client = turn_server._StreamClient(("127.0.0.1", 1), send)
    chunk = bytes(4096)  # big enough that the byte bound, not the message count, is met first
    fits = turn_server.TLS_SEND_QUEUE_BYTES // len(chunk)
    assert fits < turn_server.TLS_SEND_QUEUE
    for _ in range(fits + 10):
        service._to_client(client, chunk)
    assert client.queued == fits * len(chunk) <= turn_server.TLS_SEND_QUEUE_BYTES
    assert service.metrics.get(turn_server.TURN_SEND_DROPPED) == 10
    # The writer taking one off makes room for one more.
    receive.receive_nowait()
    client.queued -= len(chunk)
    service._to_client(client, chunk)
    assert service.metrics.get(turn_server.TURN_SEND_DROPPED) == 10
    send.close()
    receive.close()


async def test_a_participant_that_migrates_hears_its_new_nodes_turn_server(monkeypatch):
    """The ReconnectResponse of a participant moved to another node names that node's TURN
    server (each relays only to its own media port), with a credential for the same sid."""
    import server_fixtures
    from server_fixtures import media_nodes, mint_token

    from trio_sfu.client import LiveKitClient

    plain = server_fixtures.media_config

    def with_turn(**room):
        config = plain(**room)
        config.turn = turn_config().turn
        return config

    monkeypatch.setattr(server_fixtures, "media_config", with_turn)
    async with media_nodes("node-a", "node-b") as (a, b):
        async with LiveKitClient.connect(a.url, mint_token("mover", room="shared")) as mover:
            (joined,) = mover.join.ice_servers
            assert f":{a.turn.udp_port}?transport=udp" in joined.urls[-1]
            assert await a.relay.migrate("shared", mover.participant_sid, "node-b")
            await mover.wait_resumed(1)
            (resumed,) = mover.reconnect_response.ice_servers
            assert list(resumed.urls) == [f"turns:127.0.0.1:{b.turn.tls_port}?transport=tcp",
                                          f"turn:127.0.0.1:{b.turn.udp_port}?transport=udp"]
            assert resumed.username.endswith(":" + mover.participant_sid)
            assert b.turn.core._password_for(resumed.username, True) == resumed.credential
