"""The relay link over real TCP on 127.0.0.1 (trio_sfu.cluster.tcp_link): the handshake accepts
only a peer holding the key and being who it claims, and refuses — with a reason, counted —
a wrong key, a replayed or relabelled transcript, a wrong or unexpected node id, a link to
itself, an oversize or slow hello and garbage; framing survives any split of the byte stream;
a frame over the cap or not protobuf closes the link without raising; the send queue stays
bounded in bytes and messages against a peer that never reads.
"""

from __future__ import annotations

import contextlib
import random
import socket
from typing import AsyncIterator

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from budgets import examples
from proto import relay_pb2 as pb
from trio_sfu.cluster import tcp_link as tl
from trio_sfu.cluster.tcp_link import (
    FrameDecoder,
    FrameTooLarge,
    HandshakeRefused,
    LinkLimits,
    Step,
    TcpRelayLink,
    accept_link,
    connect_link,
    encode_step,
    frame,
    handshake_mac,
)
from trio_sfu.metrics import Metrics

KEY = b"cluster-key-for-tests"
FAST = LinkLimits(handshake_timeout=2.0, keepalive_interval=0.2, idle_timeout=3.0)


@contextlib.asynccontextmanager
async def listener() -> AsyncIterator[trio.SocketListener]:
    (lst,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with lst:
        yield lst


def port_of(lst: trio.SocketListener) -> int:
    return lst.socket.getsockname()[1]


async def link_pair(a: str = "node-a", b: str = "node-b", *, limits: LinkLimits = FAST,
                    metrics_a: Metrics | None = None, metrics_b: Metrics | None = None,
                    ) -> tuple[TcpRelayLink, TcpRelayLink]:
    """A dials B over loopback; both sides authenticated."""
    async with listener() as lst:
        accepted: list[TcpRelayLink] = []

        async def accept() -> None:
            stream = await lst.accept()
            accepted.append(await accept_link(stream, local_node_id=b, key=KEY, limits=limits, metrics=metrics_b))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(accept)
            dialed = await connect_link("127.0.0.1", port_of(lst), local_node_id=a, peer_node_id=b, key=KEY,
                                        limits=limits, metrics=metrics_a)
    return dialed, accepted[0]


async def accept_expecting_refusal(lst: trio.SocketListener, local: str = "node-b", key: bytes = KEY,
                                   limits: LinkLimits = FAST, metrics: Metrics | None = None,
                                   peer_problem=lambda node_id: "") -> str:
    stream = await lst.accept()
    with pytest.raises(HandshakeRefused) as refused:
        await accept_link(stream, local_node_id=local, key=key, limits=limits, metrics=metrics,
                          peer_problem=peer_problem)
    return refused.value.reason


async def read_all(stream: trio.SocketStream, timeout: float = 5.0) -> bytes:
    """Everything the peer sends until it closes (the peer must close within `timeout`)."""
    data = bytearray()
    with trio.fail_after(timeout):
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                break  # reset by the peer: closed as well
            if not chunk:
                break
            data += chunk
    return bytes(data)


def refusal_in(data: bytes) -> str:
    """The reason of the REFUSED frame among the frames in `data` ("" if none)."""
    decoder = FrameDecoder(tl.HANDSHAKE_MAX_FRAME)
    decoder.feed(data)
    while (payload := decoder.next_frame()) is not None:
        step, values = tl.decode_step(payload)
        if step is Step.REFUSED:
            return values[0].decode()
    return ""


class Recording(trio.abc.Stream):
    """A real TCP stream that keeps a copy of everything sent on it."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.sent = bytearray()
        self.received = bytearray()

    async def send_all(self, data) -> None:
        self.sent += data
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes=None) -> bytes:
        data = await self.stream.receive_some(max_bytes)
        self.received += data
        return data

    async def send_eof(self) -> None:
        await self.stream.send_eof()

    async def aclose(self) -> None:
        await self.stream.aclose()


def rtp_message(index: int, size: int = 1200) -> pb.RelayMessage:
    return pb.RelayMessage(rtp=pb.RelayRtp(room="r", track_id="TR_x", packet=index.to_bytes(4, "big") + b"\x80" * (size - 4)))


# ---- the handshake -----------------------------------------------------------------------------


async def test_an_authenticated_link_carries_messages_both_ways_in_order() -> None:
    metrics_a, metrics_b = Metrics(), Metrics()
    a, b = await link_pair(metrics_a=metrics_a, metrics_b=metrics_b)
    assert (a.peer_node_id, b.peer_node_id) == ("node-b", "node-a")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.run)
        nursery.start_soon(b.run)
        for i in range(500):
            assert a.send(rtp_message(i))
        assert b.send(pb.RelayMessage(track_closing=pb.TrackClosing(room="r", track_id="TR_y")))
        with trio.fail_after(5):
            got = [await b.receive() for _ in range(500)]
            back = await a.receive()
        assert [int.from_bytes(m.rtp.packet[:4], "big") for m in got] == list(range(500))
        assert {m.from_node for m in got} == {"node-a"} and back.from_node == "node-b"
        assert back.track_closing.track_id == "TR_y"
        # Quiet for several keepalive intervals: the keepalives hold the link up.
        await trio.sleep(FAST.keepalive_interval * 4)
        assert a.state is b.state is tl.LinkState.OPEN
        a.close("test done")
        with trio.fail_after(5):
            with pytest.raises(trio.EndOfChannel):
                await b.receive()  # the peer hears the close
        # A FIN, or a reset (keepalives were still unread on A's side) seen by B's reader or writer.
        assert b.close_reason in ("peer closed the connection", "read failed: BrokenResourceError",
                                  "write failed: BrokenResourceError")
    assert metrics_a.get(tl.HANDSHAKE_REFUSED) == metrics_b.get(tl.HANDSHAKE_REFUSED) == 0
    assert a.dropped == b.dropped == 0


async def test_a_wrong_key_is_refused_by_both_sides() -> None:
    metrics_a, metrics_b = Metrics(), Metrics()
    async with listener() as lst, trio.open_nursery() as nursery:
        reasons: list[str] = []

        async def accept() -> None:
            reasons.append(await accept_expecting_refusal(lst, metrics=metrics_b))

        nursery.start_soon(accept)
        with pytest.raises(HandshakeRefused, match="peer failed authentication"):
            await connect_link("127.0.0.1", port_of(lst), local_node_id="node-a", peer_node_id="node-b",
                               key=b"another key", limits=FAST, metrics=metrics_a)
    assert reasons == ["peer refused: peer failed authentication (another cluster key?)"]
    assert metrics_a.get(tl.HANDSHAKE_REFUSED) == metrics_b.get(tl.HANDSHAKE_REFUSED) == 1


async def test_a_dialer_with_a_wrong_key_fails_the_acceptors_check() -> None:
    """A dialer that skips its own check and answers with a proof under another key."""
    metrics = Metrics()
    async with listener() as lst, trio.open_nursery() as nursery:
        reasons: list[str] = []

        async def accept() -> None:
            reasons.append(await accept_expecting_refusal(lst, metrics=metrics))

        nursery.start_soon(accept)
        stream = await trio.open_tcp_stream("127.0.0.1", port_of(lst))
        nonce_d = bytes(range(32))
        await stream.send_all(frame(encode_step(Step.HELLO, b"node-a", b"node-b", nonce_d)))
        decoder = FrameDecoder(tl.HANDSHAKE_MAX_FRAME)
        with trio.fail_after(5):
            while (payload := decoder.next_frame()) is None:
                decoder.feed(await stream.receive_some(4096))
        step, (acceptor, nonce_a, _) = tl.decode_step(payload)
        assert step is Step.CHALLENGE and acceptor == b"node-b"
        proof = handshake_mac(b"not the key", b"dialer", "node-a", "node-b", nonce_d, nonce_a)
        await stream.send_all(frame(encode_step(Step.PROOF, proof)))
        assert "authentication failed" in refusal_in(decoder_rest(decoder) + await read_all(stream))
        await stream.aclose()
    assert reasons == ["authentication failed (wrong cluster key or a replayed handshake)"]
    assert metrics.get(tl.HANDSHAKE_REFUSED) == 1


def decoder_rest(decoder: FrameDecoder) -> bytes:
    return bytes(decoder._buffer[decoder._start:])


async def test_a_recorded_handshake_replayed_or_relabelled_is_refused() -> None:
    """Record a good dialer's bytes, then replay them as they were and with the dialer id
    changed: the acceptor's fresh nonce makes the recorded proof worthless, and the ids are
    inside the MAC. The acceptor's recorded challenge replayed to a dialer fails the same way."""
    metrics = Metrics()
    async with listener() as lst, trio.open_nursery() as nursery:
        done: list[TcpRelayLink] = []

        async def accept_good() -> None:
            stream = await lst.accept()
            done.append(await accept_link(stream, local_node_id="node-b", key=KEY, limits=FAST, metrics=metrics))

        nursery.start_soon(accept_good)
        recording = Recording(await trio.open_tcp_stream("127.0.0.1", port_of(lst)))
        await tl.dial_handshake(recording, local_node_id="node-a", peer_node_id="node-b", key=KEY)
        transcript, challenge = bytes(recording.sent), bytes(recording.received)
        await recording.aclose()

        for replay in (transcript, transcript.replace(b"node-a", b"node-0")):
            reasons: list[str] = []

            async def accept_replay() -> None:
                reasons.append(await accept_expecting_refusal(lst, metrics=metrics))

            nursery.start_soon(accept_replay)
            raw = await trio.open_tcp_stream("127.0.0.1", port_of(lst))
            await raw.send_all(replay)
            assert "authentication failed" in refusal_in(await read_all(raw))
            await raw.aclose()
            await wait_for(lambda: reasons)
            assert reasons == ["authentication failed (wrong cluster key or a replayed handshake)"]

        # The acceptor's side recorded and replayed to a dialer: its nonce is not the one asked for.
        async def fake_acceptor() -> None:
            stream = await lst.accept()
            await stream.receive_some(4096)  # the dialer's hello, with a new nonce
            await stream.send_all(challenge)
            await read_all(stream)
            await stream.aclose()

        nursery.start_soon(fake_acceptor)
        with pytest.raises(HandshakeRefused, match="peer failed authentication"):
            await connect_link("127.0.0.1", port_of(lst), local_node_id="node-a", peer_node_id="node-b",
                               key=KEY, limits=FAST, metrics=metrics)
        done[0].close()
    assert metrics.get(tl.HANDSHAKE_REFUSED) == 3


async def wait_for(predicate, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


@pytest.mark.parametrize("dialer,target,acceptor,problem,reason", [
    ("node-a", "node-b", "node-c", "", "hello for node 'node-b', this is 'node-c'"),
    ("node-x", "node-b", "node-b", "not a listed peer", "node 'node-x': not a listed peer"),
    ("node-b", "node-b", "node-b", "", "a node does not link to itself"),
    ("node a", "node-b", "node-b", "", "node id must be printable, without spaces"),
])
async def test_a_wrong_or_unexpected_node_id_is_refused(dialer, target, acceptor, problem, reason) -> None:
    metrics = Metrics()
    async with listener() as lst, trio.open_nursery() as nursery:
        reasons: list[str] = []

        async def accept() -> None:
            reasons.append(await accept_expecting_refusal(
                lst, local=acceptor, metrics=metrics, peer_problem=lambda node_id: problem))

        nursery.start_soon(accept)
        # Hand-written, so that the dialer's own checks (its id, a link to itself) do not stop it first.
        raw = await trio.open_tcp_stream("127.0.0.1", port_of(lst))
        await raw.send_all(frame(encode_step(Step.HELLO, dialer.encode(), target.encode(), bytes(32))))
        assert refusal_in(await read_all(raw)) == reason
        await raw.aclose()
    assert reasons == [reason]
    assert metrics.get(tl.HANDSHAKE_REFUSED) == 1


async def test_a_dialer_refuses_to_link_to_itself_and_to_reach_another_node_than_asked() -> None:
    async with listener() as lst, trio.open_nursery() as nursery:
        with pytest.raises(HandshakeRefused, match="a node does not link to itself"):
            await connect_link("127.0.0.1", port_of(lst), local_node_id="node-a", peer_node_id="node-a", key=KEY)

        async def impostor() -> None:
            # An acceptor holding the key but answering as another node than the dialer asked for.
            stream = await lst.accept()
            with pytest.raises(HandshakeRefused):
                await accept_link(stream, local_node_id="node-c", key=KEY, limits=FAST)

        nursery.start_soon(impostor)
        with pytest.raises(HandshakeRefused, match="peer refused: hello for node 'node-b', this is 'node-c'"):
            await connect_link("127.0.0.1", port_of(lst), local_node_id="node-a", peer_node_id="node-b", key=KEY)


async def test_an_oversize_or_slow_hello_is_refused_in_bounded_time() -> None:
    metrics = Metrics()
    slow = LinkLimits(handshake_timeout=0.3)
    async with listener() as lst, trio.open_nursery() as nursery:
        reasons: list[str] = []

        async def accept(limits: LinkLimits) -> None:
            reasons.append(await accept_expecting_refusal(lst, limits=limits, metrics=metrics))

        nursery.start_soon(accept, FAST)
        raw = await trio.open_tcp_stream("127.0.0.1", port_of(lst))
        await raw.send_all((10 * 1024 * 1024).to_bytes(4, "big") + b"x" * 100)
        assert "oversize handshake frame" in refusal_in(await read_all(raw, timeout=2))
        await raw.aclose()

        nursery.start_soon(accept, slow)
        raw = await trio.open_tcp_stream("127.0.0.1", port_of(lst))
        hello = frame(encode_step(Step.HELLO, b"node-a", b"node-b", bytes(32)))
        await raw.send_all(hello[:10])  # and then nothing
        start = trio.current_time()
        assert refusal_in(await read_all(raw, timeout=3)) == "handshake timed out after 0.3 s"
        assert trio.current_time() - start < 2.5
        await raw.aclose()
    assert reasons == ["oversize handshake frame (10485760 bytes)", "handshake timed out after 0.3 s"]
    assert metrics.get(tl.HANDSHAKE_REFUSED) == 2


@settings(max_examples=examples(0.5))
@given(garbage=st.one_of(
    st.binary(max_size=2048),
    # Framed, starting like a handshake message: past the framing into the message checks.
    st.builds(lambda step, body: frame(tl.MAGIC + bytes([step]) + body),
              st.integers(0, 255), st.binary(max_size=300)),
))
def test_garbage_instead_of_a_handshake_is_refused_and_nothing_else(garbage: bytes) -> None:
    """Arbitrary bytes, then end of stream, at a real acceptor: HandshakeRefused with a reason,
    counted, and never another exception."""

    async def main() -> None:
        metrics = Metrics()
        async with listener() as lst, trio.open_nursery() as nursery:
            reasons: list[str] = []

            async def accept() -> None:
                reasons.append(await accept_expecting_refusal(lst, metrics=metrics))

            nursery.start_soon(accept)
            raw = await trio.open_tcp_stream("127.0.0.1", port_of(lst))
            with contextlib.suppress(trio.BrokenResourceError):
                await raw.send_all(garbage)
                await raw.send_eof()
            await read_all(raw)
            await raw.aclose()
        assert len(reasons) == 1 and reasons[0]
        assert metrics.get(tl.HANDSHAKE_REFUSED) == 1

    trio.run(main)


# ---- framing -----------------------------------------------------------------------------------


@settings(max_examples=examples(1))
@given(payloads=st.lists(st.binary(max_size=300), max_size=20), cuts=st.lists(st.integers(0, 7000), max_size=30))
def test_frames_come_out_whole_however_the_stream_is_cut(payloads: list[bytes], cuts: list[int]) -> None:
    wire = b"".join(frame(p) for p in payloads)
    decoder = FrameDecoder(300)
    out = []
    at = 0
    for cut in sorted(c for c in cuts if c <= len(wire)) + [len(wire)]:
        decoder.feed(wire[at:cut])
        at = cut
        while (payload := decoder.next_frame()) is not None:
            out.append(payload)
    assert out == payloads and decoder.buffered == 0


def test_a_frame_over_the_cap_is_refused_on_its_length_alone() -> None:
    decoder = FrameDecoder(100)
    decoder.feed((101).to_bytes(4, "big"))
    with pytest.raises(FrameTooLarge):
        decoder.next_frame()


async def raw_dialer(lst: trio.SocketListener, accepted: list[TcpRelayLink], limits: LinkLimits = FAST,
                     metrics: Metrics | None = None) -> trio.SocketStream:
    """A dialer that completes a real handshake and then writes whatever the test wants; the
    acceptor's link lands in `accepted`."""

    async def accept() -> None:
        stream = await lst.accept()
        accepted.append(await accept_link(stream, local_node_id="node-b", key=KEY, limits=limits, metrics=metrics))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept)
        raw = await trio.open_tcp_stream("127.0.0.1", port_of(lst))
        await tl.dial_handshake(raw, local_node_id="node-a", peer_node_id="node-b", key=KEY)
    return raw


async def test_split_and_joined_frames_over_tcp_arrive_whole_and_in_order() -> None:
    async with listener() as lst:
        accepted: list[TcpRelayLink] = []
        raw = await raw_dialer(lst, accepted)
        (link,) = accepted
        messages = [pb.RelayMessage(from_node="node-a", rtp=pb.RelayRtp(room="r", track_id="T", packet=bytes([i]) * (i + 1)))
                    for i in range(60)]
        wire = b"".join(frame(m.SerializeToString()) + (tl.KEEPALIVE_FRAME if i % 7 == 0 else b"")
                        for i, m in enumerate(messages))
        rng = random.Random(7)
        got = []
        async with trio.open_nursery() as nursery:
            async def reader() -> None:
                for _ in messages:
                    got.append(await link.receive())

            nursery.start_soon(reader)
            at = 0
            while at < len(wire):  # one byte at a time at first, then chunks spanning several frames
                step = 1 if at < 200 else rng.randrange(1, 900)
                await raw.send_all(wire[at:at + step])
                at += step
                if rng.random() < 0.2:
                    await trio.sleep(0)
        assert got == messages
        link.close()
        await raw.aclose()


@pytest.mark.parametrize("bad,counter,reason", [
    ((FAST.max_frame + 1).to_bytes(4, "big"), tl.LINK_FRAME_OVERSIZE, f"frame of {FAST.max_frame + 1} bytes over the cap"),
    (frame(b"\xff\xff\xff\xff"), tl.LINK_FRAME_MALFORMED, "unparsable relay message"),
])
async def test_a_frame_over_the_cap_or_unparsable_closes_the_link_without_raising(bad, counter, reason) -> None:
    metrics = Metrics()
    async with listener() as lst:
        accepted: list[TcpRelayLink] = []
        raw = await raw_dialer(lst, accepted, metrics=metrics)
        (link,) = accepted
        good = pb.RelayMessage(from_node="node-a", track_closing=pb.TrackClosing(room="r", track_id="T"))
        await raw.send_all(frame(good.SerializeToString()) + bad + frame(good.SerializeToString()))
        with trio.fail_after(5):
            assert await link.receive() == good
            with pytest.raises(trio.EndOfChannel):
                await link.receive()
            with pytest.raises(trio.EndOfChannel):
                await link.receive()  # and stays ended
        assert link.state is tl.LinkState.CLOSED and link.close_reason.startswith(reason)
        assert metrics.get(counter) == 1 and link.malformed == 1
        assert await read_all(raw) == b""  # the socket was closed under the peer
        await raw.aclose()


# ---- bounds ------------------------------------------------------------------------------------


async def test_a_peer_that_never_reads_costs_a_bounded_queue_and_counted_drops() -> None:
    """The peer completes the handshake and never reads again: sends keep returning at once,
    the queue never holds more than its caps, every refused send is counted, and once the
    writer is stuck for idle_timeout the link closes itself."""
    limits = LinkLimits(max_queue_bytes=64 * 1024, max_queue_messages=200, keepalive_interval=0.2, idle_timeout=1.5)
    metrics = Metrics()
    async with listener() as lst:
        accepted: list[TcpRelayLink] = []
        raw = await raw_dialer(lst, accepted, limits=limits, metrics=metrics)
        raw.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        (link,) = accepted
        link._stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(link.run)
            accepted_sends = refused = 0
            peak_bytes = peak_messages = 0
            for i in range(20_000):
                if link.send(rtp_message(i)):
                    accepted_sends += 1
                else:
                    refused += 1
                peak_bytes = max(peak_bytes, link.queued_bytes)
                peak_messages = max(peak_messages, link.queued_messages)
                if i % 500 == 0:
                    await trio.sleep(0.01)  # the writer runs, fills the kernel's buffers, blocks
            assert peak_bytes <= limits.max_queue_bytes and peak_messages <= limits.max_queue_messages
            assert refused > 15_000 and link.dropped >= refused
            assert metrics.get(tl.LINK_SEND_DROPPED) == link.dropped
            with trio.fail_after(10):
                await link.closed.wait()
        assert link.close_reason == "peer read nothing for 1.5 s"
        assert metrics.get(tl.LINK_WRITE_STALLED) == 1
        assert link.queued_bytes == 0 and not link.send(rtp_message(0))
        await raw.aclose()


async def test_the_message_cap_bounds_a_queue_of_tiny_messages() -> None:
    limits = LinkLimits(max_queue_bytes=1 << 30, max_queue_messages=50)
    a, b = await link_pair(limits=limits)
    # No writer running yet: everything queues, up to the message cap.
    results = [a.send(pb.RelayMessage(rtp=pb.RelayRtp(room="r"))) for _ in range(80)]
    assert results == [True] * 50 + [False] * 30 and a.queued_messages == 50 and a.dropped == 30
    # A message over the frame cap is ours to refuse: the peer would close the link on it.
    assert not a.send(pb.RelayMessage(rtp=pb.RelayRtp(room="r", packet=b"x" * (limits.max_frame + 1))))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.run)
        with trio.fail_after(5):
            for _ in range(50):
                await b.receive()
        a.close()
    b.close()


async def test_a_silent_peer_is_declared_dead_after_the_idle_timeout() -> None:
    limits = LinkLimits(keepalive_interval=0.1, idle_timeout=0.5)
    metrics = Metrics()
    async with listener() as lst:
        accepted: list[TcpRelayLink] = []
        raw = await raw_dialer(lst, accepted, limits=limits, metrics=metrics)  # never sends again
        (link,) = accepted
        with trio.fail_after(5), pytest.raises(trio.EndOfChannel):
            await link.receive()
        assert link.close_reason == "peer silent for 0.5 s" and metrics.get(tl.LINK_IDLE_TIMEOUT) == 1
        await raw.aclose()
