"""Synthetic media for load tests: VP8-framed video and Opus-sized audio RTP payloads with a send time.

Nothing here encodes real pictures or sound. The payloads are shaped like the
real thing where an SFU looks: a VP8 payload descriptor (RFC 7741 §4.2) with a
15-bit PictureID, TL0PICIDX and TID, the start bit on a frame's first packet,
and on that packet the VP8 frame tag (RFC 6386 §9.1) whose P bit marks key
frames, plus the key frame start code and dimensions. Audio packets start with
an Opus TOC byte (RFC 6716 §3.1) and are the size a 32 kbit/s 20 ms frame is.

Every payload carries a *send stamp* right after its codec header: the 4 magic
octets ``TSFU`` and the wall-clock send time in microseconds, so a subscriber on
the same machine can measure one-way latency (see :func:`read_send_stamp`).
"""

from __future__ import annotations

import struct

import attrs

from rtp.packet import encode_extension_block

STAMP_MAGIC = b"TSFU"
_STAMP = struct.Struct("!4sQ")
STAMP_SIZE = _STAMP.size
#: How far into a payload the stamp may sit: a 6-octet descriptor plus a 10-octet key frame header.
_STAMP_SEARCH = 24

#: Largest RTP packet (header + extensions + payload) we build; SRTP adds its tag on top.
MAX_RTP_PACKET = 1200
VP8_DESCRIPTOR_SIZE = 6
_VP8_KEYFRAME_HEADER = 10
_VP8_INTERFRAME_HEADER = 3

OPUS_TOC_CELT_FB_20MS = 0xF8  # config 31 (CELT fullband 20 ms), mono, one frame
OPUS_FRAME_SAMPLES = 960  # 20 ms at 48 kHz
AUDIO_PACKET_INTERVAL = 0.020
AUDIO_PAYLOAD_SIZE = 80  # 32 kbit/s x 20 ms

VIDEO_CLOCK_RATE = 90000

_RTP_HEADER = struct.Struct("!BBHII")


def send_stamp(send_time_us: int) -> bytes:
    return _STAMP.pack(STAMP_MAGIC, send_time_us & 0xFFFFFFFFFFFFFFFF)


def read_send_stamp(payload: bytes) -> int | None:
    """The send time (µs) stamped into ``payload`` by this module, or None if it has none."""
    index = payload.find(STAMP_MAGIC, 0, _STAMP_SEARCH)
    if index < 0 or len(payload) < index + STAMP_SIZE:
        return None
    return _STAMP.unpack_from(payload, index)[1]


def vp8_descriptor(start: bool, picture_id: int, tl0_pic_idx: int, keyframe: bool) -> bytes:
    """RFC 7741 §4.2: X=1, S as given, PID 0; I (15-bit PictureID), L (TL0PICIDX), T (TID 0, Y on key frames)."""
    first = 0x80 | (0x10 if start else 0)
    extension = 0x80 | 0x40 | 0x20  # I, L, T present; K absent
    tid_y_keyidx = 0x20 if keyframe else 0  # TID 0; Y: this frame only depends on the base layer
    return bytes(
        (first, extension, 0x80 | ((picture_id >> 8) & 0x7F), picture_id & 0xFF, tl0_pic_idx & 0xFF, tid_y_keyidx)
    )


def vp8_frame_header(keyframe: bool, first_partition_size: int, width: int, height: int) -> bytes:
    """RFC 6386 §9.1 frame tag (P=0 for key frames, version 0, show_frame) and, on key frames,
    the start code 9d 01 2a and 14-bit width/height with scale 0."""
    size = min(first_partition_size, (1 << 19) - 1)
    tag = (0 if keyframe else 1) | (1 << 4) | (size << 5)
    header = bytes((tag & 0xFF, (tag >> 8) & 0xFF, (tag >> 16) & 0xFF))
    if keyframe:
        header += b"\x9d\x01\x2a" + struct.pack("<HH", width & 0x3FFF, height & 0x3FFF)
    return header


def is_vp8_keyframe(payload: bytes) -> bool:
    """Whether a VP8 RTP payload starts a key frame (S=1, PID=0, frame tag P=0)."""
    if len(payload) < 1:
        return False
    first = payload[0]
    if not first & 0x10 or first & 0x07:
        return False
    offset = 1
    if first & 0x80:
        if len(payload) < 2:
            return False
        ext = payload[1]
        offset = 2
        if ext & 0x80:
            if len(payload) <= offset:
                return False
            offset += 2 if payload[offset] & 0x80 else 1
        if ext & 0x40:
            offset += 1
        if ext & 0x30:
            offset += 1
    return len(payload) > offset and not payload[offset] & 0x01


class RtpStreamWriter:
    """Builds the RTP packets of one SSRC: fixed header fields and header extensions, running sequence."""

    __slots__ = ("ssrc", "payload_type", "sequence_number", "packets", "octets", "last_timestamp",
                 "_extension_block", "_first_octet")

    def __init__(self, ssrc: int, payload_type: int, extensions: dict[int, bytes], first_sequence: int) -> None:
        self.ssrc = ssrc
        self.payload_type = payload_type
        self.sequence_number = first_sequence & 0xFFFF
        # RFC 3550 §6.4.1 sender info: packets and payload octets sent, the newest RTP timestamp.
        self.packets = 0
        self.octets = 0
        self.last_timestamp: int | None = None
        # mid and rid never change for a stream, so the extension block is built once.
        self._extension_block = encode_extension_block(extensions) if extensions else b""
        self._first_octet = 0x90 if extensions else 0x80

    @property
    def header_size(self) -> int:
        return _RTP_HEADER.size + len(self._extension_block)

    def packet(self, payload: bytes, timestamp: int, marker: bool) -> bytes:
        header = _RTP_HEADER.pack(
            self._first_octet,
            (0x80 if marker else 0) | self.payload_type,
            self.sequence_number,
            timestamp & 0xFFFFFFFF,
            self.ssrc,
        )
        self.sequence_number = (self.sequence_number + 1) & 0xFFFF
        self.packets += 1
        self.octets += len(payload)
        self.last_timestamp = timestamp & 0xFFFFFFFF
        return header + self._extension_block + payload


@attrs.define
class VideoLayerSpec:
    """One simulcast layer (or the only stream) of a synthetic video track."""

    rid: str  # "" when not simulcast
    width: int
    height: int
    bitrate: int  # bits per second
    fps: float = 30.0


def simulcast_layers(width: int, height: int, bitrate: int, simulcast: bool) -> list[VideoLayerSpec]:
    """``f`` at the full size and bitrate, ``h`` at half size and a quarter, ``q`` at a quarter size
    and a sixteenth -- roughly the ladder livekit-client uses; lowest first, as in ``a=simulcast``."""
    if not simulcast:
        return [VideoLayerSpec("", width, height, bitrate)]
    return [
        VideoLayerSpec("q", max(width // 4, 2), max(height // 4, 2), max(bitrate // 16, 16_000)),
        VideoLayerSpec("h", max(width // 2, 2), max(height // 2, 2), max(bitrate // 4, 32_000)),
        VideoLayerSpec("f", width, height, bitrate),
    ]


class Vp8FrameSource:
    """Frames of one layer: sizes follow the bitrate, a key frame every ``keyframe_interval`` s
    (or when asked), each frame split into payloads that keep the RTP packet within 1200 octets."""

    def __init__(self, layer: VideoLayerSpec, header_size: int, keyframe_interval: float = 3.0) -> None:
        self.layer = layer
        self.picture_id = 0
        self.tl0_pic_idx = 0
        self.frames_sent = 0
        self._frames_per_keyframe = max(1, round(keyframe_interval * layer.fps))
        self._keyframe_requested = True  # the first frame is always a key frame
        self._max_payload = MAX_RTP_PACKET - header_size

    def request_keyframe(self) -> None:
        self._keyframe_requested = True

    def next_frame(self, send_time_us: int) -> tuple[bool, list[bytes]]:
        """(is key frame, payloads) for the next frame."""
        keyframe = self._keyframe_requested or self.frames_sent % self._frames_per_keyframe == 0
        self._keyframe_requested = False
        frame_size = max(int(self.layer.bitrate / 8 / self.layer.fps), 60)
        if keyframe:
            frame_size *= 3  # key frames cost several times an inter frame
        header = vp8_frame_header(keyframe, frame_size // 8, self.layer.width, self.layer.height)
        stamp = send_stamp(send_time_us)
        payloads = []
        remaining = frame_size
        start = True
        while True:
            lead = header if start else b""
            room = self._max_payload - VP8_DESCRIPTOR_SIZE - len(lead) - STAMP_SIZE
            filler = min(max(remaining, 0), room)
            descriptor = vp8_descriptor(start, self.picture_id, self.tl0_pic_idx, keyframe)
            payloads.append(descriptor + lead + stamp + bytes(filler))
            remaining -= filler + len(lead) + STAMP_SIZE
            start = False
            if remaining <= 0:
                break
        self.frames_sent += 1
        self.picture_id = (self.picture_id + 1) & 0x7FFF
        self.tl0_pic_idx = (self.tl0_pic_idx + 1) & 0xFF  # every frame is in the base temporal layer
        return keyframe, payloads


def opus_payload(send_time_us: int) -> bytes:
    """One 20 ms Opus-sized payload: TOC octet, send stamp, zero filler."""
    body = AUDIO_PAYLOAD_SIZE - 1 - STAMP_SIZE
    return bytes((OPUS_TOC_CELT_FB_20MS,)) + send_stamp(send_time_us) + bytes(body)


__all__ = [
    "AUDIO_PACKET_INTERVAL",
    "MAX_RTP_PACKET",
    "OPUS_FRAME_SAMPLES",
    "RtpStreamWriter",
    "STAMP_MAGIC",
    "VIDEO_CLOCK_RATE",
    "VideoLayerSpec",
    "Vp8FrameSource",
    "is_vp8_keyframe",
    "opus_payload",
    "read_send_stamp",
    "send_stamp",
    "simulcast_layers",
    "vp8_descriptor",
    "vp8_frame_header",
]
