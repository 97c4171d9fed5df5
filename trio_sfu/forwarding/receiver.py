"""TrackReceiver: one published track's uplink side, sync and deterministic.

It takes decrypted RTP from the publisher transport with the arrival time,
sorts packets into layers (simulcast rid → q=0/h=1/f=2, or one layer; a relayed copy is
told each packet's layer by the node it comes from), keeps a
retransmission buffer and reception statistics per layer SSRC, NACKs uplink
gaps, unwraps RTX, tracks keyframes, sends RRs and keyframe requests to the
publisher through the injected ``send_rtcp``, remembers the publisher's SRs,
and hands every packet to the down tracks with plain calls (but a copy of one it holds).

Which layers its down tracks want (`wanted_layers`) is what a relayed copy of a track asks the
publisher's node for; which layers their subscribers ask for (`subscribed_layers`, at least as
much) is what the publisher's dynacast keeps encoded. A `LayerDemandListener` (the cluster's
relay for such a copy, the publisher's dynacast for a local track) hears whenever either may
have changed: a down track joined or left, or changed its target or its subscriber's maximum.

No trio here: ``now`` (seconds, any monotonic origin) comes in with every call,
and the owner drives :meth:`poll_rtcp` at :meth:`next_deadline`.
"""

from __future__ import annotations

import enum
from typing import Callable, Mapping, Optional, Protocol, Sequence

import attrs

from rtp.errors import ParseError
from rtp.header_extensions import decode_rid
from rtp.packet import find_extension, rewrite_header
from rtp.receive_stats import ReceiveStatistics
from rtp.rtcp import RtcpPacket, SenderReport
from rtp.rtx_buffer import RetransmissionBuffer
from rtp.seqnum import SequenceUnwrapper
from trio_sfu.forwarding.codec_keyframes import keyframe_detector, payload_bounds, vp8_temporal
from trio_sfu.forwarding.playout_delay import PlayoutDelayPolicy
from trio_sfu.forwarding.fanout import Fanout
from trio_sfu.forwarding.rtcp_feedback import (
    PublisherSenderReport,
    build_nack,
    build_pli,
    build_receiver_report,
)
from trio_sfu.forwarding.simulcast import layer_for_rid

SendRtcp = Callable[[bytes], bool]

#: SSRCs (media and RTX) one track may have mapped at once. Simulcast needs 3 layers + 3 RTX; a
#: publisher that restarts gets new SSRCs. Media SSRCs are one per layer by construction (a new
#: one replaces its layer's old); RTX SSRCs past the cap evict the oldest one that is no longer
#: its layer's newest, and a new RTX SSRC that would evict a live one is dropped and counted.
MAX_SSRCS_PER_TRACK = 32


class PacketSink(Protocol):
    """What a TrackReceiver hands each packet to: a subscriber's DownTrack (its PacketSource
    is this receiver); the receiver knows no more of it than this."""

    def write_rtp(self, layer: int, packet: bytes, now: float) -> bool:
        """Forward one packet of `layer`; False if it was not sent (the sink counts why)."""

    @property
    def wanted_layers(self) -> frozenset[int]:
        """The layers this sink wants forwarded now (empty: paused)."""

    @property
    def subscribed_layers(self) -> frozenset[int]:
        """The layers its subscriber asks for, even if less is forwarded now (dynacast)."""


class LayerDemandListener(Protocol):
    """Told when the layers a receiver's down tracks want may have changed; it reads
    `TrackReceiver.wanted_layers()` itself (the relay asks the publisher's node for them)."""

    def layer_demand_changed(self, receiver: "TrackReceiver") -> None: ...


class _SsrcCapReached(Exception):
    """A new SSRC the track has no room for (`MAX_SSRCS_PER_TRACK`)."""


#: The widest run of lost padding (NackTracker: known to be padding) handed to the down tracks as
#: copies, so that they close it; libwebrtc's padding bursts lose a packet or two at a time.
MAX_PADDING_FILL = 32


@attrs.frozen
class Reception:
    """A receiver's cumulative reception: packets expected and lost (RFC 3550 A.3), bytes
    received, the worst layer's current jitter (seconds) and when the newest SR arrived."""

    expected: int
    lost: int
    bytes: int
    jitter: float
    last_sender_report_at: Optional[float]


class ForwardingStateError(RuntimeError):
    """A lifecycle transition called from a state it does not leave."""


class ReceiverState(enum.Enum):
    OPEN = "open"
    CLOSING = "closing"  # publisher gone or unpublishing; may come back (resume/migration)
    CLOSED = "closed"


@attrs.define
class ReceiverCounters:
    packets: int = 0
    bytes: int = 0
    padding_only: int = 0
    dropped_not_open: int = 0
    dropped_malformed: int = 0
    dropped_unknown_stream: int = 0
    dropped_wrong_layer: int = 0  # a relayed packet naming a layer the track lacks or another layer's SSRC
    relay_discontinuities: int = 0
    rtx_recovered: int = 0
    rtx_dropped: int = 0
    # A packet whose seq the layer holds already, dropped: sent on, the subscriber's SRTP replay
    # check throws the copy away, and its transport-wide seq reads as a loss (see _receive_media).
    dropped_duplicate: int = 0
    rtx_duplicate: int = 0  # of those, copies that came on RTX (libwebrtc pads with resends)
    ssrc_changes: int = 0
    rtx_ssrcs_evicted: int = 0
    dropped_ssrc_cap: int = 0
    nacks_sent: int = 0  # NACK packets
    nack_seqs_requested: int = 0
    nack_seqs_given_up: int = 0
    nack_gaps_too_large: int = 0
    # Sequence numbers not NACKed: padding after a frame's end (NackTracker's docstring).
    nack_padding_skipped: int = 0
    keyframes: int = 0
    keyframe_requests_sent: int = 0
    keyframe_requests_limited: int = 0
    # Of nack_seqs_given_up, packets known to be media (a keyframe is asked for: _after_given_up).
    nack_media_given_up: int = 0
    # Padding gaps wider than MAX_PADDING_FILL, left as holes rather than filled (_receive_media).
    padding_gaps_not_filled: int = 0
    rrs_sent: int = 0
    # Sequence numbers a resend filled (NackTracker.repaired), and how often the publisher's
    # repairs raised, and lifted, the playout-delay floor of this track's subscribers.
    nack_repaired: int = 0
    playout_floor_raised: int = 0
    playout_floor_lifted: int = 0


#: Reordering waits: the margin on the latest overtaken packet, the most a first NACK waits,
#: and the fading of the wait on each new gap (a gap reveals loss or reordering; after ~100
#: gaps with no reordering the wait is an eighth of what it was).
REORDER_MARGIN = 1.5
MAX_REORDER_DELAY = 0.05
REORDER_DELAY_FADE = 0.98
#: A filler that comes sooner than this after the one NACK for it was overtaken, not resent (a
#: resend takes a round trip). Measured from the NACK, so a resend on a path faster than this
#: makes gaps wait at most 1.5 x its round trip, and the wait cannot feed on itself.
RESEND_AT_LEAST = 0.02


class NackTracker:
    """Missing sequence numbers of one SSRC and when each was last asked for.

    A gap wider than ``max_gap`` is not NACKed (a keyframe is the cheaper
    repair); an entry is dropped after ``max_tries`` requests or once it falls
    more than ``max_age`` packets behind the newest.

    Reordering is not loss: a packet that fills a gap before it was ever NACKed
    was overtaken on the way, and how late it came sets ``reorder_delay`` (with a
    margin, capped at ``MAX_REORDER_DELAY``, fading as gaps keep coming without
    reordering): a new gap is NACKed only once it is that old. Without the wait,
    a link that reorders (20 ± 5 ms of jitter) had every overtaken packet NACKed
    and sent again by the publisher, whose encoder then gave the retransmissions
    the bitrate of its top simulcast layer.

    Padding is not loss either. A libwebrtc sender without RTX (the `livekit` SDKs) pads on the
    media SSRC, only after a frame's last packet (marker) and with that frame's timestamp, and
    keeps no padding in its history, so a NACK for a lost padding packet is never answered: it
    was NACKed ``max_tries`` times and given up (the SDK runs under 5 % loss gave up 150-720
    sequence numbers, about 5 % of the padding they received, and no media). A gap that
    opens after a frame's last packet (marker), or padding after it, and ends in a padding
    packet with that frame's timestamp holds nothing but padding, and is not NACKed (counted in
    ``padding_skipped``; reordered padding too, which would have filled the gap by itself).
    """

    __slots__ = ("max_tries", "max_gap", "max_age", "_unwrap", "_highest", "_missing", "given_up", "last_given_up",
                 "reorder_delay", "reordered", "padding_skipped", "repaired", "_highest_ts", "_ended_ts", "_ended_ext")

    def __init__(self, max_tries: int = 5, max_gap: int = 250, max_age: int = 1000) -> None:
        self.max_tries = max_tries
        self.max_gap = max_gap
        self.max_age = max_age
        self._unwrap = SequenceUnwrapper()
        self._highest: Optional[int] = None
        # extended seq -> [tries, last request time or None, detected at]; only losses allocate
        self._missing: dict[int, list] = {}
        self.given_up = 0
        self.last_given_up: list[int] = []  # seqs the last `due` gave up after max_tries
        self.reorder_delay = 0.0  # seconds a new gap waits before its first NACK
        self.reordered = 0  # gaps filled before they were NACKed
        self.padding_skipped = 0  # sequence numbers not NACKed: padding after a frame's end
        self.repaired = 0  # sequence numbers a resend filled (after our NACK)
        # The timestamp of the newest packet, and of the newest frame whose last packet (marker)
        # arrived, with that packet's extended seq (None: unknown).
        self._highest_ts: Optional[int] = None
        self._ended_ts: Optional[int] = None
        self._ended_ext = -1

    def on_packet(self, seq: int, now: float, timestamp: Optional[int] = None, marker: bool = False,
                  padding: bool = False) -> bool:
        """Account an arrival; False when it opened a gap too wide to NACK. `timestamp`,
        `marker` and `padding` (no payload) tell padding gaps from loss; without a timestamp
        every gap is NACKed."""
        ext = self._unwrap.unwrap(seq)
        highest = self._highest
        if marker and ext > self._ended_ext:
            self._ended_ts, self._ended_ext = timestamp, ext
            if (highest is not None and highest - self.max_gap <= ext < highest and timestamp is not None
                    and timestamp == self._highest_ts):
                # Frame T's last packet came after padding with T that overtook it: what is
                # still missing between the two is padding.
                self._forget_padding(ext + 1, highest)
        if highest is None:
            self._highest, self._highest_ts = ext, timestamp
            return True
        if ext > highest:
            highest_ts = self._highest_ts
            self._highest, self._highest_ts = ext, timestamp
            gap = ext - highest - 1
            if not gap:
                return True
            if padding and gap <= self.max_gap and timestamp is not None and timestamp == highest_ts == self._ended_ts:
                # The newest packet was frame T's last or padding after it (a packet of T after
                # its marker can be nothing else), and this padding carries T: no new frame
                # started in between, so the gap is padding too.
                self.padding_skipped += gap
                return True
            if gap > self.max_gap:
                self.given_up += len(self._missing)
                self._missing.clear()
                return False
            self.reorder_delay *= REORDER_DELAY_FADE
            for missing in range(highest + 1, ext):
                self._missing[missing] = [0, None, now]
            return True
        entry = self._missing.pop(ext, None)
        if entry is not None:
            if entry[0] == 0:
                late = now - entry[2]  # overtaken: this long after its gap showed
            elif entry[0] == 1 and now - entry[1] < RESEND_AT_LEAST:
                late = now - entry[1]  # sooner after our NACK than a resend comes: overtaken too
            else:
                late = None  # the resend
                self.repaired += 1
            if late is not None:
                self.reordered += 1
                late *= REORDER_MARGIN
                if late > self.reorder_delay:
                    self.reorder_delay = min(MAX_REORDER_DELAY, late)
        return True

    def _forget_padding(self, first: int, end: int) -> None:
        """Stop asking for the extended seqs in [first, end): they were padding."""
        missing = self._missing
        for ext in range(first, end):
            if missing.pop(ext, None) is not None:
                self.padding_skipped += 1

    @property
    def missing(self) -> list[int]:
        return [e & 0xFFFF for e in sorted(self._missing)]

    def due(self, now: float, interval: float) -> list[int]:
        """Sequence numbers to NACK now; bumps their try count."""
        self.last_given_up.clear()
        if not self._missing:
            return []
        out = []
        highest = self._highest or 0
        wait = self.reorder_delay
        for ext in sorted(self._missing):
            entry = self._missing[ext]
            if highest - ext > self.max_age:
                del self._missing[ext]
                self.given_up += 1
                continue
            # Compared as next_deadline computes them (a sum, not a difference): rounded
            # differently, a poll at exactly that deadline found nothing due and asked again.
            if entry[1] is None:
                if now >= entry[2] + wait:
                    entry[0] += 1
                    entry[1] = now
                    out.append(ext & 0xFFFF)
            elif now >= entry[1] + interval:
                if entry[0] >= self.max_tries:
                    # Only once the last request had its round trip: given up at the next poll
                    # (an RR, another gap's NACK: often a few ms later), its answer, still on
                    # the way, was not waited for, and the last try was wasted.
                    del self._missing[ext]
                    self.given_up += 1
                    self.last_given_up.append(ext & 0xFFFF)
                    continue
                entry[0] += 1
                entry[1] = now
                out.append(ext & 0xFFFF)
        return out

    def next_deadline(self, interval: float) -> Optional[float]:
        if not self._missing:
            return None
        wait = self.reorder_delay
        return min(e[2] + wait if e[1] is None else e[1] + interval for e in self._missing.values())

    def reset(self) -> None:
        self._unwrap = SequenceUnwrapper()
        self._highest = None
        self._highest_ts = self._ended_ts = None
        self._ended_ext = -1
        self._missing.clear()


class _Layer:
    __slots__ = (
        "index", "ssrc", "stats", "buffer", "nack", "keyframes", "last_keyframe_at",
        "sender_report", "last_keyframe_request", "last_arrival",
        "bitrate", "_rate_bytes", "_rate_stats", "_rate_at",
        "temporal_bytes", "temporal_bitrates", "_temporal_rate_bytes",
    )

    def __init__(self, index: int, clock_rate: int, capacity: int, nack: NackTracker) -> None:
        self.index = index
        self.ssrc: Optional[int] = None
        self.stats = ReceiveStatistics(0, clock_rate)
        self.buffer = RetransmissionBuffer(capacity)
        self.nack = nack
        self.keyframes = 0
        self.last_keyframe_at: Optional[float] = None
        self.sender_report: Optional[PublisherSenderReport] = None
        self.last_keyframe_request = float("-inf")
        self.last_arrival: Optional[float] = None
        # Measured bits per second over the last receiver-report interval (0: nothing arrived).
        self.bitrate = 0
        self._rate_bytes = 0
        self._rate_stats: Optional[ReceiveStatistics] = None
        self._rate_at: Optional[float] = None
        # VP8 with temporal ids: octets received per TID (0..3), and each TID's measured bits per
        # second over the last interval, for the TIDs seen (empty: no temporal layers seen).
        self.temporal_bytes = [0, 0, 0, 0]
        self.temporal_bitrates: tuple[int, ...] = ()
        self._temporal_rate_bytes = (0, 0, 0, 0)

    def measure(self, now: float) -> None:
        """Update `bitrate` from the bytes counted since the last call (on the RR timer)."""
        stats = self.stats
        start = self._rate_at
        if start is not None and now > start:
            sent = stats.bytes_received - (self._rate_bytes if self._rate_stats is stats else 0)
            self.bitrate = int(max(0, sent) * 8 / (now - start))
            counts = self.temporal_bytes
            top = max((tid for tid in range(4) if counts[tid]), default=0)
            self.temporal_bitrates = tuple(
                int((counts[tid] - self._temporal_rate_bytes[tid]) * 8 / (now - start)) for tid in range(top + 1)
            ) if top > 0 else ()
        self._rate_bytes, self._rate_stats, self._rate_at = stats.bytes_received, stats, now
        self._temporal_rate_bytes = tuple(self.temporal_bytes)

    def bind(self, ssrc: int, clock_rate: int) -> None:
        """(Re)start the layer on a new SSRC: a publisher restart shares nothing with before."""
        self.ssrc = ssrc
        self.stats = ReceiveStatistics(ssrc, clock_rate)
        self.buffer.clear()
        self.nack.reset()
        self.sender_report = None
        self.temporal_bytes = [0, 0, 0, 0]
        self._temporal_rate_bytes = (0, 0, 0, 0)
        self.temporal_bitrates = ()


class TrackReceiver:
    """One published track. See the module docstring."""

    def __init__(
        self,
        track_id: str,
        mime_type: str,
        clock_rate: int,
        *,
        send_rtcp: SendRtcp,
        local_ssrc: int,
        cname: str = "trio-sfu",
        rids: Sequence[str] = (),
        rid_extension_id: Optional[int] = None,
        repaired_rid_extension_id: Optional[int] = None,
        rtx_payload_types: Optional[Mapping[int, int]] = None,
        ssrc_layers: Optional[Mapping[int, int]] = None,
        rtx_ssrc_layers: Optional[Mapping[int, int]] = None,
        nack_enabled: bool = True,
        buffer_capacity: int = 1024,
        nack_max_tries: int = 5,
        rr_interval: float = 1.0,
        keyframe_request_interval: float = 0.5,
        now: float = 0.0,
        fast_path: Optional[bool] = None,
    ) -> None:
        """`fast_path`: whether the compiled fan-out forwards the steady state (None: when it
        is built, trio_sfu.native; False: the pure Python path)."""
        self.track_id = track_id
        self.mime_type = mime_type
        self.clock_rate = clock_rate
        self.local_ssrc = local_ssrc
        self.cname = cname
        self.rids = tuple(rids)
        self.simulcast = bool(rids)
        self._send_rtcp = send_rtcp
        self._rid_ext = rid_extension_id
        self._rrid_ext = repaired_rid_extension_id
        self._rtx_pts = dict(rtx_payload_types or {})
        self._nack_enabled = nack_enabled
        self._is_keyframe = keyframe_detector(mime_type)
        self._vp8 = mime_type.lower().rsplit("/", 1)[-1] == "vp8"
        self.rr_interval = rr_interval
        self.keyframe_request_interval = keyframe_request_interval
        self.rtt = 0.1  # seconds; the owner may update it from transport-wide feedback
        # The floor every subscriber's jitter buffer needs for this publisher's repairs: a frame
        # a resend completed comes a publisher round trip late to every subscriber, whose own
        # feedback shows no loss (trio_sfu.forwarding.playout_delay; judged on the RR timer).
        self.playout = PlayoutDelayPolicy()
        self.layer_timeout = 1.0
        self._next_rr = now + rr_interval
        indices = sorted({layer_for_rid(r, self.rids) for r in self.rids} - {None}) or [0]
        self._layers: dict[int, _Layer] = {
            i: _Layer(i, clock_rate, buffer_capacity, NackTracker(nack_max_tries)) for i in indices
        }
        self._by_ssrc: dict[int, _Layer] = {}
        self._rtx_by_ssrc: dict[int, _Layer] = {}
        for ssrc, index in (ssrc_layers or {}).items():
            layer = self._layers.get(index)
            if layer is not None:
                layer.bind(ssrc, clock_rate)
                self._by_ssrc[ssrc] = layer
        # The newest RTX SSRC of each layer (by layer index): the live ones, never evicted.
        self._live_rtx: dict[int, int] = {}
        for ssrc, index in (rtx_ssrc_layers or {}).items():
            if index in self._layers:
                self._rtx_by_ssrc[ssrc] = self._layers[index]
                self._live_rtx[index] = ssrc
        self._down_tracks: list[PacketSink] = []
        self._fanout = Fanout(self._down_tracks, enabled=fast_path)
        self.demand_listener: Optional[LayerDemandListener] = None
        self.state = ReceiverState.OPEN
        self.expected_to_resume = False
        self.counters = ReceiverCounters()

    # --- lifecycle ---

    def begin_closing(self, expected_to_resume: bool) -> None:
        if self.state is not ReceiverState.OPEN:
            raise ForwardingStateError(f"begin_closing from {self.state.value}, expected open")
        self.state = ReceiverState.CLOSING
        self.expected_to_resume = expected_to_resume

    def reopen(self) -> None:
        """The publisher came back (resume/migration) while closing."""
        if self.state is not ReceiverState.CLOSING:
            raise ForwardingStateError(f"reopen from {self.state.value}, expected closing")
        self.state = ReceiverState.OPEN
        self.expected_to_resume = False

    def close(self) -> None:
        if self.state is not ReceiverState.CLOSING:
            raise ForwardingStateError(f"close from {self.state.value}, expected closing")
        self.state = ReceiverState.CLOSED
        self._fanout.release_all()
        self._down_tracks.clear()
        for layer in self._layers.values():
            layer.buffer.clear()
            layer.nack.reset()

    # --- fan-out ---

    def add_down_track(self, down_track: PacketSink) -> None:
        if down_track not in self._down_tracks:
            self._down_tracks.append(down_track)
            self._fanout.changed()
            self.layer_demand_changed()

    def remove_down_track(self, down_track: PacketSink) -> None:
        if down_track in self._down_tracks:
            self._fanout.remove(down_track)
            self._down_tracks.remove(down_track)
            self.layer_demand_changed()

    def wanted_layers(self) -> frozenset[int]:
        """The layers some down track wants now (its target layer, unless paused)."""
        wanted: set[int] = set()
        for down_track in self._down_tracks:
            wanted |= down_track.wanted_layers
        return frozenset(wanted)

    def subscribed_layers(self) -> frozenset[int]:
        """The layers some down track's subscriber asks for (what the publisher's dynacast
        keeps encoded), whether or not its allocator forwards that much now."""
        subscribed: set[int] = set()
        for down_track in self._down_tracks:
            subscribed |= down_track.subscribed_layers
        return frozenset(subscribed)

    def layer_demand_changed(self) -> None:
        """A down track joined, left, or changed its target or pause (DownTrack calls this)."""
        listener = self.demand_listener
        if listener is not None:
            listener.layer_demand_changed(self)

    @property
    def down_tracks(self) -> tuple[PacketSink, ...]:
        return tuple(self._down_tracks)

    def packets_lost(self) -> int:
        """Packets of the publisher's streams that did not reach us (RFC 3550's cumulative loss,
        per layer: a retransmission that repaired a gap takes it back off). A layer's count
        starts over when its SSRC changes (a publisher restart shares nothing with before)."""
        return sum(max(0, layer.stats.lost) for layer in self._layers.values() if layer.stats.is_valid)

    def reception(self) -> "Reception":
        """What the publisher's streams delivered so far, summed over the layers (connection
        quality scores the difference between two readings). A layer's counts start over when
        its SSRC changes."""
        expected = lost = octets = 0
        jitter = 0.0
        last_sr: Optional[float] = None
        for layer in self._layers.values():
            stats = layer.stats
            if not stats.is_valid:
                continue
            expected += stats.expected
            lost += max(0, stats.lost)
            octets += stats.bytes_received
            jitter = max(jitter, stats.jitter / self.clock_rate)
            if stats.last_sr is not None and (last_sr is None or stats.last_sr.arrival > last_sr):
                last_sr = stats.last_sr.arrival
        return Reception(expected, lost, octets, jitter, last_sr)

    # --- queries for down tracks ---

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(self._layers)

    def ssrc_layers(self) -> tuple[dict[int, int], dict[int, int]]:
        """The SSRCs learned so far -> layer index, media and RTX: what another receiver of the
        same sender needs once the sender stops naming its streams (RFC 8852 lets it omit
        RID/MID after the first RTCP, and Chromium does)."""
        return ({ssrc: layer.index for ssrc, layer in self._by_ssrc.items()},
                {ssrc: layer.index for ssrc, layer in self._rtx_by_ssrc.items()})

    def layer_of_ssrc(self, ssrc: int) -> Optional[int]:
        """The layer whose current media SSRC is `ssrc` (what a PLI or NACK names), or None."""
        entry = self._by_ssrc.get(ssrc)
        return entry.index if entry is not None else None

    def layer_ssrc(self, layer: int) -> Optional[int]:
        entry = self._layers.get(layer)
        return entry.ssrc if entry is not None else None

    def layer_bitrates(self) -> dict[int, int]:
        """Each layer's measured bitrate (bits per second over the last receiver-report
        interval, counted from the bytes its statistics already keep: nothing per packet)."""
        return {index: layer.bitrate for index, layer in self._layers.items()}

    def layer_temporal_bitrates(self) -> dict[int, tuple[int, ...]]:
        """Each layer's measured bitrate per temporal layer (TID 0, 1, ...), for the layers whose
        packets carry temporal ids above 0 (VP8 with temporal layers); measured as
        `layer_bitrates`."""
        return {index: layer.temporal_bitrates for index, layer in self._layers.items() if layer.temporal_bitrates}

    def layer_active(self, layer: int, now: float) -> bool:
        """Whether media arrived on ``layer`` within :attr:`layer_timeout` seconds: a
        publisher drops simulcast layers under congestion and starts the top one late."""
        entry = self._layers.get(layer)
        return (
            entry is not None
            and entry.last_arrival is not None
            and now - entry.last_arrival < self.layer_timeout
        )

    def get_packet(self, layer: int, seq: int) -> Optional[bytes]:
        entry = self._layers.get(layer)
        return entry.buffer.get(seq) if entry is not None else None

    def sender_report(self, layer: int) -> Optional[PublisherSenderReport]:
        entry = self._layers.get(layer)
        return entry.sender_report if entry is not None else None

    def keyframe_count(self, layer: int) -> int:
        entry = self._layers.get(layer)
        return entry.keyframes if entry is not None else 0

    def last_keyframe_at(self, layer: int) -> Optional[float]:
        entry = self._layers.get(layer)
        return entry.last_keyframe_at if entry is not None else None

    def missing(self, layer: int) -> list[int]:
        """Sequence numbers currently awaiting retransmission on ``layer``."""
        entry = self._layers.get(layer)
        return entry.nack.missing if entry is not None else []

    # --- keyframe requests ---

    def request_keyframe(self, layer: int, now: float) -> bool:
        """Send a PLI for ``layer`` unless one went out less than the interval ago."""
        entry = self._layers.get(layer)
        if entry is None or entry.ssrc is None or self.state is not ReceiverState.OPEN:
            return False
        if now - entry.last_keyframe_request < self.keyframe_request_interval:
            self.counters.keyframe_requests_limited += 1
            return False
        entry.last_keyframe_request = now
        self.counters.keyframe_requests_sent += 1
        self._send_rtcp(build_pli(self.local_ssrc, entry.ssrc))
        return True

    # --- RTP in ---

    def receive_rtp(self, packet: bytes, now: float) -> bool:
        """One decrypted RTP packet from the publisher; False when dropped."""
        counters = self.counters
        if self.state is not ReceiverState.OPEN:
            counters.dropped_not_open += 1
            return False
        bounds = payload_bounds(packet)
        if bounds is None:
            counters.dropped_malformed += 1
            return False
        ssrc = (packet[8] << 24) | (packet[9] << 16) | (packet[10] << 8) | packet[11]
        layer = self._by_ssrc.get(ssrc)
        if layer is None:
            rtx_layer = self._rtx_by_ssrc.get(ssrc)
            if rtx_layer is not None:
                return self._receive_rtx(rtx_layer, packet, bounds, now)
            try:
                learned = self._learn(ssrc, packet)
            except ParseError:
                counters.dropped_malformed += 1
                return False
            except _SsrcCapReached:
                counters.dropped_ssrc_cap += 1
                return False
            if learned is None:
                counters.dropped_unknown_stream += 1
                return False
            layer, is_rtx = learned
            if is_rtx:
                return self._receive_rtx(layer, packet, bounds, now)
        return self._receive_media(layer, packet, bounds, now)

    def receive_layer_rtp(self, index: int, packet: bytes, now: float, *, discontinuity: bool = False) -> bool:
        """One RTP packet whose layer the sender names (the node relay: the publisher's node
        placed it already, RTX unwrapped); its SSRC becomes the layer's. `discontinuity`: the
        sender did not relay this layer before this packet, so the sequence gap in front of it
        is not loss (nothing is NACKed for it, and reception statistics start over).
        False when dropped."""
        counters = self.counters
        if self.state is not ReceiverState.OPEN:
            counters.dropped_not_open += 1
            return False
        bounds = payload_bounds(packet)
        if bounds is None:
            counters.dropped_malformed += 1
            return False
        layer = self._layers.get(index)
        ssrc = (packet[8] << 24) | (packet[9] << 16) | (packet[10] << 8) | packet[11]
        owner = self._by_ssrc.get(ssrc)
        if layer is None or (owner is not None and owner is not layer):
            counters.dropped_wrong_layer += 1
            return False
        if owner is None:
            if layer.ssrc is not None:
                self._by_ssrc.pop(layer.ssrc, None)  # the publisher restarted the layer
                counters.ssrc_changes += 1
            layer.bind(ssrc, self.clock_rate)
            self._by_ssrc[ssrc] = layer
        elif discontinuity:
            counters.relay_discontinuities += 1
            layer.nack.reset()
            layer.stats = ReceiveStatistics(ssrc, self.clock_rate)
        return self._receive_media(layer, packet, bounds, now)

    def _learn(self, ssrc: int, packet: bytes) -> Optional[tuple[_Layer, bool]]:
        """Place a new SSRC: RTX by payload type, layer by (repaired) rid or the only layer."""
        is_rtx = (packet[1] & 0x7F) in self._rtx_pts
        ext_id = self._rrid_ext if is_rtx else self._rid_ext
        index: Optional[int] = None
        if ext_id is not None:
            value = find_extension(packet, ext_id)
            if value is not None:
                index = layer_for_rid(decode_rid(value), self.rids)
        if index is None:
            if self.simulcast:
                return None  # a simulcast stream we cannot place yet; its rid will come
            index = 0
        layer = self._layers.get(index)
        if layer is None:
            return None
        if is_rtx:
            if len(self._by_ssrc) + len(self._rtx_by_ssrc) >= MAX_SSRCS_PER_TRACK and not self._evict_stale_rtx():
                raise _SsrcCapReached
            self._rtx_by_ssrc[ssrc] = layer
            self._live_rtx[index] = ssrc
            return layer, True
        if layer.ssrc is not None:
            # Same layer, new SSRC: the publisher restarted (resume, migration).
            self._by_ssrc.pop(layer.ssrc, None)
            self.counters.ssrc_changes += 1
        layer.bind(ssrc, self.clock_rate)
        self._by_ssrc[ssrc] = layer
        return layer, False

    def _evict_stale_rtx(self) -> bool:
        """Forget the oldest RTX SSRC that is not its layer's newest; False if all are live."""
        live = set(self._live_rtx.values())
        stale = next((s for s in self._rtx_by_ssrc if s not in live), None)
        if stale is None:
            return False
        del self._rtx_by_ssrc[stale]
        self.counters.rtx_ssrcs_evicted += 1
        return True

    def _receive_media(self, layer: _Layer, packet: bytes, bounds: tuple[int, int], now: float) -> bool:
        counters = self.counters
        seq = (packet[2] << 8) | packet[3]
        if layer.buffer.holds(seq):
            # A second copy (an answer to a NACK after the packet came late after all, a NACK
            # answered twice, libwebrtc's RTX padding below): forwarded, it would leave on the
            # subscriber's SSRC with a seq already sent, which its SRTP replay check discards
            # unseen, so the transport-wide feedback reports it lost (and the copy's bytes
            # were spent for nothing). Chromium publishers sent 35-54 such copies in 20 s.
            counters.dropped_duplicate += 1
            return False
        timestamp = (packet[4] << 24) | (packet[5] << 16) | (packet[6] << 8) | packet[7]
        layer.stats.on_packet(seq, timestamp, now, len(packet))
        start, end = bounds
        if self._nack_enabled:
            nack = layer.nack
            skipped = nack.padding_skipped
            if not nack.on_packet(seq, now, timestamp, packet[1] & 0x80 != 0, start == end):
                counters.nack_gaps_too_large += 1
                self.request_keyframe(layer.index, now)
            if start == end and nack.padding_skipped != skipped:
                filled = nack.padding_skipped - skipped
                if filled <= MAX_PADDING_FILL:
                    self._fill_padding_gap(layer, packet, bounds, filled, now)
                else:
                    # Each copy is a call into every down track: a publisher must not buy
                    # hundreds of them with one packet. A wider padding gap stays a hole.
                    counters.padding_gaps_not_filled += 1
        counters.packets += 1
        counters.bytes += len(packet)
        layer.last_arrival = now
        if start == end:
            counters.padding_only += 1  # still fanned out: down tracks close the seq gap
        else:
            if type(packet) is not bytes:
                packet = bytes(packet)
            layer.buffer.put(seq, packet)
            if self._vp8:
                # (the X and T bits looked at here: a stream without temporal ids pays no call)
                info = vp8_temporal(packet, start, end) if packet[start] & 0x80 and end - start > 1 and packet[
                    start + 1] & 0x20 else -1
                layer.temporal_bytes[info & 0x03 if info >= 0 else 0] += len(packet)
            if self._is_keyframe(packet, start, end):
                layer.keyframes += 1
                layer.last_keyframe_at = now
                counters.keyframes += 1
        self._fanout.forward(layer.index, packet, bounds, now)
        return True

    def _fill_padding_gap(self, layer: _Layer, padding: bytes, bounds: tuple[int, int], count: int, now: float) -> None:
        """The `count` seqs before `padding` were padding too (NackTracker): hand the down tracks
        a copy of it for each, in order, so that they close the gap as they close one for
        padding that arrives (padding is never forwarded). Left open, each was a hole the
        subscriber NACKed up to ten times in vain, and every padding after it in the burst
        (down tracks close gaps in order only) another."""
        seq = (padding[2] << 8) | padding[3]
        filler = bytearray(padding)
        for back in range(count, 0, -1):
            filler[2:4] = ((seq - back) & 0xFFFF).to_bytes(2, "big")
            self._fanout.forward(layer.index, bytes(filler), bounds, now)

    @property
    def fast_path(self) -> bool:
        """Whether the compiled fan-out forwards this track's steady state."""
        return self._fanout.compiled

    @property
    def compiled_packets(self) -> int:
        """Packets the compiled fan-out forwarded (or failed to send) for down tracks."""
        return self._fanout.compiled_packets

    def _receive_rtx(self, layer: _Layer, packet: bytes, bounds: tuple[int, int], now: float) -> bool:
        """RFC 4588: payload = original seq (2 bytes) + original payload; rebuild and deliver."""
        start, end = bounds
        apt = self._rtx_pts.get(packet[1] & 0x7F)
        if end - start < 2 or apt is None or layer.ssrc is None:
            # Padding-only RTX is bandwidth probing; nothing to recover.
            self.counters.rtx_dropped += 1
            return False
        original_seq = (packet[start] << 8) | packet[start + 1]
        if layer.buffer.holds(original_seq):
            # libwebrtc pads (probes, padding up to a layer's minimum) with resends of recent
            # packets on RTX when it negotiated it: a copy of what we have, not a repair.
            self.counters.rtx_duplicate += 1
            self.counters.dropped_duplicate += 1
            return False
        timestamp = (packet[4] << 24) | (packet[5] << 16) | (packet[6] << 8) | packet[7]
        rebuilt = bytearray(packet[:start])
        rebuilt += packet[start + 2 : end]
        rebuilt[0] &= 0xDF  # padding was left out
        rewrite_header(rebuilt, layer.ssrc, original_seq, timestamp, apt)
        self.counters.rtx_recovered += 1
        return self._receive_media(layer, bytes(rebuilt), (start, end - 2), now)

    # --- RTCP ---

    def handle_rtcp(self, packets: Sequence[RtcpPacket], now: float) -> None:
        """Parsed RTCP from the publisher; SRs are kept per layer for the SR mapping."""
        for packet in packets:
            if isinstance(packet, SenderReport):
                layer = self._by_ssrc.get(packet.ssrc)
                if layer is None:
                    continue
                layer.stats.on_sender_report(packet.ntp_timestamp, now)
                layer.sender_report = PublisherSenderReport(
                    packet.ssrc, packet.ntp_timestamp, packet.rtp_timestamp,
                    packet.packet_count, packet.octet_count, now,
                )

    def _nack_interval(self) -> float:
        return max(0.02, self.rtt * 1.2)

    def _after_given_up(self, layer: _Layer, seqs: Sequence[int], now: float) -> None:
        """Packets the publisher never resent: one that was media leaves its frame, and every
        frame after it up to a keyframe, undecodable for all subscribers of the layer, so ask
        for the keyframe now (rate-limited) rather than after each subscriber's own NACKs gave
        up. Media, for sure, if the packet before it is held and did not end its frame; lost
        padding (the publisher keeps none to resend) follows a frame's last packet."""
        buffer = layer.buffer
        media = 0
        for seq in seqs:
            before = buffer.get((seq - 1) & 0xFFFF)
            if before is not None and not before[1] & 0x80:
                media += 1
        if media:
            self.counters.nack_media_given_up += media
            self.request_keyframe(layer.index, now)

    def _judge_repairs(self, now: float) -> None:
        """The share of this track's packets that needed a resend (or never came), to the
        playout-delay policy; its floor is `playout_floor_ms`."""
        counters = self.counters
        counters.nack_repaired = sum(layer.nack.repaired for layer in self._layers.values())
        missed = counters.nack_repaired + counters.nack_seqs_given_up
        policy = self.playout
        if policy.update(max(0, counters.packets - counters.nack_repaired), missed, now):
            if policy.min_ms:
                counters.playout_floor_raised += 1
            else:
                counters.playout_floor_lifted += 1

    @property
    def playout_floor_ms(self) -> int:
        """The playout-delay floor this publisher's repairs call for (0: none)."""
        return self.playout.min_ms

    def next_deadline(self) -> Optional[float]:
        if self.state is not ReceiverState.OPEN:
            return None
        deadline = self._next_rr
        if self._nack_enabled:
            interval = self._nack_interval()
            for layer in self._layers.values():
                d = layer.nack.next_deadline(interval)
                if d is not None and d < deadline:
                    deadline = d
        return deadline

    def poll_rtcp(self, now: float) -> None:
        """Send whatever RTCP is due: batched NACKs per layer, then the periodic RR."""
        if self.state is not ReceiverState.OPEN:
            return
        counters = self.counters
        if self._nack_enabled:
            interval = self._nack_interval()
            # (summed here, not per packet: the trackers' counts only grow)
            counters.nack_padding_skipped = sum(layer.nack.padding_skipped for layer in self._layers.values())
            for layer in self._layers.values():
                if layer.ssrc is None:
                    continue
                before = layer.nack.given_up
                due = layer.nack.due(now, interval)
                counters.nack_seqs_given_up += layer.nack.given_up - before
                if layer.nack.last_given_up:
                    self._after_given_up(layer, layer.nack.last_given_up, now)
                if due:
                    counters.nacks_sent += 1
                    counters.nack_seqs_requested += len(due)
                    self._send_rtcp(build_nack(self.local_ssrc, layer.ssrc, due))
        if now >= self._next_rr:
            self._next_rr = now + self.rr_interval
            if self._nack_enabled:
                self._judge_repairs(now)
            blocks = []
            for layer in self._layers.values():
                layer.measure(now)
                if layer.ssrc is not None:
                    block = layer.stats.report_block(now)
                    if block is not None:
                        blocks.append(block)
            if blocks:
                counters.rrs_sent += 1
                self._send_rtcp(build_receiver_report(self.local_ssrc, blocks, self.cname))
