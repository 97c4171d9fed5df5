"""Two real nodes hosting one room, run under MockClock: the world the race, cancellation,
bad-input and explorer tests drive.

Everything is the code that ships: two `Server(..., enable_media=True, node_id=...)` linked by
the in-memory relay link, our `LiveKitClient` participants, the real NodeRelay and RoomMedia.
Only the network is in memory (trio_sfu.testing.memory_network, via server_fixtures.memory_nodes),
so the whole story runs on Trio's clock: signalling over memory streams into each server's HTTP
front, ICE/DTLS/SRTP over in-memory datagrams. pB publishes a microphone track on node A and
sends 20 ms Opus-sized packets; pA, also on A, subscribes to it. An `Observer` records what pA's
client saw — every subscriber offer (as SDP text) and every RTP packet it decrypted — so the
invariants are checked from the client's side, and can hold pA's answers at a gate.

Interleavings are ordered through the server's seams (trio_sfu.tracks.seams: the subscription
managers' bind and post-check, the relay's closing steps and migration steps), the relay link's
delivery delay, and pA's answer gate. The pre-fix rules go into the real server through
`MediaService.resolution` / `MediaService.resume_policy`.

Also the tests of the world itself (a plain migration of each participant).
"""

from __future__ import annotations

import collections
import contextlib
from typing import AsyncIterator, Callable, Optional

import attrs
import trio
from livekit.protocol import rtc
from server_fixtures import MemoryNodes, memory_nodes, registered_subscribers

from rtp.packet import read_sequence_number, read_ssrc, read_timestamp
from sdp.parser import parse
from trio_sfu.client import LiveKitClient, LocalPublication
from trio_sfu.client.senders import send_synthetic_audio
from trio_sfu.forwarding.receiver import ReceiverState
from trio_sfu.server import Server
from trio_sfu.tracks import FifoHead, RecordedAtClosing, SourceOrigin, TrackSource, live_sources

ROOM = "room"
RECONCILE = 0.5  # the reconcile tick in these tests (LiveKit's 3 s, shortened as its tests do)


class Seams:
    """The servers' seam: records each seam reached and holds the ones a test asked for."""

    def __init__(self) -> None:
        self.holds: dict[str, trio.Event] = {}
        self.reached: collections.defaultdict[str, trio.Event] = collections.defaultdict(trio.Event)
        self.log: list[tuple[float, str, dict]] = []

    def hold(self, name: str) -> trio.Event:
        release = self.holds[name] = trio.Event()
        return release

    async def __call__(self, name: str, context: dict) -> None:
        self.log.append((trio.current_time(), name, context))
        self.reached[name].set()
        release = self.holds.pop(name, None)
        if release is not None:
            await release.wait()


async def until(predicate: Callable[[], object], timeout: float = 10.0, step: float = 0.001) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(step)


@attrs.define
class Received:
    at: float
    ssrc: int
    seq: int
    ts: int


class Observer:
    """What a subscribing client saw: each subscriber offer (SDP text, as it arrived) and each
    RTP packet its subscriber PC decrypted. Installed on the client before it handles anything;
    it can also hold the client's next answer (`gate`) or delay every answer (`answer_delay`)."""

    def __init__(self, client: LiveKitClient) -> None:
        self.client = client
        self.offers: list[str] = []
        self.received: list[Received] = []
        self.gate: Optional[trio.Event] = None  # set by a test to hold the next answer
        self.waiting = trio.Event()  # set when an answer is held at the gate
        self.answer_delay: Callable[[], float] = lambda: 0.0
        dispatch, on_rtp = client._dispatch, client._on_subscriber_rtp

        async def observing(response: rtc.SignalResponse) -> None:
            if response.WhichOneof("message") == "offer":
                self.offers.append(response.offer.sdp)
                delay = self.answer_delay()
                if delay:
                    await trio.sleep(delay)
                if self.gate is not None:
                    gate, self.gate = self.gate, None
                    self.waiting.set()
                    await gate.wait()
            await dispatch(response)

        def receiving(packet: bytes, now: float) -> None:
            self.received.append(Received(now, read_ssrc(packet), read_sequence_number(packet), read_timestamp(packet)))
            on_rtp(packet, now)

        # Instance attributes, set before the client's first await: its reader and its
        # subscriber PC (created by the first offer) use these.
        client._dispatch = observing  # type: ignore[method-assign]
        client._on_subscriber_rtp = receiving  # type: ignore[method-assign]

    def _live_lines(self, text: str, track_id: str) -> list[str]:
        return [m.mid or "" for m in parse(text).media
                if not m.rejected and m.msid is not None and m.msid.track_id == track_id]

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
        return [mid for text in self.offers for mid in self._live_lines(text, track_id)]

    def discontinuities(self) -> list[str]:
        """Where the stream the client saw stops being one continuous stream: an SSRC change,
        a sequence number that is not the previous + 1, or a timestamp that does not advance
        (by less than 5 s of audio)."""
        problems = []
        for prev, cur in zip(self.received, self.received[1:]):
            if cur.ssrc != prev.ssrc:
                problems.append(f"ssrc {prev.ssrc:#x} -> {cur.ssrc:#x} at {cur.at:.3f}")
            elif cur.seq != (prev.seq + 1) & 0xFFFF:
                problems.append(f"seq {prev.seq} -> {cur.seq} at {cur.at:.3f}")
            elif not 0 < (cur.ts - prev.ts) & 0xFFFFFFFF < 48000 * 5:
                problems.append(f"ts {prev.ts} -> {cur.ts} at {cur.at:.3f}")
        return problems


@attrs.define
class World:
    nodes: MemoryNodes
    clients: dict[str, LiveKitClient]
    observer: Observer  # pA's
    audio: LocalPublication  # pB's microphone
    nursery: trio.Nursery
    baseline: frozenset

    @property
    def a(self) -> Server:
        return self.nodes["A"]

    @property
    def b(self) -> Server:
        return self.nodes["B"]

    @property
    def track(self) -> str:
        assert self.audio.sid is not None
        return self.audio.sid

    def sid(self, name: str) -> str:
        return self.clients[name].participant_sid

    def session(self, node: str, name: str):
        """The participant's media session on `node`, if it runs there."""
        server = self.nodes[node]
        assert server.media is not None
        room = server.media.room_by_name(ROOM)
        return room.sessions.get(self.sid(name)) if room is not None else None

    def sources(self, node: str) -> tuple[TrackSource, ...]:
        """The FIFO of the track's sources on `node`."""
        server = self.nodes[node]
        assert server.media is not None
        room = server.media.room_by_name(ROOM)
        return room.track_manager.sources(self.track) if room is not None else ()

    def resolve(self, node: str) -> Optional[TrackSource]:
        server = self.nodes[node]
        assert server.media is not None
        room = server.media.room_by_name(ROOM)
        return room.track_manager.resolve(self.track) if room is not None else None

    def subscribed_source(self, node: str, name: str) -> Optional[TrackSource]:
        """The source `name` forwards the track from on `node` (bound and started)."""
        session = self.session(node, name)
        binding = session.subscribing.endpoint.bindings.get(self.track) if session is not None else None
        return binding.source if binding is not None and binding.down is not None else None

    def closed_with_subscribers(self) -> list[str]:
        return [repr(s) for s in live_sources() if s not in self.baseline
                and s.state is ReceiverState.CLOSED and s.subscriber_ids]

    def participants(self, node: str) -> set[str]:
        room = self.nodes[node].registry.rooms.get(ROOM)
        sids = {p.sid for p in room.participants.values()} if room is not None else set()
        return {name for name in self.clients if self.sid(name) in sids}

    def subscribers_on_sources_not_open(self) -> list[str]:
        return [f"{sub} still registered on {source}" for server in (self.a, self.b)
                for _, source, sub in registered_subscribers(server) if "open" not in source]


@contextlib.asynccontextmanager
async def two_nodes(seam=None, *, resolution=FifoHead, resume_policy=RecordedAtClosing,
                    relay_delay=None, link_delay=None) -> AsyncIterator[World]:
    """Nodes A and B linked; pB publishes on A, pA on A subscribes to it and has received
    media. Everything is torn down and checked for leaks on exit (memory_nodes)."""
    def configure(server: Server) -> None:
        assert server.media is not None and server.relay is not None
        server.media.reconcile_interval = RECONCILE
        server.media.not_found_timeout = 10.0
        server.media.resolution = resolution
        server.media.resume_policy = resume_policy
        if seam is not None:
            server.media.seam = seam
            server.relay.seam = seam

    baseline = frozenset(live_sources())
    async with memory_nodes("A", "B", link_delay=link_delay, relay_delay=relay_delay, configure=configure) as nodes:
        async with nodes.connect("pB", "A", room=ROOM) as pb, trio.open_nursery() as nursery:
            audio = await pb.publish_audio()
            nursery.start_soon(send_synthetic_audio, audio)
            async with nodes.connect("pA", "A", room=ROOM) as pa:
                observer = Observer(pa)
                await until(lambda: len(observer.received) >= 5)
                try:
                    yield World(nodes, {"pA": pa, "pB": pb}, observer, audio, nursery, baseline)
                finally:
                    nursery.cancel_scope.cancel()


# ---- tests of the world -------------------------------------------------------------------------


async def test_subscriber_on_the_publishers_node_gets_continuous_media(autojump_clock):
    async with two_nodes() as w:
        await trio.sleep(1.0)
        pa = w.observer
        assert len(pa.received) >= 40
        assert pa.discontinuities() == []
        assert w.subscribed_source("A", "pA").origin is SourceOrigin.LOCAL
        assert len(set(pa.mids_for(w.track))) == 1 and pa.duplicate_track_offers() == []


async def test_subscriber_migrates_alone_and_keeps_its_mline_and_numbering(autojump_clock):
    async with two_nodes() as w:
        pa = w.observer
        mid_before = pa.mids_for(w.track)[-1]
        assert await w.a.relay.migrate(ROOM, w.sid("pA"), "B")
        await until(lambda: w.subscribed_source("B", "pA") is not None)
        await trio.sleep(1.0)
        src = w.subscribed_source("B", "pA")
        assert src is not None and src.origin is SourceOrigin.REMOTE
        assert set(pa.mids_for(w.track)) == {mid_before}
        assert pa.discontinuities() == []
        assert w.participants("A") == {"pB"} and w.participants("B") == {"pA"}


async def test_publisher_migrates_alone_and_its_subscriber_switches_on_the_same_mline(autojump_clock):
    async with two_nodes() as w:
        pa = w.observer
        offers_before = len(pa.offers)
        assert await w.a.relay.migrate(ROOM, w.sid("pB"), "B")
        await until(lambda: (s := w.subscribed_source("A", "pA")) is not None and s.origin is SourceOrigin.REMOTE)
        await trio.sleep(2 * RECONCILE + 0.2)
        src = w.subscribed_source("A", "pA")
        assert src is not None and src.origin is SourceOrigin.REMOTE and src.node_id == "B"
        assert len(pa.offers) == offers_before  # reused by replace, no renegotiation
        assert pa.discontinuities() == []
        assert [s.origin for s in w.sources("A")] == [SourceOrigin.REMOTE]
