"""The relay carries a track's media only on demand, every simulcast layer, with its feedback.

Two real servers ("nodes") joined by the in-memory relay link; on node A a publisher sends
simulcast VP8 the way Chromium does (one m-line, rids q/h/f, SSRCs learned from the mid/rid
header extensions) from our own PeerTransport, and answers every PLI with a keyframe on the
layer it names; on node B a subscriber with its own PeerTransport. What crosses the link is
counted from the link itself (every RelayRtp message A sends B, with the layer it names).

What the assertions prove: while nobody on B subscribes, not one RTP packet crosses; subscribing
starts exactly the layer the subscriber's down track targets, switching quality moves the link to
the new layer (and the subscriber gets it from its keyframe on), unsubscribing stops it; a PLI
from B's subscriber reaches the publisher for the right layer's SSRC; a NACK from B's subscriber
is answered on B from its copy's buffer; a packet the link loses is NACKed by B's copy and
resent by A, so the subscriber still gets it; the publisher's SR reaches B's subscriber as the
publisher's NTP/RTP mapping.
"""

from __future__ import annotations

import contextlib
from typing import AsyncIterator

import attrs
import trio
from livekit.protocol import models, rtc

from proto import relay_pb2 as pb
from rtp import rtcp
from rtp.header_extensions import encode_mid, encode_rid
from rtp.packet import RtpPacket
from server_fixtures import media_nodes, mint_token, recv, send, signal_client
from test_media_forwarding import ClientPc, answer_subscriber, recv_until
from test_media_simulcast import LAYER_SSRCS, MID_ID, RID_ID, simulcast_offer
from trio_sfu.server import Server
from trio_sfu.tracks import SourceOrigin

RIDS = ("q", "h", "f")
LAYER = {"q": 0, "h": 1, "f": 2}
_NTP_UNIT = 1 << 32


def payload(rid: str, keyframe: bool, n: int) -> bytes:
    """VP8 descriptor S=1 PID=0, the payload header's P bit (0 = keyframe), then the layer and
    the round, so a test can tell what was forwarded."""
    return bytes([0x10, 0x00 if keyframe else 0x01]) + f"{rid}{n:05d}".encode() * 6


def tag(packet: RtpPacket) -> tuple[str, int]:
    """(rid, round) a forwarded packet carries."""
    text = packet.payload[2:8].decode()
    return text[0], int(text[1:])


@attrs.define
class LinkRecord:
    """Every RelayRtp message node A sent node B: (layer, resent, round tag of its payload)."""

    rtp: list[tuple[int, bool, str]] = attrs.field(factory=list)
    drop_round: dict[str, int] = attrs.field(factory=dict)  # rid -> round whose first send the link loses
    dropped: list[tuple[str, int]] = attrs.field(factory=list)


@attrs.define
class Call:
    a: Server
    b: Server
    ws_a: object
    ws_b: object
    alice_pub: ClientPc
    bob_sub: ClientPc
    sid: str
    link: LinkRecord
    rounds: int = 0
    paused: set[str] = attrs.field(factory=set)  # rids the publisher stops sending (congestion)
    # (ntp, rtp) of every SR the publisher sent, by rid.
    sender_reports: dict[str, list[tuple[int, int]]] = attrs.field(factory=dict)


def record_link(server: Server, peer: str, record: LinkRecord) -> None:
    """Wrap server's link to `peer`: record each RelayRtp it sends, and lose the ones asked for."""
    link = server.relay.links[peer]
    original = link.send

    def send_(message: pb.RelayMessage) -> bool:
        if message.WhichOneof("message") == "rtp":
            body = message.rtp
            text = body.packet[-36:-30].decode(errors="replace")  # the payload's first tag
            rid, n = text[0], int(text[1:]) if text[1:].isdigit() else -1
            if not body.resent and record.drop_round.get(rid) == n:
                del record.drop_round[rid]
                record.dropped.append((rid, n))
                return True  # lost on the way (the sender believes it went)
            record.rtp.append((body.layer, body.resent, text))
        return original(message)

    link.send = send_  # type: ignore[method-assign]


async def publish_forever(call: Call) -> None:
    """The publisher: a round of all three layers every 10 ms; a layer whose SSRC got a PLI since
    its last keyframe sends one now (as a browser does), and every 50th round is a keyframe."""
    pub = call.alice_pub
    seq = {rid: 1000 * (i + 1) for i, rid in enumerate(RIDS)}
    answered = {rid: 0 for rid in RIDS}
    while True:
        call.rounds += 1
        n = call.rounds
        for rid in RIDS:
            if rid in call.paused:
                continue
            ssrc = LAYER_SSRCS[rid]
            plis = sum(1 for p in pub.rtcp if isinstance(p, rtcp.Pli) and p.media_ssrc == ssrc)
            keyframe = plis > answered[rid] or n % 50 == 1
            answered[rid] = plis
            seq[rid] = (seq[rid] + 1) & 0xFFFF
            await pub.send_rtp(RtpPacket(96, seq[rid], 3000 * n, ssrc,
                                         extensions={MID_ID: encode_mid("0"), RID_ID: encode_rid(rid)},
                                         payload=payload(rid, keyframe, n)))
            if n % 20 == 0:
                # Its sender reports, each mapping this round's timestamp to an NTP time far from
                # the wall clock (so a subscriber SR carrying it cannot come from anywhere else).
                ntp = (1_000_000 + n) << 32
                call.sender_reports.setdefault(rid, []).append((ntp, 3000 * n))
                await pub.send_rtcp([rtcp.SenderReport(ssrc, ntp, 3000 * n, n, n * 40)])
        await trio.sleep(0.01)


async def wait_until(predicate, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


@contextlib.asynccontextmanager
async def simulcast_call() -> AsyncIterator[tuple[Call, trio.Nursery]]:
    """Alice on A publishing simulcast (publishing all the time), Bob on B subscribed to nothing
    yet (auto_subscribe off), his subscriber PC up."""
    async with media_nodes("node-a", "node-b") as (a, b):
        async with trio.open_nursery() as nursery, \
                signal_client(a, mint_token("alice")) as ws_a, \
                signal_client(b, mint_token("bob"), query="auto_subscribe=0") as ws_b:
            await recv(ws_a), await recv(ws_b)
            alice_sub, bob_sub, alice_pub = ClientPc(), ClientPc(), ClientPc()
            await answer_subscriber(ws_a, alice_sub, nursery)
            await answer_subscriber(ws_b, bob_sub, nursery)
            layers = [models.VideoLayer(quality=q, width=w, height=h)
                      for q, w, h in ((0, 160, 90), (1, 320, 180), (2, 640, 360))]
            await send(ws_a, rtc.SignalRequest(add_track=rtc.AddTrackRequest(
                cid="cid-cam", type=models.TrackType.VIDEO, source=models.TrackSource.CAMERA,
                width=640, height=360, layers=layers)))
            sid = (await recv_until(ws_a, "track_published")).track_published.track.sid
            await send(ws_a, rtc.SignalRequest(offer=rtc.SessionDescription(type="offer", sdp=simulcast_offer(alice_pub), id=1)))
            answer = (await recv_until(ws_a, "answer")).answer
            alice_pub.connect(answer.sdp)
            nursery.start_soon(alice_pub.run)
            await alice_pub.connected.wait()
            await bob_sub.connected.wait()
            record = LinkRecord()
            record_link(a, "node-b", record)
            call = Call(a, b, ws_a, ws_b, alice_pub, bob_sub, sid, record)
            nursery.start_soon(publish_forever, call)
            yield call, nursery
            nursery.cancel_scope.cancel()


def remote_copy(call: Call):
    rooms = list(call.b.media.rooms.values())
    if not rooms:
        return None
    sources = rooms[0].track_manager.sources(call.sid)
    return sources[0] if sources and sources[0].origin is SourceOrigin.REMOTE else None


async def subscribe(call: Call, nursery: trio.Nursery, wanted: bool) -> None:
    await send(call.ws_b, rtc.SignalRequest(subscription=rtc.UpdateSubscription(track_sids=[call.sid], subscribe=wanted)))


async def bob_offer(call: Call, nursery: trio.Nursery):
    """Answer B's next subscriber offer; the m-line carrying the track (mid, SSRC, RTX SSRC)."""
    from sdp.parser import parse as parse_sdp

    offer = parse_sdp(await answer_subscriber(call.ws_b, call.bob_sub, nursery))
    (line,) = [m for m in offer.media if m.msid is not None and m.msid.track_id == call.sid]
    fid = [g.ssrcs[1] for g in line.ssrc_groups if g.semantics == "FID"]
    return line.ssrcs[0], (fid[0] if fid else None)


def received(call: Call, ssrc: int) -> list[RtpPacket]:
    return [p for p in call.bob_sub.rtp if p.ssrc == ssrc]


async def test_media_crosses_only_while_subscribed_and_only_the_targeted_layer() -> None:
    async with simulcast_call() as (call, nursery):
        # B has the track as a remote copy with the publisher's three layers ...
        await wait_until(lambda: remote_copy(call) is not None and call.rounds > 30)
        copy = remote_copy(call)
        assert copy.receiver.layers == (0, 1, 2) and copy.receiver.rids == RIDS
        # ... and nobody there subscribes: not one RTP packet crossed while A forwarded 30 rounds.
        rounds = call.rounds
        await wait_until(lambda: call.rounds >= rounds + 30)
        assert call.link.rtp == []

        # Bob subscribes: his down track targets the top layer; that layer alone crosses.
        await subscribe(call, nursery, True)
        bob_ssrc, _ = await bob_offer(call, nursery)
        await call.bob_sub.wait_for(lambda: len(received(call, bob_ssrc)) >= 20)
        assert {tag(p)[0] for p in received(call, bob_ssrc)} == {"f"}
        assert {layer for layer, _, _ in call.link.rtp} == {2}
        assert {text[0] for _, _, text in call.link.rtp} == {"f"}

        # A PLI from Bob reaches Alice as a keyframe request for the layer he receives.
        def plis(rid: str) -> int:
            return sum(1 for p in call.alice_pub.rtcp if isinstance(p, rtcp.Pli) and p.media_ssrc == LAYER_SSRCS[rid])

        await trio.sleep(0.6)  # past the keyframe-request spacing of both receivers
        before = {rid: plis(rid) for rid in RIDS}
        await call.bob_sub.send_rtcp([rtcp.ReceiverReport(0xB0B), rtcp.Pli(0xB0B, bob_ssrc)])
        await call.alice_pub.wait_for(lambda: plis("f") > before["f"])
        assert plis("q") == before["q"] and plis("h") == before["h"]

        # Bob asks for the low quality: the link moves to layer 0, and he gets it from a keyframe.
        await send(call.ws_b, rtc.SignalRequest(track_setting=rtc.UpdateTrackSettings(
            track_sids=[call.sid], quality=models.VideoQuality.LOW)))
        got = await call.bob_sub.wait_for(
            lambda: received(call, bob_ssrc) if sum(tag(p)[0] == "q" for p in received(call, bob_ssrc)) >= 10 else None)
        tags = [tag(p)[0] for p in got]
        first_q = tags.index("q")
        assert set(tags[:first_q]) == {"f"} and set(tags[first_q:]) == {"q"}
        assert got[first_q].payload[1] & 0x01 == 0, "the switch happens on a keyframe"
        steps = [(b.sequence_number - a.sequence_number) & 0xFFFF for a, b in zip(got, got[1:])]
        assert set(steps) == {1}, "the subscriber's numbering continues across the switch"
        mark = len(call.link.rtp)
        rounds = call.rounds
        await wait_until(lambda: call.rounds >= rounds + 20)
        assert {layer for layer, _, _ in call.link.rtp[mark:]} == {0}

        # Medium: layer 1 (each quality crosses as asked).
        await send(call.ws_b, rtc.SignalRequest(track_setting=rtc.UpdateTrackSettings(
            track_sids=[call.sid], quality=models.VideoQuality.MEDIUM)))
        await call.bob_sub.wait_for(lambda: sum(tag(p)[0] == "h" for p in received(call, bob_ssrc)) >= 10)
        mark = len(call.link.rtp)
        rounds = call.rounds
        await wait_until(lambda: call.rounds >= rounds + 20)
        assert {layer for layer, _, _ in call.link.rtp[mark:]} == {1}

        # Bob unsubscribes: the track stops crossing.
        await subscribe(call, nursery, False)
        await wait_until(lambda: not copy.receiver.down_tracks)
        tap = call.a.relay._local[(copy_room(call), call.sid)][2][0]
        await wait_until(lambda: not tap.requested)
        mark = len(call.link.rtp)
        rounds = call.rounds
        await wait_until(lambda: call.rounds >= rounds + 30)
        assert call.link.rtp[mark:] == []
        assert call.a.metrics.get("relay_rejected_total") == call.b.metrics.get("relay_rejected_total") == 0


def copy_room(call: Call) -> str:
    (room,) = call.a.media.rooms.values()
    return room.name


async def test_nacks_across_the_relay_and_the_publishers_sender_reports() -> None:
    async with simulcast_call() as (call, nursery):
        await wait_until(lambda: remote_copy(call) is not None)
        await subscribe(call, nursery, True)
        bob_ssrc, bob_rtx_ssrc = await bob_offer(call, nursery)
        await call.bob_sub.wait_for(lambda: len(received(call, bob_ssrc)) >= 10)

        # The link loses one packet of the relayed layer: B's copy NACKs it over the link, A
        # resends it from its buffer, and Bob gets it after all.
        lost_round = call.rounds + 10
        call.link.drop_round["f"] = lost_round
        await wait_until(lambda: call.link.dropped == [("f", lost_round)])
        await call.bob_sub.wait_for(lambda: any(tag(p) == ("f", lost_round) for p in received(call, bob_ssrc)))
        assert any(resent and text == f"f{lost_round:05d}" for _, resent, text in call.link.rtp)
        assert call.a.metrics.get("relay_rtp_resent_total") >= 1
        await call.bob_sub.wait_for(lambda: any(tag(p)[1] >= lost_round + 5 for p in received(call, bob_ssrc)))
        got = [tag(p)[1] for p in received(call, bob_ssrc)]
        first = got[0]
        window = [n for n in got if first <= n <= lost_round + 5]
        assert sorted(set(window)) == list(range(first, lost_round + 6)), "no round missing around the loss"

        # Bob's own network loses a packet: his NACK is answered on B from the copy's buffer
        # (nothing crosses the link for it), same payload.
        resent_on_link = sum(1 for _, resent, _ in call.link.rtp if resent)
        bob_sub = call.bob_sub
        bob_sub.drop_nth[bob_ssrc] = bob_sub._arrivals.get(bob_ssrc, 0) + 5
        await wait_until(lambda: bob_sub.dropped)
        (lost_seq,) = bob_sub.dropped
        before = len(bob_sub.rtp)
        await bob_sub.send_rtcp([rtcp.ReceiverReport(0xB0B), rtcp.Nack.from_lost(0xB0B, bob_ssrc, [lost_seq])])

        def resent_to_bob() -> list[RtpPacket]:
            out = []
            for p in bob_sub.rtp[before:]:
                if p.ssrc == bob_rtx_ssrc and p.payload[:2] == lost_seq.to_bytes(2, "big"):
                    out.append(p)
                elif p.ssrc == bob_ssrc and p.sequence_number == lost_seq:
                    out.append(p)
            return out

        (again,) = await bob_sub.wait_for(resent_to_bob)
        body = again.payload[2:] if again.ssrc == bob_rtx_ssrc else again.payload
        (previous,) = [p for p in received(call, bob_ssrc) if p.sequence_number == (lost_seq - 1) & 0xFFFF]
        assert tag(RtpPacket(0, 0, 0, 0, payload=body)) == ("f", tag(previous)[1] + 1), "the lost packet itself"
        assert sum(1 for _, resent, _ in call.link.rtp if resent) == resent_on_link

        # Receiver reports: B's copy reports on the link hop; A accounts them and keeps them.
        await wait_until(lambda: call.a.metrics.get("relay_rr_received_total") >= 1)

        # The publisher's SR crossed: Bob's SRs carry Alice's NTP/RTP mapping (shifted by his
        # down track's timestamp offset), not the wall clock's.
        await wait_until(lambda: "f" in call.sender_reports and call.b.metrics.get("relay_sr_received_total") >= 1)
        offset_packet = received(call, bob_ssrc)[-1]
        rid, n = tag(offset_packet)
        assert rid == "f"
        ts_offset = (offset_packet.timestamp - 3000 * n) & 0xFFFFFFFF

        def srs() -> list[rtcp.SenderReport]:
            return [p for p in bob_sub.rtcp if isinstance(p, rtcp.SenderReport) and p.ssrc == bob_ssrc
                    and p.ntp_timestamp >> 32 < 2_000_000]

        sr = (await bob_sub.wait_for(srs))[-1]
        # Bob's SR extrapolates one of Alice's SRs (ntp0, rtp0) by the same elapsed time on both
        # clocks: NTP ntp0 + t, RTP rtp0 + 90000 t + his timestamp offset.
        (ntp0, rtp0) = max((ntp, rtp) for ntp, rtp in call.sender_reports["f"] if ntp <= sr.ntp_timestamp)
        elapsed = (sr.ntp_timestamp - ntp0) / _NTP_UNIT
        assert 0 <= elapsed < 5
        expected_rtp = (rtp0 + round(elapsed * 90000) + ts_offset) & 0xFFFFFFFF
        assert abs(((sr.rtp_timestamp - expected_rtp + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)) <= 2


async def test_bad_on_demand_messages_are_refused_and_counted() -> None:
    """RelaySubscribe, RelaySenderReport, RelayRtp and RelayRtcp a peer gets wrong: refused with
    a reason or counted, never raised out of the relay; the track then still works."""
    async with simulcast_call() as (call, nursery):
        await wait_until(lambda: remote_copy(call) is not None)
        a, b = call.a, call.b
        to_a, to_b = b.relay.links["node-a"], a.relay.links["node-b"]
        room = copy_room(call)

        async def refused_by(server: Server, link, message: pb.RelayMessage, reason: str) -> None:
            before = len(server.relay.rejections)
            link.send(message)
            await wait_until(lambda: len(server.relay.rejections) > before)
            assert reason in server.relay.rejections[-1], server.relay.rejections[-1]

        await refused_by(a, to_a, pb.RelayMessage(subscribe=pb.RelaySubscribe(
            room=room, track_id=call.sid, layers=list(range(9)))), "subscribe with too many layers")
        await refused_by(b, to_b, pb.RelayMessage(sender_report=pb.RelaySenderReport(
            room=room, track_id=call.sid, layer=2, ssrc=0xDEAD, ntp_timestamp=1 << 32)),
            "sender report for another layer's SSRC")
        unknown = a.metrics.get("relay_subscribe_unknown_total")
        to_a.send(pb.RelayMessage(subscribe=pb.RelaySubscribe(room=room, track_id="TR_nope", layers=[0])))
        await wait_until(lambda: a.metrics.get("relay_subscribe_unknown_total") == unknown + 1)
        # Layers the track does not have are not relayed: the tap asks for nothing.
        to_a.send(pb.RelayMessage(subscribe=pb.RelaySubscribe(room=room, track_id=call.sid, layers=[5, 7])))
        # A packet naming a layer the copy lacks is dropped and counted.
        dropped = b.metrics.get("relay_rtp_dropped_total")
        to_b.send(pb.RelayMessage(rtp=pb.RelayRtp(room=room, track_id=call.sid, layer=6, packet=RtpPacket(
            96, 1, 1, LAYER_SSRCS["q"], payload=payload("q", True, 1)).serialize())))
        await wait_until(lambda: b.metrics.get("relay_rtp_dropped_total") == dropped + 1)
        assert remote_copy(call).receiver.counters.dropped_wrong_layer == 1
        # Feedback naming nobody's SSRC, and a NACK naming thousands of packets.
        nack = rtcp.Nack.from_lost(1, 0xBAD, list(range(0, 4000, 2)))
        to_a.send(pb.RelayMessage(rtcp=pb.RelayRtcp(room=room, track_id=call.sid, packet=rtcp.serialize_rtcp(
            [rtcp.ReceiverReport(1), rtcp.Pli(1, 0xBAD), nack]))))
        rounds = call.rounds
        await wait_until(lambda: call.rounds >= rounds + 20)
        assert call.link.rtp == [(6, False, "q00001")], "only the injected packet: nothing the track has was subscribed"
        assert a.metrics.get("relay_handler_failed_total") == b.metrics.get("relay_handler_failed_total") == 0

        # The track still crosses when Bob subscribes.
        await subscribe(call, nursery, True)
        bob_ssrc, _ = await bob_offer(call, nursery)
        await call.bob_sub.wait_for(lambda: len(received(call, bob_ssrc)) >= 10)


def test_a_track_description_with_unusable_rids_is_refused() -> None:
    from sdp.codecs import MediaKind
    from sdp.model import Codec
    from trio_sfu.cluster.relay_protocol import TrackSpec

    vp8 = (Codec(96, "VP8", 90000),)
    good = TrackSpec("TR_v", "PA_p", MediaKind.VIDEO, vp8, rids=("q", "h", "f"))
    assert TrackSpec.from_proto(good.to_proto()) == good
    for rids in (("q", "q"), ("",), ("x" * 33,), tuple("abcde")):
        assert TrackSpec.from_proto(TrackSpec("TR_v", "PA_p", MediaKind.VIDEO, vp8, rids=rids).to_proto()) is None, rids


async def test_a_lost_links_taps_leave_their_receivers() -> None:
    """What the link's lifecycle calls when it loses a link: the local tracks stop feeding it."""
    async with simulcast_call() as (call, nursery):
        await wait_until(lambda: remote_copy(call) is not None)
        await subscribe(call, nursery, True)
        bob_ssrc, _ = await bob_offer(call, nursery)
        await call.bob_sub.wait_for(lambda: len(received(call, bob_ssrc)) >= 10)
        (_, source, taps) = call.a.relay._local[(copy_room(call), call.sid)]
        (tap,) = taps
        assert tap in source.receiver.down_tracks
        call.a.relay._stop_relaying_on(call.a.relay.links["node-b"])
        assert taps == [] and tap not in source.receiver.down_tracks
        mark = len(call.link.rtp)
        rounds = call.rounds
        await wait_until(lambda: call.rounds >= rounds + 20)
        assert call.link.rtp[mark:] == []
        # B's copy keeps asking (its refresh); with no tap for it, A counts the requests.
        await wait_until(lambda: call.a.metrics.get("relay_subscribe_unknown_total") >= 1)


async def test_a_layer_the_publisher_stops_sending_is_stood_in_for_across_the_link() -> None:
    """A publisher drops its top layer (as under congestion): the link carries the layer a local
    subscriber would fall back to, so Bob (still targeting the top) gets the middle one; when the
    top layer returns, the link and Bob move back to it."""
    async with simulcast_call() as (call, nursery):
        await wait_until(lambda: remote_copy(call) is not None)
        await subscribe(call, nursery, True)
        bob_ssrc, _ = await bob_offer(call, nursery)
        await call.bob_sub.wait_for(lambda: len(received(call, bob_ssrc)) >= 10)
        assert {layer for layer, _, _ in call.link.rtp} == {2}

        call.paused.add("f")
        got = await call.bob_sub.wait_for(
            lambda: received(call, bob_ssrc) if sum(tag(p)[0] == "h" for p in received(call, bob_ssrc)) >= 10 else None)
        tags = [tag(p)[0] for p in got]
        assert set(tags[tags.index("h"):]) == {"h"}
        mark = len(call.link.rtp)
        rounds = call.rounds
        await wait_until(lambda: call.rounds >= rounds + 20)
        assert {layer for layer, _, _ in call.link.rtp[mark:]} == {1}, "the stand-in, not the lowest, not all"

        call.paused.clear()
        got = await call.bob_sub.wait_for(
            lambda: received(call, bob_ssrc) if [tag(p)[0] for p in received(call, bob_ssrc)][-10:] == ["f"] * 10 else None)
        mark = len(call.link.rtp)
        rounds = call.rounds
        await wait_until(lambda: call.rounds >= rounds + 20)
        assert {layer for layer, _, _ in call.link.rtp[mark:]} == {2}
        steps = [(b.sequence_number - a.sequence_number) & 0xFFFF for a, b in zip(got, got[1:])]
        assert set(steps) == {1}
