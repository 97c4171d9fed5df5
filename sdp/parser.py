"""Parse and serialize session descriptions (RFC 8866).

``parse`` is total: any input either yields a :class:`SessionDescription` or
raises :class:`SdpParseError`. Lines may end in LF or CRLF; ``serialize``
always writes CRLF. For SDP written the way browsers write it (single spaces,
RFC line order) ``serialize(parse(text)) == text`` after CRLF normalization,
because every attribute line is kept in order and typed attributes render
back to the exact text they came from.
"""

from __future__ import annotations

from typing import Callable

from sdp.errors import SdpParseError
from sdp.model import (
    AnyAttribute, Attribute, Bandwidth, Candidate, Connection, Direction, Extmap, Fingerprint,
    Fmtp, Group, IceOptions, IcePwd, IceUfrag, MaxMessageSize, MediaSection, Mid, Msid,
    MsidSemantic, Origin, Rid, RtcpFb, Rtpmap, SctpPort, SessionDescription, SetupRole, Setup,
    Simulcast, SimulcastStream, Ssrc, SsrcGroup, Timing,
)

# Far above any real offer (a 50-track Chromium offer is ~60 kB); bounds the
# work an attacker can make us do with one message.
MAX_SDP_LENGTH = 1 << 20
_MAX_INT_DIGITS = 20  # sess-id is up to 64 bits; refuse int() on huge digit strings


def _int(text: str, what: str, lo: int = 0, hi: int = (1 << 64) - 1) -> int:
    if not text or len(text) > _MAX_INT_DIGITS or not text.isascii() or not text.isdigit():
        raise SdpParseError(f"{what}: not a number: {text[:40]!r}")
    value = int(text)
    if not lo <= value <= hi:
        raise SdpParseError(f"{what}: {value} out of range [{lo}, {hi}]")
    return value


def _token(text: str, what: str) -> str:
    if not text or any(c.isspace() for c in text):
        raise SdpParseError(f"{what}: bad token {text[:40]!r}")
    return text


def _split(value: str, n_min: int, n_max: int | None, what: str) -> list[str]:
    """Split on single spaces, checking the field count (None: the last field takes the rest)."""
    parts = value.split(" ") if n_max is not None else value.split(" ", n_min - 1)
    if n_max is None:
        if len(parts) < n_min:
            raise SdpParseError(f"{what}: expected at least {n_min} fields in {value[:60]!r}")
    elif not n_min <= len(parts) <= n_max:
        raise SdpParseError(f"{what}: expected {n_min}..{n_max} fields in {value[:60]!r}")
    for p in parts[:-1] if n_max is None else parts:
        _token(p, what)
    return parts


# --- attribute parsers (value after the colon → typed attribute) -----------------


def _group(v: str) -> Group:
    parts = v.split(" ")
    return Group(_token(parts[0], "group"), tuple(_token(p, "group mid") for p in parts[1:]))


def _msid_semantic(v: str) -> MsidSemantic:
    body = v.lstrip(" ")
    leading = len(v) - len(body)
    if leading > 8:
        raise SdpParseError("msid-semantic: too much leading space")
    parts = body.split(" ")
    return MsidSemantic(_token(parts[0], "msid-semantic"),
                        tuple(_token(p, "msid-semantic id") for p in parts[1:]), leading)


def _fingerprint(v: str) -> Fingerprint:
    alg, value = _split(v, 2, 2, "fingerprint")
    return Fingerprint(alg, value)


def _setup(v: str) -> Setup:
    try:
        return Setup(SetupRole(v))
    except ValueError:
        raise SdpParseError(f"setup: unknown role {v[:40]!r}") from None


def _rtpmap(v: str) -> Rtpmap:
    pt, encoding = _split(v, 2, 2, "rtpmap")
    fields = encoding.split("/")
    if not 2 <= len(fields) <= 3:
        raise SdpParseError(f"rtpmap: bad encoding {encoding[:40]!r}")
    channels = _int(fields[2], "rtpmap channels", 1, 255) if len(fields) == 3 else None
    return Rtpmap(_int(pt, "rtpmap pt", 0, 127), _token(fields[0], "rtpmap encoding"),
                  _int(fields[1], "rtpmap clock rate", 1, 1 << 32), channels)


def _fmtp(v: str) -> Fmtp:
    pt, params = _split(v, 2, None, "fmtp")
    return Fmtp(_int(pt, "fmtp pt", 0, 127), params)


def _rtcp_fb(v: str) -> RtcpFb:
    parts = v.split(" ", 2)
    if len(parts) < 2:
        raise SdpParseError(f"rtcp-fb: too few fields in {v[:60]!r}")
    pt = None if parts[0] == "*" else _int(parts[0], "rtcp-fb pt", 0, 127)
    return RtcpFb(pt, _token(parts[1], "rtcp-fb type"), parts[2] if len(parts) == 3 else None)


def _extmap(v: str) -> Extmap:
    parts = v.split(" ", 2)
    if len(parts) < 2:
        raise SdpParseError(f"extmap: too few fields in {v[:60]!r}")
    ident, _, direction = parts[0].partition("/")
    parsed_direction = None
    if direction:
        try:
            parsed_direction = Direction(direction)
        except ValueError:
            raise SdpParseError(f"extmap: bad direction {direction[:20]!r}") from None
    # RFC 8285: 1-14 one-byte, 1-255 two-byte; 15 is reserved.
    ext_id = _int(ident, "extmap id", 1, 255)
    if ext_id == 15:
        raise SdpParseError("extmap: id 15 is reserved")
    return Extmap(ext_id, _token(parts[1], "extmap uri"), parsed_direction,
                  parts[2] if len(parts) == 3 else None)


def _msid(v: str) -> Msid:
    parts = _split(v, 1, 2, "msid")
    return Msid(parts[0], parts[1] if len(parts) == 2 else None)


def _ssrc(v: str) -> Ssrc:
    ssrc, rest = _split(v, 2, None, "ssrc")
    attribute, colon, value = rest.partition(":")
    return Ssrc(_int(ssrc, "ssrc", 0, 0xFFFFFFFF), _token(attribute, "ssrc attribute"),
                value if colon else None)


def _ssrc_group(v: str) -> SsrcGroup:
    parts = v.split(" ")
    return SsrcGroup(_token(parts[0], "ssrc-group"),
                     tuple(_int(p, "ssrc-group ssrc", 0, 0xFFFFFFFF) for p in parts[1:]))


def _rid(v: str) -> Rid:
    parts = v.split(" ", 2)
    if len(parts) < 2 or parts[1] not in ("send", "recv"):
        raise SdpParseError(f"rid: bad value {v[:60]!r}")
    return Rid(_token(parts[0], "rid id"), parts[1], parts[2] if len(parts) == 3 else None)


def _simulcast_list(text: str) -> tuple[tuple[SimulcastStream, ...], ...]:
    streams = []
    for alternatives in text.split(";"):
        alts = []
        for rid in alternatives.split(","):
            paused = rid.startswith("~")
            rid = rid[1:] if paused else rid
            if not rid or any(c.isspace() or c in ",;~" for c in rid):
                raise SdpParseError(f"simulcast: bad rid {rid[:40]!r}")
            alts.append(SimulcastStream(rid, paused))
        streams.append(tuple(alts))
    return tuple(streams)


def _simulcast(v: str) -> Simulcast:
    parts = v.split(" ")
    if len(parts) not in (2, 4):
        raise SdpParseError(f"simulcast: bad value {v[:60]!r}")
    lists: dict[str, tuple] = {}
    for i in range(0, len(parts), 2):
        direction = parts[i]
        if direction not in ("send", "recv") or direction in lists:
            raise SdpParseError(f"simulcast: bad direction {direction[:20]!r}")
        lists[direction] = _simulcast_list(parts[i + 1])
    # recv_first only records the order when both lists are present.
    return Simulcast(lists.get("send", ()), lists.get("recv", ()),
                     recv_first=len(parts) == 4 and parts[0] == "recv")


_VALUE_PARSERS: dict[str, Callable[[str], AnyAttribute]] = {
    "group": _group,
    "msid-semantic": _msid_semantic,
    "ice-ufrag": lambda v: IceUfrag(_token(v, "ice-ufrag")),
    "ice-pwd": lambda v: IcePwd(_token(v, "ice-pwd")),
    "ice-options": lambda v: IceOptions(tuple(_split(v, 1, 64, "ice-options"))),
    "fingerprint": _fingerprint,
    "setup": _setup,
    "mid": lambda v: Mid(_token(v, "mid")),
    "candidate": lambda v: Candidate(v),
    "rtpmap": _rtpmap,
    "fmtp": _fmtp,
    "rtcp-fb": _rtcp_fb,
    "extmap": _extmap,
    "msid": _msid,
    "ssrc": _ssrc,
    "ssrc-group": _ssrc_group,
    "rid": _rid,
    "simulcast": _simulcast,
    "sctp-port": lambda v: SctpPort(_int(v, "sctp-port", 0, 65535)),
    "max-message-size": lambda v: MaxMessageSize(_int(v, "max-message-size")),
}


def parse_attribute(text: str) -> AnyAttribute:
    """The part after ``a=`` → a typed attribute, or a generic :class:`Attribute`."""
    name, colon, value = text.partition(":")
    if not name or any(c.isspace() or c == ":" for c in name):
        raise SdpParseError(f"bad attribute name in {text[:60]!r}")
    if not colon:
        return Attribute(name, None)
    parser = _VALUE_PARSERS.get(name)
    if parser is None:
        return Attribute(name, value)
    try:
        attribute = parser(value)
    except SdpParseError:
        raise
    except (ValueError, IndexError) as exc:  # belt and braces: never leak these
        raise SdpParseError(f"bad a={name}: {exc}") from None
    return attribute


# --- line parsers -------------------------------------------------------------------


def _origin(v: str) -> Origin:
    user, sess_id, sess_version, net, addr_type, address = _split(v, 6, 6, "o=")
    return Origin(user, _int(sess_id, "o= sess-id"), _int(sess_version, "o= sess-version"),
                  net, addr_type, address)


def _connection(v: str) -> Connection:
    net, addr_type, address = _split(v, 3, 3, "c=")
    return Connection(net, addr_type, address)


def _bandwidth(v: str) -> Bandwidth:
    bw_type, colon, value = v.partition(":")
    if not colon:
        raise SdpParseError(f"b=: missing colon in {v[:40]!r}")
    return Bandwidth(_token(bw_type, "b= type"), _int(value, "b= value"))


def _timing(v: str) -> Timing:
    start, stop = _split(v, 2, 2, "t=")
    return Timing(_int(start, "t= start"), _int(stop, "t= stop"))


def _media(v: str) -> MediaSection:
    parts = _split(v, 4, 4096, "m=")
    kind, port_text, proto, formats = parts[0], parts[1], parts[2], parts[3:]
    port, slash, count = port_text.partition("/")
    section = MediaSection(kind, _int(port, "m= port", 0, 65535), proto, formats,
                           _int(count, "m= port count", 1, 65535) if slash else None)
    if section.is_rtp:
        for f in formats:
            _int(f, "m= payload type", 0, 127)
    return section


def parse(text: str | bytes) -> SessionDescription:
    """Parse SDP text; raises :class:`SdpParseError` (and nothing else) on malformed input."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        if len(text) > MAX_SDP_LENGTH:
            raise SdpParseError("description too long")
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise SdpParseError("description is not UTF-8") from None
    if not isinstance(text, str):
        raise SdpParseError(f"cannot parse {type(text).__name__} as SDP")
    if len(text) > MAX_SDP_LENGTH:
        raise SdpParseError("description too long")

    lines = [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
    lines = [line for line in lines if line]
    if not lines:
        raise SdpParseError("empty description")

    desc = SessionDescription(timings=[])
    # r= lines of each t=, gathered here and attached once at the end: rebuilding the frozen
    # Timing per r= line copied every earlier repeat, quadratic in a hostile description.
    repeats: list[list[str]] = []
    media: MediaSection | None = None
    seen_v = seen_o = seen_s = False
    for number, line in enumerate(lines, 1):
        if len(line) < 2 or line[1] != "=" or not ("a" <= line[0] <= "z"):
            raise SdpParseError(f"line {number}: not <type>=<value>: {line[:60]!r}")
        kind, value = line[0], line[2:]
        if number == 1 and kind != "v":
            raise SdpParseError("description must start with v=")
        if kind == "v":
            if number != 1:
                raise SdpParseError(f"line {number}: v= only allowed first")
            desc.version = _int(value, "v=", 0, 0)
            seen_v = True
        elif kind == "m":
            media = _media(value)
            desc.media.append(media)
        elif kind == "a":
            (media if media is not None else desc).attributes.append(parse_attribute(value))
        elif kind == "c":
            if media is not None:
                media.connections.append(_connection(value))
            elif desc.connection is None:
                desc.connection = _connection(value)
            else:
                raise SdpParseError(f"line {number}: second session-level c=")
        elif kind == "b":
            (media if media is not None else desc).bandwidths.append(_bandwidth(value))
        elif kind == "i":
            target = media if media is not None else desc
            if (target.title if media is not None else desc.info) is not None:
                raise SdpParseError(f"line {number}: second i=")
            if media is not None:
                media.title = value
            else:
                desc.info = value
        elif kind == "k":
            target = media if media is not None else desc
            if target.key is not None:
                raise SdpParseError(f"line {number}: second k=")
            target.key = value
        elif media is not None:
            raise SdpParseError(f"line {number}: {kind}= not allowed in a media section")
        elif kind == "o":
            if seen_o:
                raise SdpParseError(f"line {number}: second o=")
            desc.origin, seen_o = _origin(value), True
        elif kind == "s":
            if seen_s:
                raise SdpParseError(f"line {number}: second s=")
            desc.session_name, seen_s = value, True
        elif kind == "u":
            if desc.uri is not None:
                raise SdpParseError(f"line {number}: second u=")
            desc.uri = value
        elif kind == "e":
            desc.emails.append(value)
        elif kind == "p":
            desc.phones.append(value)
        elif kind == "t":
            desc.timings.append(_timing(value))
            repeats.append([])
        elif kind == "r":
            if not desc.timings:
                raise SdpParseError(f"line {number}: r= without t=")
            repeats[-1].append(value)
        elif kind == "z":
            if desc.zone is not None:
                raise SdpParseError(f"line {number}: second z=")
            desc.zone = value
        else:
            raise SdpParseError(f"line {number}: unknown line type {kind}=")
    if not (seen_v and seen_o and seen_s):
        raise SdpParseError("description lacks one of v=, o=, s=")
    if not desc.timings:
        raise SdpParseError("description lacks t=")
    desc.timings = [Timing(t.start, t.stop, tuple(r)) if r else t for t, r in zip(desc.timings, repeats)]
    return desc


# --- serialization -------------------------------------------------------------------


def _attribute_line(a: AnyAttribute) -> str:
    value = a.to_value()
    return f"a={a.name}" if value is None else f"a={a.name}:{value}"


def serialize_media(m: MediaSection) -> list[str]:
    port = str(m.port) if m.num_ports is None else f"{m.port}/{m.num_ports}"
    lines = [f"m={' '.join((m.kind, port, m.proto, *m.formats))}"]
    if m.title is not None:
        lines.append(f"i={m.title}")
    lines += [f"c={c.net_type} {c.addr_type} {c.address}" for c in m.connections]
    lines += [f"b={b.bw_type}:{b.value}" for b in m.bandwidths]
    if m.key is not None:
        lines.append(f"k={m.key}")
    lines += [_attribute_line(a) for a in m.attributes]
    return lines


def serialize(desc: SessionDescription) -> str:
    """Write ``desc`` as SDP text in RFC 8866 line order, CRLF line endings."""
    o = desc.origin
    lines = [
        f"v={desc.version}",
        f"o={o.username} {o.session_id} {o.session_version} {o.net_type} {o.addr_type} {o.address}",
        f"s={desc.session_name}",
    ]
    if desc.info is not None:
        lines.append(f"i={desc.info}")
    if desc.uri is not None:
        lines.append(f"u={desc.uri}")
    lines += [f"e={e}" for e in desc.emails]
    lines += [f"p={p}" for p in desc.phones]
    if desc.connection is not None:
        c = desc.connection
        lines.append(f"c={c.net_type} {c.addr_type} {c.address}")
    lines += [f"b={b.bw_type}:{b.value}" for b in desc.bandwidths]
    for t in desc.timings:
        lines.append(f"t={t.start} {t.stop}")
        lines += [f"r={r}" for r in t.repeats]
    if desc.zone is not None:
        lines.append(f"z={desc.zone}")
    if desc.key is not None:
        lines.append(f"k={desc.key}")
    lines += [_attribute_line(a) for a in desc.attributes]
    for m in desc.media:
        lines += serialize_media(m)
    return "\r\n".join(lines) + "\r\n"
