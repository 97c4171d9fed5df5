"""DownTrack: one published track as one subscriber receives it.

The subscriber must see a single, continuous RTP stream whatever happens
upstream: simulcast layer switches, a publisher that restarts with a new SSRC,
packets we choose not to forward (padding, unknown payload types). So every
forwarded packet gets the negotiated SSRC and payload type and a sequence
number / timestamp from per-source offsets:

* sequence numbers: ``out = in_extended - offset``; a packet dropped *in
  order* bumps the offset so it leaves no gap, while real losses keep theirs
  (the subscriber NACKs them and we answer from the receiver's buffer);
* timestamps: ``out = in + ts_offset``; at a switch the new source continues
  from the last sent timestamp plus the wall time elapsed since, in clock ticks;
* VP8 picture id / TL0PICIDX are shifted the same way (VP8 munging), so the
  decoder does not see a jump in picture ids at a layer switch.

Temporal layers (VP8 with a TID in its descriptor): with a temporal target below the top,
packets of frames above the temporal layer in force are dropped like padding (in order: not
numbered, so no gap) and each dropped picture takes its picture id with it (the picture id
offset steps back), so the subscriber sees a continuous stream of a lower frame rate;
TL0PICIDX needs nothing, as base-layer frames are never dropped. Going down takes effect at
the next frame; going up waits for a frame that starts the higher layer cleanly (a keyframe,
or a layer-sync frame: the Y bit), as LiveKit's VP8 temporal selector does.

A ring of per-output-sequence history (parallel typed arrays, no per-packet
objects) maps NACKed subscriber sequence numbers back to (layer, source seq).
"""

from __future__ import annotations

from array import array
from typing import Callable, Iterable, Mapping, NamedTuple, Optional, Protocol, Sequence

import attrs

from rtp.header_extensions import encode_playout_delay
from rtp.packet import append_extension_element, rewrite_header
from rtp.rtcp import Fir, Nack, Pli, ReceiverReport, Remb, ReportBlock, RtcpPacket, SenderReport, compact_ntp
from rtp.seqnum import SequenceUnwrapper
from rtp.twcc_sender import TransportSequencer, transport_seq_layout
from trio_sfu.forwarding.codec_keyframes import (
    VP8_FRAME_START,
    VP8_KEYFRAME,
    VP8_LAYER_SYNC,
    keyframe_detector,
    munge_vp8,
    parse_vp8_descriptor,
    payload_bounds,
    vp8_picture_id,
    vp8_temporal,
    write_vp8_picture_id,
)
from trio_sfu.forwarding.rtcp_feedback import PublisherSenderReport, build_sender_report, ntp_from_unix
from trio_sfu.native import NativeSendTarget

SendPacket = Callable[[bytes], bool]
_NTP_UNIT = 1 << 32


class NumberedDownlink(Protocol):
    """A downlink that numbers every RTP packet transport-wide (transport-cc): a down track
    writes the number itself, in the packet it builds, where its shared extension rewriter
    laid the element out once for the whole fan-out (`_ExtensionRewriter.stamping`); what it
    cannot lay out that way (a block that is not sane, an id its form cannot carry), and
    what it does not build itself (NACK answers, padding), goes through the plain send, which
    numbers it its own way."""

    @property
    def transport_sequencer(self) -> Optional[TransportSequencer]:
        """Who numbers packets on this downlink now; None while it does not (not negotiated)."""

    def send_numbered_rtp(self, packet: bytes) -> bool:
        """`packet`, already numbered: protect and send it; False when it could not go."""

    def native_send_target(self) -> Optional[NativeSendTarget]:
        """How the compiled fan-out may protect and send for this downlink now; None when it
        may not (not connected, not numbering, on ICE-TCP or TURN): the Python path serves."""


class NativeSlot(Protocol):
    """A down track's place in the compiled fan-out (trio_sfu.forwarding.fanout)."""

    def release(self, down_track: "DownTrack") -> None:
        """Write the state the compiled path advanced back into `down_track`, and leave."""

    def flush(self, down_track: "DownTrack") -> None:
        """Write the state the compiled path advanced back into `down_track`, and stay."""

    def adopt(self, down_track: "DownTrack") -> None:
        """Take the input position and offsets `down_track` moved on by dropping a packet (after
        a `flush`), and stay."""


class PacketSource(Protocol):
    """What a DownTrack needs from its TrackReceiver."""

    def get_packet(self, layer: int, seq: int) -> Optional[bytes]: ...

    def sender_report(self, layer: int) -> Optional[PublisherSenderReport]: ...

    def request_keyframe(self, layer: int, now: float) -> bool: ...

    def layer_active(self, layer: int, now: float) -> bool: ...

    def layer_demand_changed(self) -> None:
        """This down track's target layer or pause changed (a relayed copy asks for layers)."""

    @property
    def layers(self) -> tuple[int, ...]: ...


def effective_layer(source: PacketSource, target: int, now: float) -> int:
    """The layer a down track aiming at `target` forwards from `source` at `now`: the target
    if it is arriving; else the best arriving layer below it, else the lowest arriving above
    it; the target itself when nothing arrives at all. (The compiled fan-out's drop path asks
    it once per packet and target for all its down tracks: one answer, whoever asks.)"""
    if source.layer_active(target, now):
        return target
    layers = source.layers
    below = [l for l in layers if l < target and source.layer_active(l, now)]
    if below:
        return max(below)
    above = [l for l in layers if l > target and source.layer_active(l, now)]
    return min(above) if above else target


def map_payload_types(
    publisher: Iterable[tuple[int, str]], subscriber: Iterable[tuple[int, str]]
) -> dict[int, int]:
    """Publisher PT → subscriber PT by codec name (case-insensitive); first match wins."""
    by_name: dict[str, int] = {}
    for pt, name in subscriber:
        by_name.setdefault(name.lower(), pt)
    return {pt: by_name[name.lower()] for pt, name in publisher if name.lower() in by_name}


def rewrite_extension_ids(buf: bytearray, id_map: Mapping[int, int]) -> None:
    """Renumber RFC 8285 header extension elements in place from the publisher's ids to the
    subscriber's; elements the subscriber did not negotiate are zeroed, which both forms read
    as padding octets, so the packet length never changes. Raises nothing: a malformed
    block is left as it is (the receiver only passes packets whose block bounds are sane).
    """
    block = _extension_block(buf)
    if block is not None:
        _rewrite_block(buf, block[0], block[1], id_map)


def _extension_block(buf) -> Optional[tuple[int, int]]:
    """(start, end) of the extension block including its 4-octet header, or None."""
    size = len(buf)
    if size < 12 or not buf[0] & 0x10:
        return None
    pos = 12 + 4 * (buf[0] & 0x0F)
    if size < pos + 4:
        return None
    end = pos + 4 + 4 * ((buf[pos + 2] << 8) | buf[pos + 3])
    if end > size:
        return None
    return pos, end


def _rewrite_block(buf: bytearray, pos: int, end: int, id_map: Mapping[int, int]) -> None:
    profile = (buf[pos] << 8) | buf[pos + 1]
    pos += 4
    if profile == 0xBEDE:
        while pos < end:
            b = buf[pos]
            if b == 0:
                pos += 1
                continue
            ext_id = b >> 4
            if ext_id == 15:
                return
            length = (b & 0x0F) + 1
            if pos + 1 + length > end:
                return
            new_id = id_map.get(ext_id)
            if new_id is not None and 1 <= new_id <= 14:
                buf[pos] = (new_id << 4) | (b & 0x0F)
            else:
                buf[pos : pos + 1 + length] = bytes(1 + length)
            pos += 1 + length
    elif profile & 0xFFF0 == 0x1000:
        while pos < end:
            ext_id = buf[pos]
            if ext_id == 0:
                pos += 1
                continue
            if pos + 1 >= end:
                return
            length = buf[pos + 1]
            if pos + 2 + length > end:
                return
            new_id = id_map.get(ext_id)
            if new_id is not None and 1 <= new_id <= 255:
                buf[pos] = new_id
            else:
                buf[pos : pos + 2 + length] = bytes(2 + length)
            pos += 2 + length


class StampLayout(NamedTuple):
    """A fan-out packet laid out for transport-wide numbering (`_ExtensionRewriter.stamping`):
    `out[start:end] = region` (end: the end of the original extension block, or `start` when
    there was none), the X bit set when `set_extension_bit`, then the seq's 2 octets at `at`."""

    start: int
    end: int
    region: bytes
    at: int
    set_extension_bit: bool
    added: bool  # the element was added (the packet grew)


class _ExtensionRewriter:
    """:func:`rewrite_extension_ids` for one id map, memoised.

    Every down track of a receiver is handed the same packet object in turn, and
    subscribers negotiate the same ids (the SFU writes the offer), so one rewriter is
    shared by all down tracks with equal maps: the first of a fan-out computes the new
    block, the rest copy it in (an identity check, no parsing). Blocks that repeat
    across packets (mid/rid only) also hit a small by-content cache.
    """

    __slots__ = ("id_map", "playout", "_last_packet", "_last_block", "_by_content", "_stamp_packet", "_stamp_ext_id",
                 "_stamp", "_layouts")

    _CONTENT_CACHE_SIZE = 256

    def __init__(self, id_map: Mapping[int, int], playout: Optional[tuple[int, bytes]] = None) -> None:
        self.id_map = dict(id_map)
        # (subscriber's id, value) of a playout-delay element every numbered packet carries
        # (`DownTrack.set_playout_delay`); down tracks share a rewriter only with equal ones.
        self.playout = playout
        self._last_packet: Optional[bytes] = None
        # (start, end, rewritten block) for _last_packet; None when it has no sane block.
        self._last_block: Optional[tuple[int, int, bytes]] = None
        self._by_content: dict[bytes, bytes] = {}
        # `stamping`'s memo: the last packet and id asked about, and layouts by (block, id).
        self._stamp_packet: Optional[bytes] = None
        self._stamp_ext_id = -1
        self._stamp: Optional[StampLayout] = None
        self._layouts: dict[tuple[bytes, int], tuple[bytes, int]] = {}

    def rewrite(self, out: bytearray, packet: bytes) -> None:
        """Rewrite ``out`` (a copy of ``packet``, header fields aside) in place."""
        if packet is not self._last_packet or type(packet) is not bytes:
            # (A mutable buffer may change between calls; only immutable bytes are memoised by identity.)
            self.prepare(packet)
        block = self._last_block
        if block is not None:
            out[block[0] : block[1]] = block[2]

    def prepare(self, packet: bytes) -> Optional[tuple[int, int, bytes]]:
        """`packet`'s rewritten block: (start, end, the block), None when it has none;
        remembered for the `rewrite`s that follow."""
        self._last_packet = packet
        bounds = _extension_block(packet)
        if bounds is None:
            self._last_block = None
            return None
        start, end = bounds
        original = bytes(packet[start:end])
        rewritten = self._by_content.get(original)
        if rewritten is None:
            scratch = bytearray(original)
            _rewrite_block(scratch, 0, end - start, self.id_map)
            rewritten = bytes(scratch)
            if len(self._by_content) >= self._CONTENT_CACHE_SIZE:
                self._by_content.clear()
            self._by_content[original] = rewritten
        block = self._last_block = (start, end, rewritten)
        return block

    def stamping(self, packet: bytes, ext_id: int) -> Optional[StampLayout]:
        """How to lay `packet` out for a subscriber whose transport numbers its packets with
        element `ext_id`: the region from the end of the CSRCs to the end of the extension
        block replaced by the rewritten block with that element in it (as the transport's
        `write_transport_seq` would put it: overwritten, in zeroed octets, or added), and
        where its value goes. Computed once per fan-out packet; None when the element cannot
        be put in that way (the transport's own stamping then decides)."""
        if packet is not self._stamp_packet or ext_id != self._stamp_ext_id or type(packet) is not bytes:
            self._stamp_packet = packet
            self._stamp_ext_id = ext_id
            self._stamp = self._layout(packet, ext_id)
        return self._stamp

    def _layout(self, packet: bytes, ext_id: int) -> Optional[StampLayout]:
        size = len(packet)
        if size < 12:
            return None
        pos = 12 + 4 * (packet[0] & 0x0F)
        if packet[0] & 0x10:
            if packet is not self._last_packet or type(packet) is not bytes:
                self.prepare(packet)
            block = self._last_block
            if block is None:
                return None  # an extension block that is not sane
            end, original, rewritten = block[1], bytes(packet[pos:block[1]]), block[2]
        elif size < pos:
            return None
        else:
            end, original, rewritten = pos, b"", b""
        key = (original, ext_id)
        cached = self._layouts.get(key)
        if cached is None:
            # The layout of the region does not depend on what precedes it: lay it out behind
            # a bare 12-octet header.
            laid = transport_seq_layout(bytes((0x90 if rewritten else 0x80,)) + bytes(11) + rewritten, ext_id)
            if laid is None:
                return None
            new, at = laid
            region = new[12:]
            if self.playout is not None:
                # After the other elements: where the transport-wide number sits does not move.
                region = append_extension_element(region, *self.playout)
                if region is None:
                    return None
            cached = (region, at - 12)
            if len(self._layouts) >= self._CONTENT_CACHE_SIZE:
                self._layouts.clear()
            self._layouts[key] = cached
        region, at = cached
        return StampLayout(pos, end, region, pos + at, not rewritten, len(region) != end - pos)


#: Shared rewriters by id map and playout element (see _ExtensionRewriter); few distinct ones
#: exist per node.
_REWRITERS: dict[tuple[frozenset, Optional[tuple[int, bytes]]], _ExtensionRewriter] = {}


def _shared_rewriter(id_map: Mapping[int, int], playout: Optional[tuple[int, bytes]] = None) -> _ExtensionRewriter:
    key = (frozenset(id_map.items()), playout)
    rewriter = _REWRITERS.get(key)
    if rewriter is None:
        if len(_REWRITERS) >= 1024:
            _REWRITERS.clear()
        rewriter = _REWRITERS[key] = _ExtensionRewriter(id_map, playout)
    return rewriter


@attrs.frozen
class DownTrackSnapshot:
    """Rewrite state to cache with the transceiver, so a later subscription on the same
    SSRC continues the numbering (the subscriber's jitter buffer would otherwise see
    the stream jump backwards)."""

    last_sequence: int  # extended
    last_timestamp: int
    last_timestamp_at: float
    vp8_picture_id: int = -1
    vp8_tl0picidx: int = -1
    rtx_sequence: int = 0
    packets_sent: int = 0
    octets_sent: int = 0


@attrs.define
class DownTrackCounters:
    packets_sent: int = 0
    octets_sent: int = 0  # payload octets, as the SR counts them
    dropped_disabled: int = 0
    dropped_other_layer: int = 0
    dropped_waiting_keyframe: int = 0
    dropped_padding: int = 0
    # Padding that overtook packets before it, its seq closed once they came (padding_closed_late).
    padding_closed_late: int = 0
    dropped_unknown_payload_type: int = 0
    dropped_too_old: int = 0
    dropped_malformed: int = 0
    dropped_temporal: int = 0  # above the temporal layer in force
    dropped_send_failed: int = 0
    layer_switches: int = 0
    source_switches: int = 0
    temporal_switches: int = 0
    nack_requests: int = 0
    nack_resent: int = 0
    nack_missing: int = 0
    nack_temporal_dropped: int = 0  # NACKed, never forwarded as above the temporal layer: not missing
    nack_late_forwarded: int = 0  # NACKed, never forwarded (it came before its switch point): sent now
    catch_up_sent: int = 0  # packets of a new source that arrived before its keyframe, sent at the switch
    nack_throttled: int = 0
    keyframe_requests_received: int = 0  # PLIs and FIRs
    firs_received: int = 0
    keyframe_requests_forwarded: int = 0
    srs_sent: int = 0


_MAX_OFFSET_CHANGES = 64
#: Padding seqs remembered ahead of the newest in order (one burst's worth, and then some).
_MAX_PADDING_AHEAD = 32
_NEG_INF = float("-inf")
#: How often the layer actually forwarded is re-derived from the target and what is arriving.
_EFFECTIVE_TARGET_PERIOD = 0.1
#: At a switch, how far past the keyframe's first packet to look for packets that overtook it,
#: and how many missing sequence numbers in a row end the look.
_CATCH_UP_MAX = 128
_CATCH_UP_GAP = 8
#: VP8's highest temporal id (2 bits): a temporal target of it forwards every temporal layer.
MAX_TEMPORAL = 3


class DownTrack:
    """See the module docstring. ``target_layer`` None means paused."""

    def __init__(
        self,
        source: PacketSource,
        *,
        ssrc: int,
        payload_types: Mapping[int, int],
        clock_rate: int,
        mime_type: str,
        send_rtp: SendPacket,
        send_rtcp: SendPacket,
        cname: str = "trio-sfu",
        target_layer: Optional[int] = 0,
        rtx_ssrc: Optional[int] = None,
        rtx_payload_types: Optional[Mapping[int, int]] = None,
        history_size: int = 1024,
        rtcp_interval: float = 1.0,
        wallclock_offset: float = 0.0,
        extension_ids: Optional[Mapping[int, int]] = None,
        snapshot: Optional[DownTrackSnapshot] = None,
        numbered: Optional[NumberedDownlink] = None,
        playout_delay_id: Optional[int] = None,
    ) -> None:
        self._source = source
        # The subscriber's id for the playout-delay element, if it negotiated one.
        self._playout_delay_id = playout_delay_id
        self._playout_delay: Optional[tuple[int, int]] = None
        # Set: forwarded packets are numbered here, in place (see NumberedDownlink).
        self._numbered = numbered
        self.ssrc = ssrc
        self._pt_map = dict(payload_types)
        self.clock_rate = clock_rate
        self.mime_type = mime_type
        self._send_rtp = send_rtp
        self._send_rtcp = send_rtcp
        self.cname = cname
        self.rtx_ssrc = rtx_ssrc
        # subscriber media PT -> its RTX PT (a=fmtp:<rtx> apt=<media>); resends use RTX when set
        self.rtx_payload_types = dict(rtx_payload_types or {})
        self.rtcp_interval = rtcp_interval
        self.wallclock_offset = wallclock_offset
        # publisher extension id -> subscriber id; None forwards the block untouched
        self._rewriter = _shared_rewriter(extension_ids) if extension_ids is not None else None
        self._is_keyframe = keyframe_detector(mime_type)
        self._vp8 = mime_type.lower().rsplit("/", 1)[-1] == "vp8"
        self.target_layer = target_layer
        # The best layer the subscriber's settings ask for; the target (the stream allocator's
        # share) is at most this. What the publisher's dynacast counts: a subscriber held low
        # for lack of bandwidth still wants it, as LiveKit's max subscribed quality.
        self.subscribed_max_layer = target_layer
        self._effective_target = target_layer
        self._effective_checked_at = float("-inf")
        self.disabled = target_layer is None
        self.current_layer: Optional[int] = None
        # The best temporal layer to forward (MAX_TEMPORAL: all) and the one in force (it
        # follows the target at frame boundaries; see the module docstring). VP8 only.
        self._temporal_target = MAX_TEMPORAL
        self._temporal_current = MAX_TEMPORAL
        # Whether packets pass the temporal filter (a cap in force or a switch under way): one
        # test per packet when neither (`_temporal_changed` keeps it).
        self._temporal_filtering = False
        # The input picture id of the last picture dropped for its temporal layer (its id is
        # taken out of the output once, whatever number of packets it has).
        self._temporal_dropped_pid = -1
        # The highest temporal id seen while filtering (how far up "all" reaches in this stream).
        self._temporal_seen = 0
        self.rtt: Optional[float] = None
        self.fraction_lost = 0
        # The subscriber's newest report block on this stream and when it came (connection quality).
        self.last_report: Optional[ReportBlock] = None
        self.last_report_at: Optional[float] = None
        self.remb: Optional[int] = None
        self._counters = DownTrackCounters()
        # Set while the compiled fan-out forwards for this track (trio_sfu.forwarding.fanout):
        # it holds the forwarding state then; `_sync_native` copies it here before Python reads
        # it, `_pull_native` hands it back before Python changes it.
        self._native_slot: Optional[NativeSlot] = None
        self._native_retry_at = _NEG_INF
        # The part of counters.packets_sent/octets_sent a restored snapshot carried over (the
        # SR's counts continue the previous down track's, which counted those packets itself).
        self._inherited_packets = 0
        self._inherited_octets = 0

        size = 1
        while size < history_size:
            size <<= 1
        self._mask = size - 1
        # Typed arrays, not lists: a list slot points at a separate int object once written
        # (~190 KB per down track when full, against 33 KB here) and a node holds thousands.
        self._h_ext = array("q", [-1]) * size
        self._h_layer = array("b", [0]) * size
        self._h_src_ssrc = array("I", [0]) * size
        self._h_in_seq = array("H", [0]) * size
        self._h_ts = array("I", [0]) * size
        self._h_pid = array("i", [-1]) * size
        self._h_tl0 = array("h", [-1]) * size
        self._h_resent = array("d", [_NEG_INF]) * size

        # Per-source state, (re)set by _switch_source.
        self._source_ssrc: Optional[int] = None
        self._unwrap = SequenceUnwrapper()
        self._source_start = 0
        self._highest_in = 0
        self._offset = 0
        # (first extended input seq, seq offset, picture id offset) — the offsets late packets need.
        self._offset_changes: list[tuple[int, int, int]] = []
        # Extended input seqs of padding that came ahead of packets before it (_early_padding).
        self._padding_ahead: set[int] = set()
        self._ts_offset = 0
        self._pid_offset = 0
        self._tl0_offset = 0

        # Output state: what the subscriber has seen.
        self._last_seq: Optional[int] = None
        self._last_ts: Optional[int] = None
        self._last_ts_at = 0.0
        self._last_pid = -1
        self._last_tl0 = -1
        self._rtx_seq = 0

        self._next_sr: Optional[float] = None
        self._last_sr: Optional[tuple[int, int, float]] = None  # (ntp, rtp, now) of the last SR sent
        self._sr_sent_at: dict[int, float] = {}  # compact NTP -> now, for RTT from LSR/DLSR
        if snapshot is not None:
            self.restore(snapshot)

    @property
    def counters(self) -> DownTrackCounters:
        if self._native_slot is not None:
            self._sync_native()
        return self._counters

    def _sync_native(self) -> None:
        """Bring this object up to date with what the compiled fan-out did (it goes on
        forwarding): for the entry points that read the forwarding state, not change it."""
        slot = self._native_slot
        if slot is not None:
            slot.flush(self)

    def _pull_native(self) -> None:
        """Take the forwarding state back from the compiled fan-out (it forwards no more for
        this track until it is armed again)."""
        slot = self._native_slot
        if slot is not None:
            slot.release(self)

    @property
    def extension_ids(self) -> Optional[dict[int, int]]:
        """Publisher extension id -> subscriber id; None forwards the block untouched."""
        return dict(self._rewriter.id_map) if self._rewriter is not None else None

    # --- settings ---

    def set_target_layer(self, layer: Optional[int], now: float) -> None:
        """From UpdateTrackSettings (via simulcast.select_target_layer); None pauses."""
        if self._native_slot is not None:
            self._pull_native()
        was_disabled = self.disabled
        self.target_layer = layer
        self._effective_target = layer
        self._effective_checked_at = float("-inf")
        self.disabled = layer is None
        if layer is not None and was_disabled:
            # Packets skipped while paused were never numbered: restart from a keyframe
            # as a new source so the subscriber sees neither a gap nor an undecodable delta.
            self.current_layer = None
        if layer is not None and layer != self.current_layer:
            self._source.request_keyframe(layer, now)
        self._source.layer_demand_changed()

    @property
    def target_temporal(self) -> Optional[int]:
        """The best temporal layer to forward; None: all of them (no cap)."""
        target = self._temporal_target
        return None if target >= MAX_TEMPORAL else target

    @property
    def current_temporal(self) -> Optional[int]:
        """The temporal cap in force now (it follows the target at frame boundaries); None: none."""
        current = self._temporal_current
        return None if current >= MAX_TEMPORAL else current

    @property
    def source_playout_floor_ms(self) -> int:
        """The floor the publisher's repairs call for (TrackReceiver.playout_floor_ms; 0 from a
        source that does not say)."""
        return getattr(self._source, "playout_floor_ms", 0)

    @property
    def playout_delay(self) -> Optional[tuple[int, int]]:
        """(min, max) ms of the playout-delay element this track's packets carry; None: none."""
        return self._playout_delay

    def set_playout_delay(self, min_ms: int, max_ms: int) -> bool:
        """Carry a playout-delay element (min_ms, max_ms) on every packet from now on, which
        sets the floor of the subscriber's jitter buffer; False when this subscriber cannot be
        told (it did not negotiate the element with an id the one-byte form carries, or its
        packets are not numbered here, where the element is put in). libwebrtc keeps the last
        values it read, so a floor is lifted with (0, max), not by leaving the element out."""
        rewriter = self._rewriter
        numbered = self._numbered
        if (rewriter is None or self._playout_delay_id is None or numbered is None
                or numbered.transport_sequencer is None or not 1 <= self._playout_delay_id <= 14):
            # (An id above 14 needs the two-byte form, which the publisher's one-byte blocks
            # are not: every packet would go without the element and the fan-out's layout.)
            return False
        if self._playout_delay == (min_ms, max_ms):
            return True
        value = encode_playout_delay(min_ms, max_ms)
        if self._native_slot is not None:
            self._pull_native()  # the compiled fan-out lays packets out with its rewriter's element
        self._rewriter = _shared_rewriter(rewriter.id_map, (self._playout_delay_id, value))
        self._playout_delay = (min_ms, max_ms)
        return True

    def set_target_temporal(self, temporal: Optional[int]) -> None:
        """Forward VP8 frames of temporal layers up to `temporal` only (None: all); from the
        stream allocator. Codecs without temporal ids in their packets ignore it."""
        target = MAX_TEMPORAL if temporal is None else min(max(0, int(temporal)), MAX_TEMPORAL)
        if target == self._temporal_target:
            return
        if self._native_slot is not None:
            self._pull_native()  # a switch is Python's business (the compiled path keeps a steady cap)
        self._temporal_target = target
        if self.current_layer is None:
            self._temporal_current = target  # nothing flows yet: the next keyframe starts there
        self._temporal_changed()

    def _temporal_changed(self) -> None:
        current = self._temporal_current
        self._temporal_filtering = self._vp8 and (current < MAX_TEMPORAL or current != self._temporal_target)

    def set_disabled(self, disabled: bool, now: float) -> None:
        if self._native_slot is not None:
            self._pull_native()
        was_disabled = self.disabled
        self.disabled = disabled
        if was_disabled and not disabled and self.target_layer is not None:
            # The stream resumes mid-GOP: the subscriber needs a keyframe to decode.
            self.current_layer = None
            self._source.request_keyframe(self.target_layer, now)
        if was_disabled != disabled:
            self._source.layer_demand_changed()

    @property
    def wanted_layers(self) -> frozenset[int]:
        """The layer this down track wants forwarded (its target), none while paused."""
        if self.disabled or self.target_layer is None:
            return frozenset()
        return frozenset((self.target_layer,))

    def set_subscribed_max_layer(self, layer: Optional[int]) -> None:
        """The subscriber's settings now ask for at most `layer` (None: nothing)."""
        if layer != self.subscribed_max_layer:
            self.subscribed_max_layer = layer
            self._source.layer_demand_changed()

    @property
    def subscribed_layers(self) -> frozenset[int]:
        """The best layer the subscriber asks for, whatever the allocator gives it now."""
        layer = self.subscribed_max_layer
        return frozenset() if layer is None else frozenset((layer,))

    # --- snapshot ---

    def snapshot(self) -> Optional[DownTrackSnapshot]:
        if self._native_slot is not None:
            self._sync_native()
        if self._last_seq is None or self._last_ts is None:
            return None
        return DownTrackSnapshot(
            self._last_seq, self._last_ts, self._last_ts_at, self._last_pid, self._last_tl0,
            self._rtx_seq, self._counters.packets_sent, self._counters.octets_sent,
        )

    def own_counters(self) -> DownTrackCounters:
        """The counters of what this down track did itself: without the packets and octets a
        restored snapshot carried over for the SR (node-wide totals would count them twice)."""
        counters = self.counters
        return attrs.evolve(counters, packets_sent=counters.packets_sent - self._inherited_packets,
                            octets_sent=counters.octets_sent - self._inherited_octets)

    def restore(self, snapshot: DownTrackSnapshot) -> None:
        if self._native_slot is not None:
            self._pull_native()
        self._last_seq = snapshot.last_sequence
        self._last_ts = snapshot.last_timestamp & 0xFFFFFFFF
        self._last_ts_at = snapshot.last_timestamp_at
        self._last_pid = snapshot.vp8_picture_id
        self._last_tl0 = snapshot.vp8_tl0picidx
        self._rtx_seq = snapshot.rtx_sequence
        counters = self._counters
        self._inherited_packets += snapshot.packets_sent - counters.packets_sent
        self._inherited_octets += snapshot.octets_sent - counters.octets_sent
        counters.packets_sent = snapshot.packets_sent
        counters.octets_sent = snapshot.octets_sent
        self.current_layer = None

    # --- RTP ---

    def write_rtp(self, layer: int, packet: bytes, now: float) -> bool:
        """One packet of ``layer`` from the receiver; True when it went to the subscriber."""
        counters = self._counters
        if self.disabled:
            counters.dropped_disabled += 1
            return False
        ssrc = (packet[8] << 24) | (packet[9] << 16) | (packet[10] << 8) | packet[11]
        switched = False
        if layer != self.current_layer or ssrc != self._source_ssrc:
            if self._native_slot is not None:
                self._sync_native()  # when it last looked at the layers: the compiled path looks too
            effective = self._effective_target
            if layer != effective and effective is not None and (
                now - self._effective_checked_at >= _EFFECTIVE_TARGET_PERIOD
                # a layer nearer the target than the fallback just arrived: look now
                or effective < layer <= self.target_layer  # type: ignore[operator]
                or self.target_layer <= layer < effective  # type: ignore[operator]
            ):
                self._update_effective_target(now)
            if layer != self._effective_target:
                counters.dropped_other_layer += 1
                return False
            if self._native_slot is not None:
                self._pull_native()
            bounds = payload_bounds(packet)
            if bounds is None or bounds[0] == bounds[1] or not self._is_keyframe(packet, *bounds):
                counters.dropped_waiting_keyframe += 1
                self._source.request_keyframe(layer, now)
                return False
            self._switch_source(layer, ssrc, packet, bounds, now)
            switched = True
        elif self._native_slot is not None:
            if self._temporal_current < MAX_TEMPORAL and self._armed_temporal_drop(packet, now):
                return False
            self._pull_native()  # the compiled fan-out left this packet to us

        seq = (packet[2] << 8) | packet[3]
        in_ext = self._unwrap.unwrap(seq)
        if in_ext < self._source_start:
            counters.dropped_too_old += 1
            return False
        pt_out = self._pt_map.get(packet[1] & 0x7F)
        bounds = payload_bounds(packet)
        if bounds is None:
            counters.dropped_malformed += 1
            return False
        if pt_out is None or bounds[0] == bounds[1]:
            if pt_out is None:
                counters.dropped_unknown_payload_type += 1
            else:
                counters.dropped_padding += 1
                if in_ext > self._highest_in + 1:
                    self._early_padding(in_ext)
            self._close_gap(in_ext, -1)
            return False
        if self._temporal_filtering:
            if not self._temporal_admits(packet, bounds, in_ext, switched):
                counters.dropped_temporal += 1
                self._close_gap(in_ext, vp8_picture_id(packet, bounds[0], bounds[1]))
                return False

        if in_ext > self._highest_in:
            self._highest_in = in_ext
            offset = self._offset
            pid_offset = self._pid_offset
            if self._padding_ahead:
                self._close_padding_ahead()
        else:
            offsets = self._offset_for(in_ext)
            if offsets is None:
                counters.dropped_too_old += 1
                return False
            offset, pid_offset = offsets
        out_ext = in_ext - offset
        timestamp = (packet[4] << 24) | (packet[5] << 16) | (packet[6] << 8) | packet[7]
        out_ts = (timestamp + self._ts_offset) & 0xFFFFFFFF

        out = bytearray(packet)
        rewrite_header(out, self.ssrc, out_ext, out_ts, pt_out)
        rewriter = self._rewriter
        numbered = self._numbered
        sequencer = numbered.transport_sequencer if numbered is not None else None
        layout = rewriter.stamping(packet, sequencer.ext_id) if rewriter is not None and sequencer is not None else None
        start, end = bounds
        if layout is not None:
            # Laid out for numbering here (the element's place found once per fan-out packet).
            out[layout.start:layout.end] = layout.region
            if layout.set_extension_bit:
                out[0] |= 0x10
            shift = len(layout.region) - (layout.end - layout.start)
            start += shift
            end += shift
        elif rewriter is not None:
            rewriter.rewrite(out, packet)
        if self._vp8:
            pid_out, tl0_out = munge_vp8(out, start, end, pid_offset, self._tl0_offset)
        else:
            pid_out = tl0_out = -1

        slot = out_ext & self._mask
        self._h_ext[slot] = out_ext
        self._h_layer[slot] = layer
        self._h_src_ssrc[slot] = ssrc
        self._h_in_seq[slot] = seq
        self._h_ts[slot] = out_ts
        self._h_pid[slot] = pid_out
        self._h_tl0[slot] = tl0_out
        self._h_resent[slot] = _NEG_INF

        last_seq = self._last_seq
        if last_seq is None or out_ext > last_seq:
            self._last_seq = out_ext
            if pid_out >= 0:
                self._last_pid = pid_out
            if tl0_out >= 0:
                self._last_tl0 = tl0_out
        last_ts = self._last_ts
        # timestamp_diff(out_ts, last_ts) > 0, inlined: this runs once per packet per subscriber.
        if last_ts is None or 0 < ((out_ts - last_ts) & 0xFFFFFFFF) < 0x80000000:
            self._last_ts = out_ts
            self._last_ts_at = now

        if layout is not None:
            transport_seq = sequencer.stamp_at(out, layout.at, now, layout.added)  # type: ignore[union-attr]
            if not numbered.send_numbered_rtp(bytes(out)):  # type: ignore[union-attr]
                sequencer.give_back(transport_seq)
                counters.dropped_send_failed += 1
                return False
        elif not self._send_rtp(bytes(out)):
            counters.dropped_send_failed += 1
            return False
        counters.packets_sent += 1
        counters.octets_sent += bounds[1] - bounds[0]
        if self._next_sr is None:
            self._next_sr = now + self.rtcp_interval
        if switched:
            self._catch_up(layer, ssrc, seq, now)
        return True

    def _catch_up(self, layer: int, ssrc: int, seq: int, now: float) -> None:
        """Right after a switch to the keyframe starting at `seq`: forward the packets of the
        new source that overtook it on the way (reordering). They were dropped while waiting
        for the keyframe, but they are in the receiver's buffer, and without them the
        subscriber could not complete the keyframe (it would NACK them in vain, then ask for
        another keyframe)."""
        source = self._source
        misses = 0
        for step in range(1, _CATCH_UP_MAX + 1):
            packet = source.get_packet(layer, (seq + step) & 0xFFFF)
            if packet is None or int.from_bytes(packet[8:12], "big") != ssrc:
                misses += 1
                if misses >= _CATCH_UP_GAP:
                    return
                continue
            misses = 0
            if self.write_rtp(layer, packet, now):
                self._counters.catch_up_sent += 1

    def _close_gap(self, in_ext: int, picture_id: int) -> None:
        """A packet not forwarded: in order, it takes no output sequence number (the subscriber
        must not NACK what never comes), and a dropped picture (`picture_id`, -1 for none) takes
        no picture id. Out of order its number stays a gap, as a loss would."""
        if in_ext != self._highest_in + 1:
            return
        self._take_no_seq(in_ext, picture_id)
        if self._padding_ahead:
            self._close_padding_ahead()

    def _take_no_seq(self, in_ext: int, picture_id: int) -> None:
        """`_close_gap` for the next seq in order."""
        self._highest_in = in_ext
        self._offset += 1
        if picture_id >= 0 and picture_id != self._temporal_dropped_pid:
            self._temporal_dropped_pid = picture_id
            self._pid_offset = (self._pid_offset - 1) & 0x7FFF
        self._offset_changes.append((in_ext + 1, self._offset, self._pid_offset))
        if len(self._offset_changes) > _MAX_OFFSET_CHANGES:
            del self._offset_changes[0]

    def _early_padding(self, in_ext: int) -> None:
        """Padding that overtook packets before it (a jittery link reorders a burst of padding
        and the frame it follows): its seq is closed once those came, as if it came in order.
        Dropped outright, it was a hole in the subscriber's stream (NACKed in vain, counted
        lost) whenever it overtook anything."""
        ahead = self._padding_ahead
        if len(ahead) >= _MAX_PADDING_AHEAD:
            ahead.discard(min(ahead))
        ahead.add(in_ext)

    def _close_padding_ahead(self) -> None:
        """Close the padding seqs remembered ahead that now follow the newest in order."""
        ahead = self._padding_ahead
        while self._highest_in + 1 in ahead:
            ahead.discard(self._highest_in + 1)
            self._counters.padding_closed_late += 1
            self._take_no_seq(self._highest_in + 1, -1)
        if ahead and min(ahead) <= self._highest_in:
            ahead.difference_update([e for e in ahead if e <= self._highest_in])

    def _temporal_admits(self, packet: bytes, bounds: tuple[int, int], in_ext: int, switched: bool) -> bool:
        """Whether a VP8 packet's temporal layer is forwarded; moves the layer in force toward
        the target at a frame's first packet (in order): down at once, up at a keyframe or a
        layer-sync frame of a layer between the two."""
        info = vp8_temporal(packet, bounds[0], bounds[1])
        if info < 0:
            # No temporal id: the base layer. A stream without them has nothing to filter: the
            # target is in force at once (so the compiled fan-out may take the track).
            if self._temporal_current != self._temporal_target:
                self._temporal_current = self._temporal_target
                self._temporal_changed()
            return True
        tid = info & 0x03
        if tid > self._temporal_seen:
            self._temporal_seen = tid
        current, target = self._temporal_current, self._temporal_target
        if current != target and info & VP8_FRAME_START and in_ext > self._highest_in:
            if switched or info & VP8_KEYFRAME:
                current = target  # nothing after a keyframe refers to what came before it
            elif target < current:
                current = target
            elif current < tid <= target and info & VP8_LAYER_SYNC:
                # The stream's top layer reached: the target is in force (it may name a layer
                # above any the publisher sends, as "all" does).
                current = target if tid >= self._temporal_seen else tid
            if current != self._temporal_current:
                self._temporal_current = current
                self._counters.temporal_switches += 1
                self._temporal_changed()
        return tid <= current

    def _armed_temporal_drop(self, packet: bytes, now: float) -> bool:
        """For a track armed in the compiled fan-out under a steady temporal cap: drop a packet
        above it (the compiled path leaves those to Python) without taking the state back —
        the few fields a drop changes are written to both sides. False: not such a drop."""
        slot = self._native_slot
        if slot is None or self._temporal_target != self._temporal_current:
            return False
        bounds = payload_bounds(packet)
        if bounds is None or bounds[0] == bounds[1]:
            return False
        info = vp8_temporal(packet, bounds[0], bounds[1])
        if info < 0 or info & 0x03 <= self._temporal_current:
            return False
        self._sync_native()
        in_ext = self._unwrap.unwrap((packet[2] << 8) | packet[3])
        if in_ext < self._source_start:
            self._counters.dropped_too_old += 1
        else:
            self._counters.dropped_temporal += 1
            self._close_gap(in_ext, vp8_picture_id(packet, bounds[0], bounds[1]))
        slot.adopt(self)
        return True

    def _forward_unsent(self, ext: int, now: float) -> Optional[bool]:
        """A NACK for an output sequence number never forwarded: if it maps to a packet of the
        current source that is in the receiver's buffer (it was dropped before the source's
        switch point), forward it now. True when sent; None when the packet is there but above
        the temporal layer in force (left out on purpose, not missing)."""
        layer, ssrc, last = self.current_layer, self._source_ssrc, self._last_seq
        if layer is None or ssrc is None or last is None or self.disabled or last - ext > self._mask:
            return False
        for first, offset, _ in reversed(self._offset_changes):
            if ext + offset >= first:
                in_ext = ext + offset
                break
        else:
            return False
        if not self._source_start <= in_ext <= self._highest_in:
            return False
        packet = self._source.get_packet(layer, in_ext & 0xFFFF)
        if packet is None or int.from_bytes(packet[8:12], "big") != ssrc:
            return False
        if self._vp8 and self._temporal_current < MAX_TEMPORAL:
            bounds = payload_bounds(packet)
            info = vp8_temporal(packet, bounds[0], bounds[1]) if bounds is not None else -1
            if info >= 0 and info & 0x03 > self._temporal_current:
                return None
        return self.write_rtp(layer, packet, now)

    def _update_effective_target(self, now: float) -> None:
        """Look at which layers arrive (`effective_layer`); a new fallback asks for its keyframe."""
        self._effective_checked_at = now
        target = self.target_layer
        if target is None:
            return
        source = self._source
        effective = effective_layer(source, target, now)
        if effective != self._effective_target:
            self._effective_target = effective
            if effective != self.current_layer:
                source.request_keyframe(effective, now)

    @property
    def effective_target_layer(self) -> Optional[int]:
        """The layer being forwarded or switched to (target, or a fallback while it is absent)."""
        return self._effective_target

    def _offset_for(self, in_ext: int) -> Optional[tuple[int, int]]:
        """(seq offset, picture id offset) that applied when `in_ext` came in order."""
        for first, offset, pid_offset in reversed(self._offset_changes):
            if in_ext >= first:
                return offset, pid_offset
        return None

    def _switch_source(self, layer: int, ssrc: int, packet: bytes, bounds: tuple[int, int], now: float) -> None:
        counters = self._counters
        if layer != self.current_layer and self.current_layer is not None:
            counters.layer_switches += 1
        else:
            counters.source_switches += 1
        self.current_layer = layer
        self._source_ssrc = ssrc
        self._unwrap = SequenceUnwrapper()
        in_ext = self._unwrap.unwrap((packet[2] << 8) | packet[3])
        self._source_start = in_ext
        self._highest_in = in_ext - 1
        self._offset = 0 if self._last_seq is None else in_ext - (self._last_seq + 1)
        timestamp = (packet[4] << 24) | (packet[5] << 16) | (packet[6] << 8) | packet[7]
        if self._last_ts is None:
            self._ts_offset = 0
        else:
            elapsed = max(0.0, now - self._last_ts_at)
            target = self._last_ts + max(1, int(round(elapsed * self.clock_rate)))
            self._ts_offset = (target - timestamp) & 0xFFFFFFFF
        self._pid_offset = self._tl0_offset = 0
        if self._vp8:
            desc = parse_vp8_descriptor(packet, bounds[0], bounds[1])
            if desc is not None:
                if desc.picture_id is not None and self._last_pid >= 0:
                    self._pid_offset = (self._last_pid + 1 - desc.picture_id) & 0x7FFF
                if desc.tl0picidx is not None and self._last_tl0 >= 0:
                    self._tl0_offset = (self._last_tl0 + 1 - desc.tl0picidx) & 0xFF
        self._offset_changes = [(in_ext, self._offset, self._pid_offset)]
        self._padding_ahead.clear()
        self._temporal_dropped_pid = -1

    # --- RTCP from the subscriber ---

    def handle_rtcp(self, packets: Sequence[RtcpPacket], now: float) -> None:
        if self._native_slot is not None:
            self._sync_native()
        for packet in packets:
            if isinstance(packet, Nack):
                if packet.media_ssrc == self.ssrc:
                    self._answer_nack(packet.lost_sequence_numbers(), now)
            elif isinstance(packet, (Pli, Fir)):
                if isinstance(packet, Pli) and packet.media_ssrc != self.ssrc:
                    continue
                if isinstance(packet, Fir) and not any(e.ssrc == self.ssrc for e in packet.entries):
                    continue
                self._counters.keyframe_requests_received += 1
                if isinstance(packet, Fir):
                    self._counters.firs_received += 1
                layer = self.current_layer if self.current_layer is not None else self.target_layer
                if layer is not None and self._source.request_keyframe(layer, now):
                    self._counters.keyframe_requests_forwarded += 1
            elif isinstance(packet, (ReceiverReport, SenderReport)):
                for block in packet.reports:
                    if block.ssrc != self.ssrc:
                        continue
                    self.fraction_lost = block.fraction_lost
                    self.last_report = block
                    self.last_report_at = now
                    sent_at = self._sr_sent_at.get(block.lsr)
                    if block.lsr and sent_at is not None:
                        self.rtt = max(0.0, now - sent_at - block.dlsr / 65536)
            elif isinstance(packet, Remb):
                if self.ssrc in packet.ssrcs:
                    self.remb = packet.bitrate

    def _answer_nack(self, seqs: Iterable[int], now: float) -> None:
        counters = self._counters
        last = self._last_seq
        if last is None:
            return
        min_gap = max(0.01, (self.rtt or 0.1) * 0.8)
        for seq in seqs:
            counters.nack_requests += 1
            d = (seq - last) & 0xFFFF
            ext = last + (d - 0x10000 if d >= 0x8000 else d)
            slot = ext & self._mask
            if self._h_ext[slot] != ext:
                forwarded = self._forward_unsent(ext, now)
                if forwarded:
                    counters.nack_late_forwarded += 1
                elif forwarded is None:
                    counters.nack_temporal_dropped += 1
                else:
                    counters.nack_missing += 1
                continue
            if now - self._h_resent[slot] < min_gap:
                counters.nack_throttled += 1
                continue
            src = self._source.get_packet(self._h_layer[slot], self._h_in_seq[slot])
            if src is None or int.from_bytes(src[8:12], "big") != self._h_src_ssrc[slot]:
                counters.nack_missing += 1
                continue
            pt_out = self._pt_map.get(src[1] & 0x7F)
            bounds = payload_bounds(src)
            if pt_out is None or bounds is None:
                counters.nack_missing += 1
                continue
            out = bytearray(src)
            rewrite_header(out, self.ssrc, ext, self._h_ts[slot], pt_out)
            if self._rewriter is not None:
                self._rewriter.rewrite(out, src)
            if self._vp8 and (self._h_pid[slot] >= 0 or self._h_tl0[slot] >= 0):
                desc = parse_vp8_descriptor(out, bounds[0], bounds[1])
                if desc is not None:
                    if desc.picture_id is not None and self._h_pid[slot] >= 0:
                        write_vp8_picture_id(out, desc.picture_id_offset, desc.picture_id_bits, self._h_pid[slot])
                    if desc.tl0picidx is not None and self._h_tl0[slot] >= 0:
                        out[desc.tl0picidx_offset] = self._h_tl0[slot]
            rtx_pt = self.rtx_payload_types.get(pt_out) if self.rtx_ssrc is not None else None
            if rtx_pt is not None:
                out = self._wrap_rtx(out, bounds, ext, rtx_pt)
            self._h_resent[slot] = now
            if self._send_rtp(bytes(out)):
                counters.nack_resent += 1
            else:
                counters.dropped_send_failed += 1

    def _wrap_rtx(self, out: bytearray, bounds: tuple[int, int], seq: int, rtx_pt: int) -> bytearray:
        """RFC 4588 §4: same header on the RTX SSRC/PT, payload prefixed by the original seq."""
        start, end = bounds
        rtx = bytearray(out[:start])
        rtx[0] &= 0xDF  # original padding is not carried
        rtx += bytes(((seq >> 8) & 0xFF, seq & 0xFF))
        rtx += out[start:end]
        rewrite_header(rtx, self.rtx_ssrc, self._rtx_seq, (out[4] << 24) | (out[5] << 16) | (out[6] << 8) | out[7],
                       rtx_pt)
        self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
        return rtx

    # --- probe padding ---

    @property
    def can_pad(self) -> bool:
        """Padding can go on this track's RTX stream (negotiated, and the stream has started).
        A track disabled since (paused for bandwidth, or muted) pads too: probing is how a
        paused track's subscriber finds the room to resume it, and the receiver discards
        padding-only RTX whatever its media stream is doing."""
        if self._native_slot is not None:
            self._sync_native()
        return self.rtx_ssrc is not None and bool(self.rtx_payload_types) and self._last_ts is not None

    def send_padding(self, count: int, size: int) -> int:
        """Send `count` padding packets (`padding_packets`); how many went."""
        sent = 0
        for packet in self.padding_packets(count, size):
            if self._send_rtp(packet):
                sent += 1
            else:
                self._counters.dropped_send_failed += 1
        return sent

    def padding_packets(self, count: int, size: int) -> list[bytes]:
        """`count` padding-only RTP packets (RFC 3550 §5.1 padding, `size` octets each, at most
        12 + 255) on the RTX SSRC, as libwebrtc pads: a bandwidth probe's filler that the
        subscriber's RTX receiver discards. Empty when the track cannot pad (`can_pad`)."""
        if self._native_slot is not None:
            self._sync_native()
        if not self.can_pad or count <= 0:
            return []
        rtx_pt = next(iter(self.rtx_payload_types.values()))
        pad = min(max(size - 12, 1), 255)
        timestamp = self._last_ts or 0
        out = []
        for _ in range(count):
            header = bytearray(12)
            header[0] = 0xA0  # version 2, padding
            rewrite_header(header, self.rtx_ssrc, self._rtx_seq, timestamp, rtx_pt)  # type: ignore[arg-type]
            self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
            out.append(bytes(header) + bytes(pad - 1) + bytes((pad,)))
        return out

    # --- SR ---

    def next_deadline(self) -> Optional[float]:
        return self._next_sr

    def sender_report_timestamps(self, now: float) -> Optional[tuple[int, int]]:
        """(NTP, RTP) describing ``now`` on the subscriber's timeline.

        With a publisher SR for the current source we reuse the publisher's clock
        mapping shifted by our timestamp offset, so audio and video of one
        publisher keep the relation their SRs gave (lip sync). Otherwise we
        extrapolate from our last SR, or from the last sent packet and the
        wall clock (``now + wallclock_offset`` = Unix time).
        """
        if self._native_slot is not None:
            self._sync_native()
        if self._last_ts is None:
            return None
        layer = self.current_layer
        pub = self._source.sender_report(layer) if layer is not None else None
        if pub is not None and pub.ssrc == self._source_ssrc:
            elapsed = now - pub.arrival
            ntp = pub.ntp_timestamp + int(elapsed * _NTP_UNIT)
            rtp = pub.rtp_timestamp + int(round(elapsed * self.clock_rate)) + self._ts_offset
        elif self._last_sr is not None:
            ntp0, rtp0, t0 = self._last_sr
            elapsed = now - t0
            ntp = ntp0 + int(elapsed * _NTP_UNIT)
            rtp = rtp0 + int(round(elapsed * self.clock_rate))
        else:
            ntp = ntp_from_unix(now + self.wallclock_offset)
            rtp = self._last_ts + int(round((now - self._last_ts_at) * self.clock_rate))
        return ntp & 0xFFFFFFFFFFFFFFFF, rtp & 0xFFFFFFFF

    def sender_report_due(self, now: float) -> bool:
        """Whether this track's sender report is due at `now`."""
        return self._next_sr is not None and now >= self._next_sr

    def poll_rtcp(self, now: float, coalesce: bool = False) -> None:
        """Send the sender report if it is due. `coalesce`: another report of the same
        subscriber goes out on this wake-up, so send this one too if it is due within half an
        interval; its next one then comes due with the other's. A subscriber's down tracks
        start their reports at their first packets, each on a phase of its own (ten tracks:
        ten timer wake-ups a second); this brings them onto one within an interval or two, and
        no report comes sooner than half an interval after the last."""
        # Polled on every wake-up of the subscriber's timers, for each of its down tracks: nothing
        # is read from the compiled fan-out until a report is due (sender_report_timestamps syncs).
        due = self._next_sr
        if due is None or now < (due - self.rtcp_interval / 2 if coalesce else due):
            return
        self._next_sr = now + self.rtcp_interval
        stamps = self.sender_report_timestamps(now)
        if stamps is None:
            return
        ntp, rtp = stamps
        self._last_sr = (ntp, rtp, now)
        self._sr_sent_at[compact_ntp(ntp)] = now
        if len(self._sr_sent_at) > 8:
            del self._sr_sent_at[next(iter(self._sr_sent_at))]
        self._counters.srs_sent += 1
        self._send_rtcp(
            build_sender_report(self.ssrc, ntp, rtp, self._counters.packets_sent, self._counters.octets_sent, self.cname)
        )
