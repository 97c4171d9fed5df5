"""When a subscriber's jitter buffer needs a floor, and how high: the playout-delay policy.

A libwebrtc receiver sizes its jitter buffer from the delay variation of the frames that came in
time. Frames a retransmission completed are left out of that measure; what it adds instead is a
round-trip time — which a receive-only peer (every subscriber PC) never measures, RTT coming from
the reports on what it sends. So its buffer stays at some 30 ms while, through an SFU, a packet
lost on the subscriber's link is repaired one round trip later and one lost on the publisher's
link two. Each repaired frame then comes after the time the receiver meant to render it:
Chromium skips it or the frames it holds up (`framesDropped`), the `livekit` SDK's renderer
drops all but the newest of the frames that are due together. At 5 % loss on both links that
cost 2-5 frames a second of 30.

The SFU can raise that floor with the playout-delay header extension (its minimum delay; LiveKit
sends it in rooms configured for it). It costs latency, so only where repairs happen:
`PlayoutDelayPolicy` judges running counts over `INTERVAL`-long steps, raises the floor to
`repair_ms` once a step lost (or needed to repair) `RAISE_AT` or more, and lifts it after
`LIFT_AFTER` seconds of steps below `LIFT_BELOW`. One judges each subscriber's transport-wide
feedback (trio_sfu.media.bandwidth), one each publisher's packets that needed a resend
(TrackReceiver.playout_floor_ms), and a down track carries the higher floor. Sans-IO: counts
and time in, the floor out; `DownTrack.set_playout_delay` puts it in the packets.
"""

from __future__ import annotations

from typing import Optional

#: How long a step of feedback is judged over, and the fewest packets that make a judgement.
INTERVAL = 2.0
MIN_PACKETS = 100
#: A step that lost this share raises the floor.
RAISE_AT = 0.02
#: The floor is lifted after LIFT_AFTER seconds of steps that all lost less than LIFT_BELOW.
LIFT_BELOW = 0.005
LIFT_AFTER = 20.0
#: The floor while repairing: a repair of a packet lost upstream takes two round trips through
#: the SFU (subscriber → SFU → publisher and back); 120 ms covers them at ~25 ms one way.
DEFAULT_REPAIR_MS = 120
#: The maximum the element carries: libwebrtc's own ceiling (10 s), so it never caps a buffer
#: the receiver itself finds it needs.
DEFAULT_MAX_MS = 10_000


class PlayoutDelayPolicy:
    """One subscriber's floor (`min_ms`; 0: none asked for) from its feedback's counts."""

    def __init__(self, repair_ms: int = DEFAULT_REPAIR_MS, max_ms: int = DEFAULT_MAX_MS) -> None:
        if not 0 < repair_ms <= max_ms:
            raise ValueError(f"playout delay floor {repair_ms} ms outside 0 < floor ≤ {max_ms}")
        self.repair_ms = repair_ms
        self.max_ms = max_ms
        self.min_ms = 0
        self.raised = 0  # how often the floor went up, and down
        self.lifted = 0
        self.last_share: Optional[float] = None  # the share lost in the last step judged
        self._step_start: Optional[float] = None
        self._step_counts = (0, 0)
        self._quiet_since: Optional[float] = None

    def update(self, acked: int, lost: int, now: float) -> bool:
        """`acked` and `lost`: the feedback's running totals of packets received and lost (a
        loss taken back no longer counted). True when `min_ms` changed."""
        if self._step_start is None:
            self._step_start, self._step_counts = now, (acked, lost)
            return False
        if now - self._step_start < INTERVAL:
            return False
        got = acked - self._step_counts[0]
        missed = max(0, lost - self._step_counts[1])
        self._step_start, self._step_counts = now, (acked, lost)
        total = got + missed
        if total < MIN_PACKETS:
            return False  # too little to judge: the floor stays where it is
        share = self.last_share = missed / total
        if share >= RAISE_AT:
            self._quiet_since = None
            if self.min_ms != self.repair_ms:
                self.min_ms = self.repair_ms
                self.raised += 1
                return True
            return False
        if share >= LIFT_BELOW or not self.min_ms:
            self._quiet_since = None
            return False
        if self._quiet_since is None:
            self._quiet_since = now - INTERVAL  # the quiet step just judged counts
        if now - self._quiet_since >= LIFT_AFTER:
            self._quiet_since = None
            self.min_ms = 0
            self.lifted += 1
            return True
        return False


__all__ = ["DEFAULT_MAX_MS", "DEFAULT_REPAIR_MS", "PlayoutDelayPolicy"]
