"""Micro-benchmark of the RTP forwarder fast path (not a test).

Run: ``python -m bench.rtp_fastpath``. Prints operations per second for the
per-packet functions a forwarder calls, next to a full :func:`rtp.packet.parse`
for scale.
"""

from __future__ import annotations

import time
import timeit

from rtp.demux import classify
from rtp.packet import (
    RtpPacket,
    find_extension,
    parse,
    read_sequence_number,
    read_ssrc,
    rewrite_header,
)
from rtp.rtx_buffer import RetransmissionBuffer


def _packet(payload_size: int) -> bytes:
    # Typical browser video packet: mid, abs-send-time, transport-cc seq in a one-byte block.
    return RtpPacket(
        payload_type=96,
        sequence_number=4242,
        timestamp=123456789,
        ssrc=0x11223344,
        marker=True,
        extensions={4: b"0", 2: b"\x01\x02\x03", 3: b"\x00\x2a"},
        payload=bytes(payload_size),
    ).serialize()


def _rate(stmt, number: int) -> float:
    best = min(timeit.repeat(stmt, number=number, repeat=5, timer=time.perf_counter))
    return number / best


def main() -> None:
    number = 200_000
    for size in (100, 1100):
        data = _packet(size)
        buf = bytearray(data)
        rtx = RetransmissionBuffer(512)
        counter = iter(range(1 << 62))
        results = {
            "classify (RFC 7983)": lambda: classify(data),
            "read_ssrc + read_sequence_number": lambda: (read_ssrc(data), read_sequence_number(data)),
            "rewrite_header (in place)": lambda: rewrite_header(buf, 0x55667788, 17, 99999, 100),
            "find_extension (3rd element)": lambda: find_extension(data, 3),
            "rtx_buffer put": lambda: rtx.put(next(counter) & 0xFFFF, data),
            "parse (full RtpPacket)": lambda: parse(data),
        }
        print(f"packet of {len(data)} bytes:")
        for name, fn in results.items():
            n = number if "parse" not in name else number // 4
            print(f"  {name:<36} {_rate(fn, n) / 1e6:6.2f} M/s")


if __name__ == "__main__":
    main()
