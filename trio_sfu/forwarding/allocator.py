"""StreamAllocator: one subscriber's available downlink bitrate shared among its video tracks.

Sans-IO and synchronous (like the rest of `forwarding/`): the owner tells it the subscribed video
tracks (each layer's bitrate, the cap the subscriber's track settings allow, whether it is a
screen share), the audio it receives and the estimate of the subscriber's downlink
(`set_available_bitrate(bps, now)`, from whatever send-side estimator the subscriber transport
has); `allocate(now)` gives each track its layer, or pauses it.

The behaviour follows LiveKit's StreamAllocator in its shape:

- a track's choices are (spatial layer, temporal layer) pairs, lowest first: where the codec
  has temporal layers (VP8's TID; the owner passes each layer's measured temporal bitrates) a
  layer can be taken at fewer frames per second for less, so the choices of layer `s` are
  `(s, T0)`, `(s, T0+T1)`, ..., `(s, all)`; without temporal layers each layer is one choice;
- audio is reserved first; video shares what is left;
- tracks are served by priority: the one the subscriber set (UpdateTrackSettings.priority,
  1..255), else LiveKit's defaults — 255 for a screen share, 1 for a camera — and among equals
  in the order they came;
  every track first gets its lowest choice (the lowest layer at its lowest temporal layer: so
  temporal layers are dropped before a track pauses, and a low-priority track is paused only
  when even the lowest choices of the tracks before it leave no room — and only with
  `allow_pause`, else it keeps its lowest choice, LiveKit's default), then each is raised, in
  priority order, to its lowest layer at its full frame rate where that fits, then, again in
  priority order, to the best choice under its cap that fits. Choices go spatial layer first
  (LiveKit's order): a track about to lose its spatial layer keeps it at a lower temporal layer
  if that fits;
- hysteresis: keeping the layer a track has needs only that it fits, going up needs it to fit
  with `headroom` to spare and is held back until the estimate has allowed it for `upgrade_hold`
  seconds; going down happens at once (congestion must be relieved now). And the estimate itself
  passes a dead band: a fall of less than `tolerance` from the budget in use is estimator noise
  and changes nothing, a larger one is taken at once. A steady estimate therefore settles and
  stays: nothing flaps;
- until an estimate exists a track gets its cap, which is what the server did before there was
  an allocator.

Layer switches themselves happen at keyframes in the DownTrack; this module only names targets.
"""

from __future__ import annotations

import enum
import math
from typing import Mapping, Optional, Sequence

import attrs

#: Bitrates assumed for a layer whose publisher announced none (LiveKit's camera defaults, about).
DEFAULT_LAYER_BITRATES: Mapping[int, int] = {0: 150_000, 1: 500_000, 2: 1_500_000}
#: LiveKit's default priorities when the subscriber set none (0).
SCREEN_SHARE_PRIORITY = 255
VIDEO_PRIORITY = 1
#: What one subscribed audio track is assumed to take (Opus as browsers send it, with headers).
DEFAULT_AUDIO_BITRATE = 48_000


class StreamState(enum.Enum):
    """Whether the allocator lets a track flow; what `StreamStateUpdate` tells the client."""

    ACTIVE = "active"
    PAUSED = "paused"  # paused for lack of bandwidth (not a subscriber's or publisher's mute)


@attrs.frozen
class Allocation:
    """A track's share: `layer` None means nothing is forwarded (see `state` for why)."""

    layer: Optional[int]
    state: StreamState
    temporal: Optional[int] = None  # the best temporal layer to forward; None: all of them


@attrs.define
class _Track:
    track_id: str
    bitrates: dict[int, int]  # layer index -> bits per second
    cap: Optional[int]  # best layer the subscriber's settings allow; None: it wants nothing
    screen_share: bool
    order: int
    priority: int = 0  # as the subscriber set it; 0: the default for its kind
    layer: Optional[int] = None  # allocated now
    temporal: Optional[int] = None  # allocated now (None: all temporal layers)
    # layer -> cumulative bps of its temporal layers 0, 0..1, ... (as measured; scaled to `bitrates`)
    temporal_bitrates: dict[int, tuple[int, ...]] = attrs.Factory(dict)
    state: StreamState = StreamState.ACTIVE
    # The layer the estimate would raise this track to, and since when (the upgrade hold).
    pending_up: Optional[int] = None
    pending_since: float = 0.0

    @property
    def rank(self) -> int:
        if self.priority > 0:
            return self.priority
        return SCREEN_SHARE_PRIORITY if self.screen_share else VIDEO_PRIORITY

    def usable(self) -> list[int]:
        """Layers at or under the cap, lowest first."""
        cap = self.cap
        if cap is None:
            return []
        layers = sorted(self.bitrates)
        under = [layer for layer in layers if layer <= cap]
        return under or layers[:1]

    def choices(self) -> list[tuple[int, Optional[int], float]]:
        """(layer, temporal cap or None for all, bps) for each choice under the cap, lowest
        first. A layer's temporal steps take the shares of its bitrate its measured temporal
        bitrates show."""
        out: list[tuple[int, Optional[int], float]] = []
        for layer in self.usable():
            full = self.bitrates[layer]
            steps = self.temporal_bitrates.get(layer, ())
            if len(steps) > 1 and steps[-1] > 0:
                for temporal, cumulative in enumerate(steps[:-1]):
                    out.append((layer, temporal, full * min(1.0, cumulative / steps[-1])))
            out.append((layer, None, float(full)))
        return out


@attrs.define
class AllocatorCounters:
    allocations: int = 0
    layer_changes: int = 0
    temporal_changes: int = 0
    pauses: int = 0
    resumes: int = 0


class StreamAllocator:
    """See the module docstring."""

    def __init__(self, *, headroom: float = 0.15, tolerance: float = 0.15, upgrade_hold: float = 2.0,
                 audio_bitrate: int = DEFAULT_AUDIO_BITRATE, allow_pause: bool = True) -> None:
        if headroom < 0 or upgrade_hold < 0 or not 0 <= tolerance < 1:
            raise ValueError("headroom and upgrade_hold must not be negative, tolerance in [0, 1)")
        self.headroom = headroom
        self.tolerance = tolerance
        self.upgrade_hold = upgrade_hold
        self.audio_bitrate = audio_bitrate
        # False (LiveKit's `allow_pause` default): a track whose lowest layer does not fit keeps
        # that layer instead of pausing.
        self.allow_pause = allow_pause
        self.available: Optional[int] = None  # bps; None until an estimate arrives
        # The estimate the sharing uses: `available` through the dead band.
        self.budget: Optional[int] = None
        self.audio_tracks = 0
        self._tracks: dict[str, _Track] = {}
        self._order = 0
        self.counters = AllocatorCounters()

    # --- inputs ---

    def set_available_bitrate(self, bps: int, now: float) -> None:
        """The subscriber's downlink estimate (bits per second) as of `now`; a value that is
        not a finite number is refused (ValueError), a negative one taken as 0."""
        if not math.isfinite(bps):
            raise ValueError(f"available bitrate must be a finite number, not {bps!r}")
        bps = self.available = max(0, int(bps))
        budget = self.budget
        if budget is None or bps > budget or bps < budget * (1.0 - self.tolerance):
            self.budget = bps

    def set_audio_tracks(self, count: int) -> None:
        """How many audio tracks the subscriber receives (each reserved `audio_bitrate`)."""
        self.audio_tracks = max(0, count)

    def set_track(self, track_id: str, *, bitrates: Mapping[int, int], cap: Optional[int],
                  screen_share: bool = False, priority: int = 0,
                  temporal_bitrates: Optional[Mapping[int, Sequence[int]]] = None) -> None:
        """Add or update a video track: its layers' bitrates (layer index -> bps; a 0 or
        missing bitrate takes `DEFAULT_LAYER_BITRATES`), the cap from the subscriber's
        settings (None: the subscriber wants nothing of it), its kind and the priority the
        subscriber gave it (0: its kind's default; clamped to 255); `temporal_bitrates`: for a
        layer with temporal layers, the bps of each temporal layer (TID 0, 1, ...) as measured —
        only their shares count, applied to the layer's bitrate above."""
        priority = min(max(0, int(priority)), SCREEN_SHARE_PRIORITY)
        rates = {layer: (bps if bps > 0 else DEFAULT_LAYER_BITRATES.get(layer, DEFAULT_LAYER_BITRATES[2]))
                 for layer, bps in bitrates.items()} or {0: DEFAULT_LAYER_BITRATES[0]}
        temporal: dict[int, tuple[int, ...]] = {}
        for layer, per_tid in (temporal_bitrates or {}).items():
            cumulative, total = [], 0
            for bps in per_tid:
                total += max(0, int(bps))
                cumulative.append(total)
            if len(cumulative) > 1 and total > 0:
                temporal[layer] = tuple(cumulative)
        track = self._tracks.get(track_id)
        if track is None:
            self._order += 1
            self._tracks[track_id] = _Track(track_id, rates, cap, screen_share, self._order, priority, layer=cap,
                                            temporal_bitrates=temporal)
            return
        track.temporal_bitrates = temporal
        track.bitrates = rates
        track.cap = cap
        track.screen_share = screen_share
        track.priority = priority

    def remove_track(self, track_id: str) -> None:
        self._tracks.pop(track_id, None)

    def bitrates(self, track_id: str) -> dict[int, int]:
        """The layers' bitrates the allocator uses for a track (empty for one it does not know)."""
        track = self._tracks.get(track_id)
        return dict(track.bitrates) if track is not None else {}

    def temporal_bitrates(self, track_id: str) -> dict[int, tuple[int, ...]]:
        """The cumulative temporal bitrates (TID 0, 0..1, ...) the allocator has for a track's
        layers, as measured (empty: no temporal layers known)."""
        track = self._tracks.get(track_id)
        return dict(track.temporal_bitrates) if track is not None else {}

    @property
    def track_ids(self) -> tuple[str, ...]:
        return tuple(self._tracks)

    # --- output ---

    def allocation(self, track_id: str) -> Optional[Allocation]:
        track = self._tracks.get(track_id)
        return None if track is None else Allocation(track.layer, track.state, track.temporal)

    def allocate(self, now: float) -> dict[str, Allocation]:
        """Recompute every track's share; returns the tracks whose layer or state changed."""
        self.counters.allocations += 1
        if self.budget is None:
            wanted = {t.track_id: (t.cap, None, StreamState.ACTIVE) for t in self._tracks.values()}
        else:
            wanted = self._share(self.budget - self.audio_tracks * self.audio_bitrate, now)
        changed: dict[str, Allocation] = {}
        for track_id, (layer, temporal, state) in wanted.items():
            track = self._tracks[track_id]
            if layer == track.layer and temporal == track.temporal and state is track.state:
                continue
            if layer != track.layer:
                self.counters.layer_changes += 1
            if temporal != track.temporal:
                self.counters.temporal_changes += 1
            if state is not track.state:
                if state is StreamState.PAUSED:
                    self.counters.pauses += 1
                else:
                    self.counters.resumes += 1
            track.layer, track.temporal, track.state = layer, temporal, state
            changed[track_id] = Allocation(layer, state, temporal)
        return changed

    def wanted_bps(self) -> int:
        """What the subscriber would take if nothing held it back: every track at the best
        layer its cap allows, and the audio reserve (what a probe should find room for)."""
        wanted = self.audio_tracks * self.audio_bitrate
        for track in self._tracks.values():
            usable = track.usable()
            if usable:
                wanted += track.bitrates[usable[-1]]
        return wanted

    def floor_bps(self) -> int:
        """What the subscriber needs to keep its audio and every wanted video track on its
        lowest layer: the estimate's loss-based half never goes below it (loss alone must not
        starve a call; real congestion shows in delay)."""
        floor = self.audio_tracks * self.audio_bitrate
        for track in self._tracks.values():
            usable = track.usable()
            if usable:
                floor += track.bitrates[usable[0]]
        return floor

    @property
    def deficient(self) -> bool:
        """Whether a track is held below the best layer its cap allows (or paused for lack of
        bandwidth) by the budget: what makes LiveKit's allocator probe for more."""
        for track in self._tracks.values():
            usable = track.usable()
            if not usable:
                continue
            if (track.state is StreamState.PAUSED or track.layer is None or track.layer < usable[-1]
                    or track.temporal is not None):
                return True
        return False

    def next_deadline(self) -> Optional[float]:
        """When a held upgrade becomes due (`allocate` then), or None."""
        due = [t.pending_since + self.upgrade_hold for t in self._tracks.values() if t.pending_up is not None]
        return min(due) if due else None

    # --- the sharing ---

    def _priority(self) -> list[_Track]:
        return sorted(self._tracks.values(), key=lambda t: (-t.rank, t.order))

    def _share(self, budget: int, now: float) -> dict[str, tuple[Optional[int], Optional[int], StreamState]]:
        tracks = self._priority()
        margin = 1.0 + self.headroom
        result: dict[str, tuple[Optional[int], Optional[int], StreamState]] = {}
        left = float(max(0, budget))
        # Pass 1: the lowest choice of each track, in priority order.
        flowing: list[tuple[_Track, list[tuple[int, Optional[int], float]], Optional[int]]] = []
        chosen: dict[str, int] = {}
        for track in tracks:
            choices = track.choices()
            if not choices:
                result[track.track_id] = (None, None, StreamState.ACTIVE)  # the subscriber wants nothing
                track.pending_up = None
                continue
            need = choices[0][2]
            # A running track keeps flowing while its lowest choice fits; a paused one (or a new
            # one under an estimate) resumes only with headroom.
            running = track.layer is not None and track.state is StreamState.ACTIVE
            if need * (1.0 if running else margin) <= left or not self.allow_pause:
                current = self._current_choice(track, choices) if running else None
                flowing.append((track, choices, current))
                chosen[track.track_id] = 0
                left -= need
            else:
                result[track.track_id] = (None, None, StreamState.PAUSED)
                track.pending_up = None
        # Pass 2: each flowing track up to its lowest layer at its full frame rate, then pass 3:
        # up to the best choice under its cap; each in priority order, as far as the rest allow.
        for full_rate_only in (True, False):
            for track, choices, current in flowing:
                floor = chosen[track.track_id]
                left += choices[floor][2]
                top = next(i for i, c in enumerate(choices) if c[1] is None) if full_rate_only else len(choices) - 1
                keep = raise_to = floor
                for index in range(floor, top + 1):
                    need = choices[index][2]
                    if current is not None and index <= current and need <= left:
                        keep = index  # what it has (or less) needs only to fit
                    if need * margin <= left:
                        raise_to = index
                target = max(keep, raise_to)
                if not full_rate_only:
                    # The upgrade hold, on the final choice (pass 2's is provisional).
                    if current is not None and target > current:
                        target = self._held(track, target, current, now)
                    else:
                        track.pending_up = None
                chosen[track.track_id] = target
                left -= choices[target][2]
        for track, choices, _ in flowing:
            layer, temporal, _ = choices[chosen[track.track_id]]
            result[track.track_id] = (layer, temporal, StreamState.ACTIVE)
        return result

    @staticmethod
    def _current_choice(track: _Track, choices: list[tuple[int, Optional[int], float]]) -> Optional[int]:
        """The index of the choice a track has now (its layer at its temporal layer; a temporal
        layer no longer offered counts as the layer's full rate), None when none matches."""
        fallback = None
        for index, (layer, temporal, _) in enumerate(choices):
            if layer == track.layer:
                if temporal == track.temporal:
                    return index
                if temporal is None:
                    fallback = index
        return fallback

    def _held(self, track: _Track, target: int, current: int, now: float) -> int:
        """An upgrade waits until the estimate has allowed it for `upgrade_hold` seconds."""
        if track.pending_up is None or target < track.pending_up:
            track.pending_up, track.pending_since = target, now
        elif target > track.pending_up:
            track.pending_up = target  # still climbing: the hold that began continues
        if now - track.pending_since >= self.upgrade_hold:
            track.pending_up = None
            return target
        return current


__all__ = ["DEFAULT_AUDIO_BITRATE", "DEFAULT_LAYER_BITRATES", "SCREEN_SHARE_PRIORITY", "VIDEO_PRIORITY", "Allocation", "AllocatorCounters",
           "StreamAllocator", "StreamState"]
