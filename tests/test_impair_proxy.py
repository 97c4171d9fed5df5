"""The impairing UDP proxy (trio_sfu.testing.impair_proxy) on loopback with kernel sockets: each
client gets its own upstream socket and its own links, the server's answers come back from the
proxy's listening address, and each direction is impaired as asked (a delay that shows in the round
trip, a loss that drops everything)."""

from __future__ import annotations

import trio

from trio_sfu.datagram import UdpSocket
from trio_sfu.testing.impair_proxy import ImpairProxy
from trio_sfu.testing.impairment import Impairment


async def echo(sock: UdpSocket, seen: set) -> None:
    while True:
        await sock.wait_readable()
        while True:
            try:
                data, source = sock.recvfrom(2048)
            except BlockingIOError:
                break
            seen.add(source)
            sock.sendto(data, source)


async def receive(sock: UdpSocket) -> tuple[bytes, tuple[str, int]]:
    while True:
        try:
            return sock.recvfrom(2048)
        except BlockingIOError:
            await sock.wait_readable()


async def test_each_client_crosses_its_own_links_both_ways_delayed_as_asked():
    server = UdpSocket.bind("127.0.0.1", 0)
    proxy = ImpairProxy(("127.0.0.1", 0), server.getsockname(), Impairment(delay=0.03), Impairment(delay=0.02))
    seen: set = set()
    clients = [UdpSocket.bind("127.0.0.1", 0) for _ in range(2)]
    client_addresses = {c.getsockname() for c in clients}
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(echo, server, seen)
            listening = await nursery.start(proxy.run)
            for client in clients:
                for i in range(3):
                    sent_at = trio.current_time()
                    client.sendto(b"ping %d" % i, listening)
                    with trio.fail_after(2):
                        data, source = await receive(client)
                    rtt = trio.current_time() - sent_at
                    assert data == b"ping %d" % i and source == listening  # answered from the proxy
                    assert 0.05 <= rtt < 0.5, rtt
            nursery.cancel_scope.cancel()
    finally:
        for sock in (server, *clients):
            sock.close()
    # Two clients, two upstream sockets (the server saw two sources, neither a client's own).
    assert len(proxy.links) == 2 and len(seen) == 2
    assert not seen & client_addresses
    report = proxy.report()
    assert [(l["to_server"]["delivered"], l["to_client"]["delivered"]) for l in report["links"]] == [(3, 3), (3, 3)]


async def test_a_lossy_direction_drops_and_counts():
    server = UdpSocket.bind("127.0.0.1", 0)
    proxy = ImpairProxy(("127.0.0.1", 0), server.getsockname(), Impairment(loss=1.0), Impairment())
    seen: set = set()
    client = UdpSocket.bind("127.0.0.1", 0)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(echo, server, seen)
            listening = await nursery.start(proxy.run)
            for _ in range(5):
                client.sendto(b"lost", listening)
            await trio.sleep(0.2)
            nursery.cancel_scope.cancel()
    finally:
        server.close()
        client.close()
    assert seen == set()
    (link,) = proxy.report()["links"]
    assert link["to_server"]["dropped_loss"] == 5 and link["to_server"]["delivered"] == 0


async def test_the_impairment_changes_at_runtime_for_every_link_and_bad_control_lines_change_nothing():
    """A 600 kbit/s bottleneck towards the clients lifts while the proxy runs (the control the
    e2e tests use to take a limit away), for the links that exist and those still to come."""
    from trio_sfu.testing.impair_proxy import control

    server = UdpSocket.bind("127.0.0.1", 0)
    limited = Impairment(rate_bps=600_000, queue_bytes=10_000)
    proxy = ImpairProxy(("127.0.0.1", 0), server.getsockname(), Impairment(), limited)
    client = UdpSocket.bind("127.0.0.1", 0)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(echo, server, set())
            listening = await nursery.start(proxy.run)
            client.sendto(b"x", listening)
            with trio.fail_after(2):
                await receive(client)
            (link,) = proxy.links.values()
            assert link.to_client.impairment == limited
            assert "proxy_control_error" in control(proxy, '{"to_client": "rate_bps=-1"}')
            assert "proxy_control_error" in control(proxy, '{"sideways": ""}')
            assert "proxy_control_error" in control(proxy, "not json")
            assert link.to_client.impairment == limited
            # 40 datagrams of 1000 bytes back to back: 40 kB against a 10 kB queue at 600 kbit/s.
            for _ in range(40):
                client.sendto(bytes(1000), listening)
            await trio.sleep(0.5)
            assert link.to_client.counters.dropped_queue > 0
            dropped = link.to_client.counters.dropped_queue
            answer = control(proxy, '{"to_client": ""}')
            assert answer["proxy_changed"]["to_client"]["rate_bps"] is None
            assert link.to_client.impairment == Impairment() and proxy.to_client == Impairment()
            for _ in range(40):
                client.sendto(bytes(1000), listening)
            await trio.sleep(0.3)
            assert link.to_client.counters.dropped_queue == dropped
            nursery.cancel_scope.cancel()
    finally:
        server.close()
        client.close()
