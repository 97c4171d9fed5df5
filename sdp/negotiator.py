"""Offer/answer for an SFU (RFC 3264, JSEP RFC 8829, BUNDLE RFC 8843).

Two roles, matching LiveKit's two peer connections:

* publisher PC — the client offers, :func:`answer_offer` answers: ICE-lite,
  one BUNDLE transport, receive-only media, codecs and header extensions
  narrowed to what the SFU forwards, simulcast rids accepted, data channels
  accepted.
* single PC (LiveKit's ``/rtc/v1``) — the client offers every m-line on one peer
  connection; :func:`answer_offer` with ``outgoing`` answers its receive-only m-lines as
  the server's send side (sendonly with the track's msid and SSRCs, or inactive while idle).
* subscriber PC — the server offers from its :class:`TransceiverTable`
  (:class:`SubscriberOffer`), the client answers, :meth:`SubscriberOffer.apply_answer`
  checks the answer really answers that offer.

One answerer serves both ends of a receive-only m-line: :func:`answer_offer` takes an
:class:`AnswerPolicy` — :data:`SFU_ANSWER` for the server's answer to a publisher offer,
:data:`RECEIVER_ANSWER` for a client's answer to the server's subscriber offer (every codec and
extension offered, the DTLS client's side, trickled candidates). :func:`remote_transport` reads
the peer's ICE/DTLS parameters from a description, whichever side wrote it.

:func:`negotiated_media` turns an offer/answer pair into per-mid facts the
media stack needs (payload types, extension ids, rids, SSRCs).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

import attrs

from sdp.codecs import (
    PUBLISHER_EXTENSIONS, SUBSCRIBER_EXTENSIONS, MediaKind, filter_feedback, is_red,
    is_supported_media_codec, red_references,
)
from sdp.errors import NegotiationError, TransceiverInvariantError
from sdp.model import (
    Candidate, Codec, Connection, Direction, Extmap, Fingerprint, Fmtp, Group,
    IceOptions, IcePwd, IceUfrag, MaxMessageSize, MediaSection, Mid, Msid, MsidSemantic, Origin, Rid,
    RtcpFb, Rtpmap, SctpPort, SessionDescription, Setup, SetupRole, Simulcast, Ssrc, SsrcGroup,
    flag,
)
from sdp.transceivers import Transceiver, TransceiverState, TransceiverTable

RTP_PROTO = "UDP/TLS/RTP/SAVPF"
SCTP_PROTO = "UDP/DTLS/SCTP"
DATACHANNEL_FORMAT = "webrtc-datachannel"
_SCTP_PROTOS = frozenset({"UDP/DTLS/SCTP", "TCP/DTLS/SCTP", "DTLS/SCTP"})
_DISCARD_PORT = 9  # RFC 8840: placeholder port when candidates carry the real one
# m-lines an offer may carry. A LiveKit client offers one per track it sends (single-PC mode:
# or receives); each one costs an answer section about 20 times the size of the smallest
# m-line, so without a bound a 1 MB offer would be answered with 18 MB.
MAX_OFFER_SECTIONS = 1024


class DtlsRole(enum.Enum):
    CLIENT = "client"  # we send ClientHello (a=setup:active)
    SERVER = "server"  # we wait for it (a=setup:passive)


@attrs.frozen
class LocalParams:
    """Our side of the transport, the same for every m-line (one BUNDLE transport)."""

    ice_ufrag: str
    ice_pwd: str
    fingerprints: tuple[Fingerprint, ...]
    candidates: tuple[str, ...] = ()
    session_id: int = 1
    sctp_port: int = 5000
    max_message_size: int = 262144
    #: ``a=ice-options`` (RFC 8839 §5.6), e.g. ``("trickle",)`` for an agent that trickles.
    ice_options: tuple[str, ...] = ()


class CodecChoice(enum.Enum):
    """Which of an m-line's offered codecs an answer accepts."""

    #: What the SFU can forward (``sdp.codecs``), RTCP feedback narrowed to what it understands.
    FORWARDABLE = "forwardable"
    #: Every codec as offered: a receiver that counts and times packets whatever the codec.
    AS_OFFERED = "as-offered"


@attrs.frozen
class AnswerPolicy:
    """What an answerer accepts and how it presents its side of the transport."""

    codecs: CodecChoice
    #: The header extension URIs accepted per media kind; None accepts every one offered.
    extensions: Mapping[MediaKind, frozenset[str]] | None
    #: Our DTLS side when the offerer leaves the choice to us (``a=setup:actpass``): ACTIVE
    #: (the DTLS client) or PASSIVE (the DTLS server).
    preferred_setup: SetupRole
    #: Declare ``a=ice-lite``: the offerer then runs the checks and controls (RFC 8445 §6.1.1).
    ice_lite: bool

    def __attrs_post_init__(self) -> None:
        if self.preferred_setup not in (SetupRole.ACTIVE, SetupRole.PASSIVE):
            raise ValueError(f"an answer takes a=setup:active or passive, not {self.preferred_setup}")


#: The SFU answering a client's publisher offer: ICE-lite, narrowed to what it forwards, the DTLS
#: server (the browser is the client, as with LiveKit).
SFU_ANSWER = AnswerPolicy(CodecChoice.FORWARDABLE, PUBLISHER_EXTENSIONS, SetupRole.PASSIVE, ice_lite=True)
#: A receive-only client answering the SFU's subscriber offer, as browsers answer: the DTLS client,
#: full ICE, every codec and header extension offered.
RECEIVER_ANSWER = AnswerPolicy(CodecChoice.AS_OFFERED, None, SetupRole.ACTIVE, ice_lite=False)


@attrs.frozen
class OutgoingTrack:
    """What the server sends on a client's receive-only m-line (single-PC mode)."""

    stream_id: str
    track_id: str
    ssrc: int
    rtx_ssrc: int | None = None


#: Single-PC answers: per mid of a client receive-only m-line, the track sent on it (None: idle).
Outgoing = Mapping[str, "OutgoingTrack | None"]


@attrs.frozen
class ReceiveLine:
    """An audio/video m-line of a single-PC offer, as the server's send side sees it."""

    mid: str
    kind: MediaKind
    #: The codecs the SFU can send on it, with the client's payload types.
    codecs: tuple[Codec, ...]
    #: The header extensions the down tracks may write on it: id -> URI.
    extensions: dict[int, str]
    #: Whether it is a live receive-only line in the bundle: one of the server's send slots.
    live: bool


def offered_receive_lines(offer: SessionDescription) -> list[ReceiveLine]:
    """Every audio/video m-line of a single-PC offer, in order. A line that is not live (the
    client sends on it, or stopped it) is listed too: a slot the server had on that mid is gone."""
    if len(offer.media) > MAX_OFFER_SECTIONS:
        raise NegotiationError(f"offer has {len(offer.media)} media sections, more than {MAX_OFFER_SECTIONS}")
    bundles = offer.bundle_groups()
    # As answer_offer: with BUNDLE only the first group's m-lines share the one transport.
    bundle_mids = set(bundles[0]) if bundles else None
    out = []
    for m in offer.media:
        kind = _kind_of(m)
        if kind not in (MediaKind.AUDIO, MediaKind.VIDEO) or m.mid is None:
            continue
        codecs = _accepted_codecs(kind, m.codecs(), CodecChoice.FORWARDABLE) if m.is_rtp else []
        supported = {uri for _, uri in SUBSCRIBER_EXTENSIONS[kind]}
        extensions = {e.id: e.uri for e in m.extmaps if e.uri in supported}
        live = (not m.rejected and m.direction is Direction.RECVONLY and m.rtcp_mux
                and (bundle_mids is None or m.mid in bundle_mids) and any(not c.is_rtx for c in codecs))
        out.append(ReceiveLine(m.mid, kind, tuple(codecs), extensions, live))
    return out


@attrs.frozen
class NegotiatedMedia:
    """What one m-line ended up as, for the media stack."""

    mid: str
    kind: str
    accepted: bool
    direction: Direction  # as seen from the server
    codecs: tuple[Codec, ...] = ()
    extensions: dict[int, str] = attrs.field(factory=dict)  # id → URI
    rids: tuple[str, ...] = ()
    ssrcs: tuple[int, ...] = ()
    ssrc_groups: tuple[SsrcGroup, ...] = ()
    msid: Msid | None = None
    sctp_port: int | None = None
    max_message_size: int | None = None  # the peer's limit

    def payload_type(self, name: str) -> int | None:
        for c in self.codecs:
            if c.name.lower() == name.lower():
                return c.payload_type
        return None


def transport_attributes(local: LocalParams, setup: SetupRole) -> list:
    """The transport lines of every m-line of ours (one BUNDLE transport): ICE credentials and
    options, DTLS fingerprints and setup role."""
    options = [IceOptions(local.ice_options)] if local.ice_options else []
    return [IceUfrag(local.ice_ufrag), IcePwd(local.ice_pwd), *options, *local.fingerprints, Setup(setup)]


def codec_attributes(codecs: tuple[Codec, ...] | list[Codec]) -> list:
    """``a=rtpmap``, ``a=rtcp-fb`` and ``a=fmtp`` lines of ``codecs``, in order."""
    out: list = []
    for c in codecs:
        out.append(Rtpmap(c.payload_type, c.name, c.clock_rate, c.channels))
        out += [RtcpFb(c.payload_type, t, p) for t, p in c.feedback]
        if c.parameters is not None:
            out.append(Fmtp(c.payload_type, c.parameters))
    return out


def _candidate_attributes(local: LocalParams) -> list:
    if not local.candidates:
        return []  # candidates will be trickled; claiming the end now would stall ICE
    # An ICE-lite server knows all its candidates up front (RFC 8840 §4.5).
    return [Candidate(c) for c in local.candidates] + [flag("end-of-candidates")]


def _rejected_section(m_kind: str, proto: str, formats: list[str], codecs: list[Codec],
                      mid: str | None, local: LocalParams, setup: SetupRole) -> MediaSection:
    """A port-0 section. Transport lines, rtcp-mux and codecs are not needed (RFC 8843
    §7.3.3) but aiortc refuses a section without them, and they cost nothing."""
    section = MediaSection(m_kind, 0, proto, list(formats) or ["0"], connections=[Connection()])
    section.attributes += transport_attributes(local, setup)
    if mid is not None:
        section.attributes.append(Mid(mid))
    section.attributes.append(flag(Direction.INACTIVE.value))
    if section.is_rtp:
        section.attributes.append(flag("rtcp-mux"))
        section.attributes += codec_attributes(codecs)
    return section


def _kind_of(section: MediaSection) -> MediaKind | None:
    try:
        return MediaKind(section.kind)
    except ValueError:
        return None


# --- answering an offer of media for us to receive ----------------------------------


def rejected_answer_media(m: MediaSection, local: LocalParams, setup: SetupRole) -> MediaSection:
    """The answer's port-0 section turning down the offered section ``m``."""
    codecs = m.codecs() if m.is_rtp else []
    formats = [str(c.payload_type) for c in codecs] or m.formats[:1]
    return _rejected_section(m.kind, m.proto, formats, codecs, m.mid, local, setup)


def _answer_setup(offered: SetupRole | None, preferred: SetupRole) -> SetupRole:
    # RFC 8842 §5.3: actpass is answered with active or passive, as the policy prefers (the SFU
    # passive, so the browser is the DTLS client as with LiveKit; a client active, as browsers
    # answer). An absent a=setup means active (RFC 4145 §4).
    if offered is SetupRole.ACTPASS:
        return preferred
    if offered in (None, SetupRole.ACTIVE):
        return SetupRole.PASSIVE
    if offered is SetupRole.PASSIVE:
        return SetupRole.ACTIVE
    raise NegotiationError("offer has a=setup:holdconn; cannot start DTLS")


def _accepted_codecs(kind: MediaKind, offered: list[Codec], choice: CodecChoice) -> list[Codec]:
    if choice is CodecChoice.AS_OFFERED:
        return offered
    primary = {c.payload_type for c in offered if is_supported_media_codec(kind, c)}
    accepted = set(primary)
    for c in offered:
        if is_red(kind, c):
            refs = red_references(c)
            if refs and all(r in primary for r in refs):
                accepted.add(c.payload_type)
    for c in offered:
        if c.is_rtx and c.apt in primary:
            accepted.add(c.payload_type)
    return [attrs.evolve(c, feedback=filter_feedback(c)) for c in offered
            if c.payload_type in accepted]


def _answer_media(m: MediaSection, local: LocalParams, setup: SetupRole,
                  policy: AnswerPolicy, outgoing: Outgoing | None = None,
                  cname: str = "trio-sfu") -> MediaSection | None:
    """The accepted answer section for ``m``, or None to reject it. With ``outgoing`` (single-PC
    mode) a receive-only m-line of the client is one we send on: what ``outgoing`` names for its
    mid, or nothing (inactive)."""
    kind = _kind_of(m)
    mid = m.mid
    if kind is None or m.rejected or mid is None:
        return None
    section = MediaSection(m.kind, _DISCARD_PORT, m.proto, [], connections=[Connection()])
    attributes = section.attributes
    attributes += transport_attributes(local, setup)
    attributes.append(Mid(mid))

    if kind is MediaKind.APPLICATION:
        if m.proto not in _SCTP_PROTOS or DATACHANNEL_FORMAT not in m.formats:
            return None
        section.formats = [DATACHANNEL_FORMAT]
        attributes += [SctpPort(local.sctp_port), MaxMessageSize(local.max_message_size)]
        return section

    if not m.proto.endswith("SAVPF") or not m.rtcp_mux:
        return None  # need DTLS-SRTP with feedback, and RTCP multiplexed (RFC 8829 §5.3.1)
    codecs = _accepted_codecs(kind, m.codecs(), policy.codecs)
    if not any(not c.is_rtx for c in codecs):
        return None
    section.formats = [str(c.payload_type) for c in codecs]
    supported_ext = policy.extensions[kind] if policy.extensions is not None else None
    sends_here = outgoing is not None and m.direction is Direction.RECVONLY
    if sends_here:
        # One BUNDLE, one extension map: a browser only offers later m-lines (a simulcast video
        # it publishes) the extensions an answer already accepted, so the receive lines accept
        # the publisher ones too. What the down tracks write is the subscriber set alone
        # (offered_receive_lines): never a publisher's mid or rid.
        supported_ext = PUBLISHER_EXTENSIONS[kind] | {uri for _, uri in SUBSCRIBER_EXTENSIONS[kind]}
    for e in m.extmaps:
        if supported_ext is None or e.uri in supported_ext:
            reverse = e.direction.reversed() if e.direction is not None else None
            attributes.append(Extmap(e.id, e.uri, reverse))
    if m.has_flag("extmap-allow-mixed"):
        attributes.append(flag("extmap-allow-mixed"))
    if sends_here:
        assert outgoing is not None
        return _sending_section(section, outgoing.get(mid), codecs, m, cname)
    # The answerer only receives on these lines.
    attributes.append(flag(Direction.from_flags(sends=False, receives=m.direction.sends).value))
    attributes.append(flag("rtcp-mux"))
    if m.has_flag("rtcp-rsize"):
        attributes.append(flag("rtcp-rsize"))
    attributes += codec_attributes(codecs)

    simulcast = m.simulcast
    if simulcast is not None and simulcast.send:
        send_rids = set(simulcast.send_rids())
        rids = [r for r in m.rids if r.direction == "send" and r.rid in send_rids]
        known = {r.rid for r in rids}
        streams = tuple(alts for alts in (tuple(s for s in a if s.rid in known)
                                          for a in simulcast.send) if alts)
        if streams:
            attributes += [Rid(r.rid, "recv") for r in rids]
            attributes.append(Simulcast(recv=streams))
    return section


def _sending_section(section: MediaSection, track: OutgoingTrack | None, codecs: list[Codec],
                     m: MediaSection, cname: str) -> MediaSection:
    """Finish the answer to a client receive-only m-line: sendonly with the track's msid and
    SSRCs (an RTX SSRC only if RTX was accepted), or inactive while nothing is sent on it."""
    a = section.attributes
    a.append(flag((Direction.SENDONLY if track is not None else Direction.INACTIVE).value))
    if track is not None:
        a.append(Msid(track.stream_id, track.track_id))
    a.append(flag("rtcp-mux"))
    if m.has_flag("rtcp-rsize"):
        a.append(flag("rtcp-rsize"))
    a += codec_attributes(codecs)
    if track is not None:
        has_rtx = any(c.is_rtx for c in codecs)
        ssrcs = [track.ssrc] + ([track.rtx_ssrc] if has_rtx and track.rtx_ssrc is not None else [])
        if len(ssrcs) == 2:
            a.append(SsrcGroup("FID", tuple(ssrcs)))
        for s in ssrcs:
            a.append(Ssrc(s, "cname", cname))
            a.append(Ssrc(s, "msid", f"{track.stream_id} {track.track_id}"))
    return section


def answer_offer(offer: SessionDescription, local: LocalParams, *,
                 session_version: int = 1, policy: AnswerPolicy = SFU_ANSWER,
                 outgoing: Outgoing | None = None, cname: str = "trio-sfu") -> SessionDescription:
    """Answer an offer of media for us to receive, on one BUNDLE transport, as ``policy`` says:
    by default the SFU's answer to a client's publisher offer (ICE-lite, receive-only, narrowed
    to what it forwards); :data:`RECEIVER_ANSWER` for a client's answer to a subscriber offer.

    With ``outgoing`` (single-PC mode) the client's receive-only audio/video m-lines are the
    server's send side: each is answered sendonly with the track ``outgoing`` names for its mid
    (msid, SSRCs under ``cname``), or inactive; their extensions are the subscriber ones.

    Every m-line is answered in the offer's order; what cannot be taken (no mid, not DTLS-SRTP
    with rtcp-mux, no acceptable codec, an unknown kind, outside the first BUNDLE group) is
    rejected with port 0. Raises :class:`NegotiationError` for an offer that cannot be answered
    at all (no usable m-line, no ICE credentials or fingerprint, a repeated mid, holdconn).
    """
    if not offer.media:
        raise NegotiationError("offer has no media sections")
    if len(offer.media) > MAX_OFFER_SECTIONS:
        raise NegotiationError(f"offer has {len(offer.media)} media sections, more than {MAX_OFFER_SECTIONS}")
    bundles = offer.bundle_groups()
    # One transport: with BUNDLE only the first group's sections; without it,
    # only one section can get the transport.
    bundle_mids = set(bundles[0]) if bundles else None

    first = next((m for m in offer.media if not m.rejected
                  and (bundle_mids is None or m.mid in bundle_mids)), None)
    if first is None:
        raise NegotiationError("offer has no usable media section")
    if not offer.effective_ufrag(first) or not offer.effective_pwd(first):
        raise NegotiationError("offer lacks ICE credentials")
    if not offer.effective_fingerprints(first):
        raise NegotiationError("offer lacks a DTLS fingerprint")
    setup = _answer_setup(offer.effective_setup(first), policy.preferred_setup)

    answer = SessionDescription(origin=Origin("-", local.session_id, session_version))
    accepted_mids: list[str] = []
    seen_mids: set[str] = set()
    for m in offer.media:
        if m.mid is not None and m.mid in seen_mids:
            raise NegotiationError(f"offer repeats mid {m.mid}")
        if m.mid is not None:
            seen_mids.add(m.mid)
        usable = (bundle_mids is None and not accepted_mids) or (
            bundle_mids is not None and m.mid in bundle_mids)
        section = _answer_media(m, local, setup, policy, outgoing, cname) if usable else None
        if section is None:
            answer.media.append(rejected_answer_media(m, local, setup))
            continue
        if not accepted_mids:
            section.attributes += _candidate_attributes(local)
        accepted_mids.append(section.mid)
        answer.media.append(section)

    if bundles and accepted_mids:
        answer.attributes.append(Group("BUNDLE", tuple(accepted_mids)))
    if offer.extmap_allow_mixed:
        answer.attributes.append(flag("extmap-allow-mixed"))
    answer.attributes.append(MsidSemantic("WMS"))
    if policy.ice_lite:
        answer.attributes.append(flag("ice-lite"))
    return answer


def negotiated_media(offer: SessionDescription, answer: SessionDescription,
                     local_is_offerer: bool = False) -> dict[str, NegotiatedMedia]:
    """Per mid: what an offer/answer pair agreed on, from the server's point of view."""
    if len(offer.media) != len(answer.media):
        raise NegotiationError("answer and offer have different numbers of m-lines")
    result: dict[str, NegotiatedMedia] = {}
    for o, a in zip(offer.media, answer.media):
        mid = o.mid
        if mid is None:
            continue
        if a.rejected or o.rejected:
            result[mid] = NegotiatedMedia(mid, o.kind, False, Direction.INACTIVE)
            continue
        if local_is_offerer:
            direction = Direction.from_flags(sends=o.direction.sends and a.direction.receives,
                                             receives=o.direction.receives and a.direction.sends)
        else:
            direction = a.direction
        # The sender's SSRCs and msid are in the sender's own section.
        sender = o if o.direction.sends or not a.direction.sends else a
        result[mid] = NegotiatedMedia(
            mid, o.kind, True, direction, tuple(a.codecs()),
            {e.id: e.uri for e in a.extmaps}, tuple(r.rid for r in a.rids),
            tuple(sender.ssrcs), tuple(sender.ssrc_groups), sender.msid or o.msid,
            a.sctp_port, (o if not local_is_offerer else a).max_message_size,
        )
    return result


def local_dtls_role(answer: SessionDescription, local_is_offerer: bool) -> DtlsRole:
    """Who runs the DTLS client, from the answer's a=setup (RFC 8842 §5)."""
    first = next((m for m in answer.media if not m.rejected), None)
    role = answer.effective_setup(first) if first is not None else answer.setup
    if role not in (SetupRole.ACTIVE, SetupRole.PASSIVE):
        raise NegotiationError(f"answer must say a=setup:active or passive, not {role}")
    answerer_is_client = role is SetupRole.ACTIVE
    we_are_client = answerer_is_client != local_is_offerer
    return DtlsRole.CLIENT if we_are_client else DtlsRole.SERVER


@attrs.frozen
class RemoteTransport:
    """The peer's side of one BUNDLE transport, as its description gives it."""

    ice_ufrag: str
    ice_pwd: str
    #: ``(algorithm, value)`` of every ``a=fingerprint``, as DTLS checks the peer's certificate.
    fingerprints: tuple[tuple[str, str], ...]
    #: Candidate lines (the text after ``a=candidate:``) found in the description.
    candidates: tuple[str, ...]
    end_of_candidates: bool


def remote_transport(description: SessionDescription) -> RemoteTransport:
    """ICE credentials, fingerprints and candidates of the first live m-line (the bundle
    transport); candidates of every m-line. Raises :class:`NegotiationError` when the
    description has no live m-line, no ICE credentials or no fingerprint."""
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
        "end-of-candidates")
    return RemoteTransport(ufrag, pwd, tuple((f.algorithm, f.value) for f in fingerprints), candidates, end)


def restarts_ice(known: tuple[str, str] | None, offer: SessionDescription) -> bool:
    """Whether ``offer`` restarts ICE on a transport whose peer credentials are ``known``
    (ufrag, pwd; None before any description): RFC 8839 §4.4.1.1.1 — an offer that changes
    either the ufrag or the pwd of the bundle transport asks for an ICE restart."""
    if known is None:
        return False
    first = next((m for m in offer.media if not m.rejected), None)
    if first is None:
        return False
    ufrag, pwd = offer.effective_ufrag(first), offer.effective_pwd(first)
    return bool(ufrag and pwd) and (ufrag, pwd) != known


# --- offering to a subscriber ------------------------------------------------------


class SignalingState(enum.Enum):
    STABLE = "stable"
    HAVE_LOCAL_OFFER = "have-local-offer"


@attrs.frozen
class _OfferedLine:
    mid: str
    kind: str
    live: bool
    stopped: bool  # a STOPPING transceiver offered with port 0
    codecs: tuple[Codec, ...]
    extension_ids: dict[int, str]


class SubscriberOffer:
    """The server's offers on a subscriber PC, built from a transceiver table."""

    def __init__(self, local: LocalParams, table: TransceiverTable | None = None,
                 cname: str = "trio-sfu", data_channel: bool = True) -> None:
        self.local = local
        self.table = table if table is not None else TransceiverTable()
        self.cname = cname
        self.state = SignalingState.STABLE
        self.dtls_role: DtlsRole | None = None
        self.remote_ice_ufrag: str | None = None
        self.remote_ice_pwd: str | None = None
        self.remote_fingerprints: tuple[Fingerprint, ...] = ()
        self.rejected_track_ids: list[str] = []
        self._version = 0
        self._pending: tuple[_OfferedLine, ...] = ()
        self._pending_offer: SessionDescription | None = None
        #: Set by restart_ice until an answer to an offer with the new credentials is applied.
        self.ice_restarting = False
        self._offered_local = local  # the credentials the pending offer carries
        if data_channel:
            self.table.add_data_channel()

    def restart_ice(self, local: LocalParams) -> None:
        """Make the next offer an ICE restart (RFC 8839 §4.4.1.1.1): it carries ``local``'s new
        ufrag and pwd. ``ice_restarting`` stays true until an answer to such an offer is applied
        (an answer to an offer made before, or before a newer restart, does not complete it)."""
        if (local.ice_ufrag, local.ice_pwd) == (self.local.ice_ufrag, self.local.ice_pwd):
            raise NegotiationError("an ICE restart needs new credentials")
        self.local = local
        self.ice_restarting = True

    def create_offer(self) -> SessionDescription:
        """An offer for every m-line in table order; replaces any pending offer."""
        self.table.check_invariant()
        if not self.table.transceivers:
            raise NegotiationError("nothing to offer: no m-lines")
        self._offered_local = self.local
        self._version += 1
        offer = SessionDescription(origin=Origin("-", self.local.session_id, self._version))
        lines: list[_OfferedLine] = []
        live_mids: list[str] = []
        for t in self.table.transceivers:
            live = t.state.live
            kind = t.kind.value
            if not live:
                formats = [str(c.payload_type) for c in t.codecs] or (
                    [DATACHANNEL_FORMAT] if t.kind is MediaKind.APPLICATION else ["0"])
                proto = SCTP_PROTO if t.kind is MediaKind.APPLICATION else RTP_PROTO
                section = _rejected_section(kind, proto, formats, list(t.codecs), t.mid,
                                            self.local, SetupRole.ACTPASS)
                offer.media.append(section)
                lines.append(_OfferedLine(t.mid, kind, False,
                                          t.state is TransceiverState.STOPPING, (), {}))
                continue
            section = self._live_section(t, first=not live_mids)
            live_mids.append(t.mid)
            offer.media.append(section)
            lines.append(_OfferedLine(t.mid, kind, True, False, t.codecs,
                                      {e.id: e.uri for e in section.extmaps}))
        if live_mids:
            offer.attributes.append(Group("BUNDLE", tuple(live_mids)))
        offer.attributes.append(MsidSemantic("WMS", ("*",)))
        offer.attributes.append(flag("ice-lite"))

        # The invariant again, on what is actually going out rather than on the table.
        offered_tracks = [m.msid.track_id for m in offer.media if not m.rejected and m.msid]
        if len(offered_tracks) != len(set(offered_tracks)):
            raise TransceiverInvariantError(f"offer carries a track twice: {offered_tracks}")
        self.table.mark_offered()
        self._pending = tuple(lines)
        self._pending_offer = offer
        self.state = SignalingState.HAVE_LOCAL_OFFER
        return offer

    def _live_section(self, t: Transceiver, first: bool) -> MediaSection:
        if t.kind is MediaKind.APPLICATION:
            section = MediaSection("application", _DISCARD_PORT, SCTP_PROTO, [DATACHANNEL_FORMAT],
                                   connections=[Connection()])
            section.attributes += transport_attributes(self.local, SetupRole.ACTPASS)
            section.attributes.append(Mid(t.mid))
            section.attributes += [SctpPort(self.local.sctp_port),
                                   MaxMessageSize(self.local.max_message_size)]
        else:
            section = MediaSection(t.kind.value, _DISCARD_PORT, RTP_PROTO,
                                   [str(c.payload_type) for c in t.codecs],
                                   connections=[Connection()])
            a = section.attributes
            a += transport_attributes(self.local, SetupRole.ACTPASS)
            a.append(Mid(t.mid))
            a += [Extmap(i, uri) for i, uri in SUBSCRIBER_EXTENSIONS[t.kind]]
            # What the line sends: its track, or the track a cache entry holds it for (offered
            # as the peer last saw it, so an expected resume needs no change on its side).
            sending: tuple[str | None, str | None, int | None, int | None] = (None, None, None, None)
            if t.state is TransceiverState.ACTIVE:
                sending = (t.stream_id, t.track_id, t.ssrc, t.rtx_ssrc)
            elif (held := self.table.held(t)) is not None:
                track_id, entry = held
                sending = (entry.stream_id, track_id, entry.ssrc, entry.rtx_ssrc)
            stream_id, track_id, ssrc, rtx_ssrc = sending
            a.append(flag((Direction.SENDONLY if track_id is not None else t.direction).value))
            if track_id is not None:
                a.append(Msid(stream_id, track_id))
            a += [flag("rtcp-mux"), flag("rtcp-rsize")]
            a += codec_attributes(t.codecs)
            if track_id is not None and ssrc is not None:
                ssrcs = [ssrc] + ([rtx_ssrc] if rtx_ssrc is not None else [])
                if len(ssrcs) == 2:
                    a.append(SsrcGroup("FID", tuple(ssrcs)))
                for s in ssrcs:
                    a.append(Ssrc(s, "cname", self.cname))
                    a.append(Ssrc(s, "msid", f"{stream_id} {track_id}"))
        if first:
            section.attributes += _candidate_attributes(self.local)
        return section

    def apply_answer(self, answer: SessionDescription) -> dict[str, NegotiatedMedia]:
        """Check ``answer`` answers the pending offer, then update the table."""
        if self.state is not SignalingState.HAVE_LOCAL_OFFER or self._pending_offer is None:
            raise NegotiationError("no offer is pending")
        offered = self._pending
        if len(answer.media) != len(offered):
            raise NegotiationError(
                f"answer has {len(answer.media)} m-lines, offer had {len(offered)}")
        first_live = None
        for line, a in zip(offered, answer.media):
            if a.kind != line.kind:
                raise NegotiationError(f"m-line {line.mid}: kind {a.kind} != offered {line.kind}")
            if a.mid is not None and a.mid != line.mid:
                raise NegotiationError(f"m-line order changed: {a.mid} where {line.mid} was")
            if a.mid is None and not a.rejected:
                raise NegotiationError(f"accepted m-line {line.mid} lacks a=mid")
            if a.rejected or not line.live:
                # RFC 3264 §6 wants port 0 back for a port-0 offer; aiortc answers such
                # lines with a live port. What we stopped stays stopped either way.
                continue
            first_live = first_live or a
            self._check_answer_media(line, a)
        if first_live is not None:
            self._check_transport(answer, first_live)

        offer = self._pending_offer
        result = negotiated_media(offer, answer, local_is_offerer=True)
        self.rejected_track_ids = []
        for line, a in zip(offered, answer.media):
            t = self.table.get(line.mid)
            if a.rejected or not line.live:
                lost = self.table.mark_rejected(line.mid, offered_stopped=line.stopped)
                if lost is not None:
                    self.rejected_track_ids.append(lost)
            elif t is not None and t.kind.value == line.kind and t.state.live:
                t.negotiated_codecs = result[line.mid].codecs
                t.extensions = dict(result[line.mid].extensions)
        self.state = SignalingState.STABLE
        self._pending = ()
        self._pending_offer = None
        if self._offered_local == self.local:
            self.ice_restarting = False  # the answered offer carried the newest credentials
        return result

    def _check_answer_media(self, line: _OfferedLine, a: MediaSection) -> None:
        if line.kind == MediaKind.APPLICATION.value:
            if DATACHANNEL_FORMAT not in a.formats:
                raise NegotiationError(f"m-line {line.mid}: data channel format missing")
            return
        offered = {c.payload_type: c for c in line.codecs}
        chosen = a.codecs()
        if not chosen:
            raise NegotiationError(f"m-line {line.mid}: answer accepts no codec")
        for c in chosen:
            o = offered.get(c.payload_type)
            if o is None or o.name.lower() != c.name.lower() or o.clock_rate != c.clock_rate:
                raise NegotiationError(
                    f"m-line {line.mid}: codec {c.name}/{c.payload_type} was not offered")
        for e in a.extmaps:
            if line.extension_ids.get(e.id) != e.uri:
                raise NegotiationError(f"m-line {line.mid}: extension {e.id} {e.uri} not offered")
        if a.direction.sends:
            # We offered sendonly or inactive: the answerer may only receive.
            raise NegotiationError(f"m-line {line.mid}: answer direction {a.direction.value}")

    def _check_transport(self, answer: SessionDescription, first: MediaSection) -> None:
        ufrag, pwd = answer.effective_ufrag(first), answer.effective_pwd(first)
        fingerprints = answer.effective_fingerprints(first)
        if not ufrag or not pwd:
            raise NegotiationError("answer lacks ICE credentials")
        if not fingerprints:
            raise NegotiationError("answer lacks a DTLS fingerprint")
        role = local_dtls_role(answer, local_is_offerer=True)
        self.remote_ice_ufrag, self.remote_ice_pwd = ufrag, pwd
        self.remote_fingerprints = tuple(fingerprints)
        self.dtls_role = role


__all__ = [
    "restarts_ice",
    "RECEIVER_ANSWER", "SFU_ANSWER", "AnswerPolicy", "CodecChoice", "DtlsRole", "LocalParams",
    "NegotiatedMedia", "Outgoing", "OutgoingTrack", "ReceiveLine", "RemoteTransport", "SignalingState", "SubscriberOffer", "answer_offer",
    "codec_attributes", "local_dtls_role", "negotiated_media", "offered_receive_lines", "rejected_answer_media",
    "remote_transport", "transport_attributes",
]
