"""Interop of our DTLS 1.2 with OpenSSL's (pyOpenSSL, memory BIOs), in both roles."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from dtls_helpers import OPENSSL_SRTP_NAMES, OpenSslPeer, drain_events, make_certificate, pump

from rtp.dtls import (
    ApplicationDataReceived,
    CipherSuite,
    ConnectionClosed,
    DtlsConnection,
    DtlsRole,
    DtlsState,
    HandshakeCompleted,
    NamedGroup,
    certificate_fingerprint,
)
from rtp.dtls.handshake_messages import split_handshake_fragments
from rtp.dtls.record import split_records
from rtp.srtp_profiles import SrtpProfile

OPENSSL_CIPHER_NAMES = {
    CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256: b"ECDHE-ECDSA-AES128-GCM-SHA256",
    CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384: b"ECDHE-ECDSA-AES256-GCM-SHA384",
    CipherSuite.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256: b"ECDHE-ECDSA-CHACHA20-POLY1305",
}


def _setup(our_role: DtlsRole, *, srtp: bytes = b"SRTP_AEAD_AES_128_GCM:SRTP_AES128_CM_SHA1_80", **kwargs):
    ours_cert, theirs_cert = make_certificate(), make_certificate()
    peer_kwargs = {k: kwargs.pop(k) for k in ("ciphers", "curve", "cookie") if k in kwargs}
    peer_mtu = kwargs.pop("peer_mtu", 1200)
    peer = OpenSslPeer(
        server=our_role is DtlsRole.CLIENT, certificate=theirs_cert, srtp=srtp, mtu=peer_mtu, **peer_kwargs
    )
    ours = DtlsConnection(our_role, ours_cert, [("sha-256", theirs_cert.fingerprint())], **kwargs)
    return ours, ours_cert, peer, theirs_cert


def _handshake(ours: DtlsConnection, peer: OpenSslPeer) -> HandshakeCompleted:
    ours.start(0.0)
    peer.step()
    pump(ours, peer)
    assert peer.error is None
    assert peer.handshake_done
    assert ours.state is DtlsState.CONNECTED
    events = drain_events(ours)
    assert len(events) == 1 and isinstance(events[0], HandshakeCompleted)
    return events[0]


def _peer_certificate_fingerprint(peer: OpenSslPeer) -> str:
    der = peer.conn.get_peer_certificate(as_cryptography=True).public_bytes(serialization.Encoding.DER)
    return certificate_fingerprint(der)


@pytest.mark.parametrize("our_role", [DtlsRole.SERVER, DtlsRole.CLIENT], ids=lambda r: f"ours-{r.value}")
@pytest.mark.parametrize("profile", list(SrtpProfile), ids=lambda p: p.name)
@pytest.mark.parametrize("closer", ["ours", "theirs"])
def test_handshake_export_data_and_close(our_role, profile, closer):
    ours, ours_cert, peer, theirs_cert = _setup(
        our_role, srtp=OPENSSL_SRTP_NAMES[profile.name], srtp_profiles=(profile,)
    )
    done = _handshake(ours, peer)

    # Mutual authentication: each side holds the other's real certificate.
    assert done.peer_fingerprint == theirs_cert.fingerprint()
    assert _peer_certificate_fingerprint(peer) == ours_cert.fingerprint()
    assert done.srtp_profile is profile
    assert peer.conn.get_selected_srtp_profile() == OPENSSL_SRTP_NAMES[profile.name]
    assert done.extended_master_secret  # OpenSSL always offers/accepts RFC 7627
    n = profile.keying_material_length
    ours_keys = ours.export_keying_material(b"EXTRACTOR-dtls_srtp", n)
    assert len(ours_keys) == n
    assert ours_keys == peer.conn.export_keying_material(b"EXTRACTOR-dtls_srtp", n)
    assert ours.export_keying_material(b"label", 20, b"ctx") == peer.conn.export_keying_material(b"label", 20, b"ctx")

    # Application data both ways, including a full-MTU-sized payload.
    big = bytes(range(256)) * 4
    for payload in (b"ping", big):
        ours.send_application_data(payload)
        for datagram in ours.datagrams_to_send(0.0):
            peer.feed(datagram)
        assert peer.received[-1] == payload
        peer.conn.send(payload[::-1])
        for datagram in peer.outgoing():
            ours.receive_datagram(datagram, 0.0)
        assert drain_events(ours) == [ApplicationDataReceived(payload[::-1])]

    if closer == "ours":
        ours.close()
        assert drain_events(ours) == [ConnectionClosed(alert=0, by_peer=False)]
        for datagram in ours.datagrams_to_send(0.0):
            peer.feed(datagram)
        assert peer.closed_by_peer
    else:
        peer.conn.shutdown()
        for datagram in peer.outgoing():
            ours.receive_datagram(datagram, 0.0)
        assert drain_events(ours) == [ConnectionClosed(alert=0, by_peer=True)]
        assert ours.state is DtlsState.CLOSED
        # We answer with our own close_notify (RFC 5246 §7.2.1), which OpenSSL records.
        replies = ours.datagrams_to_send(0.0)
        assert len(replies) == 1
        peer.feed(replies[0])
        assert peer.conn.get_shutdown() & 2  # SSL_RECEIVED_SHUTDOWN
    assert peer.error is None


@pytest.mark.parametrize("our_role", [DtlsRole.SERVER, DtlsRole.CLIENT], ids=lambda r: f"ours-{r.value}")
@pytest.mark.parametrize("suite", list(CipherSuite), ids=lambda s: s.name)
def test_each_cipher_suite(our_role, suite):
    ours, _, peer, _ = _setup(our_role, ciphers=OPENSSL_CIPHER_NAMES[suite])
    done = _handshake(ours, peer)
    assert done.cipher_suite is suite
    assert peer.conn.get_cipher_name() == OPENSSL_CIPHER_NAMES[suite].decode()
    assert ours.export_keying_material(b"EXTRACTOR-dtls_srtp", 56) == peer.conn.export_keying_material(
        b"EXTRACTOR-dtls_srtp", 56
    )
    ours.send_application_data(b"x" * 100)
    for datagram in ours.datagrams_to_send(0.0):
        peer.feed(datagram)
    assert peer.received == [b"x" * 100]


@pytest.mark.parametrize("our_role", [DtlsRole.SERVER, DtlsRole.CLIENT], ids=lambda r: f"ours-{r.value}")
@pytest.mark.parametrize(
    "group, restricted_side",
    [(NamedGroup.X25519, "ours"), (NamedGroup.SECP256R1, "ours"), (NamedGroup.SECP256R1, "theirs")],
    ids=["x25519-by-ours", "secp256r1-by-ours", "secp256r1-by-openssl"],
)
def test_each_group(our_role, group, restricted_side):
    # pyOpenSSL can only pin EC curves (set_tmp_ecdh), so x25519 is pinned on our side.
    if restricted_side == "theirs":
        ours, _, peer, _ = _setup(our_role, curve=ec.SECP256R1())
    else:
        ours, _, peer, _ = _setup(our_role, groups=(group,))
    done = _handshake(ours, peer)
    assert done.group is group
    assert peer.conn.get_group_name() == {NamedGroup.X25519: "x25519", NamedGroup.SECP256R1: "secp256r1"}[group]
    assert ours.export_keying_material(b"EXTRACTOR-dtls_srtp", 56) == peer.conn.export_keying_material(
        b"EXTRACTOR-dtls_srtp", 56
    )


@pytest.mark.parametrize("our_role", [DtlsRole.SERVER, DtlsRole.CLIENT], ids=lambda r: f"ours-{r.value}")
def test_cookie_exchange(our_role):
    """Our stateless HelloVerifyRequest against OpenSSL's client, and OpenSSL's against our client."""
    if our_role is DtlsRole.SERVER:
        ours, _, peer, _ = _setup(our_role, cookie_secret=b"k" * 32)
    else:
        ours, _, peer, _ = _setup(our_role, cookie=b"openssl-cookie")
    _handshake(ours, peer)
    if our_role is DtlsRole.SERVER:
        assert ours.counters.hello_verify_requests_sent == 1
    else:
        assert ours._hello_verify_count == 1
    assert ours.export_keying_material(b"EXTRACTOR-dtls_srtp", 56) == peer.conn.export_keying_material(
        b"EXTRACTOR-dtls_srtp", 56
    )


@pytest.mark.parametrize("our_role", [DtlsRole.SERVER, DtlsRole.CLIENT], ids=lambda r: f"ours-{r.value}")
def test_small_mtu_fragments_both_directions(our_role):
    ours, _, peer, _ = _setup(our_role, mtu=300, peer_mtu=300)
    ours.start(0.0)
    peer.step()
    sizes = []
    sent = []
    for _ in range(30):
        out = ours.datagrams_to_send(0.0)
        sent += out
        sizes += [len(d) for d in out]
        for datagram in out:
            peer.feed(datagram)
        for datagram in peer.outgoing():
            ours.receive_datagram(datagram, 0.0)
        if ours.state is DtlsState.CONNECTED and peer.handshake_done:
            break
    assert ours.state is DtlsState.CONNECTED and peer.handshake_done and peer.error is None
    assert max(sizes) <= 300
    # Our certificate (~400 bytes DER) cannot fit in a 300-byte datagram: it went out in
    # fragments (offset > 0), and OpenSSL reassembled them.
    assert any(offset > 0 for offset in _our_fragment_offsets(sent))
    assert peer.conn.get_peer_certificate() is not None
    assert ours.export_keying_material(b"EXTRACTOR-dtls_srtp", 56) == peer.conn.export_keying_material(
        b"EXTRACTOR-dtls_srtp", 56
    )


def _our_fragment_offsets(datagrams):
    for datagram in datagrams:
        records, _ = split_records(datagram)
        for content_type, _version, epoch, _seq, payload in records:
            if content_type == 22 and epoch == 0:
                for fragment in split_handshake_fragments(payload):
                    yield fragment[3]
