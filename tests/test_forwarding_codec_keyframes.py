"""Keyframe detection against payloads from real encoders (aiortc's libvpx VP8 and
libx264 H.264 packetisers), plus RFC-built VP9/AV1 descriptors, and totality on garbage."""

import fractions
import random

import pytest
from budgets import examples
from hypothesis import given, settings, strategies as st

from rtp.packet import RtpPacket
from trio_sfu.forwarding.codec_keyframes import (
    is_av1_keyframe,
    is_h264_keyframe,
    is_vp8_keyframe,
    is_vp9_keyframe,
    keyframe_detector,
    parse_vp8_descriptor,
    payload_bounds,
    write_vp8_picture_id,
)

aiortc_codecs = pytest.importorskip("aiortc.codecs", reason="aiortc encoders needed for real payloads")
av = pytest.importorskip("av", reason="PyAV needed to build frames for aiortc encoders")


def _encode(mime: str, frames: int, force_at: int = -1):
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters

    enc = aiortc_codecs.get_encoder(RTCRtpCodecParameters(mimeType=mime, clockRate=90000, payloadType=96))
    out = []
    for i in range(frames):
        frame = av.VideoFrame(width=320, height=240)
        # Noise (seeded): a fresh VideoFrame is uninitialised memory, and frame sizes -
        # hence FU-A fragmentation - must not depend on what the allocator left there.
        noise = random.Random(i)
        for plane in frame.planes:
            plane.update(noise.randbytes(plane.buffer_size))
        frame.pts = i * 3000
        frame.time_base = fractions.Fraction(1, 90000)
        payloads, _ = enc.encode(frame, force_keyframe=(i == force_at))
        out.append(payloads)
    return out


def test_vp8_real_encoder_keyframes_and_descriptor():
    from aiortc.codecs.vpx import VpxPayloadDescriptor

    frames = _encode("video/VP8", 4, force_at=3)
    for index, payloads in enumerate(frames):
        keyframe = index in (0, 3)
        assert is_vp8_keyframe(payloads[0]) is keyframe
        # Only the first packet of a frame carries the payload header.
        assert not any(is_vp8_keyframe(p) for p in payloads[1:])
        for p in payloads:
            ours = parse_vp8_descriptor(p)
            theirs, rest = VpxPayloadDescriptor.parse(p)
            assert ours is not None
            assert ours.picture_id == theirs.picture_id
            assert ours.start_of_partition == bool(theirs.partition_start)
            assert ours.partition_id == theirs.partition_id
            assert ours.header_size == len(p) - len(rest)


def test_vp8_picture_id_rewrite_in_place_is_read_back_by_aiortc():
    from aiortc.codecs.vpx import VpxPayloadDescriptor

    payload = _encode("video/VP8", 1)[0][0]
    pkt = RtpPacket(payload_type=96, sequence_number=1, timestamp=2, ssrc=3, payload=payload,
                    extensions={1: b"q"}).serialize()
    start, end = payload_bounds(pkt)
    desc = parse_vp8_descriptor(pkt, start, end)
    buf = bytearray(pkt)
    write_vp8_picture_id(buf, desc.picture_id_offset, desc.picture_id_bits, 0x1234)
    theirs, _ = VpxPayloadDescriptor.parse(bytes(buf[start:end]))
    assert theirs.picture_id == 0x1234
    assert is_vp8_keyframe(buf, start, end)


def test_vp8_7bit_picture_id_and_tl0picidx():
    # X=1,S=1,PID=0 | I=1,L=1,T=1 | 7-bit picture id 0x25 | TL0PICIDX 9 | TID=2 | payload header P=0
    payload = bytes([0x90, 0xE0, 0x25, 0x09, 0x80, 0x10, 0x02, 0x00])
    desc = parse_vp8_descriptor(payload)
    assert (desc.picture_id, desc.picture_id_bits, desc.tl0picidx, desc.temporal_id) == (0x25, 7, 9, 2)
    assert desc.tl0picidx_offset == 3 and desc.is_keyframe
    assert not is_vp8_keyframe(bytes([0x90, 0xE0, 0x25, 0x09, 0x80, 0x11]))  # P set: interframe
    assert not is_vp8_keyframe(bytes([0x90, 0xE0, 0x25, 0x09, 0x80]))  # no payload header


def test_h264_real_encoder_stap_a_and_fu_a():
    frames = _encode("video/H264", 3, force_at=2)
    first = frames[0][0]
    assert (first[0] & 0x1F) == 24  # aiortc aggregates SPS/PPS into a STAP-A
    assert is_h264_keyframe(first)
    fu_starts = [p for p in frames[0] if (p[0] & 0x1F) == 28 and p[1] & 0x80]
    assert fu_starts and all(is_h264_keyframe(p) for p in fu_starts)
    # middle FU-A fragments of the IDR are not keyframe starts
    assert not any(is_h264_keyframe(p) for p in frames[0] if (p[0] & 0x1F) == 28 and not p[1] & 0x80)
    assert not any(is_h264_keyframe(p) for p in frames[1])
    assert is_h264_keyframe(frames[2][0])


def test_h264_single_nal_types():
    assert is_h264_keyframe(bytes([0x65, 0x88]))  # IDR
    assert is_h264_keyframe(bytes([0x67, 0x42]))  # SPS
    assert not is_h264_keyframe(bytes([0x41, 0x9A]))  # non-IDR slice
    assert not is_h264_keyframe(bytes([0x78, 0x00, 0x05, 0x67]))  # STAP-A NAL size past the end


def test_vp9_descriptor_rules():
    # I=0,P=0,L=1,F=0,B=1 ; layer byte TID=0,U=0,SID=0,D=0 ; TL0PICIDX
    assert is_vp9_keyframe(bytes([0x28, 0x00, 0x05, 0xAA]))
    assert not is_vp9_keyframe(bytes([0x68, 0x00, 0x05]))  # P set
    assert not is_vp9_keyframe(bytes([0x20, 0x00, 0x05]))  # B clear: not first packet
    assert not is_vp9_keyframe(bytes([0x28, 0x02, 0x05]))  # SID 1
    # I=1 with 15-bit picture id, then L
    assert is_vp9_keyframe(bytes([0xA8, 0x81, 0x23, 0x00, 0x01]))
    assert not is_vp9_keyframe(bytes([0xA8, 0x81]))  # truncated: total, False


def test_av1_aggregation_header_and_sequence_header():
    assert is_av1_keyframe(bytes([0x18, 0x0A, 0x00]))  # N=1
    # W=1: one OBU, no length; OBU header type 1 (sequence header) = 0x0A
    assert is_av1_keyframe(bytes([0x10, 0x0A, 0x00, 0x00]))
    # W=0: leb128-sized elements; temporal delimiter (type 2), then sequence header
    assert is_av1_keyframe(bytes([0x00, 0x01, 0x12, 0x02, 0x0A, 0x00]))
    # W=1, frame OBU (type 6) only
    assert not is_av1_keyframe(bytes([0x10, 0x32, 0x00]))
    # Z=1: the first element is a continuation fragment; its bytes are not an OBU header
    assert not is_av1_keyframe(bytes([0x90, 0x0A, 0x00]))


def test_detector_by_mime():
    assert keyframe_detector("video/VP8") is is_vp8_keyframe
    assert keyframe_detector("H264") is is_h264_keyframe
    assert keyframe_detector("audio/opus")(b"", 0, None)


@settings(max_examples=examples(4), deadline=None)
@given(st.binary(max_size=64), st.data())
def test_garbage_never_raises_and_only_the_window_counts(data, draw):
    """Total on any bytes and bounds, and reading only data[start:end]: the same bytes give the
    same answer wherever they sit in a buffer; bounds outside the buffer give False / None."""
    start = draw.draw(st.integers(-2, len(data) + 2), label="start")
    # Often a window of a few bytes inside a longer buffer: where reading past `end` shows.
    end = draw.draw(st.one_of(st.none(), st.integers(start - 1, start + 6), st.integers(-2, len(data) + 2)),
                    label="end")
    stop = len(data) if end is None else end
    in_bounds = 0 <= start < stop <= len(data)
    window = data[start:stop] if in_bounds else b""
    # The window again, surrounded by other bytes: a detector that reads past its bounds
    # (or before them) answers differently for one of the two.
    elsewhere = b"\xff\x9d\x01" + window + b"\x80\xff\x07"
    for fn in (is_vp8_keyframe, is_h264_keyframe, is_vp9_keyframe, is_av1_keyframe):
        answer = fn(data, start, end)
        assert type(answer) is bool
        if in_bounds:
            assert answer == fn(window) == fn(elsewhere, 3, 3 + len(window)), fn.__name__
        else:
            assert answer is False, fn.__name__
    descriptor = parse_vp8_descriptor(data, start, end)
    if not in_bounds:
        assert descriptor is None
    elif descriptor is not None:
        # Offsets are absolute in the buffer parsed: the same descriptor, moved by `start`.
        alone = parse_vp8_descriptor(window)
        assert alone is not None and alone.header_size == descriptor.header_size
        assert (alone.picture_id, alone.tl0picidx, alone.is_keyframe) == (
            descriptor.picture_id, descriptor.tl0picidx, descriptor.is_keyframe)
        for field in ("picture_id_offset", "tl0picidx_offset"):
            offset = getattr(descriptor, field)
            assert offset == -1 or start <= offset < stop
            assert getattr(alone, field) == (-1 if offset == -1 else offset - start)
    else:
        assert parse_vp8_descriptor(window) is None
    bounds = payload_bounds(data)
    assert bounds is None or 12 <= bounds[0] <= bounds[1] <= len(data)


@settings(max_examples=examples(3), deadline=None)
@given(st.binary(max_size=40), st.binary(min_size=0, max_size=8))
def test_payload_bounds_match_the_parser(payload, ext):
    pkt = RtpPacket(payload_type=96, payload=payload, extensions={1: ext} if ext else {},
                    padding_size=3 if payload else 0).serialize()
    start, end = payload_bounds(pkt)
    assert pkt[start:end] == RtpPacket.parse(pkt).payload


def test_h264_stap_a_with_idr_not_first_and_fu_b():
    # STAP-A: [SEI (type 6), IDR (type 5)]
    assert is_h264_keyframe(bytes([0x78, 0x00, 0x02, 0x06, 0x00, 0x00, 0x02, 0x65, 0x88]))
    assert not is_h264_keyframe(bytes([0x78, 0x00, 0x02, 0x06, 0x00, 0x00, 0x02, 0x41, 0x88]))
    assert is_h264_keyframe(bytes([0x7C, 0x85, 0x00]))  # FU-A start of IDR
    assert not is_h264_keyframe(bytes([0x7C, 0x81, 0x00]))  # FU-A start of non-IDR


def test_vp9_layer_sid_bits_only():
    # SID occupies bits 3..1 of the layer byte: SID=1 (0x02), SID=2 (0x04), D bit alone (0x01) is layer 0
    assert not is_vp9_keyframe(bytes([0x28, 0x04, 0x05]))
    assert is_vp9_keyframe(bytes([0x28, 0x01, 0x05]))


@settings(max_examples=examples(3), deadline=None)
@given(st.binary(max_size=12), st.integers(0, 0x7FFF), st.integers(0, 255))
def test_munge_vp8_agrees_with_the_descriptor_parser(payload, pid_offset, tl0_offset):
    from trio_sfu.forwarding.codec_keyframes import munge_vp8

    before = parse_vp8_descriptor(payload)
    buf = bytearray(payload)
    pid_out, tl0_out = munge_vp8(buf, 0, len(buf), pid_offset, tl0_offset)
    if before is None:
        return
    after = parse_vp8_descriptor(buf)
    mod = 1 << before.picture_id_bits if before.picture_id is not None else 0
    if before.picture_id is not None:
        assert pid_out == (before.picture_id + pid_offset) & 0x7FFF
        assert after.picture_id == pid_out % mod
    else:
        assert pid_out == -1
    if before.tl0picidx is not None:
        assert after.tl0picidx == tl0_out == (before.tl0picidx + tl0_offset) & 0xFF
    assert after.header_size == before.header_size and after.is_keyframe == before.is_keyframe
