"""The user-space impairment tool (trio_sfu.testing.impairment): rate with a byte queue and tail
drop, random and burst loss, delay and jitter with and without reordering, the same trace from the
same seed; and its adapters moving real datagrams on Trio's clock (the in-memory network, a
wrapped datagram socket impaired both ways)."""

from __future__ import annotations

import pytest
import trio

from trio_sfu.testing.impairment import ImpairedDatagramSocket, ImpairedLink, Impairment, impairment_hook
from trio_sfu.testing.memory_network import MemoryNetwork


async def receive(sock) -> tuple[bytes, tuple[str, int]]:
    """The next datagram (a readable wake-up may be stale: the sockets reset it lazily)."""
    while True:
        try:
            return sock.recvfrom(100)
        except BlockingIOError:
            await sock.wait_readable()


def trace(link: ImpairedLink, count: int, interval: float, size: int = 1200) -> list:
    return [link.admit(size, i * interval) for i in range(count)]


def test_rate_limit_delivers_at_the_rate_queues_in_bytes_and_tail_drops():
    # 2 Mbit/s offered (1200 B every 4.8 ms) into 1 Mbit/s with a 30 kB queue, for 10 s.
    link = ImpairedLink(Impairment(rate_bps=1_000_000, queue_bytes=30_000), seed=1)
    arrivals = trace(link, 2084, 0.0048)
    delivered = [a for a in arrivals if a is not None]
    span = delivered[-1] - delivered[0]
    assert (len(delivered) - 1) * 1200 * 8 / span == pytest.approx(1_000_000, rel=0.01)
    assert link.counters.dropped_queue == len(arrivals) - len(delivered) > 900
    # The queue never holds more than its bytes, so no datagram waits longer than it takes to drain.
    assert link.counters.queue_bytes_max <= 30_000
    assert link.counters.queue_delay_max <= 30_000 * 8 / 1_000_000 + 1e-9
    assert link.counters.queue_delay_max > 0.2  # it did fill


def test_under_the_rate_nothing_queues_and_a_burst_fits_the_bucket():
    link = ImpairedLink(Impairment(rate_bps=1_000_000, burst_bytes=3_000), seed=1)
    assert trace(link, 100, 0.02) == [i * 0.02 for i in range(100)]  # 480 kbit/s: no wait
    burst = ImpairedLink(Impairment(rate_bps=1_000_000, burst_bytes=2_400), seed=1)
    at = [burst.admit(1200, 0.0) for _ in range(3)]
    assert at[:2] == [0.0, 0.0] and at[2] == pytest.approx(1200 * 8 / 1_000_000)


def test_random_loss_is_the_fraction_asked_and_the_seed_fixes_the_trace():
    link = ImpairedLink(Impairment(loss=0.05), seed=7)
    arrivals = trace(link, 20_000, 0.001)
    lost = arrivals.count(None)
    assert 0.045 < lost / len(arrivals) < 0.055
    assert link.counters.dropped_loss == lost
    assert trace(ImpairedLink(Impairment(loss=0.05), seed=7), 20_000, 0.001) == arrivals
    assert trace(ImpairedLink(Impairment(loss=0.05), seed=8), 20_000, 0.001) != arrivals


def test_burst_loss_comes_in_runs_of_the_mean_length():
    link = ImpairedLink(Impairment(burst_start=0.01, burst_length=5), seed=3)
    arrivals = trace(link, 50_000, 0.001)
    runs, run = [], 0
    for arrival in arrivals:
        if arrival is None:
            run += 1
        elif run:
            runs.append(run)
            run = 0
    assert 4.0 < sum(runs) / len(runs) < 6.0
    assert max(runs) >= 15  # geometric lengths: long bursts happen
    assert link.counters.dropped_burst == arrivals.count(None)


def test_jitter_reorders_when_allowed_and_keeps_order_when_not():
    reordering = ImpairedLink(Impairment(delay=0.02, jitter=0.005), seed=5)
    arrivals = trace(reordering, 2000, 0.001)
    delays = [a - i * 0.001 for i, a in enumerate(arrivals)]
    assert min(delays) >= 0.015 and max(delays) <= 0.025
    assert min(delays) < 0.016 and max(delays) > 0.024  # the whole range is used
    assert reordering.counters.reordered > 500
    assert sum(b < a for a, b in zip(arrivals, arrivals[1:])) > 500

    in_order = ImpairedLink(Impairment(delay=0.02, jitter=0.005, reorder=False), seed=5)
    ordered = trace(in_order, 2000, 0.001)
    assert ordered == sorted(ordered) and in_order.counters.reordered == 0
    assert all(a - i * 0.001 >= 0.015 for i, a in enumerate(ordered))


def test_bad_impairments_are_refused_with_a_reason():
    with pytest.raises(ValueError, match="probability"):
        Impairment(loss=1.5)
    with pytest.raises(ValueError, match="jitter"):
        Impairment(delay=0.001, jitter=0.005)
    with pytest.raises(ValueError, match="positive"):
        Impairment(rate_bps=0)
    with pytest.raises(ValueError, match="bad impairment item"):
        Impairment.parse("delay=0.02,lag=3")
    assert Impairment.parse("delay=0.02, jitter=0.005,loss=0.05,reorder=0,queue_bytes=9000") == Impairment(
        delay=0.02, jitter=0.005, loss=0.05, reorder=False, queue_bytes=9000)
    assert Impairment.parse("") == Impairment()


async def test_memory_network_link_reorders_through_the_hook(autojump_clock):
    link = ImpairedLink(Impairment(delay=0.02, jitter=0.01), seed=11)
    net = MemoryNetwork(impairment_hook(lambda source, destination: link if destination[1] == 6000 else None),
                        reorder=True)
    a, b = net.bind_datagram("10.0.0.1", 5000), net.bind_datagram("10.0.0.2", 6000)
    got: list[int] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(net.run)
        for i in range(200):
            a.sendto(i.to_bytes(2, "big"), ("10.0.0.2", 6000))
            await trio.sleep(0.001)
        while len(got) < 200:
            got.append(int.from_bytes((await receive(b))[0], "big"))
        # The other direction is not impaired: at once.
        b.sendto(b"back", ("10.0.0.1", 5000))
        assert a.recvfrom(10) == (b"back", ("10.0.0.2", 6000))
        nursery.cancel_scope.cancel()
    assert sorted(got) == list(range(200)) and got != list(range(200))
    assert link.counters.reordered > 0


async def test_wrapped_socket_impairs_each_direction_on_its_own_link(autojump_clock):
    net = MemoryNetwork()
    out_link = ImpairedLink(Impairment(delay=0.05, loss=0.1), seed=1)
    in_link = ImpairedLink(Impairment(delay=0.02), seed=2)
    client = ImpairedDatagramSocket(net.bind_datagram("10.0.0.1", 0), outgoing=out_link, incoming=in_link)
    echo = net.bind_datagram("10.0.0.2", 7000)
    rtts: list[float] = []

    async def echo_server() -> None:
        while True:
            await echo.wait_readable()
            while True:
                try:
                    data, source = echo.recvfrom(100)
                except BlockingIOError:
                    break
                echo.sendto(data, source)

    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        nursery.start_soon(echo_server)
        for i in range(100):
            sent_at = trio.current_time()
            client.sendto(i.to_bytes(2, "big"), ("10.0.0.2", 7000))
            with trio.move_on_after(1):
                data, source = await receive(client)
                assert int.from_bytes(data, "big") == i and source == ("10.0.0.2", 7000)
                rtts.append(trio.current_time() - sent_at)
        nursery.cancel_scope.cancel()
    assert rtts and all(rtt == pytest.approx(0.07) for rtt in rtts)
    assert len(rtts) == 100 - out_link.counters.dropped_loss and out_link.counters.dropped_loss > 0
    assert in_link.counters.delivered == len(rtts)
