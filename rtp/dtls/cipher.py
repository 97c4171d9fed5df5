"""AEAD record protection for DTLS 1.2 (AES-GCM per RFC 5288, ChaCha20-Poly1305 per RFC 7905).

In DTLS the 64-bit TLS sequence number is epoch (16 bits) || record sequence (48 bits);
it goes into the additional data and, for GCM, is also the explicit nonce we send.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from rtp.dtls.constants import CipherSuite

_AAD = struct.Struct(">HHIBHH")  # epoch, seq_hi, seq_lo, type, version, length
_TAG = 16


class BadRecordMac(Exception):
    """Internal signal: the record did not authenticate. Never leaves the connection."""


class SuiteParameters:
    """Key sizes and PRF hash of a cipher suite."""

    __slots__ = ("hash_name", "key_length", "iv_length")

    def __init__(self, hash_name: str, key_length: int, iv_length: int) -> None:
        self.hash_name = hash_name
        self.key_length = key_length
        self.iv_length = iv_length


SUITES: dict[CipherSuite, SuiteParameters] = {
    CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256: SuiteParameters("sha256", 16, 4),
    CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384: SuiteParameters("sha384", 32, 4),
    CipherSuite.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256: SuiteParameters("sha256", 32, 12),
}


class RecordCipher:
    """Seals and opens record payloads for one direction of one epoch."""

    #: Bytes a sealed payload is longer than its plaintext.
    overhead: int

    def seal(self, content_type: int, version: int, epoch: int, sequence: int, plaintext: bytes) -> bytes:
        raise NotImplementedError

    def open(self, content_type: int, version: int, epoch: int, sequence: int, payload: bytes) -> bytes:
        raise NotImplementedError


class AesGcmRecordCipher(RecordCipher):
    __slots__ = ("_aead", "_salt")
    overhead = 8 + _TAG

    def __init__(self, key: bytes, salt: bytes) -> None:
        self._aead = AESGCM(key)
        self._salt = salt

    def seal(self, content_type: int, version: int, epoch: int, sequence: int, plaintext: bytes) -> bytes:
        # Explicit nonce = the 64-bit sequence: unique per key by construction (RFC 5288 §3).
        explicit = struct.pack(">HHI", epoch, sequence >> 32, sequence & 0xFFFFFFFF)
        aad = _AAD.pack(epoch, sequence >> 32, sequence & 0xFFFFFFFF, content_type, version, len(plaintext))
        return explicit + self._aead.encrypt(self._salt + explicit, plaintext, aad)

    def open(self, content_type: int, version: int, epoch: int, sequence: int, payload: bytes) -> bytes:
        if len(payload) < self.overhead:
            raise BadRecordMac("record shorter than nonce and tag")
        aad = _AAD.pack(epoch, sequence >> 32, sequence & 0xFFFFFFFF, content_type, version, len(payload) - self.overhead)
        try:
            return self._aead.decrypt(self._salt + payload[:8], payload[8:], aad)
        except InvalidTag:
            raise BadRecordMac("GCM tag mismatch") from None


class ChaCha20RecordCipher(RecordCipher):
    __slots__ = ("_aead", "_iv_head", "_iv_tail")
    overhead = _TAG

    def __init__(self, key: bytes, iv: bytes) -> None:
        self._aead = ChaCha20Poly1305(key)
        self._iv_head = iv[:4]
        self._iv_tail = int.from_bytes(iv[4:], "big")

    def _nonce(self, epoch: int, sequence: int) -> bytes:
        # RFC 7905 §2: IV XOR left-padded 64-bit sequence number.
        return self._iv_head + (self._iv_tail ^ ((epoch << 48) | sequence)).to_bytes(8, "big")

    def seal(self, content_type: int, version: int, epoch: int, sequence: int, plaintext: bytes) -> bytes:
        aad = _AAD.pack(epoch, sequence >> 32, sequence & 0xFFFFFFFF, content_type, version, len(plaintext))
        return self._aead.encrypt(self._nonce(epoch, sequence), plaintext, aad)

    def open(self, content_type: int, version: int, epoch: int, sequence: int, payload: bytes) -> bytes:
        if len(payload) < self.overhead:
            raise BadRecordMac("record shorter than tag")
        aad = _AAD.pack(epoch, sequence >> 32, sequence & 0xFFFFFFFF, content_type, version, len(payload) - _TAG)
        try:
            return self._aead.decrypt(self._nonce(epoch, sequence), payload, aad)
        except InvalidTag:
            raise BadRecordMac("Poly1305 tag mismatch") from None


def make_record_ciphers(
    suite: CipherSuite, key_material: bytes, is_client: bool
) -> tuple[RecordCipher, RecordCipher]:
    """(write, read) ciphers from the key block (RFC 5246 §6.3 order: keys, then IVs)."""
    params = SUITES[suite]
    k, i = params.key_length, params.iv_length
    client_key, server_key = key_material[:k], key_material[k : 2 * k]
    client_iv, server_iv = key_material[2 * k : 2 * k + i], key_material[2 * k + i : 2 * k + 2 * i]
    cls = ChaCha20RecordCipher if suite is CipherSuite.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 else AesGcmRecordCipher
    client, server = cls(client_key, client_iv), cls(server_key, server_iv)
    return (client, server) if is_client else (server, client)


def key_block_length(suite: CipherSuite) -> int:
    params = SUITES[suite]
    return 2 * (params.key_length + params.iv_length)
