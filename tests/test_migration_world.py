"""Two nodes in one Trio run hosting one room, with in-memory clients: the world the race,
migration and explorer tests drive. The clients answer the server's subscriber offers with our
SDP answerer over real serialized SDP, receive the forwarded RTP, and record what they saw so
the invariants can be checked from the client's side.

Also the tests of the world itself (a plain migration of each participant, a cancelled one).
"""

from __future__ import annotations

import contextlib
import hashlib
import struct
from typing import AsyncIterator, Callable, Optional

import attrs
import trio
import trio.testing
from livekit.protocol import rtc
from server_fixtures import assert_nodes_clean, leak_baseline

from sdp.codecs import MediaKind
from sdp.model import Codec, Fingerprint, SessionDescription
from sdp.negotiator import LocalParams, answer_offer
from sdp.parser import parse, serialize
from trio_sfu.cluster.node_model import Node, TrackSpec
from trio_sfu.cluster.link import in_memory_link_pair
from trio_sfu.tracks import FifoHead, RecordedAtClosing

ROOM = "room"
TRACK = "TR_pB_mic"
OPUS = Codec(111, "opus", 48000, 2, "minptime=10;useinbandfec=1")
RECONCILE = 0.5  # the reconcile tick in these tests (LiveKit's 3 s, shortened as its tests do)


def _client_params(name: str) -> LocalParams:
    digest = hashlib.sha256(name.encode()).hexdigest().upper()
    return LocalParams(f"c{name}"[:8].ljust(4, "x"), f"client-password-{name}".ljust(22, "x"),
                       (Fingerprint("sha-256", ":".join(digest[i:i + 2] for i in range(0, 64, 2))),), ())


@attrs.define
class Received:
    at: float
    ssrc: int
    seq: int
    ts: int


class FakeClient:
    """A LiveKit client's subscriber side: answers offers (optionally held at a gate) and
    records every RTP packet; also checks each offer for a track carried twice."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.local = _client_params(name)
        self.offers: list[str] = []
        self.received: list[Received] = []
        self.responses: list[tuple[str, int]] = []
        self.gate: Optional[trio.Event] = None  # set by a test to hold the next answer
        self.waiting = trio.Event()  # set when an answer is held at the gate
        self.answer_delay: Callable[[], float] = lambda: 0.0

    async def exchange(self, offer: SessionDescription) -> SessionDescription:
        text = serialize(offer)
        self.offers.append(text)
        parsed = parse(text)  # what goes over the signal connection is text
        delay = self.answer_delay()
        if delay:
            await trio.sleep(delay)
        if self.gate is not None:
            gate, self.gate = self.gate, None
            self.waiting.set()
            await gate.wait()
        return parse(serialize(answer_offer(parsed, self.local)))

    def on_rtp(self, packet: bytes) -> bool:
        _, _, seq, ts, ssrc = struct.unpack_from("!BBHII", packet)
        self.received.append(Received(trio.current_time(), ssrc, seq, ts))
        return True

    def send_signal(self, response: rtc.SignalResponse) -> None:
        # Over the wire and back, as the client would read it.
        parsed = rtc.SignalResponse.FromString(response.SerializeToString())
        if parsed.WhichOneof("message") == "subscription_response":
            self.responses.append((parsed.subscription_response.track_sid, parsed.subscription_response.err))

    def duplicate_track_offers(self) -> list[str]:
        """Offers in which one track id is on two live m-lines (parsed from the SDP text)."""
        bad = []
        for text in self.offers:
            ids = [m.msid.track_id for m in parse(text).media if not m.rejected and m.msid is not None]
            if len(ids) != len(set(ids)):
                bad.append(text)
        return bad

    def mids_for(self, track_id: str) -> list[str]:
        """The mid carrying `track_id` in each offer that carried it."""
        out = []
        for text in self.offers:
            for m in parse(text).media:
                if not m.rejected and m.msid is not None and m.msid.track_id == track_id:
                    out.append(m.mid)
        return out

    def discontinuities(self) -> list[str]:
        """Where the stream the client saw stops being one continuous stream: an SSRC change,
        a sequence number that is not the previous + 1, or a timestamp that does not advance."""
        problems = []
        for prev, cur in zip(self.received, self.received[1:]):
            if cur.ssrc != prev.ssrc:
                problems.append(f"ssrc {prev.ssrc:#x} -> {cur.ssrc:#x} at {cur.at:.3f}")
            elif cur.seq != (prev.seq + 1) & 0xFFFF:
                problems.append(f"seq {prev.seq} -> {cur.seq} at {cur.at:.3f}")
            elif not 0 < (cur.ts - prev.ts) & 0xFFFFFFFF < 0x80000000:
                problems.append(f"ts {prev.ts} -> {cur.ts} at {cur.at:.3f}")
        return problems


class FakePublisher:
    """pB's microphone: an Opus packet every 20 ms to whichever node pB is connected to."""

    def __init__(self, pid: str, track_id: str, node: Node) -> None:
        self.pid = pid
        self.track_id = track_id
        self.node = node
        self.ssrc = 0x5EED0001
        self.seq = 1000
        self.ts = 960 * 50
        self.running = True

    def packet(self) -> bytes:
        return struct.pack("!BBHII", 0x80, 111, self.seq & 0xFFFF, self.ts & 0xFFFFFFFF, self.ssrc) + b"\xfc" + bytes(40)

    async def run(self) -> None:
        while self.running:
            self.node.publisher_rtp(ROOM, self.pid, self.track_id, self.packet())
            self.seq += 1
            self.ts += 960
            await trio.sleep(0.02)


@attrs.define
class World:
    a: Node
    b: Node
    clients: dict[str, FakeClient]
    publisher: FakePublisher
    nursery: trio.Nursery

    def node(self, name: str) -> Node:
        return self.a if name == "A" else self.b

    def leaked_subscribers(self) -> list:
        return self.a.registered_subscribers() + self.b.registered_subscribers()

    def closed_with_subscribers(self) -> list:
        out = []
        for node in (self.a, self.b):
            for room in node.rooms.values():
                for source in list(room.remote.values()) + list(room.local.values()):
                    if source.state.value == "closed" and source.subscriber_ids:
                        out.append(repr(source))
        return out


@contextlib.asynccontextmanager
async def two_nodes(seam=None, *, resolution=FifoHead, resume_policy=RecordedAtClosing,
                    delay_a=None, delay_b=None, pA_on_a: bool = True) -> AsyncIterator[World]:
    """Nodes A and B linked, both hosting ROOM; pB publishes TRACK on A, pA on A subscribes to
    it and has received media. Everything is torn down and checked for leaks on exit."""
    clients = {"pA": FakeClient("pA"), "pB": FakeClient("pB")}
    kwargs = dict(clients=clients.get, resolution=resolution, resume_policy=resume_policy,
                  reconcile_interval=RECONCILE, not_found_timeout=10.0)
    if seam is not None:
        kwargs["seam"] = seam
    baseline = leak_baseline()
    a, b = Node("A", **kwargs), Node("B", **kwargs)
    link_a, link_b = in_memory_link_pair("A", "B", delay_a=delay_a, delay_b=delay_b)
    a.add_link(link_a)
    b.add_link(link_b)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await nursery.start(b.run)
        a.host_room(ROOM)
        b.host_room(ROOM)
        a.join(ROOM, "pB", clients["pB"])
        a.publish(ROOM, "pB", TrackSpec(TRACK, "pB", MediaKind.AUDIO, (OPUS,), "pB|microphone"))
        publisher = FakePublisher("pB", TRACK, a)
        nursery.start_soon(publisher.run)
        a.join(ROOM, "pA", clients["pA"], subscriptions=(TRACK,))
        with trio.fail_after(10):
            while len(clients["pA"].received) < 5:
                await trio.sleep(0.01)
        world = World(a, b, clients, publisher, nursery)
        try:
            yield world
        finally:
            publisher.running = False
            nursery.cancel_scope.cancel()
    assert_nodes_clean((a, b), baseline)


def subscribed_source(world: World, node: str, pid: str, track_id: str = TRACK):
    room = world.node(node).rooms[ROOM]
    p = room.participants.get(pid)
    if p is None:
        return None
    binding = p.endpoint.bindings.get(track_id)
    return binding.source if binding is not None and binding.down is not None else None


# ---- tests of the world -------------------------------------------------------------------------


async def test_subscriber_on_the_publishers_node_gets_continuous_media(autojump_clock):
    async with two_nodes() as w:
        await trio.sleep(1.0)
        pa = w.clients["pA"]
        assert len(pa.received) >= 40
        assert pa.discontinuities() == []
        assert subscribed_source(w, "A", "pA").origin.value == "local"
        assert len(pa.offers) == 1


async def test_subscriber_migrates_alone_and_keeps_its_mline_and_numbering(autojump_clock):
    async with two_nodes() as w:
        pa = w.clients["pA"]
        mid_before = pa.mids_for(TRACK)[-1]
        assert await w.a.migrate(ROOM, "pA", "B")
        await trio.sleep(1.0)
        src = subscribed_source(w, "B", "pA")
        assert src is not None and src.origin.value == "remote"
        assert pa.mids_for(TRACK)[-1] == mid_before
        assert pa.discontinuities() == []
        assert "pA" not in w.a.rooms[ROOM].participants


async def test_publisher_migrates_alone_and_its_subscriber_switches_on_the_same_mline(autojump_clock):
    async with two_nodes() as w:
        pa = w.clients["pA"]
        offers_before = len(pa.offers)

        async def move_media_after_accept():
            # The client reconnects to B and its media follows once B took it over.
            while "pB" not in w.b.rooms[ROOM].participants:
                await trio.sleep(0.005)
            w.publisher.node = w.b

        w.nursery.start_soon(move_media_after_accept)
        assert await w.a.migrate(ROOM, "pB", "B")
        await trio.sleep(2 * RECONCILE + 0.2)
        src = subscribed_source(w, "A", "pA")
        assert src is not None and src.origin.value == "remote" and src.node_id == "B"
        assert len(pa.offers) == offers_before  # reused by replace, no renegotiation
        assert pa.discontinuities() == []
        assert w.a.rooms[ROOM].local == {}
