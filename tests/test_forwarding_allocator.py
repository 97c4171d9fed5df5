"""The stream allocator (trio_sfu.forwarding.allocator): budgets that fit all, some or none of
three video tracks, priorities, pause/resume, hysteresis on a steady estimate, audio first."""

from __future__ import annotations

import random

import pytest

from trio_sfu.forwarding.allocator import Allocation, StreamAllocator, StreamState

# Three simulcast layers as livekit-client publishes a 720p camera (q/h/f), bps.
CAMERA = {0: 150_000, 1: 500_000, 2: 1_700_000}
SCREEN = {0: 200_000, 1: 800_000, 2: 2_000_000}


def three_tracks(**kw) -> StreamAllocator:
    alloc = StreamAllocator(**kw)
    alloc.set_track("cam-a", bitrates=CAMERA, cap=2)
    alloc.set_track("cam-b", bitrates=CAMERA, cap=2)
    alloc.set_track("screen", bitrates=SCREEN, cap=2, screen_share=True)
    return alloc


def layers(alloc: StreamAllocator) -> dict[str, object]:
    out = {}
    for tid in alloc.track_ids:
        a = alloc.allocation(tid)
        out[tid] = a.layer if a.state is StreamState.ACTIVE else "paused"
    return out


def settle(alloc: StreamAllocator, bps: int, start: float, seconds: float, step: float = 0.1) -> float:
    now = start
    while now < start + seconds:
        alloc.set_available_bitrate(bps, now)
        alloc.allocate(now)
        now += step
    return now


def test_without_an_estimate_every_track_gets_its_cap():
    alloc = three_tracks()
    alloc.set_track("cam-b", bitrates=CAMERA, cap=1)
    alloc.allocate(0.0)
    assert layers(alloc) == {"cam-a": 2, "cam-b": 1, "screen": 2}


def test_budget_that_fits_all_top_layers():
    alloc = three_tracks()
    settle(alloc, 10_000_000, 0.0, 5.0)
    assert layers(alloc) == {"cam-a": 2, "cam-b": 2, "screen": 2}


def test_budget_that_fits_some_serves_screen_share_first_then_cameras_in_order():
    alloc = three_tracks()
    # screen f (2.0M) first; of the 0.8M left cam-a rises to h (0.5M), cam-b keeps q (0.15M).
    settle(alloc, 2_800_000, 0.0, 5.0)
    assert layers(alloc) == {"screen": 2, "cam-a": 1, "cam-b": 0}


def test_budget_that_fits_only_the_lowest_of_two_pauses_the_third():
    alloc = three_tracks()
    # screen q (0.2M) + cam-a q (0.15M) = 0.35M fit; cam-b's q (0.15M) does not.
    changed = {}
    now = 0.0
    for _ in range(10):
        alloc.set_available_bitrate(420_000, now)
        changed.update(alloc.allocate(now))
        now += 0.1
    assert layers(alloc) == {"screen": 0, "cam-a": 0, "cam-b": "paused"}
    assert changed["cam-b"] == Allocation(None, StreamState.PAUSED)


def test_budget_that_fits_none_pauses_every_track():
    alloc = three_tracks()
    settle(alloc, 100_000, 0.0, 1.0)
    assert layers(alloc) == {"screen": "paused", "cam-a": "paused", "cam-b": "paused"}


def test_without_allow_pause_a_track_that_does_not_fit_keeps_its_lowest_layer():
    """LiveKit's `allow_pause: false` (its default): the lowest layer keeps flowing."""
    alloc = three_tracks(allow_pause=False)
    settle(alloc, 100_000, 0.0, 1.0)
    assert layers(alloc) == {"screen": 0, "cam-a": 0, "cam-b": 0}
    assert alloc.counters.pauses == 0
    settle(alloc, 10_000_000, 1.0, 5.0)  # room again: raised as usual
    assert layers(alloc) == {"screen": 2, "cam-a": 2, "cam-b": 2}


def test_paused_track_resumes_when_its_lowest_layer_fits_and_says_so():
    alloc = three_tracks()
    settle(alloc, 420_000, 0.0, 1.0)
    assert layers(alloc)["cam-b"] == "paused"
    alloc.set_available_bitrate(700_000, 1.0)
    changed = alloc.allocate(1.0)
    assert changed["cam-b"].state is StreamState.ACTIVE and changed["cam-b"].layer == 0
    assert alloc.counters.pauses == 1 and alloc.counters.resumes == 1


def test_settings_cap_limits_the_layer_and_none_means_nothing_without_a_pause():
    alloc = three_tracks()
    alloc.set_track("cam-a", bitrates=CAMERA, cap=0)  # adaptive stream: a small element
    alloc.set_track("cam-b", bitrates=CAMERA, cap=None)  # hidden element (disabled)
    settle(alloc, 10_000_000, 0.0, 5.0)
    assert alloc.allocation("cam-a") == Allocation(0, StreamState.ACTIVE)
    assert alloc.allocation("cam-b") == Allocation(None, StreamState.ACTIVE)


def test_audio_is_reserved_before_video():
    alloc = StreamAllocator(audio_bitrate=48_000)
    alloc.set_track("cam", bitrates=CAMERA, cap=2)
    alloc.set_audio_tracks(4)  # 192 kbit/s of audio
    # 300 kbit/s: 108 kbit/s left for video, below the camera's q (150k): video pauses, not audio.
    settle(alloc, 300_000, 0.0, 1.0)
    assert alloc.allocation("cam") == Allocation(None, StreamState.PAUSED)
    # With audio counted, 400 kbit/s leaves 208k: the camera's q fits (with headroom).
    settle(alloc, 400_000, 1.0, 1.0)
    assert alloc.allocation("cam") == Allocation(0, StreamState.ACTIVE)
    alloc.set_audio_tracks(0)
    settle(alloc, 300_000, 2.0, 1.0)
    assert alloc.allocation("cam") == Allocation(0, StreamState.ACTIVE)


def test_downgrade_is_immediate_upgrade_waits_for_the_hold():
    alloc = StreamAllocator(upgrade_hold=2.0)
    alloc.set_track("cam", bitrates=CAMERA, cap=2)
    settle(alloc, 10_000_000, 0.0, 1.0)
    assert alloc.allocation("cam").layer == 2
    alloc.set_available_bitrate(700_000, 1.0)
    assert alloc.allocate(1.0)["cam"].layer == 1  # at once
    alloc.set_available_bitrate(5_000_000, 1.1)
    alloc.allocate(1.1)
    assert alloc.allocation("cam").layer == 1
    assert alloc.next_deadline() == pytest.approx(3.1)
    alloc.set_available_bitrate(5_000_000, 3.1)
    assert alloc.allocate(3.1)["cam"].layer == 2


def test_steady_estimate_causes_no_flapping():
    """Estimates jittering ±5 % around values that sit at layer boundaries: after the first
    settling, a long run (10 minutes at 10 estimates a second) switches no layer."""
    rng = random.Random(15)
    for centre in (650_000, 1_900_000, 2_300_000, 3_600_000, 4_000_000):
        alloc = three_tracks()
        now = settle(alloc, centre, 0.0, 10.0)
        before = alloc.counters.layer_changes
        pauses = alloc.counters.pauses
        for _ in range(6000):
            alloc.set_available_bitrate(int(centre * rng.uniform(0.95, 1.05)), now)
            alloc.allocate(now)
            now += 0.1
        assert alloc.counters.layer_changes == before, centre
        assert alloc.counters.pauses == pauses, centre


def test_a_drop_and_recovery_switches_each_track_a_bounded_number_of_times():
    alloc = three_tracks()
    now = settle(alloc, 6_000_000, 0.0, 5.0)
    assert layers(alloc) == {"cam-a": 2, "cam-b": 2, "screen": 2}
    start = alloc.counters.layer_changes
    now = settle(alloc, 1_000_000, now, 10.0)
    # Every track's q first (0.5M), then by priority: screen's h does not fit in the rest
    # (+0.6M), cam-a's h does (+0.35M), cam-b stays at q.
    assert layers(alloc) == {"screen": 0, "cam-a": 1, "cam-b": 0}
    settle(alloc, 6_000_000, now, 10.0)
    assert layers(alloc) == {"cam-a": 2, "cam-b": 2, "screen": 2}
    # Down once per track, up at most twice (through the middle layer) per track.
    assert alloc.counters.layer_changes - start <= 3 + 6


def test_bad_input_is_refused_or_clamped():
    with pytest.raises(ValueError):
        StreamAllocator(headroom=-1)
    alloc = StreamAllocator()
    alloc.set_track("cam", bitrates={}, cap=0)  # nothing announced: a default low layer
    with pytest.raises(ValueError):
        alloc.set_available_bitrate(float("nan"), 0.0)
    alloc.set_available_bitrate(-5, 0.0)
    assert alloc.allocate(0.0)["cam"] == Allocation(None, StreamState.PAUSED)
    alloc.remove_track("cam")
    alloc.remove_track("cam")
    assert alloc.allocate(1.0) == {}


def test_a_track_that_wants_nothing_leaves_its_share_to_the_others():
    """A muted or hidden track (cap None) takes nothing: the other camera gets its top layer."""
    alloc = StreamAllocator()
    alloc.set_track("cam-a", bitrates=CAMERA, cap=2)
    alloc.set_track("cam-b", bitrates=CAMERA, cap=2)
    now = settle(alloc, 2_100_000, 0.0, 5.0)
    assert layers(alloc) == {"cam-a": 2, "cam-b": 0}
    alloc.set_track("cam-a", bitrates=CAMERA, cap=None)
    now = settle(alloc, 2_100_000, now, 5.0)
    assert layers(alloc) == {"cam-a": None, "cam-b": 2}
    # Unmuted: cam-a comes first again (it came first); what is left keeps cam-b at h.
    alloc.set_track("cam-a", bitrates=CAMERA, cap=2)
    settle(alloc, 2_100_000, now, 5.0)
    assert layers(alloc) == {"cam-a": 1, "cam-b": 1}


def test_the_subscribers_priority_orders_the_tracks():
    """UpdateTrackSettings.priority as LiveKit reads it: 0 is the kind's default (screen share
    255, camera 1); a camera given 255 ranks with the screen share (then by arrival), and a
    camera given 2 comes before the other camera."""
    alloc = three_tracks()
    settle(alloc, 420_000, 0.0, 1.0)  # room for two lowest layers: screen, then cam-a
    assert layers(alloc) == {"screen": 0, "cam-a": 0, "cam-b": "paused"}
    alloc.set_track("cam-b", bitrates=CAMERA, cap=2, priority=2)
    settle(alloc, 420_000, 1.0, 1.0)
    assert layers(alloc) == {"screen": 0, "cam-b": 0, "cam-a": "paused"}
    alloc = three_tracks()
    alloc.set_track("cam-a", bitrates=CAMERA, cap=2, priority=255)
    alloc.set_track("screen", bitrates=SCREEN, cap=2, screen_share=True, priority=1000)  # clamped to 255
    settle(alloc, 420_000, 0.0, 1.0)
    assert layers(alloc) == {"cam-a": 0, "screen": 0, "cam-b": "paused"}
    alloc.set_track("cam-b", bitrates=CAMERA, cap=2, priority=255)
    alloc.set_track("screen", bitrates=SCREEN, cap=2, screen_share=True, priority=1)
    settle(alloc, 420_000, 1.0, 1.0)
    assert layers(alloc) == {"cam-a": 0, "cam-b": 0, "screen": "paused"}


def test_a_deficit_is_a_track_held_below_its_cap_and_the_wants_are_what_the_caps_allow():
    """What the owner asks probes for: the tracks' best layers under their caps (audio included),
    and only while the budget holds one below it (or paused)."""
    alloc = three_tracks()
    alloc.set_track("cam-b", bitrates=CAMERA, cap=1)
    alloc.set_audio_tracks(2)
    wanted = CAMERA[2] + CAMERA[1] + SCREEN[2] + 2 * alloc.audio_bitrate
    assert alloc.wanted_bps() == wanted
    alloc.allocate(0.0)
    assert not alloc.deficient  # no estimate yet: every track has its cap
    now = settle(alloc, 2_800_000, 0.0, 5.0)
    assert layers(alloc) != {"cam-a": 2, "cam-b": 1, "screen": 2} and alloc.deficient
    settle(alloc, 100_000, now, 1.0)
    assert set(layers(alloc).values()) == {"paused"} and alloc.deficient
    now = settle(alloc, 10_000_000, now + 1.0, 5.0)
    assert layers(alloc) == {"cam-a": 2, "cam-b": 1, "screen": 2} and not alloc.deficient
    # A track that wants nothing is no deficit and no want.
    alloc.set_track("cam-a", bitrates=CAMERA, cap=None)
    alloc.allocate(now)
    assert not alloc.deficient and alloc.wanted_bps() == wanted - CAMERA[2]
    assert alloc.bitrates("cam-b") == CAMERA and alloc.bitrates("gone") == {}


# --- temporal layers ---

#: Each camera layer's temporal bitrates as measured (TID 0, 1, 2): half the rate in the base
#: layer, a quarter in each layer above (libwebrtc's L1T3 split, roughly).
TEMPORAL = {layer: (bps // 2, bps // 4, bps // 4) for layer, bps in CAMERA.items()}


def choices(alloc: StreamAllocator) -> dict[str, object]:
    out = {}
    for tid in alloc.track_ids:
        a = alloc.allocation(tid)
        out[tid] = (a.layer, a.temporal) if a.state is StreamState.ACTIVE else "paused"
    return out


def temporal_camera(alloc: StreamAllocator, track_id: str = "cam", cap: int = 2) -> None:
    alloc.set_track(track_id, bitrates=CAMERA, cap=cap, temporal_bitrates=TEMPORAL)


def test_temporal_layers_a_budget_that_fits_all_forwards_every_frame():
    alloc = StreamAllocator()
    temporal_camera(alloc)
    settle(alloc, 10_000_000, 0.0, 5.0)
    assert choices(alloc) == {"cam": (2, None)}
    assert not alloc.deficient


@pytest.mark.parametrize("budget, expected", [
    (130_000, (0, 1)),  # q at 3/4 of its rate (112.5k, with headroom)
    (100_000, (0, 0)),  # q's base temporal layer only (75k)
    (50_000, "paused"),  # not even that
])
def test_temporal_layers_are_dropped_before_a_track_pauses(budget, expected):
    alloc = StreamAllocator()
    temporal_camera(alloc)
    settle(alloc, budget, 0.0, 5.0)
    assert choices(alloc) == {"cam": expected}
    assert alloc.deficient


def test_without_pausing_a_track_keeps_its_lowest_temporal_layer():
    alloc = StreamAllocator(allow_pause=False)
    temporal_camera(alloc)
    settle(alloc, 20_000, 0.0, 5.0)
    assert choices(alloc) == {"cam": (0, 0)}


def test_a_track_keeps_its_spatial_layer_at_a_lower_temporal_layer_before_going_down():
    alloc = StreamAllocator()
    temporal_camera(alloc)
    now = settle(alloc, 2_000_000, 0.0, 5.0)
    assert choices(alloc) == {"cam": (2, None)}
    # f at 3/4 of its rate (1.275M) fits 1.4M; the full rate (1.7M) does not: h is not chosen
    now = settle(alloc, 1_400_000, now, 1.0)
    assert choices(alloc) == {"cam": (2, 1)}
    now = settle(alloc, 1_000_000, now, 1.0)
    assert choices(alloc) == {"cam": (2, 0)}  # 850k
    settle(alloc, 700_000, now, 1.0)
    assert choices(alloc) == {"cam": (1, None)}


def test_three_tracks_share_a_small_budget_at_lower_frame_rates_instead_of_pausing():
    alloc = StreamAllocator()
    for name in ("cam-a", "cam-b", "cam-c"):
        temporal_camera(alloc, name)
    settle(alloc, 300_000, 0.0, 5.0)
    # three q layers at their full rate (450k) do not fit, at their base temporal layer (225k) do:
    # then the first (in order) goes up to its full rate, the others keep their base layer
    assert choices(alloc) == {"cam-a": (0, None), "cam-b": (0, 0), "cam-c": (0, 0)}
    assert alloc.counters.pauses == 0
    # the same budget without temporal layers pauses a track
    plain = three_tracks()
    settle(plain, 300_000, 0.0, 5.0)
    assert "paused" in layers(plain).values()


def test_a_temporal_upgrade_waits_for_the_hold_and_a_steady_estimate_does_not_flap():
    alloc = StreamAllocator(upgrade_hold=2.0)
    temporal_camera(alloc)
    now = settle(alloc, 100_000, 0.0, 3.0)
    assert choices(alloc) == {"cam": (0, 0)}
    alloc.set_available_bitrate(200_000, now)
    alloc.allocate(now)
    assert choices(alloc) == {"cam": (0, 0)}  # q at full rate fits now, but is held
    assert alloc.next_deadline() == pytest.approx(now + 2.0)
    now = settle(alloc, 200_000, now, 2.5)
    assert choices(alloc) == {"cam": (0, None)}
    # an estimate wandering ±6 % around a boundary (s1 T0 = 250k with headroom: 287.5k)
    rng = random.Random(7)
    now = settle(alloc, 290_000, now, 3.0)
    before = (alloc.counters.layer_changes, alloc.counters.temporal_changes)
    for _ in range(300):
        alloc.set_available_bitrate(int(290_000 * (1 + rng.uniform(-0.06, 0.06))), now)
        alloc.allocate(now)
        now += 0.1
    after = (alloc.counters.layer_changes, alloc.counters.temporal_changes)
    assert after[0] - before[0] <= 1 and after[1] - before[1] <= 1


def test_temporal_bitrates_of_one_layer_only_or_none_leave_the_others_whole():
    alloc = StreamAllocator()
    alloc.set_track("cam", bitrates=CAMERA, cap=2, temporal_bitrates={0: (60_000, 40_000), 1: (0, 0)})
    assert alloc.temporal_bitrates("cam") == {0: (60_000, 100_000)}  # cumulative; h's says nothing
    settle(alloc, 110_000, 0.0, 3.0)
    assert choices(alloc) == {"cam": (0, 0)}  # 90k (60 % of q's 150k)
    settle(alloc, 600_000, 3.0, 3.0)
    assert choices(alloc) == {"cam": (1, None)}  # h has no temporal steps (no measured rate)
