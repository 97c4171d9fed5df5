"""StreamAllocator: one subscriber's available downlink bitrate shared among its video tracks.

Sans-IO and synchronous (like the rest of `forwarding/`): the owner tells it the subscribed video
tracks (each layer's bitrate, the cap the subscriber's track settings allow, whether it is a
screen share), the audio it receives and the estimate of the subscriber's downlink
(`set_available_bitrate(bps, now)`, from whatever send-side estimator the subscriber transport
has); `allocate(now)` gives each track its layer, or pauses it.

The behaviour follows LiveKit's StreamAllocator in its shape:

- audio is reserved first; video shares what is left;
- tracks are served by priority: the one the subscriber set (UpdateTrackSettings.priority,
  1..255), else LiveKit's defaults — 255 for a screen share, 1 for a camera — and among equals
  in the order they came;
  every track first gets its lowest layer (so a low-priority track is paused only when even the
  lowest layers of the tracks before it leave no room — and only with `allow_pause`, else it
  keeps its lowest layer, LiveKit's default), then the tracks are raised, again in
  priority order, to the best layer under their cap that fits;
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
from typing import Mapping, Optional

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


@attrs.define
class _Track:
    track_id: str
    bitrates: dict[int, int]  # layer index -> bits per second
    cap: Optional[int]  # best layer the subscriber's settings allow; None: it wants nothing
    screen_share: bool
    order: int
    priority: int = 0  # as the subscriber set it; 0: the default for its kind
    layer: Optional[int] = None  # allocated now
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


@attrs.define
class AllocatorCounters:
    allocations: int = 0
    layer_changes: int = 0
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
                  screen_share: bool = False, priority: int = 0) -> None:
        """Add or update a video track: its layers' bitrates (layer index -> bps; a 0 or
        missing bitrate takes `DEFAULT_LAYER_BITRATES`), the cap from the subscriber's
        settings (None: the subscriber wants nothing of it), its kind and the priority the
        subscriber gave it (0: its kind's default; clamped to 255)."""
        priority = min(max(0, int(priority)), SCREEN_SHARE_PRIORITY)
        rates = {layer: (bps if bps > 0 else DEFAULT_LAYER_BITRATES.get(layer, DEFAULT_LAYER_BITRATES[2]))
                 for layer, bps in bitrates.items()} or {0: DEFAULT_LAYER_BITRATES[0]}
        track = self._tracks.get(track_id)
        if track is None:
            self._order += 1
            self._tracks[track_id] = _Track(track_id, rates, cap, screen_share, self._order, priority, layer=cap)
            return
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

    @property
    def track_ids(self) -> tuple[str, ...]:
        return tuple(self._tracks)

    # --- output ---

    def allocation(self, track_id: str) -> Optional[Allocation]:
        track = self._tracks.get(track_id)
        return None if track is None else Allocation(track.layer, track.state)

    def allocate(self, now: float) -> dict[str, Allocation]:
        """Recompute every track's share; returns the tracks whose layer or state changed."""
        self.counters.allocations += 1
        if self.budget is None:
            wanted = {t.track_id: (t.cap, StreamState.ACTIVE) for t in self._tracks.values()}
        else:
            wanted = self._share(self.budget - self.audio_tracks * self.audio_bitrate, now)
        changed: dict[str, Allocation] = {}
        for track_id, (layer, state) in wanted.items():
            track = self._tracks[track_id]
            if layer == track.layer and state is track.state:
                continue
            if layer != track.layer:
                self.counters.layer_changes += 1
            if state is not track.state:
                if state is StreamState.PAUSED:
                    self.counters.pauses += 1
                else:
                    self.counters.resumes += 1
            track.layer, track.state = layer, state
            changed[track_id] = Allocation(layer, state)
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
            if track.state is StreamState.PAUSED or track.layer is None or track.layer < usable[-1]:
                return True
        return False

    def next_deadline(self) -> Optional[float]:
        """When a held upgrade becomes due (`allocate` then), or None."""
        due = [t.pending_since + self.upgrade_hold for t in self._tracks.values() if t.pending_up is not None]
        return min(due) if due else None

    # --- the sharing ---

    def _priority(self) -> list[_Track]:
        return sorted(self._tracks.values(), key=lambda t: (-t.rank, t.order))

    def _share(self, budget: int, now: float) -> dict[str, tuple[Optional[int], StreamState]]:
        tracks = self._priority()
        margin = 1.0 + self.headroom
        result: dict[str, tuple[Optional[int], StreamState]] = {}
        left = float(max(0, budget))
        # Pass 1: the lowest usable layer of each track, in priority order.
        base: dict[str, int] = {}
        for track in tracks:
            usable = track.usable()
            if not usable:
                result[track.track_id] = (None, StreamState.ACTIVE)  # the subscriber wants nothing
                track.pending_up = None
                continue
            lowest = usable[0]
            need = track.bitrates[lowest]
            # A running track keeps flowing while its lowest layer fits; a paused one (or a new
            # one under an estimate) resumes only with headroom.
            running = track.layer is not None and track.state is StreamState.ACTIVE
            if need * (1.0 if running else margin) <= left or not self.allow_pause:
                base[track.track_id] = lowest
                left -= need
            else:
                result[track.track_id] = (None, StreamState.PAUSED)
                track.pending_up = None
        # Pass 2: raise each flowing track, in priority order, as far as its cap and the rest allow.
        for track in tracks:
            lowest = base.get(track.track_id)
            if lowest is None:
                continue
            left += track.bitrates[lowest]
            usable = track.usable()
            current = track.layer if track.state is StreamState.ACTIVE else None
            keep = lowest
            raise_to = lowest
            for layer in usable:
                need = track.bitrates[layer]
                if current is not None and layer <= current and need <= left:
                    keep = layer  # what it has (or less) needs only to fit
                if need * margin <= left:
                    raise_to = layer
            target = max(keep, raise_to)
            if current is not None and target > current:
                target = self._held(track, target, current, now)
            else:
                track.pending_up = None
            result[track.track_id] = (target, StreamState.ACTIVE)
            left -= track.bitrates[target]
        return result

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
