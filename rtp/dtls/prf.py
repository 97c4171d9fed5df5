"""TLS 1.2 key derivation: the PRF (RFC 5246 §5), master secrets (incl. RFC 7627 EMS),
key expansion, Finished verify_data and the keying-material exporter (RFC 5705)."""

from __future__ import annotations

import hmac


def prf(hash_name: str, secret: bytes, label: bytes, seed: bytes, length: int) -> bytes:
    """P_<hash>(secret, label + seed) truncated to ``length`` bytes."""
    seed = label + seed
    out = bytearray()
    a = seed
    while len(out) < length:
        a = hmac.digest(secret, a, hash_name)
        out += hmac.digest(secret, a + seed, hash_name)
    return bytes(out[:length])


def master_secret(hash_name: str, premaster: bytes, client_random: bytes, server_random: bytes) -> bytes:
    return prf(hash_name, premaster, b"master secret", client_random + server_random, 48)


def extended_master_secret(hash_name: str, premaster: bytes, session_hash: bytes) -> bytes:
    """RFC 7627 §4: binds the master secret to the whole transcript up to ClientKeyExchange."""
    return prf(hash_name, premaster, b"extended master secret", session_hash, 48)


def key_block(hash_name: str, master: bytes, client_random: bytes, server_random: bytes, length: int) -> bytes:
    # Note the order: server_random first for key expansion (RFC 5246 §6.3).
    return prf(hash_name, master, b"key expansion", server_random + client_random, length)


def verify_data(hash_name: str, master: bytes, finished_label: bytes, transcript_hash: bytes) -> bytes:
    return prf(hash_name, master, finished_label, transcript_hash, 12)


def export_keying_material(
    hash_name: str,
    master: bytes,
    label: bytes,
    client_random: bytes,
    server_random: bytes,
    context: bytes | None,
    length: int,
) -> bytes:
    """RFC 5705 §4: a missing context and an empty one give different output."""
    seed = client_random + server_random
    if context is not None:
        if len(context) > 0xFFFF:
            raise ValueError("exporter context longer than 65535 bytes")
        seed += len(context).to_bytes(2, "big") + context
    return prf(hash_name, master, label, seed, length)
