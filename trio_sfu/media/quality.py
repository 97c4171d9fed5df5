"""Connection quality, scored the way LiveKit's server does, with no I/O: a window's numbers and
`now` in, a score and a quality out.

Every stream a participant sends or receives gets a `QualityScorer`. Each update takes the
window since the last one (`WindowStats`: packets, lost, bytes, worst RTT and jitter, and when
the sender's RTCP last came) and scores it out of 100 like a simplified E-model:

- packets: 100 minus the loss percentage times a codec weight (Opus 8, RED 4, video 10: Opus
  drops to GOOD past 2.5 % loss and to POOR past 7.5 %; lowered for a stream running below its
  usual packet rate, `adjusted_loss_weight`), minus a delay effect from
  RTT/2 + 2 x jitter when those are included (LiveKit's defaults leave them out);
- bitrate (when enabled): 100 - 20 ln(expected bits / bits received).

The window's score is the lower of the two; the stream's score moves toward it by 0.8 of the
way when it drops and 0.4 when it recovers, and never below 30 on a window with packets.
A window without packets scores 20 (LOST) when the sender's last RTCP is older than the window,
else 40 (POOR). Scores map to EXCELLENT above 80, GOOD above 40, POOR above 20, else LOST.
While a stream is muted its score stands still (a mute lifts it back to 100 unless it was
LOST), and the first window after an unmute counts only once the unmute covers half of it.

A participant's quality is its worst stream's (`participant_quality`); ConnectionQualityInfo's
score is a MOS (1 .. 4.5) made from the 0..100 score.

`StreamWindow` turns cumulative counters (what RTCP reports and our receive statistics keep)
into those windows.
"""

from __future__ import annotations

import enum
import math
from typing import Iterable, Optional

import attrs

MAX_SCORE = 100.0
MIN_SCORE = 30.0
INCREASE_FACTOR = 0.4  # recover slowly
DECREASE_FACTOR = 0.8  # drop fast
MAX_MOS = 4.5
MIN_MOS = 1.0
#: Seconds between updates (LiveKit's connectionquality.UpdateInterval).
UPDATE_INTERVAL = 5.0
#: A sending stream whose receiver reports stopped this long ago scores as a window without packets.
NO_REPORT_TOO_LONG = 30.0
#: Packet rate histogram of a stream (loss weighs less below the usual rate): buckets of
#: PPS_STEP packets/s, the last one for everything above; the mode is taken once more than
#: MODE_MIN_READINGS windows were seen and again at most every MODE_INTERVAL seconds.
PPS_STEP = 2.0
PPS_BUCKETS = 250
MODE_MIN_READINGS = 10
MODE_INTERVAL = 120.0
#: Of the window since the last update, the part after an unmute that makes it count.
UNMUTE_TIME_THRESHOLD = 0.5


class Quality(enum.Enum):
    """LiveKit's ConnectionQuality, with the values of its protobuf enum."""

    POOR = 0
    GOOD = 1
    EXCELLENT = 2
    LOST = 3

    @property
    def rank(self) -> int:
        """Worse is lower: LOST < POOR < GOOD < EXCELLENT."""
        return _RANK[self]


_RANK = {Quality.LOST: 0, Quality.POOR: 1, Quality.GOOD: 2, Quality.EXCELLENT: 3}
#: The score at and below which a quality ends.
GOOD_AT_MOST = 80.0
POOR_AT_MOST = 40.0
LOST_AT_MOST = 20.0


def score_to_quality(score: float) -> Quality:
    if score > GOOD_AT_MOST:
        return Quality.EXCELLENT
    if score > POOR_AT_MOST:
        return Quality.GOOD
    if score > LOST_AT_MOST:
        return Quality.POOR
    return Quality.LOST


def score_to_mos(score: float) -> float:
    """The 0..100 score as a mean opinion score, 1 .. 4.5 (the E-model's R to MOS curve)."""
    if score <= 0.0:
        return MIN_MOS
    if score >= 100.0:
        return MAX_MOS
    return 1.0 + 0.035 * score + 0.000007 * score * (score - 60.0) * (100.0 - score)


def packet_loss_weight(mime_type: str, fec: bool = False) -> float:
    """How much a percent of loss costs, by codec: Opus without FEC suffers most, RED carries a
    redundant copy, video has no repair of its own."""
    mime = mime_type.lower()
    if mime == "audio/opus":
        return 8.0 / 1.5 if fec else 8.0
    if mime == "audio/red":
        return 4.0 / 1.5 if fec else 4.0
    if mime.startswith("video/"):
        return 10.0
    return 0.0


@attrs.frozen
class WindowStats:
    """What one stream did in one scoring window."""

    duration: float  # seconds
    packets: int  # sent or expected in the window
    lost: int
    bytes: int = 0  # payload bytes that arrived (for the bitrate score)
    rtt_max: float = 0.0  # seconds
    jitter_max: float = 0.0  # seconds
    last_rtcp_at: Optional[float] = None  # when the sender's newest RTCP report arrived

    def packet_score(self, loss_weight: float, include_rtt: bool = False, include_jitter: bool = False) -> float:
        delay_ms = 0.0
        if include_rtt:
            delay_ms += self.rtt_max * 1000.0 / 2.0
        if include_jitter:
            delay_ms += self.jitter_max * 1000.0 * 2.0
        delay_effect = delay_ms / 40.0 if delay_ms <= 160.0 else (delay_ms - 120.0) / 10.0
        loss_effect = 0.0
        if self.packets > 0:
            loss_effect = max(0, self.lost) * 100.0 / self.packets * loss_weight
        return max(0.0, MAX_SCORE - delay_effect - loss_effect)

    def bitrate_score(self, expected_bits: float) -> float:
        if expected_bits <= 0:
            return MAX_SCORE  # nothing expected: no opinion
        if self.bytes <= 0:
            return 0.0
        return min(MAX_SCORE, max(0.0, MAX_SCORE - 20.0 * math.log(expected_bits / (self.bytes * 8))))


class QualityScorer:
    """One stream's score over time. See the module docstring."""

    def __init__(self, loss_weight: float, now: float, *, include_rtt: bool = False,
                 include_jitter: bool = False, bitrate_score: bool = False) -> None:
        self.loss_weight = loss_weight
        self.include_rtt = include_rtt
        self.include_jitter = include_jitter
        self.use_bitrate = bitrate_score
        self.score = MAX_SCORE
        self._last_update = now
        self.muted = False
        self._unmuted_at: Optional[float] = None
        self.windows_scored = 0  # windows that moved the score (not muted ones)
        # Packet rates seen (packets/s in steps of PPS_STEP) and their mode, recomputed at most
        # every MODE_INTERVAL once MODE_MIN_READINGS windows were seen.
        self._pps_counts = [0] * PPS_BUCKETS
        self._pps_readings = 0
        self.pps_mode = 0  # in PPS_STEP units; 0: not known yet
        self._mode_at: Optional[float] = None

    @property
    def quality(self) -> Quality:
        return score_to_quality(self.score)

    @property
    def mos(self) -> float:
        return score_to_mos(self.score)

    def set_muted(self, muted: bool, now: float) -> None:
        if muted == self.muted:
            return
        self.muted = muted
        if muted:
            if self.score != LOST_AT_MOST:
                self.score = MAX_SCORE  # a muted stream is not a bad one
        else:
            self._unmuted_at = now

    def _unmuted_enough(self, now: float) -> bool:
        since_update = now - self._last_update
        if self._unmuted_at is None or since_update <= 0:
            return True
        return (now - self._unmuted_at) / since_update > UNMUTE_TIME_THRESHOLD

    def adjusted_loss_weight(self, window: WindowStats, now: float) -> float:
        """The loss weight for this window, lowered when the stream runs below its usual packet
        rate (audio in DTX silence, a still screen share), where a lost packet matters less: by
        the square root of the rate's share of the most frequent rate. (LiveKit's loop for the
        mode compares counts with bucket indices; this takes the most frequent rate, which is
        what its comment says it wants.)"""
        if window.duration <= 0:
            return self.loss_weight
        pps = window.packets / window.duration
        self._pps_counts[min(int(pps / PPS_STEP + 0.5), PPS_BUCKETS - 1)] += 1
        self._pps_readings += 1
        if self._pps_readings > MODE_MIN_READINGS and (self._mode_at is None or now - self._mode_at > MODE_INTERVAL):
            self.pps_mode = max(range(PPS_BUCKETS), key=lambda i: (self._pps_counts[i], -i))
            self._mode_at = now
        if self.pps_mode in (0, PPS_BUCKETS - 1):
            return self.loss_weight
        return math.sqrt(min(1.0, pps / (self.pps_mode * PPS_STEP))) * self.loss_weight

    def update(self, window: WindowStats, now: float, expected_bits: float = 0.0) -> float:
        """Score one window; returns the stream's new score."""
        if self.muted or not self._unmuted_enough(now):
            self._last_update = now
            return self.score
        loss_weight = self.adjusted_loss_weight(window, now)
        if window.packets <= 0:
            if window.last_rtcp_at is not None and now - window.last_rtcp_at > window.duration:
                score = LOST_AT_MOST  # nothing, not even the sender's reports
            else:
                score = POOR_AT_MOST  # dry, but the sender is there
        else:
            score = window.packet_score(loss_weight, self.include_rtt, self.include_jitter)
            if self.use_bitrate:
                score = min(score, window.bitrate_score(expected_bits))
            factor = DECREASE_FACTOR if score < self.score else INCREASE_FACTOR
            score = max(MIN_SCORE, factor * score + (1.0 - factor) * self.score)
        self.score = score
        self._last_update = now
        self.windows_scored += 1
        return score


def participant_quality(scorers: Iterable[QualityScorer]) -> tuple[Quality, float]:
    """The worst stream's quality and score (among those of that quality, the lowest), as
    (quality, MOS); EXCELLENT and the best MOS with no streams."""
    worst_quality, worst_score = Quality.EXCELLENT, MAX_SCORE
    for scorer in scorers:
        quality, score = scorer.quality, scorer.score
        if quality.rank < worst_quality.rank or (quality is worst_quality and score < worst_score):
            worst_quality, worst_score = quality, score
    return worst_quality, score_to_mos(worst_score)


class StreamWindow:
    """Cumulative counters in, the window since the previous reading out. A counter that went
    backwards (its stream restarted) starts the window over from zero. Unless `primed`, the
    first reading only sets where counting starts (counters that do not start at zero, like a
    receiver report's highest sequence number)."""

    __slots__ = ("_packets", "_lost", "_bytes", "_at", "_primed")

    def __init__(self, now: float, *, primed: bool = True) -> None:
        self._packets = 0
        self._lost = 0
        self._bytes = 0
        self._at = now
        self._primed = primed

    def advance(self, packets: int, lost: int, bytes_: int, now: float, *, rtt_max: float = 0.0,
                jitter_max: float = 0.0, last_rtcp_at: Optional[float] = None) -> Optional[WindowStats]:
        """The window since the previous reading (None for an unprimed window's first)."""
        window = None
        if self._primed:
            if packets < self._packets or bytes_ < self._bytes:
                self._packets = self._lost = self._bytes = 0
            window = WindowStats(duration=max(0.0, now - self._at), packets=packets - self._packets,
                                 lost=max(0, lost - self._lost), bytes=bytes_ - self._bytes, rtt_max=rtt_max,
                                 jitter_max=jitter_max, last_rtcp_at=last_rtcp_at)
        self._primed = True
        self._packets, self._lost, self._bytes, self._at = packets, lost, bytes_, now
        return window


__all__ = ["GOOD_AT_MOST", "LOST_AT_MOST", "MAX_MOS", "MAX_SCORE", "MIN_SCORE", "NO_REPORT_TOO_LONG",
           "POOR_AT_MOST", "Quality", "QualityScorer", "StreamWindow", "UPDATE_INTERVAL", "WindowStats",
           "packet_loss_weight", "participant_quality", "score_to_mos", "score_to_quality"]
