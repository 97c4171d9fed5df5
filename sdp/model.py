"""Typed model of a session description (RFC 8866) as WebRTC uses it.

A description keeps every ``a=`` line, known or not, in its original order so
that serializing a parsed browser SDP gives back the same text. Known
attributes are parsed into small frozen classes; anything else stays an
:class:`Attribute` holding its raw name and value. Media sections expose
read-only views (``mid``, ``direction``, ``codecs()``...) computed from that
ordered list, so there is exactly one source of truth per section.
"""

from __future__ import annotations

import enum
from typing import Iterator, TypeVar, Union

import attrs

from sdp.errors import SdpParseError


class Direction(enum.Enum):
    SENDRECV = "sendrecv"
    SENDONLY = "sendonly"
    RECVONLY = "recvonly"
    INACTIVE = "inactive"

    @property
    def sends(self) -> bool:
        return self in (Direction.SENDRECV, Direction.SENDONLY)

    @property
    def receives(self) -> bool:
        return self in (Direction.SENDRECV, Direction.RECVONLY)

    @classmethod
    def from_flags(cls, sends: bool, receives: bool) -> "Direction":
        if sends and receives:
            return cls.SENDRECV
        if sends:
            return cls.SENDONLY
        if receives:
            return cls.RECVONLY
        return cls.INACTIVE

    def reversed(self) -> "Direction":
        """The direction seen from the other end of the same m-line."""
        return Direction.from_flags(sends=self.receives, receives=self.sends)


DIRECTION_NAMES = frozenset(d.value for d in Direction)


class SetupRole(enum.Enum):
    """``a=setup`` (RFC 4145/8842): who opens the DTLS connection."""

    ACTPASS = "actpass"
    ACTIVE = "active"
    PASSIVE = "passive"
    HOLDCONN = "holdconn"


# --- non-attribute lines ---------------------------------------------------


@attrs.frozen
class Origin:
    """``o=<username> <sess-id> <sess-version> <nettype> <addrtype> <address>``."""

    username: str = "-"
    session_id: int = 0
    session_version: int = 0
    net_type: str = "IN"
    addr_type: str = "IP4"
    address: str = "127.0.0.1"


@attrs.frozen
class Connection:
    """``c=<nettype> <addrtype> <connection-address>`` (address may carry /ttl)."""

    net_type: str = "IN"
    addr_type: str = "IP4"
    address: str = "0.0.0.0"


@attrs.frozen
class Bandwidth:
    """``b=<bwtype>:<bandwidth>``, e.g. ``b=AS:2500`` or ``b=TIAS:64000``."""

    bw_type: str
    value: int


@attrs.frozen
class Timing:
    """``t=<start> <stop>`` plus the ``r=`` repeat lines that follow it, kept raw."""

    start: int = 0
    stop: int = 0
    repeats: tuple[str, ...] = ()


# --- attributes ---------------------------------------------------------------


@attrs.frozen
class Attribute:
    """Any ``a=`` line without a typed class: ``a=name`` (value None) or ``a=name:value``."""

    name: str
    value: str | None = None

    def to_value(self) -> str | None:
        return self.value


def flag(name: str) -> Attribute:
    """A property attribute such as ``a=rtcp-mux`` or ``a=sendonly``."""
    return Attribute(name, None)


@attrs.frozen
class Group:
    """``a=group:<semantics> <mid>...`` (RFC 5888), e.g. BUNDLE (RFC 8843)."""

    semantics: str
    mids: tuple[str, ...] = ()
    name = "group"

    def to_value(self) -> str:
        return " ".join((self.semantics, *self.mids))


@attrs.frozen
class MsidSemantic:
    """``a=msid-semantic: WMS [<stream id>...]`` (libwebrtc still writes it)."""

    semantic: str = "WMS"
    identifiers: tuple[str, ...] = ()
    # libwebrtc writes one space, sometimes two; aiortc none. Kept for round trips.
    leading_spaces: int = 1
    name = "msid-semantic"

    def to_value(self) -> str:
        return " " * self.leading_spaces + " ".join((self.semantic, *self.identifiers))


@attrs.frozen
class IceUfrag:
    ufrag: str
    name = "ice-ufrag"

    def to_value(self) -> str:
        return self.ufrag


@attrs.frozen
class IcePwd:
    pwd: str
    name = "ice-pwd"

    def to_value(self) -> str:
        return self.pwd


@attrs.frozen
class IceOptions:
    options: tuple[str, ...]
    name = "ice-options"

    def to_value(self) -> str:
        return " ".join(self.options)


@attrs.frozen
class Fingerprint:
    """``a=fingerprint:<hash-func> <hex:pairs>`` (RFC 8122)."""

    algorithm: str
    value: str
    name = "fingerprint"

    def to_value(self) -> str:
        return f"{self.algorithm} {self.value}"


@attrs.frozen
class Setup:
    role: SetupRole
    name = "setup"

    def to_value(self) -> str:
        return self.role.value


@attrs.frozen
class Mid:
    mid: str
    name = "mid"

    def to_value(self) -> str:
        return self.mid


@attrs.frozen
class Candidate:
    """``a=candidate:`` kept as the raw text after the colon.

    The SFU only relays and emits candidates; ``to_aioice`` parses on demand.
    """

    text: str
    name = "candidate"

    def to_value(self) -> str:
        return self.text

    def to_aioice(self):  # -> aioice.candidate.Candidate
        # Imported lazily: aioice's package init pulls in asyncio, which the
        # sans-IO layer must not load just to model SDP.
        from aioice.candidate import Candidate as AioiceCandidate

        try:
            return AioiceCandidate.from_sdp(self.text)
        except (ValueError, IndexError, KeyError) as exc:
            raise SdpParseError(f"bad candidate {self.text!r}") from exc


@attrs.frozen
class Rtpmap:
    """``a=rtpmap:<pt> <encoding>/<clock-rate>[/<channels>]``."""

    payload_type: int
    encoding_name: str
    clock_rate: int
    channels: int | None = None
    name = "rtpmap"

    def to_value(self) -> str:
        text = f"{self.payload_type} {self.encoding_name}/{self.clock_rate}"
        if self.channels is not None:
            text += f"/{self.channels}"
        return text


@attrs.frozen
class Fmtp:
    """``a=fmtp:<pt> <format-specific parameters>``, parameters kept verbatim."""

    payload_type: int
    parameters: str
    name = "fmtp"

    def to_value(self) -> str:
        return f"{self.payload_type} {self.parameters}"


@attrs.frozen
class RtcpFb:
    """``a=rtcp-fb:<pt|*> <type> [<parameter>]`` (RFC 4585); payload_type None means ``*``."""

    payload_type: int | None
    type: str
    parameter: str | None = None
    name = "rtcp-fb"

    def to_value(self) -> str:
        pt = "*" if self.payload_type is None else str(self.payload_type)
        text = f"{pt} {self.type}"
        if self.parameter is not None:
            text += f" {self.parameter}"
        return text


@attrs.frozen
class Extmap:
    """``a=extmap:<id>[/<direction>] <uri> [<attributes>]`` (RFC 8285)."""

    id: int
    uri: str
    direction: Direction | None = None
    attributes: str | None = None
    name = "extmap"

    def to_value(self) -> str:
        text = str(self.id)
        if self.direction is not None:
            text += f"/{self.direction.value}"
        text += f" {self.uri}"
        if self.attributes is not None:
            text += f" {self.attributes}"
        return text


@attrs.frozen
class Msid:
    """``a=msid:<stream id> [<track id>]`` (RFC 8830)."""

    stream_id: str
    track_id: str | None = None
    name = "msid"

    def to_value(self) -> str:
        return self.stream_id if self.track_id is None else f"{self.stream_id} {self.track_id}"


@attrs.frozen
class Ssrc:
    """``a=ssrc:<ssrc> <attribute>[:<value>]`` (RFC 5576)."""

    ssrc: int
    attribute: str
    value: str | None = None
    name = "ssrc"

    def to_value(self) -> str:
        text = f"{self.ssrc} {self.attribute}"
        if self.value is not None:
            text += f":{self.value}"
        return text


@attrs.frozen
class SsrcGroup:
    """``a=ssrc-group:<semantics> <ssrc>...``, e.g. FID (RTX) or SIM."""

    semantics: str
    ssrcs: tuple[int, ...]
    name = "ssrc-group"

    def to_value(self) -> str:
        return " ".join((self.semantics, *map(str, self.ssrcs)))


@attrs.frozen
class Rid:
    """``a=rid:<id> <send|recv> [<restrictions>]`` (RFC 8851)."""

    rid: str
    direction: str
    restrictions: str | None = None
    name = "rid"

    def to_value(self) -> str:
        text = f"{self.rid} {self.direction}"
        if self.restrictions is not None:
            text += f" {self.restrictions}"
        return text


@attrs.frozen
class SimulcastStream:
    """One rid in an ``a=simulcast`` list; ``paused`` is the ``~`` prefix."""

    rid: str
    paused: bool = False

    def to_text(self) -> str:
        return ("~" if self.paused else "") + self.rid


# A simulcast stream list: ``;``-separated streams, each a ``,``-separated list
# of alternative rids.
SimulcastList = tuple[tuple[SimulcastStream, ...], ...]


def simulcast_list_text(streams: SimulcastList) -> str:
    return ";".join(",".join(s.to_text() for s in alternatives) for alternatives in streams)


@attrs.frozen
class Simulcast:
    """``a=simulcast:send q;h;f [recv ...]`` (RFC 8853)."""

    send: SimulcastList = ()
    recv: SimulcastList = ()
    recv_first: bool = False
    name = "simulcast"

    def to_value(self) -> str:
        parts = []
        if self.send:
            parts.append("send " + simulcast_list_text(self.send))
        if self.recv:
            recv = "recv " + simulcast_list_text(self.recv)
            parts.insert(0, recv) if self.recv_first else parts.append(recv)
        return " ".join(parts)

    def send_rids(self) -> list[str]:
        return [s.rid for alternatives in self.send for s in alternatives]

    def recv_rids(self) -> list[str]:
        return [s.rid for alternatives in self.recv for s in alternatives]


@attrs.frozen
class SctpPort:
    port: int
    name = "sctp-port"

    def to_value(self) -> str:
        return str(self.port)


@attrs.frozen
class MaxMessageSize:
    size: int
    name = "max-message-size"

    def to_value(self) -> str:
        return str(self.size)


AnyAttribute = Union[
    Attribute, Group, MsidSemantic, IceUfrag, IcePwd, IceOptions, Fingerprint, Setup, Mid,
    Candidate, Rtpmap, Fmtp, RtcpFb, Extmap, Msid, Ssrc, SsrcGroup, Rid, Simulcast, SctpPort,
    MaxMessageSize,
]

A = TypeVar("A")


# --- codec view --------------------------------------------------------------------

# Static payload types (RFC 3551) that may appear without an rtpmap.
STATIC_PAYLOAD_TYPES: dict[int, tuple[str, int, int | None]] = {
    0: ("PCMU", 8000, 1),
    8: ("PCMA", 8000, 1),
    9: ("G722", 8000, 1),
    13: ("CN", 8000, 1),
}


def parse_fmtp_parameters(parameters: str) -> dict[str, str]:
    """``a=b;c=d`` → {"a": "b", "c": "d"}; a part without ``=`` (RED's ``111/111``) maps to ""."""
    result: dict[str, str] = {}
    for part in parameters.split(";"):
        part = part.strip()
        if not part:
            continue
        key, _, value = part.partition("=")
        result[key.strip().lower()] = value.strip()
    return result


@attrs.frozen
class Codec:
    """What one payload type of an m-line means: rtpmap + fmtp + rtcp-fb joined."""

    payload_type: int
    name: str
    clock_rate: int
    channels: int | None = None
    parameters: str | None = None
    feedback: tuple[tuple[str, str | None], ...] = ()

    @property
    def fmtp(self) -> dict[str, str]:
        return parse_fmtp_parameters(self.parameters or "")

    @property
    def is_rtx(self) -> bool:
        return self.name.lower() == "rtx"

    @property
    def apt(self) -> int | None:
        """For RTX (RFC 4588): the payload type this one retransmits."""
        value = self.fmtp.get("apt")
        # Payload types have at most 3 digits; never int() an attacker's digit string.
        if value is None or not (value.isascii() and value.isdigit() and len(value) <= 3):
            return None
        return int(value)


# --- sections ---------------------------------------------------------------------


class _AttributeList:
    """Accessors shared by session level and media level over ``self.attributes``."""

    attributes: list

    def all(self, cls: type[A]) -> list[A]:
        return [a for a in self.attributes if type(a) is cls]

    def first(self, cls: type[A]) -> A | None:
        for a in self.attributes:
            if type(a) is cls:
                return a
        return None

    def generic(self, name: str) -> list[Attribute]:
        return [a for a in self.attributes if type(a) is Attribute and a.name == name]

    def has_flag(self, name: str) -> bool:
        return any(type(a) is Attribute and a.name == name and a.value is None for a in self.attributes)

    @property
    def ice_ufrag(self) -> str | None:
        a = self.first(IceUfrag)
        return a.ufrag if a else None

    @property
    def ice_pwd(self) -> str | None:
        a = self.first(IcePwd)
        return a.pwd if a else None

    @property
    def fingerprints(self) -> list[Fingerprint]:
        return self.all(Fingerprint)

    @property
    def setup(self) -> SetupRole | None:
        a = self.first(Setup)
        return a.role if a else None


@attrs.define
class MediaSection(_AttributeList):
    """One ``m=`` section and the lines under it."""

    kind: str
    port: int
    proto: str
    formats: list[str]
    num_ports: int | None = None
    title: str | None = None
    connections: list[Connection] = attrs.field(factory=list)
    bandwidths: list[Bandwidth] = attrs.field(factory=list)
    key: str | None = None
    attributes: list[AnyAttribute] = attrs.field(factory=list)

    @property
    def is_rtp(self) -> bool:
        return "RTP" in self.proto.split("/")

    @property
    def rejected(self) -> bool:
        return self.port == 0

    @property
    def mid(self) -> str | None:
        a = self.first(Mid)
        return a.mid if a else None

    @property
    def direction(self) -> Direction:
        for a in self.attributes:
            if type(a) is Attribute and a.value is None and a.name in DIRECTION_NAMES:
                return Direction(a.name)
        return Direction.SENDRECV  # RFC 8866 §6.7: the default

    @property
    def rtcp_mux(self) -> bool:
        return self.has_flag("rtcp-mux")

    @property
    def payload_types(self) -> list[int]:
        return [int(f) for f in self.formats] if self.is_rtp else []

    def codecs(self) -> list[Codec]:
        """The m-line's payload types in preference order, each joined with its attributes."""
        rtpmaps = {a.payload_type: a for a in self.all(Rtpmap)}
        fmtps: dict[int, str] = {}
        for f in self.all(Fmtp):
            fmtps.setdefault(f.payload_type, f.parameters)
        feedback: dict[int, list[tuple[str, str | None]]] = {}
        for fb in self.all(RtcpFb):
            if fb.payload_type is not None:
                feedback.setdefault(fb.payload_type, []).append((fb.type, fb.parameter))
        result = []
        for pt in self.payload_types:
            rtpmap = rtpmaps.get(pt)
            if rtpmap is not None:
                name, rate, channels = rtpmap.encoding_name, rtpmap.clock_rate, rtpmap.channels
            elif pt in STATIC_PAYLOAD_TYPES:
                name, rate, channels = STATIC_PAYLOAD_TYPES[pt]
            else:
                continue  # dynamic PT without rtpmap: meaningless, skip it
            result.append(Codec(pt, name, rate, channels, fmtps.get(pt), tuple(feedback.get(pt, ()))))
        return result

    @property
    def extmaps(self) -> list[Extmap]:
        return self.all(Extmap)

    @property
    def rids(self) -> list[Rid]:
        return self.all(Rid)

    @property
    def simulcast(self) -> Simulcast | None:
        return self.first(Simulcast)

    @property
    def ssrcs(self) -> list[int]:
        """Distinct SSRCs in first-seen order."""
        seen: dict[int, None] = {}
        for a in self.all(Ssrc):
            seen.setdefault(a.ssrc, None)
        return list(seen)

    @property
    def ssrc_groups(self) -> list[SsrcGroup]:
        return self.all(SsrcGroup)

    @property
    def msid(self) -> Msid | None:
        return self.first(Msid)

    @property
    def candidates(self) -> list[Candidate]:
        return self.all(Candidate)

    @property
    def sctp_port(self) -> int | None:
        a = self.first(SctpPort)
        return a.port if a else None

    @property
    def max_message_size(self) -> int | None:
        a = self.first(MaxMessageSize)
        return a.size if a else None


@attrs.define
class SessionDescription(_AttributeList):
    """A whole description: session-level lines, attributes, then media sections."""

    origin: Origin = attrs.field(factory=Origin)
    session_name: str = "-"
    version: int = 0
    info: str | None = None
    uri: str | None = None
    emails: list[str] = attrs.field(factory=list)
    phones: list[str] = attrs.field(factory=list)
    connection: Connection | None = None
    bandwidths: list[Bandwidth] = attrs.field(factory=list)
    timings: list[Timing] = attrs.field(factory=lambda: [Timing()])
    zone: str | None = None
    key: str | None = None
    attributes: list[AnyAttribute] = attrs.field(factory=list)
    media: list[MediaSection] = attrs.field(factory=list)

    @property
    def ice_lite(self) -> bool:
        return self.has_flag("ice-lite")

    @property
    def extmap_allow_mixed(self) -> bool:
        return self.has_flag("extmap-allow-mixed")

    def bundle_groups(self) -> list[tuple[str, ...]]:
        return [g.mids for g in self.all(Group) if g.semantics == "BUNDLE"]

    def section(self, mid: str) -> MediaSection | None:
        for m in self.media:
            if m.mid == mid:
                return m
        return None

    def mids(self) -> list[str | None]:
        return [m.mid for m in self.media]

    # Transport parameters may sit at session level or in each section
    # (RFC 8839 §5.4); media level wins.
    def effective_ufrag(self, m: MediaSection) -> str | None:
        return m.ice_ufrag or self.ice_ufrag

    def effective_pwd(self, m: MediaSection) -> str | None:
        return m.ice_pwd or self.ice_pwd

    def effective_fingerprints(self, m: MediaSection) -> list[Fingerprint]:
        return m.fingerprints or self.fingerprints

    def effective_setup(self, m: MediaSection) -> SetupRole | None:
        return m.setup or self.setup

    def iter_all_attributes(self) -> Iterator[AnyAttribute]:
        yield from self.attributes
        for m in self.media:
            yield from m.attributes
