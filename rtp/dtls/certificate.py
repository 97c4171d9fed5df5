"""Our DTLS identity (self-signed ECDSA P-256) and SDP fingerprints (RFC 8122)."""

from __future__ import annotations

import datetime
import hmac
from collections.abc import Iterable

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

#: SDP hash function names (RFC 8122 §5, lower case as IANA lists them) we can check.
FINGERPRINT_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha-1": hashes.SHA1,
    "sha-256": hashes.SHA256,
    "sha-384": hashes.SHA384,
    "sha-512": hashes.SHA512,
}


def certificate_fingerprint(der: bytes, algorithm: str = "sha-256") -> str:
    """Uppercase colon-separated hex digest of a DER certificate, as in ``a=fingerprint``."""
    digest = hashes.Hash(FINGERPRINT_HASHES[algorithm.lower()]())
    digest.update(der)
    return ":".join(f"{b:02X}" for b in digest.finalize())


def fingerprints_match(der: bytes, expected: Iterable[tuple[str, str]]) -> bool:
    """True when every fingerprint we can compute matches and there is at least one.

    Like aiortc and browsers: entries with hash names we do not know are ignored, but
    an SDP with none we know cannot authenticate anything, so that is a mismatch.
    """
    checked = 0
    for algorithm, value in expected:
        if algorithm.lower() not in FINGERPRINT_HASHES:
            continue
        ours = certificate_fingerprint(der, algorithm)
        if not hmac.compare_digest(ours, value.strip().upper()):
            return False
        checked += 1
    return checked > 0


@attrs.frozen
class DtlsCertificate:
    """A certificate with its private key; the leaf is all DTLS-SRTP ever sends."""

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey
    der: bytes = attrs.field(repr=False)

    @classmethod
    def generate(
        cls,
        not_before: datetime.datetime,
        *,
        validity: datetime.timedelta = datetime.timedelta(days=30),
        common_name: str = "trio-sfu",
    ) -> "DtlsCertificate":
        """A fresh self-signed P-256 certificate; the caller passes the time (no clock here)."""
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            # Peers only check the fingerprint, but a day of slack avoids clock-skew rejects.
            .not_valid_before(not_before - datetime.timedelta(days=1))
            .not_valid_after(not_before + validity)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key, cert.public_bytes(serialization.Encoding.DER))

    @classmethod
    def from_pem(cls, certificate_pem: bytes, key_pem: bytes, password: bytes | None = None) -> "DtlsCertificate":
        cert = x509.load_pem_x509_certificate(certificate_pem)
        key = serialization.load_pem_private_key(key_pem, password)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
            raise ValueError("DTLS certificates must have an ECDSA P-256 key (our cipher suites are ECDSA)")
        if cert.public_key() != key.public_key():
            raise ValueError("certificate and private key do not belong together")
        return cls(cert, key, cert.public_bytes(serialization.Encoding.DER))

    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def private_key_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def fingerprint(self, algorithm: str = "sha-256") -> str:
        return certificate_fingerprint(self.der, algorithm)
