"""Our association against itself across a seeded lossy link, under trio's MockClock.

Every packet crosses a link that drops 10 % of packets (both directions) and
delays the rest by 15 ms; the clock autojumps, so minutes of retransmission
timers pass in a fraction of a second of wall time.
"""

from __future__ import annotations

import math
import random

import trio
import trio.testing

from rtp.sctp import chunks as c
from rtp.sctp.association import AssociationState, SctpAssociation
from rtp.sctp.dcep import Ppid
from rtp.sctp.events import AssociationClosed, AssociationEstablished, ChannelOpened, MessageReceived

ONE_WAY_DELAY = 0.015


class Endpoint:
    def __init__(self, assoc: SctpAssociation) -> None:
        self.assoc = assoc
        self.inbox_send, self.inbox_recv = trio.open_memory_channel(math.inf)
        self.events: list = []
        self.changed = trio.Event()
        self.peer: Endpoint | None = None
        self.link_loss = 0.0
        self.rng = random.Random(0)
        self.delivered_packets: list[bytes] = []

    def kick(self) -> None:
        self.inbox_send.send_nowait(None)

    async def _deliver_later(self, packet: bytes) -> None:
        await trio.sleep(ONE_WAY_DELAY)
        assert self.peer is not None
        self.peer.delivered_packets.append(packet)
        self.peer.inbox_send.send_nowait(packet)

    async def run(self, nursery: trio.Nursery) -> None:
        assoc = self.assoc
        while True:
            deadline = assoc.next_deadline()
            with trio.move_on_at(math.inf if deadline is None else deadline):
                item = await self.inbox_recv.receive()
                while True:
                    if item is not None:
                        assoc.receive_packet(item, trio.current_time())
                    try:
                        item = self.inbox_recv.receive_nowait()
                    except trio.WouldBlock:
                        break
            now = trio.current_time()
            timer = assoc.next_deadline()
            if timer is not None and timer <= now:
                assoc.handle_timeout(now)
            for packet in assoc.packets_to_send(now):
                if self.rng.random() >= self.link_loss:
                    nursery.start_soon(self._deliver_later, packet)
            got_event = False
            while (event := assoc.next_event()) is not None:
                self.events.append(event)
                got_event = True
            if got_event:
                self.changed.set()
                self.changed = trio.Event()

    async def wait_for(self, predicate) -> None:
        # Simulated seconds: a stall fails the test instead of hanging it.
        with trio.fail_after(900):
            while not predicate():
                closed = [e for e in self.events if isinstance(e, AssociationClosed)]
                assert not closed, f"association closed: {closed}"
                await self.changed.wait()

    def messages(self, stream_id: int) -> list:
        return [e.data for e in self.events if isinstance(e, MessageReceived) and e.stream_id == stream_id]


def _pair(seed: int, loss: float, max_message_size: int = 262144):
    a = Endpoint(SctpAssociation(True, max_message_size=max_message_size, remote_max_message_size=max_message_size))
    b = Endpoint(SctpAssociation(False, max_message_size=max_message_size, remote_max_message_size=max_message_size))
    a.peer, b.peer = b, a
    a.rng, b.rng = random.Random(seed), random.Random(seed + 1)
    a.link_loss = b.link_loss = loss
    return a, b


async def _establish(nursery, a: Endpoint, b: Endpoint) -> None:
    nursery.start_soon(a.run, nursery)
    nursery.start_soon(b.run, nursery)
    a.assoc.start(trio.current_time())
    a.kick()
    await a.wait_for(lambda: AssociationEstablished() in a.events)
    await b.wait_for(lambda: AssociationEstablished() in b.events)


def _run(main) -> None:
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_reliable_channel_delivers_1mb_and_10000_messages_in_order_through_10pct_loss():
    big = random.Random(7).randbytes(1 << 20)
    small = [f"message {i} ".encode() * (1 + i % 7) for i in range(10_000)]

    async def main():
        a, b = _pair(seed=1234, loss=0.10, max_message_size=2 << 20)
        async with trio.open_nursery() as nursery:
            await _establish(nursery, a, b)
            sid = a.assoc.open_channel("_reliable")
            a.assoc.send(sid, big)
            for msg in small:
                a.assoc.send(sid, msg)
            a.kick()
            started = trio.current_time()
            await b.wait_for(lambda: len(b.messages(sid)) == 1 + len(small))
            elapsed = trio.current_time() - started
            nursery.cancel_scope.cancel()
        got = b.messages(sid)
        assert got[0] == big
        assert got[1:] == small
        # The link really lost packets and the sender really recovered them.
        counters = a.assoc.counters
        assert counters.chunks_retransmitted > 50
        assert counters.fast_retransmits > 0
        assert b.assoc.counters.malformed_packets == 0
        # Measured 37-75 simulated seconds over link seeds; a stall or RTO blow-up shows here.
        assert elapsed < 300, f"took {elapsed} simulated seconds"

    _run(main)


def test_lossy_channel_never_retransmits_and_forward_tsn_keeps_the_association_alive():
    count = 2000

    async def main():
        a, b = _pair(seed=99, loss=0.0)
        async with trio.open_nursery() as nursery:
            await _establish(nursery, a, b)
            lossy = a.assoc.open_channel("_lossy", ordered=False, max_retransmits=0)
            reliable = a.assoc.open_channel("_reliable")
            a.kick()
            await a.wait_for(lambda: sum(isinstance(e, ChannelOpened) for e in a.events) == 2)
            baseline = a.assoc.counters.chunks_retransmitted
            arrived_before = len(b.delivered_packets)

            a.link_loss = b.link_loss = 0.10
            sent = [f"lossy {i}".encode() for i in range(count)]
            for i, msg in enumerate(sent):
                a.assoc.send(lossy, msg)
                if i % 50 == 49:
                    # Spread the burst over time so losses hit many separate packets.
                    a.kick()
                    await trio.sleep(0.01)
            a.kick()
            await trio.sleep(30)
            assert a.assoc.counters.chunks_retransmitted == baseline
            assert a.assoc.counters.chunks_abandoned > 0
            assert a.assoc.counters.forward_tsn_sent > 0
            assert a.assoc.unacked_chunks == 0

            # Still alive: a reliable message goes through the same lossy link.
            a.assoc.send(reliable, b"still here")
            a.kick()
            await b.wait_for(lambda: b.messages(reliable) == [b"still here"])
            nursery.cancel_scope.cancel()

        # What the receiver delivered is exactly the lossy messages that crossed the link.
        crossed = []
        for packet in b.delivered_packets[arrived_before:]:
            for chunk in c.parse_packet(packet).chunks:
                if isinstance(chunk, c.DataChunk) and chunk.stream_id == lossy and chunk.ppid == Ppid.BINARY:
                    crossed.append(chunk.user_data)
        got = b.messages(lossy)
        assert len(got) == len(set(got)), "a lossy message was delivered twice"
        assert got == crossed
        assert 0.75 * count < len(got) < count
        assert a.assoc.state is AssociationState.ESTABLISHED and b.assoc.state is AssociationState.ESTABLISHED

    _run(main)
