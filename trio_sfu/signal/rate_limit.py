"""Per-participant rate limits on signal requests, by kind: token buckets, then a disconnect.

Each SignalRequest kind has its own bucket, sized well above what the LiveKit SDKs send (the
table says why), so a real client never meets it. A request that finds its bucket empty is
dropped (the caller answers LIMIT_EXCEEDED and counts it) and costs a strike; strikes refill
slowly, so a client that overshoots now and then is only throttled, while one that keeps
flooding runs out of strikes and is disconnected. The flood is the sender's problem alone:
nothing here touches anyone else's queue.

Time is whatever `now` the caller passes (`trio.current_time()` in the server), so the limiter
is deterministic under a MockClock.
"""

from __future__ import annotations

import enum

import attrs


@attrs.frozen
class Rate:
    """A token bucket's shape: `burst` requests at once, refilled at `per_second`."""

    burst: float
    per_second: float


@attrs.define
class TokenBucket:
    rate: Rate
    tokens: float
    updated: float

    @classmethod
    def full(cls, rate: Rate, now: float) -> "TokenBucket":
        return cls(rate, rate.burst, now)

    def take(self, now: float) -> bool:
        """Take one token if there is one."""
        elapsed = max(now - self.updated, 0.0)
        self.tokens = min(self.rate.burst, self.tokens + elapsed * self.rate.per_second)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


# Per SignalRequest kind. What the SDKs send, and why each bound is far above it:
#  - ping / ping_req: one each per ping interval (5 s).
#  - add_track: one per published track, all at once when an app publishes (at most 64 succeed).
#  - mute: a user's toggles, and the SDK re-sending state after a reconnect.
#  - update_metadata: app or agent state changes (livekit-agents sets attributes per turn).
#  - subscription / track_setting: adaptive stream sends one per remote video track whenever
#    elements resize or change visibility; a grid of many tiles re-laying out sends a burst.
#  - offer / answer: one per renegotiation (publishing, unpublishing, new subscriptions).
#  - trickle: every local candidate of both PCs (tens at connect, more on network changes).
RATES: dict[str, Rate] = {
    "ping": Rate(20, 5),
    "ping_req": Rate(20, 5),
    "add_track": Rate(100, 10),
    "mute": Rate(60, 10),
    "update_metadata": Rate(60, 10),
    "subscription": Rate(300, 60),
    "track_setting": Rate(600, 120),
    "offer": Rate(50, 10),
    "answer": Rate(50, 10),
    "trickle": Rate(300, 50),
    "leave": Rate(5, 1),
}
# Kinds without an entry (sync_state, simulate, subscription_permission, unknown ones, ...).
DEFAULT_RATE = Rate(60, 10)
# Requests a participant may have refused for rate before it is disconnected; refilled slowly.
STRIKES = Rate(50, 1)


class Verdict(enum.Enum):
    ADMIT = "admit"
    THROTTLE = "throttle"  # drop this request, the session goes on
    DISCONNECT = "disconnect"  # out of strikes: end the session


class RequestRateLimiter:
    """One participant's buckets (created on first use of a kind) and its strikes."""

    def __init__(self, now: float, rates: dict[str, Rate] | None = None,
                 default: Rate = DEFAULT_RATE, strikes: Rate = STRIKES) -> None:
        self._rates = RATES if rates is None else rates
        self._default = default
        self._buckets: dict[str, TokenBucket] = {}
        self._strikes = TokenBucket.full(strikes, now)
        self.throttled = 0

    def check(self, kind: str | None, now: float) -> Verdict:
        # Unknown kinds share one bucket, so a client cannot mint new buckets by name.
        key = kind if kind in self._rates else ""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket.full(self._rates.get(key, self._default), now)
        if bucket.take(now):
            return Verdict.ADMIT
        self.throttled += 1
        return Verdict.THROTTLE if self._strikes.take(now) else Verdict.DISCONNECT
