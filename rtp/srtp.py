"""SRTP/SRTCP contexts keyed from DTLS-SRTP (RFC 3711, RFC 7714, RFC 5764 §4.2).

The transform is libsrtp through :mod:`pylibsrtp`; this module chooses the
policies a forwarding server needs and turns libsrtp's error strings into
typed exceptions.

* Outbound: one session for every SSRC we send (``ssrc_any_outbound``), with
  ``allow_repeat_tx`` so a NACK answer re-protected with its original sequence
  number is not refused as a replay by our own sender.
* Inbound: one session for every SSRC the peer sends (``ssrc_any_inbound``),
  with a replay window wide enough for late retransmissions.
"""

from __future__ import annotations

from typing import Optional

import pylibsrtp

try:
    # pylibsrtp's own cffi binding: the inbound RTP transform calls libsrtp through it directly
    # (see SrtpContext.unprotect_rtp), and the compiled fan-out protects through it
    # (outbound_handle); without it, pylibsrtp's public methods and the pure fan-out serve.
    from pylibsrtp._binding import ffi as _ffi, lib as _lib
except ImportError:  # pragma: no cover - a pylibsrtp laid out otherwise
    _ffi = _lib = None

from rtp.errors import ParseError, RtpStackError
from rtp.srtp_profiles import SrtpProfile

__all__ = [
    "SrtpError",
    "SrtpAuthenticationError",
    "SrtpReplayError",
    "SrtpPacketError",
    "SrtpContext",
    "split_keying_material",
    "srtp_protect_address",
    "DEFAULT_REPLAY_WINDOW",
]

#: Packets; libsrtp accepts 64..32767. Video retransmissions can arrive a few
#: hundred packets late on a high-bitrate stream, so 64 (the libsrtp default) is too tight.
DEFAULT_REPLAY_WINDOW = 1024

_RTP_HEADER = 12
_RTCP_HEADER = 8
_SRTCP_INDEX = 4
#: Authentication tag bytes per profile (RFC 5764 §4.1.2, RFC 7714 §14.2).
_TAG_LENGTH = {SrtpProfile.AES128_CM_HMAC_SHA1_80: 10, SrtpProfile.AEAD_AES_128_GCM: 16}

_LIBSRTP_PROFILE = {
    SrtpProfile.AES128_CM_HMAC_SHA1_80: pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    SrtpProfile.AEAD_AES_128_GCM: pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
}


class SrtpError(RtpStackError):
    """An SRTP/SRTCP transform failed."""


class SrtpAuthenticationError(SrtpError):
    """The authentication tag did not verify: wrong keys, tampering, or not SRTP at all."""


class SrtpReplayError(SrtpError):
    """The packet index was seen before or is older than the replay window."""


class SrtpPacketError(SrtpError, ParseError):
    """Not a packet libsrtp can process (too short for a header, or too long for the buffer)."""


def _map_error(exc: Exception) -> SrtpError:
    text = str(exc)
    if isinstance(exc, pylibsrtp.Error):
        if text in ("authentication failure", "unable to perform desired validation"):
            # The latter is libsrtp's cant_check: no way to verify, so not authentic.
            return SrtpAuthenticationError(text)
        if text.startswith("replay check failed") or text == "packet index is too old to consider":
            return SrtpReplayError(text)
        if text in ("error parsing data", "unsupported parameter", "can't process as much data as requested"):
            # libsrtp's parse_err and bad_param: the bytes are not a packet it can read.
            return SrtpPacketError(text)
        return SrtpError(text)
    return SrtpPacketError(text)


def _status_text(status: int) -> str:
    """libsrtp's error text for a status code, as pylibsrtp names it."""
    errors = getattr(pylibsrtp, "ERRORS", ())
    return errors[status] if 0 <= status < len(errors) else f"libsrtp error {status}"


def split_keying_material(
    profile: SrtpProfile, material: bytes, is_client: bool
) -> tuple[bytes, bytes]:
    """(local master key||salt, remote master key||salt) from the DTLS exporter output.

    RFC 5764 §4.2 lays it out as client_write_key | server_write_key |
    client_write_salt | server_write_salt. The DTLS client protects with the
    client half, so ``is_client`` picks which half is ours.
    """
    key_len, salt_len = profile.key_length, profile.salt_length
    if len(material) != profile.keying_material_length:
        raise ValueError(
            f"{profile.name} needs {profile.keying_material_length} bytes of keying material, got {len(material)}"
        )
    client_key = material[:key_len]
    server_key = material[key_len : 2 * key_len]
    client_salt = material[2 * key_len : 2 * key_len + salt_len]
    server_salt = material[2 * key_len + salt_len :]
    client, server = client_key + client_salt, server_key + server_salt
    return (client, server) if is_client else (server, client)


class SrtpContext:
    """Both directions of SRTP and SRTCP for one DTLS-SRTP association."""

    __slots__ = ("profile", "_outbound", "_inbound", "_min_srtp", "_min_srtcp", "_in_srtp", "_in_cdata",
                 "_in_buffer", "_in_length", "_in_capacity", "_out_handle")

    def __init__(
        self,
        profile: SrtpProfile,
        local_master: bytes,
        remote_master: bytes,
        replay_window: int = DEFAULT_REPLAY_WINDOW,
    ) -> None:
        """``local_master``/``remote_master`` are master key followed by master salt."""
        self.profile = profile
        # Shortest packets worth handing to libsrtp; shorter ones get a clear
        # SrtpPacketError here instead of one of several libsrtp codes.
        self._min_srtp = _RTP_HEADER + _TAG_LENGTH[profile]
        self._min_srtcp = _RTCP_HEADER + _SRTCP_INDEX + _TAG_LENGTH[profile]
        libsrtp_profile = _LIBSRTP_PROFILE[profile]
        expected = profile.key_length + profile.salt_length
        for name, master in (("local", local_master), ("remote", remote_master)):
            if len(master) != expected:
                raise ValueError(f"{name} master key+salt must be {expected} bytes for {profile.name}")

        outbound = pylibsrtp.Policy(
            key=bytes(local_master),
            ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
            srtp_profile=libsrtp_profile,
        )
        outbound.allow_repeat_tx = True
        # libsrtp checks the window on protect too when allow_repeat_tx is off;
        # keep both directions alike so behaviour does not depend on which side we are.
        outbound.window_size = replay_window

        inbound = pylibsrtp.Policy(
            key=bytes(remote_master),
            ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND,
            srtp_profile=libsrtp_profile,
        )
        inbound.window_size = replay_window

        try:
            self._outbound = pylibsrtp.Session(outbound)
            self._inbound = pylibsrtp.Session(inbound)
        except pylibsrtp.Error as exc:
            raise SrtpError(f"libsrtp refused the policy: {exc}") from None
        # The outbound session's srtp_t, for outbound_handle: libsrtp made it once, for the
        # session's life (the compiled fan-out's down tracks ask for it every refresh).
        out_srtp = getattr(self._outbound, "_srtp", None)
        self._out_handle = None if _ffi is None or out_srtp is None else int(_ffi.cast("uintptr_t", out_srtp[0]))
        # The inbound RTP transform without pylibsrtp's per-call wrapper (a type check, an int
        # allocated, its buffer sliced through a Python call chain): libsrtp's srtp_unprotect on
        # the session's own reused buffer and one length cell, 0.6 us less per packet measured.
        # The session (kept in _inbound) owns the srtp_t and the buffer, so both live as long as
        # this context.
        session = self._inbound
        self._in_srtp = None
        if _lib is not None and hasattr(session, "_srtp") and hasattr(session, "_cdata"):
            self._in_srtp = session._srtp[0]
            self._in_cdata = session._cdata
            self._in_buffer = _ffi.buffer(session._cdata)
            self._in_capacity = len(self._in_buffer)
            self._in_length = _ffi.new("int *")

    @classmethod
    def from_keying_material(
        cls,
        profile: SrtpProfile,
        material: bytes,
        is_client: bool,
        replay_window: int = DEFAULT_REPLAY_WINDOW,
    ) -> "SrtpContext":
        """Build from ``export_keying_material("EXTRACTOR-dtls_srtp", profile.keying_material_length)``."""
        local, remote = split_keying_material(profile, material, is_client)
        return cls(profile, local, remote, replay_window)

    # The four transforms are the per-packet hot path: a length check and a
    # plain call, no allocation besides libsrtp's result bytes, exceptions only
    # on failure. They take ``bytes`` (pylibsrtp's requirement); passing
    # anything else is a caller bug and raises TypeError.

    def protect_rtp(self, packet: bytes) -> bytes:
        if len(packet) < _RTP_HEADER:
            raise SrtpPacketError("shorter than an RTP header")
        try:
            return self._outbound.protect(packet)
        except (pylibsrtp.Error, ValueError) as exc:
            raise _map_error(exc) from None

    @property
    def outbound_handle(self) -> Optional[int]:
        """The address of the libsrtp session `protect_rtp` uses (pylibsrtp's), for compiled
        code in this process that protects with `srtp_protect_address()`: one context, so
        both produce the same bytes and the same rollover state. Valid while this lives.
        None when pylibsrtp's binding is laid out otherwise (the pure fan-out serves)."""
        return self._out_handle

    def unprotect_rtp(self, packet: bytes) -> bytes:
        size = len(packet)
        if size < self._min_srtp:
            raise SrtpPacketError("shorter than an SRTP header and tag")
        if self._in_srtp is None:
            try:
                return self._inbound.unprotect(packet)
            except (pylibsrtp.Error, ValueError) as exc:
                raise _map_error(exc) from None
        if type(packet) is not bytes:
            raise TypeError("packet must be bytes")
        if size > self._in_capacity:
            raise SrtpPacketError("packet is too long")
        buffer, length = self._in_buffer, self._in_length
        buffer[0:size] = packet
        length[0] = size
        status = _lib.srtp_unprotect(self._in_srtp, self._in_cdata, length)
        if status:
            raise _map_error(pylibsrtp.Error(_status_text(status)))
        return buffer[0:length[0]]

    def protect_rtcp(self, packet: bytes) -> bytes:
        if len(packet) < _RTCP_HEADER:
            raise SrtpPacketError("shorter than an RTCP header")
        try:
            return self._outbound.protect_rtcp(packet)
        except (pylibsrtp.Error, ValueError) as exc:
            raise _map_error(exc) from None

    def unprotect_rtcp(self, packet: bytes) -> bytes:
        if len(packet) < self._min_srtcp:
            raise SrtpPacketError("shorter than an SRTCP header, index and tag")
        try:
            return self._inbound.unprotect_rtcp(packet)
        except (pylibsrtp.Error, ValueError) as exc:
            raise _map_error(exc) from None


def srtp_protect_address() -> int:
    """The address of `srtp_protect` in the libsrtp pylibsrtp built its contexts with (see
    `SrtpContext.outbound_handle`): libsrtp 2's `(srtp_t, void *packet, int *len)`."""
    if _ffi is None:
        raise RuntimeError("pylibsrtp's cffi binding is not reachable")
    return int(_ffi.cast("uintptr_t", _ffi.addressof(_lib, "srtp_protect")))
