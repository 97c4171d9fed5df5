"""Header extension value codecs, checked against aiortc's independent HeaderExtensionsMap."""

from __future__ import annotations

import aiortc.rtp as aiortc_rtp
import pytest
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from budgets import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from rtp.header_extensions import (
    ABS_SEND_TIME_URI,
    AUDIO_LEVEL_URI,
    MID_URI,
    REPAIRED_RTP_STREAM_ID_URI,
    RTP_STREAM_ID_URI,
    TRANSPORT_CC_URI,
    AudioLevel,
    ExtensionMap,
    HeaderExtensionParseError,
    audio_level_in,
    decode_abs_send_time,
    decode_audio_level,
    decode_dependency_descriptor,
    decode_mid,
    decode_rid,
    decode_transport_cc_seq,
    encode_abs_send_time,
    encode_audio_level,
    encode_dependency_descriptor,
    encode_mid,
    encode_rid,
    encode_transport_cc_seq,
)
from rtp.errors import ParseError
from rtp.packet import RtpPacket, find_extension, parse

URIS = [
    (1, MID_URI),
    (2, ABS_SEND_TIME_URI),
    (3, TRANSPORT_CC_URI),
    (4, AUDIO_LEVEL_URI),
    (10, RTP_STREAM_ID_URI),
    (11, REPAIRED_RTP_STREAM_ID_URI),
]


def _aiortc_map():
    m = aiortc_rtp.HeaderExtensionsMap()
    m.configure(
        RTCRtpParameters(headerExtensions=[RTCRtpHeaderExtensionParameters(id=i, uri=u) for i, u in URIS])
    )
    return m


def test_extension_map_lookups():
    emap = ExtensionMap.from_pairs(URIS)
    assert emap.id_of(TRANSPORT_CC_URI) == 3
    assert emap.uri_of(4) == AUDIO_LEVEL_URI
    assert emap.id_of("urn:unknown") is None and emap.uri_of(9) is None
    emap.add(3, "urn:replaced")
    assert emap.id_of(TRANSPORT_CC_URI) is None and emap.id_of("urn:replaced") == 3
    with pytest.raises(ValueError):
        emap.add(0, MID_URI)


@settings(max_examples=examples(2), deadline=None)
@given(
    mid=st.text("abcdef0123456789", min_size=1, max_size=16),
    rid=st.text("hqf0123", min_size=1, max_size=8),
    abs_send=st.integers(0, 0xFFFFFF),
    twcc=st.integers(0, 0xFFFF),
    voice=st.booleans(),
    level=st.integers(0, 127),
)
def test_aiortc_written_extensions_decode(mid, rid, abs_send, twcc, voice, level):
    values = aiortc_rtp.HeaderExtensions(
        mid=mid,
        rtp_stream_id=rid,
        repaired_rtp_stream_id=rid,
        abs_send_time=abs_send,
        transport_sequence_number=twcc,
        audio_level=(voice, level),
    )
    pkt = aiortc_rtp.RtpPacket(payload_type=111, sequence_number=1, timestamp=2, ssrc=3)
    pkt.extensions = values
    data = pkt.serialize(_aiortc_map())
    emap = ExtensionMap.from_pairs(URIS)
    assert decode_mid(find_extension(data, emap.id_of(MID_URI))) == mid
    assert decode_rid(find_extension(data, emap.id_of(RTP_STREAM_ID_URI))) == rid
    assert decode_rid(find_extension(data, emap.id_of(REPAIRED_RTP_STREAM_ID_URI))) == rid
    assert decode_transport_cc_seq(find_extension(data, emap.id_of(TRANSPORT_CC_URI))) == twcc
    assert decode_audio_level(find_extension(data, emap.id_of(AUDIO_LEVEL_URI))) == AudioLevel(voice, level)
    assert audio_level_in(data, emap.id_of(AUDIO_LEVEL_URI)) == level  # the receive path's read
    assert decode_abs_send_time(find_extension(data, emap.id_of(ABS_SEND_TIME_URI))) == abs_send / (1 << 18)

    # Our encoders, read back by aiortc.
    ours = RtpPacket(
        111,
        1,
        2,
        3,
        extensions={
            1: encode_mid(mid),
            2: encode_abs_send_time(abs_send / (1 << 18)),
            3: encode_transport_cc_seq(twcc),
            4: encode_audio_level(AudioLevel(voice, level)),
            10: encode_rid(rid),
        },
    )
    theirs = aiortc_rtp.RtpPacket.parse(ours.serialize(), _aiortc_map()).extensions
    assert (theirs.mid, theirs.rtp_stream_id, theirs.transport_sequence_number) == (mid, rid, twcc)
    assert theirs.abs_send_time == abs_send and theirs.audio_level == (voice, level)


def test_audio_level_in_absent_empty_and_malformed():
    # No extension block, and a block without the element: no level.
    assert audio_level_in(RtpPacket(111, 1, 2, 3).serialize(), 4) is None
    assert audio_level_in(RtpPacket(111, 1, 2, 3, extensions={1: b"0"}).serialize(), 4) is None
    assert audio_level_in(RtpPacket(111, 1, 2, 3, extensions={4: b"\x85"}).serialize(), 4) == 5
    # A two-byte-header element may be empty: that is no level, said clearly.
    two_byte = bytes((0x90, 111, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0x10, 0x00, 0, 1, 4, 0, 0, 0))
    with pytest.raises(HeaderExtensionParseError):
        audio_level_in(two_byte, 4)
    # A block that claims more than the packet holds.
    with pytest.raises(ParseError):
        audio_level_in(bytes((0x90, 111, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0xBE, 0xDE, 0, 9)), 4)


def test_abs_send_time_fixed_point_and_wrap():
    # 6.18 fixed point: 1.5 s is 0x060000; 64 s wraps to 0.
    assert encode_abs_send_time(1.5) == b"\x06\x00\x00"
    assert encode_abs_send_time(64.0) == b"\x00\x00\x00"
    assert encode_abs_send_time(65.25) == encode_abs_send_time(1.25)
    assert decode_abs_send_time(b"\xff\xff\xff") == pytest.approx(64 - 2**-18)


def test_audio_level_rfc6464_bit_layout():
    # V bit is the MSB, level the 7 low bits: "voice, -42 dBov" is 0x80 | 42.
    assert encode_audio_level(AudioLevel(True, 42)) == bytes((0x80 | 42,))
    assert decode_audio_level(b"\x7f") == AudioLevel(False, 127)
    with pytest.raises(ValueError):
        encode_audio_level(AudioLevel(False, 128))


def test_dependency_descriptor_passthrough():
    dd = bytes.fromhex("80000180003a410180ef808680")
    assert decode_dependency_descriptor(encode_dependency_descriptor(dd)) == dd
    with pytest.raises(HeaderExtensionParseError):
        decode_dependency_descriptor(b"\x80\x00")


@pytest.mark.parametrize(
    "decoder,value",
    [
        (decode_mid, b""),
        (decode_mid, b"\xff\xfe"),
        (decode_rid, b""),
        (decode_audio_level, b""),
        (decode_abs_send_time, b"\x00\x00"),
        (decode_transport_cc_seq, b"\x00"),
    ],
)
def test_malformed_values_raise_parse_error(decoder, value):
    with pytest.raises(HeaderExtensionParseError):
        decoder(value)


@settings(max_examples=examples(3), deadline=None)
@given(st.binary(max_size=8))
def test_decoders_total(value):
    for decoder in (
        decode_mid,
        decode_rid,
        decode_audio_level,
        decode_abs_send_time,
        decode_transport_cc_seq,
        decode_dependency_descriptor,
    ):
        try:
            decoder(value)
        except ParseError as exc:
            assert isinstance(exc, HeaderExtensionParseError)


@settings(max_examples=examples(2), deadline=None)
@given(st.integers(0, 0xFFFF), st.booleans(), st.integers(0, 127), st.integers(0, 0xFFFFFF))
def test_encoders_round_trip(seq, voice, level, units):
    assert decode_transport_cc_seq(encode_transport_cc_seq(seq)) == seq
    assert decode_audio_level(encode_audio_level(AudioLevel(voice, level))) == AudioLevel(voice, level)
    assert decode_abs_send_time(encode_abs_send_time(units / (1 << 18))) == units / (1 << 18)
    pkt = RtpPacket(extensions={5: encode_transport_cc_seq(seq)})
    assert parse(pkt.serialize()).extensions[5] == encode_transport_cc_seq(seq)
