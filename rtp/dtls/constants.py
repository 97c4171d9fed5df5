"""Wire constants of DTLS 1.2 (RFC 6347, RFC 5246 and the extension RFCs), as enums.

Kept in one place so the codec, the record layer and the state machine agree on numbers.
"""

from __future__ import annotations

import enum

#: Version numbers are one's complement of the TLS version, so "newer" is numerically smaller.
DTLS_1_0 = 0xFEFF
DTLS_1_2 = 0xFEFD
DTLS_1_3 = 0xFEFC


class ContentType(enum.IntEnum):
    CHANGE_CIPHER_SPEC = 20
    ALERT = 21
    HANDSHAKE = 22
    APPLICATION_DATA = 23


class HandshakeType(enum.IntEnum):
    HELLO_REQUEST = 0
    CLIENT_HELLO = 1
    SERVER_HELLO = 2
    HELLO_VERIFY_REQUEST = 3
    CERTIFICATE = 11
    SERVER_KEY_EXCHANGE = 12
    CERTIFICATE_REQUEST = 13
    SERVER_HELLO_DONE = 14
    CERTIFICATE_VERIFY = 15
    CLIENT_KEY_EXCHANGE = 16
    FINISHED = 20


class AlertLevel(enum.IntEnum):
    WARNING = 1
    FATAL = 2


class AlertDescription(enum.IntEnum):
    CLOSE_NOTIFY = 0
    UNEXPECTED_MESSAGE = 10
    BAD_RECORD_MAC = 20
    RECORD_OVERFLOW = 22
    HANDSHAKE_FAILURE = 40
    BAD_CERTIFICATE = 42
    UNSUPPORTED_CERTIFICATE = 43
    CERTIFICATE_REVOKED = 44
    CERTIFICATE_EXPIRED = 45
    CERTIFICATE_UNKNOWN = 46
    ILLEGAL_PARAMETER = 47
    UNKNOWN_CA = 48
    ACCESS_DENIED = 49
    DECODE_ERROR = 50
    DECRYPT_ERROR = 51
    PROTOCOL_VERSION = 70
    INSUFFICIENT_SECURITY = 71
    INTERNAL_ERROR = 80
    INAPPROPRIATE_FALLBACK = 86
    USER_CANCELED = 90
    NO_RENEGOTIATION = 100
    MISSING_EXTENSION = 109
    UNSUPPORTED_EXTENSION = 110

    @classmethod
    def from_wire(cls, value: int) -> "AlertDescription | int":
        """Known descriptions as the enum; unknown ones stay plain ints instead of raising."""
        try:
            return cls(value)
        except ValueError:
            return value


class CipherSuite(enum.IntEnum):
    TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 = 0xC02B
    TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 = 0xC02C
    TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 = 0xCCA9


#: Signalling value a client may send instead of an empty renegotiation_info (RFC 5746 §3.3).
TLS_EMPTY_RENEGOTIATION_INFO_SCSV = 0x00FF


class NamedGroup(enum.IntEnum):
    SECP256R1 = 23
    SECP384R1 = 24
    X25519 = 29
    X25519MLKEM768 = 0x11EC


class SignatureScheme(enum.IntEnum):
    RSA_PKCS1_SHA256 = 0x0401
    ECDSA_SECP256R1_SHA256 = 0x0403
    RSA_PKCS1_SHA384 = 0x0501
    ECDSA_SECP384R1_SHA384 = 0x0503
    RSA_PKCS1_SHA512 = 0x0601
    ECDSA_SECP521R1_SHA512 = 0x0603
    RSA_PSS_RSAE_SHA256 = 0x0804


class ExtensionType(enum.IntEnum):
    SUPPORTED_GROUPS = 10
    EC_POINT_FORMATS = 11
    SIGNATURE_ALGORITHMS = 13
    USE_SRTP = 14
    ENCRYPT_THEN_MAC = 22
    EXTENDED_MASTER_SECRET = 23
    SESSION_TICKET = 35
    SUPPORTED_VERSIONS = 43
    KEY_SHARE = 51
    RENEGOTIATION_INFO = 0xFF01


#: ClientCertificateType ecdsa_sign (RFC 8422 §5.5).
CLIENT_CERTIFICATE_TYPE_ECDSA_SIGN = 64
#: ECCurveType named_curve (RFC 8422 §5.4).
EC_CURVE_TYPE_NAMED_CURVE = 3
#: ECPointFormat uncompressed.
EC_POINT_FORMAT_UNCOMPRESSED = 0
