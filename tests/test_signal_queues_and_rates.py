"""The signal layer's building blocks on their own: the coalescing outbox (bounded in messages
and bytes), the per-kind token buckets, and the bounded bookkeeping of track ids."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from budgets import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_sfu.signal.limits import (
    SignalLimits,
    assign_bounded,
    attributes_size,
    check_candidate,
    json_nesting_within,
    merge_attributes,
)
from trio_sfu.signal.outbox import SignalOutbox
from trio_sfu.signal.rate_limit import Rate, RequestRateLimiter, TokenBucket, Verdict


async def drain(outbox: SignalOutbox) -> list[object]:
    items = []
    while True:
        try:
            items.append(await outbox.get())
        except trio.EndOfChannel:
            return items


# ---- outbox ----------------------------------------------------------------------------------


async def test_an_update_replaces_the_unsent_one_with_the_same_key_in_its_place() -> None:
    outbox = SignalOutbox(max_messages=10, max_bytes=1000)
    assert outbox.put(b"a1", ("participant", "A"))
    assert outbox.put(b"offer")
    assert outbox.put(b"b1", ("participant", "B"))
    assert outbox.put(b"a2-newer", ("participant", "A"))
    assert (len(outbox), outbox.queued_bytes, outbox.coalesced) == (3, 2 + 5 + 8, 1)
    assert await outbox.get() == b"a2-newer"
    # Once sent, a new update about A takes a new slot (at the end).
    assert outbox.put(b"a3", ("participant", "A"))
    outbox.close()
    assert await drain(outbox) == [b"offer", b"b1", b"a3"]


async def test_the_bounds_are_messages_and_bytes_and_a_large_first_frame_still_fits() -> None:
    by_count = SignalOutbox(max_messages=2, max_bytes=1000)
    assert by_count.put(b"1") and by_count.put(b"2")
    assert not by_count.put(b"3")
    # Coalescing into a queued slot needs no new slot.
    by_bytes = SignalOutbox(max_messages=100, max_bytes=10)
    assert by_bytes.put(b"x" * 50)  # alone in the queue: one big message is not a backlog
    assert not by_bytes.put(b"y")
    assert await by_bytes.get() == b"x" * 50
    assert by_bytes.put(b"12345", "k") and by_bytes.put(b"678")
    assert not by_bytes.put(b"abc")  # 11 > 10
    assert not by_bytes.put(b"1234567890", "k")  # growing the keyed slot past the bound
    assert by_bytes.put(b"1234567", "k") and by_bytes.queued_bytes == 10


async def test_close_drains_then_ends_and_finals_pass_the_bounds() -> None:
    outbox = SignalOutbox(max_messages=1, max_bytes=1)
    assert outbox.put(b"last words")
    outbox.put_final("leave")
    outbox.put_final("close-marker")
    outbox.close()
    assert outbox.put(b"ignored after close")
    assert await drain(outbox) == [b"last words", "leave", "close-marker"]


async def test_clear_frees_the_backlog() -> None:
    outbox = SignalOutbox(max_messages=10, max_bytes=100)
    outbox.put(b"x" * 50, "k")
    outbox.clear()
    assert (len(outbox), outbox.queued_bytes) == (0, 0)
    assert outbox.put(b"y", "k") and await outbox.get() == b"y"


async def test_get_waits_for_a_put() -> None:
    outbox = SignalOutbox(max_messages=10, max_bytes=100)
    got = []

    async def consumer() -> None:
        got.append(await outbox.get())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consumer)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        outbox.put(b"hello")
    assert got == [b"hello"]


class _StepsOf(trio.abc.Instrument):
    """Counts the scheduling steps of the tasks named `name`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith(self.name):
            self.steps += 1


async def test_a_waiting_writer_takes_one_step_per_item() -> None:
    # Every participant's writer parks in get(): a message must wake it once, not twice.
    outbox = SignalOutbox(max_messages=10, max_bytes=100)
    got = []

    async def writer() -> None:
        while True:
            try:
                got.append(await outbox.get())
            except trio.EndOfChannel:
                return

    steps = _StepsOf("writer")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked()
        trio.lowlevel.add_instrument(steps)
        try:
            for n in range(5):
                outbox.put(b"m%d" % n)
                await trio.testing.wait_all_tasks_blocked()
            assert (got, steps.steps) == ([b"m0", b"m1", b"m2", b"m3", b"m4"], 5)
            # Items already queued are taken one step each too.
            outbox.put(b"q1")
            outbox.put(b"q2")
            await trio.testing.wait_all_tasks_blocked()
            assert (got[-2:], steps.steps) == ([b"q1", b"q2"], 7)  # the wake-up takes q1, one yield more q2
        finally:
            trio.lowlevel.remove_instrument(steps)
        outbox.close()


async def test_get_is_a_checkpoint_with_an_item_waiting() -> None:
    outbox = SignalOutbox(max_messages=10, max_bytes=100)
    outbox.put(b"queued")
    with trio.CancelScope() as scope:
        scope.cancel()
        await outbox.get()
    assert scope.cancelled_caught and len(outbox) == 1
    # A closed, drained outbox ends its reader at a checkpoint as well.
    assert await outbox.get() == b"queued"
    outbox.close()
    with trio.CancelScope() as scope:
        scope.cancel()
        await outbox.get()
    assert scope.cancelled_caught
    with pytest.raises(trio.EndOfChannel):
        await outbox.get()


@settings(max_examples=examples(3))
@given(st.lists(st.tuples(st.sampled_from([None, "a", "b", "c"]), st.binary(max_size=40)), max_size=60))
async def test_outbox_bookkeeping_matches_what_comes_out(puts: list[tuple[str | None, bytes]]) -> None:
    outbox = SignalOutbox(max_messages=8, max_bytes=120)
    for key, frame in puts:
        outbox.put(frame, key)
        assert len(outbox) <= 8
        assert outbox.queued_bytes <= 120 or len(outbox) == 1
    queued = outbox.queued_bytes
    outbox.close()
    frames = await drain(outbox)
    assert sum(len(f) for f in frames) == queued
    assert outbox.queued_bytes == 0


# ---- rate limits ----------------------------------------------------------------------------


def test_a_bucket_admits_its_burst_then_its_rate() -> None:
    bucket = TokenBucket.full(Rate(burst=3, per_second=2), now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.5) and not bucket.take(0.5)  # one token per 0.5 s
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]  # capped at the burst


def test_a_flood_is_throttled_then_disconnected_and_the_strikes_recover() -> None:
    limiter = RequestRateLimiter(0.0, rates={"ping": Rate(2, 1)}, default=Rate(1, 1), strikes=Rate(3, 0.5))
    verdicts = [limiter.check("ping", 0.0) for _ in range(6)]
    assert verdicts == [Verdict.ADMIT, Verdict.ADMIT, Verdict.THROTTLE, Verdict.THROTTLE, Verdict.THROTTLE,
                        Verdict.DISCONNECT]
    # Another session, throttled now and then, never runs out of strikes.
    calm = RequestRateLimiter(0.0, rates={"ping": Rate(1, 1)}, strikes=Rate(3, 0.5))
    now = 0.0
    for _ in range(50):
        assert calm.check("ping", now) is Verdict.ADMIT
        assert calm.check("ping", now) is Verdict.THROTTLE
        now += 2.0
    assert calm.throttled == 50


def test_unknown_kinds_share_one_bucket() -> None:
    limiter = RequestRateLimiter(0.0, rates={"ping": Rate(1, 0)}, default=Rate(2, 0), strikes=Rate(100, 0))
    assert limiter.check("made_up_1", 0.0) is Verdict.ADMIT
    assert limiter.check(None, 0.0) is Verdict.ADMIT
    assert limiter.check("made_up_2", 0.0) is Verdict.THROTTLE
    assert limiter.check("ping", 0.0) is Verdict.ADMIT  # its own bucket


# ---- limits ----------------------------------------------------------------------------------


def test_assign_bounded_keeps_the_known_and_the_newest_unknown() -> None:
    mapping: dict[str, bool] = {}
    known = {"real1", "real2"}
    assert assign_bounded(mapping, ["real1", "x1", "x2"], True, known, allowance=2) == 0
    assert assign_bounded(mapping, ["x3", "real2"], False, known, allowance=2) == 1
    assert mapping == {"real1": True, "x2": True, "x3": False, "real2": False}
    # Naming an old id again makes it the newest.
    assert assign_bounded(mapping, ["x2", "x4"], True, known, allowance=2) == 1
    assert set(mapping) == {"real1", "real2", "x2", "x4"}


def test_participant_update_checks_sizes_in_utf8_bytes_and_the_merged_attributes() -> None:
    limits = SignalLimits(max_metadata_size=10, max_attributes_size=10, max_participant_name_length=4)
    assert limits.check_participant_update("ääää", "", {}, {}) is not None  # 8 bytes
    assert limits.check_participant_update("abcd", "m" * 10, {}, {}) is None
    assert limits.check_participant_update("", "m" * 11, {}, {}) is not None
    assert limits.check_participant_update("", "", {"k": "v" * 5}, {"a": "b" * 4}) is not None  # 6 + 5
    assert limits.check_participant_update("", "", {"k": "v" * 5, "a": ""}, {"a": "b" * 4}) is None
    unlimited = SignalLimits(max_metadata_size=0, max_attributes_size=0, max_participant_name_length=0)
    assert unlimited.check_participant_update("n" * 10**5, "m" * 10**6, {"k": "v" * 10**5}, {}) is None
    assert attributes_size({"é": "ü"}) == 4
    assert merge_attributes({"a": "1", "b": "2"}, {"a": "", "c": "3"}) == {"b": "2", "c": "3"}


@pytest.mark.parametrize(
    "candidate, ok",
    [
        ('{"candidate":"candidate:1 1 udp 2130706431 10.0.0.1 5000 typ host","sdpMid":"0","sdpMLineIndex":0}', True),
        ('{"candidate":"[[[[[[[[[[ in a string is fine"}', True),
        ('{"a":[[[[[[]]]]]]}', False),
        ("[" * 200_000, False),
        ('{"candidate":"' + "x" * 5000 + '"}', False),
    ],
)
def test_candidates_are_bounded_before_parsing(candidate: str, ok: bool) -> None:
    assert (check_candidate(candidate) is None) is ok


@given(st.recursive(st.none() | st.integers() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                    max_leaves=20))
def test_json_nesting_agrees_with_the_document(value: object) -> None:
    import json

    def depth(v: object) -> int:
        if isinstance(v, list):
            return 1 + max((depth(x) for x in v), default=0)
        if isinstance(v, dict):
            return 1 + max((depth(x) for x in v.values()), default=0)
        return 0

    text = json.dumps(value)
    assert json_nesting_within(text, depth(value))
    assert depth(value) == 0 or not json_nesting_within(text, depth(value) - 1)
