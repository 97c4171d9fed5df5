"""Interop: our sans-IO SCTP association against aiortc's independent RTCSctpTransport.

aiortc's SCTP normally rides on its RTCDtlsTransport; here a stand-in DTLS
transport hands each SCTP packet aiortc sends to our association and feeds our
packets into aiortc's ``_handle_data``. The exchange runs inside ``asyncio.run``
with our association clocked by ``loop.time()``.
"""

from __future__ import annotations

import asyncio
from typing import Callable

import pytest
from aiortc import RTCDataChannel, RTCDataChannelParameters
from aiortc.rtcsctptransport import RTCSctpCapabilities, RTCSctpTransport

from rtp.sctp import chunks as c
from rtp.sctp.association import AssociationState, SctpAssociation
from rtp.sctp.events import (
    AssociationClosed,
    AssociationEstablished,
    ChannelClosed,
    ChannelOpened,
    MessageReceived,
    Reliability,
)


class StandInDtls:
    """The few members of RTCDtlsTransport that RTCSctpTransport touches."""

    def __init__(self, role: str) -> None:
        self.state = "connected"
        self._role = role
        self.to_ours: list[bytes] = []
        self.receiver = None

    def _register_data_receiver(self, receiver) -> None:
        self.receiver = receiver

    def _unregister_data_receiver(self, receiver) -> None:
        self.receiver = None

    async def _send_data(self, data: bytes) -> None:
        self.to_ours.append(bytes(data))


class Pair:
    def __init__(self, ours_is_dtls_client: bool) -> None:
        self.loop = asyncio.get_running_loop()
        self.dtls = StandInDtls("server" if ours_is_dtls_client else "client")
        self.theirs = RTCSctpTransport(self.dtls)
        self.ours = SctpAssociation(is_client=ours_is_dtls_client, remote_max_message_size=262144)
        self.events: list = []
        # Loss injection: called with each packet, True drops it.
        self.drop_to_ours: Callable[[bytes], bool] = lambda packet: False
        self.drop_to_theirs: Callable[[bytes], bool] = lambda packet: False

    async def start(self) -> None:
        await self.theirs.start(RTCSctpCapabilities(maxMessageSize=262144), 5000)
        self.ours.start(self.loop.time())

    async def step(self) -> None:
        now = self.loop.time()
        inbound, self.dtls.to_ours = self.dtls.to_ours, []
        for packet in inbound:
            if not self.drop_to_ours(packet):
                self.ours.receive_packet(packet, now)
        timer = self.ours.next_deadline()
        if timer is not None and timer <= now:
            self.ours.handle_timeout(now)
        for packet in self.ours.packets_to_send(now):
            if not self.drop_to_theirs(packet):
                await self.theirs._handle_data(packet)
        while (event := self.ours.next_event()) is not None:
            self.events.append(event)
        await asyncio.sleep(0.002)

    async def until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = self.loop.time() + timeout
        while not predicate():
            assert self.loop.time() < deadline, f"timed out; our events so far: {self.events}"
            await self.step()

    def of(self, kind) -> list:
        return [e for e in self.events if isinstance(e, kind)]


async def _connected(ours_is_dtls_client: bool) -> Pair:
    pair = Pair(ours_is_dtls_client)
    await pair.start()
    await pair.until(lambda: pair.of(AssociationEstablished) and pair.theirs.state == "connected")
    return pair


@pytest.mark.parametrize("ours_is_dtls_client", [False, True], ids=["aiortc-client", "aiortc-server"])
def test_channels_both_ways_with_aiortc(ours_is_dtls_client):
    async def main():
        pair = await _connected(ours_is_dtls_client)
        assert pair.ours.state is AssociationState.ESTABLISHED

        # aiortc opens a channel: we accept it and ACK it.
        received_by_them: list = []
        theirs_channel = RTCDataChannel(
            pair.theirs, RTCDataChannelParameters(label="from-aiortc", protocol="proto-a")
        )
        theirs_channel.on("message", received_by_them.append)
        await pair.until(lambda: pair.of(ChannelOpened) and theirs_channel.readyState == "open")
        opened = pair.of(ChannelOpened)[0]
        their_id = theirs_channel.id
        # RFC 8832: DTLS client takes even ids, DTLS server odd ones.
        assert their_id % 2 == (1 if ours_is_dtls_client else 0)
        assert opened == ChannelOpened(their_id, "from-aiortc", "proto-a", True, Reliability())

        # We open a partially reliable unordered channel; aiortc learns its parameters from our OPEN.
        announced: list[RTCDataChannel] = []
        pair.theirs.on("datachannel", announced.append)
        our_id = pair.ours.open_channel("from-us", protocol="proto-b", ordered=False, max_retransmits=0)
        assert our_id % 2 == (0 if ours_is_dtls_client else 1)
        await pair.until(lambda: announced and any(e.locally_initiated for e in pair.of(ChannelOpened)))
        their_view = announced[0]
        assert (their_view.id, their_view.label, their_view.protocol) == (our_id, "from-us", "proto-b")
        assert their_view.ordered is False and their_view.maxRetransmits == 0
        their_view_messages: list = []
        their_view.on("message", their_view_messages.append)

        # Messages both ways, every PPID, and a fragmented 200 kB message each way.
        big_out = bytes(range(256)) * 800
        big_in = bytes(reversed(range(256))) * 800
        for payload in ("hello ☃", b"\x00\x01binary", "", b"", big_out):
            pair.ours.send(their_id, payload)
        for payload in ("hi from aiortc", b"\xffbin", "", b"", big_in):
            theirs_channel.send(payload)
        pair.ours.send(our_id, b"lossy-but-delivered")
        await pair.until(lambda: len(received_by_them) == 5 and len(pair.of(MessageReceived)) == 5
                         and their_view_messages)
        assert received_by_them == ["hello ☃", b"\x00\x01binary", "", b"", big_out]
        got = [(e.stream_id, e.data, e.ppid) for e in pair.of(MessageReceived)]
        assert got == [
            (their_id, "hi from aiortc", 51),
            (their_id, b"\xffbin", 53),
            (their_id, "", 56),
            (their_id, b"", 57),
            (their_id, big_in, 53),
        ]
        assert their_view_messages == [b"lossy-but-delivered"]

        # aiortc closes its channel (stream reset); we reset ours back and both report closed.
        theirs_channel.close()
        await pair.until(lambda: ChannelClosed(their_id) in pair.events and theirs_channel.readyState == "closed")
        # We close ours; aiortc answers with its own reset.
        pair.ours.close_channel(our_id)
        await pair.until(lambda: ChannelClosed(our_id) in pair.events and their_view.readyState == "closed")
        assert pair.ours.channels == {}
        assert pair.ours.counters.malformed_packets == 0
        assert pair.ours.counters.bad_verification_tag == 0

        # A reset stream starts again at SSN 0: a new channel can reuse the id (aiortc opens again).
        again = RTCDataChannel(pair.theirs, RTCDataChannelParameters(label="again"))
        await pair.until(lambda: again.readyState == "open")
        again.send("after reset")
        await pair.until(lambda: pair.of(MessageReceived)[-1].data == "after reset")
        await pair.theirs.stop()

    asyncio.run(main())


def test_graceful_shutdown_with_aiortc():
    async def main():
        pair = await _connected(True)
        pair.ours.shutdown()
        await pair.until(lambda: pair.of(AssociationClosed) and pair.theirs.state == "closed")
        assert pair.of(AssociationClosed) == [AssociationClosed("shutdown")]
        assert pair.ours.state is AssociationState.CLOSED

    asyncio.run(main())


def test_abort_from_aiortc_closes_us():
    async def main():
        pair = await _connected(False)
        await pair.theirs.stop()  # aiortc sends ABORT
        await pair.until(lambda: pair.of(AssociationClosed))
        assert pair.of(AssociationClosed) == [AssociationClosed("aborted by peer")]

    asyncio.run(main())


def test_our_abort_closes_aiortc():
    async def main():
        pair = await _connected(True)
        pair.ours.abort()
        await pair.until(lambda: pair.theirs.state == "closed")
        assert pair.of(AssociationClosed) == [AssociationClosed("abort")]

    asyncio.run(main())


def _every_nth_data_packet(n: int) -> Callable[[bytes], bool]:
    count = 0

    def drop(packet: bytes) -> bool:
        nonlocal count
        if not any(isinstance(ch, c.DataChunk) for ch in c.parse_packet(packet).chunks):
            return False
        count += 1
        return count % n == 0

    return drop


def test_partial_reliability_interop_both_ways_under_loss():
    """Lossy channels each way: abandoned data is skipped with FORWARD-TSN, no association stalls."""

    async def main():
        pair = await _connected(True)
        ours_lossy = pair.ours.open_channel("_lossy", ordered=False, max_retransmits=0)
        announced: list[RTCDataChannel] = []
        pair.theirs.on("datachannel", announced.append)
        theirs_lossy = RTCDataChannel(
            pair.theirs, RTCDataChannelParameters(label="their-lossy", ordered=False, maxRetransmits=0)
        )
        await pair.until(lambda: announced and theirs_lossy.readyState == "open"
                         and sum(isinstance(e, ChannelOpened) for e in pair.events) == 2)
        their_view = announced[0]
        got_by_them: list = []
        their_view.on("message", got_by_them.append)

        pair.drop_to_theirs = _every_nth_data_packet(4)
        pair.drop_to_ours = _every_nth_data_packet(4)
        retransmitted_before = pair.ours.counters.chunks_retransmitted
        for i in range(60):
            pair.ours.send(ours_lossy, f"ours {i}")
            theirs_lossy.send(f"theirs {i}")
            for _ in range(3):
                await pair.step()
        # Settle: both senders abandon what was lost and move the peer on with FORWARD-TSN.
        await pair.until(lambda: pair.ours.unacked_chunks == 0 and not pair.theirs._sent_queue, timeout=20)
        pair.drop_to_theirs = pair.drop_to_ours = lambda packet: False

        ours_received = [e.data for e in pair.of(MessageReceived) if e.stream_id == theirs_lossy.id]
        assert 20 <= len(ours_received) < 60 and len(set(ours_received)) == len(ours_received)
        assert 20 <= len(got_by_them) < 60 and len(set(got_by_them)) == len(got_by_them)
        assert pair.ours.counters.chunks_retransmitted == retransmitted_before
        assert pair.ours.counters.forward_tsn_sent > 0 and pair.ours.counters.forward_tsn_received > 0
        # aiortc's cumulative TSN caught up with everything we sent, abandoned chunks included.
        assert pair.theirs._last_received_tsn == (pair.ours._next_tsn - 1) & 0xFFFFFFFF

        # Both associations still carry data afterwards.
        pair.ours.send(ours_lossy, "after")
        theirs_lossy.send("after")
        await pair.until(lambda: "after" in got_by_them and pair.of(MessageReceived)[-1].data == "after")
        await pair.theirs.stop()

    asyncio.run(main())


def _some_data_packets(every: int, first: int) -> Callable[[bytes], bool]:
    """Drop every n-th DATA-carrying packet among the first few, so recovery is by SACK gaps."""
    count = 0

    def drop(packet: bytes) -> bool:
        nonlocal count
        if not any(isinstance(ch, c.DataChunk) for ch in c.parse_packet(packet).chunks):
            return False
        count += 1
        return count <= first and count % every == 0

    return drop


def test_reliable_channel_recovers_from_loss_both_ways_with_aiortc():
    async def main():
        pair = await _connected(False)
        channel = RTCDataChannel(pair.theirs, RTCDataChannelParameters(label="_reliable"))
        got_by_them: list = []
        channel.on("message", got_by_them.append)
        await pair.until(lambda: channel.readyState == "open" and pair.of(ChannelOpened))
        sid = channel.id
        pair.drop_to_ours = _some_data_packets(every=7, first=60)
        pair.drop_to_theirs = _some_data_packets(every=7, first=60)
        ours_msgs = [bytes([i]) * 3000 for i in range(60)]
        theirs_msgs = [bytes([255 - i]) * 2500 for i in range(60)]
        for i in range(60):
            pair.ours.send(sid, ours_msgs[i])
            channel.send(theirs_msgs[i])
        await pair.until(lambda: len(got_by_them) == 60 and len(pair.of(MessageReceived)) == 60, timeout=30)
        assert got_by_them == ours_msgs
        assert [e.data for e in pair.of(MessageReceived)] == theirs_msgs
        assert pair.ours.counters.chunks_retransmitted > 0
        assert pair.ours.counters.malformed_packets == 0
        await pair.theirs.stop()

    asyncio.run(main())


def test_thousands_of_small_messages_each_way_with_aiortc():
    async def main():
        pair = await _connected(True)
        channel = RTCDataChannel(pair.theirs, RTCDataChannelParameters(label="volume"))
        got_by_them: list = []
        channel.on("message", got_by_them.append)
        await pair.until(lambda: channel.readyState == "open" and pair.of(ChannelOpened))
        count = 3000
        for i in range(count):
            channel.send(f"theirs {i}")
            pair.ours.send(channel.id, f"ours {i}")
        await pair.until(lambda: len(got_by_them) == count and len(pair.of(MessageReceived)) == count, timeout=60)
        assert got_by_them == [f"ours {i}" for i in range(count)]
        assert [e.data for e in pair.of(MessageReceived)] == [f"theirs {i}" for i in range(count)]
        await pair.theirs.stop()

    asyncio.run(main())
