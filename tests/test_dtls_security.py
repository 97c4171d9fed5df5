"""Attacks and failures: each is rejected with the right alert, or dropped and counted,
without state growth."""

from __future__ import annotations

import os

import pytest
from dtls_helpers import OpenSslPeer, drain_events, make_certificate, pair, pump, pump_pair

from rtp.dtls import (
    AlertDescription,
    ApplicationDataReceived,
    ConnectionFailed,
    CookieVerdict,
    DtlsAlertReceived,
    DtlsConnection,
    DtlsCookieResponder,
    DtlsFingerprintMismatch,
    DtlsRole,
    DtlsState,
    HandshakeCompleted,
)
from rtp.dtls.constants import DTLS_1_0, DTLS_1_2, AlertLevel, ContentType, HandshakeType
from rtp.dtls.handshake_messages import ClientHello, encode_handshake_header, encode_use_srtp, split_handshake_fragments
from rtp.dtls.record import encode_record_header, split_records
from rtp.srtp_profiles import SrtpProfile


def connected_pair(**kwargs):
    client, server = pair(**kwargs)
    client.start(0.0)
    pump_pair(client, server)
    assert client.state is DtlsState.CONNECTED and server.state is DtlsState.CONNECTED
    drain_events(client), drain_events(server)
    return client, server


def mutate_message(datagram: bytes, msg_type: int, mutate) -> bytes:
    """Rewrite one plaintext (epoch 0) handshake message inside a datagram, like a MITM on the path."""
    out = b""
    records, _ = split_records(datagram)
    for content_type, version, epoch, seq, payload in records:
        if content_type == ContentType.HANDSHAKE and epoch == 0:
            new_payload = b""
            for t, length, message_seq, offset, data in split_handshake_fragments(payload):
                if t == msg_type:
                    assert offset == 0 and len(data) == length
                    data = mutate(data)
                    length = len(data)
                new_payload += encode_handshake_header(t, length, message_seq, offset, len(data)) + data
            payload = new_payload
        out += encode_record_header(content_type, version, epoch, seq, len(payload)) + payload
    return out


def flip_last_byte(data: bytes) -> bytes:
    return data[:-1] + bytes((data[-1] ^ 0x01,))


def alert_of(datagrams: list[bytes]) -> tuple[int, int]:
    """The plaintext alert in our datagrams (sent before any key change)."""
    for datagram in datagrams:
        for content_type, _v, epoch, _s, payload in split_records(datagram)[0]:
            if content_type == ContentType.ALERT and epoch == 0:
                return payload[0], payload[1]
    raise AssertionError("no plaintext alert sent")


def run_until_quiet(client, server, tamper_to_server=None, tamper_to_client=None):
    for _ in range(10):
        moved = False
        for datagram in client.datagrams_to_send(0.0):
            server.receive_datagram(tamper_to_server(datagram) if tamper_to_server else datagram, 0.0)
            moved = True
        for datagram in server.datagrams_to_send(0.0):
            client.receive_datagram(tamper_to_client(datagram) if tamper_to_client else datagram, 0.0)
            moved = True
        if not moved:
            return


def failed_with(conn: DtlsConnection):
    events = drain_events(conn)
    assert conn.state is DtlsState.FAILED
    assert isinstance(events[-1], ConnectionFailed), events
    return events[-1].error


# ---------------------------------------------------------------- fingerprints


@pytest.mark.parametrize("checking_side", ["client", "server"])
def test_wrong_fingerprint_fails_with_bad_certificate(checking_side):
    client_cert, server_cert, stranger = make_certificate(), make_certificate(), make_certificate()
    client_expects = stranger if checking_side == "client" else server_cert
    server_expects = stranger if checking_side == "server" else client_cert
    client = DtlsConnection(DtlsRole.CLIENT, client_cert, [("sha-256", client_expects.fingerprint())])
    server = DtlsConnection(DtlsRole.SERVER, server_cert, [("sha-256", server_expects.fingerprint())])
    client.start(0.0)
    checker, other = (client, server) if checking_side == "client" else (server, client)
    run_until_quiet(client, server)
    error = failed_with(checker)
    assert isinstance(error, DtlsFingerprintMismatch) and error.alert is AlertDescription.BAD_CERTIFICATE
    peer_error = failed_with(other)
    assert isinstance(peer_error, DtlsAlertReceived) and peer_error.alert is AlertDescription.BAD_CERTIFICATE
    assert checker.next_deadline() is None and other.next_deadline() is None


@pytest.mark.parametrize("our_role", [DtlsRole.CLIENT, DtlsRole.SERVER], ids=lambda r: f"ours-{r.value}")
def test_wrong_fingerprint_against_openssl(our_role):
    ours_cert, theirs_cert = make_certificate(), make_certificate()
    ours = DtlsConnection(our_role, ours_cert, [("sha-256", make_certificate().fingerprint())])
    peer = OpenSslPeer(server=our_role is DtlsRole.CLIENT, certificate=theirs_cert)
    ours.start(0.0)
    peer.step()
    pump(ours, peer)
    assert isinstance(failed_with(ours), DtlsFingerprintMismatch)
    assert "bad certificate" in str(peer.error)


def test_fingerprint_rules():
    cert = make_certificate()
    from rtp.dtls import fingerprints_match

    assert fingerprints_match(cert.der, [("sha-256", cert.fingerprint())])
    assert fingerprints_match(cert.der, [("SHA-256", cert.fingerprint().lower())])
    assert fingerprints_match(cert.der, [("sha-1", cert.fingerprint("sha-1")), ("sha-512", cert.fingerprint("sha-512"))])
    assert fingerprints_match(cert.der, [("sha-384", cert.fingerprint("sha-384")), ("md5", "whatever")])
    # Every known algorithm must match; unknown ones alone authenticate nothing.
    assert not fingerprints_match(cert.der, [("sha-256", cert.fingerprint()), ("sha-1", "00:11")])
    assert not fingerprints_match(cert.der, [("md5", "AA:BB")])
    assert not fingerprints_match(cert.der, [])


# ---------------------------------------------------------------- signatures and Finished


def test_tampered_certificate_verify_is_decrypt_error():
    client, server = pair()
    client.start(0.0)
    tamper = lambda d: mutate_message(d, HandshakeType.CERTIFICATE_VERIFY, flip_last_byte)  # noqa: E731
    run_until_quiet(client, server, tamper_to_server=tamper)
    error = failed_with(server)
    assert error.alert is AlertDescription.DECRYPT_ERROR and "CertificateVerify" in str(error)
    assert failed_with(client).alert is AlertDescription.DECRYPT_ERROR


def test_tampered_server_key_exchange_signature_is_decrypt_error():
    client, server = pair()
    client.start(0.0)
    tamper = lambda d: mutate_message(d, HandshakeType.SERVER_KEY_EXCHANGE, flip_last_byte)  # noqa: E731
    for datagram in client.datagrams_to_send(0.0):
        server.receive_datagram(datagram, 0.0)
    flight = server.datagrams_to_send(0.0)
    for datagram in flight:
        client.receive_datagram(tamper(datagram), 0.0)
    error = failed_with(client)
    assert error.alert is AlertDescription.DECRYPT_ERROR and "ServerKeyExchange" in str(error)
    assert alert_of(client.datagrams_to_send(0.0)) == (AlertLevel.FATAL, AlertDescription.DECRYPT_ERROR)


@pytest.mark.parametrize("liar", ["client", "server"])
def test_bad_finished_is_decrypt_error(liar):
    client, server = pair()
    lying = client if liar == "client" else server
    label = b"client finished" if liar == "client" else b"server finished"
    honest_finished = lying._finished
    lying._finished = lambda lbl: bytes(12) if lbl == label else honest_finished(lbl)
    client.start(0.0)
    run_until_quiet(client, server)
    victim = server if liar == "client" else client
    error = failed_with(victim)
    assert error.alert is AlertDescription.DECRYPT_ERROR and "Finished" in str(error)
    assert isinstance(failed_with(lying), DtlsAlertReceived)


# ---------------------------------------------------------------- record layer


def test_replayed_record_is_dropped_and_counted():
    client, server = connected_pair()
    client.send_application_data(b"once")
    (datagram,) = client.datagrams_to_send(0.0)
    for _ in range(3):
        server.receive_datagram(datagram, 0.0)
    assert drain_events(server) == [ApplicationDataReceived(b"once")]
    assert server.counters.replayed == 2


def test_replay_window_accepts_reordering_within_64():
    client, server = connected_pair()
    datagrams = []
    for i in range(100):
        client.send_application_data(i.to_bytes(2, "big"))
        datagrams += client.datagrams_to_send(0.0)
    server.receive_datagram(datagrams[99], 0.0)
    server.receive_datagram(datagrams[40], 0.0)  # 59 behind: in the window
    server.receive_datagram(datagrams[20], 0.0)  # 79 behind: too old
    got = [e.data for e in drain_events(server)]
    assert got == [(99).to_bytes(2, "big"), (40).to_bytes(2, "big")]
    assert server.counters.replayed == 1


def test_old_epoch_records_after_handshake_are_dropped():
    client, server = connected_pair()
    # Unprotected application data and a forged plaintext fatal alert, both epoch 0.
    forged_data = encode_record_header(ContentType.APPLICATION_DATA, DTLS_1_2, 0, 1000, 5) + b"hello"
    forged_alert = encode_record_header(ContentType.ALERT, DTLS_1_2, 0, 1001, 2) + bytes((2, 40))
    server.receive_datagram(forged_data + forged_alert, 0.0)
    assert server.counters.old_epoch == 2
    assert server.state is DtlsState.CONNECTED and drain_events(server) == []


def test_forged_and_future_epoch_records_are_dropped():
    client, server = connected_pair()
    forged = encode_record_header(ContentType.APPLICATION_DATA, DTLS_1_2, 1, 500, 40) + os.urandom(40)
    future = encode_record_header(ContentType.APPLICATION_DATA, DTLS_1_2, 2, 0, 40) + os.urandom(40)
    truncated = encode_record_header(ContentType.APPLICATION_DATA, DTLS_1_2, 1, 501, 40) + os.urandom(10)
    server.receive_datagram(forged, 0.0)
    server.receive_datagram(future, 0.0)
    server.receive_datagram(truncated, 0.0)
    assert (server.counters.bad_mac, server.counters.unexpected, server.counters.malformed) == (1, 1, 1)
    assert server.state is DtlsState.CONNECTED and drain_events(server) == []
    # The forged record did not advance the window: the genuine record 500 still gets through.
    client._write_seq1 = 500
    client.send_application_data(b"real")
    for datagram in client.datagrams_to_send(0.0):
        server.receive_datagram(datagram, 0.0)
    assert drain_events(server) == [ApplicationDataReceived(b"real")]


def test_replayed_handshake_flight_triggers_no_retransmission():
    """Old handshake records replayed by an attacker are caught by the replay window, so they
    cannot make the server resend its flight (no amplification); a genuine client
    retransmission (new record numbers) does."""
    client, server = pair()
    client.start(0.0)
    for datagram in client.datagrams_to_send(0.0):
        server.receive_datagram(datagram, 0.0)
    for datagram in server.datagrams_to_send(0.0):
        client.receive_datagram(datagram, 0.0)
    flight5 = client.datagrams_to_send(0.0)
    for datagram in flight5:
        server.receive_datagram(datagram, 0.0)
    server.datagrams_to_send(0.0)  # flight 6: lost
    assert server.state is DtlsState.CONNECTED and client.state is DtlsState.HANDSHAKING
    for datagram in flight5:
        server.receive_datagram(datagram, 0.0)
    assert server.datagrams_to_send(0.0) == []
    assert server.counters.replayed >= len(flight5)
    client.handle_timeout(client.next_deadline())
    for datagram in client.datagrams_to_send(0.0):
        server.receive_datagram(datagram, 0.0)
    resent = server.datagrams_to_send(0.0)
    assert resent
    for datagram in resent:
        client.receive_datagram(datagram, 1.0)
    assert client.state is DtlsState.CONNECTED
    assert [type(e) for e in drain_events(client)] == [HandshakeCompleted]


def _forge(datagram: bytes, *, content_type: int | None = None, record_seq: int | None = None,
           length_delta: int = 0, message_seq: int | None = None) -> bytes:
    """The client's one-record ClientHello datagram with header fields rewritten, as an off-path
    attacker who saw one would send it (epoch 0 has no MAC to stop it)."""
    (record,), _ = split_records(datagram)
    ctype, version, epoch, seq, payload = record
    ((msg_type, length, msg_seq, offset, body),) = split_handshake_fragments(payload)
    handshake = encode_handshake_header(msg_type, length + length_delta,
                                        msg_seq if message_seq is None else message_seq, offset, len(body)) + body
    return encode_record_header(ctype if content_type is None else content_type, version, epoch,
                                seq if record_seq is None else record_seq, len(handshake)) + handshake


@pytest.mark.parametrize("forgery", [
    dict(content_type=99, record_seq=2**40),  # noise with a huge record number
    dict(record_seq=2**40, length_delta=256),  # a partial hello that never completes
    dict(message_seq=256, length_delta=256),  # ... claiming a later message_seq
], ids=["unknown-type", "partial-hello", "later-partial-hello"])
def test_one_forged_record_does_not_stop_a_fresh_servers_handshake(forgery):
    """Found by tests/test_dtls_fuzz.py: the epoch-0 replay window moved on arrival, and a fresh
    server kept the first partial ClientHello it saw, so one forged datagram made every genuine
    ClientHello a "replay" or "inconsistent" — and a server waiting for a hello has no timer."""
    client, server = pair()
    client.start(0.0)
    (hello,) = client.datagrams_to_send(0.0)
    server.receive_datagram(_forge(hello, **forgery), 0.0)
    server.receive_datagram(hello, 0.0)
    pump_pair(client, server)
    assert client.state is DtlsState.CONNECTED and server.state is DtlsState.CONNECTED


def claim_longer(datagram: bytes, msg_type: int, extra: int) -> bytes:
    """The datagram with one handshake message's header claiming `extra` more bytes than it has:
    a fragment that never completes, forged from a genuine one."""
    out = b""
    for content_type, version, epoch, seq, payload in split_records(datagram)[0]:
        if content_type == ContentType.HANDSHAKE and epoch == 0:
            payload = b"".join(
                encode_handshake_header(t, length + (extra if t == msg_type else 0), message_seq, offset, len(data)) + data
                for t, length, message_seq, offset, data in split_handshake_fragments(payload))
        out += encode_record_header(content_type, version, epoch, seq, len(payload)) + payload
    return out


def test_two_sides_do_not_volley_retransmissions():
    """Found by tests/test_dtls_fuzz.py: a client stuck on a message that cannot complete (a
    forged fragment poisoned it) answered each resent server flight by resending its ClientHello,
    and the server answered that by resending its flight — at once, forever. Now a side answers
    the peer's resend at most once per half initial timeout; the handshake then ends by timeout."""
    client, server = pair()
    client.start(0.0)
    for datagram in client.datagrams_to_send(0.0):
        server.receive_datagram(datagram, 0.0)
    flight4 = server.datagrams_to_send(0.0)
    for datagram in flight4:
        client.receive_datagram(claim_longer(datagram, HandshakeType.CERTIFICATE, 100), 0.0)
    for datagram in flight4:
        client.receive_datagram(datagram, 0.0)
    client.handle_timeout(client.next_deadline())  # the client resends its ClientHello
    now, exchanged, moved = client.next_deadline() or 0.0, 0, True
    while moved:
        moved = False
        for sender, receiver in ((client, server), (server, client)):
            for datagram in sender.datagrams_to_send(now):
                receiver.receive_datagram(datagram, now)
                moved, exchanged = True, exchanged + 1
        assert exchanged < 50, "client and server keep resending to each other"
    assert client.counters.retransmissions_limited + server.counters.retransmissions_limited > 0
    assert client.state is DtlsState.HANDSHAKING
    client.handle_timeout(client.next_deadline() + 3600)  # the handshake timeout ends it
    assert client.state is DtlsState.FAILED


# ---------------------------------------------------------------- cookies and floods


def _cookie_less_hello(random_bytes: bytes, record_seq: int = 0) -> bytes:
    hello = ClientHello(DTLS_1_2, random_bytes, b"", b"", (0xC02B,), b"\x00", ((14, encode_use_srtp([1])),))
    body = hello.serialize()
    handshake = encode_handshake_header(HandshakeType.CLIENT_HELLO, len(body), 0, 0, len(body)) + body
    return encode_record_header(ContentType.HANDSHAKE, DTLS_1_0, 0, record_seq, len(handshake)) + handshake


def test_cookie_less_client_hello_flood_keeps_no_state():
    _, server = pair(cookie_secret=b"f" * 32)
    for i in range(3000):
        server.receive_datagram(_cookie_less_hello(os.urandom(32), i), float(i))
    assert server.counters.hello_verify_requests_sent == 3000
    assert server.state is DtlsState.NEW and server.next_deadline() is None
    assert server._reassembler.buffered_messages == 0 and server._reassembler.buffered_bytes == 0
    assert len(server._transcript) == 0 and server._flight == [] and server._outgoing == []
    # At most one reply is ever queued: undrained answers to a flood do not pile up.
    assert len(server.datagrams_to_send(0.0)) == 1
    assert drain_events(server) == []


def test_garbage_to_a_fresh_server_is_dropped_without_state():
    _, server = pair()
    junk_handshake = encode_handshake_header(HandshakeType.FINISHED, 12, 0, 0, 12) + bytes(12)
    for i in range(500):
        server.receive_datagram(encode_record_header(ContentType.HANDSHAKE, DTLS_1_2, 0, i, len(junk_handshake)) + junk_handshake, 0.0)
        server.receive_datagram(os.urandom(50), 0.0)
    assert server.state is DtlsState.NEW and server._reassembler.buffered_messages == 0
    assert server.datagrams_to_send(0.0) == [] and drain_events(server) == []


def test_cookie_responder_for_a_udp_mux():
    responder = DtlsCookieResponder(b"m" * 32)
    client, _ = pair()
    server_cert = make_certificate()
    client = DtlsConnection(DtlsRole.CLIENT, client._certificate, [("sha-256", server_cert.fingerprint())])
    client.start(0.0)
    (hello,) = client.datagrams_to_send(0.0)
    verdict, reply = responder.respond(hello, b"198.51.100.7:5000")
    assert verdict is CookieVerdict.HELLO_VERIFY_REQUEST
    client.receive_datagram(reply, 0.0)
    (hello_with_cookie,) = client.datagrams_to_send(0.0)
    # The cookie is bound to the address it was issued to.
    assert responder.respond(hello_with_cookie, b"203.0.113.9:5000")[0] is CookieVerdict.HELLO_VERIFY_REQUEST
    assert responder.respond(hello_with_cookie, b"198.51.100.7:5000") == (CookieVerdict.VALID, None)
    assert responder.respond(b"\x17garbage", b"x") == (CookieVerdict.IGNORE, None)
    server = DtlsConnection(DtlsRole.SERVER, server_cert, [("sha-256", client._certificate.fingerprint())])
    server.receive_datagram(hello_with_cookie, 0.0)
    pump_pair(client, server)
    assert client.state is DtlsState.CONNECTED and server.state is DtlsState.CONNECTED


def test_connection_cookie_is_bound_to_context():
    client, server = pair(cookie_secret=b"q" * 32, cookie_context=b"addr-1")
    client.start(0.0)
    pump_pair(client, server)
    assert server.state is DtlsState.CONNECTED
    # A cookie issued for another address does not let a client in.
    client2, _ = pair()
    other = DtlsConnection(DtlsRole.SERVER, make_certificate(), [], cookie_secret=b"q" * 32, cookie_context=b"addr-2")
    stranger = DtlsCookieResponder(b"q" * 32)
    client2.start(0.0)
    (hello,) = client2.datagrams_to_send(0.0)
    client2.receive_datagram(stranger.respond(hello, b"addr-1")[1], 0.0)
    (with_cookie,) = client2.datagrams_to_send(0.0)
    other.receive_datagram(with_cookie, 0.0)
    assert other.state is DtlsState.NEW and other.counters.hello_verify_requests_sent == 1


# ---------------------------------------------------------------- negotiation failures and alerts


def test_no_common_srtp_profile_is_handshake_failure():
    client, server = pair()
    client = DtlsConnection(
        DtlsRole.CLIENT, client._certificate, client._remote_fingerprints, srtp_profiles=(SrtpProfile.AES128_CM_HMAC_SHA1_80,)
    )
    server._srtp_profiles = (SrtpProfile.AEAD_AES_128_GCM,)
    client.start(0.0)
    run_until_quiet(client, server)
    assert failed_with(server).alert is AlertDescription.HANDSHAKE_FAILURE
    error = failed_with(client)
    assert isinstance(error, DtlsAlertReceived) and error.alert is AlertDescription.HANDSHAKE_FAILURE


def test_dtls10_only_client_gets_protocol_version():
    _, server = pair()
    hello = ClientHello(DTLS_1_0, os.urandom(32), b"", b"", (0xC02B,), b"\x00", ((14, encode_use_srtp([1])),))
    body = hello.serialize()
    handshake = encode_handshake_header(HandshakeType.CLIENT_HELLO, len(body), 0, 0, len(body)) + body
    server.receive_datagram(encode_record_header(ContentType.HANDSHAKE, DTLS_1_0, 0, 0, len(handshake)) + handshake, 0.0)
    assert failed_with(server).alert is AlertDescription.PROTOCOL_VERSION
    assert alert_of(server.datagrams_to_send(0.0)) == (AlertLevel.FATAL, AlertDescription.PROTOCOL_VERSION)


def test_received_fatal_alert_fails_handshake():
    client, server = pair()
    client.start(0.0)
    for datagram in client.datagrams_to_send(0.0):
        server.receive_datagram(datagram, 0.0)
    server.datagrams_to_send(0.0)
    # An alert with a description we do not know still fails the handshake, reported as an int.
    client.receive_datagram(encode_record_header(ContentType.ALERT, DTLS_1_2, 0, 99, 2) + bytes((2, 200)), 0.0)
    error = failed_with(client)
    assert isinstance(error, DtlsAlertReceived) and error.alert == 200
    assert client.next_deadline() is None and client.datagrams_to_send(0.0) == []


def test_renegotiation_is_refused_with_a_warning():
    client, server = connected_pair()
    # A new ClientHello inside the established session (epoch 1, next message_seq).
    hello = client._build_client_hello(b"").serialize()
    handshake = encode_handshake_header(HandshakeType.CLIENT_HELLO, len(hello), client._send_seq, 0, len(hello)) + hello
    server.receive_datagram(client._encode_record(ContentType.HANDSHAKE, handshake, 1), 0.0)
    (warning,) = server.datagrams_to_send(0.0)
    content_type, _v, epoch, seq, payload = split_records(warning)[0][0]
    assert (content_type, epoch) == (ContentType.ALERT, 1)
    assert client._read_cipher.open(content_type, DTLS_1_2, 1, seq, payload) == bytes(
        (AlertLevel.WARNING, AlertDescription.NO_RENEGOTIATION)
    )
    assert server.state is DtlsState.CONNECTED


def test_server_requires_a_client_certificate():
    client, server = pair()
    client.start(0.0)
    empty_chain = lambda d: mutate_message(d, HandshakeType.CERTIFICATE, lambda body: b"\x00\x00\x00")  # noqa: E731
    for datagram in client.datagrams_to_send(0.0):
        server.receive_datagram(datagram, 0.0)
    for datagram in server.datagrams_to_send(0.0):
        client.receive_datagram(datagram, 0.0)
    for datagram in client.datagrams_to_send(0.0):
        server.receive_datagram(empty_chain(datagram), 0.0)
    error = failed_with(server)
    assert error.alert is AlertDescription.HANDSHAKE_FAILURE and "no certificate" in str(error)
    assert alert_of(server.datagrams_to_send(0.0)) == (AlertLevel.FATAL, AlertDescription.HANDSHAKE_FAILURE)


def test_unprotected_finished_is_unexpected_message():
    """Finished must come under the new keys; a plaintext one (epoch 0) is refused."""
    client, server = pair()
    client.start(0.0)
    for datagram in client.datagrams_to_send(0.0):
        server.receive_datagram(datagram, 0.0)
    for datagram in server.datagrams_to_send(0.0):
        client.receive_datagram(datagram, 0.0)
    seq = server._reassembler.next_seq
    finished = encode_handshake_header(HandshakeType.FINISHED, 12, seq, 0, 12) + bytes(12)
    server.receive_datagram(encode_record_header(ContentType.HANDSHAKE, DTLS_1_2, 0, 50, len(finished)) + finished, 0.0)
    assert failed_with(server).alert is AlertDescription.UNEXPECTED_MESSAGE
