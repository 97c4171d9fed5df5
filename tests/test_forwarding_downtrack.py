"""DownTrack behaviour through a real TrackReceiver: continuity across simulcast switches
and publisher restarts, padding without gaps, VP8 munging, NACK answers, PLI relay,
SR mapping, snapshot/restore."""

import pytest
from budgets import examples
from hypothesis import given, settings, strategies as st

from forwarding_streams import (
    RID_EXT,
    SUB_RTX_PT,
    SUB_VP8_PT,
    VP8_PT,
    Layer,
    Wire,
    simulcast_pair,
    three_layers,
)
from rtp.packet import RtpPacket
from rtp.rtcp import Fir, FirEntry, Nack, Pli, ReceiverReport, ReportBlock, SenderReport, compact_ntp, parse_rtcp
from trio_sfu.forwarding.codec_keyframes import parse_vp8_descriptor
from trio_sfu.forwarding.downtrack import DownTrack, DownTrackSnapshot, map_payload_types


def _sent(wire):
    return [RtpPacket.parse(p) for p in wire.rtp]


def _desc(pkt):
    return parse_vp8_descriptor(pkt.payload)


def _assert_continuous(pkts):
    for a, b in zip(pkts, pkts[1:]):
        assert (b.sequence_number - a.sequence_number) & 0xFFFF == 1, (a.sequence_number, b.sequence_number)
        d_ts = (b.timestamp - a.timestamp) & 0xFFFFFFFF
        assert d_ts < 1 << 31, "timestamp went backwards"


def test_waits_for_keyframe_then_forwards_with_rewritten_header():
    wire = Wire()
    receiver, down = simulcast_pair(wire, target_layer=0)
    q, h, f = three_layers()
    now = 0.0
    for p in q.frame(keyframe=False):
        receiver.receive_rtp(p, now)
    assert wire.rtp == [] and down.counters.dropped_waiting_keyframe == 2
    # waiting for a keyframe asked the publisher for one (PLI on q's SSRC), once within 500 ms
    plis = [x for c in wire.up_rtcp for x in parse_rtcp(c) if isinstance(x, Pli)]
    assert [(p.media_ssrc) for p in plis] == [q.ssrc]
    for p in q.frame(keyframe=True) + q.frame(keyframe=False) + h.frame(keyframe=True):
        receiver.receive_rtp(p, now)
    sent = _sent(wire)
    assert len(sent) == 4 and down.counters.dropped_other_layer == 2
    assert {p.ssrc for p in sent} == {0xD0D0} and {p.payload_type for p in sent} == {SUB_VP8_PT}
    _assert_continuous(sent)
    assert sent[0].sequence_number == 102 and sent[0].timestamp == 1_000 + 3000  # first source keeps numbering
    assert [p.marker for p in sent] == [False, True, False, True]
    assert sent[0].extensions[RID_EXT] == b"q"  # header extensions pass through untouched


def test_layer_switch_up_and_down_is_continuous_and_munges_vp8():
    wire = Wire()
    receiver, down = simulcast_pair(wire, target_layer=0)
    layers = three_layers()
    q, h, f = layers
    now = 10.0

    def tick(keyframes=()):
        nonlocal now
        for layer in layers:
            for p in layer.frame(keyframe=layer.rid in keyframes):
                receiver.receive_rtp(p, now)
        now += 1 / 30

    tick("q")
    tick()
    down.set_target_layer(2, now)
    tick()  # no keyframe on f yet: q continues
    assert {_desc(p).picture_id for p in _sent(wire)[-2:]} == {(300 + 2)}
    tick("f")  # switch on f's keyframe
    tick()
    down.set_target_layer(1, now)
    tick("h")
    tick()
    sent = _sent(wire)
    # q's packets of the tick where f's keyframe arrives still go out (q is sent first)
    assert len(sent) == 16
    _assert_continuous(sent)
    assert down.counters.layer_switches == 2
    pids = [_desc(p).picture_id for p in sent[::2]]
    tl0s = [_desc(p).tl0picidx for p in sent[::2]]
    assert pids == [(300 + i) & 0x7FFF for i in range(8)]  # munged: one continuous picture id line
    assert tl0s == list(range(8))
    steps = [(b.timestamp - a.timestamp) & 0xFFFFFFFF for a, b in zip(sent[1::2], sent[2::2])]
    # f's keyframe is the same capture instant as the q frame sent just before it (no time
    # elapsed): the timestamp still moves forward, by one tick; elsewhere a frame is 3000 ticks
    assert steps == [3000, 3000, 3000, 1, 3000, 3000, 3000]


def test_publisher_restart_with_new_ssrc_continues_numbering():
    wire = Wire()
    receiver, down = simulcast_pair(wire, target_layer=1)
    h = three_layers()[1]
    for p in h.frame(True) + h.frame(False):
        receiver.receive_rtp(p, 1.0)
    restarted = Layer("h", 0x7777, 5, 12345, 4)
    for p in restarted.frame(False):  # not decodable without a keyframe: held back
        receiver.receive_rtp(p, 2.0)
    for p in restarted.frame(True) + restarted.frame(False):
        receiver.receive_rtp(p, 2.0)
    sent = _sent(wire)
    assert len(sent) == 8 and receiver.counters.ssrc_changes == 1
    _assert_continuous(sent)
    assert down.counters.source_switches == 2
    # 1 s of wall time passed between the sources: 90000 ticks
    assert (sent[4].timestamp - sent[3].timestamp) & 0xFFFFFFFF == 90000
    assert _desc(sent[4]).picture_id == (_desc(sent[3]).picture_id + 1) & 0x7FFF


def test_padding_is_dropped_without_a_gap_and_late_packets_keep_their_number():
    wire = Wire()
    receiver, down = simulcast_pair(wire, target_layer=0)
    q = three_layers()[0]
    frame1 = q.frame(True)  # seqs 100, 101
    frame2 = q.frame(False)  # 102, 103
    pad = q.padding()  # 104
    frame3 = q.frame(False)  # 105, 106
    for p in frame1 + [frame2[1], pad] + frame3:  # 102 late
        receiver.receive_rtp(p, 0.0)
    receiver.receive_rtp(frame2[0], 0.01)
    sent = _sent(wire)
    # 104 is next after the highest (103): dropping it leaves no gap, even with 102 still
    # missing; late 102 keeps the number it would have had
    assert down.counters.dropped_padding == 1
    assert [p.sequence_number for p in sent] == [100, 101, 103, 104, 105, 102]
    # in-order padding closes its gap
    pad2 = q.padding()
    frame4 = q.frame(False)
    for p in [pad2] + frame4:
        receiver.receive_rtp(p, 0.02)
    assert [p.sequence_number for p in _sent(wire)[-2:]] == [106, 107]
    assert down.counters.dropped_padding == 2


def test_late_packet_before_a_closed_gap_uses_the_old_offset():
    wire = Wire()
    receiver, down = simulcast_pair(wire, target_layer=0)
    q = three_layers()[0]
    a = q.frame(True)  # 100 101
    b = q.frame(False)  # 102 103
    pad = q.padding()  # 104
    c = q.frame(False)  # 105 106
    for p in a + [b[1], b[0], pad] + c:
        receiver.receive_rtp(p, 0.0)
    # 104 closed in order after the reorder healed: 105 -> 104
    assert [p.sequence_number for p in _sent(wire)] == [100, 101, 103, 102, 104, 105]
    # 102 again: the receiver holds it, so the copy goes nowhere (the subscriber's SRTP would
    # discard it); given to the down track all the same, it keeps its old number
    assert not receiver.receive_rtp(b[0], 0.1) and receiver.counters.dropped_duplicate == 1
    assert len(_sent(wire)) == 6
    assert down.write_rtp(0, b[0], 0.1)
    assert _sent(wire)[-1].sequence_number == 102


@settings(max_examples=examples(1.5), deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["tick", "switch", "pad", "pause", "restart"]), st.integers(0, 2),
                          st.booleans()), min_size=1, max_size=60))
def test_continuity_under_random_interleavings(ops):
    wire = Wire()
    receiver, down = simulcast_pair(wire, target_layer=0)
    layers = three_layers()
    now = 0.0
    restarts = 0
    forwarded_from = []
    for op, arg, flag in ops:
        now += 0.02
        if op == "switch":
            down.set_target_layer(arg, now)
        elif op == "pause":
            if down.disabled:
                down.set_target_layer(arg, now)
            elif flag:
                down.set_target_layer(None, now)
        elif op == "pad":
            receiver.receive_rtp(layers[arg].padding(), now)
        elif op == "restart":  # the publisher comes back on this rid with fresh SSRC/seq/ts/picture id
            old = layers[arg]
            restarts += 1
            layers[arg] = Layer(old.rid, 0x9000 + restarts, (old.seq * 7919) & 0xFFFF,
                                (old.ts * 31) & 0xFFFFFFFF, (old.picture_id * 13) & 0x7FFF)
        else:
            order = [arg] + [i for i in range(3) if i != arg]
            for i in order:
                for p in layers[i].frame(keyframe=flag and i == arg, packets=1 + (i % 2)):
                    before = len(wire.rtp)
                    receiver.receive_rtp(p, now)
                    if len(wire.rtp) > before:
                        forwarded_from.append(layers[i].ssrc)
    sent = _sent(wire)
    for a, b in zip(sent, sent[1:]):
        assert (b.sequence_number - a.sequence_number) & 0xFFFF == 1
    # timestamps never go backwards, within a layer's run and across switches
    for a, b in zip(sent, sent[1:]):
        assert (b.timestamp - a.timestamp) & 0xFFFFFFFF < 1 << 31
    pids = [_desc(p).picture_id for p in sent if _desc(p).start_of_partition]
    for a, b in zip(pids, pids[1:]):
        assert (b - a) & 0x7FFF == 1
    # each switch of layer or source only ever lands on a keyframe
    for i, p in enumerate(sent):
        if i == 0 or forwarded_from[i] != forwarded_from[i - 1]:
            assert _desc(p).is_keyframe


def test_nack_round_trip_resends_the_same_bytes():
    wire = Wire()
    receiver, down = simulcast_pair(wire, target_layer=0)
    q = three_layers()[0]
    for i in range(20):
        for p in q.frame(keyframe=i == 0):
            receiver.receive_rtp(p, i / 30)
    original = list(wire.rtp)
    seqs = [RtpPacket.parse(original[k]).sequence_number for k in (3, 4, 17)]
    down.handle_rtcp([Nack.from_lost(0xABCD, 0xD0D0, seqs)], 1.0)
    assert wire.rtp[-3:] == [original[3], original[4], original[17]]
    # asked again right away: throttled (already in flight)
    down.handle_rtcp([Nack.from_lost(0xABCD, 0xD0D0, seqs[:1])], 1.01)
    assert len(wire.rtp) == 43 and down.counters.nack_throttled == 1
    down.handle_rtcp([Nack.from_lost(0xABCD, 0xD0D0, seqs[:1])], 1.5)
    assert wire.rtp[-1] == original[3]
    # never sent: counted, nothing resent
    down.handle_rtcp([Nack.from_lost(0xABCD, 0xD0D0, [(seqs[2] + 50) & 0xFFFF])], 2.0)
    assert down.counters.nack_missing == 1 and len(wire.rtp) == 44
    # another SSRC's NACK is not ours
    down.handle_rtcp([Nack.from_lost(0xABCD, 0xBEEF, seqs)], 3.0)
    assert len(wire.rtp) == 44


def test_nack_answered_across_a_layer_switch_with_rtx():
    wire = Wire()
    receiver, down = simulcast_pair(wire, target_layer=0, rtx_ssrc=0xD1D1,
                                    rtx_payload_types={SUB_VP8_PT: SUB_RTX_PT})
    layers = three_layers()
    for i in range(6):
        if i == 3:
            down.set_target_layer(2, i / 30)
        for layer in layers:
            for p in layer.frame(keyframe=(i == 0 and layer.rid == "q") or (i == 4 and layer.rid == "f")):
                receiver.receive_rtp(p, i / 30)
    original = [RtpPacket.parse(p) for p in wire.rtp]
    # q frames 0..4 (q is sent before f's keyframe in tick 4), then f frames 4 and 5
    assert len(original) == 14 and down.counters.layer_switches == 1
    wanted = [original[1], original[12]]  # one from q, one from f
    down.handle_rtcp([Nack.from_lost(1, 0xD0D0, [p.sequence_number for p in wanted])], 1.0)
    for rtx_bytes, orig in zip(wire.rtp[-2:], wanted):
        rtx = RtpPacket.parse(rtx_bytes)
        assert rtx.ssrc == 0xD1D1 and rtx.payload_type == SUB_RTX_PT
        assert int.from_bytes(rtx.payload[:2], "big") == orig.sequence_number
        assert rtx.payload[2:] == orig.payload and rtx.timestamp == orig.timestamp
    assert [RtpPacket.parse(p).sequence_number for p in wire.rtp[-2:]] == [0, 1]


def test_pli_and_fir_from_subscriber_are_rate_limited_upstream():
    wire = Wire()
    receiver, down = simulcast_pair(wire, target_layer=1)
    h = three_layers()[1]
    for p in h.frame(True):
        receiver.receive_rtp(p, 0.0)
    wire.up_rtcp.clear()
    for t in (1.0, 1.1, 1.2, 1.49):
        down.handle_rtcp([Pli(0xABCD, 0xD0D0)], t)
    down.handle_rtcp([Fir(0xABCD, [FirEntry(0xD0D0, 1)])], 1.3)
    down.handle_rtcp([Pli(0xABCD, 0x9999)], 1.6)  # not ours
    down.handle_rtcp([Fir(0xABCD, [FirEntry(0xD0D0, 2)])], 1.55)
    upstream = [x for c in wire.up_rtcp for x in parse_rtcp(c)]
    assert [(type(x), x.media_ssrc) for x in upstream] == [(Pli, h.ssrc), (Pli, h.ssrc)]
    assert down.counters.keyframe_requests_received == 6 and down.counters.keyframe_requests_forwarded == 2
    assert down.counters.firs_received == 2  # the metrics tell PLIs from FIRs (livekit_fir_total)
    assert receiver.counters.keyframe_requests_limited == 4


def test_sender_report_maps_the_publishers_clock_through_the_timestamp_offset():
    aiortc_rtp = pytest.importorskip("aiortc.rtp", reason="aiortc parses our SR independently")
    wire = Wire()
    receiver, down = simulcast_pair(wire, target_layer=0)
    layers = three_layers()
    q, h, f = layers
    for i in range(3):
        for layer in layers:
            for p in layer.frame(keyframe=i == 0 and layer.rid == "q" or i == 2 and layer.rid == "h"):
                receiver.receive_rtp(p, i / 30)
        if i == 1:
            down.set_target_layer(1, i / 30)
    assert down.current_layer == 1
    last = RtpPacket.parse(wire.rtp[-1])
    ts_offset = (last.timestamp - (h.ts - 3000)) & 0xFFFFFFFF
    # the publisher says: h's RTP time T is NTP N, at our time 0.1
    ntp = (3_900_000_000 << 32) | (1 << 31)
    receiver.handle_rtcp([SenderReport(h.ssrc, ntp, h.ts, 3, 300)], 0.1)
    assert down.next_deadline() == pytest.approx(1.0)
    down.poll_rtcp(0.5)
    assert wire.rtcp == []
    down.poll_rtcp(1.1)
    sr = aiortc_rtp.RtcpPacket.parse(wire.rtcp[-1])[0]
    assert isinstance(sr, aiortc_rtp.RtcpSrPacket) and sr.ssrc == 0xD0D0
    assert abs(sr.sender_info.ntp_timestamp - (ntp + (1 << 32))) < 1 << 10  # 1.0 s later
    assert sr.sender_info.rtp_timestamp == (h.ts + 90000 + ts_offset) & 0xFFFFFFFF
    assert sr.sender_info.packet_count == 8
    assert sr.sender_info.octet_count == down.counters.octets_sent
    # the subscriber echoes the SR: RTT from LSR/DLSR
    block = ReportBlock(0xD0D0, lsr=compact_ntp(sr.sender_info.ntp_timestamp), dlsr=65536 // 10)
    down.handle_rtcp([ReceiverReport(0xABCD, [block])], 1.35)
    assert down.rtt == pytest.approx(0.15, abs=1e-3)


def test_sender_report_without_publisher_sr_extrapolates_from_last_packet():
    wire = Wire()
    receiver, down = simulcast_pair(wire, target_layer=0, wallclock_offset=1_700_000_000.0)
    q = three_layers()[0]
    for p in q.frame(True):
        receiver.receive_rtp(p, 5.0)
    down.poll_rtcp(6.0)
    sr = parse_rtcp(wire.rtcp[-1])[0]
    assert sr.rtp_timestamp == 1_000 + 90000
    assert sr.ntp_timestamp >> 32 == 1_700_000_006 + 2_208_988_800
    down.poll_rtcp(7.5)
    sr2 = parse_rtcp(wire.rtcp[-1])[0]
    assert sr2.rtp_timestamp - sr.rtp_timestamp == 135000
    assert (sr2.ntp_timestamp - sr.ntp_timestamp) / (1 << 32) == pytest.approx(1.5)


def test_a_sender_report_due_within_half_an_interval_goes_out_with_another_when_coalescing():
    """A subscriber whose other report goes out now (`coalesce`) sends this one too if it is
    due within half an interval, and its next one comes an interval later; never sooner."""
    wire = Wire()
    receiver, down = simulcast_pair(wire, target_layer=0)
    for p in three_layers()[0].frame(True):
        receiver.receive_rtp(p, 5.0)
    assert down.next_deadline() == pytest.approx(6.0) and not down.sender_report_due(5.9)
    down.poll_rtcp(5.4, coalesce=True)  # due in 0.6 s: more than half an interval away
    down.poll_rtcp(5.9)  # not due, and nothing else goes out
    assert wire.rtcp == []
    down.poll_rtcp(5.6, coalesce=True)
    assert [type(x) for x in parse_rtcp(wire.rtcp[-1])][0] is SenderReport
    assert down.next_deadline() == pytest.approx(6.6) and down.counters.srs_sent == 1
    down.poll_rtcp(6.0, coalesce=True)  # 0.4 s after the last: too soon, however due the other is
    assert down.counters.srs_sent == 1
    assert down.sender_report_due(6.6)
    down.poll_rtcp(6.6)
    assert down.counters.srs_sent == 2 and down.next_deadline() == pytest.approx(7.6)


def test_snapshot_restore_continues_numbering_for_a_new_subscription():
    wire = Wire()
    receiver, down = simulcast_pair(wire, target_layer=0)
    q = three_layers()[0]
    for i in range(3):
        for p in q.frame(keyframe=i == 0):
            receiver.receive_rtp(p, i / 30)
    snap = down.snapshot()
    assert isinstance(snap, DownTrackSnapshot)
    receiver.remove_down_track(down)
    for i in range(3, 30):  # unsubscribed for a while
        q.frame(False)
    wire2 = Wire()
    again = DownTrack(receiver, ssrc=0xD0D0, payload_types={VP8_PT: SUB_VP8_PT}, clock_rate=90000,
                      mime_type="video/VP8", send_rtp=wire2.send_rtp, send_rtcp=wire2.send_rtcp, snapshot=snap)
    receiver.add_down_track(again)
    for p in q.frame(True):
        receiver.receive_rtp(p, 2.0)
    last_old = RtpPacket.parse(wire.rtp[-1])
    new = RtpPacket.parse(wire2.rtp[0])
    assert new.sequence_number == (last_old.sequence_number + 1) & 0xFFFF
    assert (new.timestamp - last_old.timestamp) & 0xFFFFFFFF == round((2.0 - 2 / 30) * 90000)
    assert _desc(new).picture_id == (_desc(last_old).picture_id + 1) & 0x7FFF
    assert again.counters.packets_sent == 8  # SR packet count continues on the same SSRC
    # What each down track sent itself: the node's totals (trio_sfu.media.traffic) add these up,
    # and must not count the first one's packets again through the second one's SR count.
    assert again.own_counters().packets_sent == len(wire2.rtp) == 2
    assert down.own_counters().packets_sent == len(wire.rtp) == 6
    assert again.own_counters().octets_sent == again.counters.octets_sent - down.counters.octets_sent


def test_disabled_drops_and_resume_waits_for_keyframe():
    wire = Wire()
    receiver, down = simulcast_pair(wire, target_layer=0)
    q = three_layers()[0]
    for p in q.frame(True):
        receiver.receive_rtp(p, 0.0)
    down.set_target_layer(None, 0.1)
    for p in q.frame(False):
        receiver.receive_rtp(p, 0.1)
    assert down.counters.dropped_disabled == 2
    down.set_target_layer(0, 0.2)
    down.set_disabled(False, 0.2)
    for p in q.frame(False) + q.frame(True):
        receiver.receive_rtp(p, 0.3)
    sent = _sent(wire)
    assert len(sent) == 4 and _desc(sent[2]).is_keyframe
    _assert_continuous(sent)


def test_unknown_payload_type_is_dropped_without_gap():
    wire = Wire()
    receiver, down = simulcast_pair(wire, target_layer=0)
    q = three_layers()[0]
    for p in q.frame(True):
        receiver.receive_rtp(p, 0.0)
    odd = RtpPacket.parse(q.frame(False, packets=1)[0])
    odd.payload_type = 111
    receiver.receive_rtp(odd.serialize(), 0.0)
    for p in q.frame(False):
        receiver.receive_rtp(p, 0.0)
    _assert_continuous(_sent(wire))
    assert down.counters.dropped_unknown_payload_type == 1


def test_map_payload_types_by_codec_name():
    pub = [(96, "VP8"), (97, "rtx"), (111, "opus"), (63, "red"), (102, "H264")]
    sub = [(100, "vp8"), (101, "rtx"), (109, "opus"), (110, "RED")]
    assert map_payload_types(pub, sub) == {96: 100, 97: 101, 111: 109, 63: 110}


@settings(max_examples=examples(3), deadline=None)
@given(st.dictionaries(st.integers(1, 14), st.binary(min_size=1, max_size=16), max_size=6),
       st.dictionaries(st.integers(1, 14), st.integers(1, 14), max_size=6), st.booleans())
def test_extension_ids_are_renumbered_or_blanked(exts, id_map, two_byte):
    from trio_sfu.forwarding.downtrack import rewrite_extension_ids

    pkt = RtpPacket(96, 1, 2, 3, extensions=dict(exts), payload=b"xyz")
    if two_byte and exts:
        pkt.extensions[200] = b"long"  # forces the two-byte form
    buf = bytearray(pkt.serialize())
    rewrite_extension_ids(buf, id_map)
    got = RtpPacket.parse(bytes(buf))
    assert got.payload == b"xyz" and len(buf) == len(pkt.serialize())
    expected = {}
    for ext_id, value in pkt.extensions.items():
        new_id = id_map.get(ext_id)
        if new_id is not None and new_id not in expected:
            expected[new_id] = value
    assert got.extensions == expected


def test_down_track_rewrites_extension_ids_and_forwards_audio_red():
    from trio_sfu.forwarding.receiver import TrackReceiver

    wire = Wire()
    receiver = TrackReceiver("TR_a", "audio/opus", 48000, send_rtcp=wire.send_up_rtcp, local_ssrc=1)
    down = DownTrack(receiver, ssrc=0xA0, payload_types=map_payload_types([(111, "opus"), (63, "red")],
                                                                          [(109, "opus"), (110, "red")]),
                     clock_rate=48000, mime_type="audio/opus", send_rtp=wire.send_rtp, send_rtcp=wire.send_rtcp,
                     extension_ids={1: 3})  # publisher audio-level id 1 -> subscriber id 3; mid (4) dropped
    receiver.add_down_track(down)
    for seq, pt in enumerate([111, 63, 111]):
        receiver.receive_rtp(RtpPacket(pt, seq, seq * 960, 0x77, extensions={1: b"\x90", 4: b"0"},
                                       payload=b"\xfc\x01").serialize(), seq * 0.02)
    sent = _sent(wire)
    assert [p.payload_type for p in sent] == [109, 110, 109]
    assert all(p.extensions == {3: b"\x90"} for p in sent)
    _assert_continuous(sent)


def test_falls_back_to_an_arriving_layer_while_the_target_is_absent():
    wire = Wire()
    receiver, down = simulcast_pair(wire, target_layer=2)
    q, h, f = three_layers()
    now = 0.0

    def tick(sending, keyframes=()):
        nonlocal now
        for layer in sending:
            for p in layer.frame(keyframe=layer.rid in keyframes):
                receiver.receive_rtp(p, now)
        now += 1 / 30

    tick([q, h], "qh")  # f never started: the best arriving layer below the target, h
    tick([q, h])
    assert down.effective_target_layer == 1 and down.current_layer == 1
    for i in range(6):
        tick([q, h, f], "f" if i == 3 else "")  # f starts; we move up on its keyframe
    assert down.current_layer == 2
    for i in range(40):  # f stops (publisher congestion); after 1 s we fall back to h
        tick([q, h], "h" if i == 35 else "")
    # q's keyframe came first in tick 0 (q, then h a moment later): q -> h -> f -> h
    assert down.current_layer == 1 and down.counters.layer_switches == 3
    _assert_continuous(_sent(wire))
    plis = {p.media_ssrc for c in wire.up_rtcp for p in parse_rtcp(c) if isinstance(p, Pli)}
    assert {h.ssrc, f.ssrc} <= plis  # each fallback/upgrade asked that layer for a keyframe


def test_constructed_paused_forwards_nothing_until_a_layer_is_chosen():
    wire = Wire()
    receiver, down = simulcast_pair(wire, target_layer=None)
    q = three_layers()[0]
    for p in q.frame(True):
        receiver.receive_rtp(p, 0.0)
    assert wire.rtp == [] and down.disabled and down.counters.dropped_disabled == 2
    down.set_target_layer(0, 0.1)
    for p in q.frame(True):
        receiver.receive_rtp(p, 0.2)
    assert len(wire.rtp) == 2


def test_a_keyframe_overtaken_by_its_own_packets_is_forwarded_whole_at_the_switch():
    # Reordering on the publisher's link (the field report's 20 ± 5 ms): the keyframe's later
    # packets arrive before its first one. They were dropped while waiting for the keyframe;
    # the subscriber must still get the whole keyframe, in order, with no hole.
    wire = Wire()
    receiver, down = simulcast_pair(wire, target_layer=0)
    q, h, f = three_layers()
    key = q.frame(keyframe=True, packets=5)
    for p in (key[3], key[1], key[2], key[0], key[4]):
        receiver.receive_rtp(p, 0.0)
    sent = _sent(wire)
    assert [p.payload for p in sent] == [RtpPacket.parse(p).payload for p in key]
    _assert_continuous(sent)
    assert down.counters.catch_up_sent == 3 and down.counters.dropped_waiting_keyframe == 3
    # the same across a layer switch up, with the old layer still arriving
    down.set_target_layer(1, 0.1)
    q_next, h_key = q.frame(keyframe=False), h.frame(keyframe=True, packets=4)
    for p in (h_key[2], q_next[0], h_key[1], h_key[0], q_next[1], h_key[3]):
        receiver.receive_rtp(p, 0.1)
    sent = _sent(wire)
    # q's packet that came first is still q's; then h's keyframe, whole and in order (its VP8
    # picture id munged to continue q's)
    assert sent[5].payload == RtpPacket.parse(q_next[0]).payload
    after = sent[6:]
    assert len(after) == 4 and [p.marker for p in after] == [False, False, False, True]
    assert [p.payload[5:] for p in after] == [RtpPacket.parse(p).payload[5:] for p in h_key]
    assert len({_desc(p).picture_id for p in after}) == 1 and _desc(after[0]).picture_id == _desc(sent[5]).picture_id + 1
    _assert_continuous(sent)
    assert down.counters.layer_switches == 1 and down.counters.catch_up_sent == 5


def test_a_nack_for_a_packet_never_forwarded_is_answered_from_the_receivers_buffer():
    # A packet of the current source that overtook its keyframe by more than the catch-up looks
    # was never forwarded; the subscriber NACKs the hole, and it is sent then (before, the NACK
    # was counted missing and the keyframe never completed).
    wire = Wire()
    receiver, down = simulcast_pair(wire, target_layer=0)
    q = three_layers()[0]
    key = q.frame(keyframe=True, packets=14)
    receiver.receive_rtp(key[12], 0.0)
    for p in key[:4]:
        receiver.receive_rtp(p, 0.01)
    for p in key[4:12] + [key[13]] + q.frame(keyframe=False):
        receiver.receive_rtp(p, 0.02)
    sent = _sent(wire)
    assert len(sent) == 15 and down.counters.catch_up_sent == 0
    hole = (sent[0].sequence_number + 12) & 0xFFFF
    assert hole not in {p.sequence_number for p in sent}
    down.handle_rtcp([Nack.from_lost(0xABCD, 0xD0D0, [hole])], 0.1)
    resent = RtpPacket.parse(wire.rtp[-1])
    assert resent.sequence_number == hole and resent.payload == RtpPacket.parse(key[12]).payload
    assert resent.timestamp == sent[0].timestamp
    assert down.counters.nack_late_forwarded == 1 and down.counters.nack_missing == 0
    # a seq past anything the source sent is still missing
    down.handle_rtcp([Nack.from_lost(0xABCD, 0xD0D0, [(hole + 40) & 0xFFFF])], 0.2)
    assert down.counters.nack_missing == 1
