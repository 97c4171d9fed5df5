"""The client's side of offer/answer: a publisher offer, and the answer to a server's subscriber offer.

``sdp.negotiator`` is written for the server (it answers publisher offers and
offers to subscribers), so the two client-side descriptions are built here from
the same ``sdp.model`` classes. They follow what livekit-client puts on the wire
(``tests/fixtures/sdp/chromium_*``): one BUNDLE transport, ``a=setup:actpass``
in our offers and ``a=setup:active`` in our answers, trickle ICE (no candidates
in the SDP), rid-only simulcast for video, ``a=ssrc`` lines for single-stream
tracks.
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
    Fingerprint,
    Fmtp,
    Group,
    IceOptions,
    IcePwd,
    IceUfrag,
    MaxMessageSize,
    MediaSection,
    Mid,
    Msid,
    MsidSemantic,
    Origin,
    Rid,
    RtcpFb,
    Rtpmap,
    SctpPort,
    SessionDescription,
    Setup,
    SetupRole,
    Simulcast,
    SimulcastStream,
    Ssrc,
    flag,
)

RTP_PROTO = "UDP/TLS/RTP/SAVPF"
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
class Transport:
    """Our ICE/DTLS identity on one PeerConnection: the same on every m-line (BUNDLE)."""

    ice_ufrag: str
    ice_pwd: str
    fingerprint: Fingerprint
    session_id: int


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


def _transport_lines(transport: Transport, setup: SetupRole) -> list:
    return [
        IceUfrag(transport.ice_ufrag),
        IcePwd(transport.ice_pwd),
        IceOptions(("trickle",)),
        transport.fingerprint,
        Setup(setup),
    ]


def _codec_lines(codecs: list[Codec] | tuple[Codec, ...]) -> list:
    lines: list = []
    for codec in codecs:
        lines.append(Rtpmap(codec.payload_type, codec.name, codec.clock_rate, codec.channels))
        lines += [RtcpFb(codec.payload_type, kind, parameter) for kind, parameter in codec.feedback]
        if codec.parameters is not None:
            lines.append(Fmtp(codec.payload_type, codec.parameters))
    return lines


def build_publisher_offer(transport: Transport, tracks: list[OfferedTrack], version: int) -> SessionDescription:
    """A sendonly offer with one m-line per published track, in publication order.

    The m-line order must never change between renegotiations (RFC 8829 §5.2.2),
    so the caller passes every track published so far, oldest first.
    """
    if not tracks:
        raise NegotiationError("a publisher offer needs at least one track")
    offer = SessionDescription(origin=Origin("-", transport.session_id, version))
    offer.attributes.append(flag("extmap-allow-mixed"))
    offer.attributes.append(MsidSemantic("WMS", tuple(dict.fromkeys(t.stream_id for t in tracks))))
    offer.attributes.append(Group("BUNDLE", tuple(t.mid for t in tracks)))
    for track in tracks:
        codec = OPUS if track.kind == "audio" else VP8
        section = MediaSection(track.kind, _DISCARD_PORT, RTP_PROTO, [str(codec.payload_type)],
                               connections=[Connection()])
        lines = section.attributes
        lines += _transport_lines(transport, SetupRole.ACTPASS)
        lines.append(Mid(track.mid))
        extensions = AUDIO_EXTENSIONS if track.kind == "audio" else VIDEO_EXTENSIONS
        lines += [Extmap(ext_id, uri) for ext_id, uri in extensions]
        lines.append(flag(Direction.SENDONLY.value))
        lines.append(Msid(track.stream_id, track.track_id))
        lines += [flag("rtcp-mux"), flag("rtcp-rsize")]
        lines += _codec_lines([codec])
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


def _rejected(m: MediaSection, transport: Transport) -> MediaSection:
    section = MediaSection(m.kind, 0, m.proto, list(m.formats) or ["0"], connections=[Connection()])
    section.attributes += _transport_lines(transport, SetupRole.ACTIVE)
    if m.mid is not None:
        section.attributes.append(Mid(m.mid))
    section.attributes.append(flag(Direction.INACTIVE.value))
    if m.is_rtp:
        section.attributes.append(flag("rtcp-mux"))
        section.attributes += _codec_lines(m.codecs())
    return section


def answer_subscriber_offer(offer: SessionDescription, transport: Transport, version: int,
                            ice_lite: bool = False) -> SessionDescription:
    """Answer the server's subscriber offer as a receive-only client (DTLS client: ``a=setup:active``).

    ``ice_lite`` declares us an ICE-lite agent (``a=ice-lite``): the answer to a
    *full* ICE offerer, which then keeps the controlling role and runs the checks
    (RFC 8445 §6.1.1) instead of both sides claiming control.

    Every live audio/video m-line is accepted with all the codecs and header
    extensions it offers (we only count and time packets, whatever the codec);
    data channels are accepted so that an offer holding only ``m=application``
    still gives the PeerConnection its transport. What cannot be answered
    (no mid, not DTLS-SRTP with rtcp-mux, unknown kind) is rejected with port 0.
    """
    if not offer.media:
        raise NegotiationError("subscriber offer has no m-lines")
    mids = [m.mid for m in offer.media if m.mid is not None]
    if len(mids) != len(set(mids)):
        raise NegotiationError(f"subscriber offer repeats a mid: {mids}")
    bundles = offer.bundle_groups()
    bundle = set(bundles[0]) if bundles else None
    answer = SessionDescription(origin=Origin("-", transport.session_id, version))
    accepted: list[str] = []
    for m in offer.media:
        usable = not m.rejected and m.mid is not None and (bundle is None or m.mid in bundle)
        if usable and m.kind == "application":
            if "webrtc-datachannel" not in m.formats:
                answer.media.append(_rejected(m, transport))
                continue
            section = MediaSection("application", _DISCARD_PORT, m.proto, ["webrtc-datachannel"],
                                   connections=[Connection()])
            section.attributes += _transport_lines(transport, SetupRole.ACTIVE)
            section.attributes.append(Mid(m.mid))
            section.attributes += [SctpPort(m.sctp_port or 5000), MaxMessageSize(262144)]
        elif usable and m.kind in ("audio", "video") and m.proto.endswith("SAVPF") and m.rtcp_mux and m.codecs():
            section = MediaSection(m.kind, _DISCARD_PORT, m.proto, [str(c.payload_type) for c in m.codecs()],
                                   connections=[Connection()])
            lines = section.attributes
            lines += _transport_lines(transport, SetupRole.ACTIVE)
            lines.append(Mid(m.mid))
            lines += [Extmap(e.id, e.uri) for e in m.extmaps]
            lines.append(flag(Direction.from_flags(sends=False, receives=m.direction.sends).value))
            lines.append(flag("rtcp-mux"))
            if m.has_flag("rtcp-rsize"):
                lines.append(flag("rtcp-rsize"))
            lines += _codec_lines(m.codecs())
        else:
            answer.media.append(_rejected(m, transport))
            continue
        accepted.append(m.mid)
        answer.media.append(section)
    if bundles and accepted:
        answer.attributes.append(Group("BUNDLE", tuple(accepted)))
    if offer.extmap_allow_mixed:
        answer.attributes.append(flag("extmap-allow-mixed"))
    answer.attributes.append(MsidSemantic("WMS"))
    if ice_lite:
        answer.attributes.append(flag("ice-lite"))
    return answer


@attrs.frozen
class RemoteTransport:
    """The peer's ICE/DTLS parameters, read from its description."""

    ice_ufrag: str
    ice_pwd: str
    fingerprints: tuple[tuple[str, str], ...]
    #: Candidate lines (text after ``a=candidate:``) found in the SDP.
    candidates: tuple[str, ...]
    end_of_candidates: bool


def remote_transport(description: SessionDescription) -> RemoteTransport:
    """ICE credentials, fingerprints and candidates of the first live m-line (the bundle transport)."""
    first = next((m for m in description.media if not m.rejected), None)
    if first is None:
        raise NegotiationError("description has no live m-line")
    ufrag, pwd = description.effective_ufrag(first), description.effective_pwd(first)
    fingerprints = description.effective_fingerprints(first)
    if not ufrag or not pwd:
        raise NegotiationError("description lacks ICE credentials")
    if not fingerprints:
        raise NegotiationError("description lacks a DTLS fingerprint")
    candidates = tuple(c.text for m in description.media for c in m.candidates)
    end = any(m.has_flag("end-of-candidates") for m in description.media) or description.has_flag(
        "end-of-candidates"
    )
    return RemoteTransport(ufrag, pwd, tuple((f.algorithm, f.value) for f in fingerprints), candidates, end)


__all__ = [
    "AUDIO_EXTENSIONS",
    "OPUS",
    "OfferedTrack",
    "RemoteTransport",
    "Transport",
    "VIDEO_EXTENSIONS",
    "VP8",
    "answer_subscriber_offer",
    "build_publisher_offer",
    "remote_transport",
]
