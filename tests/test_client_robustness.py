"""The client's input paths are total: whatever a server sends, only the errors its reader turns
into ``client.errors`` come out (``RtpStackError`` for SDP, ``ValueError``/``KeyError`` for JSON
and fields) — never AttributeError, IndexError or TypeError that would tear the client down.

Inputs are real captured SDP (tests/fixtures/sdp/) with lines dropped, duplicated or mangled,
random trickle JSON, and offers/answers at the wrong moment.
"""

from __future__ import annotations

import json
import pathlib

import attrs
import trio
from budgets import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from livekit.protocol import models, rtc

from rtp.errors import RtpStackError
from trio_sfu.client.client import LiveKitClient
from trio_sfu.client.publisher import PendingOffer
from trio_sfu.client.publisher_offer import OfferedTrack, build_publisher_offer

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "sdp"
OFFER_LINES = (FIXTURES / "chromium_subscriber_offer_sent.sdp").read_text().splitlines()
ANSWER_LINES = (FIXTURES / "python_sdk_subscriber_answer.sdp").read_text().splitlines()


class FakeWebSocket:
    closed = False

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def send_message(self, message: bytes) -> None:
        self.sent.append(message)

    async def aclose(self) -> None:
        self.closed = True


def mutated(lines: list[str], data) -> str:
    lines = list(lines)
    for _ in range(data.draw(st.integers(0, 6))):
        index = data.draw(st.integers(0, len(lines) - 1))
        action = data.draw(st.sampled_from(["drop", "dup", "mangle", "truncate"]))
        if action == "drop":
            del lines[index]
        elif action == "dup":
            lines.insert(index, lines[index])
        elif action == "mangle":
            lines[index] = lines[index][:2] + data.draw(st.text(max_size=40))
        else:
            lines[index] = lines[index][: data.draw(st.integers(0, len(lines[index])))]
        if not lines:
            break
    return "\r\n".join(lines) + "\r\n"


@attrs.define
class Outcome:
    """What one server message did to the client: refused with an error the reader records, or
    took effect (an answer sent, the pending offer answered, a candidate handed to a PC)."""

    response: rtc.SignalResponse
    raised: str | None = None  # an RtpStackError / ValueError / KeyError, as the reader records it
    errors: list[str] = attrs.Factory(list)  # client.errors it added
    answered: list[int] = attrs.Factory(list)  # ids of the answers it made the client send
    candidates: int = 0  # candidates it handed to a PC (which counts the ones it cannot use)
    pending_answered: bool = False  # it answered our pending publisher offer


def run_dispatch(responses: list[rtc.SignalResponse], pending_offer: bool) -> list[Outcome]:
    outcomes = [Outcome(response) for response in responses]

    async def main() -> None:
        join = rtc.JoinResponse(participant=models.ParticipantInfo(sid="PA_me", identity="me"))
        ws = FakeWebSocket()
        client = LiveKitClient(ws, join, "127.0.0.1",  # type: ignore[arg-type]
                               __import__("dtls_helpers").make_certificate())
        handed: list[object] = []
        async with trio.open_nursery() as nursery:
            client._nursery = nursery
            if pending_offer:
                pc = client.publisher.ensure_pc()
                offer = build_publisher_offer(
                    pc.local, [OfferedTrack("0", "audio", "s", "c", "n", (1,))], 1)
                client.publisher.pending_offer = PendingOffer(1, offer)
            for outcome in outcomes:
                for pc in (client.publisher_pc, client.subscriber_pc):
                    observe_candidates(pc, handed)
                errors, sent, candidates = len(client.errors), len(ws.sent), len(handed)
                pending = client.publisher.pending_offer
                try:
                    await client._dispatch(outcome.response)
                except (RtpStackError, ValueError, KeyError) as exc:
                    outcome.raised = f"{type(exc).__name__}: {exc}"  # what the reader records in client.errors
                outcome.errors = client.errors[errors:]
                requests = [rtc.SignalRequest.FromString(m) for m in ws.sent[sent:]]
                outcome.answered = [r.answer.id for r in requests if r.WhichOneof("message") == "answer"]
                outcome.candidates = len(handed) - candidates
                outcome.pending_answered = pending is not None and client.publisher.pending_offer is None and pending.answered.is_set()
            nursery.cancel_scope.cancel()
        for pc in (client.publisher_pc, client.subscriber_pc):
            if pc is not None:
                pc.sock.close()

    trio.run(main)
    return outcomes


def observe_candidates(pc: object, handed: list[object]) -> None:
    """Note every candidate the client hands to `pc`, without changing what the PC does with it."""
    if pc is None or getattr(pc, "observed", False):
        return
    add = pc.add_remote_candidate  # type: ignore[attr-defined]

    def recording(candidate: str | None) -> None:
        handed.append(candidate)
        add(candidate)

    pc.add_remote_candidate = recording  # type: ignore[attr-defined]
    pc.observed = True  # type: ignore[attr-defined]


def assert_offer_answered_or_refused(outcome: Outcome) -> None:
    """A subscriber offer ends one of two ways: an answer under its id, or an error saying why."""
    offer_id = outcome.response.offer.id
    assert (outcome.answered == [offer_id]) != (outcome.raised is not None), outcome


@settings(max_examples=examples(1.5), deadline=None)
@given(st.data())
def test_mangled_subscriber_offers(data) -> None:
    offers = [rtc.SignalResponse(offer=rtc.SessionDescription(type="offer", sdp=mutated(OFFER_LINES, data), id=i))
              for i in range(1, data.draw(st.integers(1, 3)) + 1)]
    for outcome in run_dispatch(offers, pending_offer=False):
        assert_offer_answered_or_refused(outcome)


@settings(max_examples=examples(1.5), deadline=None)
@given(st.data())
def test_mangled_publisher_answers(data) -> None:
    answer = rtc.SignalResponse(answer=rtc.SessionDescription(
        type="answer", sdp=mutated(ANSWER_LINES, data), id=data.draw(st.sampled_from([0, 1, 2]))))
    pending = data.draw(st.booleans())
    (outcome,) = run_dispatch([answer], pending_offer=pending)
    # Applied to our pending offer, or refused with an error saying why — never dropped unsaid.
    assert outcome.pending_answered or outcome.raised or outcome.errors, outcome
    assert not (outcome.pending_answered and outcome.raised), outcome
    if not pending or answer.answer.id == 2:  # no offer of ours has id 2
        assert not outcome.pending_answered and any("matches no pending offer" in e for e in outcome.errors)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=30),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3),
    max_leaves=8,
)


@settings(max_examples=examples(2), deadline=None)
@given(st.one_of(
    st.text(max_size=80),
    json_values.map(json.dumps),
    st.builds(lambda c, m: json.dumps({"candidate": c, "sdpMid": m, "sdpMLineIndex": 0}),
              st.text(max_size=80) | st.just("candidate:1 1 udp 1 127.0.0.1 9 typ host") | json_values,
              st.text(max_size=4)),
), st.sampled_from([0, 1, 7]), st.booleans(), st.booleans())
def test_random_trickles(candidate_init: str, target: int, final: bool, with_offer: bool) -> None:
    responses = []
    if with_offer:
        responses.append(rtc.SignalResponse(offer=rtc.SessionDescription(
            type="offer", sdp="\r\n".join(OFFER_LINES) + "\r\n", id=1)))
    responses.append(rtc.SignalResponse(trickle=rtc.TrickleRequest(
        candidateInit=candidate_init, target=target, final=final)))
    outcomes = run_dispatch(responses, pending_offer=True)
    if with_offer:
        assert_offer_answered_or_refused(outcomes[0])
    trickle = outcomes[-1]
    # Handed to the PC it names (which counts a candidate it cannot parse), refused with an
    # error, or — an empty candidate without `final` — nothing to do; one of them, not two.
    explained = [trickle.candidates == 1, trickle.raised is not None, bool(trickle.errors)]
    if sum(explained) == 0:
        init = json.loads(candidate_init) if candidate_init else {}
        assert not final and isinstance(init, dict) and not init.get("candidate"), trickle
    assert trickle.candidates <= 1 and not (trickle.candidates and (trickle.raised or trickle.errors)), trickle


@settings(max_examples=examples(1), deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1), st.integers(0, 2**32 - 1))
def test_unknown_enum_values_still_act(leave_reason: int, refusal_reason: int, request_id: int) -> None:
    """A leave or a refusal with an enum value newer than our protobufs still takes effect."""
    async def main() -> None:
        join = rtc.JoinResponse(participant=models.ParticipantInfo(sid="PA_me", identity="me"))
        client = LiveKitClient(FakeWebSocket(), join, "127.0.0.1",  # type: ignore[arg-type]
                               __import__("dtls_helpers").make_certificate())
        await client._dispatch(rtc.SignalResponse(request_response=rtc.RequestResponse(
            request_id=request_id, reason=refusal_reason, message="m")))
        assert bool(client.errors) == (refusal_reason != 0)
        await client._dispatch(rtc.SignalResponse(leave=rtc.LeaveRequest(reason=leave_reason)))
        assert client.left.is_set() and client.leave_reason

    trio.run(main)
