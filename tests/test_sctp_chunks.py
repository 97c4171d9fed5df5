"""SCTP codec: CRC32c vectors, round trips, cross-checks with aiortc's codec, totality on garbage."""

from __future__ import annotations

import google_crc32c
import pytest
from aiortc import rtcsctptransport as ai
from budgets import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from rtp.sctp import chunks as c
from rtp.sctp.crc32c import crc32c
from rtp.sctp.dcep import DataChannelAck, DataChannelOpen, parse_dcep
from rtp.sctp.errors import SctpParseError
from rtp.sctp.events import Reliability

# RFC 3720 appendix B.4 (CRC values as stored little-endian on the wire), and the
# well-known check value of CRC-32C over "123456789".
CRC_VECTORS = [
    (b"123456789", 0xE3069283),
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
]


@pytest.mark.parametrize("data,expected", CRC_VECTORS)
def test_crc32c_vectors(data, expected):
    assert crc32c(data) == expected


@settings(max_examples=examples(3))
@given(st.binary(max_size=2000), st.integers(0, 2000))
def test_crc32c_matches_google_crc32c_and_is_incremental(data, split):
    assert crc32c(data) == google_crc32c.value(data)
    assert crc32c(data[split:], crc32c(data[:split])) == crc32c(data)


u32 = st.integers(0, 0xFFFFFFFF)
u16 = st.integers(0, 0xFFFF)
u8 = st.integers(0, 0xFF)
params = st.lists(st.tuples(u16, st.binary(max_size=40)), max_size=4)

chunk_strategy = st.one_of(
    st.builds(c.DataChunk, u8, u32, u16, u16, u32, st.binary(min_size=1, max_size=300)),
    st.builds(c.InitChunk, u32, u32, u16, u16, u32, params, u8),
    st.builds(c.InitAckChunk, u32, u32, u16, u16, u32, params, u8),
    st.builds(
        c.SackChunk,
        u32,
        u32,
        st.lists(st.tuples(u16, u16), max_size=10),
        st.lists(u32, max_size=10),
        u8,
    ),
    st.builds(c.HeartbeatChunk, params, u8),
    st.builds(c.HeartbeatAckChunk, params, u8),
    st.builds(c.AbortChunk, u8, params),
    st.builds(c.ErrorChunk, u8, params),
    st.builds(c.ShutdownChunk, u32, u8),
    st.builds(c.ShutdownAckChunk, u8),
    st.builds(c.ShutdownCompleteChunk, u8),
    st.builds(c.CookieEchoChunk, st.binary(max_size=100), u8),
    st.builds(c.CookieAckChunk, u8),
    st.builds(c.ForwardTsnChunk, u32, st.lists(st.tuples(u16, u16), max_size=10), u8),
    st.builds(c.ReconfigChunk, st.lists(st.tuples(u16, st.binary(max_size=40)), min_size=1, max_size=2), u8),
    st.builds(
        c.UnknownChunk,
        st.integers(0, 255).filter(lambda t: t not in set(int(x) for x in c.ChunkType)),
        u8,
        st.binary(max_size=60),
    ),
)


@settings(max_examples=examples(4))
@given(u16, u16, u32, st.lists(chunk_strategy, min_size=1, max_size=6))
def test_packet_round_trip(src, dst, tag, chunk_list):
    packet = c.Packet(src, dst, tag, chunk_list)
    wire = c.serialize_packet(packet)
    assert len(wire) % 4 == 0
    assert c.parse_packet(wire) == packet
    # The checksum covers every byte: flipping any one is detected.
    flipped = bytearray(wire)
    flipped[len(wire) // 2] ^= 0x40
    with pytest.raises(SctpParseError):
        c.parse_packet(bytes(flipped))


@settings(max_examples=examples(5))
@given(st.binary(max_size=400))
def test_arbitrary_bytes_raise_only_parse_error(data):
    for verify in (True, False):
        try:
            c.parse_packet(data, verify_checksum=verify)
        except SctpParseError:
            pass


@settings(max_examples=examples(5))
@given(st.binary(min_size=4, max_size=400), st.binary(min_size=8, max_size=8))
def test_arbitrary_chunks_with_valid_checksum_raise_only_parse_error(body, ports_and_tag):
    # A correct CRC lets the fuzzer past the checksum into the chunk parsers.
    wire = c.serialize_packet_from_chunks(
        int.from_bytes(ports_and_tag[:2], "big"), int.from_bytes(ports_and_tag[2:4], "big"),
        int.from_bytes(ports_and_tag[4:], "big"), body,
    )
    try:
        packet = c.parse_packet(wire)
    except SctpParseError:
        return
    assert packet.chunks


@settings(max_examples=examples(3))
@given(st.binary(max_size=60))
def test_reconfig_params_and_dcep_raise_only_parse_error(data):
    for parse in (c.OutgoingResetRequest.parse, c.ReconfigResponse.parse, parse_dcep, c.parse_params):
        try:
            parse(data)
        except SctpParseError:
            pass


def test_chunk_length_beyond_packet_is_rejected():
    chunk = c.serialize_chunk(c.CookieAckChunk())
    too_long = chunk[:2] + (200).to_bytes(2, "big")
    with pytest.raises(SctpParseError):
        c.parse_packet(c.serialize_packet_from_chunks(5000, 5000, 1, too_long))


def test_sack_counts_must_match_length():
    # A SACK claiming 65535 gap blocks in a 12-byte body must not be believed.
    body = (1).to_bytes(4, "big") + (1000).to_bytes(4, "big") + b"\xff\xff\x00\x00"
    with pytest.raises(SctpParseError):
        c.SackChunk.parse_body(0, body)


# --- cross-checks with aiortc's independent codec -------------------------------------------


@settings(max_examples=examples(2))
@given(u32, u16, u16, u32, st.binary(min_size=1, max_size=1100), st.integers(0, 7))
def test_our_data_chunk_parses_in_aiortc(tsn, sid, ssn, ppid, data, flags):
    wire = c.serialize_packet(c.Packet(5000, 5000, 0xDEADBEEF, [c.DataChunk(flags, tsn, sid, ssn, ppid, data)]))
    src, dst, tag, (theirs,) = ai.parse_packet(wire)
    assert (src, dst, tag) == (5000, 5000, 0xDEADBEEF)
    assert (theirs.flags, theirs.tsn, theirs.stream_id, theirs.stream_seq, theirs.protocol, theirs.user_data) == (
        flags, tsn, sid, ssn, ppid, data,
    )


@settings(max_examples=examples(2))
@given(u32, u32, st.lists(st.tuples(u16, u16), max_size=8), st.lists(u32, max_size=8))
def test_aiortc_sack_parses_here(cum, rwnd, gaps, dups):
    sack = ai.SackChunk()
    sack.cumulative_tsn, sack.advertised_rwnd, sack.gaps, sack.duplicates = cum, rwnd, gaps, dups
    packet = c.parse_packet(ai.serialize_packet(5000, 5001, 42, sack))
    assert (packet.source_port, packet.destination_port, packet.verification_tag) == (5000, 5001, 42)
    assert packet.chunks == [c.SackChunk(cum, rwnd, [tuple(g) for g in gaps], dups)]


@settings(max_examples=examples(2))
@given(u32, st.lists(st.tuples(u16, u16), max_size=8))
def test_forward_tsn_agrees_with_aiortc(cum, streams):
    ours = c.ForwardTsnChunk(cum, streams)
    wire = c.serialize_packet(c.Packet(1, 2, 3, [ours]))
    _, _, _, (theirs,) = ai.parse_packet(wire)
    assert (theirs.cumulative_tsn, [tuple(s) for s in theirs.streams]) == (cum, streams)
    assert c.parse_packet(ai.serialize_packet(1, 2, 3, theirs)).chunks == [ours]


def test_aiortc_init_parses_here_with_its_extensions():
    init = ai.InitChunk()
    init.initiate_tag, init.advertised_rwnd, init.outbound_streams = 0x1234, 131072, 65535
    init.inbound_streams, init.initial_tsn = 65535, 0xFFFFFFF0
    init.params = [(0xC000, b""), (0x8008, bytes([192, 130]))]
    (ours,) = c.parse_packet(ai.serialize_packet(5000, 5000, 0, init)).chunks
    assert ours == c.InitChunk(0x1234, 131072, 65535, 65535, 0xFFFFFFF0, init.params)


def test_aiortc_reconfig_params_parse_here():
    request = ai.StreamResetOutgoingParam(request_sequence=7, response_sequence=6, last_tsn=99, streams=[1, 3])
    assert c.OutgoingResetRequest.parse(bytes(request)) == c.OutgoingResetRequest(7, 6, 99, [1, 3])
    response = ai.StreamResetResponseParam(response_sequence=7, result=1)
    assert c.ReconfigResponse.parse(bytes(response)) == c.ReconfigResponse(7, c.ReconfigResult.SUCCESS_PERFORMED)
    back = ai.StreamResetOutgoingParam.parse(c.OutgoingResetRequest(9, 8, 5, [2]).to_param()[1])
    assert (back.request_sequence, back.response_sequence, back.last_tsn, back.streams) == (9, 8, 5, [2])


# --- DCEP --------------------------------------------------------------------------------------

# RFC 8832 §5.1 layout, written out by hand: OPEN, reliable-unordered-rexmit (0x81), priority 256,
# 3 retransmits, label "chat", protocol "x".
DCEP_OPEN_VECTOR = bytes.fromhex("03 81 0100 00000003 0004 0001") + b"chat" + b"x"


def test_dcep_open_vector():
    msg = parse_dcep(DCEP_OPEN_VECTOR)
    assert msg == DataChannelOpen(0x81, 256, 3, "chat", "x")
    assert not msg.ordered and msg.reliability == Reliability(max_retransmits=3)
    assert msg.serialize() == DCEP_OPEN_VECTOR
    assert parse_dcep(b"\x02") == DataChannelAck()


@settings(max_examples=examples(3))
@given(
    st.text(max_size=30), st.text(max_size=30), st.booleans(),
    st.one_of(st.none(), st.integers(0, 0xFFFFFFFF)), st.one_of(st.none(), st.integers(0, 0xFFFFFFFF)), u16,
)
def test_dcep_open_round_trip(label, protocol, ordered, rexmit, lifetime, priority):
    if rexmit is not None:
        lifetime = None
    msg = DataChannelOpen.for_channel(label, protocol, ordered, rexmit, lifetime, priority)
    parsed = parse_dcep(msg.serialize())
    assert parsed == msg
    assert parsed.ordered == ordered
    assert parsed.reliability == Reliability(rexmit, lifetime)


@pytest.mark.parametrize("bad", [b"", b"\x02\x00", b"\x03", DCEP_OPEN_VECTOR[:-1], DCEP_OPEN_VECTOR + b"!",
                                 b"\x03\x05" + DCEP_OPEN_VECTOR[2:], b"\x09"])
def test_dcep_rejects_malformed(bad):
    with pytest.raises(SctpParseError):
        parse_dcep(bad)


@settings(max_examples=examples(1))
@given(st.lists(chunk_strategy, min_size=1, max_size=4))
def test_packets_are_identical_with_our_pure_crc(monkeypatch_free_chunks):
    # packet_crc32c may be the C accelerator; our own table-driven CRC must produce the same wire bytes.
    from rtp.sctp import crc32c as crc_module

    packet = c.Packet(5000, 5000, 7, monkeypatch_free_chunks)
    fast = c.serialize_packet(packet)
    saved = crc_module.packet_crc32c
    crc_module.packet_crc32c = crc_module.crc32c
    try:
        assert c.serialize_packet(packet) == fast
        assert c.parse_packet(fast) == packet
    finally:
        crc_module.packet_crc32c = saved
