"""LiveKit's two migration races (docs/seed-races.md), replayed deterministically on two real
nodes under MockClock(autojump_threshold=0), with explicit interleavings at the servers' seams.

Scenario 1: pA (already migrated to B) is subscribing to pB's track through B's *remote* copy
and its answer is held mid-negotiation; pB migrates to B, so the copy begins closing (held
there); pA's answer arrives, its subscribe completes, and its post-check finds the copy no
longer open.

Scenario 2: pA is subscribed through the remote copy on B; pB migrates, its *local* source for
the same track id is published on B while the copy is still closing (held there across several
reconcile ticks, so pA's subscription is retried meanwhile).

Each scenario checks the issue's invariants from pA's client: one m-line, one mid and one SSRC for
the track in every offer, continuous sequence numbers and timestamps, no offer for the
remote -> local switch, and pA forwarded from pB's local source on B in the end. The same
scenarios with the pre-fix rule substituted into the real servers (expected-to-resume read at
removal time; newest-source-wins resolution) are run too, and must fail those invariants — so the
checks are not vacuous.
"""

from __future__ import annotations

import trio
from test_migration_world import RECONCILE, ROOM, Seams, World, two_nodes, until

from trio_sfu.tracks import (
    FifoHead,
    NewestWins,
    ReadAtRemoval,
    RecordedAtClosing,
    SourceOrigin,
    TrackSource,
)


def start_pb_migration(w: World) -> None:
    """pB moves to B: its client follows the leave{RESUME}, its media follows its client."""
    async def migrate() -> None:
        assert await w.a.relay.migrate(ROOM, w.sid("pB"), "B")

    w.nursery.start_soon(migrate)


def violations(w: World, mid_before: str, ssrc_before: int, offers_on_b: int) -> list[str]:
    """The issue's invariants after both migrations; each broken one is named."""
    pa = w.observer
    out = []
    if pa.duplicate_track_offers():
        out.append("an offer carried the track on two live m-lines")
    if any(mid != mid_before for mid in pa.mids_for(w.track)):
        out.append(f"track moved to another m-line: {pa.mids_for(w.track)} (was {mid_before})")
    if len(pa.offers) != offers_on_b:
        out.append(f"renegotiated: {len(pa.offers) - offers_on_b} more offer(s)")
    src = w.subscribed_source("B", "pA")
    if src is None or src.origin is not SourceOrigin.LOCAL:
        out.append(f"pA is not forwarding from pB's local track on B: {src}")
    ssrcs = {r.ssrc for r in pa.received}
    if ssrcs != {ssrc_before}:
        out.append(f"the client saw SSRCs {sorted(ssrcs)} instead of only {ssrc_before}")
    if pa.discontinuities():
        out.append(f"numbering not continuous: {pa.discontinuities()[:3]}")
    if w.closed_with_subscribers():
        out.append(f"subscribers left on closed sources: {w.closed_with_subscribers()}")
    out.extend(w.subscribers_on_sources_not_open())
    failures = w.clients["pA"].subscription_failures
    if failures:
        out.append(f"subscription errors reported: {failures}")
    return out


async def migrate_pa_first(w: World, hold_answer: bool) -> tuple[str, int, trio.Event | None]:
    """pA moves to B (optionally with its first answer there held); returns the mid and SSRC
    the track had on A, and the gate holding the answer."""
    pa = w.observer
    mid_before = pa.mids_for(w.track)[-1]
    ssrc_before = pa.received[-1].ssrc
    gate = None
    if hold_answer:
        gate = pa.gate = trio.Event()
    assert await w.a.relay.migrate(ROOM, w.sid("pA"), "B")
    return mid_before, ssrc_before, gate


def endpoint(w: World, node: str, name: str):
    session = w.session(node, name)
    assert session is not None
    return session.subscribing.endpoint


async def scenario_1(resume_policy=RecordedAtClosing, resolution=FifoHead) -> tuple[list[str], dict]:
    seams = Seams()
    facts: dict = {}
    async with two_nodes(seams, resume_policy=resume_policy, resolution=resolution) as w:
        pa = w.observer
        mid_before, ssrc_before, gate = await migrate_pa_first(w, hold_answer=True)
        assert gate is not None
        # pA's manager on B resolved the remote copy, bound the cached m-line and waits for the
        # client's answer: it is attached to the copy.
        await pa.waiting.wait()
        remote = w.resolve("B")
        assert remote is not None and remote.origin is SourceOrigin.REMOTE and remote.has_subscriber(w.sid("pA"))
        offers_on_b = len(pa.offers)

        release_closing = seams.hold("remote.closing")
        start_pb_migration(w)
        await seams.reached["remote.closing"].wait()
        assert remote.state.value == "closing" and remote.has_subscriber(w.sid("pA"))

        # The answer arrives: pA's subscribe completes and its post-check finds it not open.
        seams.reached.pop("sub.post_check", None)
        gate.set()
        await seams.reached["sub.post_check"].wait()
        await until(lambda: not remote.has_subscriber(w.sid("pA")))
        ep = endpoint(w, "B", "pA")
        facts["cached_at_post_check"] = w.track in ep.table.cache and w.track in ep.snapshots

        release_closing.set()
        await until(lambda: remote.state.value == "closed")
        closed_at = trio.current_time()
        # Resolution moves to the local source and pA rebinds within the reconcile bound.
        try:
            await until(lambda: w.subscribed_source("B", "pA") is not None, timeout=RECONCILE)
            facts["rebound_after"] = trio.current_time() - closed_at
        except trio.TooSlowError:
            facts["rebound_after"] = None
        await trio.sleep(2 * RECONCILE)
        facts["mid_before"] = mid_before
        return violations(w, mid_before, ssrc_before, offers_on_b), facts


async def scenario_2(resume_policy=RecordedAtClosing, resolution=FifoHead) -> tuple[list[str], dict]:
    seams = Seams()
    facts: dict = {}
    async with two_nodes(seams, resume_policy=resume_policy, resolution=resolution) as w:
        pa = w.observer
        mid_before, ssrc_before, _ = await migrate_pa_first(w, hold_answer=False)
        await until(lambda: w.subscribed_source("B", "pA") is not None)
        remote = w.subscribed_source("B", "pA")
        assert remote is not None and remote.origin is SourceOrigin.REMOTE
        offers_on_b = len(pa.offers)

        release_closing = seams.hold("remote.closing")
        start_pb_migration(w)
        await seams.reached["remote.closing"].wait()
        fifo = w.sources("B")
        local: list[TrackSource] = [s for s in fifo if s.origin is SourceOrigin.LOCAL]
        # pB's local track is already listed, behind the closing remote one.
        assert len(local) == 1 and local[0].is_open and fifo[0] is remote
        # Held across several reconcile ticks: pA's subscription is retried meanwhile.
        subscription = w.session("B", "pA").subscribing.manager.subscriptions[w.track]
        ticks_before = len(subscription.transient_errors)
        await trio.sleep(3 * RECONCILE)
        session = w.session("B", "pA")
        s = session.subscribing.manager.subscriptions.get(w.track) if session is not None else None
        facts["retried_while_closing"] = s is not None and len(s.transient_errors) > ticks_before
        facts["resolved_while_closing"] = w.resolve("B")
        release_closing.set()
        await until(lambda: remote.state.value == "closed")
        closed_at = trio.current_time()
        try:
            await until(lambda: w.subscribed_source("B", "pA") is not None, timeout=RECONCILE)
            facts["rebound_after"] = trio.current_time() - closed_at
        except trio.TooSlowError:
            facts["rebound_after"] = None
        await trio.sleep(2 * RECONCILE)
        return violations(w, mid_before, ssrc_before, offers_on_b), facts


# ---- with the fix ------------------------------------------------------------------------------


async def test_scenario_1_post_check_caches_and_local_source_reuses_the_mline(autojump_clock):
    problems, facts = await scenario_1()
    assert problems == []
    assert facts["cached_at_post_check"], "the post-check removal must cache before returning"
    assert facts["rebound_after"] is not None and facts["rebound_after"] <= RECONCILE


async def test_scenario_2_local_source_waits_behind_the_closing_remote_one(autojump_clock):
    problems, facts = await scenario_2()
    assert problems == []
    assert facts["resolved_while_closing"] is None, "nothing resolves while the head is closing"
    assert facts["retried_while_closing"]
    assert facts["rebound_after"] is not None and facts["rebound_after"] <= RECONCILE


# ---- the pre-fix behaviour substituted: the same checks must fail -------------------------------


async def test_scenario_1_fails_with_expected_to_resume_read_at_removal(autojump_clock):
    problems, facts = await scenario_1(resume_policy=ReadAtRemoval)
    assert not facts["cached_at_post_check"]
    # The m-line was given up: a new SSRC (and a renegotiation) for the same track.
    assert any("SSRCs" in p for p in problems), problems
    assert any("renegotiated" in p for p in problems), problems


async def test_scenario_2_fails_with_newest_source_wins(autojump_clock):
    problems, facts = await scenario_2(resolution=NewestWins)
    assert facts["resolved_while_closing"] is not None  # the local source resolved too early
    # Binding it while the remote one still held the track's m-line is the duplicate m-line
    # the table refuses; the subscription is lost and the client told so.
    assert any("subscription errors reported" in p for p in problems), problems
    assert any("not forwarding from pB's local track" in p for p in problems), problems


def test_scenario_1_fixed_flag_is_read_by_every_removal_path_whatever_the_clear_says():
    # Flag consistency (seed-races §3.4): with the fix a later bulk clear with a disagreeing
    # flag cannot change what the post-check already decided.
    from trio_sfu.forwarding.receiver import TrackReceiver

    seen = []

    class Sub:
        subscriber_id = "x"

        def detach_source(self, source, expected_to_resume):
            seen.append(expected_to_resume)

    for policy, expected in ((RecordedAtClosing, [True, True]), (ReadAtRemoval, [False, True])):
        seen.clear()
        src = TrackSource("TR_x", SourceOrigin.REMOTE, "A", TrackReceiver("TR_x", "audio/opus", 48000, send_rtcp=lambda p: True, local_ssrc=1, now=0.0),
                          resume_policy=policy())
        other = TrackSource("TR_x", SourceOrigin.REMOTE, "A", TrackReceiver("TR_x", "audio/opus", 48000, send_rtcp=lambda p: True, local_ssrc=1, now=0.0),
                            resume_policy=policy())
        src.add_subscriber(Sub())
        other.add_subscriber(Sub())
        src.begin_closing(True)
        other.begin_closing(True)
        src.remove_subscriber("x")          # the post-check path
        other.clear_subscribers(True)       # the bulk clear path
        assert seen == expected, policy
