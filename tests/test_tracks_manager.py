"""TrackSource, TrackManager and SubscriptionManager on their own: FIFO resolution, the
expected-to-resume flag, retry tolerance and reporting, all on MockClock."""

from __future__ import annotations

import hashlib

import pytest
import trio
import trio.testing
from budgets import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from livekit.protocol import models

from sdp.codecs import MediaKind
from sdp.model import Codec, Fingerprint
from sdp.negotiator import LocalParams, answer_offer
from trio_sfu.forwarding.receiver import ForwardingStateError, TrackReceiver
from trio_sfu.tracks import (
    AlreadySubscribedError, FifoHead, NewestWins, RecordedAtClosing, SourceNotOpenError,
    SourceOrigin, TrackManager, TrackSource,
)
from trio_sfu.tracks.subscriber import SubscriberEndpoint
from trio_sfu.tracks.subscription_manager import SubscriptionManager

OPUS = Codec(111, "opus", 48000, 2)


def make_source(track_id: str = "TR_1", origin: SourceOrigin = SourceOrigin.LOCAL, policy=RecordedAtClosing) -> TrackSource:
    receiver = TrackReceiver(track_id, "audio/opus", 48000, send_rtcp=lambda p: True, local_ssrc=7, now=0.0)
    return TrackSource(track_id, origin, "n1", receiver, kind=MediaKind.AUDIO, publisher_id="pB", codecs=(OPUS,),
                       resume_policy=policy())


class Sub:
    def __init__(self, sid: str = "pA") -> None:
        self.subscriber_id = sid
        self.detached: list[tuple[TrackSource, bool]] = []

    def detach_source(self, source, expected_to_resume):
        self.detached.append((source, expected_to_resume))


# ---- TrackSource ---------------------------------------------------------------------------------


def test_source_records_the_flag_at_closing_and_every_removal_reads_it():
    src = make_source()
    a, b = Sub("a"), Sub("b")
    src.add_subscriber(a)
    src.add_subscriber(b)
    assert src.begin_closing(True)
    assert not src.begin_closing(False)  # only open -> closing records it
    src.remove_subscriber("a", expected_to_resume=False)  # the caller's value is ignored
    src.clear_subscribers(False)
    assert a.detached == [(src, True)] and b.detached == [(src, True)]
    src.close()
    assert src.state.value == "closed" and src.subscriber_ids == ()


def test_source_refuses_subscribers_unless_open_and_twice():
    src = make_source()
    s = Sub()
    src.add_subscriber(s)
    with pytest.raises(AlreadySubscribedError):
        src.add_subscriber(s)
    src.begin_closing(False)
    with pytest.raises(SourceNotOpenError):
        src.add_subscriber(Sub("other"))


def test_unsubscribe_from_an_open_source_is_never_a_resume_unless_asked():
    src = make_source()
    s = Sub()
    src.add_subscriber(s)
    src.remove_subscriber("pA")
    assert s.detached == [(src, False)]


def test_close_removes_remaining_subscribers_before_telling_owners():
    src = make_source()
    s = Sub()
    src.add_subscriber(s)
    seen = []
    src.on_closed(lambda closed: seen.append((closed.state.value, closed.subscriber_ids)))
    src.close_now(True)
    assert seen == [("closed", ())] and s.detached == [(src, True)]
    with pytest.raises(ForwardingStateError):
        src.receiver.begin_closing(False)


# ---- TrackManager --------------------------------------------------------------------------------


def test_fifo_resolves_the_head_only_and_nothing_while_it_is_closing():
    tm = TrackManager()
    remote, local = make_source(origin=SourceOrigin.REMOTE), make_source()
    changed = []
    tm.watch(changed.append)
    assert tm.add(remote) and tm.add(local)
    assert not tm.add(remote)  # the same source twice is a no-op
    assert tm.sources("TR_1") == (remote, local) and changed == ["TR_1", "TR_1"]
    assert tm.resolve("TR_1") is remote
    remote.begin_closing(True)
    assert tm.resolve("TR_1") is None
    remote.clear_subscribers(True)
    assert tm.resolve("TR_1") is None  # still listed until closed
    remote.close()
    assert tm.resolve("TR_1") is local and changed == ["TR_1"] * 3


def test_removing_a_non_head_source_does_not_change_resolution():
    tm = TrackManager()
    first, second = make_source(), make_source()
    tm.add(first)
    tm.add(second)
    second.close_now(False)
    assert tm.sources("TR_1") == (first,) and tm.resolve("TR_1") is first
    first.close_now(False)
    assert "TR_1" not in tm and tm.resolve("TR_1") is None


def test_newest_wins_is_the_pre_fix_policy():
    tm = TrackManager(NewestWins())
    remote, local = make_source(origin=SourceOrigin.REMOTE), make_source()
    tm.add(remote)
    remote.begin_closing(True)
    tm.add(local)
    assert tm.resolve("TR_1") is local  # resolvable before the remote one cleared its subscribers


@settings(max_examples=examples(3), deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["add", "closing", "clear", "close", "readd"]), st.integers(0, 3)), max_size=40))
def test_fifo_invariants_under_any_sequence(ops):
    # Model: resolution is the earliest added, still listed source, and only if it is open;
    # a source is listed from its add until it is closed.
    tm = TrackManager(FifoHead())
    sources = [make_source() for _ in range(4)]
    for s in sources:
        s.add_subscriber(Sub())
    listed: list[TrackSource] = []
    for op, i in ops:
        s = sources[i]
        if op in ("add", "readd"):
            if s.state.value != "closed" and s not in listed:
                listed.append(s)
            if s.state.value != "closed":
                tm.add(s)
        elif op == "closing":
            s.begin_closing(bool(i % 2))
        elif op == "clear":
            if s.state.value != "open":
                s.clear_subscribers(True)
        elif op == "close":
            s.close()
            if s in listed:
                listed.remove(s)
        assert list(tm.sources("TR_1")) == listed
        expected = listed[0] if listed and listed[0].is_open else None
        assert tm.resolve("TR_1") is expected
        for t in sources:
            if t.state.value == "closed":
                assert t.subscriber_ids == ()


# ---- SubscriptionManager -------------------------------------------------------------------------


def _endpoint(sid: str = "pA") -> SubscriberEndpoint:
    digest = hashlib.sha256(b"x").hexdigest().upper()
    fp = (Fingerprint("sha-256", ":".join(digest[i:i + 2] for i in range(0, 64, 2))),)
    client = LocalParams("cliU", "client-password-0123456789", fp, ())

    async def exchange(offer):
        return answer_offer(offer, client)

    return SubscriberEndpoint(sid, LocalParams("sfuU", "sfu-password-0123456789ab", fp, ()), exchange, lambda p: True)


async def test_not_found_is_retried_until_the_timeout_then_reported(autojump_clock):
    tm = TrackManager()
    reports = []
    manager = SubscriptionManager(_endpoint(), tm, report=lambda t, e: reports.append((t, e, trio.current_time())),
                                  reconcile_interval=1.0, not_found_timeout=10.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        start = trio.current_time()
        manager.set_desired("TR_missing", True)
        await trio.sleep(15)
        nursery.cancel_scope.cancel()
    assert len(reports) == 1
    track, error, at = reports[0]
    assert track == "TR_missing" and error == models.SubscriptionError.SE_TRACK_NOTFOUND
    assert 10.0 <= at - start <= 11.0  # within one tick of the timeout
    assert manager.closed and tm.watcher_count == 0


async def test_a_closing_head_is_retried_without_limit_and_bound_when_it_leaves(autojump_clock):
    tm = TrackManager()
    remote, local = make_source(origin=SourceOrigin.REMOTE), make_source()
    tm.add(remote)
    remote.begin_closing(True)
    tm.add(local)
    reports = []
    manager = SubscriptionManager(_endpoint(), tm, report=lambda t, e: reports.append(t),
                                  reconcile_interval=1.0, not_found_timeout=5.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        manager.set_desired("TR_1", True)
        await trio.sleep(30)  # far past the not-found timeout: a closing source is not "not found"
        s = manager.subscriptions["TR_1"]
        assert s.desired and s.source is None and reports == []
        assert s.transient_errors.count("closing") >= 25
        remote.close()  # leaves the FIFO: the trigger binds the local one at once
        await trio.sleep(0)
        await trio.testing.wait_all_tasks_blocked()
        assert manager.subscriptions["TR_1"].source is local and local.has_subscriber("pA")
        nursery.cancel_scope.cancel()
    assert not local.has_subscriber("pA")  # closing the manager detaches it


async def test_unsubscribe_detaches_and_renegotiates_the_mline_away(autojump_clock):
    tm = TrackManager()
    src = make_source()
    tm.add(src)
    endpoint = _endpoint()
    manager = SubscriptionManager(endpoint, tm, report=lambda t, e: None, reconcile_interval=1.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        manager.set_desired("TR_1", True)
        await trio.sleep(0.5)
        assert manager.subscriptions["TR_1"].forwarding and len(endpoint.offers) == 1
        manager.set_desired("TR_1", False)
        await trio.sleep(0.5)
        assert "TR_1" not in manager.subscriptions and not src.has_subscriber("pA")
        assert len(endpoint.offers) == 2 and "TR_1" not in endpoint.table.cache  # not a resume
        nursery.cancel_scope.cancel()


async def test_triggers_beyond_the_channel_are_dropped_and_the_tick_catches_up(autojump_clock):
    tm = TrackManager()
    manager = SubscriptionManager(_endpoint(), tm, report=lambda t, e: None, reconcile_interval=1.0)
    for _ in range(60):
        manager.trigger("x")
    assert manager.dropped_triggers == 10
    manager.close()
