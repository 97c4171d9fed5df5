"""A browser-like ClientHello offering DTLS 1.3 and 1.2 with an X25519MLKEM768 key share
(group 0x11EC, 1216-byte share): it spans several handshake fragments in several records,
and our server must reassemble it and answer with a correct DTLS 1.2 handshake."""

from __future__ import annotations

import os
import random

import pytest
from dtls_helpers import drain_events, make_certificate

from rtp.dtls import DtlsConnection, DtlsRole, DtlsState, HandshakeCompleted, NamedGroup
from rtp.dtls.connection import _Expect
from rtp.dtls.constants import DTLS_1_0, DTLS_1_2, DTLS_1_3, ContentType, ExtensionType, HandshakeType
from rtp.dtls.handshake_messages import (
    ClientHello,
    HelloVerifyRequest,
    ServerHello,
    encode_handshake_header,
    encode_u16_list_extension,
    encode_use_srtp,
    split_handshake_fragments,
)
from rtp.dtls.record import encode_record_header, split_records
from rtp.dtls.wire import vec8, vec16
from rtp.srtp_profiles import SrtpProfile

GREASE = 0x3A3A


def browser_client_hello(cookie: bytes = b"", random_bytes: bytes | None = None) -> ClientHello:
    mlkem_share = os.urandom(1216)
    x25519_share = os.urandom(32)
    key_share = vec16(
        (0x11EC).to_bytes(2, "big") + vec16(mlkem_share) + (NamedGroup.X25519).to_bytes(2, "big") + vec16(x25519_share)
    )
    extensions = (
        (GREASE, b""),
        (ExtensionType.SUPPORTED_VERSIONS, vec8(DTLS_1_3.to_bytes(2, "big") + DTLS_1_2.to_bytes(2, "big"))),
        (ExtensionType.KEY_SHARE, key_share),
        (ExtensionType.SUPPORTED_GROUPS, encode_u16_list_extension([0x11EC, 29, 23, 24])),
        (ExtensionType.EC_POINT_FORMATS, vec8(b"\x00")),
        (ExtensionType.SIGNATURE_ALGORITHMS, encode_u16_list_extension([0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501])),
        (ExtensionType.USE_SRTP, encode_use_srtp([0x0007, 0x0008, 0x0001, 0x0002])),
        (ExtensionType.EXTENDED_MASTER_SECRET, b""),
        (ExtensionType.RENEGOTIATION_INFO, b"\x00"),
        (0x002D, b"\x01\x01"),  # psk_key_exchange_modes, a TLS 1.3 extension we must ignore
        (0x0010, vec16(vec8(b"webrtc"))),  # ALPN, ignored
    )
    suites = (0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xCCA9, 0xCCA8, 0xC009, 0xC013, 0x009C, 0x002F, 0x0035)
    return ClientHello(DTLS_1_2, random_bytes or os.urandom(32), b"", cookie, suites, b"\x00", extensions)


def fragment_into_datagrams(hello: ClientHello, message_seq: int, fragment_size: int, first_record_seq: int) -> list[bytes]:
    body = hello.serialize()
    datagrams = []
    for n, offset in enumerate(range(0, len(body), fragment_size)):
        chunk = body[offset : offset + fragment_size]
        handshake = encode_handshake_header(HandshakeType.CLIENT_HELLO, len(body), message_seq, offset, len(chunk)) + chunk
        datagrams.append(encode_record_header(ContentType.HANDSHAKE, DTLS_1_0, 0, first_record_seq + n, len(handshake)) + handshake)
    return datagrams


def handshake_messages(datagrams: list[bytes]) -> list[tuple[int, int, bytes]]:
    """(msg_type, message_seq, body) of single-fragment epoch-0 messages in our server's flight."""
    out = []
    for datagram in datagrams:
        records, truncated = split_records(datagram)
        assert not truncated
        for content_type, version, epoch, _seq, payload in records:
            assert (content_type, epoch) == (ContentType.HANDSHAKE, 0)
            for msg_type, length, message_seq, offset, data in split_handshake_fragments(payload):
                assert offset == 0 and len(data) == length
                out.append((msg_type, message_seq, data))
    return out


def test_hello_spans_several_records():
    body = browser_client_hello().serialize()
    assert len(body) > 1400
    assert len(fragment_into_datagrams(browser_client_hello(), 0, 1150, 0)) == 2


@pytest.mark.parametrize("fragment_size, shuffle", [(1150, False), (400, True), (200, True)])
def test_server_answers_pq_dtls13_hello_with_dtls12(fragment_size, shuffle):
    rng = random.Random(fragment_size)
    client_cert, server_cert = make_certificate(), make_certificate()
    server = DtlsConnection(
        DtlsRole.SERVER, server_cert, [("sha-256", client_cert.fingerprint())], cookie_secret=b"c" * 32
    )

    # Flight 1: a cookie-less ClientHello in fragments. Only the first fragment is needed
    # to compute the cookie; the server keeps no state for it.
    first = browser_client_hello()
    datagrams = fragment_into_datagrams(first, 0, fragment_size, 0)
    if shuffle:
        rng.shuffle(datagrams)
    for datagram in datagrams:
        server.receive_datagram(datagram, 0.0)
    (hvr_datagram,) = server.datagrams_to_send(0.0)
    assert server.state is DtlsState.NEW and server._reassembler.buffered_messages == 0
    ((msg_type, seq, body),) = handshake_messages([hvr_datagram])
    assert msg_type == HandshakeType.HELLO_VERIFY_REQUEST and seq == 0
    cookie = HelloVerifyRequest.parse(body).cookie

    # Flight 3: the same hello with the cookie, message_seq 1, fragmented and reordered.
    second = browser_client_hello(cookie=cookie, random_bytes=first.random)
    record_seq = len(datagrams)
    datagrams = fragment_into_datagrams(second, 1, fragment_size, record_seq)
    record_seq += len(datagrams)
    if shuffle:
        rng.shuffle(datagrams)
    for datagram in datagrams:
        server.receive_datagram(datagram, 0.0)
    if shuffle and server.state is DtlsState.NEW:
        # Fragments that overtook the one carrying the cookie were dropped (no state before
        # a valid cookie); the client's retransmission, with new record numbers, completes it.
        assert server.counters.unexpected > 0
        datagrams = fragment_into_datagrams(second, 1, fragment_size, record_seq)
        record_seq += len(datagrams)
        rng.shuffle(datagrams)
        for datagram in datagrams:
            server.receive_datagram(datagram, 0.0)
    assert server.state is DtlsState.HANDSHAKING
    flight = server.datagrams_to_send(0.0)
    assert all(len(d) <= 1200 for d in flight)
    messages = handshake_messages(flight)
    assert [m[0] for m in messages] == [
        HandshakeType.SERVER_HELLO,
        HandshakeType.CERTIFICATE,
        HandshakeType.SERVER_KEY_EXCHANGE,
        HandshakeType.CERTIFICATE_REQUEST,
        HandshakeType.SERVER_HELLO_DONE,
    ]
    assert [m[1] for m in messages] == [1, 2, 3, 4, 5]
    hello = ServerHello.parse(messages[0][2])
    assert hello.server_version == DTLS_1_2
    assert hello.cipher_suite == 0xC02B  # the only suite of ours the browser listed first
    ext_types = {t for t, _ in hello.extensions}
    # A 1.2 answer: no supported_versions / key_share; the 1.2 extensions the client asked for.
    assert ExtensionType.SUPPORTED_VERSIONS not in ext_types and ExtensionType.KEY_SHARE not in ext_types
    assert ext_types == {
        ExtensionType.EXTENDED_MASTER_SECRET,
        ExtensionType.RENEGOTIATION_INFO,
        ExtensionType.USE_SRTP,
        ExtensionType.EC_POINT_FORMATS,
    }
    # The ECDHE group of the 1.2 handshake is x25519, not the hybrid the 1.3 key_share used.
    assert messages[2][2][:3] == b"\x03" + (29).to_bytes(2, "big")

    # Drive the rest with our client state machine, primed as if it had sent this hello.
    client = DtlsConnection(DtlsRole.CLIENT, client_cert, [("sha-256", server_cert.fingerprint())])
    _prime_client(client, second, message_seq=1, next_record_seq=record_seq)
    for datagram in flight:
        client.receive_datagram(datagram, 0.0)
    for _ in range(3):
        for datagram in client.datagrams_to_send(0.0):
            server.receive_datagram(datagram, 0.0)
        for datagram in server.datagrams_to_send(0.0):
            client.receive_datagram(datagram, 0.0)
    assert client.state is DtlsState.CONNECTED and server.state is DtlsState.CONNECTED
    (done,) = drain_events(server)
    assert isinstance(done, HandshakeCompleted)
    assert done.srtp_profile is SrtpProfile.AEAD_AES_128_GCM and done.group is NamedGroup.X25519
    assert done.extended_master_secret
    assert client.export_keying_material(b"EXTRACTOR-dtls_srtp", 56) == server.export_keying_material(
        b"EXTRACTOR-dtls_srtp", 56
    )


def _prime_client(client: DtlsConnection, hello: ClientHello, message_seq: int, next_record_seq: int) -> None:
    """Put our client in the state it would have after sending ``hello`` (white box)."""
    body = hello.serialize()
    client.state = DtlsState.HANDSHAKING
    client._client_random = hello.random
    client._client_hello = hello
    client._transcript = bytearray(encode_handshake_header(HandshakeType.CLIENT_HELLO, len(body), message_seq, 0, len(body)) + body)
    client._send_seq = message_seq + 1
    client._reassembler.next_seq = message_seq
    client._expect = _Expect.SERVER_HELLO
    client._deadline = 60.0
    client._write_seq0 = next_record_seq
