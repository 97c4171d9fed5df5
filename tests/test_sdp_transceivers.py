"""Transceiver table and cache: reuse rules, JSEP recycling, and the one-m-line-per-track invariant."""

import itertools

import pytest
from budgets import examples
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from sdp.codecs import MediaKind, subscriber_codecs
from sdp.errors import TransceiverInvariantError
from sdp.model import (
    Connection, Fingerprint, IcePwd, IceUfrag, MediaSection, Mid, Origin,
    SessionDescription, Setup, SetupRole, SctpPort, flag,
)
from sdp.negotiator import LocalParams, SubscriberOffer, codec_attributes
from sdp.parser import parse, serialize
from sdp.transceivers import CachedTransceiver, TransceiverCache, TransceiverState, TransceiverTable

LOCAL = LocalParams("SfuU", "sfu-password-0123456789ab",
                    (Fingerprint("sha-256", ":".join(["5A"] * 32)),), session_id=3)


def counter_ssrcs(start=1000):
    counter = itertools.count(start)
    return lambda: next(counter)


def client_answer(offer: SessionDescription, reject: frozenset = frozenset()) -> SessionDescription:
    """What a conforming client answers: mirror each m-line, receive what we send, DTLS active."""
    answer = SessionDescription(origin=Origin("-", 99, 1))
    for m in offer.media:
        section = MediaSection(m.kind, 0 if (m.rejected or m.mid in reject) else 9, m.proto,
                               list(m.formats), connections=[Connection()])
        section.attributes += [IceUfrag("cli1"), IcePwd("client-password-abcdefghij"),
                               Fingerprint("sha-256", ":".join(["C1"] * 32)),
                               Setup(SetupRole.ACTIVE), Mid(m.mid)]
        if not section.rejected:
            if m.is_rtp:
                section.attributes += list(m.extmaps)
                section.attributes.append(flag(m.direction.reversed().value))
                section.attributes.append(flag("rtcp-mux"))
                section.attributes += codec_attributes(m.codecs())
            else:
                section.attributes.append(SctpPort(5000))
        answer.media.append(section)
    return answer


def live_tracks_in(offer: SessionDescription) -> list[str]:
    return [m.msid.track_id for m in offer.media if not m.rejected and m.msid is not None]


# --- cache ---------------------------------------------------------------------


def test_cache_put_take_and_bound():
    cache = TransceiverCache(max_entries=2)
    entry = CachedTransceiver("1", MediaKind.VIDEO, 5, 6, ())
    cache.put("TR_a", entry)
    assert "TR_a" in cache and cache.peek("TR_a") == entry
    assert cache.take("TR_a") == entry and cache.take("TR_a") is None
    for i in range(3):
        cache.put(f"TR_{i}", CachedTransceiver(str(i), MediaKind.AUDIO, i + 1, None, ()))
    assert len(cache) == 2 and "TR_0" not in cache  # oldest evicted
    cache.discard_mid("2")
    assert "TR_2" not in cache and "TR_1" in cache


# --- table ---------------------------------------------------------------------


def test_rebind_same_track_reuses_cached_mid_ssrc_and_payload_types():
    table = TransceiverTable(ssrc_source=counter_ssrcs())
    t = table.bind("TR_v", MediaKind.VIDEO, "PA_x|camera", subscriber_codecs(MediaKind.VIDEO, ("video/VP8",)))
    first = (t.mid, t.ssrc, t.rtx_ssrc, t.payload_types)
    assert t.payload_types == (96, 97)
    table.unbind("TR_v", cache=True)
    again = table.bind("TR_v", MediaKind.VIDEO, "PA_x|camera")
    assert (again.mid, again.ssrc, again.rtx_ssrc, again.payload_types) == first
    assert len(table.transceivers) == 1


def test_other_track_takes_idle_transceiver_with_fresh_ssrcs():
    table = TransceiverTable(ssrc_source=counter_ssrcs())
    t = table.bind("TR_a", MediaKind.AUDIO, "s")
    old_ssrc = t.ssrc
    table.unbind("TR_a")
    u = table.bind("TR_b", MediaKind.AUDIO, "s")
    assert u is t and u.mid == t.mid and u.ssrc != old_ssrc and u.track_id == "TR_b"
    # A different kind never takes it: a new m-line is appended.
    v = table.bind("TR_c", MediaKind.VIDEO, "s")
    assert [x.mid for x in table.transceivers] == ["0", "1"] and v.mid == "1"


def test_idle_lines_reserved_by_the_cache_are_taken_last():
    table = TransceiverTable(ssrc_source=counter_ssrcs())
    table.bind("TR_a", MediaKind.AUDIO, "s")
    table.bind("TR_b", MediaKind.AUDIO, "s")
    table.unbind("TR_a", cache=True)   # mid 0, expected back
    table.unbind("TR_b")               # mid 1, free
    c = table.bind("TR_c", MediaKind.AUDIO, "s")
    assert c.mid == "1"
    a = table.bind("TR_a", MediaKind.AUDIO, "s")
    assert a.mid == "0"
    # When only a reserved line is left, it is taken and the reservation dropped.
    table.unbind("TR_a", cache=True)
    d = table.bind("TR_d", MediaKind.AUDIO, "s")
    assert d.mid == "0" and "TR_a" not in table.cache
    e = table.bind("TR_a", MediaKind.AUDIO, "s")
    assert e.mid == "2"  # its old line is busy: appended


def test_idle_line_without_the_tracks_codec_is_not_reused():
    table = TransceiverTable(ssrc_source=counter_ssrcs())
    vp8 = subscriber_codecs(MediaKind.VIDEO, ("video/VP8",))
    av1 = subscriber_codecs(MediaKind.VIDEO, ("video/AV1",))
    table.bind("TR_a", MediaKind.VIDEO, "s", vp8)
    table.unbind("TR_a")
    t = table.bind("TR_b", MediaKind.VIDEO, "s", av1)
    assert t.mid == "1" and [c.name for c in t.codecs] == ["AV1", "rtx"]


def test_double_bind_is_an_internal_error_and_changes_nothing():
    table = TransceiverTable(ssrc_source=counter_ssrcs())
    table.bind("TR_a", MediaKind.AUDIO, "s")
    before = [(t.mid, t.state, t.track_id) for t in table.transceivers]
    with pytest.raises(TransceiverInvariantError):
        table.bind("TR_a", MediaKind.AUDIO, "s")
    assert [(t.mid, t.state, t.track_id) for t in table.transceivers] == before


def test_stop_recycles_only_after_the_answer_to_the_port0_offer():
    sub = SubscriberOffer(LOCAL, TransceiverTable(ssrc_source=counter_ssrcs()))
    sub.table.bind("TR_a", MediaKind.AUDIO, "s")
    offer1 = sub.create_offer()
    sub.table.stop("1")                    # after offer1 was made
    sub.apply_answer(client_answer(offer1))
    assert sub.table.get("1").state is TransceiverState.STOPPING  # offer1 had it live
    offer2 = sub.create_offer()
    assert offer2.media[1].port == 0 and offer2.media[1].mid == "1"
    sub.apply_answer(client_answer(offer2))
    assert sub.table.get("1").state is TransceiverState.RECYCLABLE
    offer3 = sub.create_offer()            # not yet reused: still offered with port 0
    assert offer3.media[1].port == 0 and offer3.media[1].mid == "1"
    sub.apply_answer(client_answer(offer3))
    t = sub.table.bind("TR_b", MediaKind.VIDEO, "s")
    assert t.mid == "2" and [x.mid for x in sub.table.transceivers] == ["0", "2"]


# --- state machine ---------------------------------------------------------------

TRACKS = {f"TR_{i}": (MediaKind.AUDIO if i < 3 else MediaKind.VIDEO) for i in range(6)}


class SubscriberNegotiation(RuleBasedStateMachine):
    """Random bind/unbind/cache/stop/offer/answer sequences against the JSEP rules."""

    @initialize(with_data_channel=st.booleans())
    def setup(self, with_data_channel):
        self.sub = SubscriberOffer(LOCAL, TransceiverTable(ssrc_source=counter_ssrcs()),
                                   data_channel=with_data_channel)
        self.previous_mids: list[str] = []
        self.recycled_ok: set[str] = set()    # mids whose slot JSEP lets us reuse
        self.retired: set[str] = set()        # mids that left the table: never come back
        self.pending = None
        self.bound: dict[str, str] = {}       # shadow model: track id → mid

    @rule(track=st.sampled_from(sorted(TRACKS)))
    def bind(self, track):
        table = self.sub.table
        if table.find_by_track(track) is not None:
            before = [(t.mid, t.state, t.track_id) for t in table.transceivers]
            with pytest.raises(TransceiverInvariantError):
                table.bind(track, TRACKS[track], "PA_p|camera")
            assert [(t.mid, t.state, t.track_id) for t in table.transceivers] == before
            return
        cached = table.cache.peek(track)
        reusable = (cached is not None and table.get(cached.mid) is not None
                    and table.get(cached.mid).state is TransceiverState.IDLE)
        t = table.bind(track, TRACKS[track], "PA_p|camera")
        if reusable:
            assert (t.mid, t.ssrc, t.rtx_ssrc, t.codecs) == (
                cached.mid, cached.ssrc, cached.rtx_ssrc, cached.codecs)
        assert t.track_id == track and t.kind is TRACKS[track]
        self.bound[track] = t.mid

    @rule(track=st.sampled_from(sorted(TRACKS)), cache=st.booleans())
    def unbind(self, track, cache):
        table = self.sub.table
        if table.find_by_track(track) is None:
            with pytest.raises(KeyError):
                table.unbind(track, cache)
            return
        t = table.unbind(track, cache)
        del self.bound[track]
        assert t.state is TransceiverState.IDLE and (track in table.cache) == cache

    @precondition(lambda self: any(t.state.live for t in self.sub.table.transceivers))
    @rule(data=st.data())
    def stop(self, data):
        live = [t.mid for t in self.sub.table.transceivers if t.state.live]
        mid = data.draw(st.sampled_from(live))
        self.sub.table.stop(mid)
        self.bound = {k: v for k, v in self.bound.items() if v != mid}
        assert self.sub.table.get(mid).state is TransceiverState.STOPPING

    @precondition(lambda self: self.sub.table.transceivers)
    @rule()
    def offer(self):
        offer = self.sub.create_offer()
        assert parse(serialize(offer)) == offer
        tracks = live_tracks_in(offer)
        assert len(tracks) == len(set(tracks)), f"two live m-lines for one track: {tracks}"
        mids = [m.mid for m in offer.media]
        assert len(mids) == len(set(mids))
        assert len(mids) >= len(self.previous_mids)
        for old, new in zip(self.previous_mids, mids):
            assert new == old or old in self.recycled_ok, f"m-line {old} replaced by {new}"
            if new != old:
                self.retired.add(old)
        assert not self.retired.intersection(mids)
        live_ssrcs = [s for m in offer.media if not m.rejected for s in m.ssrcs]
        assert len(live_ssrcs) == len(set(live_ssrcs))
        bundle = offer.bundle_groups()
        assert bundle == ([tuple(m.mid for m in offer.media if not m.rejected)]
                          if any(not m.rejected for m in offer.media) else [])
        self.previous_mids = mids
        self.pending = offer

    @precondition(lambda self: self.pending is not None)
    @rule(data=st.data())
    def answer(self, data):
        offer = self.pending
        live = [m.mid for m in offer.media if not m.rejected]
        reject = frozenset(data.draw(st.lists(st.sampled_from(live), max_size=1))) if live else frozenset()
        answer = client_answer(offer, reject)
        result = self.sub.apply_answer(answer)
        for track in self.sub.rejected_track_ids:
            assert self.bound.pop(track) in reject
        for m in answer.media:
            assert result[m.mid].accepted == (not m.rejected)
            if m.rejected:
                # JSEP §5.2.2: once an answer with port 0 for this m-line is applied
                # (we offered it stopped, or the client refused it) its slot may be reused.
                self.recycled_ok.add(m.mid)
        self.pending = None

    @invariant()
    def one_live_line_per_track(self):
        self.sub.table.check_invariant()
        bound = [t.track_id for t in self.sub.table.transceivers if t.state.live and t.track_id]
        assert len(bound) == len(set(bound))
        for t in self.sub.table.transceivers:
            assert (t.state is TransceiverState.ACTIVE) == (t.track_id is not None)
        # Binding never steals another track's line; only unbind/stop/rejection free one.
        assert {t.track_id: t.mid for t in self.sub.table.transceivers
                if t.track_id is not None} == self.bound


TestSubscriberNegotiation = SubscriberNegotiation.TestCase
TestSubscriberNegotiation.settings = settings(
    max_examples=examples(2), stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])


def test_restore_layout_reproduces_another_tables_m_lines_in_place() -> None:
    """A peer connection moving to another node keeps its m-lines: live ones come back idle in
    order, stopped ones stay recyclable, the data channel keeps its mid, and new m-lines take
    mids the old table never used."""
    from sdp.codecs import MediaKind
    from sdp.transceivers import TransceiverState, TransceiverTable

    table = TransceiverTable()
    table.add_data_channel()
    layout = [("0", MediaKind.APPLICATION, True), ("1", MediaKind.AUDIO, True),
              ("2", MediaKind.VIDEO, False), ("3", MediaKind.AUDIO, True)]
    table.restore_layout(layout, next_mid=5)
    assert [(t.mid, t.kind, t.state) for t in table.transceivers] == [
        ("0", MediaKind.APPLICATION, TransceiverState.IDLE), ("1", MediaKind.AUDIO, TransceiverState.IDLE),
        ("2", MediaKind.VIDEO, TransceiverState.RECYCLABLE), ("3", MediaKind.AUDIO, TransceiverState.IDLE)]
    assert table.bind("TR_a", MediaKind.AUDIO, "s").mid in ("1", "3")
    video = table.bind("TR_v", MediaKind.VIDEO, "s")
    assert video.mid == "5" and table.transceivers[2] is video  # the stopped slot's place, a fresh mid


def test_restore_layout_refuses_what_it_cannot_reproduce() -> None:
    import pytest

    from sdp.codecs import MediaKind
    from sdp.transceivers import TransceiverTable

    def fresh() -> TransceiverTable:
        t = TransceiverTable()
        t.add_data_channel()
        return t

    used = fresh()
    used.bind("TR_x", MediaKind.AUDIO, "s")
    bad = {
        "table in use": (used, [("0", MediaKind.APPLICATION, True)]),
        "repeated mid": (fresh(), [("0", MediaKind.APPLICATION, True), ("1", MediaKind.AUDIO, True), ("1", MediaKind.VIDEO, True)]),
        "empty mid": (fresh(), [("0", MediaKind.APPLICATION, True), ("", MediaKind.AUDIO, True)]),
        "no data channel": (fresh(), [("1", MediaKind.AUDIO, True)]),
        "two data channels": (fresh(), [("0", MediaKind.APPLICATION, True), ("1", MediaKind.APPLICATION, True)]),
    }
    for name, (table, layout) in bad.items():
        before = [(t.mid, t.kind, t.state) for t in table.transceivers]
        with pytest.raises(ValueError):
            table.restore_layout(layout, next_mid=0)
        assert [(t.mid, t.kind, t.state) for t in table.transceivers] == before, name
