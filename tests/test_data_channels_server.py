"""DataPackets through the real server (in process), between clients made of our own parts:
signalling over the WebSocket, a controlling PeerTransport per PC on a loopback socket, and our
SctpAssociation on each (the client opens `_reliable`/`_lossy` on its publisher PC, the server
its own on the subscriber PC, as livekit-protocol.md §2.14 says).

What must hold: a spoofed sender is overwritten by the server; packets go to the named
destinations only, or to everyone else; a participant without canPublishData is not forwarded
(and counted); a receiver that stops reading does not stall the others, its lossy overflow is
dropped and counted and its `_reliable` channel is closed past the bound; Twirp SendData arrives
over the same channels.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import secrets
import socket
from typing import AsyncIterator, Callable, Optional

import trio
import trio_websocket
from livekit import api
from livekit.protocol import models, rtc

import trio_sfu.media.data_channels as dc
from proto import relay_pb2 as pb
from rtp.dtls import DtlsCertificate, DtlsRole
from rtp.peer_transport import IceMode, PeerTransport
from rtp.peer_transport_events import DataReceived, TransportConnected
from rtp.sctp import ChannelClosed, ChannelOpened, MessageReceived, SctpAssociation
from sdp.model import SessionDescription
from sdp.negotiator import local_dtls_role
from sdp.parser import parse as parse_sdp
import server_fixtures
from server_fixtures import API_KEY, API_SECRET, http_base, media_nodes, mint_token, recv, send, signal_client
from trio_sfu.server import Server

def running_server():
    """The server with its media stack on loopback; server_fixtures' leak check runs at exit
    (tasks, sockets, rooms, track sources and their subscribers)."""
    return server_fixtures.media_server()


_CERT = DtlsCertificate.generate(datetime.datetime.now(datetime.timezone.utc))


class DataPc:
    """One client PeerConnection that only carries data channels."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.bind(("127.0.0.1", 0))
        self.ufrag, self.pwd = secrets.token_hex(4), secrets.token_hex(12)
        self.transport: Optional[PeerTransport] = None
        self.assoc: Optional[SctpAssociation] = None
        self.labels: dict[int, str] = {}
        self.open: dict[str, int] = {}
        self.messages: list[tuple[str, bytes]] = []
        self.closed_labels: list[str] = []
        self.connected = trio.Event()
        self.frozen = False
        self._thaw = trio.Event()
        self._scope: Optional[trio.CancelScope] = None
        self._to_open: list[tuple[str, bool]] = []

    def description(self, mid: str, setup: str) -> str:
        lines = [
            "v=0", f"o=- {secrets.randbits(40)} 1 IN IP4 127.0.0.1", "s=-", "t=0 0", f"a=group:BUNDLE {mid}",
            "m=application 9 UDP/DTLS/SCTP webrtc-datachannel", "c=IN IP4 0.0.0.0", f"a=mid:{mid}",
            f"a=ice-ufrag:{self.ufrag}", f"a=ice-pwd:{self.pwd}", f"a=fingerprint:sha-256 {_CERT.fingerprint()}",
            f"a=setup:{setup}", "a=sctp-port:5000", "a=max-message-size:262144",
        ]
        return "\r\n".join(lines) + "\r\n"

    def open_channel(self, label: str, reliable: bool) -> None:
        self._to_open.append((label, reliable))

    def connect(self, remote: SessionDescription, role: DtlsRole) -> None:
        section = next(m for m in remote.media if not m.rejected)
        self.transport = PeerTransport(
            IceMode.CONTROLLING, role, local_ufrag=self.ufrag, local_pwd=self.pwd, certificate=_CERT,
            remote_ufrag=remote.effective_ufrag(section), remote_pwd=remote.effective_pwd(section),
            remote_fingerprints=[(f.algorithm, f.value) for f in remote.effective_fingerprints(section)],
            remote_candidates=[c.to_aioice() for c in section.candidates],
        )
        self.assoc = SctpAssociation(is_client=role is DtlsRole.CLIENT,
                                     remote_max_message_size=section.max_message_size or 65536)
        for label, reliable in self._to_open:
            stream = self.assoc.open_channel(label, ordered=reliable, max_retransmits=None if reliable else 0)
            self.labels[stream] = label
        self.transport.start(trio.current_time())
        self.kick()

    def kick(self) -> None:
        if self._scope is not None:
            self._scope.cancel()

    def freeze(self) -> None:
        """Stop reading and acknowledging: a receiver that went away without saying so."""
        self.frozen = True
        self.kick()

    def thaw(self) -> None:
        self.frozen = False
        self._thaw.set()

    def send(self, label: str, data: bytes) -> None:
        assert self.assoc is not None
        self.assoc.send(self.open[label], data, trio.current_time())
        self.flush()
        self.kick()

    def _deadline(self) -> float:
        deadlines = [t for t in (self.transport and self.transport.next_deadline(),
                                 self.assoc and self.connected.is_set() and self.assoc.next_deadline()) if t]
        return min(deadlines, default=trio.current_time() + 1.0)

    async def run(self) -> None:
        try:
            while True:
                if self.frozen:
                    await self._thaw.wait()
                    self._thaw = trio.Event()
                with trio.move_on_at(self._deadline()) as scope:
                    self._scope = scope
                    await trio.lowlevel.wait_readable(self.sock)
                self._scope = None
                if self.frozen or self.transport is None:
                    continue
                now = trio.current_time()
                while True:
                    try:
                        data, addr = self.sock.recvfrom(65536)
                    except BlockingIOError:
                        break
                    self.transport.receive_datagram(data, addr[:2], now)
                    self._drain(now)
                t = self.transport.next_deadline()
                if t is not None and t <= now:
                    self.transport.handle_timeout(now)
                assert self.assoc is not None
                t = self.assoc.next_deadline()
                if self.connected.is_set() and t is not None and t <= now:
                    self.assoc.handle_timeout(now)
                self._drain(now)
        finally:
            self.sock.close()

    def _drain(self, now: float) -> None:
        assert self.transport is not None and self.assoc is not None
        while (event := self.transport.next_event()) is not None:
            if isinstance(event, TransportConnected):
                self.connected.set()
                self.assoc.start(now)
            elif isinstance(event, DataReceived):
                self.assoc.receive_packet(event.data, now)
        while (ev := self.assoc.next_event()) is not None:
            if isinstance(ev, ChannelOpened):
                self.labels[ev.stream_id] = ev.label
                self.open[ev.label] = ev.stream_id
            elif isinstance(ev, MessageReceived):
                data = ev.data if isinstance(ev.data, bytes) else ev.data.encode()
                self.messages.append((self.labels.get(ev.stream_id, "?"), data))
            elif isinstance(ev, ChannelClosed):
                label = self.labels.get(ev.stream_id, "?")
                self.closed_labels.append(label)
                self.open.pop(label, None)
        self.flush()

    def flush(self) -> None:
        assert self.transport is not None and self.assoc is not None
        now = trio.current_time()
        if self.connected.is_set():
            for packet in self.assoc.packets_to_send(now):
                self.transport.send_data(packet)
        for datagram, addr in self.transport.datagrams_to_send(now):
            with contextlib.suppress(OSError):
                self.sock.sendto(datagram, addr)


class DataClient:
    def __init__(self, ws: trio_websocket.WebSocketConnection, identity: str, sid: str) -> None:
        self.ws = ws
        self.identity = identity
        self.sid = sid
        self.publisher = DataPc("publisher")
        self.subscriber = DataPc("subscriber")

    def publish(self, packet: models.DataPacket, reliable: bool = True) -> None:
        self.publisher.send(dc.RELIABLE_LABEL if reliable else dc.LOSSY_LABEL, packet.SerializeToString())

    def received(self) -> list[tuple[str, models.DataPacket]]:
        return [(label, models.DataPacket.FromString(data)) for label, data in self.subscriber.messages]


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


@contextlib.asynccontextmanager
async def data_client(server: Server, identity: str, **grants: object) -> AsyncIterator[DataClient]:
    async with signal_client(server, mint_token(identity, **grants)) as ws, trio.open_nursery() as nursery:
        joined = await recv(ws)
        assert joined.WhichOneof("message") == "join"
        client = DataClient(ws, identity, joined.join.participant.sid)
        answers, answers_out = trio.open_memory_channel[rtc.SessionDescription](4)

        async def read_signal() -> None:
            while True:
                response = await recv(ws, timeout=60)
                kind = response.WhichOneof("message")
                if kind == "offer":
                    offer = parse_sdp(response.offer.sdp)
                    mid = next(m.mid for m in offer.media if not m.rejected)
                    sub = client.subscriber
                    if sub.transport is None:
                        sub.connect(offer, DtlsRole.CLIENT)  # we answer a=setup:active
                    await send(ws, rtc.SignalRequest(answer=rtc.SessionDescription(
                        type="answer", sdp=sub.description(mid, "active"), id=response.offer.id)))
                elif kind == "answer":
                    await answers.send(response.answer)

        nursery.start_soon(read_signal)
        nursery.start_soon(client.subscriber.run)
        nursery.start_soon(client.publisher.run)
        pub = client.publisher
        pub.open_channel(dc.RELIABLE_LABEL, reliable=True)
        pub.open_channel(dc.LOSSY_LABEL, reliable=False)
        offer_sdp = pub.description("0", "actpass")
        await send(ws, rtc.SignalRequest(offer=rtc.SessionDescription(type="offer", sdp=offer_sdp, id=1)))
        with trio.fail_after(5):
            answer = await answers_out.receive()
        parsed = parse_sdp(answer.sdp)
        pub.connect(parsed, DtlsRole(local_dtls_role(parsed, local_is_offerer=True).value))
        await wait_until(lambda: {dc.RELIABLE_LABEL, dc.LOSSY_LABEL} <= set(pub.open)
                         and {dc.RELIABLE_LABEL, dc.LOSSY_LABEL} <= set(client.subscriber.open))
        try:
            yield client
        finally:
            # Leave as the SDKs do on disconnect: a socket closed without a leave while the
            # PCs are up is a lost connection, and the server would wait for a resume.
            with trio.move_on_after(1):
                try:
                    await send(ws, rtc.SignalRequest(leave=rtc.LeaveRequest(reason=models.DisconnectReason.CLIENT_INITIATED)))
                except trio_websocket.ConnectionClosed:
                    pass
            nursery.cancel_scope.cancel()


def user_packet(payload: bytes, **fields: object) -> models.DataPacket:
    return models.DataPacket(user=models.UserPacket(payload=payload), **fields)


async def test_server_channels_are_livekits_and_a_spoofed_sender_is_overwritten() -> None:
    async with running_server() as server:
        async with data_client(server, "alice") as alice, data_client(server, "eve") as eve:
            # The server's channels as LiveKit opens them: _reliable ordered, _lossy unordered with 0 rexmits.
            assert {dc.RELIABLE_LABEL, dc.LOSSY_LABEL, dc.DATA_TRACK_LABEL} <= set(alice.subscriber.open)
            spoof = models.DataPacket(
                participant_identity="alice", participant_sid=alice.sid, sequence=41,
                user=models.UserPacket(payload=b"I am alice", participant_identity="alice",
                                       participant_sid=alice.sid, topic="chat"),
            )
            eve.publish(spoof)
            await wait_until(lambda: alice.received())
            [(label, got)] = alice.received()
            assert label == dc.RELIABLE_LABEL
            assert (got.participant_identity, got.participant_sid) == ("eve", eve.sid)
            assert (got.user.participant_identity, got.user.participant_sid) == ("eve", eve.sid)
            # Everything else passes through: payload, topic, sequence.
            assert (got.user.payload, got.user.topic, got.sequence) == (b"I am alice", "chat", 41)
            assert eve.received() == []  # never echoed to the sender
            assert server.metrics.get(dc.DATA_FORWARDED) == 1
        # Once the participants are gone their associations' counters are in the server's metrics.
        await wait_until(lambda: server.metrics.get("data_sctp_messages_received_total") >= 1)
        assert server.metrics.get("data_sctp_malformed_packets_total") == 0


async def test_destinations_kinds_and_stream_rpc_packets_pass_through() -> None:
    async with running_server() as server:
        async with data_client(server, "alice") as alice, data_client(server, "bob") as bob, \
                data_client(server, "carol") as carol:
            alice.publish(user_packet(b"to bob", destination_identities=["bob"]))
            alice.publish(user_packet(b"lossy to all"), reliable=False)
            header = models.DataPacket(destination_identities=["carol"], stream_header=models.DataStream.Header(
                stream_id="s1", topic="doc", mime_type="text/plain", total_length=5,
                text_header=models.DataStream.TextHeader(operation_type=models.DataStream.CREATE)))
            chunk = models.DataPacket(destination_identities=["carol"], stream_chunk=models.DataStream.Chunk(
                stream_id="s1", chunk_index=0, content=b"hello"))
            trailer = models.DataPacket(destination_identities=["carol"], stream_trailer=models.DataStream.Trailer(
                stream_id="s1", reason="done"))
            rpc = models.DataPacket(destination_identities=["carol"], rpc_request=models.RpcRequest(
                id="r1", method="echo", payload="ping", response_timeout_ms=5000, version=1))
            for packet in (header, chunk, trailer, rpc):
                alice.publish(packet)
            await wait_until(lambda: len(carol.received()) == 5 and len(bob.received()) == 2)
            bob_got = [(label, p.user.payload) for label, p in bob.received()]
            assert sorted(bob_got) == sorted([(dc.RELIABLE_LABEL, b"to bob"), (dc.LOSSY_LABEL, b"lossy to all")])
            carol_got = carol.received()
            assert [p.user.payload for label, p in carol_got if label == dc.LOSSY_LABEL] == [b"lossy to all"]
            reliable = [p for label, p in carol_got if label == dc.RELIABLE_LABEL]
            assert [p.WhichOneof("value") for p in reliable] == ["stream_header", "stream_chunk", "stream_trailer",
                                                                 "rpc_request"]
            for sent, got in zip((header, chunk, trailer, rpc), reliable):
                field = sent.WhichOneof("value")
                assert getattr(got, field) == getattr(sent, field)
                assert got.participant_identity == "alice" and list(got.destination_identities) == ["carol"]
            assert alice.received() == []


async def test_can_publish_data_false_is_not_forwarded() -> None:
    async with running_server() as server:
        async with data_client(server, "alice") as alice, data_client(server, "mute", can_publish_data=False) as mute:
            mute.publish(user_packet(b"should not pass"))
            await wait_until(lambda: server.metrics.get(dc.DATA_DENIED) == 1)
            alice.publish(user_packet(b"marker"))
            await wait_until(lambda: mute.received())
            # The muted participant still receives; nobody receives from it. The server's count
            # says so, not a wait: of everything sent, it forwarded the marker to `mute` only.
            assert [p.user.payload for _, p in mute.received()] == [b"marker"]
            assert server.metrics.get(dc.DATA_FORWARDED) == 1
            assert alice.received() == []


async def test_a_slow_receiver_does_not_stall_the_room(monkeypatch) -> None:
    monkeypatch.setattr(dc, "RELIABLE_BUFFER_LIMIT", 64 * 1024)
    monkeypatch.setattr(dc, "LOSSY_BUFFER_LIMIT", 16 * 1024)
    async with running_server() as server:
        async with data_client(server, "alice") as alice, data_client(server, "fast") as fast, \
                data_client(server, "slow") as slow:
            slow.subscriber.freeze()
            blob = bytes(1000)
            for i in range(200):
                alice.publish(user_packet(blob, sequence=i + 1))
                alice.publish(user_packet(b"lossy %d" % i), reliable=False)
                if i % 20 == 0:
                    await trio.sleep(0.01)  # let the publisher's window open
            # The fast receiver gets every reliable packet, in order, while `slow` reads nothing.
            await wait_until(lambda: len([1 for label, _ in fast.received() if label == dc.RELIABLE_LABEL]) == 200,
                             timeout=20)
            sequences = [p.sequence for label, p in fast.received() if label == dc.RELIABLE_LABEL]
            assert sequences == list(range(1, 201))
            assert server.metrics.get(dc.DATA_RELIABLE_CLOSED) == 1
            assert server.metrics.get(dc.DATA_LOSSY_DROPPED) > 0
            # Once it reads again it gets what was queued before the bound, then the close.
            slow.subscriber.thaw()
            await wait_until(lambda: dc.RELIABLE_LABEL in slow.subscriber.closed_labels, timeout=20)
            got = [p.sequence for label, p in slow.received() if label == dc.RELIABLE_LABEL]
            assert got == list(range(1, len(got) + 1)) and 0 < len(got) < 200
            assert len(got) * len(blob) <= 64 * 1024 + 2 * len(blob)


async def _twirp(server: Server, request: api.SendDataRequest) -> None:
    def run() -> None:
        async def main() -> None:
            async with api.LiveKitAPI(http_base(server), API_KEY, API_SECRET) as lkapi:
                await lkapi.room.send_data(request)
        asyncio.run(main())
    await trio.to_thread.run_sync(run)


async def test_twirp_send_data_arrives_over_the_data_channels() -> None:
    async with running_server() as server:
        async with data_client(server, "alice") as alice, data_client(server, "bob") as bob:
            await _twirp(server, api.SendDataRequest(room="room1", data=b"all", kind=models.DataPacket.Kind.RELIABLE,
                                                     topic="news"))
            await _twirp(server, api.SendDataRequest(room="room1", data=b"bob only", kind=models.DataPacket.Kind.LOSSY,
                                                     destination_identities=["bob"]))
            await wait_until(lambda: len(alice.received()) == 1 and len(bob.received()) == 2)
            [(label, packet)] = alice.received()
            assert (label, packet.user.payload, packet.user.topic) == (dc.RELIABLE_LABEL, b"all", "news")
            assert sorted((label, p.user.payload) for label, p in bob.received()) == [
                (dc.LOSSY_LABEL, b"bob only"), (dc.RELIABLE_LABEL, b"all")]


async def test_garbage_on_an_established_association_is_dropped_and_counted() -> None:
    async with running_server() as server:
        async with data_client(server, "alice") as alice, data_client(server, "bob") as bob:
            pub = alice.publisher
            assert pub.transport is not None
            # Not SCTP at all, an SCTP header with a wrong checksum, and a DataPacket that is not protobuf.
            pub.transport.send_data(b"garbage")
            pub.transport.send_data(bytes.fromhex("13881388") + bytes(8) + b"\x00" * 16)
            pub.flush()
            pub.send(dc.RELIABLE_LABEL, b"\xff\xff\xff")
            await wait_until(lambda: server.metrics.get(dc.DATA_MALFORMED) == 1)
            alice.publish(user_packet(b"still works"))
            await wait_until(lambda: bob.received())
            assert [p.user.payload for _, p in bob.received()] == [b"still works"]
        await wait_until(lambda: server.metrics.get("data_sctp_malformed_packets_total") >= 2)


async def test_data_crosses_nodes_to_the_rooms_participants_there() -> None:
    """A room spanning two nodes: a packet sent on node A reaches node B's participants as it
    reaches A's (stamped with the sender, to its destinations only, on its kind of channel), and
    a packet the relay cannot use is refused and counted."""
    async with media_nodes("node-a", "node-b") as (a, b):
        async with data_client(a, "alice") as alice, data_client(a, "ann") as ann, \
                data_client(b, "bob") as bob, data_client(b, "carol") as carol:
            alice.publish(user_packet(b"hello all"))
            alice.publish(user_packet(b"to carol", destination_identities=["carol"]), reliable=False)
            bob.publish(user_packet(b"from b", destination_identities=["alice"]))
            await wait_until(lambda: len(carol.received()) == 2 and len(bob.received()) == 1
                             and len(alice.received()) == 1 and len(ann.received()) == 1)
            await trio.sleep(0.2)  # nothing more arrives: no echo, no duplicate
            got = {c.identity: [(label, p.user.payload, p.participant_identity) for label, p in c.received()]
                   for c in (alice, ann, bob, carol)}
            assert got["bob"] == [(dc.RELIABLE_LABEL, b"hello all", "alice")]
            assert sorted(got["carol"]) == sorted([(dc.RELIABLE_LABEL, b"hello all", "alice"),
                                                   (dc.LOSSY_LABEL, b"to carol", "alice")])
            assert got["ann"] == [(dc.RELIABLE_LABEL, b"hello all", "alice")]
            assert got["alice"] == [(dc.RELIABLE_LABEL, b"from b", "bob")]
            rejected = b.relay.metrics.get("relay_rejected_total")
            link_to_b = a.relay.links["node-b"]
            link_to_b.send(pb.RelayMessage(data=pb.RelayData(room="room1", kind=0, packet=b"\xff\xff")))
            await wait_until(lambda: b.relay.metrics.get("relay_rejected_total") == rejected + 1)
            assert len(bob.received()) == 1 and len(carol.received()) == 2
