"""Tasks that feed a LocalPublication with synthetic media at real-time pace (see ``synthetic.py``)."""

from __future__ import annotations

import math
import secrets
import time

import trio

from trio_sfu.client.publisher import LocalPublication
from trio_sfu.client.synthetic import (
    AUDIO_PACKET_INTERVAL,
    OPUS_FRAME_SAMPLES,
    VIDEO_CLOCK_RATE,
    Vp8FrameSource,
    opus_payload,
)


def _wall_us() -> int:
    return time.time_ns() // 1000


async def send_synthetic_audio(publication: LocalPublication, duration: float = math.inf) -> None:
    """A 20 ms Opus-sized packet every 20 ms for ``duration`` seconds (after the PC is ready)."""
    await publication.wait_ready()
    timestamp = secrets.randbits(32)
    start = trio.current_time()
    due = start
    while due - start < duration:
        publication.send_rtp(opus_payload(_wall_us()), timestamp=timestamp)
        timestamp = (timestamp + OPUS_FRAME_SAMPLES) & 0xFFFFFFFF
        due += AUDIO_PACKET_INTERVAL
        await trio.sleep_until(due)


async def send_synthetic_video(publication: LocalPublication, duration: float = math.inf,
                               keyframe_interval: float = 3.0) -> None:
    """VP8-framed frames on every layer at its fps and bitrate, key frames every
    ``keyframe_interval`` s and whenever the SFU sends a PLI/FIR for a layer."""
    await publication.wait_ready()
    sources = {
        layer.rid: Vp8FrameSource(layer, publication.header_size(layer.rid), keyframe_interval)
        for layer in publication.layers
    }
    fps = max(layer.fps for layer in publication.layers)
    frame_interval = 1.0 / fps
    ticks_per_frame = round(VIDEO_CLOCK_RATE / fps)
    timestamp = secrets.randbits(32)
    start = trio.current_time()
    due = start
    while due - start < duration:
        now_us = _wall_us()
        for rid, source in sources.items():
            if publication.take_keyframe_request(rid):
                source.request_keyframe()
            _, payloads = source.next_frame(now_us)
            last = len(payloads) - 1
            for index, payload in enumerate(payloads):
                publication.send_rtp(payload, timestamp=timestamp, marker=index == last, rid=rid)
        timestamp = (timestamp + ticks_per_frame) & 0xFFFFFFFF
        due += frame_interval
        await trio.sleep_until(due)


__all__ = ["send_synthetic_audio", "send_synthetic_video"]
