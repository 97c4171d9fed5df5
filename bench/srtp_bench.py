"""Packets per second through SrtpContext, per profile (``python -m bench.srtp_bench``).

Not a test: numbers depend on the machine. Each figure is the best of three
runs of N packets of a 1200-byte RTP packet (typical video MTU payload) and a
100-byte RTCP packet.
"""

from __future__ import annotations

import os
import struct
import time

from rtp.srtp import SrtpContext
from rtp.srtp_profiles import SrtpProfile

N = 50_000


def _best_rate(fn, items) -> float:
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        for item in items:
            fn(item)
        best = max(best, len(items) / (time.perf_counter() - start))
    return best


def main() -> None:
    for profile in SrtpProfile:
        material = os.urandom(profile.keying_material_length)
        sender = SrtpContext.from_keying_material(profile, material, is_client=True)
        rtp = [struct.pack("!BBHII", 0x80, 96, i & 0xFFFF, i, 0x1234) + b"\x55" * 1188 for i in range(N)]
        rtcp = struct.pack("!BBHI", 0x81, 201, 24, 0x1234) + bytes(92)

        protect = _best_rate(sender.protect_rtp, rtp)
        # A fresh sender: replaying seq 0.. after 49999 would look like a rollover.
        fresh_sender = SrtpContext.from_keying_material(profile, material, is_client=True)
        protected = [fresh_sender.protect_rtp(p) for p in rtp]
        # Each run needs fresh indices on the receiver, so time one pass per new context.
        unprotect = 0.0
        for _ in range(3):
            fresh = SrtpContext.from_keying_material(profile, material, is_client=False)
            start = time.perf_counter()
            for p in protected:
                fresh.unprotect_rtp(p)
            unprotect = max(unprotect, N / (time.perf_counter() - start))
        rtcp_rate = _best_rate(sender.protect_rtcp, [rtcp] * (N // 5))
        print(
            f"{profile.name:24s} protect_rtp {protect / 1e3:7.1f}k/s  "
            f"unprotect_rtp {unprotect / 1e3:7.1f}k/s  protect_rtcp {rtcp_rate / 1e3:7.1f}k/s  (1200 B RTP)"
        )


if __name__ == "__main__":
    main()
