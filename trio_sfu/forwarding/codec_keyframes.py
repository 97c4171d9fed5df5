"""Keyframe and layer facts read straight out of RTP payload descriptors.

Every function here is total: on bytes that are not what they claim to be it
answers False / None and never raises, because it runs on attacker-supplied
payloads in the forwarding hot path. Functions take the whole RTP packet
buffer plus the payload bounds, so the caller never slices (no copies).
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import attrs

Buffer = Union[bytes, bytearray, memoryview]

_H264_STAP_A = 24
_H264_STAP_B = 25
_H264_FU_A = 28
_H264_FU_B = 29
_H264_IDR = 5
_H264_SPS = 7
_AV1_OBU_SEQUENCE_HEADER = 1


def payload_bounds(packet: Buffer) -> Optional[tuple[int, int]]:
    """(start, end) of the RTP payload inside ``packet`` with padding excluded, or None if malformed."""
    size = len(packet)
    if size < 12 or packet[0] >> 6 != 2:
        return None
    first = packet[0]
    pos = 12 + 4 * (first & 0x0F)
    if first & 0x10:
        if size < pos + 4:
            return None
        pos += 4 + 4 * ((packet[pos + 2] << 8) | packet[pos + 3])
    end = size
    if first & 0x20:
        end -= packet[size - 1]
    if pos > end:
        return None
    return pos, end


# --- VP8 (RFC 7741 §4.2) ---------------------------------------------------------------------


@attrs.define
class Vp8Descriptor:
    """The fields of a VP8 payload descriptor; offsets are absolute in the parsed buffer."""

    start_of_partition: bool
    partition_id: int
    picture_id: Optional[int]
    picture_id_bits: int  # 0 (absent), 7 or 15
    picture_id_offset: int  # -1 when absent
    tl0picidx: Optional[int]
    tl0picidx_offset: int  # -1 when absent
    temporal_id: Optional[int]
    header_size: int  # descriptor length in bytes
    is_keyframe: bool
    # Y: this frame depends only on TL0 frames (a place to start forwarding a higher temporal
    # layer); False when the T bit is absent.
    layer_sync: bool = False


def parse_vp8_descriptor(data: Buffer, start: int = 0, end: Optional[int] = None) -> Optional[Vp8Descriptor]:
    """Decode the VP8 descriptor at ``data[start:end]``; None when truncated or malformed."""
    if end is None:
        end = len(data)
    if start < 0 or end > len(data) or start >= end:
        return None
    b0 = data[start]
    pos = start + 1
    pid = tl0 = tid = None
    sync = False
    pid_bits = 0
    pid_off = tl0_off = -1
    if b0 & 0x80:  # X: extension octet follows
        if pos >= end:
            return None
        ext = data[pos]
        pos += 1
        if ext & 0x80:  # I: picture id
            if pos >= end:
                return None
            if data[pos] & 0x80:  # M: 15-bit form
                if pos + 1 >= end:
                    return None
                pid = ((data[pos] & 0x7F) << 8) | data[pos + 1]
                pid_bits = 15
                pid_off = pos
                pos += 2
            else:
                pid = data[pos] & 0x7F
                pid_bits = 7
                pid_off = pos
                pos += 1
        if ext & 0x40:  # L: TL0PICIDX
            if pos >= end:
                return None
            tl0 = data[pos]
            tl0_off = pos
            pos += 1
        if ext & 0x30:  # T or K: TID/Y/KEYIDX octet
            if pos >= end:
                return None
            if ext & 0x20:
                tid = data[pos] >> 6
                sync = bool(data[pos] & 0x20)
            pos += 1
    start_of_partition = bool(b0 & 0x10)
    partition_id = b0 & 0x0F
    # The VP8 payload header's P bit is an *inverse* key frame flag (RFC 6386 §9.1),
    # and that header only exists at the start of partition 0.
    keyframe = start_of_partition and partition_id == 0 and pos < end and not data[pos] & 0x01
    return Vp8Descriptor(
        start_of_partition, partition_id, pid, pid_bits, pid_off, tl0, tl0_off, tid,
        pos - start, keyframe, sync,
    )


def is_vp8_keyframe(data: Buffer, start: int = 0, end: Optional[int] = None) -> bool:
    desc = parse_vp8_descriptor(data, start, end)
    return desc is not None and desc.is_keyframe


#: `vp8_temporal`'s flags, above the TID in its low two bits.
VP8_LAYER_SYNC = 0x04
VP8_FRAME_START = 0x08  # the first packet of a frame (S set, partition 0)
VP8_KEYFRAME = 0x10


def vp8_temporal(data: Buffer, start: int, end: int) -> int:
    """A VP8 packet's temporal facts in one int, for the per-packet temporal filter: the TID
    (0..3) in bits 0-1, `VP8_LAYER_SYNC` (Y), `VP8_FRAME_START`, `VP8_KEYFRAME`; -1 when the
    descriptor carries no TID (no T bit: every packet is in the base layer) or is malformed.
    The reading of :func:`parse_vp8_descriptor`, building no object."""
    if start < 0 or end > len(data) or start + 1 >= end:
        return -1
    b0 = data[start]
    if not b0 & 0x80:
        return -1
    ext = data[start + 1]
    if not ext & 0x20:
        return -1
    pos = start + 2
    if ext & 0x80:
        if pos >= end:
            return -1
        pos += 2 if data[pos] & 0x80 else 1
    if ext & 0x40:
        pos += 1
    if pos >= end:
        return -1
    tyk = data[pos]
    info = (tyk >> 6) | (VP8_LAYER_SYNC if tyk & 0x20 else 0)
    if b0 & 0x10 and not b0 & 0x0F:
        info |= VP8_FRAME_START
        if pos + 1 < end and not data[pos + 1] & 0x01:
            info |= VP8_KEYFRAME
    return info


def vp8_picture_id(data: Buffer, start: int, end: int) -> int:
    """The picture id of a VP8 packet, -1 when it has none (or is malformed)."""
    if start < 0 or end > len(data) or start + 2 >= end or not data[start] & 0x80 or not data[start + 1] & 0x80:
        return -1
    pos = start + 2
    if data[pos] & 0x80:
        return ((data[pos] & 0x7F) << 8) | data[pos + 1] if pos + 1 < end else -1
    return data[pos] & 0x7F


def write_vp8_picture_id(buf: bytearray, offset: int, bits: int, picture_id: int) -> None:
    """Overwrite a picture id in place, keeping the width (7 or 15 bits) the sender chose."""
    if bits == 15:
        buf[offset] = 0x80 | ((picture_id >> 8) & 0x7F)
        buf[offset + 1] = picture_id & 0xFF
    elif bits == 7:
        buf[offset] = picture_id & 0x7F


def munge_vp8(buf: bytearray, start: int, end: int, picture_id_offset: int, tl0_offset: int) -> tuple[int, int]:
    """Shift the picture id (mod 2^15, written in the sender's 7/15-bit width) and TL0PICIDX
    (mod 2^8) in place; returns the written (picture id, tl0picidx), -1 for each absent one.

    The per-packet form of :func:`parse_vp8_descriptor` + :func:`write_vp8_picture_id`:
    it builds no descriptor object.
    """
    pid_out = tl0_out = -1
    if start < 0 or end > len(buf) or start + 1 >= end or not buf[start] & 0x80:
        return pid_out, tl0_out
    ext = buf[start + 1]
    pos = start + 2
    if ext & 0x80:
        if pos >= end:
            return pid_out, tl0_out
        if buf[pos] & 0x80:
            if pos + 1 >= end:
                return pid_out, tl0_out
            pid_out = ((((buf[pos] & 0x7F) << 8) | buf[pos + 1]) + picture_id_offset) & 0x7FFF
            buf[pos] = 0x80 | (pid_out >> 8)
            buf[pos + 1] = pid_out & 0xFF
            pos += 2
        else:
            pid_out = ((buf[pos] & 0x7F) + picture_id_offset) & 0x7FFF
            buf[pos] = pid_out & 0x7F
            pos += 1
    if ext & 0x40 and pos < end:
        tl0_out = (buf[pos] + tl0_offset) & 0xFF
        buf[pos] = tl0_out
    return pid_out, tl0_out


# --- H.264 (RFC 6184 §5) ---------------------------------------------------------------------


def is_h264_keyframe(data: Buffer, start: int = 0, end: Optional[int] = None) -> bool:
    """True for an IDR slice or SPS: as a single NAL, inside STAP-A, or starting an FU-A."""
    if end is None:
        end = len(data)
    if start < 0 or end > len(data) or start >= end:
        return False
    nal_type = data[start] & 0x1F
    if nal_type in (_H264_IDR, _H264_SPS):
        return True
    if nal_type == _H264_STAP_A:
        pos = start + 1
        while pos + 2 < end:
            size = (data[pos] << 8) | data[pos + 1]
            pos += 2
            if size == 0 or pos + size > end:
                return False
            if (data[pos] & 0x1F) in (_H264_IDR, _H264_SPS):
                return True
            pos += size
        return False
    if nal_type in (_H264_FU_A, _H264_FU_B):
        if start + 1 >= end:
            return False
        fu_header = data[start + 1]
        return bool(fu_header & 0x80) and (fu_header & 0x1F) in (_H264_IDR, _H264_SPS)
    return False


# --- VP9 (RFC 9628 §4.2) ---------------------------------------------------------------------


def is_vp9_keyframe(data: Buffer, start: int = 0, end: Optional[int] = None) -> bool:
    """True on the first packet (B) of a spatial-layer-0 frame that is not inter-predicted (P clear)."""
    if end is None:
        end = len(data)
    if start < 0 or end > len(data) or start >= end:
        return False
    b0 = data[start]
    if b0 & 0x40 or not b0 & 0x08:  # P set, or B (beginning of frame) clear
        return False
    pos = start + 1
    if b0 & 0x80:  # I: picture id, 7 or 15 bits
        if pos >= end:
            return False
        pos += 2 if data[pos] & 0x80 else 1
    if b0 & 0x20:  # L: layer indices; SID is bits 3..1
        if pos >= end:
            return False
        if ((data[pos] >> 1) & 0x07) != 0:
            return False
    return True


# --- AV1 (AV1 RTP payload format §4.4) -------------------------------------------------------


def is_av1_keyframe(data: Buffer, start: int = 0, end: Optional[int] = None) -> bool:
    """True when the aggregation header's N bit starts a coded video sequence, or a
    sequence header OBU begins in this packet."""
    if end is None:
        end = len(data)
    if start < 0 or end > len(data) or start >= end:
        return False
    agg = data[start]
    if agg & 0x08:  # N
        return True
    continuation = bool(agg & 0x80)  # Z: first element continues an earlier OBU
    w = (agg >> 4) & 0x03
    pos = start + 1
    index = 0
    while pos < end:
        index += 1
        last = w != 0 and index == w
        if last:
            size = end - pos
        else:
            size = 0
            shift = 0
            for _ in range(8):  # leb128, at most 8 bytes
                if pos >= end:
                    return False
                byte = data[pos]
                pos += 1
                size |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            else:
                return False
        if size <= 0 or pos + size > end:
            return False
        if not (index == 1 and continuation):
            if ((data[pos] >> 3) & 0x0F) == _AV1_OBU_SEQUENCE_HEADER:
                return True
        pos += size
        if last:
            break
    return False


KeyframeDetector = Callable[[Buffer, int, Optional[int]], bool]


def _always(data: Buffer, start: int = 0, end: Optional[int] = None) -> bool:
    return True


def keyframe_detector(mime_type: str) -> KeyframeDetector:
    """The detector for a codec (``video/VP8``, ``vp8``...); audio and unknown codecs
    answer True for every packet, because any packet is a valid place to start them."""
    name = mime_type.lower().rsplit("/", 1)[-1]
    return {
        "vp8": is_vp8_keyframe,
        "h264": is_h264_keyframe,
        "vp9": is_vp9_keyframe,
        "av1": is_av1_keyframe,
    }.get(name, _always)
