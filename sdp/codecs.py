"""What the SFU can forward: codecs, RTCP feedback and RTP header extensions.

An SFU never transcodes, so "supported" means "we can parse enough of the
payload to find keyframes and layers". Matching follows each codec's own rules
for which fmtp parameters change the bitstream (H.264: profile and
packetization mode, RFC 6184 §8.2.2; VP9: profile-id; RED: must reference an
accepted Opus payload type).
"""

from __future__ import annotations

import enum

import attrs

from sdp.model import Codec


class MediaKind(enum.Enum):
    AUDIO = "audio"
    VIDEO = "video"
    APPLICATION = "application"


# Header extension URIs.
EXT_MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
EXT_RID = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
EXT_REPAIRED_RID = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
EXT_AUDIO_LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
EXT_ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
EXT_TWCC = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
EXT_DEPENDENCY_DESCRIPTOR = (
    "https://aomediacodec.github.io/av1-rtp-spec/#dependency-descriptor-rtp-header-extension"
)
EXT_VIDEO_ORIENTATION = "urn:3gpp:video-orientation"
# The receiver's jitter buffer floor (trio_sfu.forwarding.playout_delay): we send it, never forward it.
EXT_PLAYOUT_DELAY = "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay"

# What we accept in a client's publisher offer, per kind.
PUBLISHER_EXTENSIONS: dict[MediaKind, frozenset[str]] = {
    MediaKind.AUDIO: frozenset({EXT_MID, EXT_RID, EXT_AUDIO_LEVEL, EXT_ABS_SEND_TIME, EXT_TWCC}),
    MediaKind.VIDEO: frozenset({
        EXT_MID, EXT_RID, EXT_REPAIRED_RID, EXT_ABS_SEND_TIME, EXT_TWCC,
        EXT_DEPENDENCY_DESCRIPTOR, EXT_VIDEO_ORIENTATION,
    }),
}

# What we put in our own subscriber offers. The ids are fixed for the life of
# a session: with BUNDLE one id must mean one URI across all m-lines.
SUBSCRIBER_EXTENSIONS: dict[MediaKind, tuple[tuple[int, str], ...]] = {
    MediaKind.AUDIO: ((1, EXT_AUDIO_LEVEL), (3, EXT_TWCC)),
    MediaKind.VIDEO: ((2, EXT_ABS_SEND_TIME), (3, EXT_TWCC), (4, EXT_DEPENDENCY_DESCRIPTOR),
                      (5, EXT_VIDEO_ORIENTATION), (6, EXT_PLAYOUT_DELAY)),
}

# RTCP feedback the SFU understands (RFC 4585 nack/pli, RFC 5104 fir, REMB, TWCC).
SUPPORTED_FEEDBACK: frozenset[tuple[str, str | None]] = frozenset({
    ("nack", None), ("nack", "pli"), ("ccm", "fir"), ("goog-remb", None), ("transport-cc", None),
})

# H.264 profile_idc + profile-iop prefixes we forward: Constrained Baseline
# (42e0..) and Baseline (4200..); the level byte may differ (RFC 6184 §8.2.2).
H264_PROFILES = ("42e0", "4200")


def h264_profile(codec: Codec) -> str:
    return codec.fmtp.get("profile-level-id", "42001f").lower()[:4]


def h264_packetization_mode(codec: Codec) -> str:
    return codec.fmtp.get("packetization-mode", "0")


def vp9_profile(codec: Codec) -> str:
    return codec.fmtp.get("profile-id", "0")


def is_supported_media_codec(kind: MediaKind, codec: Codec) -> bool:
    """A primary codec (not RTX or RED, which depend on others) the SFU can forward."""
    name = codec.name.lower()
    if kind is MediaKind.AUDIO:
        return name == "opus" and codec.clock_rate == 48000 and codec.channels == 2
    if kind is not MediaKind.VIDEO or codec.clock_rate != 90000:
        return False
    if name in ("vp8", "av1"):
        return True
    if name == "vp9":
        return vp9_profile(codec) == "0"
    if name == "h264":
        return h264_packetization_mode(codec) == "1" and h264_profile(codec) in H264_PROFILES
    return False


def red_references(codec: Codec) -> list[int] | None:
    """RED's fmtp (RFC 2198 §5, e.g. ``111/111``) lists the PTs of its blocks; None if malformed."""
    params = (codec.parameters or "").strip()
    if not params:
        return None
    parts = params.split("/")
    if not all(p.isascii() and p.isdigit() and len(p) <= 3 for p in parts):
        return None
    return [int(p) for p in parts]


def is_red(kind: MediaKind, codec: Codec) -> bool:
    return kind is MediaKind.AUDIO and codec.name.lower() == "red" and codec.clock_rate == 48000


def filter_feedback(codec: Codec) -> tuple[tuple[str, str | None], ...]:
    return tuple(fb for fb in codec.feedback if fb in SUPPORTED_FEEDBACK)


_VIDEO_FB = (("goog-remb", None), ("transport-cc", None), ("ccm", "fir"), ("nack", None),
             ("nack", "pli"))
_H264_FMTP = "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id="


@attrs.frozen
class OfferedCodec:
    """A codec the server offers to subscribers, with LiveKit's payload type numbers."""

    codec: Codec
    rtx_payload_type: int | None = None


# Payload types as LiveKit uses them when it is the offerer, so clients see
# familiar numbers (docs/livekit-protocol.md §7.1).
SUBSCRIBER_CODECS: dict[MediaKind, tuple[OfferedCodec, ...]] = {
    MediaKind.AUDIO: (
        OfferedCodec(Codec(111, "opus", 48000, 2, "minptime=10;useinbandfec=1",
                           (("transport-cc", None),))),
        OfferedCodec(Codec(63, "red", 48000, 2, "111/111")),
    ),
    MediaKind.VIDEO: (
        OfferedCodec(Codec(96, "VP8", 90000, None, None, _VIDEO_FB), 97),
        OfferedCodec(Codec(98, "VP9", 90000, None, "profile-id=0", _VIDEO_FB), 99),
        OfferedCodec(Codec(108, "H264", 90000, None, _H264_FMTP + "42e01f", _VIDEO_FB), 109),
        OfferedCodec(Codec(102, "H264", 90000, None, _H264_FMTP + "42001f", _VIDEO_FB), 103),
        OfferedCodec(Codec(35, "AV1", 90000, None, None, _VIDEO_FB), 36),
    ),
}


def subscriber_codecs(kind: MediaKind, mime_types: tuple[str, ...] | None = None) -> list[Codec]:
    """The codecs (RTX included, each after its primary) offered for a down track.

    ``mime_types`` (e.g. ``("video/VP8",)``) narrows to what the publisher sends;
    the SFU cannot transcode. RED is kept only alongside Opus.
    """
    wanted = None if mime_types is None else {m.lower().split("/")[-1] for m in mime_types}
    result: list[Codec] = []
    for offered in SUBSCRIBER_CODECS.get(kind, ()):
        name = offered.codec.name.lower()
        if wanted is not None and name not in wanted and not (name == "red" and "opus" in wanted):
            continue
        result.append(offered.codec)
        if offered.rtx_payload_type is not None:
            result.append(Codec(offered.rtx_payload_type, "rtx", 90000, None,
                                f"apt={offered.codec.payload_type}"))
    return result
