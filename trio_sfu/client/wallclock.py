"""The wall clock as the protocols carry it: NTP timestamps in RTCP, milliseconds in LiveKit's pings.

Everything else in the client runs on Trio's clock (``trio.current_time()``); these two are the
only readings of the system clock, because the peer compares them with its own.
"""

from __future__ import annotations

import time

_NTP_EPOCH_OFFSET = 2208988800  # 1900-01-01 to 1970-01-01, seconds


def ntp_now() -> int:
    """The wall clock as a 64-bit NTP timestamp (RFC 3550 §4)."""
    seconds = time.time() + _NTP_EPOCH_OFFSET
    return (int(seconds) << 32) | int((seconds % 1) * (1 << 32))


def wall_ms() -> int:
    """The wall clock in milliseconds, as LiveKit's pings carry it."""
    return int(time.time() * 1000)


__all__ = ["ntp_now", "wall_ms"]
