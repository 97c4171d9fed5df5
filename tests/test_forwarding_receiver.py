"""TrackReceiver: layer learning from rid, uplink NACK generation with retry limits, RTX
recovery, RRs parsed by aiortc, SR bookkeeping, lifecycle, and totality on garbage."""

import pytest
from budgets import examples
from hypothesis import given, settings, strategies as st

from forwarding_streams import RID_EXT, RRID_EXT, RTX_PT, VP8_PT, Layer, Wire, simulcast_pair, three_layers
from rtp.packet import RtpPacket
from rtp.rtcp import Nack, Pli, ReceiverReport, SenderReport, parse_rtcp
from trio_sfu.forwarding.receiver import MAX_SSRCS_PER_TRACK, ForwardingStateError, ReceiverState, TrackReceiver


def _rtcp(wire, kind):
    return [x for c in wire.up_rtcp for x in parse_rtcp(c) if isinstance(x, kind)]


class Recorder:
    def __init__(self):
        self.got = []

    def write_rtp(self, layer, packet, now):
        self.got.append((layer, packet))


def test_layers_learned_from_rid_and_fanned_out():
    wire = Wire()
    receiver, _ = simulcast_pair(wire)
    rec = Recorder()
    receiver.add_down_track(rec)
    layers = three_layers()
    for layer in layers:
        for p in layer.frame(True):
            receiver.receive_rtp(p, 0.0)
    assert [receiver.layer_ssrc(i) for i in range(3)] == [l.ssrc for l in layers]
    assert [l for l, _ in rec.got] == [0, 0, 1, 1, 2, 2]
    assert [receiver.keyframe_count(i) for i in range(3)] == [1, 1, 1]
    # a simulcast packet with no rid cannot be placed
    stray = RtpPacket(payload_type=VP8_PT, ssrc=0x4444, sequence_number=1).serialize()
    assert not receiver.receive_rtp(stray, 0.0)
    assert receiver.counters.dropped_unknown_stream == 1
    receiver.remove_down_track(rec)
    for p in layers[0].frame(False):
        receiver.receive_rtp(p, 0.1)
    assert len(rec.got) == 6


def test_uplink_gap_is_nacked_in_batches_with_retry_limit():
    wire = Wire()
    receiver, _ = simulcast_pair(wire)
    receiver.rtt = 0.05
    q = three_layers()[0]
    packets = [p for i in range(5) for p in q.frame(i == 0)]  # seqs 100..109
    lost = {102, 103, 107}
    for p in packets:
        if RtpPacket.parse(p).sequence_number not in lost:
            receiver.receive_rtp(p, 0.0)
    assert receiver.missing(0) == [102, 103, 107]
    assert receiver.next_deadline() == 0.0  # NACK due as soon as the gap is seen
    receiver.poll_rtcp(0.0)
    nacks = _rtcp(wire, Nack)
    assert len(nacks) == 1 and nacks[0].media_ssrc == q.ssrc and nacks[0].sender_ssrc == 0x5F0
    assert nacks[0].lost_sequence_numbers() == [102, 103, 107]
    receiver.poll_rtcp(0.03)  # before the RTT-based retry interval (1.2 x 50 ms)
    assert len(_rtcp(wire, Nack)) == 1
    assert receiver.next_deadline() == pytest.approx(0.06)
    receiver.receive_rtp(packets[3], 0.05)  # 103 arrives late
    now = 0.06
    for _ in range(10):
        receiver.poll_rtcp(now)
        now += 0.07
    nacks = _rtcp(wire, Nack)
    assert len(nacks) == 5  # max_tries = 5 requests per packet, then give up
    assert all(n.lost_sequence_numbers() == [102, 107] for n in nacks[1:])
    assert receiver.missing(0) == [] and receiver.counters.nack_seqs_given_up == 2


def test_huge_gap_asks_for_a_keyframe_instead_of_nacks():
    wire = Wire()
    receiver, _ = simulcast_pair(wire)
    q = three_layers()[0]
    for p in q.frame(True):
        receiver.receive_rtp(p, 0.0)
    q.seq += 1000
    for p in q.frame(False):
        receiver.receive_rtp(p, 0.1)
    receiver.poll_rtcp(0.1)
    assert _rtcp(wire, Nack) == []
    assert [p.media_ssrc for p in _rtcp(wire, Pli)] == [q.ssrc]


def test_rtx_from_publisher_restores_the_lost_packet_exactly():
    wire = Wire()
    receiver, _ = simulcast_pair(wire)
    rec = Recorder()
    receiver.add_down_track(rec)
    h = three_layers()[1]
    frames = h.frame(True) + h.frame(False)
    lost = frames[2]
    for p in frames[:2] + frames[3:]:
        receiver.receive_rtp(p, 0.0)
    assert receiver.missing(1) == [RtpPacket.parse(lost).sequence_number]
    orig = RtpPacket.parse(lost)
    rtx = RtpPacket(payload_type=RTX_PT, sequence_number=9, timestamp=orig.timestamp, ssrc=0x2229,
                    marker=orig.marker, extensions={RID_EXT: b"h", RRID_EXT: b"h"},
                    payload=orig.sequence_number.to_bytes(2, "big") + orig.payload, padding_size=7)
    # the repaired-rid carries the rid; our rebuilt packet keeps the RTX packet's extensions
    expected = RtpPacket.parse(rtx.serialize())
    expected.ssrc, expected.payload_type, expected.sequence_number = orig.ssrc, VP8_PT, orig.sequence_number
    expected.payload, expected.padding_size = orig.payload, 0
    assert receiver.receive_rtp(rtx.serialize(), 0.02)
    assert receiver.counters.rtx_recovered == 1 and receiver.missing(1) == []
    assert rec.got[-1] == (1, expected.serialize())
    assert receiver.get_packet(1, orig.sequence_number) == expected.serialize()
    # padding-only RTX (a bandwidth probe) recovers nothing
    probe = RtpPacket(payload_type=RTX_PT, sequence_number=10, ssrc=0x2229, padding_size=100).serialize()
    assert not receiver.receive_rtp(probe, 0.03) and receiver.counters.rtx_dropped == 1


def test_a_copy_of_a_packet_already_held_is_dropped_not_forwarded_again():
    """A publisher sends copies of packets we have: libwebrtc pads (probes, padding up to a
    layer's minimum) with resends of recent packets on RTX, and a packet NACKed but late after
    all comes twice. Forwarded, a copy leaves on the subscriber's SSRC with a seq it had, its SRTP
    replay check discards it unseen, and its transport-wide seq is reported lost: the loss the
    subscriber's estimate reads grows by the share of copies. Each seq goes down once; a real
    repair (RTX of a packet that never came) still does."""
    wire = Wire()
    receiver, down = simulcast_pair(wire, target_layer=0)
    q = three_layers()[0]
    frames = q.frame(True) + q.frame(False) + q.frame(False)  # seqs 100..105
    lost = frames[4]
    for p in frames[:4] + frames[5:]:
        assert receiver.receive_rtp(p, 0.0)

    def rtx_of(packet: bytes, rtx_seq: int) -> bytes:
        orig = RtpPacket.parse(packet)
        return RtpPacket(payload_type=RTX_PT, sequence_number=rtx_seq, timestamp=orig.timestamp, ssrc=0x1119,
                         marker=orig.marker, extensions={RID_EXT: b"q", RRID_EXT: b"q"},
                         payload=orig.sequence_number.to_bytes(2, "big") + orig.payload).serialize()

    assert not receiver.receive_rtp(rtx_of(frames[2], 1), 0.01)  # padding: a resend of what came
    assert not receiver.receive_rtp(frames[3], 0.02)  # the same packet twice
    assert receiver.receive_rtp(rtx_of(lost, 2), 0.03)  # a repair
    assert not receiver.receive_rtp(rtx_of(lost, 3), 0.04)  # the repair answered twice
    sent = [(RtpPacket.parse(p).ssrc, RtpPacket.parse(p).sequence_number) for p in wire.rtp]
    assert sorted(sent) == [(down.ssrc, s) for s in range(100, 106)]  # each once
    c = receiver.counters
    assert (c.dropped_duplicate, c.rtx_duplicate, c.rtx_recovered) == (3, 2, 1)
    assert down.counters.packets_sent == 6
    assert receiver.missing(0) == []


def test_receiver_reports_on_schedule_parsed_by_aiortc():
    aiortc_rtp = pytest.importorskip("aiortc.rtp", reason="aiortc parses our RR independently")
    wire = Wire()
    receiver, _ = simulcast_pair(wire)
    layers = three_layers()
    for i in range(10):
        for layer in layers[:2]:
            for p in layer.frame(i == 0):
                if not (layer.rid == "q" and i == 5):  # lose one q frame (2 packets)
                    receiver.receive_rtp(p, i / 30)
    ntp = 0x1234_5678_9ABC_DEF0
    receiver.handle_rtcp([SenderReport(layers[0].ssrc, ntp, 1000, 1, 1)], 0.5)
    assert receiver.sender_report(0).ntp_timestamp == ntp and receiver.sender_report(0).arrival == 0.5
    assert receiver.next_deadline() <= 1.0
    receiver.poll_rtcp(0.9)
    assert _rtcp(wire, ReceiverReport) == []
    receiver.poll_rtcp(1.0)
    parsed = aiortc_rtp.RtcpPacket.parse(wire.up_rtcp[-1])
    rr = parsed[0]
    assert isinstance(rr, aiortc_rtp.RtcpRrPacket) and rr.ssrc == 0x5F0
    blocks = {b.ssrc: b for b in rr.reports}
    assert set(blocks) == {layers[0].ssrc, layers[1].ssrc}
    assert blocks[layers[0].ssrc].packets_lost == 2 and blocks[layers[1].ssrc].packets_lost == 0
    assert blocks[layers[0].ssrc].lsr == (ntp >> 16) & 0xFFFFFFFF
    assert blocks[layers[0].ssrc].dlsr == int(0.5 * 65536)
    assert isinstance(parsed[1], aiortc_rtp.RtcpSdesPacket)
    count = len(_rtcp(wire, ReceiverReport))
    receiver.poll_rtcp(1.5)
    assert len(_rtcp(wire, ReceiverReport)) == count
    receiver.poll_rtcp(2.0)
    assert len(_rtcp(wire, ReceiverReport)) == count + 1


def test_non_simulcast_audio_single_layer_and_publisher_restart():
    wire = Wire()
    receiver = TrackReceiver("TR_a", "audio/opus", 48000, send_rtcp=wire.send_up_rtcp, local_ssrc=1, nack_enabled=False)
    rec = Recorder()
    receiver.add_down_track(rec)
    for seq in range(5):
        receiver.receive_rtp(RtpPacket(111, seq, seq * 960, 0xAAAA, payload=b"\xfc" * 40).serialize(), seq * 0.02)
    assert receiver.layer_ssrc(0) == 0xAAAA and receiver.layers == (0,)
    receiver.receive_rtp(RtpPacket(111, 900, 5, 0xBBBB, payload=b"\xfc" * 40).serialize(), 1.0)
    assert receiver.layer_ssrc(0) == 0xBBBB and receiver.counters.ssrc_changes == 1
    assert receiver.get_packet(0, 3) is None  # the old stream's buffer is gone
    assert len(rec.got) == 6 and receiver.counters.keyframes == 6  # audio: every packet starts
    receiver.poll_rtcp(10.0)
    assert _rtcp(wire, Nack) == []


def test_lifecycle_transitions_assert_the_state_they_leave():
    wire = Wire()
    receiver, _ = simulcast_pair(wire)
    with pytest.raises(ForwardingStateError):
        receiver.close()
    with pytest.raises(ForwardingStateError):
        receiver.reopen()
    receiver.begin_closing(expected_to_resume=True)
    assert receiver.state is ReceiverState.CLOSING and receiver.expected_to_resume
    with pytest.raises(ForwardingStateError):
        receiver.begin_closing(expected_to_resume=False)
    q = three_layers()[0]
    assert not receiver.receive_rtp(q.frame(True)[0], 0.0)
    assert receiver.counters.dropped_not_open == 1
    receiver.reopen()
    assert receiver.state is ReceiverState.OPEN and not receiver.expected_to_resume
    receiver.begin_closing(expected_to_resume=False)
    receiver.close()
    assert receiver.state is ReceiverState.CLOSED and receiver.down_tracks == ()
    for bad in (receiver.close, receiver.reopen, lambda: receiver.begin_closing(True)):
        with pytest.raises(ForwardingStateError):
            bad()
    assert receiver.next_deadline() is None


@settings(max_examples=examples(3), deadline=None)
@given(st.binary(max_size=80))
def test_garbage_datagrams_never_raise(data):
    wire = Wire()
    receiver, down = simulcast_pair(wire)
    receiver.receive_rtp(data, 0.0)
    c = receiver.counters
    # every datagram is accounted exactly once: taken, or dropped for one reason
    assert c.packets + c.dropped_malformed + c.dropped_unknown_stream + c.rtx_dropped == 1
    receiver.poll_rtcp(1.0)


@settings(max_examples=examples(3), deadline=None)
@given(st.integers(0, 127), st.integers(0, 0xFFFF), st.binary(max_size=40),
       st.sampled_from([b"q", b"h", b"f", b"x", b"\xff"]), st.booleans(), st.integers(0, 30))
def test_garbage_payloads_with_valid_headers_never_raise(pt, seq, payload, rid, rtx_ext, pad):
    wire = Wire()
    receiver, down = simulcast_pair(wire)
    exts = {RID_EXT: rid}
    if rtx_ext:
        exts[RRID_EXT] = rid
    for layer in three_layers():
        for p in layer.frame(True):
            receiver.receive_rtp(p, 0.0)
    pkt = RtpPacket(pt, seq, 0, 0x1111 if pt != RTX_PT else 0x9999, extensions=exts, payload=payload,
                    padding_size=pad if payload else 0).serialize()
    receiver.receive_rtp(pkt, 0.1)
    receiver.receive_rtp(pkt[:-1], 0.1)
    down.handle_rtcp([Nack.from_lost(1, down.ssrc, [seq])], 0.2)
    receiver.poll_rtcp(1.0)
    down.poll_rtcp(1.0)


def test_new_rtx_ssrcs_do_not_grow_the_ssrc_tables_and_live_ones_stay():
    """A publisher inventing RTX SSRCs (every packet a new one) must not grow the receiver's
    tables: past MAX_SSRCS_PER_TRACK the oldest stale RTX SSRC goes, never a layer's newest."""
    wire = Wire()
    receiver, _ = simulcast_pair(wire)
    for layer in three_layers():
        for p in layer.frame(True):
            receiver.receive_rtp(p, 0.0)
    live_h = RtpPacket(payload_type=RTX_PT, sequence_number=1, ssrc=0x2229, extensions={RRID_EXT: b"h"},
                       padding_size=10).serialize()
    receiver.receive_rtp(live_h, 0.0)
    flood = 1000
    for i in range(flood):
        rtx = RtpPacket(payload_type=RTX_PT, sequence_number=1, ssrc=0x10000 + i, extensions={RRID_EXT: b"q"},
                        padding_size=10).serialize()
        receiver.receive_rtp(rtx, 0.0)
    media, rtx_map = receiver.ssrc_layers()
    assert len(media) + len(rtx_map) <= MAX_SSRCS_PER_TRACK
    assert media == {layer.ssrc: i for i, layer in enumerate(three_layers())}
    # The h layer's RTX SSRC is live (its layer's newest) and the q layer's newest is too.
    assert rtx_map[0x2229] == 1 and rtx_map[0x10000 + flood - 1] == 0
    assert receiver.counters.rtx_ssrcs_evicted == flood + 1 - (MAX_SSRCS_PER_TRACK - 3)


def test_reordering_is_not_nacked_once_seen_but_losses_still_are():
    # The field report's link (20 ± 5 ms, reordering): NACKing every overtaken packet made the
    # publisher resend them all, and its encoder switched off the top simulcast layer.
    wire = Wire()
    receiver, _ = simulcast_pair(wire)
    q = three_layers()[0]
    packets = [p for i in range(20) for p in q.frame(i == 0)]  # seqs 100..139

    def seq(p):
        return RtpPacket.parse(p).sequence_number

    def nacked():
        return [s for n in _rtcp(wire, Nack) for s in n.lost_sequence_numbers()]

    # First overtaking: 101 comes 8 ms after 102, before the NACK round (the NACK would have
    # been due at once: nothing was known about the link yet).
    for p, at in ((packets[0], 0.0), (packets[2], 0.001)):
        receiver.receive_rtp(p, at)
    assert receiver.next_deadline() == 0.001
    receiver.receive_rtp(packets[1], 0.009)
    receiver.poll_rtcp(0.009)
    assert nacked() == []
    # 101 came 8 ms late: new gaps now wait 12 ms (1.5 x) before their first NACK.
    assert receiver._layers[0].nack.reorder_delay == pytest.approx(0.012)
    receiver.receive_rtp(packets[4], 0.02)
    receiver.poll_rtcp(0.02)
    assert receiver.next_deadline() == pytest.approx(0.02 + 0.012 * 0.98)  # (each new gap fades the wait a little)
    receiver.receive_rtp(packets[3], 0.028)  # overtaken again, within the wait
    receiver.poll_rtcp(0.028)
    assert nacked() == []
    # A real loss is still NACKed, once the wait is over.
    receiver.receive_rtp(packets[6], 0.04)
    receiver.poll_rtcp(0.045)
    assert nacked() == []
    receiver.poll_rtcp(0.04 + 0.0121)
    assert nacked() == [105]
    # Its resend 45 ms after the NACK is a repair, not reordering: the wait does not grow
    # (it did when resends were taken for overtaken packets, and every repair then waited 50 ms).
    receiver.receive_rtp(packets[5], 0.0521 + 0.045)
    assert receiver._layers[0].nack.reorder_delay <= 0.012
    # The wait is capped, and fades while gaps keep coming with no reordering.
    for i in range(8, 40, 2):
        receiver.receive_rtp(packets[i], 1.0 + i * 0.001)
    assert receiver._layers[0].nack.reorder_delay < 0.012 * 0.98 ** 15


def test_layer_bitrates_are_measured_on_the_report_timer():
    """Each layer's arriving bitrate over an RR interval, from the bytes its statistics count
    (nothing extra per packet); a layer that stops measures 0 at the next interval."""
    wire = Wire()
    receiver, _ = simulcast_pair(wire)
    layers = three_layers()
    assert receiver.layer_bitrates() == {0: 0, 1: 0, 2: 0}
    for layer in layers:  # each stream past its statistics' probation, before the interval
        for p in layer.frame(True) + layer.frame(False):
            receiver.receive_rtp(p, 0.0)
    receiver.poll_rtcp(receiver.next_deadline())  # the first interval starts
    start = receiver.next_deadline() - receiver.rr_interval
    sizes = {0: 0, 1: 0, 2: 0}
    now = start
    for n in range(30):  # 30 frames in the interval; layer f only in the first ten
        now = start + n * 0.03
        for index, layer in enumerate(layers):
            if index == 2 and n >= 10:
                continue
            for p in layer.frame(False, packets=1 + index):
                sizes[index] += len(p)
                receiver.receive_rtp(p, now)
    due = receiver.next_deadline()
    while due < start + receiver.rr_interval:
        receiver.poll_rtcp(due)  # NACK timers, if any
        due = receiver.next_deadline()
    receiver.poll_rtcp(start + receiver.rr_interval)
    rates = receiver.layer_bitrates()
    for index in range(3):
        assert rates[index] == pytest.approx(sizes[index] * 8 / receiver.rr_interval, rel=0.01)
    assert rates[1] > rates[0] > 0
    receiver.poll_rtcp(start + 2 * receiver.rr_interval)
    assert receiver.layer_bitrates() == {0: 0, 1: 0, 2: 0}


def test_temporal_layer_bitrates_are_measured_per_tid_for_vp8_with_temporal_ids():
    """A VP8 layer whose descriptors carry TIDs measures each temporal layer's bitrate on the
    same timer (what the allocator's temporal steps are made of); a layer without TIDs has none."""
    wire = Wire()
    receiver, _ = simulcast_pair(wire)
    q = Layer("q", 0x1111, 100, 1_000, 300, temporal=3)
    h = Layer("h", 0x2222, 5_000, 9_000, 40)
    for p in q.frame(True) + h.frame(True):
        receiver.receive_rtp(p, 0.0)
    receiver.poll_rtcp(receiver.next_deadline())
    start = receiver.next_deadline() - receiver.rr_interval
    sizes = [0, 0, 0]
    for n in range(40):
        now = start + n * 0.02
        tid = q.next_tid()
        for p in q.frame(False, packets=3 if tid == 0 else 1):
            sizes[tid] += len(p)
            receiver.receive_rtp(p, now)
        for p in h.frame(False):
            receiver.receive_rtp(p, now)
    due = receiver.next_deadline()
    while due < start + receiver.rr_interval:
        receiver.poll_rtcp(due)
        due = receiver.next_deadline()
    receiver.poll_rtcp(start + receiver.rr_interval)
    rates = receiver.layer_temporal_bitrates()
    assert set(rates) == {0}
    assert rates[0] == pytest.approx([s * 8 / receiver.rr_interval for s in sizes], rel=0.01)
    assert rates[0][0] > rates[0][2] > rates[0][1] > 0
    assert sum(rates[0]) == pytest.approx(receiver.layer_bitrates()[0], rel=0.01)
