"""ICE-lite responder and controlling agent: in-memory pairs on a virtual clock, plus unit checks.

The interop test against aioice (an independent full ICE implementation) over
real loopback UDP is in ``test_ice_aioice_interop`` at the bottom.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import json
import math
import os
import random
import string
import subprocess
import sys

import attrs
import pytest
import trio
from aioice.candidate import Candidate
from budgets import examples
from hypothesis import event, given, settings
from hypothesis import strategies as st

from rtp.ice import (
    IceConnected,
    IceConsentExpired,
    IceControllingAgent,
    IceControllingState,
    IceFailed,
    IceLiteAgent,
    IceLiteState,
    IceRestartCompleted,
    IceSelectedPairChanged,
    ufrag_of,
)
from rtp.ice.lite import CONSENT_TIMEOUT, MAX_VALID_ADDRESSES
from rtp.stun import (
    Class,
    Message,
    Method,
    parse_stun,
    serialize,
    verify_fingerprint,
    verify_message_integrity,
)

LITE_UFRAG, LITE_PWD = "srvU", "server-password-0123456789"
CLIENT_UFRAG, CLIENT_PWD = "cliU", "client-password-0123456789"
LITE_ADDR = ("10.0.0.2", 7882)
CLIENT_ADDR = ("10.0.0.1", 50000)
BLACKHOLE = ("192.0.2.9", 9)


def host_candidate(addr, priority=2130706431, foundation="1"):
    return Candidate(foundation, 1, "udp", priority, addr[0], addr[1], "host")


def check_request(
    username=f"{LITE_UFRAG}:{CLIENT_UFRAG}",
    key=LITE_PWD.encode(),
    use_candidate=False,
    controlled=False,
    tid=None,
    fingerprint=True,
):
    msg = Message(Method.BINDING, Class.REQUEST, transaction_id=tid)
    if username is not None:
        msg.attributes["USERNAME"] = username
    msg.attributes["PRIORITY"] = 1862270975
    msg.attributes["ICE-CONTROLLED" if controlled else "ICE-CONTROLLING"] = 0x1234
    if use_candidate:
        msg.attributes["USE-CANDIDATE"] = None
    if key is not None:
        msg.add_message_integrity(key)
        if not fingerprint:
            msg.attributes.pop("FINGERPRINT")
        return bytes(msg)
    return serialize(msg) if fingerprint else bytes(msg)


def drain_events(agent):
    events = []
    while (ev := agent.next_event()) is not None:
        events.append(ev)
    return events


def make_lite():
    lite = IceLiteAgent(LITE_UFRAG, LITE_PWD)
    lite.set_remote_credentials(CLIENT_UFRAG, CLIENT_PWD)
    return lite


# --------------------------------------------------------------------------- lite unit tests


def test_lite_answers_authenticated_check_with_verifiable_success():
    lite = make_lite()
    lite.receive_stun(check_request(), CLIENT_ADDR, now=1.0)
    [(data, dst)] = lite.datagrams_to_send(1.0)
    assert dst == CLIENT_ADDR
    assert verify_fingerprint(data) and verify_message_integrity(data, LITE_PWD.encode())
    response = parse_stun(data)
    assert response.message_class == Class.RESPONSE
    assert response.attributes["XOR-MAPPED-ADDRESS"] == CLIENT_ADDR
    assert lite.valid_addresses == (CLIENT_ADDR,)
    assert lite.is_valid_address(CLIENT_ADDR)
    assert lite.state is IceLiteState.NEW and drain_events(lite) == []


def test_lite_use_candidate_nominates_and_later_nomination_moves_media():
    lite = make_lite()
    lite.receive_stun(check_request(use_candidate=True), CLIENT_ADDR, now=1.0)
    assert drain_events(lite) == [IceSelectedPairChanged(CLIENT_ADDR), IceConnected(CLIENT_ADDR)]
    assert lite.selected_address == CLIENT_ADDR and lite.state is IceLiteState.CONNECTED
    other = ("10.0.0.3", 40000)
    lite.receive_stun(check_request(use_candidate=True), other, now=2.0)
    assert drain_events(lite) == [IceSelectedPairChanged(other)]
    lite.receive_stun(check_request(use_candidate=True), other, now=3.0)
    assert drain_events(lite) == []
    assert lite.selected_address == other


@pytest.mark.parametrize(
    "request_bytes, code, counter",
    [
        (check_request(key=b"wrong-password"), 401, "bad_integrity"),
        (check_request(username=f"nope:{CLIENT_UFRAG}"), 401, "unknown_username"),
        (check_request(username=f"{LITE_UFRAG}:someoneelse"), 401, "unknown_username"),
        (check_request(username=LITE_UFRAG), 401, "unknown_username"),
        (check_request(key=None), 400, "bad_request"),
        (check_request(username=None), 400, "bad_request"),
    ],
    ids=["bad-mi", "bad-local-ufrag", "bad-remote-ufrag", "no-colon", "no-mi", "no-username"],
)
def test_lite_rejects_unauthenticated_checks_without_state(request_bytes, code, counter):
    lite = make_lite()
    lite.receive_stun(request_bytes, CLIENT_ADDR, now=1.0)
    [(data, dst)] = lite.datagrams_to_send(1.0)
    response = parse_stun(data)
    assert response.message_class == Class.ERROR and response.error_code == code
    assert "MESSAGE-INTEGRITY" not in response.attributes  # nothing signed for strangers
    assert len(data) <= len(request_bytes)  # no amplification
    assert getattr(lite.counters, counter) == 1 and lite.counters.accepted == 0
    assert lite.valid_addresses == () and lite.next_deadline() is None and drain_events(lite) == []


def test_lite_never_answers_a_stranger_with_more_bytes_than_it_sent():
    lite = make_lite()
    tiny = Message(Method.BINDING, Class.REQUEST)
    tiny.attributes["USERNAME"] = "a:b"
    data = serialize(tiny)  # 20 + 8 + 8 bytes: a 400 would be 48
    lite.receive_stun(data, CLIENT_ADDR, now=0.0)
    assert lite.counters.bad_request == 1 and lite.datagrams_to_send(0.0) == []


def test_lite_drops_checks_without_valid_fingerprint_silently():
    lite = make_lite()
    lite.receive_stun(check_request(fingerprint=False), CLIENT_ADDR, now=1.0)
    good = check_request()
    damaged_fp = good[:-1] + bytes([good[-1] ^ 1])
    lite.receive_stun(damaged_fp, CLIENT_ADDR, now=1.0)
    assert lite.datagrams_to_send(1.0) == []
    # aioice rejects a wrong CRC while parsing; a missing one is ours to catch.
    assert lite.counters.bad_fingerprint + lite.counters.malformed == 2
    assert lite.counters.bad_fingerprint >= 1
    assert lite.valid_addresses == ()


def test_lite_role_conflict_answers_487_signed_without_state():
    lite = make_lite()
    lite.receive_stun(check_request(controlled=True, use_candidate=True), CLIENT_ADDR, now=1.0)
    [(data, _)] = lite.datagrams_to_send(1.0)
    assert parse_stun(data).error_code == 487
    assert verify_message_integrity(data, LITE_PWD.encode())
    assert lite.counters.role_conflict == 1 and lite.valid_addresses == () and lite.selected_address is None


def test_lite_accepts_any_remote_ufrag_until_remote_credentials_are_known():
    lite = IceLiteAgent(LITE_UFRAG, LITE_PWD)
    lite.receive_stun(check_request(username=f"{LITE_UFRAG}:whoever"), CLIENT_ADDR, now=0.0)
    assert parse_stun(lite.datagrams_to_send(0.0)[0][0]).message_class == Class.RESPONSE
    lite.set_remote_credentials(CLIENT_UFRAG)
    lite.receive_stun(check_request(username=f"{LITE_UFRAG}:whoever"), CLIENT_ADDR, now=0.0)
    assert parse_stun(lite.datagrams_to_send(0.0)[0][0]).error_code == 401


def test_lite_ignores_responses_indications_and_garbage():
    lite = make_lite()
    response = Message(Method.BINDING, Class.RESPONSE)
    indication = Message(Method.BINDING, Class.INDICATION)
    lite.receive_stun(serialize(response, LITE_PWD.encode()), CLIENT_ADDR, 0.0)
    lite.receive_stun(serialize(indication), CLIENT_ADDR, 0.0)
    lite.receive_stun(b"\x00\x01\x00\x00garbage", CLIENT_ADDR, 0.0)
    assert lite.datagrams_to_send(0.0) == []
    assert lite.counters.ignored == 2 and lite.counters.malformed == 1


def test_lite_consent_expires_30s_after_last_authenticated_check():
    lite = make_lite()
    lite.receive_stun(check_request(use_candidate=True), CLIENT_ADDR, now=100.0)
    drain_events(lite)
    assert lite.next_deadline() == 100.0 + CONSENT_TIMEOUT
    # Unauthenticated traffic from the same address does not refresh consent.
    lite.receive_stun(check_request(key=b"bad"), CLIENT_ADDR, now=120.0)
    assert lite.next_deadline() == 130.0
    lite.receive_stun(check_request(), CLIENT_ADDR, now=125.0)
    assert lite.next_deadline() == 155.0
    lite.handle_timeout(154.9)
    assert lite.state is IceLiteState.CONNECTED and drain_events(lite) == []
    lite.handle_timeout(155.0)
    assert drain_events(lite) == [IceConsentExpired(CLIENT_ADDR)]
    assert lite.state is IceLiteState.EXPIRED and lite.selected_address is None
    assert lite.valid_addresses == () and lite.next_deadline() is None
    # Consent does not come back by itself: the peer must restart ICE.
    lite.datagrams_to_send(155.0)
    lite.receive_stun(check_request(use_candidate=True), CLIENT_ADDR, now=156.0)
    assert lite.datagrams_to_send(156.0) == [] and lite.counters.after_expiry == 1


def test_lite_restart_rejects_old_credentials_and_keeps_media_path():
    lite = make_lite()
    lite.receive_stun(check_request(use_candidate=True), CLIENT_ADDR, now=1.0)
    drain_events(lite)
    lite.restart("newU", "new-password-abcdefghijkl")
    lite.set_remote_credentials("cli2", "client2-password-xxxxxxxx")
    lite.datagrams_to_send(1.0)
    lite.receive_stun(check_request(), CLIENT_ADDR, now=2.0)
    assert parse_stun(lite.datagrams_to_send(2.0)[0][0]).error_code == 401
    assert lite.selected_address == CLIENT_ADDR  # media keeps flowing meanwhile
    lite.receive_stun(
        check_request(username="newU:cli2", key=b"new-password-abcdefghijkl", use_candidate=True),
        ("10.0.0.4", 1),
        now=3.0,
    )
    [(data, _)] = lite.datagrams_to_send(3.0)
    assert verify_message_integrity(data, b"new-password-abcdefghijkl")
    # The first check under the new credentials completes the restart (and nominates here).
    assert drain_events(lite) == [IceRestartCompleted(("10.0.0.4", 1)), IceSelectedPairChanged(("10.0.0.4", 1))]


def test_lite_restart_after_expiry_allows_reconnection():
    lite = make_lite()
    lite.receive_stun(check_request(use_candidate=True), CLIENT_ADDR, now=0.0)
    lite.handle_timeout(40.0)
    drain_events(lite)
    lite.restart("u2", "p2-password-0123456789")
    lite.receive_stun(check_request(username="u2:x", key=b"p2-password-0123456789", use_candidate=True), CLIENT_ADDR, 41.0)
    assert drain_events(lite) == [IceRestartCompleted(CLIENT_ADDR), IceSelectedPairChanged(CLIENT_ADDR),
                                  IceConnected(CLIENT_ADDR)]


def test_lite_valid_addresses_are_bounded_and_keep_the_selected_one():
    lite = make_lite()
    lite.receive_stun(check_request(use_candidate=True), CLIENT_ADDR, now=0.0)
    for i in range(100):
        lite.receive_stun(check_request(), ("10.9.0.1", 1000 + i), now=1.0 + i)
    assert len(lite.valid_addresses) == MAX_VALID_ADDRESSES
    assert CLIENT_ADDR in lite.valid_addresses
    assert ("10.9.0.1", 1099) in lite.valid_addresses
    assert lite.counters.addresses_evicted == 100 - (MAX_VALID_ADDRESSES - 1)


def test_lite_unauthenticated_flood_grows_nothing():
    lite = make_lite()
    rng = random.Random(1)
    for i in range(2000):
        addr = (f"198.51.100.{i % 250}", 1024 + i)
        kind = i % 4
        if kind == 0:
            data = check_request(key=rng.randbytes(8))
        elif kind == 1:
            data = check_request(username=f"{rng.randbytes(3).hex()}:x")
        elif kind == 2:
            data = check_request(fingerprint=False)
        else:
            data = rng.randbytes(rng.randrange(0, 120))
        lite.receive_stun(data, addr, now=float(i))
        lite.datagrams_to_send(float(i))
    assert lite.valid_addresses == () and lite.next_deadline() is None and drain_events(lite) == []
    assert lite.counters.accepted == 0


def test_ufrag_of_extracts_local_part_cheaply():
    assert ufrag_of(check_request()) == LITE_UFRAG
    assert ufrag_of(check_request(username="abc")) is None
    assert ufrag_of(check_request(username=":abc")) is None
    response = serialize(Message(Method.BINDING, Class.RESPONSE), b"k")
    assert ufrag_of(response) is None
    assert ufrag_of(b"") is None
    assert ufrag_of(b"\x00\x01\x00\x08\x21\x12\xa4\x42" + bytes(12) + b"\x00\x06\x00\x10ab") is None


@settings(max_examples=examples(3), deadline=None)
@given(st.binary(max_size=160))
def test_lite_and_ufrag_of_are_total_on_arbitrary_bytes(data):
    lite = make_lite()
    lite.receive_stun(data, CLIENT_ADDR, 0.0)
    result = ufrag_of(data)
    assert result is None or isinstance(result, str)
    assert lite.valid_addresses == ()


@settings(max_examples=examples(3), deadline=None)
@given(st.text(alphabet=string.ascii_letters + string.digits + "+/\u00e9\u30de", max_size=24), st.booleans())
def test_ufrag_of_round_trips_usernames(name, with_remote):
    # ufrags are ice-chars (RFC 8839 §5.4), so never contain ':'; non-ASCII must not route.
    username = f"{name}:r" if with_remote else name
    result = ufrag_of(check_request(username=username))
    if with_remote and name and name.isascii():
        assert result == name
    else:
        assert result is None


# --------------------------------------------------------------------------- in-memory network


class Net:
    """Two agents on a virtual clock with one-way latency and a drop filter (str0m-style progress)."""

    def __init__(self, ctrl, lite, latency=0.01, drop=None):
        self.ctrl, self.lite = ctrl, lite
        self.latency = latency
        self.drop = drop or (lambda data, src, dst, now: False)
        self.now = 0.0
        self.queue = []
        self.seq = itertools.count()
        self.events = []  # (time, side, event)
        self.sent = []  # (time, src, dst, data)

    def _flush(self):
        for data, dst in self.ctrl.datagrams_to_send(self.now):
            self._push(data, CLIENT_ADDR, dst)
        for data, dst in self.lite.datagrams_to_send(self.now):
            self._push(data, LITE_ADDR, dst)
        for side, agent in (("ctrl", self.ctrl), ("lite", self.lite)):
            while (ev := agent.next_event()) is not None:
                self.events.append((self.now, side, ev))

    def _push(self, data, src, dst):
        self.sent.append((self.now, src, dst, data))
        if not self.drop(data, src, dst, self.now):
            heapq.heappush(self.queue, (self.now + self.latency, next(self.seq), data, src, dst))

    def run_until(self, end):
        self._flush()
        while True:
            candidates = [t for t in (self.ctrl.next_deadline(), self.lite.next_deadline()) if t is not None]
            if self.queue:
                candidates.append(self.queue[0][0])
            if not candidates or min(candidates) > end:
                self.now = end
                return
            self.now = max(self.now, min(candidates))
            while self.queue and self.queue[0][0] <= self.now:
                _, _, data, src, dst = heapq.heappop(self.queue)
                if dst == LITE_ADDR:
                    self.lite.receive_stun(data, src, self.now)
                elif dst == CLIENT_ADDR:
                    self.ctrl.receive_stun(data, src, self.now)
            for agent in (self.ctrl, self.lite):
                t = agent.next_deadline()
                if t is not None and t <= self.now:
                    agent.handle_timeout(self.now)
            self._flush()

    def first(self, side, kind):
        return next(((t, e) for t, s, e in self.events if s == side and isinstance(e, kind)), None)


def make_ctrl(**kw):
    return IceControllingAgent(
        CLIENT_UFRAG, CLIENT_PWD, LITE_UFRAG, LITE_PWD, tie_breaker=0xC0FFEE, rng=random.Random(7), **kw
    )


def test_controlling_and_lite_connect_in_memory():
    ctrl, lite = make_ctrl(), make_lite()
    ctrl.add_remote_candidate(host_candidate(LITE_ADDR))
    ctrl.add_remote_candidate(None)
    ctrl.start(0.0)
    net = Net(ctrl, lite)
    net.run_until(1.0)
    t_ctrl, ev_ctrl = net.first("ctrl", IceConnected)
    t_lite, ev_lite = net.first("lite", IceConnected)
    assert ev_ctrl == IceConnected(LITE_ADDR) and ev_lite == IceConnected(CLIENT_ADDR)
    # Regular nomination: one ordinary check round trip, then one with USE-CANDIDATE.
    assert t_lite == pytest.approx(0.05 + 0.01)  # nomination leaves one Ta after the first check
    assert t_ctrl == pytest.approx(0.07)
    requests = [parse_stun(d) for _, src, _, d in net.sent if src == CLIENT_ADDR]
    assert ["USE-CANDIDATE" in r.attributes for r in requests] == [False, True]
    assert all(r.attributes["ICE-CONTROLLING"] == 0xC0FFEE for r in requests)
    assert ctrl.state is IceControllingState.CONNECTED and lite.state is IceLiteState.CONNECTED


def test_consent_keeps_both_sides_alive_then_expires_when_path_dies():
    ctrl, lite = make_ctrl(), make_lite()
    ctrl.add_remote_candidate(host_candidate(LITE_ADDR))
    ctrl.start(0.0)
    cut_at = 200.0
    net = Net(ctrl, lite, drop=lambda d, s, dst, now: now >= cut_at)
    net.run_until(cut_at)
    assert not [e for _, _, e in net.events if isinstance(e, IceConsentExpired)]
    consent_checks = [t for t, src, _, _ in net.sent if src == CLIENT_ADDR and t > 1.0]
    gaps = [b - a for a, b in zip(consent_checks, consent_checks[1:])]
    assert gaps and all(4.0 - 1e-9 <= g <= 6.0 + 1e-9 for g in gaps)  # 5 s x [0.8, 1.2]
    net.run_until(cut_at + 40.0)
    t_lite, _ = net.first("lite", IceConsentExpired)
    t_ctrl, _ = net.first("ctrl", IceConsentExpired)
    assert cut_at + 24.0 <= t_lite <= cut_at + 30.0  # 30 s after the last check that got through
    assert cut_at + 24.0 <= t_ctrl <= cut_at + 30.0
    assert ctrl.state is IceControllingState.EXPIRED and lite.state is IceLiteState.EXPIRED


def test_unreachable_first_candidate_falls_through_to_next():
    ctrl, lite = make_ctrl(), make_lite()
    ctrl.add_remote_candidate(host_candidate(BLACKHOLE, priority=2130706431))
    ctrl.add_remote_candidate(host_candidate(LITE_ADDR, priority=1000))
    ctrl.add_remote_candidate(None)
    ctrl.start(0.0)
    net = Net(ctrl, lite)
    net.run_until(60.0)
    assert net.first("ctrl", IceConnected)[1] == IceConnected(LITE_ADDR)
    assert net.first("ctrl", IceFailed) is None
    first_two = [(t, dst) for t, src, dst, _ in net.sent if src == CLIENT_ADDR][:2]
    assert first_two == [(0.0, BLACKHOLE), (pytest.approx(0.05), LITE_ADDR)]  # Ta pacing, priority order


def test_lost_packets_are_retransmitted_with_backoff():
    ctrl, lite = make_ctrl(), make_lite()
    ctrl.add_remote_candidate(host_candidate(LITE_ADDR))
    ctrl.start(0.0)
    dropped = []

    def drop_first_three(data, src, dst, now):
        if src == CLIENT_ADDR and len(dropped) < 3:
            dropped.append(now)
            return True
        return False

    net = Net(ctrl, lite, drop=drop_first_three)
    net.run_until(10.0)
    assert dropped == [0.0, 0.5, 1.5]  # RTO 0.5 s, doubling
    assert net.first("ctrl", IceConnected) is not None
    assert ctrl.counters.retransmissions == 3


def test_all_pairs_failing_reports_ice_failed():
    ctrl, lite = make_ctrl(max_transmissions=3, initial_rto=0.1), make_lite()
    ctrl.add_remote_candidate(host_candidate(BLACKHOLE))
    ctrl.add_remote_candidate(host_candidate(("192.0.2.10", 10), priority=5))
    ctrl.add_remote_candidate(None)
    ctrl.start(0.0)
    net = Net(ctrl, lite)
    net.run_until(5.0)
    t, ev = net.first("ctrl", IceFailed)
    assert ev.reason == "every candidate pair failed"
    # second pair starts at Ta; sends at +0, +0.1, +0.3 and fails one RTO (0.4) later.
    assert t == pytest.approx(0.05 + 0.7)
    assert ctrl.next_deadline() is None and ctrl.state is IceControllingState.FAILED


def test_connect_timeout_without_end_of_candidates():
    ctrl = make_ctrl(connect_timeout=3.0, max_transmissions=2, initial_rto=0.1)
    ctrl.add_remote_candidate(host_candidate(BLACKHOLE))
    ctrl.start(0.0)
    net = Net(ctrl, make_lite())
    net.run_until(10.0)
    t, ev = net.first("ctrl", IceFailed)
    assert t == pytest.approx(3.0) and "timeout" in ev.reason


def test_controlling_ignores_forged_responses_and_wrong_source():
    ctrl = make_ctrl()
    ctrl.add_remote_candidate(host_candidate(LITE_ADDR))
    ctrl.start(0.0)
    ctrl.handle_timeout(0.0)  # the first paced check is due at once
    [(request, dst)] = ctrl.datagrams_to_send(0.0)
    tid = parse_stun(request).transaction_id
    forged = Message(Method.BINDING, Class.ERROR, transaction_id=tid)
    forged.attributes["ERROR-CODE"] = (400, "x")
    ctrl.receive_stun(serialize(forged, b"not-the-remote-password"), LITE_ADDR, 0.01)
    assert ctrl.counters.unauthenticated_responses == 1
    assert ctrl.pairs[0].state.value == "in-progress"
    stray = Message(Method.BINDING, Class.RESPONSE, transaction_id=b"z" * 12)
    ctrl.receive_stun(serialize(stray, LITE_PWD.encode()), LITE_ADDR, 0.02)
    assert ctrl.counters.unmatched_responses == 1
    good = Message(Method.BINDING, Class.RESPONSE, transaction_id=tid)
    good.attributes["XOR-MAPPED-ADDRESS"] = CLIENT_ADDR
    ctrl.receive_stun(serialize(good, LITE_PWD.encode()), ("10.6.6.6", 1), 0.03)
    assert ctrl.counters.address_mismatch == 1 and ctrl.pairs[0].state.value == "failed"


def test_controlling_and_lite_role_conflict_when_peer_claims_controlled_is_not_ours():
    # The lite agent answers 487 to a controlled peer; our controlling agent marks the pair failed.
    ctrl = make_ctrl()
    ctrl.add_remote_candidate(host_candidate(LITE_ADDR))
    ctrl.add_remote_candidate(None)
    ctrl.start(0.0)
    ctrl.handle_timeout(0.0)  # the first paced check is due at once
    [(request, _)] = ctrl.datagrams_to_send(0.0)
    tid = parse_stun(request).transaction_id
    err = Message(Method.BINDING, Class.ERROR, transaction_id=tid)
    err.attributes["ERROR-CODE"] = (487, "Role Conflict")
    ctrl.receive_stun(serialize(err, LITE_PWD.encode()), LITE_ADDR, 0.01)
    assert ctrl.counters.role_conflicts == 1
    assert drain_events(ctrl) == [IceFailed("every candidate pair failed")]


def test_controlling_answers_peer_checks_and_rejects_strangers():
    ctrl = make_ctrl()
    req = check_request(username=f"{CLIENT_UFRAG}:{LITE_UFRAG}", key=CLIENT_PWD.encode(), controlled=True)
    ctrl.receive_stun(req, LITE_ADDR, 0.0)
    [(data, _)] = ctrl.datagrams_to_send(0.0)
    assert parse_stun(data).message_class == Class.RESPONSE
    assert verify_message_integrity(data, CLIENT_PWD.encode())
    ctrl.receive_stun(check_request(username=f"{CLIENT_UFRAG}:{LITE_UFRAG}", key=b"x"), LITE_ADDR, 0.0)
    [(data, _)] = ctrl.datagrams_to_send(0.0)
    assert parse_stun(data).error_code == 401
    both = check_request(username=f"{CLIENT_UFRAG}:{LITE_UFRAG}", key=CLIENT_PWD.encode())
    ctrl.receive_stun(both, LITE_ADDR, 0.0)
    [(data, _)] = ctrl.datagrams_to_send(0.0)
    assert parse_stun(data).error_code == 487


def test_controlling_ignores_unusable_candidates():
    ctrl = make_ctrl()
    ctrl.add_remote_candidate(Candidate("1", 1, "tcp", 1, "10.0.0.5", 9, "host", tcptype="passive"))
    ctrl.add_remote_candidate(Candidate("1", 2, "udp", 1, "10.0.0.5", 9, "host"))
    ctrl.add_remote_candidate(Candidate("1", 1, "udp", 1, "abcd.local", 9, "host"))
    ctrl.add_remote_candidate(host_candidate(LITE_ADDR))
    ctrl.add_remote_candidate(host_candidate(LITE_ADDR))
    assert len(ctrl.pairs) == 1 and ctrl.counters.candidates_ignored == 4


@settings(max_examples=examples(1.5), deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    loss=st.floats(0.0, 0.6),
    duplicate=st.floats(0.0, 0.3),
    jitter=st.floats(0.0, 0.2),
)
def test_lossy_network_either_connects_consistently_or_fails_cleanly(seed, loss, duplicate, jitter):
    """netem-style: random loss, duplication and reordering (jittered latency), deterministic per seed."""
    rng = random.Random(seed)
    ctrl, lite = make_ctrl(), make_lite()
    ctrl.add_remote_candidate(host_candidate(BLACKHOLE))
    ctrl.add_remote_candidate(host_candidate(LITE_ADDR, priority=100))
    ctrl.add_remote_candidate(None)
    ctrl.start(0.0)

    class LossyNet(Net):
        def _push(self, data, src, dst):
            self.sent.append((self.now, src, dst, data))
            copies = 1 + (rng.random() < duplicate)
            for _ in range(copies):
                if rng.random() >= loss:
                    arrival = self.now + self.latency + rng.random() * jitter
                    heapq.heappush(self.queue, (arrival, next(self.seq), data, src, dst))

    net = LossyNet(ctrl, lite)
    net.run_until(45.0)
    ctrl_connected = net.first("ctrl", IceConnected)
    ctrl_failed = net.first("ctrl", IceFailed)
    assert (ctrl_connected is None) != (ctrl_failed is None)  # exactly one outcome
    event("connected" if ctrl_connected else "failed")
    if ctrl_connected is not None:
        assert ctrl_connected[1] == IceConnected(LITE_ADDR)
        # Our nomination reached the lite side, or the success could not have come back.
        assert net.first("lite", IceConnected)[1] == IceConnected(CLIENT_ADDR)
        assert ctrl_connected[0] < 30.0
    else:
        assert ctrl.state is IceControllingState.FAILED and ctrl.next_deadline() is None
    assert set(lite.valid_addresses) <= {CLIENT_ADDR}
    assert lite.counters.bad_integrity == lite.counters.unknown_username == lite.counters.malformed == 0


@settings(max_examples=examples(2), deadline=None)
@given(st.binary(max_size=160))
def test_controlling_is_total_on_arbitrary_bytes(data):
    ctrl = make_ctrl()
    ctrl.add_remote_candidate(host_candidate(LITE_ADDR))
    ctrl.start(0.0)
    ctrl.receive_stun(data, LITE_ADDR, 0.0)
    assert ctrl.state is IceControllingState.CHECKING


# --------------------------------------------------------------------------- interop with aioice

AIOICE_PEER = os.path.join(os.path.dirname(__file__), "ice_aioice_peer.py")


@pytest.mark.parametrize("remote_is_lite", [True, False], ids=["regular-nomination", "aggressive-nomination"])
async def test_lite_agent_against_aioice_controlling_over_loopback(remote_is_lite):
    """aioice (full ICE, controlling, in a subprocess) connects to our lite agent on 127.0.0.1."""
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    lite = IceLiteAgent("liteUfrag", "litePassword0123456789abc")
    lite.set_remote_credentials("aioU", "aioicePassword0123456789abc")
    events = []
    media = []

    async def serve():
        while True:
            data, addr = await sock.recvfrom(2048)
            addr = addr[:2]
            if data and data[0] < 4:
                lite.receive_stun(data, addr, trio.current_time())
                for out, dst in lite.datagrams_to_send(trio.current_time()):
                    await sock.sendto(out, dst)
                while (ev := lite.next_event()) is not None:
                    events.append(ev)
            elif lite.is_valid_address(addr):
                media.append((data, addr))
                await sock.sendto(b"echo:" + data, addr)

    args = [
        sys.executable,
        AIOICE_PEER,
        "controlling-lite" if remote_is_lite else "controlling-full",
        str(port),
        "liteUfrag",
        "litePassword0123456789abc",
        "aioU",
        "aioicePassword0123456789abc",
    ]
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            result = await trio.run_process(args, capture_stdout=True, capture_stderr=True, check=False)
            nursery.cancel_scope.cancel()
    sock.close()
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    report = json.loads(result.stdout.decode().strip().splitlines()[-1])
    assert report["connected"] is True
    assert report["echo"] == "echo:hello from aioice"
    peer_addr = ("127.0.0.1", report["local_port"])
    assert IceConnected(peer_addr) in events
    assert lite.selected_address == peer_addr
    assert media == [(b"hello from aioice", peer_addr)]
    assert lite.counters.accepted >= 1
    assert lite.counters.bad_integrity == lite.counters.unknown_username == 0


@attrs.frozen
class AioiceRun:
    """What one full agent of ours saw against an aioice peer over loopback."""

    returncode: int
    report: dict
    peer: tuple[str, int]
    events: list
    media: list


async def run_against_aioice(agent, aioice_mode: str, credentials: tuple[str, str, str, str]) -> AioiceRun:
    """Drive our full ICE `agent` (sans-IO) on a loopback socket against tests/ice_aioice_peer.py
    in `aioice_mode`; `credentials` are the agent's (local ufrag, local pwd, remote ufrag, remote
    pwd). The agent echoes the media datagrams the peer sends on the selected pair."""
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    events, media = [], []
    args = [sys.executable, AIOICE_PEER, aioice_mode, str(port), *credentials]

    async def drive():
        while True:
            deadline = agent.next_deadline()
            with trio.move_on_at(deadline if deadline is not None else math.inf):
                data, addr = await sock.recvfrom(2048)
                addr = addr[:2]
                if data and data[0] < 4:
                    agent.receive_stun(data, addr, trio.current_time())
                elif addr == agent.selected_address:
                    media.append(data)
                    await sock.sendto(b"echo:" + data, addr)
            now = trio.current_time()
            timer = agent.next_deadline()
            if timer is not None and timer <= now:
                agent.handle_timeout(now)
            for out, dst in agent.datagrams_to_send(now):
                await sock.sendto(out, dst)
            while (ev := agent.next_event()) is not None:
                events.append(ev)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            proc = await nursery.start(
                functools.partial(trio.run_process, args, stdout=subprocess.PIPE, check=False)
            )
            reader = _LineReader(proc.stdout)
            peer = ("127.0.0.1", json.loads(await reader.readline())["local_port"])
            agent.add_remote_candidate(host_candidate(peer))
            agent.add_remote_candidate(None)
            agent.start(trio.current_time())
            nursery.start_soon(drive)
            report = json.loads(await reader.readline())
            await proc.wait()
            nursery.cancel_scope.cancel()
    sock.close()
    return AioiceRun(proc.returncode, report, peer, events, media)


async def test_controlling_agent_against_aioice_controlled_over_loopback():
    """Our controlling agent nominates a pair with aioice (full ICE, controlled) on 127.0.0.1.

    aioice also checks us, so this exercises our answers to a full peer's checks,
    and it only accepts the nomination once its own check of the pair succeeded.
    """
    credentials = ("ctlU", "ctlPassword0123456789abcd", "aioU", "aioicePassword0123456789abc")
    agent = IceControllingAgent(*credentials, tie_breaker=2**63)
    run = await run_against_aioice(agent, "controlled", credentials)
    assert run.returncode == 0
    assert run.report["connected"] is True and run.report["echo"] == "echo:hello from aioice"
    assert run.events[0] == IceConnected(run.peer)
    assert run.media == [b"hello from aioice"]
    assert agent.counters.requests_answered >= 1  # aioice's own checks of the pair
    assert agent.counters.unauthenticated_responses == 0


class _LineReader:
    def __init__(self, stream):
        self.stream, self.buf = stream, b""

    async def readline(self) -> str:
        while b"\n" not in self.buf:
            chunk = await self.stream.receive_some(4096)
            if not chunk:
                raise EOFError(self.buf)
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()
