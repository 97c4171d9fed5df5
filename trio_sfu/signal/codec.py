"""Framing of the LiveKit signal channel: one binary WebSocket message = one protobuf.

Client → server is `SignalRequest`, server → client is `SignalResponse` (livekit_rtc.proto).
Decoding is total: any input either yields a message or raises SignalDecodeError.
"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf.message import DecodeError
from livekit.protocol import rtc

# Matches the WebSocket layer's cap; checked here too so the codec is safe on its own.
MAX_SIGNAL_MESSAGE = 1024 * 1024


class SignalDecodeError(ValueError):
    """A signal frame is not a decodable SignalRequest."""


def decode_request(data: bytes) -> rtc.SignalRequest:
    """Parse one client frame. A message with only unknown fields decodes with no oneof set."""
    if len(data) > MAX_SIGNAL_MESSAGE:
        raise SignalDecodeError(f"signal message of {len(data)} bytes exceeds {MAX_SIGNAL_MESSAGE}")
    request = rtc.SignalRequest()
    try:
        request.ParseFromString(data)
    except (DecodeError, RecursionError, ValueError) as exc:
        raise SignalDecodeError(f"malformed SignalRequest: {exc.__class__.__name__}") from None
    return request


def decode_candidate_init(text: str) -> dict[str, Any]:
    """A trickled candidate: `TrickleRequest.candidateInit`, an RTCIceCandidateInit as JSON."""
    try:
        init = json.loads(text)
    except (ValueError, RecursionError) as exc:
        # RecursionError: nesting deeper than the interpreter's stack (the signal layer bounds
        # the size and nesting first; this keeps the codec total on its own).
        raise SignalDecodeError(f"candidateInit is not JSON: {exc.__class__.__name__}") from None
    if not isinstance(init, dict) or not isinstance(init.get("candidate", ""), str):
        raise SignalDecodeError("candidateInit is not an RTCIceCandidateInit")
    return init


def request_kind(request: rtc.SignalRequest) -> str | None:
    """The name of the oneof field that is set, or None for an empty/unknown message."""
    return request.WhichOneof("message")


def encode_response(response: rtc.SignalResponse) -> bytes:
    return response.SerializeToString()
