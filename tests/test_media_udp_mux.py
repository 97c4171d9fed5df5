"""The UDP mux: routing by ufrag (STUN binding requests, built by aioice) and by authenticated
address, drops counted, a crashing handler contained, non-blocking sends that count a full
buffer, and the reader task draining a burst over a real loopback socket."""

from __future__ import annotations

import errno
import socket

import pytest
import trio
from aioice import stun

from trio_sfu import metrics as m
from trio_sfu.media.udp_mux import (
    RECEIVE_BATCH,
    MAX_ADDRESSES_PER_TRANSPORT,
    UDP_ADDRESS_EVICTED,
    UDP_DROPPED_SEND_FULL,
    UDP_DROPPED_UNROUTABLE,
    UDP_HANDLER_CRASHED,
    UDP_RECEIVED,
    UdpMux,
    discover_node_ip,
    host_candidate,
)


def binding_request(username: str) -> bytes:
    message = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    message.attributes["USERNAME"] = username
    return bytes(message)


class FakeTransport:
    """What the mux asks of a transport: its ufrag, and whether ICE validated an address."""

    def __init__(self, ufrag: str) -> None:
        self.local_ufrag = ufrag
        self.valid: set[tuple[str, int]] = set()

    def accepts(self, data: bytes, addr: tuple[str, int]) -> bool:
        return addr in self.valid


class Endpoint:
    def __init__(self, ufrag: str, validate: bool = True, crash: bool = False) -> None:
        self.transport = FakeTransport(ufrag)
        self.received: list[tuple[bytes, tuple[str, int]]] = []
        self.validate = validate
        self.crash = crash

    def on_datagram(self, data: bytes, addr: tuple[str, int], now: float) -> None:
        if self.crash:
            raise RuntimeError("bug in a session")
        self.received.append((data, addr))
        if self.validate and data[0] < 4:
            self.transport.valid.add(addr)  # as an ICE agent does after a good check


def make_mux() -> UdpMux:
    return UdpMux.bind("127.0.0.1", 0, m.Metrics())


def test_routes_by_ufrag_then_by_address_and_counts_drops():
    mux = make_mux()
    try:
        a, b = Endpoint("ufragA"), Endpoint("ufragB", validate=False)
        mux.register(a)
        mux.register(b)
        peer = ("10.0.0.1", 5000)
        rtp = b"\x80\x60" + bytes(20)

        mux.route(rtp, peer, 0.0)  # media from nobody we know
        mux.route(binding_request("nobody:x"), peer, 0.0)
        assert mux.metrics.get(UDP_DROPPED_UNROUTABLE) == 2

        mux.route(binding_request("ufragA:remote"), peer, 0.0)
        assert len(a.received) == 1 and peer in mux.by_addr
        mux.route(rtp, peer, 0.0)  # now routed by address
        assert a.received[-1] == (rtp, peer)

        # B's check is delivered, but B's agent did not validate the address: no address route.
        other = ("10.0.0.2", 6000)
        mux.route(binding_request("ufragB:remote"), other, 0.0)
        assert len(b.received) == 1 and other not in mux.by_addr
        mux.route(rtp, other, 0.0)
        assert len(b.received) == 1 and mux.metrics.get(UDP_DROPPED_UNROUTABLE) == 3

        # A known address that starts checking another ufrag goes to that transport.
        mux.route(binding_request("ufragB:remote"), peer, 0.0)
        assert len(b.received) == 2

        mux.unregister(a)
        mux.unregister(b)
        assert mux.is_empty()
        mux.route(rtp, peer, 0.0)
        assert mux.metrics.get(UDP_DROPPED_UNROUTABLE) == 4
    finally:
        mux.sock.close()


def test_rekey_after_an_ice_restart_routes_by_the_new_ufrag_and_keeps_the_addresses():
    mux = make_mux()
    try:
        a = Endpoint("oldU")
        mux.register(a)
        peer = ("10.0.0.1", 5000)
        rtp = b"\x80\x60" + bytes(20)
        mux.route(binding_request("oldU:remote"), peer, 0.0)
        a.transport.local_ufrag = "newU"  # the transport restarted ICE
        mux.rekey(a, "oldU")
        assert mux.by_ufrag == {"newU": a}
        mux.route(rtp, peer, 0.0)  # media goes on over the known address
        assert a.received[-1] == (rtp, peer)
        mux.route(binding_request("newU:remote2"), ("10.0.0.9", 7000), 0.0)  # a new path, new ufrag
        assert a.received[-1][1] == ("10.0.0.9", 7000)
        mux.route(binding_request("oldU:remote"), ("10.0.0.8", 7000), 0.0)  # the old ufrag leads nowhere
        assert mux.metrics.get(UDP_DROPPED_UNROUTABLE) == 1
        mux.unregister(a)
        assert mux.is_empty()
    finally:
        mux.sock.close()


def test_a_transports_remembered_addresses_are_bounded_and_forgotten_on_unregister():
    """A peer with valid ICE credentials checking from ever new ports (or a roaming client)
    must not grow the address table: the oldest address is evicted and counted."""
    mux = make_mux()
    try:
        a, b = Endpoint("ufragA"), Endpoint("ufragB")
        mux.register(a)
        mux.register(b)
        b_addr = ("10.9.9.9", 9999)
        mux.route(binding_request("ufragB:remote"), b_addr, 0.0)
        extra = 5
        roams = [("10.0.0.1", 10000 + i) for i in range(MAX_ADDRESSES_PER_TRANSPORT + extra)]
        for addr in roams:
            mux.route(binding_request("ufragA:remote"), addr, 0.0)
        assert len(mux.by_addr) == MAX_ADDRESSES_PER_TRANSPORT + 1
        assert mux.addresses_of(a) == roams[-MAX_ADDRESSES_PER_TRANSPORT:]
        assert mux.metrics.get(UDP_ADDRESS_EVICTED) == extra
        assert mux.by_addr[b_addr] is b  # another transport's address is untouched

        rtp = b"\x80\x60" + bytes(20)
        mux.route(rtp, roams[0], 0.0)  # evicted: media from it is no longer routed
        assert mux.metrics.get(UDP_DROPPED_UNROUTABLE) == 1
        mux.route(rtp, roams[-1], 0.0)  # the newest still is
        assert a.received[-1] == (rtp, roams[-1])
        mux.route(binding_request("ufragA:remote"), roams[0], 0.0)  # a fresh check brings it back
        assert mux.by_addr[roams[0]] is a and len(mux.addresses_of(a)) == MAX_ADDRESSES_PER_TRANSPORT

        mux.unregister(a)
        assert mux.addresses_of(a) == [] and list(mux.by_addr) == [b_addr]
        mux.unregister(b)
        assert mux.is_empty()
    finally:
        mux.sock.close()


def test_duplicate_ufrag_is_refused():
    mux = make_mux()
    try:
        mux.register(Endpoint("same"))
        try:
            mux.register(Endpoint("same"))
        except ValueError:
            pass
        else:
            raise AssertionError("a second transport under one ufrag must be refused")
    finally:
        mux.sock.close()


def test_a_crashing_handler_is_counted_not_fatal():
    mux = make_mux()
    try:
        mux.register(Endpoint("bad", crash=True))
        mux.route(binding_request("bad:x"), ("10.0.0.1", 1), 0.0)
        assert mux.metrics.get(UDP_HANDLER_CRASHED) == 1
    finally:
        mux.sock.close()


def test_media_from_a_known_address_goes_straight_to_its_endpoint():
    """SRTP from an authenticated address takes the mux's media path: to its endpoint with
    nothing looked up by ufrag; a crash there is counted like any other; media from an address
    never authenticated is still dropped, and STUN from a known address still goes by ufrag."""
    mux = make_mux()
    try:
        a, b = Endpoint("ufragA"), Endpoint("ufragB")
        mux.register(a)
        mux.register(b)
        mux.route(binding_request("ufragA:c"), ("10.0.0.1", 1), 0.0)
        assert mux.by_addr[("10.0.0.1", 1)] is a
        for i in range(3):
            mux.route(b"\x80\x60" + bytes([i]), ("10.0.0.1", 1), 0.0)
        assert [d for d, _ in a.received[1:]] == [b"\x80\x60" + bytes([i]) for i in range(3)]
        mux.route(b"\x80\x60\x09", ("10.0.0.9", 1), 0.0)
        assert mux.metrics.get(UDP_DROPPED_UNROUTABLE) == 1
        # The same address now checks another ufrag (a new transport from the same port).
        mux.route(binding_request("ufragB:c"), ("10.0.0.1", 1), 0.0)
        assert len(b.received) == 1
        a.crash = True
        mux.route(b"\x80\x60\x03", ("10.0.0.1", 1), 0.0)
        assert mux.metrics.get(UDP_HANDLER_CRASHED) == 1
    finally:
        mux.sock.close()


class FullSocket:
    def __init__(self) -> None:
        self.sent = 0

    def sendto(self, data: bytes, addr) -> int:
        if self.sent >= 2:
            raise BlockingIOError
        self.sent += 1
        return len(data)

    def setblocking(self, flag: bool) -> None:
        pass


def test_send_never_blocks_and_counts_a_full_buffer():
    mux = UdpMux(FullSocket(), m.Metrics())  # type: ignore[arg-type]
    mux.send([(b"x", ("127.0.0.1", 9))] * 5)
    assert mux.metrics.get(UDP_DROPPED_SEND_FULL) == 3


@pytest.mark.parametrize("fast_path", [
    pytest.param(True, id="recvmmsg", marks=pytest.mark.compiled("_recv")),
    pytest.param(False, id="pure"),
])
async def test_reader_drains_a_burst_from_a_real_socket(fast_path):
    mux = make_mux()
    mux.fast_path = fast_path
    endpoint = Endpoint("burst")
    mux.register(endpoint)
    client = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await client.bind(("127.0.0.1", 0))
    count = 3 * RECEIVE_BATCH + 5
    async with trio.open_nursery() as nursery:
        await nursery.start(mux.run)
        await client.sendto(binding_request("burst:c"), mux.local_address)
        with trio.fail_after(5):
            while not endpoint.received:
                await trio.sleep(0.01)
        for i in range(count):
            await client.sendto(b"\x80\x60" + i.to_bytes(4, "big"), mux.local_address)
        with trio.fail_after(5):
            while len(endpoint.received) < count + 1:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert [int.from_bytes(d[2:6], "big") for d, _ in endpoint.received[1:]] == list(range(count))
    assert mux.metrics.get(UDP_RECEIVED) == count + 1
    assert mux.sock.fileno() == -1  # the reader closes the socket when it ends
    client.close()


def test_candidate_address_choice():
    # Which addresses a configuration advertises: tests/test_media_interfaces.py.
    discovered = discover_node_ip()
    socket.inet_aton(discovered)  # an IPv4 address of this machine (or loopback without a route)
    assert host_candidate("192.0.2.1", 7882) == "1 1 udp 2130706431 192.0.2.1 7882 typ host"
    assert host_candidate("127.0.0.1", 7882, "2", 1000) == f"2 1 udp {(126 << 24) | (1000 << 8) | 255} 127.0.0.1 7882 typ host"
    with pytest.raises(ValueError):
        host_candidate("192.0.2.1", 7882, local_preference=65536)


class Answering(Endpoint):
    """An endpoint that answers each ICE check at once, as the session does, through the mux."""

    def __init__(self, ufrag: str, mux: UdpMux) -> None:
        super().__init__(ufrag)
        self.mux = mux

    def on_datagram(self, data: bytes, addr: tuple[str, int], now: float) -> None:
        super().on_datagram(data, addr, now)
        if data[0] < 4:
            self.mux.send([(b"answer", addr)])


async def receive_from(sock: trio.socket.SocketType) -> tuple[bytes, tuple[str, int]]:
    with trio.fail_after(5):
        data, source = await sock.recvfrom(2048)
    return data, source[:2]


async def test_each_reply_leaves_from_the_address_the_peer_sent_to():
    """Two local addresses on one port (loopback's 127.0.0.1 and 127.0.0.2 stand for a LAN
    address and loopback): an ICE check's answer comes from the address the check went to, and
    media follows the address DTLS/media last came in on — a check on another pair (a client
    testing a backup path) does not move it."""
    mux = UdpMux.bind_all(["127.0.0.2", "127.0.0.1"], 0, m.Metrics())
    port = mux.local_address[1]
    assert mux.local_addresses == [("127.0.0.2", port), ("127.0.0.1", port)]
    endpoint = Answering("multi", mux)
    mux.register(endpoint)
    client = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await client.bind(("127.0.0.1", 0))
    me = client.getsockname()[:2]
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(mux.run)
            await client.sendto(binding_request("multi:c"), ("127.0.0.2", port))
            assert await receive_from(client) == (b"answer", ("127.0.0.2", port))
            await client.sendto(binding_request("multi:c"), ("127.0.0.1", port))
            assert await receive_from(client) == (b"answer", ("127.0.0.1", port))
            # Authenticated by its first check (on 127.0.0.2): media goes out from there.
            mux.send_one(b"media", me)
            assert await receive_from(client) == (b"media", ("127.0.0.2", port))

            # DTLS/media arriving on 127.0.0.1 (the pair the client chose) moves it there ...
            await client.sendto(b"\x80\x60" + bytes(10), ("127.0.0.1", port))
            with trio.fail_after(5):
                while endpoint.received[-1][0][0] != 0x80:
                    await trio.sleep(0.01)
            mux.send_one(b"media", me)
            assert await receive_from(client) == (b"media", ("127.0.0.1", port))
            # ... and a later check on the other pair is answered there but moves nothing.
            await client.sendto(binding_request("multi:c"), ("127.0.0.2", port))
            assert await receive_from(client) == (b"answer", ("127.0.0.2", port))
            mux.send([(b"dtls", me)])
            assert await receive_from(client) == (b"dtls", ("127.0.0.1", port))
            nursery.cancel_scope.cancel()
        mux.unregister(endpoint)
        assert mux.is_empty()  # the reply table is forgotten with the address
        assert all(sock.fileno() == -1 for sock in mux.sockets)  # the readers close every socket
    finally:
        client.close()
        for sock in mux.sockets:
            sock.close()


async def test_one_wildcard_socket_would_answer_from_the_wrong_address():
    """Why one socket per address: a socket on 0.0.0.0 answers a datagram sent to 127.0.0.2
    from the address the routing table picks for the client, 127.0.0.1 — an ICE check answered
    from an address it was not sent to fails (RFC 8445 §7.2.5.2.1)."""
    mux = UdpMux.bind("0.0.0.0", 0, m.Metrics())
    port = mux.local_address[1]
    mux.register(Answering("wild", mux))
    client = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await client.bind(("127.0.0.1", 0))
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(mux.run)
            await client.sendto(binding_request("wild:c"), ("127.0.0.2", port))
            assert await receive_from(client) == (b"answer", ("127.0.0.1", port))
            nursery.cancel_scope.cancel()
    finally:
        client.close()
        mux.sock.close()


def test_bind_all_one_port_everywhere_and_clear_errors():
    mux = UdpMux.bind_all(["127.0.0.1", "127.0.0.2", "127.0.0.3"], 0, m.Metrics())
    try:
        ports = {port for _, port in mux.local_addresses}
        assert len(ports) == 1 and len(mux.sockets) == 3
    finally:
        for sock in mux.sockets:
            sock.close()

    # A fixed port in use on the second address is an error, and the first socket is let go.
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.2", 0))
    port = taken.getsockname()[1]
    try:
        with pytest.raises(OSError) as raised:
            UdpMux.bind_all(["127.0.0.1", "127.0.0.2"], port, m.Metrics())
        assert raised.value.errno == errno.EADDRINUSE
        free = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        free.bind(("127.0.0.1", port))  # not held by a half-built mux
        free.close()
    finally:
        taken.close()

    # An address this machine does not have is skipped (it vanished since it was listed) ...
    mux = UdpMux.bind_all(["127.0.0.1", "192.0.2.77"], 0, m.Metrics())
    try:
        assert [host for host, _ in mux.local_addresses] == ["127.0.0.1"]
        assert len(mux.sockets) == 1
    finally:
        mux.sock.close()
    # ... unless it is the first: then there is nothing to serve on.
    with pytest.raises(OSError):
        UdpMux.bind_all(["192.0.2.77", "127.0.0.1"], 0, m.Metrics())
