"""The signal frame codec: total on arbitrary bytes, and a faithful round trip for requests."""

from __future__ import annotations

import pytest
from budgets import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from livekit.protocol import models, rtc

from trio_sfu.signal.codec import MAX_SIGNAL_MESSAGE, SignalDecodeError, decode_request, encode_response, request_kind

names = st.text(max_size=20)
add_tracks = st.builds(
    rtc.AddTrackRequest,
    cid=names, name=names,
    type=st.sampled_from([models.TrackType.AUDIO, models.TrackType.VIDEO]),
    width=st.integers(0, 2**32 - 1), height=st.integers(0, 2**32 - 1), muted=st.booleans(),
    source=st.sampled_from(list(models.TrackSource.values())),
)
requests = st.one_of(
    st.builds(lambda t: rtc.SignalRequest(ping=t), st.integers(-(2**63), 2**63 - 1)),
    st.builds(lambda t, r: rtc.SignalRequest(ping_req=rtc.Ping(timestamp=t, rtt=r)), st.integers(-(2**63), 2**63 - 1), st.integers(-(2**63), 2**63 - 1)),
    st.builds(lambda a: rtc.SignalRequest(add_track=a), add_tracks),
    st.builds(lambda s, m: rtc.SignalRequest(mute=rtc.MuteTrackRequest(sid=s, muted=m)), names, st.booleans()),
    st.builds(lambda sdp, i: rtc.SignalRequest(offer=rtc.SessionDescription(type="offer", sdp=sdp, id=i)), st.text(max_size=200), st.integers(0, 2**32 - 1)),
    st.builds(lambda c, t: rtc.SignalRequest(trickle=rtc.TrickleRequest(candidateInit=c, target=t)), st.text(max_size=100), st.sampled_from([0, 1])),
    st.builds(lambda r: rtc.SignalRequest(leave=rtc.LeaveRequest(reason=r)), st.sampled_from(list(models.DisconnectReason.values()))),
)


@settings(max_examples=examples(3), deadline=None)
@given(requests)
def test_round_trip(request: rtc.SignalRequest) -> None:
    decoded = decode_request(request.SerializeToString())
    assert decoded == request
    assert request_kind(decoded) == request.WhichOneof("message")


@settings(max_examples=examples(5), deadline=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_only_raise_codec_error(data: bytes) -> None:
    try:
        decode_request(data)
    except SignalDecodeError:
        pass


def test_too_large_is_refused_before_parsing() -> None:
    with pytest.raises(SignalDecodeError):
        decode_request(b"\x00" * (MAX_SIGNAL_MESSAGE + 1))


def test_response_encoding_is_plain_protobuf() -> None:
    response = rtc.SignalResponse(pong=12345)
    parsed = rtc.SignalResponse()
    parsed.ParseFromString(encode_response(response))
    assert parsed.pong == 12345

