"""The UDP batch readers (trio_sfu.native.batch_recv) on real loopback sockets: the compiled
`recvmmsg` reader and its pure-Python twin hand on the same datagrams, in the same order, from
the same addresses, in batches bounded the same way; oversized datagrams are dropped and
counted by both; an empty socket is an empty batch. And the mux's readers share the loop: a
flooded socket does not keep another socket's datagram waiting until the flood is drained."""

from __future__ import annotations

import errno
import socket

import pytest
import trio

from trio_sfu import metrics as m
from trio_sfu.datagram import UdpSocket
from trio_sfu.media.udp_mux import RECEIVE_BATCH, UDP_DROPPED_OVERSIZED, UDP_RECEIVED, UdpMux
from trio_sfu.native import batch_recv
from trio_sfu.native.batch_recv import LoopReader, MmsgReader, batch_reader, compiled_available

needs_compiled = pytest.mark.compiled("_recv")


def bound(host: str = "127.0.0.1") -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind((host, 0))
    sock.setblocking(False)
    return sock


def has_ipv6_loopback() -> bool:
    try:
        bound("::1").close()
    except OSError:
        return False
    return True


class Pair:
    """Two receiving sockets fed the very same datagrams, one read by each reader."""

    def __init__(self, *, batch: int, slot_size: int, host: str = "127.0.0.1") -> None:
        self.socks = [bound(host), bound(host)]
        self.oversized = [0, 0]
        self.readers = [
            MmsgReader(self.socks[0].fileno(), batch=batch, slot_size=slot_size, on_oversized=lambda: self._over(0)),
            LoopReader(self.socks[1], batch=batch, slot_size=slot_size, on_oversized=lambda: self._over(1)),
        ]

    def _over(self, i: int) -> None:
        self.oversized[i] += 1

    def send(self, sender: socket.socket, payloads: list[bytes]) -> None:
        for sock in self.socks:
            for payload in payloads:
                sender.sendto(payload, sock.getsockname()[:2])

    def receive(self) -> tuple[list, list]:
        compiled, pure = (reader.receive() for reader in self.readers)
        return compiled, pure

    def close(self) -> None:
        for sock in self.socks:
            sock.close()


@needs_compiled
def test_both_readers_hand_on_the_same_batches_in_order_from_the_same_addresses():
    pair = Pair(batch=8, slot_size=1500)
    senders = [bound(), bound()]
    try:
        # Two sources interleaved, a zero-length datagram, one exactly a slot, one over it.
        payloads = [bytes([i]) * (i * 37 % 1400) for i in range(19)]
        for i, payload in enumerate(payloads):
            pair.send(senders[i % 2], [payload])
        pair.send(senders[0], [b"", b"s" * 1500, b"o" * 1501, b"last"])
        expected = [(p, senders[i % 2].getsockname()[:2]) for i, p in enumerate(payloads)]
        expected += [(b"", senders[0].getsockname()[:2]), (b"s" * 1500, senders[0].getsockname()[:2]),
                     (b"last", senders[0].getsockname()[:2])]
        batches, received = [], []
        while True:
            compiled, pure = pair.receive()
            assert compiled == pure
            assert all(type(data) is bytes for data, _ in compiled)
            batches.append(len(compiled))
            received += compiled
            if not compiled:
                break
        # 23 datagrams sent, one too large: batches of 8, 8, then 6 (the third read 7 and
        # dropped one), then nothing (EAGAIN is an empty batch, not an error).
        assert batches == [8, 8, 6, 0]
        assert pair.oversized == [1, 1]
        assert received == expected
    finally:
        pair.close()
        for sender in senders:
            sender.close()


@needs_compiled
def test_order_and_addresses_across_batch_boundaries():
    pair = Pair(batch=5, slot_size=256)
    senders = [bound(), bound(), bound()]
    try:
        sent = []
        for i in range(23):
            sender = senders[i % 3]
            payload = i.to_bytes(2, "big") * (i + 1)
            pair.send(sender, [payload])
            sent.append((payload, sender.getsockname()[:2]))
        got: list[list] = [[], []]
        for _ in range(10):
            compiled, pure = pair.receive()
            assert len(compiled) <= 5 and len(pure) <= 5
            got[0] += compiled
            got[1] += pure
        assert got[0] == got[1] == sent
    finally:
        pair.close()
        for sender in senders:
            sender.close()


@needs_compiled
@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback here")
def test_ipv6_sources_are_named_as_the_socket_module_names_them():
    pair = Pair(batch=4, slot_size=512, host="::1")
    sender = bound("::1")
    try:
        pair.send(sender, [b"a", b"bb"])
        compiled, pure = pair.receive()
        assert compiled == pure == [(b"a", sender.getsockname()[:2]), (b"bb", sender.getsockname()[:2])]
        assert compiled[0][1][0] == "::1"
    finally:
        pair.close()
        sender.close()


def test_an_empty_socket_is_an_empty_batch_for_both():
    sock = bound()
    try:
        readers = [LoopReader(sock)]
        if compiled_available():
            readers.append(MmsgReader(sock.fileno()))
        for reader in readers:
            assert reader.receive() == []
            assert reader.receive() == []
    finally:
        sock.close()


def test_a_closed_socket_is_an_error_not_an_empty_batch():
    sock = bound()
    readers = [LoopReader(sock)]
    if compiled_available():
        readers.append(MmsgReader(sock.fileno()))
    sock.close()
    for reader in readers:
        with pytest.raises(OSError):
            reader.receive()


def test_the_choice_of_reader(monkeypatch):
    sock = UdpSocket.bind("127.0.0.1", 0)
    try:
        monkeypatch.setenv("TRIO_SFU_FASTPATH", "0")
        assert type(batch_reader(sock)) is LoopReader
        monkeypatch.setenv("TRIO_SFU_FASTPATH", "1")
        assert type(batch_reader(sock)) is (MmsgReader if compiled_available() else LoopReader)
        assert type(batch_reader(sock, fast=False)) is LoopReader
        # The extension missing: the pure reader, whatever the flag says.
        monkeypatch.setattr(batch_recv, "_recv", None)
        assert type(batch_reader(sock, fast=True)) is LoopReader
        with pytest.raises(RuntimeError):
            MmsgReader(sock.fileno())
    finally:
        sock.close()


def test_an_in_memory_socket_gets_the_pure_reader():
    from trio_sfu.testing.memory_network import MemoryNetwork

    net = MemoryNetwork()
    sock = net.bind_datagram("10.0.0.1", 1000)
    assert type(batch_reader(sock, fast=True)) is LoopReader


@pytest.mark.parametrize("fast_path", [
    pytest.param(True, id="recvmmsg", marks=needs_compiled),
    pytest.param(False, id="pure"),
])
async def test_a_flooded_socket_does_not_starve_the_other(fast_path):
    """Socket A holds a flood of datagrams and socket B one, before either reader starts: B's
    datagram is routed after at most a few of A's batches, not after the whole flood."""
    routed: list[str] = []

    class Recorder(UdpMux):
        def route(self, data, addr, now, sock=None):  # type: ignore[override]
            routed.append("B" if sock is self.sockets[1] else "A")
            super().route(data, addr, now, sock)

    mux = Recorder(UdpSocket.bind("127.0.0.1", 0), m.Metrics(), others=[UdpSocket.bind("127.0.0.2", 0)],
                   fast_path=fast_path)
    flood = 20 * RECEIVE_BATCH
    sender = bound()
    try:
        a, b = (sock.getsockname()[:2] for sock in mux.sockets)
        for i in range(flood):
            sender.sendto(b"\x80" + i.to_bytes(2, "big"), a)
        sender.sendto(b"\x80B", b)
        sender.sendto(b"x" * 9000, a)  # over MAX_DATAGRAM: dropped and counted
        async with trio.open_nursery() as nursery:
            await nursery.start(mux.run)
            with trio.fail_after(10):
                while len(routed) < flood + 1:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    finally:
        sender.close()
    assert routed.count("A") == flood and routed.count("B") == 1
    assert routed.index("B") <= 4 * RECEIVE_BATCH, routed.index("B")
    assert mux.metrics.get(UDP_RECEIVED) == flood + 1
    assert mux.metrics.get(UDP_DROPPED_OVERSIZED) == 1


class _ReportingSocket:
    """A socket whose reads report an ICMP error for an earlier send between datagrams (what
    Linux does on a connected or IP_RECVERR socket), then run empty."""

    def __init__(self) -> None:
        self.script: list = [ConnectionRefusedError(errno.ECONNREFUSED, "refused"), (b"one", ("192.0.2.1", 5)),
                             ConnectionResetError(errno.ECONNRESET, "reset"),
                             OSError(errno.EHOSTUNREACH, "no route"), (b"two", ("192.0.2.2", 6))]

    def recvfrom_into(self, buffer: bytearray) -> tuple[int, tuple[str, int]]:
        if not self.script:
            raise BlockingIOError()
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        data, addr = step
        buffer[:len(data)] = data
        return len(data), addr


def test_an_icmp_error_on_a_read_is_skipped_and_reading_goes_on():
    reader = LoopReader(_ReportingSocket())  # type: ignore[arg-type]
    assert reader.receive() == [(b"one", ("192.0.2.1", 5)), (b"two", ("192.0.2.2", 6))]
    assert reader.receive() == []
