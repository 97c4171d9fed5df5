"""Stateless HelloVerifyRequest cookies (RFC 6347 §4.2.1).

The cookie is an HMAC over the ClientHello fields that a client must repeat unchanged
(version, random, session id, cipher suites, compression) plus a caller context such as
the client's transport address, keyed by a server secret. A server therefore keeps no
state for a client until it comes back with a cookie that verifies.
"""

from __future__ import annotations

import enum
import hmac

from rtp.dtls.constants import DTLS_1_0, ContentType, HandshakeType
from rtp.dtls.errors import DtlsParseError
from rtp.dtls.handshake_messages import (
    ClientHello,
    HelloVerifyRequest,
    encode_handshake_header,
    split_handshake_fragments,
)
from rtp.dtls.record import encode_record_header, split_records
from rtp.dtls.wire import u16_vector

COOKIE_LENGTH = 32


def compute_cookie(secret: bytes, hello: ClientHello, context: bytes = b"") -> bytes:
    mac = hmac.new(secret, digestmod="sha256")
    mac.update(len(context).to_bytes(2, "big") + context)
    mac.update(hello.client_version.to_bytes(2, "big") + hello.random + bytes((len(hello.session_id),)) + hello.session_id)
    mac.update(u16_vector(hello.cipher_suites) + bytes((len(hello.compression_methods),)) + hello.compression_methods)
    return mac.digest()[:COOKIE_LENGTH]


def cookie_is_valid(secret: bytes, hello: ClientHello, context: bytes = b"") -> bool:
    return len(hello.cookie) == COOKIE_LENGTH and hmac.compare_digest(hello.cookie, compute_cookie(secret, hello, context))


def hello_verify_request_datagram(record_sequence: int, message_seq: int, cookie: bytes) -> bytes:
    """RFC 6347 §4.2.1: echo the ClientHello's record and message sequence numbers,
    and use version DTLS 1.0 in the HelloVerifyRequest whatever is negotiated later."""
    body = HelloVerifyRequest(DTLS_1_0, cookie).serialize()
    handshake = encode_handshake_header(HandshakeType.HELLO_VERIFY_REQUEST, len(body), message_seq, 0, len(body)) + body
    return encode_record_header(ContentType.HANDSHAKE, DTLS_1_0, 0, record_sequence, len(handshake)) + handshake


class CookieVerdict(enum.Enum):
    #: The datagram starts a ClientHello whose cookie verifies: create the connection now.
    VALID = "valid"
    #: A ClientHello without a valid cookie: send the HelloVerifyRequest, keep nothing.
    HELLO_VERIFY_REQUEST = "hello_verify_request"
    #: Anything else (not a first ClientHello fragment, malformed): drop it.
    IGNORE = "ignore"


def check_client_hello(secret: bytes, datagram: bytes, context: bytes = b"") -> tuple[CookieVerdict, bytes | None]:
    """Look at the first ClientHello fragment of a datagram; never raises, allocates nothing lasting."""
    records, _ = split_records(datagram)
    for content_type, _version, epoch, sequence, payload in records:
        if content_type != ContentType.HANDSHAKE or epoch != 0:
            continue
        try:
            fragments = split_handshake_fragments(payload)
        except DtlsParseError:
            continue
        for msg_type, _length, message_seq, offset, data in fragments:
            if msg_type != HandshakeType.CLIENT_HELLO or offset != 0:
                continue
            try:
                hello = ClientHello.parse_prefix(data)
            except DtlsParseError:
                continue
            if cookie_is_valid(secret, hello, context):
                return CookieVerdict.VALID, None
            return CookieVerdict.HELLO_VERIFY_REQUEST, hello_verify_request_datagram(
                sequence, message_seq, compute_cookie(secret, hello, context)
            )
    return CookieVerdict.IGNORE, None


class DtlsCookieResponder:
    """For a UDP mux: answer cookie-less ClientHellos without creating a connection.

    ``respond`` returns (VALID, None) when the datagram should go to a new
    :class:`~rtp.dtls.connection.DtlsConnection` (created with ``cookie_secret=None``, the
    check having been done here), (HELLO_VERIFY_REQUEST, reply) to send back, or (IGNORE, None).
    """

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("cookie secret must be at least 16 bytes")
        self._secret = secret

    def respond(self, datagram: bytes, context: bytes = b"") -> tuple[CookieVerdict, bytes | None]:
        return check_client_hello(self._secret, datagram, context)
