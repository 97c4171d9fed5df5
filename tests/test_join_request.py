"""`/rtc/v1`'s `join_request` parameter (trio_sfu.api.join_request): what real clients send is
read in full, and everything else is a clear 400 reason within fixed bounds."""

from __future__ import annotations

import base64
import gzip
import zlib

import pytest
from livekit.protocol import models, rtc

from trio_sfu.api.join_request import (
    MAX_JOIN_ADD_TRACKS,
    MAX_JOIN_REQUEST_PARAM,
    MAX_JOIN_REQUEST_SIZE,
    JoinRequestError,
    decode_join_request,
    gunzip_capped,
    join_options_from_join_request,
)

OFFER_SDP = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"


def wrap(payload: bytes, compression: int = rtc.WrappedJoinRequest.Compression.NONE, *, padded: bool = True) -> str:
    text = base64.urlsafe_b64encode(rtc.WrappedJoinRequest(compression=compression, join_request=payload)
                                    .SerializeToString()).decode()
    return text if padded else text.rstrip("=")


def full_request() -> rtc.JoinRequest:
    return rtc.JoinRequest(
        client_info=models.ClientInfo(sdk=models.ClientInfo.SDK.JS, version="2.23.0", protocol=17,
                                      browser="Chrome", client_protocol=2),
        connection_settings=rtc.ConnectionSettings(auto_subscribe=True, adaptive_stream=True),
        participant_attributes={"team": "blue"},
        publisher_offer=rtc.SessionDescription(type="offer", sdp=OFFER_SDP, id=1),
        add_track_requests=[rtc.AddTrackRequest(cid="mic", type=models.TrackType.AUDIO)],
        reconnect=True, participant_sid="PA_abc", reconnect_reason=models.ReconnectReason.RR_SIGNAL_DISCONNECTED,
    )


@pytest.mark.parametrize("compression", [rtc.WrappedJoinRequest.Compression.NONE,
                                         rtc.WrappedJoinRequest.Compression.GZIP])
@pytest.mark.parametrize("padded", [True, False])
def test_a_good_join_request_is_read_in_full(compression: int, padded: bool) -> None:
    payload = full_request().SerializeToString()
    if compression == rtc.WrappedJoinRequest.Compression.GZIP:
        payload = gzip.compress(payload)
    request = decode_join_request(wrap(payload, compression, padded=padded))
    assert request == full_request()
    options = join_options_from_join_request(request)
    assert options.single_peer_connection
    assert options.auto_subscribe and options.adaptive_stream
    assert options.protocol == 17 and options.client_info.browser == "Chrome"
    assert options.client_info.client_protocol == 2
    assert options.publisher_offer is not None and options.publisher_offer.sdp == OFFER_SDP
    assert options.publisher_offer.id == 1
    assert [r.cid for r in options.add_track_requests] == ["mic"]
    # The resume fields feed the same path as v0's reconnect=1&sid=...
    assert (options.reconnect, options.participant_sid) == (True, "PA_abc")
    assert options.reconnect_reason == models.ReconnectReason.RR_SIGNAL_DISCONNECTED


def test_a_join_without_offer_or_settings_reads_as_livekit_does() -> None:
    bare = rtc.JoinRequest(client_info=models.ClientInfo(protocol=17)).SerializeToString()
    options = join_options_from_join_request(decode_join_request(wrap(bare)))
    # LiveKit reads auto_subscribe from the settings as they are: absent is false.
    assert options.single_peer_connection and not options.auto_subscribe
    assert options.publisher_offer is None and not options.reconnect


def test_client_info_strings_are_bounded_as_query_parameters_are() -> None:
    request = rtc.JoinRequest(client_info=models.ClientInfo(version="9" * 5000, os="x" * 100))
    options = join_options_from_join_request(decode_join_request(wrap(request.SerializeToString())))
    assert options.client_info.version == "9" * 64 and options.client_info.os == "x" * 64


def test_missing() -> None:
    with pytest.raises(JoinRequestError, match="join_request is required"):
        decode_join_request("")


def test_oversized_parameter() -> None:
    with pytest.raises(JoinRequestError, match="too large"):
        decode_join_request("A" * (MAX_JOIN_REQUEST_PARAM + 4))


def test_oversized_uncompressed_join_request(monkeypatch: pytest.MonkeyPatch) -> None:
    # Not reachable through a 16 KiB request head; the decompressed-size bound holds on its own.
    import trio_sfu.api.join_request as join_request
    monkeypatch.setattr(join_request, "MAX_JOIN_REQUEST_PARAM", 10 * MAX_JOIN_REQUEST_SIZE)
    big = rtc.JoinRequest(metadata="m" * MAX_JOIN_REQUEST_SIZE).SerializeToString()
    with pytest.raises(JoinRequestError, match="too large"):
        decode_join_request(wrap(big))


@pytest.mark.parametrize("value", ["%%%%", "ab$d", "AAAA AAAA", "é", "A"])
def test_bad_base64(value: str) -> None:
    with pytest.raises(JoinRequestError, match="cannot base64 decode"):
        decode_join_request(value)


def test_bad_wrapper_protobuf() -> None:
    with pytest.raises(JoinRequestError, match="cannot unmarshal wrapped join request"):
        decode_join_request(base64.urlsafe_b64encode(b"\xff\xff\xff").decode())


def test_bad_join_request_protobuf() -> None:
    with pytest.raises(JoinRequestError, match="cannot unmarshal join request"):
        decode_join_request(wrap(b"\x0a\xff\xff"))
    with pytest.raises(JoinRequestError, match="cannot unmarshal join request"):
        decode_join_request(wrap(gzip.compress(b"\x0a\xff\xff"), rtc.WrappedJoinRequest.Compression.GZIP))


def test_unknown_compression() -> None:
    with pytest.raises(JoinRequestError, match="compression"):
        decode_join_request(wrap(b"", 7))


def test_corrupt_or_truncated_gzip() -> None:
    good = gzip.compress(full_request().SerializeToString())
    for bad in (b"not gzip at all", good[:-6], good + b"trailing"):
        with pytest.raises(JoinRequestError, match="cannot read decompressed join request"):
            decode_join_request(wrap(bad, rtc.WrappedJoinRequest.Compression.GZIP))


def test_decompression_bomb_is_stopped_at_the_cap() -> None:
    # 64 MiB of zeros compress to ~64 KiB; the parameter bound alone would not stop a denser bomb,
    # so the inflater's output cap must: build one that fits in the parameter.
    zeros = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    bomb = zeros.compress(b"\0" * (8 * 1024 * 1024)) + zeros.flush()
    value = wrap(bomb, rtc.WrappedJoinRequest.Compression.GZIP)
    assert len(value) <= MAX_JOIN_REQUEST_PARAM, len(value)
    with pytest.raises(JoinRequestError, match="too large"):
        decode_join_request(value)


def test_gunzip_capped_never_inflates_past_the_cap() -> None:
    data = gzip.compress(b"x" * 1000)
    assert gunzip_capped(data, 1000) == b"x" * 1000
    with pytest.raises(JoinRequestError, match="too large"):
        gunzip_capped(data, 999)


def test_too_many_add_tracks() -> None:
    request = rtc.JoinRequest(add_track_requests=[rtc.AddTrackRequest(cid=str(i)) for i in range(MAX_JOIN_ADD_TRACKS + 1)])
    with pytest.raises(JoinRequestError, match="add_track"):
        decode_join_request(wrap(request.SerializeToString()))


def test_publisher_offer_must_be_an_offer() -> None:
    request = rtc.JoinRequest(publisher_offer=rtc.SessionDescription(type="answer", sdp=OFFER_SDP))
    with pytest.raises(JoinRequestError, match="must be an offer"):
        decode_join_request(wrap(request.SerializeToString()))
