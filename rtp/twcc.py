"""The receive side of transport-wide congestion control: arrival feedback for the sender.

A sender that negotiated the transport-wide sequence number header extension
(draft-holmer-rmcat-transport-wide-cc-extensions-01) runs its bandwidth estimator on the
receiver's reports of when each of those packets arrived. Without them a libwebrtc sender has no
delay signal and keeps lowering its estimate, so a publisher's video decays to its minimum
bitrate. `TransportFeedbackRecorder` notes each arrival and, every `interval`, gives the RTCP
transport-cc feedback packets (rtp.rtcp.TransportCc) that report them.

Reordering: a report covers every seq up to the newest arrival, so a packet overtaken on the
way is first reported lost. When it arrives within `REORDER_WINDOW` of the arrivals around it,
the next report starts again from it and reports it received (as libwebrtc's receiver does).
Better still, a report does not name a hole until `REORDER_HOLD` after the packets that
revealed it: a sender (libwebrtc's transport feedback adapter) counts a packet reported lost as
a loss even when a later report says it arrived, so on a link with 20 ± 5 ms of jitter every
reordered packet reported lost cut the publisher's estimate and switched off its top
simulcast layer, on a link that lost nothing.

Sans-IO: `record(seq, now)` on each packet, `next_deadline()` / `packets_to_send(now)` for the reports.
"""

from __future__ import annotations

from typing import Optional

from rtp.rtcp import TWCC_DELTA_UNIT_US, TWCC_REFERENCE_UNIT_US, TransportCc
from rtp.seqnum import SequenceUnwrapper

#: A feedback packet covers at most this many sequence numbers (libwebrtc keeps them small too:
#: the sender must not wait for one huge report, and a report must fit a datagram).
MAX_STATUS_PER_FEEDBACK = 1000
#: Arrivals kept while waiting for the next report; beyond that, a report is due at once.
MAX_PENDING = 4000
#: A receive delta must fit 16 bits of 250 µs; a longer pause starts a new report.
_MAX_DELTA_US = 0x7FFF * TWCC_DELTA_UNIT_US
_MIN_DELTA_US = -0x8000 * TWCC_DELTA_UNIT_US
#: Reported arrivals are kept this long (seconds) so a late packet can be reported again with them.
REORDER_WINDOW = 0.5
#: A hole whose later packets all arrived less than this long ago (seconds) is not reported yet:
#: it is more likely reordering than loss. The report stops before it; the next one tells.
REORDER_HOLD = 0.03


class TransportFeedbackRecorder:
    """Arrival times by transport-wide sequence number, reported every `interval` seconds."""

    def __init__(self, sender_ssrc: int, interval: float = 0.1) -> None:
        self.sender_ssrc = sender_ssrc
        self.interval = interval
        self.media_ssrc = 0
        self._unwrap = SequenceUnwrapper()
        self._arrivals: dict[int, int] = {}  # extended seq -> arrival in µs on our clock
        self._next_seq: Optional[int] = None  # the first extended seq the next report covers
        self._floor: Optional[int] = None  # below this, arrivals are forgotten: too late to report
        self._due: Optional[float] = None
        self._feedback_count = 0
        self.reports_sent = 0
        self.packets_recorded = 0
        self.late_dropped = 0  # arrived after the reorder window had moved past their seq
        self.late_reported = 0  # reported lost, then arrived in time to be reported again

    def record(self, seq: int, media_ssrc: int, now: float) -> None:
        extended = self._unwrap.unwrap(seq & 0xFFFF)
        if self._next_seq is None:
            self._next_seq = self._floor = extended
        elif extended < self._next_seq:
            if extended in self._arrivals:
                return  # a duplicate of one reported already
            if self.reports_sent == 0:
                self._floor = extended  # reordered before the first report: nothing to repeat
            elif extended < self._floor:  # type: ignore[operator]
                self.late_dropped += 1
                return
            else:
                self.late_reported += 1
            self._next_seq = extended  # the next report starts (again) here
        self._arrivals.setdefault(extended, int(now * 1_000_000))
        self.media_ssrc = media_ssrc
        self.packets_recorded += 1
        if self._due is None:
            self._due = now + self.interval
        if len(self._arrivals) >= MAX_PENDING:
            self._due = now

    def next_deadline(self) -> Optional[float]:
        return self._due

    def packets_to_send(self, now: float) -> list[bytes]:
        """The reports due at `now` (serialized RTCP), covering every seq up to the newest
        (short of a hole that may still be reordering: `REORDER_HOLD`)."""
        if self._due is None or now < self._due or not self._arrivals or self._next_seq is None:
            return []
        self._due = None
        out: list[bytes] = []
        received_newest = max(self._arrivals)
        newest = self._reportable_up_to(received_newest, now)
        if newest < self._next_seq:
            self._due = now + REORDER_HOLD
            return out
        seq = self._next_seq
        while seq <= newest:
            # The first arrival at or after `seq` anchors this report's reference time; the
            # losses before it are reported too, unless there are too many to be worth it.
            anchor = seq
            while anchor not in self._arrivals:
                anchor += 1
            if anchor - seq >= MAX_STATUS_PER_FEEDBACK:
                seq = anchor
            reference = self._arrivals[anchor] // TWCC_REFERENCE_UNIT_US
            clock = reference * TWCC_REFERENCE_UNIT_US
            packets: list[tuple[int, bool, Optional[int]]] = []
            start = seq
            while seq <= newest and seq - start < MAX_STATUS_PER_FEEDBACK:
                arrival = self._arrivals.get(seq)
                if arrival is None:
                    packets.append((seq & 0xFFFF, False, None))
                else:
                    # Round like the report will, so rounding errors never accumulate.
                    delta = arrival - clock
                    ticks = (delta + TWCC_DELTA_UNIT_US // 2) // TWCC_DELTA_UNIT_US
                    if packets and not _MIN_DELTA_US <= ticks * TWCC_DELTA_UNIT_US <= _MAX_DELTA_US:
                        break  # too far from the previous arrival: the next report starts here
                    packets.append((seq & 0xFFFF, True, ticks * TWCC_DELTA_UNIT_US))
                    clock += ticks * TWCC_DELTA_UNIT_US
                seq += 1
            while packets and not packets[-1][1]:
                packets.pop()  # never end a report on losses: the next packet may still come
                seq -= 1
            report = TransportCc.build(self.sender_ssrc, self.media_ssrc, reference & 0xFFFFFF,
                                       self._feedback_count & 0xFF, packets)
            self._feedback_count += 1
            out.append(report.serialize())
            self.reports_sent += 1
        self._next_seq = seq
        # Keep what was reported for the reorder window, so a late packet is reported with it.
        keep_after = int((now - REORDER_WINDOW) * 1_000_000)
        for reported in [s for s, at in self._arrivals.items() if s < seq and at < keep_after]:
            del self._arrivals[reported]
        self._floor = min((s for s in self._arrivals if s < seq), default=seq)
        if any(s >= seq for s in self._arrivals):
            # Held back behind a young hole: look again once it is old enough to call.
            self._due = now + (REORDER_HOLD if newest < received_newest else self.interval)
        return out

    def _reportable_up_to(self, newest: int, now: float) -> int:
        """The highest seq a report may cover now: just below the lowest hole every later
        arrival of which is younger than REORDER_HOLD (it may still be on its way)."""
        arrivals = self._arrivals
        recent = int((now - REORDER_HOLD) * 1_000_000)
        earliest_after = None  # the earliest arrival among seqs above the one looked at
        limit = newest
        for seq in range(newest, self._next_seq - 1, -1):  # type: ignore[arg-type]
            at = arrivals.get(seq)
            if at is not None:
                if earliest_after is None or at < earliest_after:
                    earliest_after = at
                    if at <= recent:
                        break  # every hole below was revealed long enough ago
            elif earliest_after is not None and earliest_after > recent:
                limit = seq - 1
        return limit
