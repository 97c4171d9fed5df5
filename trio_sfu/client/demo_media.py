"""Demo media for `trio-sfu join --publish-demo`: a moving picture in VP8 and a tone in Opus.

Unlike `synthetic.py` (shaped like media where an SFU looks, for load tests) these are real
encodings a browser or SDK decodes and shows: the picture is drawn with numpy (scrolling colour
bands, a bouncing square, a bar that fills once a second) and encoded with libvpx, the tone (A4,
pulsing once a second, so audio-level meters move) with libopus, both through PyAV. PyAV and
numpy are optional: `load_codecs` raises DemoMediaUnavailable without them, and the caller falls
back to the synthetic senders. The encoders run in the publisher's task: at the demo's size
libvpx in realtime mode takes a few milliseconds a frame.

VP8 goes into RTP as RFC 7741 says: the frame split into payloads that keep each packet within
MAX_RTP_PACKET, each behind a payload descriptor (15-bit PictureID, TL0PICIDX, TID 0), the start
bit on the first, the marker on the last.
"""

from __future__ import annotations

import fractions
import math
import secrets
from types import ModuleType
from typing import Any

import trio

from trio_sfu.client.publisher import LocalPublication
from trio_sfu.client.synthetic import MAX_RTP_PACKET, OPUS_FRAME_SAMPLES, VIDEO_CLOCK_RATE, vp8_descriptor

AUDIO_SAMPLE_RATE = 48000
AUDIO_FRAME_SECONDS = OPUS_FRAME_SAMPLES / AUDIO_SAMPLE_RATE
TONE_HZ = 440.0
DEFAULT_KEYFRAME_INTERVAL = 3.0
_DESCRIPTOR_SIZE = len(vp8_descriptor(True, 0, 0, True))


class DemoMediaUnavailable(Exception):
    """PyAV (with libvpx and libopus) or numpy is not installed."""


def load_codecs() -> tuple[ModuleType, ModuleType]:
    """(av, numpy), or DemoMediaUnavailable saying what to install."""
    try:
        import av
        import numpy
    except ImportError as exc:
        raise DemoMediaUnavailable(f"{exc.name} is not installed (pip install av numpy)") from None
    for codec in ("libvpx", "libopus"):
        try:
            av.Codec(codec, "w")
        except Exception:
            raise DemoMediaUnavailable(f"this PyAV build has no {codec} encoder") from None
    return av, numpy


class MovingPicture:
    """Frames of a test picture that moves, as planar YUV 4:2:0 (what VP8 encodes)."""

    def __init__(self, numpy: ModuleType, width: int, height: int) -> None:
        if width < 16 or height < 16 or width % 2 or height % 2:
            raise ValueError(f"the demo picture needs an even size of at least 16x16, not {width}x{height}")
        self._np = numpy
        self.width = width
        self.height = height
        self._x = numpy.arange(width, dtype=numpy.float32)[None, :] / width
        self._y = numpy.arange(height, dtype=numpy.float32)[:, None] / height
        self._cx = numpy.arange(width // 2, dtype=numpy.float32)[None, :] / (width // 2)
        self._cy = numpy.arange(height // 2, dtype=numpy.float32)[:, None] / (height // 2)

    def frame(self, t: float) -> Any:
        """The picture at `t` seconds: a (height * 3 / 2, width) uint8 array, Y then U then V."""
        np = self._np
        w, h = self.width, self.height
        luma = 60 + 100 * (0.5 + 0.5 * np.sin(2 * math.pi * (self._x * 2 - t * 0.5) + self._y * 3))
        # A square bouncing off the edges, white with a dark rim.
        side = max(min(w, h) // 5, 4)
        px = _bounce(t * 0.31, w - side)
        py = _bounce(t * 0.23, h - side)
        luma[py:py + side, px:px + side] = 20
        rim = max(side // 10, 1)
        luma[py + rim:py + side - rim, px + rim:px + side - rim] = 235
        # A bar along the bottom that fills once a second.
        bar = max(h // 30, 2)
        luma[h - bar:, :] = 16
        luma[h - bar:, : int(w * (t % 1.0))] = 200
        u = 128 + 80 * np.sin(2 * math.pi * (self._cx + t * 0.2)) * np.ones_like(self._cy)
        v = 128 + 80 * np.cos(2 * math.pi * (self._cy - t * 0.15)) * np.ones_like(self._cx)
        chroma = np.concatenate([u, v], axis=0).reshape(h // 2, w)
        return np.concatenate([luma, chroma], axis=0).clip(0, 255).astype(np.uint8)


def _bounce(position: float, span: int) -> int:
    """A coordinate that goes 0 → span → 0 as `position` goes 0 → 1 → 2 (and so on)."""
    if span <= 0:
        return 0
    phase = position % 2.0
    return int((phase if phase < 1.0 else 2.0 - phase) * span)


class Vp8Encoder:
    """libvpx through PyAV, tuned as a real-time sender: no look-ahead, key frames when asked."""

    def __init__(self, av: ModuleType, width: int, height: int, fps: int, bitrate: int,
                 keyframe_interval: float = DEFAULT_KEYFRAME_INTERVAL) -> None:
        self._av = av
        codec = av.CodecContext.create("libvpx", "w")
        codec.width = width
        codec.height = height
        codec.pix_fmt = "yuv420p"
        codec.framerate = fractions.Fraction(fps, 1)
        codec.time_base = fractions.Fraction(1, fps)
        codec.bit_rate = bitrate
        codec.gop_size = max(int(fps * keyframe_interval), 1)
        codec.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0", "auto-alt-ref": "0"}
        self._codec = codec
        self._index = 0

    def encode(self, image: Any, keyframe: bool) -> list[tuple[bytes, bool]]:
        """(frame, is a key frame) for each frame the encoder gives back for `image`."""
        frame = self._av.VideoFrame.from_ndarray(image, format="yuv420p")
        frame.pts = self._index
        self._index += 1
        if keyframe:
            frame.pict_type = self._av.video.frame.PictureType.I
        return [(bytes(packet), bool(packet.is_keyframe)) for packet in self._codec.encode(frame)]


def vp8_payloads(frame: bytes, *, keyframe: bool, picture_id: int, tl0_pic_idx: int,
                 max_payload: int) -> list[bytes]:
    """RFC 7741 payloads of one encoded VP8 frame, each at most `max_payload` octets."""
    room = max_payload - _DESCRIPTOR_SIZE
    if room <= 0:
        raise ValueError(f"no room for VP8 data in a {max_payload}-octet payload")
    payloads = []
    for offset in range(0, max(len(frame), 1), room):
        descriptor = vp8_descriptor(offset == 0, picture_id, tl0_pic_idx, keyframe)
        payloads.append(descriptor + frame[offset:offset + room])
    return payloads


class ToneEncoder:
    """A pulsing A4 tone in 20 ms Opus frames."""

    def __init__(self, av: ModuleType, numpy: ModuleType, frequency: float = TONE_HZ, bitrate: int = 32000) -> None:
        self._av = av
        self._np = numpy
        codec = av.CodecContext.create("libopus", "w")
        codec.sample_rate = AUDIO_SAMPLE_RATE
        codec.format = "s16"
        codec.layout = "mono"
        codec.bit_rate = bitrate
        codec.time_base = fractions.Fraction(1, AUDIO_SAMPLE_RATE)
        self._codec = codec
        self.frequency = frequency
        self._samples = 0

    def next_packets(self) -> list[bytes]:
        """Opus packets for the next 20 ms of the tone (the encoder may hold the first back)."""
        np = self._np
        n = np.arange(self._samples, self._samples + OPUS_FRAME_SAMPLES, dtype=np.float64)
        t = n / AUDIO_SAMPLE_RATE
        loudness = 0.05 + 0.25 * (t % 1.0 < 0.4)  # louder for 0.4 s of every second
        wave = (loudness * np.sin(2 * math.pi * self.frequency * t) * 32767).astype(np.int16)
        frame = self._av.AudioFrame.from_ndarray(wave.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = AUDIO_SAMPLE_RATE
        frame.pts = self._samples
        self._samples += OPUS_FRAME_SAMPLES
        return [bytes(packet) for packet in self._codec.encode(frame)]


async def send_demo_video(publication: LocalPublication, av: ModuleType, numpy: ModuleType, *,
                          fps: int = 20, keyframe_interval: float = DEFAULT_KEYFRAME_INTERVAL) -> None:
    """The moving picture at `fps` on `publication` (one layer, its size and bitrate), until cancelled;
    a key frame every `keyframe_interval` s and whenever the SFU asks (PLI/FIR)."""
    await publication.wait_ready()
    layer = publication.layers[0]
    picture = MovingPicture(numpy, layer.width, layer.height)
    encoder = Vp8Encoder(av, layer.width, layer.height, fps, layer.bitrate, keyframe_interval)
    frame_interval = 1.0 / fps
    ticks_per_frame = round(VIDEO_CLOCK_RATE / fps)
    timestamp = secrets.randbits(32)
    picture_id = secrets.randbits(15)
    tl0_pic_idx = 0
    start = due = trio.current_time()
    while True:
        keyframe = publication.take_keyframe_request(layer.rid)
        max_payload = MAX_RTP_PACKET - publication.header_size(layer.rid)
        for data, is_key in encoder.encode(picture.frame(due - start), keyframe):
            payloads = vp8_payloads(data, keyframe=is_key, picture_id=picture_id, tl0_pic_idx=tl0_pic_idx,
                                    max_payload=max_payload)
            last = len(payloads) - 1
            for index, payload in enumerate(payloads):
                publication.send_rtp(payload, timestamp=timestamp, marker=index == last, rid=layer.rid)
            picture_id = (picture_id + 1) & 0x7FFF
            tl0_pic_idx = (tl0_pic_idx + 1) & 0xFF
        timestamp = (timestamp + ticks_per_frame) & 0xFFFFFFFF
        due += frame_interval
        if due < trio.current_time() - 1.0:
            due = trio.current_time()  # fell far behind (a stalled machine): skip, do not burst
        await trio.sleep_until(due)


async def send_demo_audio(publication: LocalPublication, av: ModuleType, numpy: ModuleType, *,
                          frequency: float = TONE_HZ) -> None:
    """The tone on `publication`, a packet every 20 ms, until cancelled."""
    await publication.wait_ready()
    encoder = ToneEncoder(av, numpy, frequency)
    timestamp = secrets.randbits(32)
    due = trio.current_time()
    while True:
        for payload in encoder.next_packets():
            publication.send_rtp(payload, timestamp=timestamp)
            timestamp = (timestamp + OPUS_FRAME_SAMPLES) & 0xFFFFFFFF
        due += AUDIO_FRAME_SECONDS
        if due < trio.current_time() - 1.0:
            due = trio.current_time()
        await trio.sleep_until(due)


__all__ = ["DemoMediaUnavailable", "MovingPicture", "ToneEncoder", "Vp8Encoder", "load_codecs",
           "send_demo_audio", "send_demo_video", "vp8_payloads"]
