"""The client's input paths are total: whatever a server sends, only the errors its reader turns
into ``client.errors`` come out (``RtpStackError`` for SDP, ``ValueError``/``KeyError`` for JSON
and fields) — never AttributeError, IndexError or TypeError that would tear the client down.

Inputs are real captured SDP (tests/fixtures/sdp/) with lines dropped, duplicated or mangled,
random trickle JSON, and offers/answers at the wrong moment.
"""

from __future__ import annotations

import json
import pathlib

import trio
from budgets import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from livekit.protocol import models, rtc

from rtp.errors import RtpStackError
from trio_sfu.client.client import LiveKitClient

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


def run_dispatch(responses: list[rtc.SignalResponse], pending_offer: bool) -> None:
    async def main() -> None:
        join = rtc.JoinResponse(participant=models.ParticipantInfo(sid="PA_me", identity="me"))
        client = LiveKitClient(FakeWebSocket(), join, "127.0.0.1",  # type: ignore[arg-type]
                               __import__("dtls_helpers").make_certificate())
        async with trio.open_nursery() as nursery:
            client._nursery = nursery
            if pending_offer:
                from trio_sfu.client.sdp_builder import OfferedTrack, build_publisher_offer

                pc = client._ensure_publisher_pc()
                offer = build_publisher_offer(
                    pc.local, [OfferedTrack("0", "audio", "s", "c", "n", (1,))], 1)
                client._pending_answer = (1, offer, trio.Event())
            for response in responses:
                try:
                    await client._dispatch(response)
                except (RtpStackError, ValueError, KeyError):
                    pass  # what the reader records in client.errors
            nursery.cancel_scope.cancel()
        for pc in (client.publisher_pc, client.subscriber_pc):
            if pc is not None:
                pc.sock.close()

    trio.run(main)


@settings(max_examples=examples(1.5), deadline=None)
@given(st.data())
def test_mangled_subscriber_offers(data) -> None:
    offers = [rtc.SignalResponse(offer=rtc.SessionDescription(type="offer", sdp=mutated(OFFER_LINES, data), id=i))
              for i in range(data.draw(st.integers(1, 3)))]
    run_dispatch(offers, pending_offer=False)


@settings(max_examples=examples(1.5), deadline=None)
@given(st.data())
def test_mangled_publisher_answers(data) -> None:
    answer = rtc.SignalResponse(answer=rtc.SessionDescription(
        type="answer", sdp=mutated(ANSWER_LINES, data), id=data.draw(st.sampled_from([0, 1, 2]))))
    run_dispatch([answer], pending_offer=data.draw(st.booleans()))


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
    run_dispatch(responses, pending_offer=True)


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
