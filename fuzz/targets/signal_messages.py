"""The LiveKit signal channel: a client's SignalRequest frame, and the trickled candidate JSON in it."""

from __future__ import annotations

import json
import os

from livekit.protocol import rtc

from fuzz.target import FuzzTarget
from fuzz.targets.proto_fill import each_oneof_member
from trio_sfu.signal.codec import SignalDecodeError, decode_candidate_init, decode_request, request_kind

_SDP = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                    "tests", "fixtures", "sdp", "chromium_publisher_offer_simulcast.sdp")


def run_request(data: bytes) -> None:
    request = decode_request(data)
    kind = request_kind(request)
    if kind == "trickle":
        try:
            decode_candidate_init(request.trickle.candidateInit)
        except SignalDecodeError:
            pass
    decode_request(request.SerializeToString())


def run_trickle(data: bytes) -> None:
    # The JSON arrives in a protobuf string field: always text, never bytes that are not UTF-8.
    decode_candidate_init(data.decode("utf-8", "replace"))


_CANDIDATES = [
    {"candidate": "candidate:1 1 udp 2130706431 192.0.2.1 50000 typ host", "sdpMid": "0", "sdpMLineIndex": 0,
     "usernameFragment": "abcd"},
    {"candidate": "candidate:2 1 tcp 1518280447 192.0.2.1 9 typ host tcptype active", "sdpMid": "1"},
    {"candidate": "", "sdpMid": "0"},
    {"candidate": "candidate:3 1 udp 1686052607 203.0.113.9 3478 typ srflx raddr 192.0.2.1 rport 50000",
     "sdpMLineIndex": None},
]


def trickle_seeds() -> list[bytes]:
    return [json.dumps(c).encode() for c in _CANDIDATES] + [b"{}", b"[1, 2.5e10, null, true, \"\\u00e9\"]"]


def request_seeds() -> list[bytes]:
    with open(_SDP) as f:
        sdp = f.read()
    samples = each_oneof_member(rtc.SignalRequest, "message")
    samples += [
        rtc.SignalRequest(offer=rtc.SessionDescription(type="offer", sdp=sdp, id=3)),
        rtc.SignalRequest(trickle=rtc.TrickleRequest(candidateInit=json.dumps(_CANDIDATES[0]), target=1)),
        rtc.SignalRequest(ping=1234),
    ]
    return [s.SerializeToString() for s in samples]


REQUEST_TARGET = FuzzTarget(
    "signal-request", "trio_sfu.signal.codec.decode_request (SignalRequest protobuf), the trickle in it",
    run_request, (SignalDecodeError,), request_seeds, max_len=16384,
)
TRICKLE_TARGET = FuzzTarget(
    "trickle-json", "trio_sfu.signal.codec.decode_candidate_init (TrickleRequest.candidateInit JSON)",
    run_trickle, (SignalDecodeError,), trickle_seeds, max_len=4096,
    dictionary=tuple(t.encode() for t in ('"candidate"', '"sdpMid"', '"sdpMLineIndex"', '"usernameFragment"',
                                          "{", "}", "[", "]", ":", ",", "null", "true", "1e400", '"\\u0000"')),
)
