"""DTLS: record framing, handshake fragments and messages, the cookie check, and whole connections.

``dtls-messages`` runs every record, handshake and extension parser on each input.
``dtls-connection`` feeds a sequence of datagrams to a fresh server (or client) connection;
seeds are the real flights of one of our clients and servers handshaking with each other.
"""

from __future__ import annotations

import datetime
import functools
import struct

from fuzz.target import FuzzTarget
from rtp.dtls import DtlsCertificate, DtlsConnection, DtlsRole
from rtp.dtls.cookie import check_client_hello
from rtp.dtls.errors import DtlsParseError
from rtp.dtls.fragments import HandshakeReassembler
from rtp.dtls.handshake_messages import (
    Certificate, CertificateRequest, CertificateVerify, ClientHello, ClientKeyExchange, Finished,
    HelloVerifyRequest, ServerHello, ServerHelloDone, ServerKeyExchange, parse_ec_point_formats,
    parse_renegotiation_info, parse_supported_versions_client, parse_u16_list_extension, parse_use_srtp,
    split_handshake_fragments,
)
from rtp.dtls.record import parse_record, split_records

COOKIE_SECRET = b"c" * 32
_MESSAGE_PARSERS = (
    ClientHello.parse, ClientHello.parse_prefix, ServerHello.parse, HelloVerifyRequest.parse, Certificate.parse,
    ServerKeyExchange.parse, CertificateRequest.parse, ServerHelloDone.parse, ClientKeyExchange.parse,
    CertificateVerify.parse, Finished.parse, parse_u16_list_extension, parse_ec_point_formats, parse_use_srtp,
    parse_renegotiation_info, parse_supported_versions_client, parse_record,
)


def run_messages(data: bytes) -> None:
    check_client_hello(COOKIE_SECRET, data)
    for _type, _version, _epoch, _seq, payload in split_records(data)[0]:
        _reassemble(payload)
    _reassemble(data)
    for parse in _MESSAGE_PARSERS:
        try:
            parse(data)
        except DtlsParseError:
            pass


def _reassemble(payload: bytes) -> None:
    try:
        fragments = split_handshake_fragments(payload)
    except DtlsParseError:
        return
    reassembler = HandshakeReassembler()
    for msg_type, length, message_seq, offset, fragment in fragments:
        reassembler.add(msg_type, length, message_seq, offset, fragment, 0)
    while reassembler.pop() is not None:
        pass


@functools.lru_cache(maxsize=1)
def _certificates() -> tuple[DtlsCertificate, DtlsCertificate]:
    not_before = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    return DtlsCertificate.generate(not_before), DtlsCertificate.generate(not_before)


def _client() -> DtlsConnection:
    client_cert, server_cert = _certificates()
    return DtlsConnection(DtlsRole.CLIENT, client_cert, [("sha-256", server_cert.fingerprint())])


def _server(cookie: bool) -> DtlsConnection:
    client_cert, server_cert = _certificates()
    return DtlsConnection(DtlsRole.SERVER, server_cert, [("sha-256", client_cert.fingerprint())],
                          cookie_secret=COOKIE_SECRET if cookie else None)


# First input byte: bit 0 picks the client role (else server), bit 1 the server's cookie
# exchange. The rest is datagrams, each a 16-bit length then its bytes.
AS_CLIENT, WITH_COOKIE = 0x01, 0x02


def _datagrams(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos + 2 <= len(data):
        (length,) = struct.unpack_from("!H", data, pos)
        out.append(data[pos + 2 : pos + 2 + length])
        pos += 2 + length
    return out


def run_connection(data: bytes) -> None:
    if not data:
        return
    if data[0] & AS_CLIENT:
        conn = _client()
        conn.start(0.0)
    else:
        conn = _server(cookie=bool(data[0] & WITH_COOKIE))
    now = 0.0
    for datagram in _datagrams(data[1:]):
        now += 0.25
        conn.receive_datagram(datagram, now)
        conn.handle_timeout(now)
        conn.datagrams_to_send(now)
        while conn.next_event() is not None:
            pass
    if conn.state.value == "connected":
        conn.send_application_data(b"after the fuzz")
        conn.datagrams_to_send(now)


def _pack(flags: int, datagrams: list[bytes]) -> bytes:
    return bytes([flags]) + b"".join(struct.pack("!H", len(d)) + d for d in datagrams)


@functools.lru_cache(maxsize=1)
def _handshake() -> tuple[list[bytes], list[bytes]]:
    """Datagrams a real client and a real server (with cookies) send each other, in order."""
    client, server = _client(), _server(cookie=True)
    client.start(0.0)
    to_server: list[bytes] = []
    to_client: list[bytes] = []
    for _ in range(20):
        moved = False
        for datagram in client.datagrams_to_send(0.0):
            to_server.append(datagram)
            server.receive_datagram(datagram, 0.0)
            moved = True
        for datagram in server.datagrams_to_send(0.0):
            to_client.append(datagram)
            client.receive_datagram(datagram, 0.0)
            moved = True
        if not moved:
            break
    client.send_application_data(b"hello")
    to_server += client.datagrams_to_send(0.0)
    return to_server, to_client


def connection_seeds() -> list[bytes]:
    to_server, to_client = _handshake()
    return [
        _pack(WITH_COOKIE, to_server),
        _pack(0, to_server[1:]),  # the ClientHello that carries the cookie, then the rest
        _pack(0, to_server[:1]),
        _pack(AS_CLIENT, to_client),
    ]


def message_seeds() -> list[bytes]:
    to_server, to_client = _handshake()
    out = list(to_server + to_client)
    for datagram in to_server + to_client:
        for _type, _version, _epoch, _seq, payload in split_records(datagram)[0]:
            try:
                fragments = split_handshake_fragments(payload)
            except DtlsParseError:
                continue  # encrypted (epoch 1) or not a handshake record
            out += [fragment for *_, fragment in fragments]
    return out


MESSAGES_TARGET = FuzzTarget(
    "dtls-messages", "rtp.dtls record split/parse, handshake fragments + reassembler, every message and "
    "extension parser, the stateless cookie check", run_messages, (), message_seeds, max_len=4096,
)
CONNECTION_TARGET = FuzzTarget(
    "dtls-connection", "rtp.dtls.DtlsConnection (server with and without cookie, client) fed datagrams",
    run_connection, (), connection_seeds, max_len=8192,
)
