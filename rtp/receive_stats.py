"""Per-SSRC reception statistics for RTCP receiver reports (RFC 3550 A.1, A.3, A.8).

Sequence validation follows A.1: a new source must show ``MIN_SEQUENTIAL``
consecutive packets before it counts (probation), small reorderings and
duplicates are accepted, and a jump of ``MAX_DROPOUT`` or more is taken as a
restart of the sender only once the packet after it confirms the new numbering.
"""

from __future__ import annotations

from typing import Optional

import attrs

from rtp.rtcp import ReportBlock, compact_ntp
from rtp.seqnum import timestamp_diff

MIN_SEQUENTIAL = 2
MAX_DROPOUT = 3000
MAX_MISORDER = 100
_SEQ_MOD = 1 << 16
_MAX_PACKETS_LOST = (1 << 23) - 1
_MIN_PACKETS_LOST = -(1 << 23)


@attrs.define(frozen=True)
class LastSenderReport:
    """What a receiver keeps of the newest SR from a source to fill LSR/DLSR."""

    ntp_timestamp: int  # the SR's full 64-bit NTP timestamp
    arrival: float  # our ``now`` when it arrived, seconds


class ReceiveStatistics:
    """Statistics for one incoming SSRC, fed with every RTP packet's seq/timestamp and arrival time.

    ``probation=0`` skips the new-source check, for SSRCs announced in signalling.
    """

    __slots__ = (
        "ssrc",
        "clock_rate",
        "_started",
        "_probation",
        "max_seq",
        "cycles",
        "base_seq",
        "bad_seq",
        "received",
        "_expected_prior",
        "_received_prior",
        "_jitter",
        "_last_arrival",
        "_last_timestamp",
        "bytes_received",
        "last_sr",
    )

    def __init__(self, ssrc: int, clock_rate: int, probation: int = MIN_SEQUENTIAL) -> None:
        if clock_rate <= 0:
            raise ValueError("clock_rate must be positive")
        self.ssrc = ssrc
        self.clock_rate = clock_rate
        self._started = False
        self._probation = probation
        self.max_seq = 0
        self.cycles = 0  # wraps seen, already shifted: a multiple of 65536
        self.base_seq = 0
        self.bad_seq = _SEQ_MOD + 1  # a value no 16-bit seq equals
        self.received = 0
        self._expected_prior = 0
        self._received_prior = 0
        self._jitter = 0.0  # timestamp units; a float instead of A.8's fixed point
        self._last_arrival: Optional[float] = None
        self._last_timestamp = 0
        self.bytes_received = 0
        self.last_sr: Optional[LastSenderReport] = None

    def _init_seq(self, seq: int) -> None:
        self.base_seq = seq
        self.max_seq = seq
        self.bad_seq = _SEQ_MOD + 1
        self.cycles = 0
        self.received = 0
        self._received_prior = 0
        self._expected_prior = 0
        # A restarted sender also restarts its timestamps: do not measure
        # jitter across the discontinuity.
        self._last_arrival = None

    def on_packet(self, seq: int, timestamp: int, now: float, size: int = 0) -> bool:
        """Account one received RTP packet (``now`` = arrival, seconds).

        Returns False when the packet was not counted: during probation, or a
        large jump not (yet) confirmed as a sender restart.
        """
        seq &= 0xFFFF
        if not self._started:
            self._started = True
            if self._probation:
                # A.1: max_seq = seq - 1 so the first packet already counts as "in sequence".
                self._init_seq(seq)
                self.max_seq = (seq - 1) & 0xFFFF
            else:
                self._init_seq(seq)
                return self._count(seq, timestamp, now, size, True)
        if self._probation:
            if seq == (self.max_seq + 1) & 0xFFFF:
                self._probation -= 1
                self.max_seq = seq
                if self._probation == 0:
                    self._init_seq(seq)
                    return self._count(seq, timestamp, now, size, True)
            else:
                self._probation = MIN_SEQUENTIAL - 1
                self.max_seq = seq
            return False
        udelta = (seq - self.max_seq) & 0xFFFF
        if udelta < MAX_DROPOUT:
            if seq < self.max_seq:
                self.cycles += _SEQ_MOD
            in_order = udelta != 0
            self.max_seq = seq
        elif udelta <= _SEQ_MOD - MAX_MISORDER:
            if seq != self.bad_seq:
                self.bad_seq = (seq + 1) & 0xFFFF
                return False
            # Two sequential packets after a big jump: the sender restarted.
            self._init_seq(seq)
            in_order = True
        else:
            in_order = False  # duplicate or reordered within MAX_MISORDER
        return self._count(seq, timestamp, now, size, in_order)

    def _count(self, seq: int, timestamp: int, now: float, size: int, in_order: bool) -> bool:
        self.received += 1
        self.bytes_received += size
        # Jitter only from packets that advance the stream and start a new
        # timestamp: late (reordered, retransmitted) packets and packets of the
        # same frame, sent back to back, would measure sender pacing, not the network.
        if in_order and (self._last_arrival is None or timestamp != self._last_timestamp):
            last_arrival = self._last_arrival
            if last_arrival is not None:
                d = (now - last_arrival) * self.clock_rate - timestamp_diff(
                    timestamp, self._last_timestamp
                )
                self._jitter += (abs(d) - self._jitter) / 16.0
            self._last_arrival = now
            self._last_timestamp = timestamp
        return True

    def on_sender_report(self, ntp_timestamp: int, now: float) -> None:
        """Remember an SR from this source so the next report block carries LSR/DLSR."""
        self.last_sr = LastSenderReport(ntp_timestamp, now)

    @property
    def is_valid(self) -> bool:
        """Whether the source has passed probation and at least one packet counted."""
        return self._started and not self._probation and self.received > 0

    @property
    def extended_highest_sequence(self) -> int:
        return self.cycles + self.max_seq

    @property
    def expected(self) -> int:
        return self.extended_highest_sequence - self.base_seq + 1

    @property
    def lost(self) -> int:
        """Cumulative lost (A.3); negative when duplicates outnumber losses."""
        return self.expected - self.received

    @property
    def jitter(self) -> float:
        """Interarrival jitter in timestamp units."""
        return self._jitter

    def report_block(
        self, now: float, last_sr: Optional[LastSenderReport] = None
    ) -> Optional[ReportBlock]:
        """The RR/SR report block for this source, or None before it is valid.

        Starts a new "since last report" interval for the fraction lost.
        ``last_sr`` defaults to the one recorded by :meth:`on_sender_report`.
        """
        if not self.is_valid:
            return None
        expected = self.expected
        expected_interval = expected - self._expected_prior
        self._expected_prior = expected
        received_interval = self.received - self._received_prior
        self._received_prior = self.received
        lost_interval = expected_interval - received_interval
        if expected_interval == 0 or lost_interval <= 0:
            fraction = 0
        else:
            fraction = (lost_interval << 8) // expected_interval
        sr = last_sr if last_sr is not None else self.last_sr
        lsr = dlsr = 0
        if sr is not None:
            lsr = compact_ntp(sr.ntp_timestamp)
            # DLSR is in units of 1/65536 s.
            dlsr = min(0xFFFFFFFF, max(0, int((now - sr.arrival) * 65536)))
        return ReportBlock(
            ssrc=self.ssrc,
            fraction_lost=min(fraction, 255),
            packets_lost=max(_MIN_PACKETS_LOST, min(_MAX_PACKETS_LOST, self.lost)),
            highest_sequence=self.extended_highest_sequence & 0xFFFFFFFF,
            jitter=min(0xFFFFFFFF, int(self._jitter)),
            lsr=lsr,
            dlsr=dlsr,
        )
