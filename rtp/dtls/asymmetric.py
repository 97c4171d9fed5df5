"""ECDHE key shares (x25519, secp256r1) and the signature schemes we sign and verify with."""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, x25519

from rtp.dtls.constants import AlertDescription, NamedGroup, SignatureScheme
from rtp.dtls.errors import DtlsError

SUPPORTED_GROUPS: tuple[NamedGroup, ...] = (NamedGroup.X25519, NamedGroup.SECP256R1)

#: Schemes we accept from peers (ServerKeyExchange, CertificateVerify), in preference order.
VERIFY_SCHEMES: tuple[SignatureScheme, ...] = (
    SignatureScheme.ECDSA_SECP256R1_SHA256,
    SignatureScheme.ECDSA_SECP384R1_SHA384,
    SignatureScheme.ECDSA_SECP521R1_SHA512,
    SignatureScheme.RSA_PKCS1_SHA256,
    SignatureScheme.RSA_PKCS1_SHA384,
    SignatureScheme.RSA_PKCS1_SHA512,
)
#: The one scheme we sign with: our certificates are P-256.
SIGN_SCHEME = SignatureScheme.ECDSA_SECP256R1_SHA256

_HASHES = {
    SignatureScheme.ECDSA_SECP256R1_SHA256: hashes.SHA256,
    SignatureScheme.ECDSA_SECP384R1_SHA384: hashes.SHA384,
    SignatureScheme.ECDSA_SECP521R1_SHA512: hashes.SHA512,
    SignatureScheme.RSA_PKCS1_SHA256: hashes.SHA256,
    SignatureScheme.RSA_PKCS1_SHA384: hashes.SHA384,
    SignatureScheme.RSA_PKCS1_SHA512: hashes.SHA512,
}


class KeyShare:
    """Our ephemeral ECDHE private key for one handshake and its wire encoding."""

    __slots__ = ("group", "_private", "public_bytes")

    def __init__(self, group: NamedGroup) -> None:
        self.group = group
        if group is NamedGroup.X25519:
            self._private = x25519.X25519PrivateKey.generate()
            self.public_bytes = self._private.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
        elif group is NamedGroup.SECP256R1:
            self._private = ec.generate_private_key(ec.SECP256R1())
            self.public_bytes = self._private.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
        else:
            raise ValueError(f"unsupported group {group!r}")

    def exchange(self, peer_public: bytes) -> bytes:
        """The premaster secret; a point that is invalid or off the curve is illegal_parameter."""
        try:
            if self.group is NamedGroup.X25519:
                if len(peer_public) != 32:
                    raise ValueError("x25519 public keys are 32 bytes")
                return self._private.exchange(x25519.X25519PublicKey.from_public_bytes(peer_public))
            if len(peer_public) != 65 or peer_public[0] != 4:
                raise ValueError("secp256r1 key shares must be uncompressed points")
            peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), peer_public)
            return self._private.exchange(ec.ECDH(), peer)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise DtlsError(f"bad ECDHE public key: {exc}", AlertDescription.ILLEGAL_PARAMETER) from None


def sign(private_key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    return private_key.sign(data, ec.ECDSA(hashes.SHA256()))


def verify(public_key: object, scheme: int, signature: bytes, data: bytes) -> bool:
    """True if ``signature`` over ``data`` verifies with ``public_key`` under ``scheme``."""
    try:
        scheme = SignatureScheme(scheme)
    except ValueError:
        return False
    hash_cls = _HASHES.get(scheme)
    if hash_cls is None:
        return False
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey) and scheme.name.startswith("ECDSA"):
            public_key.verify(signature, data, ec.ECDSA(hash_cls()))
            return True
        if isinstance(public_key, rsa.RSAPublicKey) and scheme.name.startswith("RSA_PKCS1"):
            public_key.verify(signature, data, padding.PKCS1v15(), hash_cls())
            return True
    except (InvalidSignature, ValueError):
        return False
    return False
