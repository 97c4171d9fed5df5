"""The offer our client makes on its publisher PC, as livekit-client puts it on the wire.

What is client-specific in our SDP: the codecs we send (Opus, VP8), the header extension ids
Chromium uses, one BUNDLE transport offered ``a=setup:actpass`` with trickle ICE (no candidates
in the SDP), rid-only simulcast for video and ``a=ssrc`` lines for single-stream tracks
(``tests/fixtures/sdp/chromium_*``). The answer to the server's subscriber offer is the
project's one answerer, ``sdp.negotiator.answer_offer`` with ``RECEIVER_ANSWER``.
"""

from __future__ import annotations

import attrs

from sdp.codecs import (
    EXT_ABS_SEND_TIME,
    EXT_AUDIO_LEVEL,
    EXT_MID,
    EXT_REPAIRED_RID,
    EXT_RID,
    EXT_TWCC,
)
from sdp.errors import NegotiationError
from sdp.model import (
    Codec,
    Connection,
    Direction,
    Extmap,
    Group,
    MediaSection,
    Mid,
    Msid,
    MsidSemantic,
    Origin,
    Rid,
    SessionDescription,
    SetupRole,
    Simulcast,
    SimulcastStream,
    Ssrc,
    flag,
)
from sdp.negotiator import RTP_PROTO, LocalParams, codec_attributes, transport_attributes

_DISCARD_PORT = 9  # RFC 8840: the real address travels in trickled candidates

OPUS = Codec(111, "opus", 48000, 2, "minptime=10;useinbandfec=1", (("transport-cc", None),))
VP8 = Codec(
    96,
    "VP8",
    90000,
    None,
    None,
    (("goog-remb", None), ("transport-cc", None), ("ccm", "fir"), ("nack", None), ("nack", "pli")),
)

# Chromium's ids (tests/fixtures/sdp/chromium_publisher_offer_simulcast.sdp), so one id means one
# URI across the bundle.
AUDIO_EXTENSIONS: tuple[tuple[int, str], ...] = (
    (1, EXT_AUDIO_LEVEL),
    (2, EXT_ABS_SEND_TIME),
    (3, EXT_TWCC),
    (4, EXT_MID),
)
VIDEO_EXTENSIONS: tuple[tuple[int, str], ...] = (
    (2, EXT_ABS_SEND_TIME),
    (3, EXT_TWCC),
    (4, EXT_MID),
    (10, EXT_RID),
    (11, EXT_REPAIRED_RID),
)


@attrs.frozen
class OfferedTrack:
    """One sending m-line of a publisher offer."""

    mid: str
    kind: str  # "audio" or "video"
    stream_id: str
    track_id: str  # the AddTrackRequest cid: LiveKit matches the offer's msid track id to it
    cname: str
    #: One SSRC per layer, in the order of ``rids`` (one SSRC when not simulcast).
    ssrcs: tuple[int, ...]
    #: Simulcast rids, lowest quality first (``q``, ``h``, ``f``); empty for one stream.
    rids: tuple[str, ...] = ()


def build_publisher_offer(local: LocalParams, tracks: list[OfferedTrack], version: int) -> SessionDescription:
    """A sendonly offer with one m-line per published track, in publication order.

    The m-line order must never change between renegotiations (RFC 8829 §5.2.2),
    so the caller passes every track published so far, oldest first.
    """
    if not tracks:
        raise NegotiationError("a publisher offer needs at least one track")
    offer = SessionDescription(origin=Origin("-", local.session_id, version))
    offer.attributes.append(flag("extmap-allow-mixed"))
    offer.attributes.append(MsidSemantic("WMS", tuple(dict.fromkeys(t.stream_id for t in tracks))))
    offer.attributes.append(Group("BUNDLE", tuple(t.mid for t in tracks)))
    for track in tracks:
        codec = OPUS if track.kind == "audio" else VP8
        section = MediaSection(track.kind, _DISCARD_PORT, RTP_PROTO, [str(codec.payload_type)],
                               connections=[Connection()])
        lines = section.attributes
        lines += transport_attributes(local, SetupRole.ACTPASS)
        lines.append(Mid(track.mid))
        extensions = AUDIO_EXTENSIONS if track.kind == "audio" else VIDEO_EXTENSIONS
        lines += [Extmap(ext_id, uri) for ext_id, uri in extensions]
        lines.append(flag(Direction.SENDONLY.value))
        lines.append(Msid(track.stream_id, track.track_id))
        lines += [flag("rtcp-mux"), flag("rtcp-rsize")]
        lines += codec_attributes([codec])
        if track.rids:
            # Rid-only simulcast as Chromium sends it: the SFU learns SSRCs from the rid extension.
            lines += [Rid(rid, "send") for rid in track.rids]
            lines.append(Simulcast(send=tuple((SimulcastStream(rid),) for rid in track.rids)))
        else:
            for ssrc in track.ssrcs[:1]:
                lines.append(Ssrc(ssrc, "cname", track.cname))
                lines.append(Ssrc(ssrc, "msid", f"{track.stream_id} {track.track_id}"))
        offer.media.append(section)
    return offer


__all__ = [
    "AUDIO_EXTENSIONS",
    "OPUS",
    "OfferedTrack",
    "VIDEO_EXTENSIONS",
    "VP8",
    "build_publisher_offer",
]
