"""SDP parse/serialize against real captures, aiortc's SDP and property tests."""

import asyncio

import pytest
from budgets import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FIXTURES
from rtp.errors import ParseError
from sdp.errors import SdpParseError
from sdp.model import (
    Attribute, Bandwidth, Candidate, Connection, Direction, Extmap, Fingerprint, Fmtp, Group,
    IceOptions, IcePwd, IceUfrag, MaxMessageSize, MediaSection, Mid, Msid, MsidSemantic, Origin,
    Rid, RtcpFb, Rtpmap, SctpPort, SessionDescription, Setup, SetupRole, Simulcast,
    SimulcastStream, Ssrc, SsrcGroup, Timing, flag,
)
from sdp.parser import _VALUE_PARSERS, parse, parse_attribute, serialize

TYPED_NAMES = frozenset(_VALUE_PARSERS)

SDP_DIR = FIXTURES / "sdp"
FIXTURE_FILES = sorted(SDP_DIR.glob("*.sdp"))


def crlf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\n", "\r\n")


def test_fixtures_present():
    # The captures are committed by the fixture task; without them the
    # parametrized tests below would silently vanish.
    names = {p.name for p in FIXTURE_FILES}
    assert "chromium_publisher_offer_simulcast.sdp" in names
    assert "python_sdk_publisher_offer.sdp" in names


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.name)
def test_fixture_round_trips_byte_for_byte(path):
    text = path.read_text()
    desc = parse(text)
    assert serialize(desc) == crlf(text)
    # Every a= line survived, known or not, in order.
    original_attrs = [l for l in crlf(text).split("\r\n") if l.startswith("a=")]
    assert sum(1 for _ in desc.iter_all_attributes()) == len(original_attrs)


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.name)
def test_fixture_parses_from_bytes_and_lf(path):
    raw = path.read_bytes()
    assert parse(raw) == parse(raw.decode().replace("\r\n", "\n"))


def test_chromium_simulcast_offer_fields():
    desc = parse((SDP_DIR / "chromium_publisher_offer_simulcast.sdp").read_text())
    assert desc.origin.session_id == 2207754549309126104
    assert desc.origin.session_version == 2
    assert desc.bundle_groups() == [("0", "1")]
    assert desc.extmap_allow_mixed
    sem = desc.first(MsidSemantic)
    assert sem.semantic == "WMS" and sem.identifiers == ("c77bfbfc-6f79-420b-af84-8c634fb85850",)
    audio, video = desc.media
    assert (audio.kind, audio.port, audio.proto) == ("audio", 9, "UDP/TLS/RTP/SAVPF")
    assert audio.mid == "0" and audio.direction is Direction.SENDONLY
    assert audio.rtcp_mux and audio.has_flag("rtcp-rsize")
    assert audio.setup is SetupRole.ACTPASS
    assert audio.ice_ufrag == "P3yn" and audio.ice_pwd == "bbFNJ0aiXetb4W3bU0Y2prIP"
    assert audio.fingerprints[0].algorithm == "sha-256"
    assert audio.first(IceOptions).options == ("trickle",)
    opus = audio.codecs()[0]
    assert (opus.payload_type, opus.name, opus.clock_rate, opus.channels) == (111, "opus", 48000, 2)
    assert opus.fmtp == {"minptime": "10", "useinbandfec": "1", "stereo": "1"}
    assert opus.feedback == (("transport-cc", None),)
    red = audio.codecs()[1]
    assert red.name == "red" and red.parameters == "111/111"
    assert audio.ssrcs == [2966856180]
    assert audio.msid == Msid("c77bfbfc-6f79-420b-af84-8c634fb85850",
                              "085f960e-9116-4d58-9a8b-6bfa4c3ff28c")
    assert {e.uri: e.id for e in audio.extmaps}["urn:ietf:params:rtp-hdrext:sdes:mid"] == 4
    # The unknown a=rtcp-xr line is kept as a generic attribute.
    assert audio.generic("rtcp-xr") == [Attribute("rtcp-xr", "rcvr-rtt=all")]

    assert [c.payload_type for c in video.codecs()] == [int(f) for f in video.formats]
    vp8 = video.codecs()[0]
    assert vp8.name == "VP8" and ("nack", "pli") in vp8.feedback and ("ccm", "fir") in vp8.feedback
    rtx = video.codecs()[1]
    assert rtx.is_rtx and rtx.apt == 96
    assert [r.rid for r in video.rids] == ["q", "h", "f"]
    assert all(r.direction == "send" for r in video.rids)
    assert video.simulcast.send_rids() == ["q", "h", "f"]
    assert video.simulcast.recv == ()


def test_python_sdk_offer_fields():
    desc = parse((SDP_DIR / "python_sdk_publisher_offer.sdp").read_text())
    assert desc.bundle_groups() == [tuple(str(i) for i in range(7, 16))]
    dirs = [m.direction for m in desc.media]
    assert dirs[:6] == [Direction.RECVONLY] * 6
    assert dirs[6:8] == [Direction.SENDONLY] * 2
    video = desc.section("14")
    assert video.simulcast == Simulcast(send=((SimulcastStream("h"),), (SimulcastStream("q"),)))
    app = desc.section("15")
    assert app.formats == ["webrtc-datachannel"] and app.sctp_port == 5000
    assert app.max_message_size == 262144


def test_subscriber_answer_fixture_two_space_msid_semantic():
    text = (SDP_DIR / "chromium_subscriber_answer.sdp").read_text()
    desc = parse(text)
    sem = desc.first(MsidSemantic)
    assert sem.leading_spaces == 2 and sem.semantic == "WMS"
    assert "a=msid-semantic:  WMS\r\n" in serialize(desc)
    assert [m.setup for m in desc.media] == [SetupRole.ACTIVE] * 3


def test_candidate_parses_with_aioice():
    desc = parse((SDP_DIR / "chromium_subscriber_offer_sent.sdp").read_text())
    cand = desc.media[0].candidates[0].to_aioice()
    assert (cand.host, cand.port, cand.type, cand.transport) == ("198.18.0.1", 43092, "host", "udp")
    with pytest.raises(SdpParseError):
        Candidate("garbage").to_aioice()


def test_aiortc_sdp_round_trips_and_aiortc_reads_ours():
    """aiortc writes SDP in its own layout; we keep it byte for byte, and its parser reads ours."""
    from aiortc.sdp import SessionDescription as AiortcSdp

    from local_peers import loopback_peer_connection

    async def make_offer():
        pc = loopback_peer_connection()
        pc.addTransceiver("audio", direction="sendonly")
        pc.addTransceiver("video", direction="sendrecv")
        pc.createDataChannel("_reliable")
        offer = await pc.createOffer()  # no setLocalDescription: no sockets needed
        await pc.close()
        return offer.sdp

    text = asyncio.run(make_offer())
    desc = parse(text)
    assert serialize(desc) == crlf(text)
    theirs = AiortcSdp.parse(serialize(desc))
    assert [m.kind for m in theirs.media] == [m.kind for m in desc.media]
    assert [m.rtp.muxId for m in theirs.media[:2]] == [desc.media[0].mid, desc.media[1].mid]
    assert [c.payloadType for c in theirs.media[1].rtp.codecs] == desc.media[1].payload_types


@pytest.mark.parametrize("text, fragment", [
    ("", "empty"),
    ("o=- 1 1 IN IP4 0.0.0.0\r\n", "v="),
    ("v=1\r\no=- 1 1 IN IP4 x\r\ns=-\r\nt=0 0\r\n", "out of range"),
    ("v=0\r\ns=-\r\nt=0 0\r\n", "lacks"),
    ("v=0\r\no=- 1 1 IN IP4 x\r\ns=-\r\n", "t="),
    ("v=0\r\no=- x 1 IN IP4 x\r\ns=-\r\nt=0 0\r\n", "sess-id"),
    ("v=0\r\no=- 1 1 IN IP4 x\r\ns=-\r\nt=0 0\r\nthis is not sdp\r\n", "line 5"),
    ("v=0\r\no=- 1 1 IN IP4 x\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF opus\r\n", "payload type"),
    ("v=0\r\no=- 1 1 IN IP4 x\r\ns=-\r\nt=0 0\r\nm=audio 70000 RTP/AVP 0\r\n", "port"),
    ("v=0\r\no=- 1 1 IN IP4 x\r\ns=-\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\nt=0 0\r\n", "not allowed"),
    ("v=0\r\no=- 1 1 IN IP4 x\r\ns=-\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\na=rtpmap:300 x/1\r\n", "rtpmap"),
])
def test_malformed_descriptions_raise_sdp_parse_error(text, fragment):
    with pytest.raises(SdpParseError, match=fragment):
        parse(text)


@pytest.mark.parametrize("line", [
    "rtpmap:96", "rtpmap:96 VP8", "rtpmap:x VP8/90000", "rtpmap:96 VP8/0", "fmtp:96",
    "rtcp-fb:96", "extmap:15 urn:x", "extmap:0 urn:x", "extmap:1/sideways urn:x", "extmap:1",
    "ssrc:4294967296 cname:x", "ssrc:1", "ssrc-group:FID x", "rid:q sideways", "rid:q",
    "simulcast:send", "simulcast:send q;;f", "simulcast:send q recv", "simulcast:send q send h",
    "setup:maybe", "sctp-port:65536", "max-message-size:-1", "mid:", "msid:a b c",
    "fingerprint:sha-256", "ice-ufrag:", "group:", "msid-semantic:", ":x", "a b:c",
])
def test_malformed_attributes_raise(line):
    with pytest.raises(SdpParseError):
        parse_attribute(line)


def test_sdp_parse_error_is_in_the_stack_error_family():
    assert issubclass(SdpParseError, ParseError)


def test_length_limit():
    with pytest.raises(SdpParseError, match="too long"):
        parse("v=0\r\n" + "a=x\r\n" * 300_000)


def test_attribute_views_for_known_lines():
    assert parse_attribute("extmap:3/recvonly urn:x attrs here") == Extmap(
        3, "urn:x", Direction.RECVONLY, "attrs here")
    assert parse_attribute("rtcp-fb:* nack") == RtcpFb(None, "nack")
    assert parse_attribute("simulcast:recv q,~h;f send x") == Simulcast(
        send=((SimulcastStream("x"),),),
        recv=((SimulcastStream("q"), SimulcastStream("h", True)), (SimulcastStream("f"),)),
        recv_first=True)
    assert parse_attribute("ssrc:5 msid:a b") == Ssrc(5, "msid", "a b")
    assert parse_attribute("rid:f send max-width=1280;max-height=720") == Rid(
        "f", "send", "max-width=1280;max-height=720")
    assert parse_attribute("sendonly") == flag("sendonly")


# --- property tests ----------------------------------------------------------------

SETTINGS = settings(max_examples=examples(3), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

_REAL_LINES = sorted({l for p in FIXTURE_FILES for l in crlf(p.read_text()).split("\r\n") if l})


@SETTINGS
@given(st.text(max_size=400))
def test_arbitrary_text_only_raises_sdp_parse_error(text):
    try:
        desc = parse(text)
    except SdpParseError:
        return
    assert parse(serialize(desc)) == desc


@SETTINGS
@given(st.binary(max_size=400))
def test_arbitrary_bytes_only_raise_sdp_parse_error(data):
    try:
        parse(data)
    except SdpParseError:
        pass


_HEADER = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"


@SETTINGS
@given(st.lists(st.sampled_from(_REAL_LINES), max_size=30),
       st.lists(st.tuples(st.integers(0, 29), st.integers(0, 200), st.characters()), max_size=5))
def test_mutated_real_lines_only_raise_sdp_parse_error(lines, mutations):
    """Real lines shuffled and corrupted character-wise: parse or SdpParseError, and stable."""
    lines = list(lines)
    for index, position, char in mutations:
        if lines and index < len(lines):
            line = lines[index]
            lines[index] = line[:position] + char + line[position + 1:]
    text = _HEADER + "\r\n".join(lines)
    try:
        desc = parse(text)
    except SdpParseError:
        return
    assert parse(serialize(desc)) == desc


tokens = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126,
                                        blacklist_characters=":"), min_size=1, max_size=12)
rid_ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=8)
pts = st.integers(0, 127)
ssrcs = st.integers(0, 0xFFFFFFFF)
free_text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126),
                    min_size=1, max_size=20).filter(lambda s: s.strip(" ") == s)
simulcast_lists = st.lists(st.lists(st.builds(SimulcastStream, rid_ids, st.booleans()),
                                    min_size=1, max_size=3).map(tuple),
                           min_size=1, max_size=3).map(tuple)

attributes = st.one_of(
    st.builds(Attribute, tokens, st.none()),
    st.builds(Attribute, tokens.filter(lambda t: t not in TYPED_NAMES), free_text),
    st.builds(Group, tokens, st.lists(tokens, max_size=4).map(tuple)),
    st.builds(MsidSemantic, tokens, st.lists(tokens, max_size=2).map(tuple), st.integers(0, 2)),
    st.builds(IceUfrag, tokens), st.builds(IcePwd, tokens),
    st.builds(IceOptions, st.lists(tokens, min_size=1, max_size=3).map(tuple)),
    st.builds(Fingerprint, tokens, tokens), st.builds(Setup, st.sampled_from(SetupRole)),
    st.builds(Mid, tokens), st.builds(Candidate, free_text),
    st.builds(Rtpmap, pts, tokens.filter(lambda t: "/" not in t), st.integers(1, 1 << 20),
              st.none() | st.integers(1, 8)),
    st.builds(Fmtp, pts, free_text),
    st.builds(RtcpFb, st.none() | pts, tokens, st.none() | free_text),
    st.builds(Extmap, st.integers(1, 255).filter(lambda i: i != 15), tokens,
              st.none() | st.sampled_from(Direction), st.none() | free_text),
    st.builds(Msid, tokens, st.none() | tokens),
    st.builds(Ssrc, ssrcs, tokens, st.none() | free_text),
    st.builds(SsrcGroup, tokens, st.lists(ssrcs, max_size=3).map(tuple)),
    st.builds(Rid, rid_ids, st.sampled_from(["send", "recv"]), st.none() | free_text),
    st.builds(Simulcast, simulcast_lists, st.just(())),
    st.builds(Simulcast, simulcast_lists, simulcast_lists, st.booleans()),
    st.builds(SctpPort, st.integers(0, 65535)), st.builds(MaxMessageSize, st.integers(0, 1 << 40)),
)

connections = st.builds(Connection, tokens, tokens, tokens)
bandwidths = st.builds(Bandwidth, tokens, st.integers(0, 1 << 32))


@st.composite
def media_sections(draw):
    rtp = draw(st.booleans())
    proto = "UDP/TLS/RTP/SAVPF" if rtp else "UDP/DTLS/SCTP"
    formats = ([str(p) for p in draw(st.lists(pts, min_size=1, max_size=5))] if rtp
               else ["webrtc-datachannel"])
    return MediaSection(draw(tokens), draw(st.integers(0, 65535)), proto, formats,
                        num_ports=draw(st.none() | st.integers(1, 4)),
                        title=draw(st.none() | free_text),
                        connections=draw(st.lists(connections, max_size=2)),
                        bandwidths=draw(st.lists(bandwidths, max_size=2)),
                        key=draw(st.none() | free_text),
                        attributes=draw(st.lists(attributes, max_size=12)))


descriptions = st.builds(
    SessionDescription,
    origin=st.builds(Origin, tokens, st.integers(0, (1 << 64) - 1), st.integers(0, (1 << 64) - 1),
                     tokens, tokens, tokens),
    session_name=free_text,
    info=st.none() | free_text,
    uri=st.none() | free_text,
    emails=st.lists(free_text, max_size=2),
    phones=st.lists(free_text, max_size=2),
    connection=st.none() | connections,
    bandwidths=st.lists(bandwidths, max_size=2),
    timings=st.lists(st.builds(Timing, st.integers(0, 1 << 32), st.integers(0, 1 << 32),
                               st.lists(free_text, max_size=2).map(tuple)), min_size=1, max_size=2),
    zone=st.none() | free_text,
    key=st.none() | free_text,
    attributes=st.lists(attributes, max_size=8),
    media=st.lists(media_sections(), max_size=4),
)


@SETTINGS
@given(descriptions)
def test_generated_models_round_trip(desc):
    text = serialize(desc)
    assert parse(text) == desc
    assert serialize(parse(text)) == text


def test_repeat_lines_are_gathered_in_linear_work(monkeypatch):
    # r= lines used to rebuild the frozen Timing once per line, copying every earlier repeat:
    # a 1 MB description of r= lines took over four minutes of one event loop. Count the
    # repeats copied into Timing objects instead of timing the parse.
    import sdp.parser as parser_module

    copied = 0
    real_timing = parser_module.Timing

    def counting_timing(start=0, stop=0, repeats=()):
        nonlocal copied
        copied += len(repeats)
        return real_timing(start, stop, repeats)

    monkeypatch.setattr(parser_module, "Timing", counting_timing)
    n = 20_000
    text = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n" + "r=7d 1h 0 25h\r\n" * n + "t=1 2\r\nr=x\r\n"
    desc = parse(text)
    assert [len(t.repeats) for t in desc.timings] == [n, 1]
    assert desc.timings[0].repeats[0] == "7d 1h 0 25h" and desc.timings[1].repeats == ("x",)
    assert copied <= 2 * (n + 1)
