"""DTLS-SRTP protection profiles (RFC 5764 §4.1.2, RFC 7714 §14.2).

Shared by the DTLS ``use_srtp`` extension, which negotiates one of these, and
the SRTP contexts, which are keyed from the exporter output for it.
"""

from __future__ import annotations

import enum


class SrtpProfile(enum.IntEnum):
    """IANA "DTLS-SRTP Protection Profiles" values we implement, in preference order last-to-first."""

    AES128_CM_HMAC_SHA1_80 = 0x0001
    AEAD_AES_128_GCM = 0x0007

    @property
    def key_length(self) -> int:
        return 16

    @property
    def salt_length(self) -> int:
        return 14 if self is SrtpProfile.AES128_CM_HMAC_SHA1_80 else 12

    @property
    def keying_material_length(self) -> int:
        """Bytes to export with label ``EXTRACTOR-dtls_srtp``: two keys and two salts."""
        return 2 * (self.key_length + self.salt_length)


#: Our order of preference when we pick from a peer's list (RFC 5764 §4.1.1: the server chooses).
PREFERRED_SRTP_PROFILES: tuple[SrtpProfile, ...] = (
    SrtpProfile.AEAD_AES_128_GCM,
    SrtpProfile.AES128_CM_HMAC_SHA1_80,
)
