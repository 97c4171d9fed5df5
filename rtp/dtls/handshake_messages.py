"""Codec of DTLS 1.2 handshake messages and of the hello extensions we act on.

Each message class has ``serialize() -> bytes`` (the body, without the 12-byte DTLS
handshake header) and ``parse(body) -> message``. Extensions stay as raw (type, data)
pairs on the hellos so unknown ones pass through untouched; helper functions decode
the ones we use.
"""

from __future__ import annotations

import attrs

from rtp.dtls.constants import EC_CURVE_TYPE_NAMED_CURVE
from rtp.dtls.errors import DtlsParseError
from rtp.dtls.wire import Reader, u16_list, u16_vector, vec8, vec16, vec24

HANDSHAKE_HEADER_LENGTH = 12
MAX_EXTENSIONS = 64

Extension = tuple[int, bytes]


def encode_handshake_header(msg_type: int, length: int, message_seq: int, fragment_offset: int, fragment_length: int) -> bytes:
    return (
        bytes((msg_type,))
        + length.to_bytes(3, "big")
        + message_seq.to_bytes(2, "big")
        + fragment_offset.to_bytes(3, "big")
        + fragment_length.to_bytes(3, "big")
    )


def split_handshake_fragments(payload: bytes) -> list[tuple[int, int, int, int, bytes]]:
    """Handshake fragments of one record: (msg_type, length, message_seq, fragment_offset, data).

    A record may carry several fragments back to back (RFC 6347 §4.2.3).
    """
    fragments = []
    r = Reader(payload)
    while r.remaining:
        msg_type = r.u8()
        length = r.u24()
        message_seq = r.u16()
        offset = r.u24()
        data = r.vec24()
        if offset + len(data) > length:
            raise DtlsParseError("handshake fragment extends past the message length")
        fragments.append((msg_type, length, message_seq, offset, data))
    return fragments


def _encode_extensions(extensions: tuple[Extension, ...]) -> bytes:
    return vec16(b"".join(t.to_bytes(2, "big") + vec16(d) for t, d in extensions))


def _parse_extensions(r: Reader) -> tuple[Extension, ...]:
    if not r.remaining:
        return ()
    block = Reader(r.vec16())
    extensions = []
    seen = set()
    while block.remaining:
        ext_type = block.u16()
        data = block.vec16()
        if ext_type in seen:
            # RFC 5246 §7.4.1.4: at most one extension of each type.
            raise DtlsParseError(f"duplicate extension {ext_type}")
        seen.add(ext_type)
        extensions.append((ext_type, data))
        if len(extensions) > MAX_EXTENSIONS:
            raise DtlsParseError("too many extensions")
    return tuple(extensions)


def find_extension(extensions: tuple[Extension, ...], ext_type: int) -> bytes | None:
    for t, d in extensions:
        if t == ext_type:
            return d
    return None


@attrs.frozen
class ClientHello:
    client_version: int
    random: bytes
    session_id: bytes
    cookie: bytes
    cipher_suites: tuple[int, ...]
    compression_methods: bytes
    extensions: tuple[Extension, ...] = ()

    def serialize(self) -> bytes:
        return (
            self.client_version.to_bytes(2, "big")
            + self.random
            + vec8(self.session_id)
            + vec8(self.cookie)
            + u16_vector(self.cipher_suites)
            + vec8(self.compression_methods)
            + _encode_extensions(self.extensions)
        )

    @classmethod
    def parse(cls, body: bytes) -> "ClientHello":
        r = Reader(body)
        hello = cls._parse_prefix(r)
        extensions = _parse_extensions(r)
        r.expect_end()
        return attrs.evolve(hello, extensions=extensions)

    @classmethod
    def parse_prefix(cls, data: bytes) -> "ClientHello":
        """Everything up to the compression methods; the cookie check needs only this,
        and it fits in the first fragment even when the extensions (e.g. a post-quantum
        key share) push the whole message over several records."""
        return cls._parse_prefix(Reader(data))

    @classmethod
    def _parse_prefix(cls, r: Reader) -> "ClientHello":
        version = r.u16()
        random = r.raw(32)
        session_id = r.vec8(0, 32)
        cookie = r.vec8(0, 255)
        suites = u16_list(r.vec16(2, 0xFFFE))
        compression = r.vec8(1, 255)
        return cls(version, random, session_id, cookie, tuple(suites), compression, ())


@attrs.frozen
class ServerHello:
    server_version: int
    random: bytes
    session_id: bytes
    cipher_suite: int
    compression_method: int
    extensions: tuple[Extension, ...] = ()

    def serialize(self) -> bytes:
        return (
            self.server_version.to_bytes(2, "big")
            + self.random
            + vec8(self.session_id)
            + self.cipher_suite.to_bytes(2, "big")
            + bytes((self.compression_method,))
            + _encode_extensions(self.extensions)
        )

    @classmethod
    def parse(cls, body: bytes) -> "ServerHello":
        r = Reader(body)
        version = r.u16()
        random = r.raw(32)
        session_id = r.vec8(0, 32)
        suite = r.u16()
        compression = r.u8()
        extensions = _parse_extensions(r)
        r.expect_end()
        return cls(version, random, session_id, suite, compression, extensions)


@attrs.frozen
class HelloVerifyRequest:
    server_version: int
    cookie: bytes

    def serialize(self) -> bytes:
        return self.server_version.to_bytes(2, "big") + vec8(self.cookie)

    @classmethod
    def parse(cls, body: bytes) -> "HelloVerifyRequest":
        r = Reader(body)
        version = r.u16()
        cookie = r.vec8(0, 255)
        r.expect_end()
        return cls(version, cookie)


@attrs.frozen
class Certificate:
    certificates: tuple[bytes, ...]

    def serialize(self) -> bytes:
        return vec24(b"".join(vec24(c) for c in self.certificates))

    @classmethod
    def parse(cls, body: bytes) -> "Certificate":
        r = Reader(body)
        chain = Reader(r.vec24())
        r.expect_end()
        certs = []
        while chain.remaining:
            certs.append(chain.vec24(1))
        return cls(tuple(certs))


@attrs.frozen
class ServerKeyExchange:
    """ECDHE parameters (RFC 8422 §5.4) plus the TLS 1.2 digitally-signed struct."""

    named_group: int
    public_key: bytes
    signature_scheme: int
    signature: bytes

    def params(self) -> bytes:
        """The ServerECDHParams bytes, which the signature covers."""
        return bytes((EC_CURVE_TYPE_NAMED_CURVE,)) + self.named_group.to_bytes(2, "big") + vec8(self.public_key)

    def serialize(self) -> bytes:
        return self.params() + self.signature_scheme.to_bytes(2, "big") + vec16(self.signature)

    @classmethod
    def parse(cls, body: bytes) -> "ServerKeyExchange":
        r = Reader(body)
        if r.u8() != EC_CURVE_TYPE_NAMED_CURVE:
            raise DtlsParseError("only named_curve ECDHE parameters are supported")
        group = r.u16()
        public = r.vec8(1)
        scheme = r.u16()
        signature = r.vec16()
        r.expect_end()
        return cls(group, public, scheme, signature)


@attrs.frozen
class CertificateRequest:
    certificate_types: bytes
    signature_schemes: tuple[int, ...]
    certificate_authorities: bytes = b""

    def serialize(self) -> bytes:
        return vec8(self.certificate_types) + u16_vector(self.signature_schemes) + vec16(self.certificate_authorities)

    @classmethod
    def parse(cls, body: bytes) -> "CertificateRequest":
        r = Reader(body)
        types = r.vec8(1)
        schemes = u16_list(r.vec16(2, 0xFFFE))
        authorities = r.vec16()
        r.expect_end()
        return cls(types, tuple(schemes), authorities)


@attrs.frozen
class ServerHelloDone:
    def serialize(self) -> bytes:
        return b""

    @classmethod
    def parse(cls, body: bytes) -> "ServerHelloDone":
        if body:
            raise DtlsParseError("ServerHelloDone has a body")
        return cls()


@attrs.frozen
class ClientKeyExchange:
    public_key: bytes

    def serialize(self) -> bytes:
        return vec8(self.public_key)

    @classmethod
    def parse(cls, body: bytes) -> "ClientKeyExchange":
        r = Reader(body)
        public = r.vec8(1)
        r.expect_end()
        return cls(public)


@attrs.frozen
class CertificateVerify:
    signature_scheme: int
    signature: bytes

    def serialize(self) -> bytes:
        return self.signature_scheme.to_bytes(2, "big") + vec16(self.signature)

    @classmethod
    def parse(cls, body: bytes) -> "CertificateVerify":
        r = Reader(body)
        scheme = r.u16()
        signature = r.vec16()
        r.expect_end()
        return cls(scheme, signature)


@attrs.frozen
class Finished:
    verify_data: bytes

    def serialize(self) -> bytes:
        return self.verify_data

    @classmethod
    def parse(cls, body: bytes) -> "Finished":
        if len(body) != 12:
            raise DtlsParseError("Finished verify_data must be 12 bytes for our cipher suites")
        return cls(body)


# --- extension bodies -------------------------------------------------------------------


def encode_u16_list_extension(values: "list[int] | tuple[int, ...]") -> bytes:
    """supported_groups and signature_algorithms share this shape."""
    return u16_vector(values)


def parse_u16_list_extension(data: bytes) -> list[int]:
    r = Reader(data)
    values = u16_list(r.vec16())
    r.expect_end()
    return values


def encode_ec_point_formats(formats: bytes) -> bytes:
    return vec8(formats)


def parse_ec_point_formats(data: bytes) -> bytes:
    r = Reader(data)
    formats = r.vec8(1)
    r.expect_end()
    return formats


def encode_use_srtp(profiles: "list[int] | tuple[int, ...]", mki: bytes = b"") -> bytes:
    return u16_vector(profiles) + vec8(mki)


def parse_use_srtp(data: bytes) -> tuple[list[int], bytes]:
    """RFC 5764 §4.1.1: (protection profiles, srtp_mki)."""
    r = Reader(data)
    profiles = u16_list(r.vec16(2, 0xFFFF))
    mki = r.vec8()
    r.expect_end()
    return profiles, mki


def parse_renegotiation_info(data: bytes) -> bytes:
    r = Reader(data)
    info = r.vec8()
    r.expect_end()
    return info


def parse_supported_versions_client(data: bytes) -> list[int]:
    r = Reader(data)
    versions = u16_list(r.vec8(2, 254))
    r.expect_end()
    return versions
