"""The RTP header extensions an SFU reads or writes, and the negotiated id <-> URI map.

Element ids are per-session (negotiated with ``a=extmap`` in SDP), so code
never hard-codes them: it asks an :class:`ExtensionMap` for the id of a URI
and then uses the codec functions here on the element's value bytes.
"""

from __future__ import annotations

from typing import Iterable, Optional

import attrs

from rtp.packet import Buffer, RtpParseError, find_extension_span

MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
RTP_STREAM_ID_URI = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
REPAIRED_RTP_STREAM_ID_URI = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
TRANSPORT_CC_URI = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
DEPENDENCY_DESCRIPTOR_URI = (
    "https://aomediacodec.github.io/av1-rtp-spec/#dependency-descriptor-rtp-header-extension"
)
PLAYOUT_DELAY_URI = "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay"

#: abs-send-time wraps every 64 s (6 integer bits of seconds).
ABS_SEND_TIME_PERIOD = 64.0
_ABS_SEND_TIME_UNITS_PER_SECOND = 1 << 18


class HeaderExtensionParseError(RtpParseError):
    """An extension element value that does not decode as its URI says it should."""


@attrs.define
class ExtensionMap:
    """Negotiated RFC 8285 element ids for one session, both directions of lookup."""

    uri_by_id: dict[int, str] = attrs.field(factory=dict)
    _id_by_uri: dict[str, int] = attrs.field(init=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        for ext_id, uri in self.uri_by_id.items():
            self._id_by_uri.setdefault(uri, ext_id)

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[int, str]]) -> "ExtensionMap":
        return cls(dict(pairs))

    def add(self, ext_id: int, uri: str) -> None:
        if not 1 <= ext_id <= 255:
            raise ValueError(f"extension id {ext_id} outside 1..255")
        old_uri = self.uri_by_id.get(ext_id)
        if old_uri is not None and self._id_by_uri.get(old_uri) == ext_id:
            del self._id_by_uri[old_uri]
        self.uri_by_id[ext_id] = uri
        self._id_by_uri[uri] = ext_id

    def id_of(self, uri: str) -> Optional[int]:
        return self._id_by_uri.get(uri)

    def uri_of(self, ext_id: int) -> Optional[str]:
        return self.uri_by_id.get(ext_id)


# --- sdes:mid, rtp-stream-id, repaired-rtp-stream-id (RFC 8843, RFC 8852) ----------------


def _decode_token(value: Buffer, what: str) -> str:
    if not value:
        raise HeaderExtensionParseError(f"empty {what}")
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HeaderExtensionParseError(f"{what} is not UTF-8") from exc


def decode_mid(value: Buffer) -> str:
    return _decode_token(value, "MID")


def encode_mid(mid: str) -> bytes:
    return mid.encode("utf-8")


def decode_rid(value: Buffer) -> str:
    """rtp-stream-id or repaired-rtp-stream-id (same encoding)."""
    return _decode_token(value, "RtpStreamId")


def encode_rid(rid: str) -> bytes:
    return rid.encode("utf-8")


# --- ssrc-audio-level (RFC 6464) ----------------------------------------------------------


@attrs.define(frozen=True)
class AudioLevel:
    """``level`` is the magnitude in -dBov, 0 (loudest) .. 127 (silence)."""

    voice: bool
    level: int


def decode_audio_level(value: Buffer) -> AudioLevel:
    if len(value) < 1:
        raise HeaderExtensionParseError("audio level element is empty")
    b = value[0]
    return AudioLevel(voice=bool(b & 0x80), level=b & 0x7F)


def audio_level_in(packet: Buffer, ext_id: int) -> Optional[int]:
    """The -dBov level (0 loudest .. 127 silence) an RTP packet's ssrc-audio-level element
    carries, or None when the packet has none: the receive path's per-packet read, without
    building an `AudioLevel` (the voice flag is not needed to rank speakers).
    Raises RtpParseError for a malformed extension block."""
    span = find_extension_span(packet, ext_id)
    if span is None:
        return None
    start, length = span
    if length < 1:
        raise HeaderExtensionParseError("audio level element is empty")
    return packet[start] & 0x7F


def encode_audio_level(level: AudioLevel) -> bytes:
    if not 0 <= level.level <= 127:
        raise ValueError("audio level must be 0..127 -dBov")
    return bytes(((0x80 if level.voice else 0) | level.level,))


# --- abs-send-time (24-bit 6.18 fixed point seconds) ---------------------------------------


def encode_abs_send_time(now: float) -> bytes:
    """``now`` in seconds, wrapped to the 64 s period of the field."""
    units = int(round(now * _ABS_SEND_TIME_UNITS_PER_SECOND)) & 0xFFFFFF
    return units.to_bytes(3, "big")


def decode_abs_send_time(value: Buffer) -> float:
    """Seconds in [0, 64)."""
    if len(value) != 3:
        raise HeaderExtensionParseError(f"abs-send-time needs 3 bytes, got {len(value)}")
    return ((value[0] << 16) | (value[1] << 8) | value[2]) / _ABS_SEND_TIME_UNITS_PER_SECOND


# --- transport-wide-cc sequence number ----------------------------------------------------


def decode_transport_cc_seq(value: Buffer) -> int:
    if len(value) != 2:
        raise HeaderExtensionParseError(f"transport-cc sequence needs 2 bytes, got {len(value)}")
    return (value[0] << 8) | value[1]


def encode_transport_cc_seq(seq: int) -> bytes:
    return (seq & 0xFFFF).to_bytes(2, "big")


# --- dependency descriptor (AV1 RTP spec appendix A), forwarded raw ------------------------

#: start/end-of-frame flags, template id and 16-bit frame number are mandatory.
DEPENDENCY_DESCRIPTOR_MIN_SIZE = 3


def decode_dependency_descriptor(value: Buffer) -> bytes:
    """The descriptor bytes, after checking the mandatory fields are present.

    We do not interpret the structure here: an SFU forwards it and only layer
    selection (elsewhere) needs its fields.
    """
    if len(value) < DEPENDENCY_DESCRIPTOR_MIN_SIZE:
        raise HeaderExtensionParseError("dependency descriptor shorter than its mandatory fields")
    return bytes(value)


def encode_dependency_descriptor(descriptor: bytes) -> bytes:
    if len(descriptor) < DEPENDENCY_DESCRIPTOR_MIN_SIZE:
        raise ValueError("dependency descriptor shorter than its mandatory fields")
    return bytes(descriptor)


# --- playout delay (http://www.webrtc.org/experiments/rtp-hdrext/playout-delay) -----------
#
# Three octets: the minimum and the maximum delay the receiver should render with, 12 bits
# each, in units of 10 ms. libwebrtc keeps the last values it read until told otherwise, so a
# sender that stops sending the element leaves the receiver where the last one put it.

PLAYOUT_DELAY_UNIT_MS = 10
#: The most the 12 bits hold (40.95 s); libwebrtc itself accepts a maximum of 10 s.
PLAYOUT_DELAY_MAX_MS = 0xFFF * PLAYOUT_DELAY_UNIT_MS


def encode_playout_delay(min_ms: int, max_ms: int) -> bytes:
    """The element's value; `min_ms` ≤ `max_ms`, both rounded down to 10 ms."""
    if not 0 <= min_ms <= max_ms <= PLAYOUT_DELAY_MAX_MS:
        raise ValueError(f"playout delay {min_ms}..{max_ms} ms outside 0 ≤ min ≤ max ≤ {PLAYOUT_DELAY_MAX_MS}")
    value = ((min_ms // PLAYOUT_DELAY_UNIT_MS) << 12) | (max_ms // PLAYOUT_DELAY_UNIT_MS)
    return value.to_bytes(3, "big")


def decode_playout_delay(value: Buffer) -> tuple[int, int]:
    """(minimum, maximum) in milliseconds."""
    if len(value) != 3:
        raise HeaderExtensionParseError(f"playout delay needs 3 bytes, got {len(value)}")
    raw = (value[0] << 16) | (value[1] << 8) | value[2]
    return (raw >> 12) * PLAYOUT_DELAY_UNIT_MS, (raw & 0xFFF) * PLAYOUT_DELAY_UNIT_MS
