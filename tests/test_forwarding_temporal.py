"""Temporal layers (VP8 TID): the descriptor reading, and a DownTrack forwarding only the
temporal layers its target allows through a real TrackReceiver — continuity of sequence
numbers and picture ids, TL0PICIDX as the decoder expects, switch points, NACK answers."""

from hypothesis import given, settings, strategies as st

from budgets import examples
from forwarding_streams import Layer, Wire, simulcast_pair, vp8_payload
from rtp.packet import RtpPacket
from rtp.rtcp import Nack
from trio_sfu.forwarding.codec_keyframes import (
    VP8_FRAME_START,
    VP8_KEYFRAME,
    VP8_LAYER_SYNC,
    parse_vp8_descriptor,
    vp8_picture_id,
    vp8_temporal,
)


# --- the descriptor ---


def test_vp8_temporal_reads_tid_sync_frame_start_and_keyframe():
    for tid in range(4):
        for sync in (False, True):
            data = vp8_payload(1234, 7, keyframe=False, tid=tid, sync=sync)
            info = vp8_temporal(data, 0, len(data))
            assert info & 0x03 == tid
            assert bool(info & VP8_LAYER_SYNC) is sync
            assert info & VP8_FRAME_START and not info & VP8_KEYFRAME
            desc = parse_vp8_descriptor(data)
            assert desc.temporal_id == tid and desc.layer_sync is sync
    key = vp8_payload(5, 0, keyframe=True, tid=0)
    assert vp8_temporal(key, 0, len(key)) == VP8_FRAME_START | VP8_KEYFRAME
    middle = vp8_payload(5, 0, keyframe=False, start=False, tid=2)
    assert vp8_temporal(middle, 0, len(middle)) == 2  # not a frame's first packet
    plain = vp8_payload(5, 0, keyframe=False)  # no T bit: no temporal id
    assert vp8_temporal(plain, 0, len(plain)) == -1
    assert vp8_picture_id(plain, 0, len(plain)) == 5
    seven_bit = bytes([0x90, 0xA0, 0x25, 0x80, 0x00])  # I with a 7-bit id, T: TID 2
    assert vp8_temporal(seven_bit, 0, len(seven_bit)) & 0x03 == 2
    assert vp8_picture_id(seven_bit, 0, len(seven_bit)) == 0x25
    for truncated in (b"", b"\x80", b"\x80\x20", b"\x80\xe0\x80\x01\x05"):
        assert vp8_temporal(truncated, 0, len(truncated)) == -1


@given(st.binary(max_size=12))
@settings(max_examples=examples(3), deadline=None)
def test_vp8_temporal_agrees_with_the_descriptor_parser(data):
    info = vp8_temporal(data, 0, len(data))
    desc = parse_vp8_descriptor(data)
    if desc is None or desc.temporal_id is None:
        assert info == -1
        return
    assert info & 0x03 == desc.temporal_id
    assert bool(info & VP8_LAYER_SYNC) is desc.layer_sync
    assert bool(info & VP8_FRAME_START) is (desc.start_of_partition and desc.partition_id == 0)
    assert bool(info & VP8_KEYFRAME) is desc.is_keyframe
    assert vp8_picture_id(data, 0, len(data)) == (-1 if desc.picture_id is None else desc.picture_id)


# --- the down track ---


def _frames(sent):
    """(tid, picture id, tl0picidx, first seq) per forwarded frame, in order."""
    out = []
    for pkt in sent:
        desc = parse_vp8_descriptor(pkt.payload)
        if desc.start_of_partition and desc.partition_id == 0:
            out.append((desc.temporal_id, desc.picture_id, desc.tl0picidx, pkt.sequence_number, desc.layer_sync))
    return out


def _sent(wire):
    return [RtpPacket.parse(p) for p in wire.rtp]


def _assert_decodable(sent):
    """What a VP8 decoder checks across the stream: sequence numbers without gaps, one
    picture id more per frame, TL0PICIDX one more at each base-layer frame and the same on the
    frames above it."""
    for a, b in zip(sent, sent[1:]):
        assert (b.sequence_number - a.sequence_number) & 0xFFFF == 1
    frames = _frames(sent)
    for (tid_a, pid_a, tl0_a, _, _), (tid_b, pid_b, tl0_b, _, _) in zip(frames, frames[1:]):
        assert (pid_b - pid_a) & 0x7FFF == 1, (pid_a, pid_b)
        assert (tl0_b - tl0_a) & 0xFF == (1 if tid_b == 0 else 0), (tl0_a, tl0_b, tid_b)


def _temporal_stream(wire, temporal=3):
    receiver, down = simulcast_pair(wire, target_layer=0)
    q = Layer("q", 0x1111, 65_000, 1_000, 32_760, temporal=temporal)  # seq and picture id wrap
    return receiver, down, q


def _send(receiver, packets, now=0.0):
    for p in packets:
        receiver.receive_rtp(p, now)


def test_a_temporal_cap_forwards_only_the_layers_under_it_continuously():
    wire = Wire()
    receiver, down, q = _temporal_stream(wire)
    _send(receiver, q.frame(keyframe=True))
    down.set_target_temporal(1)
    for _ in range(15):
        _send(receiver, q.frame(keyframe=False))
    sent = _sent(wire)
    # the keyframe, then frames 1..15 of the pattern 0 2 1 2: the eight TID 2 frames dropped
    assert [f[0] for f in _frames(sent)] == [0, 1, 0, 1, 0, 1, 0, 1]
    _assert_decodable(sent)
    counters = down.counters
    assert counters.dropped_temporal == 2 * 8 and counters.packets_sent == 2 * 8
    assert down.current_temporal == 1 and down.target_temporal == 1


def test_switching_down_waits_for_the_frame_in_flight_and_up_for_a_layer_sync_frame():
    wire = Wire()
    receiver, down, q = _temporal_stream(wire)
    _send(receiver, q.frame(keyframe=True))
    frame = q.frame(keyframe=False)  # TID 2
    _send(receiver, frame[:1])
    down.set_target_temporal(0)
    _send(receiver, frame[1:])  # the frame in flight is completed
    assert len(wire.rtp) == 4 and down.current_temporal is None
    _send(receiver, q.frame(keyframe=False) + q.frame(keyframe=False))  # TID 1, TID 2: dropped
    assert len(wire.rtp) == 4 and down.current_temporal == 0
    _send(receiver, q.frame(keyframe=False))  # TID 0
    down.set_target_temporal(None)
    # TID 2 with Y, refers to the TL0 frame alone: all layers from here (2 is the stream's top)
    _send(receiver, q.frame(keyframe=False))
    assert down.current_temporal is None
    for _ in range(6):
        _send(receiver, q.frame(keyframe=False))
    sent = _sent(wire)
    _assert_decodable(sent)
    frames = _frames(sent)
    assert [f[0] for f in frames] == [0, 2, 0, 2, 1, 2, 0, 2, 1, 2]
    assert frames[3][4], "the switch up came at a layer-sync frame"
    assert down.counters.temporal_switches == 2


def test_switching_up_waits_for_a_sync_frame_or_a_keyframe():
    wire = Wire()
    receiver, down, q = _temporal_stream(wire)
    _send(receiver, q.frame(keyframe=True))
    down.set_target_temporal(0)
    _send(receiver, q.frame(keyframe=False, temporal=(2, False)))  # dropped
    down.set_target_temporal(2)
    for tid in (1, 2, 0, 2):  # no Y: none of them is a place to start a higher layer
        _send(receiver, q.frame(keyframe=False, temporal=(tid, False)))
    assert down.current_temporal == 0
    _send(receiver, q.frame(keyframe=True))  # a keyframe starts every layer afresh
    assert down.current_temporal == 2
    _send(receiver, q.frame(keyframe=False, temporal=(2, False)) + q.frame(keyframe=False, temporal=(1, False)))
    sent = _sent(wire)
    _assert_decodable(sent)
    assert [f[0] for f in _frames(sent)] == [0, 0, 0, 2, 1]
    # a sync frame of a layer between the one in force and the target: up to that layer only
    down.set_target_temporal(0)
    _send(receiver, q.frame(keyframe=False, temporal=(0, False)))
    down.set_target_temporal(2)
    _send(receiver, q.frame(keyframe=False, temporal=(1, True)))
    assert down.current_temporal == 1
    _send(receiver, q.frame(keyframe=False, temporal=(2, False)) + q.frame(keyframe=False, temporal=(2, True)))
    assert down.current_temporal == 2
    sent = _sent(wire)
    _assert_decodable(sent)
    assert [f[0] for f in _frames(sent)][5:] == [0, 1, 2]


def test_nacks_across_dropped_frames_are_answered_and_a_dropped_packet_is_not_missing():
    wire = Wire()
    receiver, down, q = _temporal_stream(wire)
    _send(receiver, q.frame(keyframe=True))
    down.set_target_temporal(0)
    for tid in (2, 1, 0, 2, 0):
        _send(receiver, q.frame(keyframe=False, temporal=(tid, False)))
    # a dropped frame whose second packet comes after the next (forwarded) frame's first one
    drop = q.frame(keyframe=False, temporal=(2, False))
    keep = q.frame(keyframe=False, temporal=(0, False))
    _send(receiver, drop[:1] + keep[:1] + drop[1:] + keep[1:])
    sent = _sent(wire)
    assert [f[0] for f in _frames(sent)] == [0, 0, 0, 0]
    seqs = [p.sequence_number for p in sent]
    steps = [(b - a) & 0xFFFF for a, b in zip(seqs, seqs[1:])]
    assert steps == [1] * 5 + [2, 1], "only the late dropped packet leaves its number a gap"
    gap = (seqs[-2] - 1) & 0xFFFF
    wire.rtp.clear()
    down.handle_rtcp([Nack.from_lost(0x5F0, 0xD0D0, seqs + [gap])], now=1.0)
    counters = down.counters
    assert counters.nack_resent == len(seqs)
    assert counters.nack_missing == 0 and counters.nack_temporal_dropped == 1
    assert sorted(RtpPacket.parse(p).sequence_number for p in wire.rtp) == sorted(seqs)
    assert counters.dropped_temporal == 2 * 3 + 2


def test_a_stream_without_temporal_ids_ignores_the_cap():
    wire = Wire()
    receiver, down, q = _temporal_stream(wire, temporal=0)
    _send(receiver, q.frame(keyframe=True))
    down.set_target_temporal(0)
    for _ in range(5):
        _send(receiver, q.frame(keyframe=False))
    assert len(wire.rtp) == 12 and down.counters.dropped_temporal == 0
    # the cap is in force (vacuously): no switch waits for a sync frame that never comes
    assert down.current_temporal == 0 and down.counters.temporal_switches == 0


@settings(max_examples=examples(1.5), deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["tick", "tick", "tick", "temporal", "switch", "pad"]), st.integers(0, 3),
                          st.booleans()), min_size=1, max_size=80))
def test_continuity_under_random_temporal_and_spatial_switches(ops):
    """Three simulcast layers in L1T3, spatial and temporal targets changing at random: the
    subscriber's stream stays continuous in sequence numbers, picture ids and TL0PICIDX, every
    frame forwarded is forwarded whole, and none is above the temporal layer in force."""
    wire = Wire()
    receiver, down = simulcast_pair(wire, target_layer=0)
    layers = [Layer("q", 0x1111, 100, 1_000, 300, temporal=3), Layer("h", 0x2222, 65_500, 4_294_000_000, 32_700,
                                                                        temporal=3),
              Layer("f", 0x3333, 7_000, 555_555, 9, temporal=3)]
    now = 0.0
    for op, arg, flag in ops:
        now += 0.02
        if op == "switch":
            down.set_target_layer(min(arg, 2), now)
        elif op == "temporal":
            down.set_target_temporal(None if arg == 3 else arg)
        elif op == "pad":
            receiver.receive_rtp(layers[min(arg, 2)].padding(), now)
        else:
            for i, layer in enumerate(layers):
                count = 1 + (arg + i) % 3
                frame = layer.frame(keyframe=flag and i == min(arg, 2), packets=count)
                at_start = before = len(wire.rtp)
                for p in frame:
                    receiver.receive_rtp(p, now)
                    if len(wire.rtp) > before:
                        tid = parse_vp8_descriptor(RtpPacket.parse(wire.rtp[-1]).payload).temporal_id
                        assert down.current_temporal is None or tid <= down.current_temporal
                        before = len(wire.rtp)
                assert len(wire.rtp) - at_start in (0, count), "a frame is forwarded whole or not at all"
    sent = _sent(wire)
    if sent:
        _assert_decodable(sent)
