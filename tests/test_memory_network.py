"""The in-memory network the race tests run real servers on (trio_sfu.testing.memory_network):
datagrams delivered at once or after the link's delay on Trio's clock, never reordered on a link,
dropped and counted when the hook, a full queue or a missing socket says so; stream listeners
that a connection reaches and that refuse once closed."""

from __future__ import annotations

import errno

import pytest
import trio

from trio_sfu.testing.memory_network import RECEIVE_QUEUE, MemoryNetwork


async def test_datagrams_arrive_at_once_and_a_reader_wakes(autojump_clock):
    net = MemoryNetwork()
    a, b = net.bind_datagram("127.0.0.1", 0), net.bind_datagram("127.0.0.1", 0)
    assert a.getsockname() != b.getsockname() and a.getsockname()[1] > 0
    with pytest.raises(BlockingIOError):
        b.recvfrom(100)
    got = []

    async def reader() -> None:
        await b.wait_readable()
        got.append(b.recvfrom(100))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.sleep(1)
        assert got == []
        a.sendto(b"hello", b.getsockname())
    assert got == [(b"hello", a.getsockname())]
    buffer = bytearray(3)
    a.sendto(b"truncated", b.getsockname())
    assert b.recvfrom_into(buffer) == (3, a.getsockname()) and bytes(buffer) == b"tru"
    assert net.counters.delivered == 2


async def test_a_delayed_link_delivers_on_the_clock_in_order_and_drops_what_the_hook_drops(autojump_clock):
    delays = iter([0.3, 0.0, 0.1, None])  # the second and third may not overtake the first
    net = MemoryNetwork(lambda source, destination, data: next(delays))
    a, b = net.bind_datagram("10.0.0.1", 5000), net.bind_datagram("10.0.0.2", 6000)
    async with trio.open_nursery() as nursery:
        await nursery.start(net.run)
        start = trio.current_time()
        for data in (b"1", b"2", b"3", b"lost"):
            a.sendto(data, ("10.0.0.2", 6000))
        arrivals = []
        while len(arrivals) < 3:
            await b.wait_readable()
            arrivals.append((b.recvfrom(10)[0], round(trio.current_time() - start, 3)))
        nursery.cancel_scope.cancel()
    assert arrivals == [(b"1", 0.3), (b"2", 0.3), (b"3", 0.3)]
    assert net.counters.dropped_by_link == 1


async def test_full_queues_and_unbound_addresses_drop_and_count(autojump_clock):
    net = MemoryNetwork()
    a, b = net.bind_datagram("127.0.0.1", 0), net.bind_datagram("127.0.0.1", 0)
    for _ in range(RECEIVE_QUEUE + 5):
        a.sendto(b"x", b.getsockname())
    a.sendto(b"x", ("127.0.0.1", 1))
    assert net.counters.dropped_queue_full == 5 and net.counters.undeliverable == 1
    b.close()
    with pytest.raises(OSError) as info:
        b.sendto(b"x", a.getsockname())
    assert info.value.errno == errno.EBADF
    a.sendto(b"x", b.getsockname())  # its address is free again: nobody receives
    assert net.counters.undeliverable == 2 and not net._sockets.get(b.getsockname())
    with pytest.raises(OSError):
        net.bind_datagram(*a.getsockname())  # in use


async def test_closing_a_socket_wakes_its_reader(autojump_clock):
    net = MemoryNetwork()
    sock = net.bind_datagram("127.0.0.1", 0)
    async with trio.open_nursery() as nursery:
        async def reader() -> None:
            with pytest.raises(trio.ClosedResourceError):
                await sock.wait_readable()

        nursery.start_soon(reader)
        await trio.sleep(0.1)
        sock.close()


async def test_a_listener_accepts_connections_and_refuses_once_closed(autojump_clock):
    net = MemoryNetwork()
    listener = net.listen("127.0.0.1", 7880)
    client = await net.connect("127.0.0.1", 7880)
    server = await listener.accept()
    await client.send_all(b"ping")
    assert await server.receive_some(10) == b"ping"
    unaccepted = await net.connect("127.0.0.1", 7880)
    await listener.aclose()
    assert await unaccepted.receive_some(10) == b""  # never accepted: closed with the listener
    with pytest.raises(ConnectionRefusedError):
        await net.connect("127.0.0.1", 7880)
    with pytest.raises(trio.ClosedResourceError):
        await listener.accept()
