"""Our client follows a participant's move to another node (leave{MIGRATION, RESUME, regions}).

The two-node server is not ready yet, so each "node" here is a small fake signal
server in this file: trio-websocket on 127.0.0.1:0 speaking LiveKit's protobufs,
with the SFU's own SDP code (``sdp.negotiator.answer_offer`` for publisher offers,
``SubscriberOffer`` for subscriber offers) and ICE-lite ``PeerTransport``s on
their own UDP sockets, so media really flows through the client's PCs on both
nodes. Node 1 admits the join and publishes; on cue it sends the migration leave
and closes. Node 2 takes only a resume (``reconnect=1``), checks its query,
sends ``reconnect``, an update and a subscriber offer with the same mid and SSRC
node 1 used, and records everything the client sends.
"""

from __future__ import annotations

import datetime
import json
import math
import secrets
import urllib.parse

import pytest
import trio
import trio_websocket
from livekit.protocol import models, rtc

from rtp import rtcp
from rtp.dtls import DtlsCertificate, DtlsRole
from rtp.packet import RtpPacket
from rtp.packet import parse as parse_rtp
from rtp.peer_transport import IceMode, PeerTransport
from rtp.peer_transport_events import RtcpReceived, RtpReceived, TransportConnected
from sdp.codecs import MediaKind
from sdp.model import Fingerprint
from sdp.negotiator import LocalParams, SubscriberOffer, answer_offer, local_dtls_role
from sdp.parser import parse as parse_sdp
from sdp.parser import serialize
from server_fixtures import all_tasks
from trio_sfu.client import ClientError, LiveKitClient, signal_url

TOKEN = "header.payload.signature"  # the fake nodes compare it, they do not verify it
ME, OTHER = "PA_mover", "PA_other"
REMOTE_TRACK = "TR_Aremote"
REMOTE_SSRC = 0x5EED0001


def _udp_candidate(port: int, mid: str) -> str:
    return json.dumps({"candidate": f"candidate:1 1 udp 2130706431 127.0.0.1 {port} typ host",
                       "sdpMid": mid, "sdpMLineIndex": 0})


class LiteEndpoint:
    """An ICE-lite PeerTransport on its own loopback UDP socket, as the SFU side of one PC."""

    def __init__(self, transport: PeerTransport) -> None:
        self.transport = transport
        self.sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        self.connected = trio.Event()
        self.rtp: list[bytes] = []
        self.rtcp: list[bytes] = []

    async def bind(self) -> int:
        await self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    async def flush(self) -> None:
        for datagram, addr in self.transport.datagrams_to_send(trio.current_time()):
            await self.sock.sendto(datagram, addr)

    async def run(self) -> None:
        with self.sock:
            self.transport.start(trio.current_time())
            while True:
                await self.flush()
                while (event := self.transport.next_event()) is not None:
                    if isinstance(event, TransportConnected):
                        self.connected.set()
                    elif isinstance(event, RtpReceived):
                        self.rtp.append(event.packet)
                    elif isinstance(event, RtcpReceived):
                        self.rtcp.append(event.packet)
                deadline = self.transport.next_deadline()
                with trio.move_on_at(math.inf if deadline is None else deadline):
                    data, addr = await self.sock.recvfrom(65536)
                    self.transport.receive_datagram(data, addr[:2], trio.current_time())
                    continue
                self.transport.handle_timeout(trio.current_time())

    async def send_rtp(self, packet: bytes) -> None:
        assert self.transport.send_rtp(packet)
        await self.flush()


class FakeNode:
    """One node's signalling and media for one participant (see the module docstring)."""

    def __init__(self, name: str, nursery: trio.Nursery) -> None:
        self.name = name
        self.nursery = nursery
        self.port = 0
        self.targets: list[str] = []  # request target of every WebSocket upgrade
        self.authorizations: list[str | None] = []
        self.requests: list[rtc.SignalRequest] = []
        self.ws: trio_websocket.WebSocketConnection | None = None
        self.refuse_resume = False
        self.certificate = DtlsCertificate.generate(datetime.datetime.now(datetime.timezone.utc))
        self.local = LocalParams(secrets.token_hex(4), secrets.token_hex(12),
                                 (Fingerprint("sha-256", self.certificate.fingerprint()),))
        self.subscriber = SubscriberOffer(self.local)
        self.publisher_side: LiteEndpoint | None = None
        self.subscriber_side: LiteEndpoint | None = None
        self.offers: list[rtc.SessionDescription] = []  # publisher offers received
        self._tracks = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        server = await self.nursery.start(trio_websocket.serve_websocket, self._handle, "127.0.0.1", 0, None)
        self.port = server.port

    def kinds(self) -> list[str]:
        return [r.WhichOneof("message") for r in self.requests]

    def of_kind(self, kind: str) -> list:
        return [getattr(r, kind) for r in self.requests if r.WhichOneof("message") == kind]

    async def send(self, response: rtc.SignalResponse) -> None:
        assert self.ws is not None
        await self.ws.send_message(response.SerializeToString())

    async def migrate_to(self, other: "FakeNode | None") -> None:
        """The old node's side of a move: leave{MIGRATION, RESUME, regions=[other]}, then hang up."""
        regions = rtc.RegionSettings(regions=[rtc.RegionInfo(region=other.name, url=other.url)]
                                        if other is not None else [])
        await self.send(rtc.SignalResponse(leave=rtc.LeaveRequest(
            reason=models.DisconnectReason.MIGRATION, action=rtc.LeaveRequest.Action.RESUME, regions=regions)))
        assert self.ws is not None
        await self.ws.aclose()

    async def _handle(self, request: trio_websocket.WebSocketRequest) -> None:
        self.targets.append(request.path)
        self.authorizations.append(dict(request.headers).get(b"authorization", b"").decode() or None)
        ws = self.ws = await request.accept()
        # A new signal connection comes with new client PCs (a resume here too: the client cannot
        # know the node kept its ICE/DTLS state).
        self.publisher_side = self.subscriber_side = None
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(request.path).query)
        if query.get("reconnect") == ["1"]:
            if self.refuse_resume:
                await self.send(rtc.SignalResponse(leave=rtc.LeaveRequest(
                    reason=models.DisconnectReason.STATE_MISMATCH, action=rtc.LeaveRequest.Action.RECONNECT)))
                await ws.aclose()
                return
            await self.send(rtc.SignalResponse(reconnect=rtc.ReconnectResponse()))
            await self.send(rtc.SignalResponse(update=rtc.ParticipantUpdate(participants=[self._other()])))
        else:
            await self.send(rtc.SignalResponse(join=rtc.JoinResponse(
                room=models.Room(name="room1", sid="RM_room1"),
                participant=models.ParticipantInfo(sid=ME, identity="mover"),
                other_participants=[self._other()], ping_interval=5)))
        if self.subscriber.table.find_by_track(REMOTE_TRACK) is None:
            transceiver = self.subscriber.table.bind(REMOTE_TRACK, MediaKind.AUDIO, f"{OTHER}|{REMOTE_TRACK}")
            transceiver.ssrc = REMOTE_SSRC  # every node sends the track on the same SSRC
        offer = self.subscriber.create_offer()
        await self.send(rtc.SignalResponse(offer=rtc.SessionDescription(type="offer", sdp=serialize(offer), id=1)))
        while True:
            try:
                message = await ws.get_message()
            except trio_websocket.ConnectionClosed:
                return
            signal = rtc.SignalRequest()
            signal.ParseFromString(message)
            self.requests.append(signal)
            await self._on_request(signal)

    @staticmethod
    def _other() -> models.ParticipantInfo:
        return models.ParticipantInfo(sid=OTHER, identity="other", state=models.ParticipantInfo.State.ACTIVE,
                                      tracks=[models.TrackInfo(sid=REMOTE_TRACK, type=models.TrackType.AUDIO)])

    async def _on_request(self, signal: rtc.SignalRequest) -> None:
        kind = signal.WhichOneof("message")
        if kind == "add_track":
            self._tracks += 1
            add = signal.add_track
            prefix = "TR_A" if add.type == models.TrackType.AUDIO else "TR_V"
            info = models.TrackInfo(sid=f"{prefix}{self._tracks}", name=add.name, type=add.type,
                                    source=add.source, layers=add.layers)
            await self.send(rtc.SignalResponse(track_published=rtc.TrackPublishedResponse(cid=add.cid, track=info)))
        elif kind == "offer":
            self.offers.append(signal.offer)
            parsed = parse_sdp(signal.offer.sdp)
            answer = answer_offer(parsed, self.local)
            first = parsed.media[0]
            await self.send(rtc.SignalResponse(answer=rtc.SessionDescription(
                type="answer", sdp=serialize(answer), id=signal.offer.id)))
            if self.publisher_side is not None:
                return  # a renegotiation keeps the PC's transport
            endpoint = self.publisher_side = LiteEndpoint(PeerTransport(
                IceMode.LITE, DtlsRole(local_dtls_role(answer, local_is_offerer=False).value),
                local_ufrag=self.local.ice_ufrag, local_pwd=self.local.ice_pwd, certificate=self.certificate,
                remote_ufrag=parsed.effective_ufrag(first), remote_pwd=parsed.effective_pwd(first),
                remote_fingerprints=[(f.algorithm, f.value) for f in parsed.effective_fingerprints(first)]))
            port = await endpoint.bind()
            self.nursery.start_soon(endpoint.run)
            await self.send(rtc.SignalResponse(trickle=rtc.TrickleRequest(
                candidateInit=_udp_candidate(port, first.mid), target=rtc.SignalTarget.PUBLISHER)))
        elif kind == "answer":
            self.subscriber.apply_answer(parse_sdp(signal.answer.sdp))
            assert self.subscriber.dtls_role is not None
            endpoint = self.subscriber_side = LiteEndpoint(PeerTransport(
                IceMode.LITE, DtlsRole(self.subscriber.dtls_role.value),
                local_ufrag=self.local.ice_ufrag, local_pwd=self.local.ice_pwd, certificate=self.certificate,
                remote_ufrag=self.subscriber.remote_ice_ufrag, remote_pwd=self.subscriber.remote_ice_pwd,
                remote_fingerprints=[(f.algorithm, f.value) for f in self.subscriber.remote_fingerprints]))
            port = await endpoint.bind()
            self.nursery.start_soon(endpoint.run)
            await self.send(rtc.SignalResponse(trickle=rtc.TrickleRequest(
                candidateInit=_udp_candidate(port, "0"), target=rtc.SignalTarget.SUBSCRIBER)))
        elif kind == "ping_req":
            await self.send(rtc.SignalResponse(pong_resp=rtc.Pong(
                last_ping_timestamp=signal.ping_req.timestamp, timestamp=signal.ping_req.timestamp)))

    async def send_remote_audio(self, sequence_numbers: range) -> None:
        endpoint = self.subscriber_side
        assert endpoint is not None
        with trio.fail_after(10):
            await endpoint.connected.wait()
        for seq in sequence_numbers:
            await endpoint.send_rtp(RtpPacket(payload_type=111, sequence_number=seq & 0xFFFF,
                                              timestamp=960 * seq, ssrc=REMOTE_SSRC, payload=bytes(40)).serialize())


def _publisher_lines(offer: rtc.SessionDescription) -> list[tuple]:
    """Per m-line: what a node needs to keep a publication's identity (mid, msid, SSRCs, rids)."""
    return [(m.mid, m.kind, m.msid.stream_id, m.msid.track_id, sorted(m.ssrcs), [r.rid for r in m.rids],
             m.direction.value)
            for m in parse_sdp(offer.sdp).media]


async def _until(predicate, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


def test_signal_url_for_a_resume() -> None:
    url = signal_url("https://node2.example/base", access_token="t", resume_sid="PA_x", reconnect_reason=0)
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qs(parts.query)
    assert parts.scheme == "wss" and parts.path == "/base/rtc"
    assert query["reconnect"] == ["1"] and query["sid"] == ["PA_x"] and query["reconnect_reason"] == ["0"]
    assert query["access_token"] == ["t"] and query["protocol"] == ["17"]
    assert "reconnect" not in urllib.parse.parse_qs(urllib.parse.urlsplit(signal_url("ws://h")).query)


async def test_client_moves_to_another_node_with_its_tracks() -> None:
    before = all_tasks()
    async with trio.open_nursery() as nursery:
        node1, node2 = FakeNode("node-1", nursery), FakeNode("node-2", nursery)
        await node1.start()
        await node2.start()
        async with LiveKitClient.connect(node1.url, TOKEN, ping_interval=0.05) as client:
            audio = await client.publish_audio("mic")
            video = await client.publish_video("cam", width=320, height=180, bitrate=200_000, simulcast=True)
            await audio.wait_ready()
            await video.wait_ready()
            await client.wait_connected()
            track = (await client.wait_for_tracks(1))[0]
            assert track.sid == REMOTE_TRACK and track.participant_sid == OTHER

            # Media on node 1, both ways; the remote track ends at seq 119.
            await node1.send_remote_audio(range(100, 120))
            for index in range(5):
                assert audio.send_rtp(b"\x01" * 20, timestamp=960 * index)
                assert video.send_rtp(b"\x02" * 30, timestamp=3000 * index, rid="f")
            await _until(lambda: track.stats.packets == 20 and len(node1.publisher_side.rtp) == 10)
            old_publisher_pc, old_subscriber_pc = client.publisher_pc, client.subscriber_pc
            first_offer = node1.offers[-1]
            answers_to_node1 = node1.of_kind("answer")

            await node1.migrate_to(node2)
            # Senders during the move neither raise nor spend sequence numbers.
            dropped = audio.packets_dropped
            while client.signal_resumes == 0 or client.publisher_pc is None \
                    or not client.publisher_pc.connected.is_set():
                assert not audio.send_rtp(b"\x01" * 20, timestamp=0)
                await trio.sleep(0.005)
            assert audio.packets_dropped > dropped
            await client.wait_resumed(1)

            assert client.migrations == 1 and client.url == node2.url
            assert not client.left.is_set() and client.errors == []
            assert old_publisher_pc.ended.is_set() and old_subscriber_pc.ended.is_set()
            assert client.publisher_pc is not old_publisher_pc and client.subscriber_pc is not old_subscriber_pc

            # Node 2 saw a resume of the same participant, with the same token.
            (target,) = node2.targets
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query)
            assert urllib.parse.urlsplit(target).path == "/rtc"
            assert query["reconnect"] == ["1"] and query["sid"] == [ME] and query["reconnect_reason"] == ["0"]
            assert node2.authorizations == [f"Bearer {TOKEN}"] == node1.authorizations

            # One publisher offer with every publication under the same mid, msid and SSRCs; no add_track.
            assert "add_track" not in node2.kinds()
            (second_offer,) = node2.offers
            assert _publisher_lines(second_offer) == _publisher_lines(first_offer)
            assert [line[0] for line in _publisher_lines(second_offer)] == [audio.mid, video.mid]
            assert _publisher_lines(second_offer)[0][4] == [audio.ssrcs[""]]
            # A new publisher PC: another ICE ufrag and the offer answered with node 2's certificate.
            new_sdp, old_sdp = parse_sdp(second_offer.sdp), parse_sdp(first_offer.sdp)
            assert new_sdp.effective_ufrag(new_sdp.media[0]) != old_sdp.effective_ufrag(old_sdp.media[0])

            # sync_state follows the offer, with our last subscriber answer, subscriptions, publications.
            kinds = [k for k in node2.kinds() if k != "ping_req"]
            assert kinds.index("sync_state") > kinds.index("offer")
            (sync,) = node2.of_kind("sync_state")
            sync_at = node2.kinds().index("sync_state")
            sent_answers = answers_to_node1 + [r.answer for r in node2.requests[:sync_at]
                                               if r.WhichOneof("message") == "answer"]
            assert sync.answer == sent_answers[-1] and sync.answer.type == "answer"
            assert list(sync.subscription.track_sids) == [REMOTE_TRACK] and sync.subscription.subscribe
            assert [(p.cid, p.track.sid) for p in sync.publish_tracks] == [
                (audio.cid, audio.sid), (video.cid, video.sid)]
            assert sync.publish_tracks[1].track.name == "cam" and len(sync.publish_tracks[1].track.layers) == 3

            # The subscriber side: the same RemoteTrack object, its statistics going on across the move.
            assert client.subscriptions[REMOTE_TRACK] is track and track.active
            await node2.send_remote_audio(range(125, 145))  # 120..124 never arrive
            await _until(lambda: track.stats.packets == 40)
            assert track.stats.lost == 5 and track.stats.expected == 45
            # Our receiver reports to node 2 count the loss since node 1's first packet (reception stats kept).
            def node2_report():
                for packet in node2.subscriber_side.rtcp:
                    for item in rtcp.parse_rtcp(packet):
                        if isinstance(item, rtcp.ReceiverReport):
                            for block in item.reports:
                                if block.ssrc == REMOTE_SSRC and block.highest_sequence & 0xFFFF == 144:
                                    return block
                return None
            await _until(lambda: node2_report() is not None, timeout=5)
            assert node2_report().packets_lost == 5

            # The publisher side: the same SSRCs, sequence numbers just go on.
            for index in range(5, 10):
                assert audio.send_rtp(b"\x01" * 20, timestamp=960 * index)
                assert video.send_rtp(b"\x02" * 30, timestamp=3000 * index, rid="f")
            await _until(lambda: len(node2.publisher_side.rtp) == 10)
            for ssrc in (audio.ssrcs[""], video.ssrcs["f"]):
                old = [p.sequence_number for p in map(parse_rtp, node1.publisher_side.rtp) if p.ssrc == ssrc]
                new = [p.sequence_number for p in map(parse_rtp, node2.publisher_side.rtp) if p.ssrc == ssrc]
                assert len(old) == len(new) == 5
                assert [(s - old[0]) & 0xFFFF for s in old + new] == list(range(10))

            # Ping and RTCP keep running on the new connection; leave goes to node 2.
            pongs = client.pongs
            await _until(lambda: client.pongs > pongs + 2)
            assert client.sender_reports_sent > 0
        await _until(lambda: "leave" in node2.kinds())
        assert node2.of_kind("leave")[0].reason == models.DisconnectReason.CLIENT_INITIATED
        assert "leave" not in node1.kinds()
        assert client.errors == []
        nursery.cancel_scope.cancel()
    leaked = {t for t in all_tasks() - before if t is not trio.lowlevel.current_task()}
    assert not leaked, [t.name for t in leaked]


async def test_resume_without_regions_comes_back_to_the_same_node() -> None:
    async with trio.open_nursery() as nursery:
        node = FakeNode("node-1", nursery)
        await node.start()
        async with LiveKitClient.connect(node.url, TOKEN, token_in_query=True) as client:
            audio = await client.publish_audio()
            await audio.wait_ready()
            await client.wait_connected()
            await node.migrate_to(None)
            await client.wait_resumed(1)
            assert client.url == node.url and not client.left.is_set() and client.errors == []
            first, second = node.targets
            assert "reconnect" not in first and "reconnect=1" in second and f"sid={ME}" in second
            assert urllib.parse.parse_qs(urllib.parse.urlsplit(second).query)["access_token"] == [TOKEN]
            assert node.kinds().count("add_track") == 1 and len(node.offers) == 2
            assert _publisher_lines(node.offers[0]) == _publisher_lines(node.offers[1])
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("refusal", ["leave", "unreachable"])
async def test_refused_resume_ends_the_client(refusal: str) -> None:
    async with trio.open_nursery() as nursery:
        node1, node2 = FakeNode("node-1", nursery), FakeNode("node-2", nursery)
        await node1.start()
        await node2.start()
        node2.refuse_resume = True
        async with LiveKitClient.connect(node1.url, TOKEN) as client:
            await client.wait_connected()
            if refusal == "unreachable":
                # A node that is not there any more: its port refuses the connection.
                closed = trio.socket.socket()
                await closed.bind(("127.0.0.1", 0))
                node2.port = closed.getsockname()[1]
                closed.close()
            await node1.migrate_to(node2)
            with trio.fail_after(10):
                await client.left.wait()
            assert client.migrations == 0
            with pytest.raises(ClientError, match="left before"):
                await client.wait_resumed(1, timeout=1)
            if refusal == "leave":
                assert client.leave_reason == "STATE_MISMATCH"
                assert client.errors == ["server asked us to leave: STATE_MISMATCH"]
            else:
                assert len(client.errors) == 1 and "cannot resume" in client.errors[0]
            assert client.subscriber_pc is None
        nursery.cancel_scope.cancel()
