"""The fan-out of one track's packets to its down tracks: compiled for the steady state, Python
for everything else.

`Fanout.forward` is the receiver's one call per packet. Without the compiled extension
(trio_sfu.native) it is the plain loop: `DownTrack.write_rtp` for each down track. With it, a
down track that forwarded a packet in the steady state through Python — its layer chosen, its
source bound, the stream numbered, its downlink numbering transport-wide and sending over UDP
(`NumberedDownlink.native_send_target`) — is *armed*: its forwarding state is copied into a C
struct (fanout.c's fp_track) that points at the down track's own history arrays and at its
downlink sequencer's arrays, and from then on one `fp_forward` call per packet and layer does
for all armed tracks of that layer what `write_rtp` would (same bytes, same state), protects
with the downlink's own libsrtp context and sends the batch with sendmmsg.

The C struct holds the state while armed. Before Python code reads it (counters, a NACK, a
sender report, a snapshot) the down track copies it in (`DownTrack._sync_native` →
`_Slot.flush`) and stays armed; before Python code changes it (a packet the compiled path leaves
to Python: a switch, a late or padding packet; a setting) it takes it back and is released
(`DownTrack._pull_native` → `_Slot.release`), to be armed again once it forwards in the steady
state. A down track under a steady temporal cap stays armed: fp_forward reads the VP8 TID once
per packet and leaves a packet above a track's cap (`max_tid`) to Python, which drops it and
writes the few fields a drop moves back into the struct (`_Slot.adopt`); a temporal switch
under way is Python's until it completes. Every `REFRESH` seconds the counts are copied out (to the down tracks, and through their
downlinks to the metrics), and a track whose downlink's path changed (ICE restart, a TCP path,
a closed transport) is released: such a change is picked up within that time.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from rtp.srtp import srtp_protect_address
from rtp.twcc_sender import TransportSequencer
from trio_sfu import native
from trio_sfu.native import NativeSendTarget, packed_address
from trio_sfu.forwarding.downtrack import (_EFFECTIVE_TARGET_PERIOD, MAX_TEMPORAL, DownTrack, _ExtensionRewriter,
                                            effective_layer)

#: How often armed down tracks hand their state back (counters to the metrics, a new path).
REFRESH = 0.5
#: Target layers the compiled drop path answers a down track's look for (simulcast has 3; a
#: group with a higher target leaves every look to write_rtp).
MAX_TARGETS = 8


class _Slot:
    """One armed down track: its fp_track and the buffers it points into (kept alive here)."""

    __slots__ = ("fanout", "struct", "layer", "target", "sequencer", "_keep")

    def __init__(self, fanout: "Fanout", struct: Any, layer: int, target: NativeSendTarget,
                 sequencer: TransportSequencer, keep: list) -> None:
        self.fanout = fanout
        self.sequencer = sequencer
        self.struct = struct
        self.layer = layer
        self.target = target
        self._keep = keep

    def release(self, down: DownTrack) -> None:
        self.struct.armed = 0
        self.flush(down)
        down._native_slot = None
        self._keep = []
        self.fanout._dirty = True

    def adopt(self, down: DownTrack) -> None:
        """`down` dropped a packet above its temporal cap (after a flush): the input position
        and offsets it moved on become the struct's."""
        st = self.struct
        st.unwrap_last = down._unwrap.last
        st.highest_in = down._highest_in
        st.offset = down._offset
        st.pid_offset = down._pid_offset

    def flush(self, down: DownTrack) -> None:
        """Copy what the compiled path advanced into `down` (its counts as increments, zeroed
        here); while still armed the struct stays the state that counts."""
        st = self.struct
        down._unwrap.resume(st.unwrap_last)
        down._highest_in = st.highest_in
        down._last_seq = st.last_seq
        down._last_ts = st.last_ts
        down._last_ts_at = st.last_ts_at
        down._last_pid = st.last_pid
        down._last_tl0 = st.last_tl0
        if st.effective_checked_at > down._effective_checked_at:
            # The drop path's looks (fp_drop_other_layer); a look write_rtp made since is newer.
            down._effective_checked_at = st.effective_checked_at
        counters = down._counters
        counters.packets_sent += st.packets_sent
        counters.octets_sent += st.octets_sent
        counters.dropped_send_failed += st.dropped_send_failed
        counters.dropped_other_layer += st.dropped_other_layer
        if st.udp_sent or st.udp_full or st.udp_error or st.srtp_failed:
            self.target.account(st.udp_sent, st.udp_full, st.udp_error, st.srtp_failed)
        self.sequencer.elements_added += st.tw_added
        st.packets_sent = st.octets_sent = st.dropped_send_failed = st.dropped_other_layer = 0
        st.udp_sent = st.udp_full = st.udp_error = st.srtp_failed = st.tw_added = 0


#: One buffer for the packets every fan-out builds (FP_SLOT octets per down track), grown to the
#: largest: an fp_forward call has sent all it built before it returns, and none runs inside
#: another (what runs between, Python's write_rtp, never calls it).
_SCRATCH: list[Any] = [None, 0]


def _scratch(ffi: Any, slot: int, tracks: int) -> Any:
    if tracks > _SCRATCH[1]:
        _SCRATCH[1] = max(tracks, 2 * _SCRATCH[1], 8)
        _SCRATCH[0] = ffi.new("uint8_t[]", _SCRATCH[1] * slot)
    return _SCRATCH[0]


def _left_to_python(ffi: Any, status: Any, n: int) -> list[int]:
    """The indices a compiled call marked FP_PYTHON (status is int8_t[n]), found by a bytes
    search rather than a Python loop over all n: most calls leave none or a few."""
    flags = ffi.buffer(status, n)[:]
    out: list[int] = []
    i = flags.find(_PYTHON_MARK)
    while i >= 0:
        out.append(i)
        i = flags.find(_PYTHON_MARK, i + 1)
    return out


#: FP_PYTHON as a status octet (set from the extension when it loads; the value is fanout.h's).
_PYTHON_MARK = bytes((native.compiled.lib.FP_PYTHON,)) if native.compiled is not None else b"\x01"


class _Group:
    """A fan-out's down tracks as one layer's packets meet them: armed on that layer (the
    compiled forward), armed on another (the compiled drop), not armed (Python). Holds the
    slots, so the structs the pointer arrays point at live as long as the group."""

    __slots__ = ("here", "elsewhere", "python", "here_pointers", "elsewhere_pointers", "_slots", "source",
                 "targets")

    def __init__(self, ffi: Any, here: list[DownTrack], elsewhere: list[DownTrack], python: list[Any]) -> None:
        self.here = here
        self.elsewhere = elsewhere
        self.python = python
        # For the drop path's looks: the one source the tracks armed elsewhere forward from, and
        # the targets 0..highest of theirs to answer for (None, range(0): every look to Python).
        sources = {id(d._source) for d in elsewhere}
        highest = max((d.target_layer for d in elsewhere if d.target_layer is not None), default=-1)
        if len(sources) == 1 and 0 <= highest < MAX_TARGETS:
            self.source: Any = elsewhere[0]._source
            self.targets = range(highest + 1)
        else:
            self.source, self.targets = None, range(0)
        self._slots = [d._native_slot for d in here + elsewhere]
        self.here_pointers = ffi.new("fp_track *[]", [d._native_slot.struct for d in here])  # type: ignore[union-attr]
        self.elsewhere_pointers = ffi.new("fp_track *[]",
                                          [d._native_slot.struct for d in elsewhere])  # type: ignore[union-attr]


class Fanout:
    """One track receiver's fan-out (see the module docstring)."""

    def __init__(self, down_tracks: Sequence[Any], *, enabled: Optional[bool] = None) -> None:
        """`down_tracks`: the receiver's own list of sinks (it adds and removes; read here);
        only DownTracks are ever armed. `enabled`: None, compiled when built; False, never;
        True, compiled (an error when it is not built)."""
        self._down_tracks = down_tracks
        if enabled and native.compiled is None:
            raise RuntimeError(f"the compiled fan-out is not available: {native.DESCRIPTION}")
        module = native.compiled if enabled is not False else None
        self._ffi = module.ffi if module is not None else None
        self._lib = module.lib if module is not None else None
        self._groups: dict[int, _Group] = {}
        self._dirty = True
        self._refresh_at = float("-inf")
        # All armed tracks of a fan-out share one extension rewriter and one transport-cc id.
        self._rewriter: Optional[_ExtensionRewriter] = None
        self._tw_ext_id = -1
        self._scratch: Any = None
        self._status: Any = None
        self._capacity = 0
        # The drop path's answers, by target layer (fp_drop_other_layer's effective_for).
        self._effective_for: Any = self._ffi.new("int8_t[]", MAX_TARGETS) if self._ffi is not None else None
        self.compiled_packets = 0  # forwarded (or failed to send) by the compiled path

    @property
    def compiled(self) -> bool:
        return self._lib is not None

    def forward(self, layer: int, packet: bytes, bounds: tuple[int, int], now: float) -> None:
        lib = self._lib
        if lib is None:
            for down in self._down_tracks:
                down.write_rtp(layer, packet, now)
            return
        if now >= self._refresh_at:
            self.refresh()
            self._refresh_at = now + REFRESH
        if self._dirty:
            self._regroup()
        group = self._groups.get(layer)
        if group is None:
            group = self._groups[layer] = self._group(layer)
        if group.here:
            if bounds[0] != bounds[1]:
                self._forward_compiled(group, layer, packet, bounds, now)
            else:
                for down in group.here:  # padding closes a sequence gap: Python's business
                    down.write_rtp(layer, packet, now)
        if group.elsewhere:
            self._drop_compiled(group, layer, packet, now)
        for down in group.python:
            if (down.write_rtp(layer, packet, now) and type(down) is DownTrack and down._native_slot is None
                    and now >= down._native_retry_at and not down._padding_ahead):
                # (not while padding waits ahead: the compiled path would number over its seq)
                if not self._arm(down, layer):
                    down._native_retry_at = now + REFRESH  # not in a state it can take: ask again later

    def _forward_compiled(self, group: "_Group", layer: int, packet: bytes, bounds: tuple[int, int],
                          now: float) -> None:
        downs = group.here
        rewriter = self._rewriter
        assert rewriter is not None
        n = len(downs)
        status = self._status
        python = self._lib.FP_PYTHON
        layout = rewriter.stamping(packet, self._tw_ext_id)
        if layout is None:
            handled = 0  # the transport's own stamping decides: all go the Python way
            for i in range(n):
                status[i] = python
        else:
            region = layout.region
            handled = self._lib.fp_forward(packet, len(packet), bounds[0], bounds[1], region, len(region),
                                           layout.start, layout.end, layout.set_extension_bit, layout.at,
                                           layout.added, now, group.here_pointers, n, self._scratch, status)
        self.compiled_packets += handled
        if handled != n:
            for i in _left_to_python(self._ffi, status, n):
                downs[i].write_rtp(layer, packet, now)  # takes its state back first

    def _drop_compiled(self, group: "_Group", layer: int, packet: bytes, now: float) -> None:
        """Down tracks armed on another layer drop this packet as write_rtp would (counted), in
        C, their periodic look at which layers arrive included (`effective_layer`, asked once
        per target here for all of them); a look that changes a track's fallback, or a layer
        nearer its target, goes to write_rtp, and what it decided is copied back."""
        downs = group.elsewhere
        n = len(downs)
        status = self._status
        effective_for = self._effective_for
        source = group.source
        targets = 0
        if source is not None:
            targets = len(group.targets)
            for target in group.targets:
                answer = effective_layer(source, target, now)
                effective_for[target] = answer if 0 <= answer <= 127 else -1  # -1: write_rtp looks
        handled = self._lib.fp_drop_other_layer(layer, now, _EFFECTIVE_TARGET_PERIOD, effective_for, targets,
                                                 group.elsewhere_pointers, n, status)
        if handled != n:
            for i in _left_to_python(self._ffi, status, n):
                down = downs[i]
                down.write_rtp(layer, packet, now)
                slot = down._native_slot
                if slot is not None:  # still armed: it only looked (a switch takes the state back)
                    slot.struct.effective_target = down._effective_target
                    slot.struct.effective_checked_at = down._effective_checked_at

    def refresh(self) -> None:
        """Counts to the down tracks (and through their downlinks to the metrics); a track
        whose downlink's path changed (another address or socket, a new SRTP context, no
        longer UDP or connected) takes its state back."""
        for down in self._down_tracks:
            slot = down._native_slot if type(down) is DownTrack else None
            if slot is None:
                continue
            slot.flush(down)
            target = down._numbered.native_send_target()  # type: ignore[union-attr]
            old = slot.target
            if target is None or (target.srtp_handle, target.fd, target.address) != (
                    old.srtp_handle, old.fd, old.address):
                slot.release(down)

    def release_all(self) -> None:
        """Every armed down track takes its state back (they are armed again as they forward)."""
        for down in self._down_tracks:
            if type(down) is DownTrack and down._native_slot is not None:
                down._pull_native()
        self._dirty = True

    def changed(self) -> None:
        """The receiver's down tracks changed (one added)."""
        self._dirty = True

    def remove(self, down: DownTrack) -> None:
        """`down` leaves the receiver: its state goes back to it first."""
        if type(down) is DownTrack and down._native_slot is not None:
            down._pull_native()
        self._dirty = True

    def _regroup(self) -> None:
        self._dirty = False
        self._groups = {}
        armed = [d for d in self._down_tracks if type(d) is DownTrack and d._native_slot is not None]
        if not armed:
            self._rewriter = None
            self._tw_ext_id = -1
        size = len(self._down_tracks)
        if size > self._capacity:
            self._capacity = max(size, 2 * self._capacity, 8)
            self._status = self._ffi.new("int8_t[]", self._capacity)
        self._scratch = _scratch(self._ffi, self._lib.FP_SLOT, size)

    def _group(self, layer: int) -> "_Group":
        here: list[DownTrack] = []
        elsewhere: list[DownTrack] = []
        python: list[Any] = []
        for down in self._down_tracks:
            slot = down._native_slot if type(down) is DownTrack else None
            if slot is None:
                python.append(down)
            elif slot.layer == layer:
                here.append(down)
            else:
                elsewhere.append(down)
        return _Group(self._ffi, here, elsewhere, python)

    def _arm(self, down: DownTrack, layer: int) -> bool:
        """Hand `down`'s steady state to the compiled path, if it is in one it can take."""
        numbered = down._numbered
        rewriter = down._rewriter
        if (numbered is None or rewriter is None or down.disabled or down.current_layer != layer
                or down._source_ssrc is None or down._last_seq is None or down._last_ts is None
                or down._next_sr is None or down._unwrap.last is None or down.target_layer is None
                or down._effective_target is None or down._temporal_target != down._temporal_current):
            return False  # (a temporal switch under way is decided frame by frame in Python)
        if self._rewriter is not None and rewriter is not self._rewriter:
            return False
        sequencer = numbered.transport_sequencer
        if sequencer is None or (self._tw_ext_id >= 0 and sequencer.ext_id != self._tw_ext_id):
            return False
        target = numbered.native_send_target()
        if target is None or target.fd < 0 or len(self._down_tracks) > self._lib.FP_MAX_BATCH:
            return False
        address = packed_address(target.address[0])
        if address is None:
            return False
        ffi = self._ffi
        st = ffi.new("fp_track *")
        if self._lib.fp_set_address(st, address[0], address[1], target.address[1]) != 0:
            return False
        st.layer = layer
        st.src_ssrc = down._source_ssrc
        st.out_ssrc = down.ssrc
        for pt in range(128):
            st.pt_map[pt] = -1
        for pt_in, pt_out in down._pt_map.items():
            if 0 <= pt_in < 128:
                st.pt_map[pt_in] = pt_out & 0x7F
        st.vp8 = 1 if down._vp8 else 0
        st.max_tid = down._temporal_current if down._vp8 else MAX_TEMPORAL
        st.source_start = down._source_start
        st.offset = down._offset
        st.ts_offset = down._ts_offset
        st.pid_offset = down._pid_offset
        st.tl0_offset = down._tl0_offset
        st.unwrap_last = down._unwrap.last
        st.highest_in = down._highest_in
        st.last_seq = down._last_seq
        st.last_ts = down._last_ts
        st.last_ts_at = down._last_ts_at
        st.last_pid = down._last_pid
        st.last_tl0 = down._last_tl0
        st.mask = down._mask
        st.target_layer = down.target_layer
        st.effective_target = down._effective_target
        st.effective_checked_at = down._effective_checked_at
        keep = [
            ffi.from_buffer("int64_t[]", down._h_ext), ffi.from_buffer("int8_t[]", down._h_layer),
            ffi.from_buffer("uint32_t[]", down._h_src_ssrc), ffi.from_buffer("uint16_t[]", down._h_in_seq),
            ffi.from_buffer("uint32_t[]", down._h_ts), ffi.from_buffer("int32_t[]", down._h_pid),
            ffi.from_buffer("int16_t[]", down._h_tl0), ffi.from_buffer("double[]", down._h_resent),
            ffi.from_buffer("int64_t[]", sequencer._state), ffi.from_buffer("int64_t[]", sequencer._seq),
            ffi.from_buffer("double[]", sequencer._sent_at), ffi.from_buffer("uint32_t[]", sequencer._size),
            ffi.from_buffer("int32_t[]", sequencer._cluster), ffi.from_buffer("int8_t[]", sequencer._reported),
        ]
        (st.h_ext, st.h_layer, st.h_src_ssrc, st.h_in_seq, st.h_ts, st.h_pid, st.h_tl0, st.h_resent,
         st.tw_state, st.tw_seq, st.tw_sent_at, st.tw_size, st.tw_cluster, st.tw_reported) = keep
        st.tw_mask = sequencer._mask
        st.srtp = ffi.cast("void *", target.srtp_handle)
        st.protect = ffi.cast("fp_protect_fn", srtp_protect_address())
        st.fd = target.fd
        st.armed = 1
        self._rewriter = rewriter
        self._tw_ext_id = sequencer.ext_id
        down._native_slot = _Slot(self, st, layer, target, sequencer, keep)
        self._dirty = True
        return True


__all__ = ["REFRESH", "Fanout"]
