"""RTP packet codec: real captures, aiortc cross-checks, RFC 8285 edge cases, fast path, fuzzing."""

from __future__ import annotations

import struct

import aiortc.rtp as aiortc_rtp
import pytest
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from budgets import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from rtp.packet import (
    GenericExtension,
    RtpPacket,
    RtpParseError,
    encode_extension_block,
    find_extension,
    find_extension_span,
    is_rtp_header_valid,
    parse,
    payload_offset,
    read_marker,
    read_payload_type,
    read_sequence_number,
    read_ssrc,
    read_timestamp,
    rewrite_header,
)

# Captures from aiortc's test suite (tests/*.bin): packets sent by real browsers.
DTMF = bytes.fromhex("80e55e58efb0f6bca6a144f2018a03c0")
WITH_CSRC = bytes.fromhex("82003ed2000000905fbd169eabcdef01deadbeef") + b"\xff" * 160
WITH_SDES_MID = bytes.fromhex(
    "90ef374c4f1ba1adf3753f70bede00019030000078800a6dc705f7a2a43c1800066eab3c78aeb1524d8b"
    "aaebaa791e80fbabad9ef92bcce3e2a1105f56337eac43fedb785bf417f29455"
)
# Chrome padding-only probe with abs-send-time (id 2) in a one-byte block; 223 zero
# padding octets then the count 0xe0.
PADDING_WITH_EXT = bytes.fromhex("b062567abd029f83597eaf6dbede000122f1cc8c") + bytes(223) + b"\xe0"
# Padding-only probe without extensions; the padding octets are random (not zero).
ONLY_PADDING_HEADER = bytes.fromhex("a0786c6ff10b431ba91fbcbe")


def _aiortc_map(pairs):
    m = aiortc_rtp.HeaderExtensionsMap()
    m.configure(
        RTCRtpParameters(
            headerExtensions=[RTCRtpHeaderExtensionParameters(id=i, uri=u) for i, u in pairs]
        )
    )
    return m


# --- captured packets ---------------------------------------------------------------------


def test_dtmf_capture():
    p = parse(DTMF)
    assert (p.version, p.marker, p.payload_type) == (2, True, 101)
    assert (p.sequence_number, p.timestamp, p.ssrc) == (24152, 4021352124, 0xA6A144F2)
    assert p.csrcs == [] and p.extensions == {} and p.payload == bytes.fromhex("018a03c0")
    assert p.serialize() == DTMF


def test_csrc_capture():
    p = parse(WITH_CSRC)
    assert p.csrcs == [2882400001, 3735928559]
    assert (p.sequence_number, p.timestamp, p.payload_type) == (16082, 144, 0)
    assert len(p.payload) == 160
    assert p.serialize() == WITH_CSRC


def test_sdes_mid_capture():
    p = parse(WITH_SDES_MID)
    assert (p.marker, p.payload_type, p.sequence_number, p.timestamp) == (True, 111, 14156, 1327210925)
    # 0x90 0x30: one-byte element id 9, length 1, value "0"; then three padding octets.
    assert p.extensions == {9: b"0"}
    assert len(p.payload) == 54
    assert p.serialize() == WITH_SDES_MID
    assert find_extension(WITH_SDES_MID, 9) == b"0"
    assert find_extension(WITH_SDES_MID, 1) is None


def test_padding_probe_with_abs_send_time_capture():
    p = parse(PADDING_WITH_EXT)
    assert (p.payload_type, p.sequence_number, p.timestamp) == (98, 22138, 3171065731)
    assert p.extensions == {2: (15846540).to_bytes(3, "big")}
    assert p.payload == b"" and p.padding_size == 224 and p.padding
    assert p.serialize() == PADDING_WITH_EXT


def test_padding_probe_random_padding_octets():
    data = ONLY_PADDING_HEADER + bytes(range(223)) + b"\xe0"
    p = parse(data)
    assert p.payload == b"" and p.padding_size == 224
    out = p.serialize()
    # We write zero padding octets, so only header, length and count must match.
    assert len(out) == len(data) and out[:12] == data[:12] and out[-1] == data[-1]


@pytest.mark.parametrize("count", [0, 2])
def test_padding_count_invalid(count):
    with pytest.raises(RtpParseError):
        parse(ONLY_PADDING_HEADER + bytes((count,)))


def test_bad_version():
    with pytest.raises(RtpParseError):
        parse(b"\xc0" + DTMF[1:])
    with pytest.raises(RtpParseError):
        read_ssrc(b"\x40" + DTMF[1:])
    assert not is_rtp_header_valid(b"\x40" + DTMF[1:])
    assert is_rtp_header_valid(DTMF)


@pytest.mark.parametrize("data", [DTMF, WITH_CSRC, WITH_SDES_MID, PADDING_WITH_EXT])
def test_truncated_headers_raise(data):
    header_end = payload_offset(data)
    for n in range(header_end):
        with pytest.raises(RtpParseError):
            parse(data[:n])


# --- cross-check with aiortc's independent codec ----------------------------------------------

_AIORTC_URIS = [
    (1, "urn:ietf:params:rtp-hdrext:sdes:mid"),
    (2, "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"),
    (3, "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"),
    (4, "urn:ietf:params:rtp-hdrext:ssrc-audio-level"),
    (5, "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"),
]

u8 = st.integers(0, 255)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)


@settings(max_examples=examples(2), deadline=None)
@given(
    pt=st.integers(0, 127),
    marker=st.booleans(),
    seq=u16,
    ts=u32,
    ssrc=u32,
    csrcs=st.lists(u32, max_size=15),
    payload=st.binary(max_size=64),
    padding=st.integers(0, 40),
    mid=st.none() | st.text("abc0123456789", min_size=1, max_size=8),
    abs_send=st.none() | st.integers(0, 0xFFFFFF),
    twcc=st.none() | u16,
)
def test_aiortc_parses_ours_and_we_parse_aiortc(
    pt, marker, seq, ts, ssrc, csrcs, payload, padding, mid, abs_send, twcc
):
    amap = _aiortc_map(_AIORTC_URIS)
    exts = {}
    if mid is not None:
        exts[1] = mid.encode()
    if abs_send is not None:
        exts[2] = abs_send.to_bytes(3, "big")
    if twcc is not None:
        exts[3] = twcc.to_bytes(2, "big")
    ours = RtpPacket(pt, seq, ts, ssrc, marker, csrcs, exts, payload, padding)
    theirs = aiortc_rtp.RtpPacket.parse(ours.serialize(), amap)
    assert (theirs.payload_type, theirs.marker, theirs.sequence_number) == (pt, int(marker), seq)
    assert (theirs.timestamp, theirs.ssrc, theirs.csrc) == (ts, ssrc, csrcs)
    assert theirs.payload == payload and theirs.padding_size == padding
    assert theirs.extensions.mid == mid
    assert theirs.extensions.abs_send_time == abs_send
    assert theirs.extensions.transport_sequence_number == twcc

    # And the other way round; aiortc writes random padding octets, which we ignore.
    theirs.padding_size = padding
    back = parse(theirs.serialize(amap))
    assert back == ours


# --- RFC 8285 extension forms ---------------------------------------------------------------


def test_one_byte_form_chosen_when_everything_fits():
    block = encode_extension_block({1: b"a", 14: bytes(16)})
    assert block[:2] == b"\xbe\xde"
    assert block[4] == 0x10 and block[6] == 0xEF


@pytest.mark.parametrize("exts", [{15: b"x"}, {1: b""}, {2: bytes(17)}, {200: b"abc", 1: b"q"}])
def test_two_byte_form_when_one_byte_cannot_express(exts):
    data = RtpPacket(ssrc=1, extensions=exts, payload=b"p").serialize()
    profile = struct.unpack_from("!H", data, 12)[0]
    assert profile == 0x1000
    assert parse(data).extensions == exts
    for ext_id, value in exts.items():
        assert find_extension(data, ext_id) == value


def test_two_byte_appbits_accepted():
    # RFC 8285 §4.3: the low 4 bits of 0x100X are application bits.
    data = bytes.fromhex("900000010000000200000003" "100f0001" "05015a00") + b"pay"
    assert parse(data).extensions == {5: b"Z"}
    assert find_extension(data, 5) == b"Z"


def test_one_byte_id_15_stops_processing():
    block = bytes.fromhex("bede0002" "10aa" "f0" "20bbcc" "0000")  # id1, then id15, then id2
    data = bytes.fromhex("900000010000000200000003") + block
    assert parse(data).extensions == {1: b"\xaa"}
    assert find_extension(data, 2) is None


def test_one_byte_id_0_with_length_is_malformed():
    data = bytes.fromhex("900000010000000200000003" "bede0001" "01aabb00")
    with pytest.raises(RtpParseError):
        parse(data)
    with pytest.raises(RtpParseError):
        find_extension(data, 3)


def test_element_running_past_block_is_malformed():
    data = bytes.fromhex("900000010000000200000003" "bede0001" "00003f00") + bytes(20)
    with pytest.raises(RtpParseError):
        parse(data)
    with pytest.raises(RtpParseError):
        find_extension(data, 3)


def test_padding_between_elements_and_first_duplicate_wins():
    data = bytes.fromhex("900000010000000200000003" "bede0002" "10aa0000" "10bb2000")
    assert parse(data).extensions == {1: b"\xaa", 2: b"\x00"}
    assert find_extension(data, 1) == b"\xaa"


def test_generic_rfc3550_extension_kept_raw():
    pkt = RtpPacket(96, 1, 2, 3, generic_extension=GenericExtension(0xABCD, b"12345678"), payload=b"x")
    data = pkt.serialize()
    assert data[12:16] == b"\xab\xcd\x00\x02"
    assert parse(data) == pkt
    assert find_extension(data, 1) is None


def test_serialize_rejects_unencodable():
    with pytest.raises(ValueError):
        RtpPacket(extensions={0: b"x"}).serialize()
    with pytest.raises(ValueError):
        RtpPacket(extensions={1: bytes(256)}).serialize()
    with pytest.raises(ValueError):
        RtpPacket(payload_type=128).serialize()


# --- fast path ------------------------------------------------------------------------------

ext_values = st.dictionaries(st.integers(1, 255), st.binary(max_size=20), max_size=6)


@st.composite
def rtp_packets(draw, extensions=ext_values):
    exts = draw(extensions)
    generic = None
    if not exts and draw(st.booleans()):
        profile = draw(u16.filter(lambda p: p != 0xBEDE and p & 0xFFF0 != 0x1000))
        generic = GenericExtension(profile, draw(st.binary(max_size=12).map(lambda b: b + bytes(-len(b) % 4))))
    return RtpPacket(
        payload_type=draw(st.integers(0, 127)),
        sequence_number=draw(u16),
        timestamp=draw(u32),
        ssrc=draw(u32),
        marker=draw(st.booleans()),
        csrcs=draw(st.lists(u32, max_size=15)),
        extensions=exts,
        payload=draw(st.binary(max_size=64)),
        padding_size=draw(st.integers(0, 255)),
        generic_extension=generic,
    )


@settings(max_examples=examples(3), deadline=None)
@given(rtp_packets())
def test_round_trip(pkt):
    data = pkt.serialize()
    assert parse(data) == pkt
    assert parse(bytearray(data)) == pkt
    assert parse(memoryview(data)) == pkt


@settings(max_examples=examples(3), deadline=None)
@given(rtp_packets(), st.integers(1, 255))
def test_fast_path_agrees_with_full_parse(pkt, probe_id):
    data = pkt.serialize()
    assert read_ssrc(data) == pkt.ssrc
    assert read_sequence_number(data) == pkt.sequence_number
    assert read_timestamp(data) == pkt.timestamp
    assert read_marker(data) == pkt.marker
    assert read_payload_type(data) == pkt.payload_type
    assert data[payload_offset(data) : payload_offset(data) + len(pkt.payload)] == pkt.payload
    for ext_id in list(pkt.extensions) + [probe_id]:
        assert find_extension(data, ext_id) == pkt.extensions.get(ext_id)


@settings(max_examples=examples(3), deadline=None)
@given(rtp_packets(), u32, st.integers(-5, 1 << 20), st.integers(0, 1 << 40), st.integers(0, 127))
def test_rewrite_header_in_place(pkt, ssrc, seq, ts, pt):
    buf = bytearray(pkt.serialize())
    rewrite_header(buf, ssrc, seq, ts, pt)
    out = parse(buf)
    assert (out.ssrc, out.sequence_number, out.timestamp, out.payload_type) == (
        ssrc,
        seq & 0xFFFF,
        ts & 0xFFFFFFFF,
        pt,
    )
    assert out.marker == pkt.marker
    assert (out.csrcs, out.extensions, out.payload, out.padding_size) == (
        pkt.csrcs,
        pkt.extensions,
        pkt.payload,
        pkt.padding_size,
    )


def test_extension_span_allows_in_place_patch():
    pkt = RtpPacket(96, 1, 2, 3, extensions={3: b"\x00\x07", 1: b"m"}, payload=b"x")
    buf = bytearray(pkt.serialize())
    start, length = find_extension_span(buf, 3)
    assert length == 2
    buf[start : start + 2] = (0xBEEF).to_bytes(2, "big")
    assert parse(buf).extensions == {3: b"\xbe\xef", 1: b"m"}


def test_rewrite_header_rejects_short_buffer():
    with pytest.raises(RtpParseError):
        rewrite_header(bytearray(11), 1, 2, 3, 4)


# --- totality -------------------------------------------------------------------------------


def _only_our_error(fn, data):
    try:
        fn(data)
    except RtpParseError:
        pass


@settings(max_examples=examples(5), deadline=None)
@given(st.binary(max_size=80))
def test_arbitrary_bytes_raise_only_rtp_parse_error(data):
    _only_our_error(parse, data)
    _only_our_error(payload_offset, data)
    for reader in (read_ssrc, read_sequence_number, read_timestamp, read_marker, read_payload_type):
        _only_our_error(reader, data)
    _only_our_error(lambda d: rewrite_header(bytearray(d), 1, 2, 3, 4), data)
    for ext_id in (1, 9, 15, 200):
        _only_our_error(lambda d: find_extension(d, ext_id), data)


@settings(max_examples=examples(5), deadline=None)
@given(rtp_packets(), st.data())
def test_mutated_packets_raise_only_rtp_parse_error(pkt, data):
    raw = bytearray(pkt.serialize())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(u8)
    cut = data.draw(st.integers(0, len(raw)))
    for candidate in (bytes(raw), bytes(raw[:cut])):
        _only_our_error(parse, candidate)
        _only_our_error(payload_offset, candidate)
        for ext_id in list(pkt.extensions)[:2] + [7]:
            _only_our_error(lambda d: find_extension(d, ext_id), candidate)
