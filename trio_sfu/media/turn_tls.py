"""The TURN server's TLS context: the configured certificate, or a self-signed one in development.

A browser verifies a `turns:` server's certificate like a web site's (name and chain), so a
production server names its certificate in `turn.cert_file`/`turn.key_file` (the one of
`turn.domain`). In development, with no certificate configured, one is made at start-up for the
node's addresses (and `turn.domain`, and `localhost`) and written to a file whose path is
logged. It is its own CA (basicConstraints CA:TRUE), so a client can trust it directly:

* Chromium/Chrome on Linux: `certutil -d sql:$HOME/.pki/nssdb -A -t C,, -n trio-sfu-turn -i PATH`
  (libnss3-tools), then restart the browser;
* Python (aioice, `ssl`): `ssl.create_default_context(cafile=PATH)`.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import tempfile
from typing import Sequence

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

#: How long a development certificate is valid.
DEV_CERT_DAYS = 30


@attrs.frozen
class TlsMaterial:
    context: ssl.SSLContext
    # The self-signed certificate's file in development (what a client must trust); else None.
    self_signed_path: str | None


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context


def self_signed(names: Sequence[str], directory: str | None = None) -> tuple[str, str]:
    """Write a self-signed certificate for `names` (host names or IP addresses) and its key;
    return their paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    alternatives: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):
        try:
            alternatives.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alternatives.append(x509.DNSName(name))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "trio-sfu TURN (development)")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=DEV_CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory = directory or tempfile.mkdtemp(prefix="trio-sfu-turn-")
    cert_path = os.path.join(directory, "turn-cert.pem")
    key_path = os.path.join(directory, "turn-key.pem")
    with open(key_path, "wb") as fh:
        os.chmod(key_path, 0o600)
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    with open(cert_path, "wb") as fh:
        fh.write(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def tls_material(cert_file: str, key_file: str, names: Sequence[str]) -> TlsMaterial:
    """The configured certificate, or (none configured) a new self-signed one for `names`."""
    if cert_file:
        return TlsMaterial(server_context(cert_file, key_file), None)
    cert_path, key_path = self_signed(names)
    return TlsMaterial(server_context(cert_path, key_path), cert_path)
