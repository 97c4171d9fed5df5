"""The controlled full ICE agent (``rtp.ice.IceControlledAgent``): what our client runs when it
answers a full-ICE offerer such as Janus. In memory against our controlling agent on a virtual
clock (both full: each checks the other), and over loopback against aioice controlling with
aggressive nomination, an independent implementation."""

from __future__ import annotations

import random

import pytest

from rtp.ice import IceConnected, IceControlledAgent, IceControllingState
from rtp.stun import Class, parse_stun
from test_ice import (
    CLIENT_ADDR,
    CLIENT_PWD,
    CLIENT_UFRAG,
    LITE_ADDR,
    LITE_PWD,
    LITE_UFRAG,
    Net,
    check_request,
    host_candidate,
    make_ctrl,
    make_lite,
    run_against_aioice,
)


def make_controlled() -> IceControlledAgent:
    # The in-memory network calls the second agent "lite" and puts it at LITE_ADDR.
    return IceControlledAgent(LITE_UFRAG, LITE_PWD, CLIENT_UFRAG, CLIENT_PWD, tie_breaker=1, rng=random.Random(3))


def _requests_from(net: Net, addr) -> list:
    messages = [parse_stun(d) for _, src, _, d in net.sent if src == addr]
    return [m for m in messages if m.message_class.name == "REQUEST"]


@pytest.mark.parametrize("request_bytes", [
    check_request(key=b"wrong-password"),
    check_request(username=f"nope:{CLIENT_UFRAG}"),
    check_request(username=f"{LITE_UFRAG}:someoneelse"),
    check_request(username=LITE_UFRAG),
    check_request(key=None),
    check_request(username=None),
    check_request(fingerprint=False),
    check_request(),
], ids=["bad-mi", "bad-local-ufrag", "bad-remote-ufrag", "no-colon", "no-mi", "no-username", "no-fingerprint",
        "authentic"])
def test_a_full_agent_authenticates_checks_as_the_lite_agent_does(request_bytes, request) -> None:
    """One set of rules (rtp/ice/checks.py): the controlled agent (the controlling one shares
    its code) answers each check, authentic or not, with what the lite agent answers."""
    controlled, lite = make_controlled(), make_lite()
    controlled.start(0.0)
    controlled.receive_stun(request_bytes, CLIENT_ADDR, now=0.5)
    lite.receive_stun(request_bytes, CLIENT_ADDR, now=0.5)
    answers = [[(parse_stun(d).message_class, parse_stun(d).error_code) for d, dst in agent.datagrams_to_send(0.5)
                if dst == CLIENT_ADDR and parse_stun(d).message_class is not Class.REQUEST]
               for agent in (controlled, lite)]
    assert answers[0] == answers[1]
    authentic = request.node.callspec.id == "authentic"
    assert controlled.counters.requests_rejected == (0 if authentic else 1)
    assert controlled.counters.requests_answered == (1 if authentic else 0)


def test_controlled_checks_too_and_takes_the_controlling_peers_nomination() -> None:
    ctrl, controlled = make_ctrl(), make_controlled()
    ctrl.add_remote_candidate(host_candidate(LITE_ADDR))
    ctrl.add_remote_candidate(None)
    controlled.add_remote_candidate(host_candidate(CLIENT_ADDR))
    controlled.add_remote_candidate(None)
    ctrl.start(0.0)
    controlled.start(0.0)
    net = Net(ctrl, controlled)
    net.run_until(2.0)
    assert net.first("ctrl", IceConnected)[1] == IceConnected(LITE_ADDR)
    assert net.first("lite", IceConnected)[1] == IceConnected(CLIENT_ADDR)
    assert controlled.state is IceControllingState.CONNECTED and controlled.selected_address == CLIENT_ADDR
    ours = _requests_from(net, LITE_ADDR)
    assert ours, "the controlled agent sent no checks of its own"
    assert all("ICE-CONTROLLED" in m.attributes and "ICE-CONTROLLING" not in m.attributes for m in ours)
    assert not any("USE-CANDIDATE" in m.attributes for m in ours)
    assert any("USE-CANDIDATE" in m.attributes for m in _requests_from(net, CLIENT_ADDR))
    assert controlled.counters.requests_answered >= 2  # the peer's check and its nomination
    assert controlled.counters.role_conflicts == ctrl.counters.role_conflicts == 0


def test_nomination_from_an_unknown_address_triggers_a_check_then_selects() -> None:
    """No candidate for the peer (it was never trickled): its nominating check teaches us the
    address (peer-reflexive), our triggered check on it succeeds, and that pair is selected."""
    ctrl, controlled = make_ctrl(), make_controlled()
    ctrl.add_remote_candidate(host_candidate(LITE_ADDR))
    ctrl.add_remote_candidate(None)
    ctrl.start(0.0)
    controlled.start(0.0)
    net = Net(ctrl, controlled)
    net.run_until(2.0)
    assert net.first("lite", IceConnected)[1] == IceConnected(CLIENT_ADDR)
    assert [p.addr for p in controlled.pairs] == [CLIENT_ADDR]
    assert len(_requests_from(net, LITE_ADDR)) >= 1


def test_two_controlled_agents_conflict_with_487_and_never_connect() -> None:
    a = make_controlled()
    b = IceControlledAgent(CLIENT_UFRAG, CLIENT_PWD, LITE_UFRAG, LITE_PWD, tie_breaker=2, rng=random.Random(4))
    a.add_remote_candidate(host_candidate(CLIENT_ADDR))
    b.add_remote_candidate(host_candidate(LITE_ADDR))
    a.start(0.0)
    b.start(0.0)
    net = Net(b, a)
    net.run_until(3.0)
    assert a.state is IceControllingState.CHECKING and b.state is IceControllingState.CHECKING
    assert a.counters.role_conflicts >= 1 and b.counters.role_conflicts >= 1


async def test_controlled_agent_against_aioice_controlling_over_loopback() -> None:
    """aioice (full ICE, controlling, aggressive nomination) nominates; we check it too."""
    credentials = ("ctdU", "ctdPassword0123456789abcd", "aioU", "aioicePassword0123456789abc")
    agent = IceControlledAgent(*credentials, tie_breaker=5)
    run = await run_against_aioice(agent, "controlling-full", credentials)
    assert run.returncode == 0
    assert run.report["connected"] is True and run.report["echo"] == "echo:hello from aioice"
    assert run.events[0] == IceConnected(run.peer)
    assert run.media == [b"hello from aioice"]
    assert agent.counters.requests_answered >= 1
    assert agent.counters.unauthenticated_responses == agent.counters.role_conflicts == 0
