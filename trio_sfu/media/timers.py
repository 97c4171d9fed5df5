"""One participant's timers on one task: sleep until the earliest deadline, then let each part act.

Each part of a participant's media that has timers (its peer sessions, each with every protocol
timer of its peer behind one deadline; its published tracks' receivers; its down tracks) is
`Timed`: it names its next deadline and acts when woken. `TimerLoop.run` sleeps until the
earliest of them (and at least every `at_least_every` seconds, for the RTCP reports), then calls
every part's `handle_timeout` in the order given; each part checks for itself what is due. A
part whose deadline moves earlier between two wake-ups (a datagram started a retransmission
timer, an arrival armed transport-cc feedback, a packet loss scheduled a NACK) calls `wake_by`:
it is cheap enough for the media hot path (a comparison, and an Event only when the deadline is
earlier).

The verbs are `rtp/`'s: a `PeerSession` (rtp.peer_session), with `next_deadline()` and
`handle_timeout(now)`, is a `Timed` part as it stands.
"""

from __future__ import annotations

import math
from typing import Optional, Protocol, Sequence

import trio


class Timed(Protocol):
    """A part with timers, as the loop sees it."""

    def next_deadline(self) -> Optional[float]:
        """When it next has something to do (trio's clock), or None for nothing scheduled."""

    def handle_timeout(self, now: float) -> None:
        """Do what is due at `now` (the loop may wake early: do nothing that is not due)."""


class TimerLoop:
    """Drives a fixed set of `Timed` parts from one task."""

    def __init__(self, at_least_every: float) -> None:
        self.at_least_every = at_least_every
        self._wake = trio.Event()
        # The deadline the running loop sleeps until (inf before it runs: any deadline wakes it).
        self._armed = math.inf

    @property
    def armed(self) -> float:
        """The time the running loop will wake at the latest (inf before it runs)."""
        return self._armed

    def wake_by(self, deadline: Optional[float]) -> None:
        """A part's deadline may have moved earlier: make the loop wake no later than it."""
        if deadline is not None and deadline < self._armed:
            self._armed = deadline
            self._wake.set()

    @staticmethod
    def earliest(parts: Sequence[Timed], latest: float) -> float:
        """The earliest deadline of `parts`, no later than `latest`."""
        deadline = latest
        for part in parts:
            t = part.next_deadline()
            if t is not None and t < deadline:
                deadline = t
        return deadline

    async def run(self, parts: Sequence[Timed]) -> None:
        """Serve the parts' timers until cancelled, in the order `parts` lists them."""
        while True:
            self._wake = trio.Event()
            self._armed = self.earliest(parts, trio.current_time() + self.at_least_every)
            with trio.move_on_at(self._armed):
                await self._wake.wait()
            now = trio.current_time()
            for part in parts:
                part.handle_timeout(now)


__all__ = ["Timed", "TimerLoop"]
