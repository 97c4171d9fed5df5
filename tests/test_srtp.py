"""SRTP contexts checked against RFC 3711 / RFC 7714 vectors via an independent reference.

libsrtp only takes *master* keys, while RFC 7714's packet vectors are stated
with *session* keys. So the chain of evidence is:

1. A small reference transform written here on ``cryptography`` (AES-CTR,
   AES-GCM, HMAC-SHA1) reproduces RFC 3711 B.2 (AES-CM keystream), B.3 (key
   derivation) and RFC 7714 §16.1 / §17.1 (GCM SRTP / SRTCP packets) exactly.
2. Our :class:`SrtpContext` (libsrtp) must then produce, from a master key,
   the same bytes the reference produces from the session keys it derives —
   for RTP and RTCP, in both profiles — and accept the reference's packets.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from budgets import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from rtp.errors import ParseError, RtpStackError
from rtp.srtp import (
    SrtpAuthenticationError,
    SrtpContext,
    SrtpError,
    SrtpPacketError,
    SrtpReplayError,
    split_keying_material,
)
from rtp.srtp_profiles import SrtpProfile

CM = SrtpProfile.AES128_CM_HMAC_SHA1_80
GCM = SrtpProfile.AEAD_AES_128_GCM

# --------------------------------------------------------------------------- reference


def aes_ctr(key: bytes, iv: bytes, data: bytes) -> bytes:
    enc = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
    return enc.update(data) + enc.finalize()


def derive(master_key: bytes, master_salt: bytes, label: int, length: int) -> bytes:
    """RFC 3711 §4.3.1 AES-CM PRF with key_derivation_rate 0 (so r = 0)."""
    salt = master_salt.ljust(14, b"\x00")  # RFC 7714 §11: 96-bit salts are used left-aligned
    x = int.from_bytes(salt, "big") ^ (label << 48)
    return aes_ctr(master_key, x.to_bytes(14, "big") + b"\x00\x00", bytes(length))


def session_keys(profile: SrtpProfile, master: bytes, rtcp: bool) -> tuple[bytes, bytes, bytes]:
    key, salt = master[:16], master[16:]
    base = 3 if rtcp else 0
    enc = derive(key, salt, base, 16)
    auth = derive(key, salt, base + 1, 20) if profile is CM else b""
    ssalt = derive(key, salt, base + 2, profile.salt_length)
    return enc, auth, ssalt


def rtp_header_length(packet: bytes) -> int:
    cc = packet[0] & 0x0F
    n = 12 + 4 * cc
    if packet[0] & 0x10:
        n += 4 + 4 * struct.unpack_from("!H", packet, n + 2)[0]
    return n


def ref_protect_rtp(profile, enc, auth, salt, packet, roc=0):
    hlen = rtp_header_length(packet)
    seq, ssrc = struct.unpack_from("!H", packet, 2)[0], struct.unpack_from("!I", packet, 8)[0]
    header, payload = packet[:hlen], packet[hlen:]
    if profile is CM:
        index = (roc << 16) | seq
        iv = (int.from_bytes(salt, "big") << 16) ^ (ssrc << 64) ^ (index << 16)
        body = header + aes_ctr(enc, iv.to_bytes(16, "big"), payload)
        tag = hmac.new(auth, body + roc.to_bytes(4, "big"), hashlib.sha1).digest()[:10]
        return body + tag
    iv = bytes(2) + struct.pack("!IIH", ssrc, roc, seq)
    iv = bytes(a ^ b for a, b in zip(iv, salt))
    return header + AESGCM(enc).encrypt(iv, payload, header)


def ref_protect_rtcp(profile, enc, auth, salt, packet, index):
    ssrc = struct.unpack_from("!I", packet, 4)[0]
    header, payload = packet[:8], packet[8:]
    e_index = (0x80000000 | index).to_bytes(4, "big")
    if profile is CM:
        iv = (int.from_bytes(salt, "big") << 16) ^ (ssrc << 64) ^ (index << 16)
        body = header + aes_ctr(enc, iv.to_bytes(16, "big"), payload) + e_index
        return body + hmac.new(auth, body, hashlib.sha1).digest()[:10]
    iv = bytes(2) + struct.pack("!IHI", ssrc, 0, index)
    iv = bytes(a ^ b for a, b in zip(iv, salt))
    return header + AESGCM(enc).encrypt(iv, payload, header + e_index) + e_index


# --------------------------------------------------------------------------- reference vs RFCs


def test_reference_kdf_matches_rfc3711_b3():
    key = bytes.fromhex("E1F97A0D3E018BE0D64FA32C06DE4139")
    salt = bytes.fromhex("0EC675AD498AFEEBB6960B3AABE6")
    assert derive(key, salt, 0, 16) == bytes.fromhex("C61E7A93744F39EE10734AFE3FF7A087")
    assert derive(key, salt, 2, 14) == bytes.fromhex("30CBBC08863D8C85D49DB34A9AE1")
    assert derive(key, salt, 1, 20) == bytes.fromhex("CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4")


def test_reference_keystream_matches_rfc3711_b2():
    key = bytes.fromhex("2B7E151628AED2A6ABF7158809CF4F3C")
    salt = bytes.fromhex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD")
    ks = aes_ctr(key, salt + b"\x00\x00", bytes(48))
    assert ks == bytes.fromhex(
        "E03EAD0935C95E80E166B16DD92B4EB4D23513162B02D0F72A43A2FE4A5F97AB41E95B3BB0A2E8DD477901E4FCA894C0"
    )


GCM_KEY = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
GCM_SALT = bytes.fromhex("517569642070726f2071756f")
RFC7714_RTP = bytes.fromhex(
    "8040f17b8041f8d35501a0b247616c6c696120657374206f6d6e69732064697669736120696e207061727465732074726573"
)
RFC7714_SRTP = bytes.fromhex(
    "8040f17b8041f8d35501a0b2f24de3a3fb34de6cacba861c9d7e4bcabe633bd50d294e6f"
    "42a5f47a51c7d19b36de3adf8833899d7f27beb16a9152cf765ee4390cce"
)
RFC7714_RTCP = bytes.fromhex(
    "81c8000d4d6172734e5450314e545032525450200000042a0000e9304c756e61"
    "deadbeefdeadbeefdeadbeefdeadbeefdeadbeef"
)
RFC7714_SRTCP = bytes.fromhex(
    "81c8000d4d61727363e94885dcdab67ca727d7662f6b7e997ff5c0f76c06f32dc676a5f1730d6fda4ce09b46"
    "86303ded0bb9275bc84aa45896cf4d2fc5abf87245d9eade800005d4"
)


def test_reference_gcm_matches_rfc7714_16_1():
    assert ref_protect_rtp(GCM, GCM_KEY, b"", GCM_SALT, RFC7714_RTP) == RFC7714_SRTP


def test_reference_gcm_srtcp_matches_rfc7714_17_1():
    assert ref_protect_rtcp(GCM, GCM_KEY, b"", GCM_SALT, RFC7714_RTCP, 0x5D4) == RFC7714_SRTCP


# --------------------------------------------------------------------------- libsrtp vs reference

# RFC 3711 B.3 master key, with the 12-byte salt prefix for GCM.
MASTER_KEY = bytes.fromhex("E1F97A0D3E018BE0D64FA32C06DE4139")
MASTER_SALT = bytes.fromhex("0EC675AD498AFEEBB6960B3AABE6")


def master_for(profile: SrtpProfile) -> bytes:
    return MASTER_KEY + MASTER_SALT[: profile.salt_length]


def rtp_packet(seq: int, ssrc: int = 0xCAFEBABE, payload: bytes = b"\xab" * 160, csrcs: int = 0) -> bytes:
    header = struct.pack("!BBHII", 0x80 | csrcs, 96, seq, seq * 3000, ssrc)
    return header + b"".join(struct.pack("!I", 0x1000 + i) for i in range(csrcs)) + payload


def rtcp_packet(ssrc: int = 0x11223344) -> bytes:
    # Receiver report with one report block (RFC 3550 §6.4.2).
    return struct.pack("!BBHI", 0x81, 201, 7, ssrc) + struct.pack("!IIIIII", 0x55667788, 1, 2, 3, 4, 5)


def pair(profile: SrtpProfile) -> tuple[SrtpContext, SrtpContext]:
    material = os.urandom(profile.keying_material_length)
    return (
        SrtpContext.from_keying_material(profile, material, is_client=True),
        SrtpContext.from_keying_material(profile, material, is_client=False),
    )


@pytest.mark.parametrize("profile", [CM, GCM], ids=lambda p: p.name)
@pytest.mark.parametrize("csrcs", [0, 2])
def test_libsrtp_rtp_matches_reference(profile, csrcs):
    master = master_for(profile)
    ctx = SrtpContext(profile, master, master)
    enc, auth, salt = session_keys(profile, master, rtcp=False)
    for seq in (0x1234, 0x1235, 0xFFFF):
        plain = rtp_packet(seq, csrcs=csrcs)
        expected = ref_protect_rtp(profile, enc, auth, salt, plain)
        assert ctx.protect_rtp(plain) == expected
        assert ctx.unprotect_rtp(expected) == plain


@pytest.mark.parametrize("profile", [CM, GCM], ids=lambda p: p.name)
def test_libsrtp_rtp_rollover_matches_reference(profile):
    master = master_for(profile)
    sender, receiver = SrtpContext(profile, master, master), SrtpContext(profile, master, master)
    enc, auth, salt = session_keys(profile, master, rtcp=False)
    for seq in (65534, 65535):
        receiver.unprotect_rtp(sender.protect_rtp(rtp_packet(seq)))
    wrapped = rtp_packet(0)
    protected = sender.protect_rtp(wrapped)
    assert protected == ref_protect_rtp(profile, enc, auth, salt, wrapped, roc=1)
    assert receiver.unprotect_rtp(protected) == wrapped


@pytest.mark.parametrize("profile", [CM, GCM], ids=lambda p: p.name)
def test_libsrtp_rtcp_matches_reference(profile):
    master = master_for(profile)
    ctx = SrtpContext(profile, master, master)
    enc, auth, salt = session_keys(profile, master, rtcp=True)
    for _ in range(3):
        plain = rtcp_packet()
        protected = ctx.protect_rtcp(plain)
        e_index_at = len(protected) - (4 if profile is GCM else 14)
        index = struct.unpack_from("!I", protected, e_index_at)[0] & 0x7FFFFFFF
        assert protected == ref_protect_rtcp(profile, enc, auth, salt, plain, index)
        assert ctx.unprotect_rtcp(protected) == plain
    assert index == 3  # libsrtp numbers SRTCP packets from 1


@pytest.mark.parametrize("profile", [CM, GCM], ids=lambda p: p.name)
def test_libsrtp_accepts_reference_packets_at_arbitrary_index(profile):
    master = master_for(profile)
    ctx = SrtpContext(profile, master, master)
    enc, auth, salt = session_keys(profile, master, rtcp=True)
    plain = rtcp_packet(0x4D617273)
    assert ctx.unprotect_rtcp(ref_protect_rtcp(profile, enc, auth, salt, plain, 0x5D4)) == plain


@pytest.mark.parametrize("profile", [CM, GCM], ids=lambda p: p.name)
@settings(max_examples=examples(2), deadline=None)
@given(
    master=st.binary(min_size=30, max_size=30),
    seq=st.integers(0, 0xFFFF),
    ssrc=st.integers(0, 2**32 - 1),
    csrcs=st.integers(0, 3),
    payload=st.binary(max_size=300),
)
def test_round_trip_and_reference_agree_for_any_packet(profile, master, seq, ssrc, csrcs, payload):
    master = master[: 16 + profile.salt_length]
    sender, receiver = SrtpContext(profile, master, master), SrtpContext(profile, master, master)
    plain = rtp_packet(seq, ssrc=ssrc, payload=payload, csrcs=csrcs)
    protected = sender.protect_rtp(plain)
    assert protected == ref_protect_rtp(profile, *session_keys(profile, master, rtcp=False), plain)
    assert receiver.unprotect_rtp(protected) == plain
    rtcp = rtcp_packet(ssrc) + payload[: len(payload) // 4 * 4]
    assert receiver.unprotect_rtcp(sender.protect_rtcp(rtcp)) == rtcp


# --------------------------------------------------------------------------- keying and behaviour


@pytest.mark.parametrize("profile", [CM, GCM], ids=lambda p: p.name)
def test_keying_material_layout_rfc5764(profile):
    kl, sl = profile.key_length, profile.salt_length
    material = bytes(range(profile.keying_material_length))
    client, server = split_keying_material(profile, material, is_client=True)
    assert client == material[:kl] + material[2 * kl : 2 * kl + sl]
    assert server == material[kl : 2 * kl] + material[2 * kl + sl :]
    assert split_keying_material(profile, material, is_client=False) == (server, client)
    with pytest.raises(ValueError):
        split_keying_material(profile, material[:-1], is_client=True)


@pytest.mark.parametrize("profile", [CM, GCM], ids=lambda p: p.name)
def test_client_and_server_interoperate_both_directions_any_ssrc(profile):
    client, server = pair(profile)
    for ssrc in (1, 0xDEADBEEF, 42):
        pkt = rtp_packet(7, ssrc=ssrc)
        assert server.unprotect_rtp(client.protect_rtp(pkt)) == pkt
        assert client.unprotect_rtp(server.protect_rtp(pkt)) == pkt
        rtcp = rtcp_packet(ssrc)
        assert server.unprotect_rtcp(client.protect_rtcp(rtcp)) == rtcp
        assert client.unprotect_rtcp(server.protect_rtcp(rtcp)) == rtcp
    # Same-side contexts hold the other key: a client cannot read its own packets.
    other_client, _ = pair(profile)
    with pytest.raises(SrtpAuthenticationError):
        other_client.unprotect_rtp(client.protect_rtp(rtp_packet(8)))


@pytest.mark.parametrize("profile", [CM, GCM], ids=lambda p: p.name)
def test_replay_is_rejected_and_retransmission_can_be_protected_again(profile):
    client, server = pair(profile)
    first = client.protect_rtp(rtp_packet(100))
    assert server.unprotect_rtp(first) == rtp_packet(100)
    with pytest.raises(SrtpReplayError):
        server.unprotect_rtp(first)
    # A NACK answer re-protects seq 101 after 102 went out; allow_repeat_tx lets the
    # sender do it, and the receiver, which lost the first 101, accepts it.
    client.protect_rtp(rtp_packet(101))
    server.unprotect_rtp(client.protect_rtp(rtp_packet(102)))
    again = client.protect_rtp(rtp_packet(101))
    assert server.unprotect_rtp(again) == rtp_packet(101)
    # RTCP replay too.
    rtcp = client.protect_rtcp(rtcp_packet())
    server.unprotect_rtcp(rtcp)
    with pytest.raises(SrtpReplayError):
        server.unprotect_rtcp(rtcp)


@pytest.mark.parametrize("profile", [CM, GCM], ids=lambda p: p.name)
def test_packet_older_than_window_is_a_replay(profile):
    client, server = pair(profile)
    old = client.protect_rtp(rtp_packet(10))
    server.unprotect_rtp(client.protect_rtp(rtp_packet(10 + 2000)))
    with pytest.raises(SrtpReplayError):
        server.unprotect_rtp(old)


@pytest.mark.parametrize("profile", [CM, GCM], ids=lambda p: p.name)
def test_every_flipped_byte_is_an_authentication_failure(profile):
    client, server = pair(profile)
    protected = client.protect_rtp(rtp_packet(5, payload=b"x" * 20))
    for i in range(len(protected)):
        damaged = protected[:i] + bytes([protected[i] ^ 0x80]) + protected[i + 1 :]
        with pytest.raises(SrtpError):  # auth failure; a flipped version field may fail earlier
            server.unprotect_rtp(damaged)
    rtcp = client.protect_rtcp(rtcp_packet())
    for i in range(len(rtcp)):
        damaged = rtcp[:i] + bytes([rtcp[i] ^ 0x01]) + rtcp[i + 1 :]
        with pytest.raises(SrtpError):
            server.unprotect_rtcp(damaged)
    assert server.unprotect_rtp(protected) == rtp_packet(5, payload=b"x" * 20)


def test_payload_tamper_is_specifically_authentication_error():
    client, server = pair(CM)
    protected = client.protect_rtp(rtp_packet(5))
    damaged = protected[:20] + bytes([protected[20] ^ 1]) + protected[21:]
    with pytest.raises(SrtpAuthenticationError):
        server.unprotect_rtp(damaged)


def test_errors_belong_to_the_stack_family():
    assert issubclass(SrtpAuthenticationError, RtpStackError)
    assert issubclass(SrtpReplayError, RtpStackError)


@pytest.mark.parametrize("profile", [CM, GCM], ids=lambda p: p.name)
@settings(max_examples=examples(2), deadline=None)
@given(data=st.binary(max_size=1600))
def test_arbitrary_bytes_only_raise_srtp_errors(profile, data):
    ctx = SrtpContext(profile, master_for(profile), master_for(profile))
    for fn in (ctx.unprotect_rtp, ctx.unprotect_rtcp, ctx.protect_rtp, ctx.protect_rtcp):
        try:
            fn(data)
        except SrtpError:
            pass


@pytest.mark.parametrize("profile", [CM, GCM], ids=lambda p: p.name)
def test_short_packets_are_parse_errors_and_long_garbage_fails_authentication(profile):
    ctx = SrtpContext(profile, master_for(profile), master_for(profile))
    for fn, shortest_ok in (
        (ctx.protect_rtp, 12),
        (ctx.protect_rtcp, 8),
        (ctx.unprotect_rtp, 12 + (10 if profile is CM else 16)),
        (ctx.unprotect_rtcp, 8 + 4 + (10 if profile is CM else 16)),
    ):
        for n in range(shortest_ok):
            with pytest.raises(ParseError):
                fn(b"\x80" + bytes(max(0, n - 1)) if n else b"")
    for fn in (ctx.unprotect_rtp, ctx.unprotect_rtcp):
        with pytest.raises(SrtpAuthenticationError):
            fn(b"\x80\xc8" + bytes(60))


def test_oversized_packet_is_a_parse_error():
    client, _ = pair(CM)
    with pytest.raises(ParseError):
        client.protect_rtp(rtp_packet(1, payload=b"\x00" * 1500))


def _outcome(fn, data):
    try:
        return fn(data)
    except SrtpError as exc:
        return type(exc), str(exc)


@pytest.mark.parametrize("profile", [CM, GCM], ids=lambda p: p.name)
def test_the_direct_inbound_transform_agrees_with_pylibsrtps_method(profile):
    """SrtpContext.unprotect_rtp calls libsrtp directly; a twin context made to use pylibsrtp's
    public `unprotect` gives the same packet or the same error for genuine, replayed, late,
    tampered, short, oversized and garbage input."""
    material = os.urandom(profile.keying_material_length)
    sender = SrtpContext.from_keying_material(profile, material, is_client=True)
    direct = SrtpContext.from_keying_material(profile, material, is_client=False)
    public = SrtpContext.from_keying_material(profile, material, is_client=False)
    assert direct._in_srtp is not None, "the direct path must be the one in use here"
    public._in_srtp = None  # pylibsrtp's own method
    protected = [sender.protect_rtp(rtp_packet(seq)) for seq in range(10, 20)]
    late = sender.protect_rtp(rtp_packet(10 + 2000))
    tampered = protected[5][:30] + bytes([protected[5][30] ^ 1]) + protected[5][31:]
    inputs = protected[:5] + [protected[2], tampered, protected[5]]
    inputs += [b"\x80" + bytes(5), b"\x80\x60" + bytes(1600), b"\x80\x60" + os.urandom(200), late, protected[6]]
    outcomes = [(_outcome(direct.unprotect_rtp, d), _outcome(public.unprotect_rtp, d)) for d in inputs]
    for i, (mine, theirs) in enumerate(outcomes):
        assert mine == theirs, (i, mine, theirs)
    assert [o for o, _ in outcomes[:5]] == [rtp_packet(seq) for seq in range(10, 15)]
    kinds = [o[0] if isinstance(o, tuple) else bytes for o, _ in outcomes]
    assert kinds[5:] == [SrtpReplayError, SrtpAuthenticationError, bytes, SrtpPacketError, SrtpPacketError,
                         SrtpAuthenticationError, bytes, SrtpReplayError]
