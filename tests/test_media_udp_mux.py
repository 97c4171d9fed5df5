"""The UDP mux: routing by ufrag (STUN binding requests, built by aioice) and by authenticated
address, drops counted, a crashing handler contained, non-blocking sends that count a full
buffer, and the reader task draining a burst over a real loopback socket."""

from __future__ import annotations

import socket

import trio
from aioice import stun

from trio_sfu import metrics as m
from trio_sfu.media.udp_mux import (
    CHECKPOINT_EVERY,
    MAX_ADDRESSES_PER_TRANSPORT,
    UDP_ADDRESS_EVICTED,
    UDP_DROPPED_SEND_FULL,
    UDP_DROPPED_UNROUTABLE,
    UDP_HANDLER_CRASHED,
    UDP_RECEIVED,
    UdpMux,
    advertised_ip,
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


async def test_reader_drains_a_burst_from_a_real_socket():
    mux = make_mux()
    endpoint = Endpoint("burst")
    mux.register(endpoint)
    client = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await client.bind(("127.0.0.1", 0))
    count = 3 * CHECKPOINT_EVERY + 5
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
    assert advertised_ip("0.0.0.0", "198.51.100.7") == "198.51.100.7"
    assert advertised_ip("192.0.2.10", None) == "192.0.2.10"
    discovered = advertised_ip("0.0.0.0", None)
    socket.inet_aton(discovered)  # an IPv4 address of this machine (or loopback without a route)
    assert host_candidate("192.0.2.1", 7882) == "1 1 udp 2130706431 192.0.2.1 7882 typ host"
