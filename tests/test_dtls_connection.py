"""The DtlsConnection API and certificate helpers, our client against our server."""

from __future__ import annotations

import datetime
import re

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from dtls_helpers import NOT_BEFORE, drain_events, make_certificate, pair, pump_pair
from OpenSSL import crypto

from rtp.dtls import (
    AlertDescription,
    ApplicationDataReceived,
    ConnectionClosed,
    DtlsCertificate,
    DtlsConnection,
    DtlsError,
    DtlsRole,
    DtlsState,
    HandshakeCompleted,
)
from rtp.dtls.record import split_records


def test_certificate_generation_and_fingerprint_match_openssl():
    cert = DtlsCertificate.generate(NOT_BEFORE, validity=datetime.timedelta(days=7))
    assert isinstance(cert.private_key.curve, ec.SECP256R1)
    assert cert.certificate.not_valid_after_utc == NOT_BEFORE + datetime.timedelta(days=7)
    assert cert.certificate.not_valid_before_utc <= NOT_BEFORE
    openssl_view = crypto.X509.from_cryptography(cert.certificate)
    for ours, theirs in (("sha-256", b"sha256"), ("sha-1", b"sha1"), ("sha-384", b"sha384"), ("sha-512", b"sha512")):
        assert cert.fingerprint(ours) == openssl_view.digest(theirs.decode()).decode()
    assert re.fullmatch(r"([0-9A-F]{2}:){31}[0-9A-F]{2}", cert.fingerprint())


def test_certificate_pem_round_trip_and_checks():
    cert = make_certificate()
    loaded = DtlsCertificate.from_pem(cert.certificate_pem(), cert.private_key_pem())
    assert loaded.der == cert.der and loaded.fingerprint() == cert.fingerprint()
    with pytest.raises(ValueError):
        DtlsCertificate.from_pem(cert.certificate_pem(), make_certificate().private_key_pem())


def test_constructor_rejects_bad_settings():
    cert = make_certificate()
    with pytest.raises(ValueError):
        DtlsConnection(DtlsRole.CLIENT, cert, [], mtu=100)
    with pytest.raises(ValueError):
        DtlsConnection(DtlsRole.CLIENT, cert, [], cookie_secret=b"x" * 32)
    with pytest.raises(ValueError):
        DtlsConnection(DtlsRole.CLIENT, cert, [], cipher_suites=())


def test_before_handshake_nothing_is_sent_or_exported():
    client, server = pair()
    assert server.next_deadline() is None and server.datagrams_to_send(0.0) == []
    # A send never raises: it is refused, counted, and nothing is queued.
    assert client.send_application_data(b"x") is False
    assert client.counters.send_not_connected == 1 and client.datagrams_to_send(0.0) == []
    with pytest.raises(DtlsError):
        client.export_keying_material(b"EXTRACTOR-dtls_srtp", 56)
    client.start(0.0)
    assert client.state is DtlsState.HANDSHAKING and client.next_deadline() == 1.0
    with pytest.raises(DtlsError):
        client.export_keying_material(b"EXTRACTOR-dtls_srtp", 56)


@pytest.mark.parametrize("mtu", [256, 576, 1200])
def test_handshake_respects_mtu(mtu):
    client, server = pair(mtu=mtu, cookie_secret=b"m" * 32)
    client.start(0.0)
    sizes = []
    for _ in range(10):
        for a, b in ((client, server), (server, client)):
            for datagram in a.datagrams_to_send(0.0):
                sizes.append(len(datagram))
                b.receive_datagram(datagram, 0.0)
    assert client.state is DtlsState.CONNECTED and server.state is DtlsState.CONNECTED
    assert max(sizes) <= mtu


def test_application_data_and_close_notify_both_ways():
    client, server = pair()
    client.start(0.0)
    pump_pair(client, server)
    (c_done,), (s_done,) = drain_events(client), drain_events(server)
    assert isinstance(c_done, HandshakeCompleted) and isinstance(s_done, HandshakeCompleted)
    assert c_done.peer_fingerprint == server._certificate.fingerprint()
    assert s_done.peer_fingerprint == client._certificate.fingerprint()
    assert c_done.srtp_profile is s_done.srtp_profile is not None

    # Two records in one datagram take the general path; each comes out as its own event.
    assert client.send_application_data(b"one") is True
    assert client.send_application_data(b"two") is True
    server.receive_datagram(b"".join(client.datagrams_to_send(0.0)), 0.0)
    assert drain_events(server) == [ApplicationDataReceived(b"one"), ApplicationDataReceived(b"two")]
    server.send_application_data(b"")
    for datagram in server.datagrams_to_send(0.0):
        client.receive_datagram(datagram, 0.0)
    assert drain_events(client) == [ApplicationDataReceived(b"")]
    assert client.send_application_data(bytes(2**14 + 1)) is False
    assert client.counters.send_too_large == 1 and client.datagrams_to_send(0.0) == []

    server.close()
    assert drain_events(server) == [ConnectionClosed(AlertDescription.CLOSE_NOTIFY, by_peer=False)]
    (notify,) = server.datagrams_to_send(0.0)
    assert split_records(notify)[0][0][:3] == (21, 0xFEFD, 1)  # an encrypted alert
    client.receive_datagram(notify, 0.0)
    assert drain_events(client) == [ConnectionClosed(AlertDescription.CLOSE_NOTIFY, by_peer=True)]
    (reply,) = client.datagrams_to_send(0.0)
    server.receive_datagram(reply, 0.0)  # ignored once closed
    assert drain_events(server) == [] and server.state is DtlsState.CLOSED
    assert client.send_application_data(b"late") is False
    assert client.counters.send_not_connected == 1 and client.datagrams_to_send(0.0) == []
    # Keys stay exportable after an orderly close (SRTP may still be torn down later).
    assert client.export_keying_material(b"x", 8) == server.export_keying_material(b"x", 8)


def test_close_during_handshake():
    client, server = pair()
    client.start(0.0)
    client.datagrams_to_send(0.0)
    client.close()
    (notify,) = client.datagrams_to_send(0.0)
    assert split_records(notify)[0][0][0] == 21 and split_records(notify)[0][0][4] == bytes((1, 0))
    assert client.next_deadline() is None and client.state is DtlsState.CLOSED


def test_fingerprints_can_arrive_late():
    client_cert, server_cert = make_certificate(), make_certificate()
    client = DtlsConnection(DtlsRole.CLIENT, client_cert, [])
    server = DtlsConnection(DtlsRole.SERVER, server_cert, [("sha-256", client_cert.fingerprint())])
    client.start(0.0)
    client.set_remote_fingerprints([("sha-256", server_cert.fingerprint())])
    pump_pair(client, server)
    assert client.state is DtlsState.CONNECTED


def test_finished_overtaking_key_exchange_is_held_not_dropped():
    """With a small MTU flight 5 spans several datagrams; delivered in reverse, the epoch-1
    Finished arrives before the keys exist and is held until ClientKeyExchange arrives."""
    client, server = pair(mtu=256)
    client.start(0.0)
    for datagram in client.datagrams_to_send(0.0):
        server.receive_datagram(datagram, 0.0)
    for datagram in server.datagrams_to_send(0.0):
        client.receive_datagram(datagram, 0.0)
    flight5 = client.datagrams_to_send(0.0)
    assert len(flight5) >= 3
    for datagram in reversed(flight5):
        server.receive_datagram(datagram, 0.0)
    assert server.state is DtlsState.CONNECTED
    assert server.counters.unexpected == 0 and server.counters.retransmissions == 0


def test_application_data_before_finished_is_delivered_after_completion():
    client, server = pair()
    client.start(0.0)
    pump_pair(client, server, rounds=1)  # up to the server's Finished, not yet delivered
    for datagram in client.datagrams_to_send(0.0):
        server.receive_datagram(datagram, 0.0)
    assert server.state is DtlsState.CONNECTED
    flight6 = server.datagrams_to_send(0.0)
    server.send_application_data(b"early")
    for datagram in server.datagrams_to_send(0.0) + flight6:
        client.receive_datagram(datagram, 0.0)
    events = drain_events(client)
    assert [type(e) for e in events] == [HandshakeCompleted, ApplicationDataReceived]
    assert events[1].data == b"early"
