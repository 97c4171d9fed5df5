"""Codec, record layer and key-derivation units of rtp.dtls: vectors and hypothesis properties."""

from __future__ import annotations

import random

import pytest
from budgets import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from rtp.dtls import DtlsParseError
from rtp.dtls.cipher import AesGcmRecordCipher, BadRecordMac, ChaCha20RecordCipher
from rtp.dtls.cookie import check_client_hello
from rtp.dtls.fragments import FragmentVerdict, HandshakeReassembler, fragment_message
from rtp.dtls.handshake_messages import (
    Certificate,
    CertificateRequest,
    CertificateVerify,
    ClientHello,
    ClientKeyExchange,
    Finished,
    HelloVerifyRequest,
    ServerHello,
    ServerHelloDone,
    ServerKeyExchange,
    parse_ec_point_formats,
    parse_renegotiation_info,
    parse_supported_versions_client,
    parse_u16_list_extension,
    parse_use_srtp,
    split_handshake_fragments,
)
from rtp.dtls.prf import prf
from rtp.dtls.record import ReplayWindow, encode_record_header, parse_record, split_records

SETTINGS = settings(max_examples=examples(2), deadline=None)

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
blob = st.binary(max_size=300)
extensions = st.lists(st.tuples(u16, st.binary(max_size=40)), max_size=6, unique_by=lambda e: e[0]).map(tuple)

MESSAGES = {
    ClientHello: st.builds(
        ClientHello,
        u16,
        st.binary(min_size=32, max_size=32),
        st.binary(max_size=32),
        st.binary(max_size=255),
        st.lists(u16, min_size=1, max_size=20).map(tuple),
        st.binary(min_size=1, max_size=5),
        extensions,
    ),
    ServerHello: st.builds(
        ServerHello, u16, st.binary(min_size=32, max_size=32), st.binary(max_size=32), u16, u8, extensions
    ),
    HelloVerifyRequest: st.builds(HelloVerifyRequest, u16, st.binary(max_size=255)),
    Certificate: st.builds(Certificate, st.lists(st.binary(min_size=1, max_size=200), max_size=3).map(tuple)),
    ServerKeyExchange: st.builds(ServerKeyExchange, u16, st.binary(min_size=1, max_size=255), u16, blob),
    CertificateRequest: st.builds(
        CertificateRequest, st.binary(min_size=1, max_size=10), st.lists(u16, min_size=1, max_size=10).map(tuple), blob
    ),
    ServerHelloDone: st.just(ServerHelloDone()),
    ClientKeyExchange: st.builds(ClientKeyExchange, st.binary(min_size=1, max_size=255)),
    CertificateVerify: st.builds(CertificateVerify, u16, blob),
    Finished: st.builds(Finished, st.binary(min_size=12, max_size=12)),
}


def test_tls12_prf_sha256_vector():
    # The widely used TLS 1.2 PRF test vector (P_SHA256, "test label"), published on the IETF TLS list.
    out = prf("sha256", bytes.fromhex("9bbe436ba940f017b17652849a71db35"), b"test label",
              bytes.fromhex("a0ba9f936cda311827a6f796ffd5198c"), 100)
    assert out.hex() == (
        "e3f229ba727be17b8d122620557cd453c2aab21d07c3d495329b52d4e61edb5a6b301791e90d35c9c9a46b4e14baf9af"
        "0fa022f7077def17abfd3797c0564bab4fbc91666e9def9b97fce34f796789baa48082d122ee42c5a72e5a5110fff701"
        "87347b66"
    )


@pytest.mark.parametrize("cls", list(MESSAGES), ids=lambda c: c.__name__)
@SETTINGS
@given(data=st.data())
def test_message_round_trip(cls, data):
    message = data.draw(MESSAGES[cls])
    assert cls.parse(message.serialize()) == message


ALL_PARSERS = [c.parse for c in MESSAGES] + [
    ClientHello.parse_prefix,
    split_handshake_fragments,
    parse_record,
    parse_u16_list_extension,
    parse_ec_point_formats,
    parse_use_srtp,
    parse_renegotiation_info,
    parse_supported_versions_client,
]


@pytest.mark.parametrize("parser", ALL_PARSERS, ids=lambda p: p.__qualname__)
@SETTINGS
@given(data=st.binary(max_size=400))
def test_parsers_raise_only_their_parse_error(parser, data):
    try:
        parser(data)
    except DtlsParseError:
        pass


@SETTINGS
@given(records=st.lists(st.tuples(st.integers(20, 23), u16, st.integers(0, 3), st.integers(0, 2**48 - 1), blob), max_size=5))
def test_record_framing_round_trip(records):
    datagram = b"".join(encode_record_header(t, v, e, s, len(p)) + p for t, v, e, s, p in records)
    parsed, truncated = split_records(datagram)
    assert not truncated
    assert parsed == [tuple(r) for r in records]


@SETTINGS
@given(data=st.binary(max_size=600))
def test_split_records_and_cookie_check_never_raise(data):
    split_records(data)
    check_client_hello(b"k" * 32, data)


@SETTINGS
@given(sequences=st.lists(st.integers(0, 300), max_size=200))
def test_replay_window_matches_a_model(sequences):
    window, seen, highest = ReplayWindow(), set(), -1
    for seq in sequences:
        fresh = window.is_fresh(seq)
        expected = seq not in seen and seq > highest - 64
        assert fresh == expected
        if fresh:
            window.mark(seq)
            seen.add(seq)
            highest = max(highest, seq)


@SETTINGS
@given(
    body=st.binary(max_size=3000),
    size=st.integers(1, 700),
    seed=st.integers(0, 2**32),
    duplicate=st.booleans(),
)
def test_reassembly_of_reordered_duplicated_fragments(body, size, seed, duplicate):
    fragments = [split_handshake_fragments(f)[0] for f in fragment_message(1, 3, body, size)]
    assert all(len(f[4]) <= size for f in fragments)
    if duplicate:
        fragments += fragments[: len(fragments) // 2 + 1]
    random.Random(seed).shuffle(fragments)
    reassembler = HandshakeReassembler(next_seq=3)
    for msg_type, length, seq, offset, data in fragments:
        assert reassembler.add(msg_type, length, seq, offset, data, 0) == FragmentVerdict.BUFFERED
    assert reassembler.pop() == (1, 3, 0, body)
    assert reassembler.pop() is None and reassembler.buffered_bytes == 0
    assert reassembler.add(1, len(body), 3, 0, body, 0) == FragmentVerdict.OLD


def test_reassembler_limits():
    r = HandshakeReassembler()
    assert r.add(1, 100, 8, 0, b"x", 0) == FragmentVerdict.DROPPED  # too far ahead
    assert r.add(1, 1 << 20, 0, 0, b"x", 0) == FragmentVerdict.DROPPED  # over the message cap
    assert r.add(1, 100, 0, 0, b"x" * 10, 0) == FragmentVerdict.BUFFERED
    assert r.add(2, 100, 0, 10, b"x" * 10, 0) == FragmentVerdict.DROPPED  # inconsistent type
    for i in range(200):
        r.add(1, 1000, 1, i * 2, b"y", 0)
    assert r.buffered_messages == 2 and r.buffered_bytes <= 10 + 64


@pytest.mark.parametrize(
    "cipher",
    [AesGcmRecordCipher(bytes(16), bytes(4)), AesGcmRecordCipher(bytes(32), bytes(4)), ChaCha20RecordCipher(bytes(32), bytes(12))],
    ids=["aes128gcm", "aes256gcm", "chacha20"],
)
def test_record_cipher_binds_header_fields(cipher):
    sealed = cipher.seal(23, 0xFEFD, 1, 7, b"payload")
    assert len(sealed) == len(b"payload") + cipher.overhead
    assert cipher.open(23, 0xFEFD, 1, 7, sealed) == b"payload"
    for args in [(22, 0xFEFD, 1, 7), (23, 0xFEFF, 1, 7), (23, 0xFEFD, 2, 7), (23, 0xFEFD, 1, 8)]:
        with pytest.raises(BadRecordMac):
            cipher.open(*args, sealed)
    with pytest.raises(BadRecordMac):
        cipher.open(23, 0xFEFD, 1, 7, sealed[:5])
