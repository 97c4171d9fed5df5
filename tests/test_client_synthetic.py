"""Synthetic media and receive statistics of the client.

The VP8 framing is read back by aiortc's VP8 payload descriptor parser and by
the SFU's forwarding keyframe detector (written separately, for real encoder
output); RTP packets by aiortc's RTP parser and by ours with the header
extension codecs. Sizes and bitrates are checked against the RFC limits and the
requested rate. Loss counting is checked against a direct count over random
sets of received sequence numbers (with wrap, reordering and duplicates).
"""

from __future__ import annotations

import random

import pytest
from aiortc.codecs.vpx import VpxPayloadDescriptor
from aiortc.rtp import RtpPacket as AiortcRtpPacket
from budgets import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from rtp.header_extensions import decode_mid, decode_rid
from rtp.packet import parse as parse_rtp
from trio_sfu.client.stats import TrackReceiveStats, percentile
from trio_sfu.client.synthetic import (
    AUDIO_PAYLOAD_SIZE,
    MAX_RTP_PACKET,
    RtpStreamWriter,
    VideoLayerSpec,
    Vp8FrameSource,
    is_vp8_keyframe,
    opus_payload,
    read_send_stamp,
    send_stamp,
    simulcast_layers,
    vp8_descriptor,
)
from trio_sfu.forwarding.codec_keyframes import is_vp8_keyframe as sfu_is_vp8_keyframe
from trio_sfu.forwarding.codec_keyframes import parse_vp8_descriptor

MID_ID, RID_ID = 4, 10


def writer(rid: str = "f") -> RtpStreamWriter:
    return RtpStreamWriter(0xABCDEF01, 96, {MID_ID: b"1", RID_ID: rid.encode()}, first_sequence=65530)


@pytest.mark.parametrize("keyframe", [True, False])
@pytest.mark.parametrize("start", [True, False])
def test_vp8_descriptor_read_by_aiortc(keyframe: bool, start: bool) -> None:
    data = vp8_descriptor(start, picture_id=0x1234, tl0_pic_idx=0x56, keyframe=keyframe) + b"rest"
    descriptor, rest = VpxPayloadDescriptor.parse(data)
    assert rest == b"rest"
    assert descriptor.partition_start == int(start) and descriptor.partition_id == 0
    assert descriptor.picture_id == 0x1234 and descriptor.tl0picidx == 0x56
    assert descriptor.tid == (0, 1 if keyframe else 0)  # (TID, Y)


def test_frames_key_every_interval_sized_to_bitrate_and_mtu() -> None:
    layer = VideoLayerSpec("f", 1280, 720, 1_500_000, fps=30)
    w = writer()
    source = Vp8FrameSource(layer, w.header_size, keyframe_interval=1.0)
    key_flags, inter_bytes = [], 0
    for frame in range(90):
        keyframe, payloads = source.next_frame(send_time_us=1_000_000 + frame)
        key_flags.append(keyframe)
        packets = [w.packet(p, timestamp=3000 * frame, marker=i == len(payloads) - 1) for i, p in enumerate(payloads)]
        assert all(len(p) <= MAX_RTP_PACKET for p in packets)
        for index, packet in enumerate(packets):
            theirs = AiortcRtpPacket.parse(packet)
            assert theirs.payload_type == 96 and theirs.ssrc == 0xABCDEF01
            assert theirs.marker == (index == len(packets) - 1)
            descriptor, _ = VpxPayloadDescriptor.parse(theirs.payload)
            assert descriptor.partition_start == (index == 0)
            assert descriptor.picture_id == frame
            # The SFU's own detector and ours agree, on the first packet only.
            assert sfu_is_vp8_keyframe(theirs.payload) == is_vp8_keyframe(theirs.payload) == (keyframe and index == 0)
            assert read_send_stamp(theirs.payload) == 1_000_000 + frame
            ours = parse_rtp(packet)
            assert decode_mid(ours.extensions[MID_ID]) == "1" and decode_rid(ours.extensions[RID_ID]) == "f"
        if not keyframe:
            inter_bytes += sum(len(p) for p in payloads)
    assert [i for i, k in enumerate(key_flags) if k] == [0, 30, 60]
    # Inter frames carry the target rate (payload bytes; headers and key frames come on top).
    inter_rate = inter_bytes * 8 / (87 / 30)
    assert 0.9 * layer.bitrate <= inter_rate <= 1.1 * layer.bitrate


def test_keyframe_header_has_start_code_and_dimensions() -> None:
    source = Vp8FrameSource(VideoLayerSpec("", 640, 360, 300_000), header_size=24)
    keyframe, payloads = source.next_frame(0)
    assert keyframe
    descriptor = parse_vp8_descriptor(payloads[0])
    header = payloads[0][descriptor.header_size:]
    # RFC 6386 §9.1: 3-octet frame tag (P=0, show_frame=1), start code, 14-bit width and height.
    assert header[0] & 0x01 == 0 and header[0] & 0x10
    assert header[3:6] == b"\x9d\x01\x2a"
    assert int.from_bytes(header[6:8], "little") == 640 and int.from_bytes(header[8:10], "little") == 360
    source.request_keyframe()
    assert source.next_frame(1)[0] and not source.next_frame(2)[0]


def test_sequence_numbers_wrap_and_layers_ladder() -> None:
    w = writer()
    seqs = [parse_rtp(w.packet(b"x", 0, False)).sequence_number for _ in range(8)]
    assert seqs == [65530, 65531, 65532, 65533, 65534, 65535, 0, 1]
    layers = simulcast_layers(1280, 720, 1_600_000, simulcast=True)
    assert [(l.rid, l.width, l.bitrate) for l in layers] == [("q", 320, 100_000), ("h", 640, 400_000), ("f", 1280, 1_600_000)]
    assert [l.rid for l in simulcast_layers(1280, 720, 1_600_000, simulcast=False)] == [""]


def test_opus_payload_shape() -> None:
    payload = opus_payload(123456789)
    assert len(payload) == AUDIO_PAYLOAD_SIZE
    # RFC 6716 §3.1 TOC: config 31 = CELT-only fullband 20 ms, s=0 (mono), c=0 (one frame).
    assert payload[0] >> 3 == 31 and payload[0] & 0x07 == 0
    assert read_send_stamp(payload) == 123456789


@settings(max_examples=examples(3), deadline=None)
@given(st.binary(max_size=12), st.integers(0, 2**64 - 1), st.binary(max_size=40))
def test_send_stamp_round_trip(prefix: bytes, stamp: int, suffix: bytes) -> None:
    if b"TSFU" in prefix + send_stamp(stamp)[:3]:
        return  # a magic in the prefix is found first, as intended
    assert read_send_stamp(prefix + send_stamp(stamp) + suffix) == stamp


@settings(max_examples=examples(5), deadline=None)
@given(st.binary(max_size=64))
def test_readers_are_total(data: bytes) -> None:
    stamp = read_send_stamp(data)
    assert stamp is None or 0 <= stamp < 2**64
    assert is_vp8_keyframe(data) in (True, False)
    # Where the SFU's parser finds a descriptor, both agree on key frames.
    descriptor = parse_vp8_descriptor(data)
    if descriptor is not None and data and not data[0] & 0x08:
        assert descriptor.is_keyframe == is_vp8_keyframe(data)


def test_stats_loss_latency_bitrate() -> None:
    stats = TrackReceiveStats()
    for i, seq in enumerate([100, 101, 103, 102, 102, 106]):  # 104, 105 lost; 102 duplicated
        stats.on_packet(7, seq, 1000, now=10.0 + i * 0.1, latency_ms=float(i))
    assert stats.expected == 7 and stats.packets == 6 and stats.lost == 1  # the duplicate offsets one loss
    assert stats.bitrate() == pytest.approx(6 * 1000 * 8 / 0.5)
    assert stats.latency_percentile(0.5) == 2.0 and stats.latency_percentile(1.0) == 5.0
    assert percentile([], 0.5) is None and percentile([5.0], 0.99) == 5.0


@settings(max_examples=examples(3), deadline=None)
@given(st.integers(0, 65535), st.integers(1, 300), st.data())
def test_stats_loss_matches_direct_count(first: int, span: int, data) -> None:
    """Received = a random subset (first and last kept, maybe duplicated) of a contiguous range,
    locally reordered, across any wrap."""
    offsets = sorted(data.draw(st.sets(st.integers(1, span - 1), max_size=span)) if span > 1 else set())
    received = [0, *offsets, span - 1] if span > 1 else [0]
    rng = random.Random(data.draw(st.integers(0, 2**32)))
    # Reordered only locally (a jitter buffer's worth), as a network does.
    order = sorted(received, key=lambda o: o + rng.uniform(-20, 20))
    stats = TrackReceiveStats()
    for offset in order:
        stats.on_packet(1, (first + offset) & 0xFFFF, 100, now=0.0, latency_ms=None)
    assert stats.expected == span
    # RFC 3550 §6.4.1 cumulative loss: expected minus received, duplicates counting as received.
    assert stats.lost == max(span - len(order), 0)
    assert stats.packets == len(order)


def test_latency_samples_stay_bounded() -> None:
    from trio_sfu.client.stats import MAX_LATENCY_SAMPLES

    stats = TrackReceiveStats()
    for i in range(5 * MAX_LATENCY_SAMPLES):
        stats.on_packet(1, i & 0xFFFF, 10, now=float(i), latency_ms=float(i % 100))
    assert len(stats.latencies_ms) < MAX_LATENCY_SAMPLES
    assert 40 <= stats.latency_percentile(0.5) <= 60


def test_ntp_now_agrees_with_aiortc() -> None:
    from aiortc.clock import current_ntp_time

    from trio_sfu.client.client import ntp_now

    ours, theirs = ntp_now(), current_ntp_time()
    assert abs(ours - theirs) < (1 << 32) // 20  # within 50 ms, in 2^-32 s units


def test_writer_counts_sender_info() -> None:
    w = writer()
    for i in range(5):
        w.packet(bytes(100 + i), timestamp=1000 * i, marker=False)
    assert (w.packets, w.octets, w.last_timestamp) == (5, 510, 4000)
