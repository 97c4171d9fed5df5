"""RFC 4571 framing: STUN, DTLS, RTP and RTCP packets over a TCP byte stream (ICE-TCP, RFC 6544).

Each packet travels behind a 2-byte big-endian length. :class:`FrameDecoder` turns the bytes a
connection delivers, in whatever pieces they arrive, back into packets; :func:`encode_frame`
puts the prefix in front of one packet.

The decoder never holds more than one frame's worth of bytes: a length above its ``max_frame``
cap breaks the stream for good (there is no resynchronising a length-prefixed stream once a
prefix cannot be trusted), and the owner closes the connection. Zero-length frames carry no
packet and are skipped and counted. Like every machine in ``rtp/``, ``receive_data`` never
raises for any bytes.
"""

from __future__ import annotations

import attrs

__all__ = ["FrameDecoder", "FrameDecoderCounters", "MAX_FRAME", "encode_frame"]

#: The largest length RFC 4571's 16-bit prefix can express.
MAX_FRAME = 0xFFFF


@attrs.define
class FrameDecoderCounters:
    frames: int = 0
    #: A length prefix above the cap: the stream is broken from there on.
    oversized: int = 0
    #: Zero-length frames (nothing to deliver).
    empty: int = 0
    #: Bytes received after the stream broke, ignored.
    after_broken: int = 0


class FrameDecoder:
    """Bytes of one TCP connection in, whole packets out."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        if not 1 <= max_frame <= MAX_FRAME:
            raise ValueError(f"max_frame must be 1-{MAX_FRAME}, got {max_frame}")
        self.max_frame = max_frame
        self.counters = FrameDecoderCounters()
        #: Set once a length prefix exceeded the cap; the rest of the stream is ignored.
        self.broken = False
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes held for a frame not yet complete (at most 2 + max_frame - 1)."""
        return len(self._buffer)

    def receive_data(self, data: bytes) -> list[bytes]:
        """Every frame ``data`` completes, in order. After a broken prefix: the frames before
        it, then nothing ever again."""
        if self.broken:
            self.counters.after_broken += len(data)
            return []
        buffer = self._buffer
        buffer += data
        frames: list[bytes] = []
        start = 0
        end = len(buffer)
        counters = self.counters
        while end - start >= 2:
            length = (buffer[start] << 8) | buffer[start + 1]
            if length > self.max_frame:
                self.broken = True
                counters.oversized += 1
                counters.after_broken += end - start - 2
                buffer.clear()
                return frames
            if end - start - 2 < length:
                break
            if length == 0:
                counters.empty += 1
            else:
                frames.append(bytes(buffer[start + 2:start + 2 + length]))
                counters.frames += 1
            start += 2 + length
        if start:
            del buffer[:start]
        return frames


def encode_frame(packet: bytes) -> bytes:
    """``packet`` behind its RFC 4571 length. Raises ValueError for an empty packet or one
    longer than the prefix can say (the caller's bug: nothing we send is that large)."""
    length = len(packet)
    if not 0 < length <= MAX_FRAME:
        raise ValueError(f"an RFC 4571 frame carries 1-{MAX_FRAME} bytes, not {length}")
    return length.to_bytes(2, "big") + packet
