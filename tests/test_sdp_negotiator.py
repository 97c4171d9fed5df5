"""The publisher-side answerer against real offers (Chromium, libwebrtc via the Python SDK, aiortc)."""

import asyncio
import hashlib

import pytest

from conftest import FIXTURES
from sdp.codecs import EXT_DEPENDENCY_DESCRIPTOR, EXT_MID, EXT_RID, EXT_TWCC
from sdp.errors import NegotiationError
from sdp.model import Direction, Fingerprint, Group, Rid, SetupRole, flag
from sdp.negotiator import (
    MAX_OFFER_SECTIONS, DtlsRole, LocalParams, answer_offer, local_dtls_role, negotiated_media,
)
from sdp.parser import parse, serialize

SDP_DIR = FIXTURES / "sdp"


def local_params(**kw) -> LocalParams:
    digest = hashlib.sha256(b"server certificate").hexdigest().upper()
    fp = ":".join(digest[i:i + 2] for i in range(0, 64, 2))
    defaults = dict(ice_ufrag="SfuU", ice_pwd="sfu-password-0123456789ab",
                    fingerprints=(Fingerprint("sha-256", fp),),
                    candidates=("1 1 udp 2130706431 127.0.0.1 7882 typ host",), session_id=42)
    defaults.update(kw)
    return LocalParams(**defaults)


def fixture(name: str):
    return parse((SDP_DIR / name).read_text())


def loopback_only(monkeypatch):
    """aiortc gathers host candidates on every interface; keep the tests on loopback."""
    import aioice.ice
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


# --- Chromium simulcast publisher offer ----------------------------------------------


def test_answer_to_chromium_simulcast_offer():
    offer = fixture("chromium_publisher_offer_simulcast.sdp")
    answer = answer_offer(offer, local_params())
    text = serialize(answer)
    assert parse(text) == answer  # our output is itself parseable and stable

    assert answer.ice_lite
    assert answer.bundle_groups() == [("0", "1")]
    assert answer.extmap_allow_mixed  # the offer had it
    audio, video = answer.media
    for m in (audio, video):
        assert m.port == 9 and not m.rejected
        assert m.setup is SetupRole.PASSIVE  # offer said actpass: browser becomes DTLS client
        assert m.ice_ufrag == "SfuU" and m.rtcp_mux
        assert m.direction is Direction.RECVONLY  # offer was sendonly
        assert m.has_flag("rtcp-rsize")
    assert len(audio.candidates) == 1 and audio.has_flag("end-of-candidates")
    assert video.candidates == []

    # Audio: Opus and RED (over Opus, fmtp kept), the offer's PT numbers.
    assert [(c.payload_type, c.name) for c in audio.codecs()] == [(111, "opus"), (63, "red")]
    assert audio.codecs()[1].parameters == "111/111"
    assert audio.codecs()[0].parameters == "minptime=10;useinbandfec=1;stereo=1"
    assert audio.codecs()[0].feedback == (("transport-cc", None),)
    # Video: VP8, H264 42001f/42e01f with packetization-mode=1 only, AV1, VP9 profile 0,
    # each with its RTX; no mode-0 H264, no 4d001f, no VP9 profile 2, no red/ulpfec.
    assert [c.payload_type for c in video.codecs()] == [96, 97, 102, 103, 108, 109, 45, 46, 98, 99]
    names = {c.payload_type: c.name for c in video.codecs()}
    assert names[102] == names[108] == "H264" and names[45] == "AV1" and names[98] == "VP9"
    for c in video.codecs():
        if c.is_rtx:
            assert c.apt in names and not names[c.apt] == "rtx"
        else:
            assert set(c.feedback) == {("goog-remb", None), ("transport-cc", None), ("ccm", "fir"),
                                       ("nack", None), ("nack", "pli")}
    # Header extensions: supported ones with the offer's ids, unknown ones dropped.
    ext = {e.uri: e.id for e in video.extmaps}
    assert ext[EXT_MID] == 4 and ext[EXT_RID] == 10 and ext[EXT_TWCC] == 3
    assert ext[EXT_DEPENDENCY_DESCRIPTOR] == 12
    assert "urn:ietf:params:rtp-hdrext:toffset" not in ext
    assert not any("playout-delay" in u or "video-layers-allocation" in u for u in ext)
    # Simulcast accepted in the receive direction.
    assert video.rids == [Rid("q", "recv"), Rid("h", "recv"), Rid("f", "recv")]
    assert video.simulcast.recv_rids() == ["q", "h", "f"] and video.simulcast.send == ()
    assert "a=simulcast:recv q;h;f\r\n" in text

    negotiated = negotiated_media(offer, answer)
    assert negotiated["1"].rids == ("q", "h", "f")
    assert negotiated["1"].payload_type("vp8") == 96
    assert negotiated["1"].extensions[10] == EXT_RID
    assert negotiated["0"].ssrcs == (2966856180,)
    assert negotiated["0"].msid.track_id == "085f960e-9116-4d58-9a8b-6bfa4c3ff28c"
    assert negotiated["0"].direction is Direction.RECVONLY
    assert local_dtls_role(answer, local_is_offerer=False) is DtlsRole.SERVER


def test_answer_to_python_sdk_offer():
    offer = fixture("python_sdk_publisher_offer.sdp")
    answer = answer_offer(offer, local_params())
    mids = [m.mid for m in answer.media]
    assert mids == [m.mid for m in offer.media]
    # recvonly m-lines (left for downlink) become inactive: the SFU sends nothing on this PC.
    assert [m.direction for m in answer.media[:6]] == [Direction.INACTIVE] * 6
    assert answer.section("13").direction is Direction.RECVONLY
    video = answer.section("14")
    assert video.direction is Direction.RECVONLY
    assert [r.rid for r in video.rids] == ["h", "q"]
    assert video.simulcast.recv_rids() == ["h", "q"]
    app = answer.section("15")
    assert app.sctp_port == 5000 and app.max_message_size == 262144
    assert answer.bundle_groups() == [tuple(str(i) for i in range(7, 16))]
    # The candidate sits in the BUNDLE-tag section (the first accepted, mid 7).
    assert answer.media[0].candidates and not any(m.candidates for m in answer.media[1:])
    negotiated = negotiated_media(offer, answer)
    assert negotiated["13"].msid.track_id == "0bf99616-ed52-4de2-9dd2-5047dfabb8a4"
    assert negotiated["15"].max_message_size == 262144


@pytest.mark.parametrize("name", ["chromium_v1_join_offer.sdp", "python_sdk_v1_join_offer.sdp"])
def test_answer_to_single_pc_join_offers(name):
    offer = fixture(name)
    answer = answer_offer(offer, local_params())
    assert [m.kind for m in answer.media] == ["audio"] * 3 + ["video"] * 3 + ["application"]
    assert not any(m.rejected for m in answer.media)
    assert answer.bundle_groups() == [tuple(m.mid for m in offer.media)]
    # Every video m-line keeps VP8 at the offer's PT and has an RTX for it.
    for m in answer.media[3:6]:
        codecs = {c.payload_type: c for c in m.codecs()}
        assert codecs[96].name == "VP8" and any(c.apt == 96 for c in codecs.values())


def test_unsupported_sections_are_rejected_and_left_out_of_bundle():
    offer = fixture("chromium_publisher_offer_simulcast.sdp")
    video = offer.media[1]
    # Only H264 mode 0 and VP9 profile 2 left: nothing the SFU forwards.
    keep = {"104", "107", "100", "101"}
    video.formats = [f for f in video.formats if f in keep]
    answer = answer_offer(offer, local_params())
    assert answer.media[1].port == 0 and answer.media[1].mid == "1"
    assert answer.bundle_groups() == [("0",)]
    assert negotiated_media(offer, answer)["1"].accepted is False


def test_section_without_rtcp_mux_is_rejected():
    offer = fixture("chromium_publisher_offer_simulcast.sdp")
    offer.media[0].attributes.remove(flag("rtcp-mux"))
    answer = answer_offer(offer, local_params())
    assert answer.media[0].rejected and not answer.media[1].rejected
    assert answer.bundle_groups() == [("1",)]
    # The transport (and the candidate) moved to the first accepted section.
    assert answer.media[1].candidates


def test_red_without_its_opus_is_dropped():
    offer = fixture("chromium_publisher_offer_simulcast.sdp")
    offer.media[0].formats.remove("111")
    answer = answer_offer(offer, local_params())
    # Neither opus nor red: nothing left for audio.
    assert answer.media[0].rejected


@pytest.mark.parametrize("offered, answered, role", [
    (SetupRole.ACTPASS, SetupRole.PASSIVE, DtlsRole.SERVER),
    (SetupRole.ACTIVE, SetupRole.PASSIVE, DtlsRole.SERVER),
    (SetupRole.PASSIVE, SetupRole.ACTIVE, DtlsRole.CLIENT),
])
def test_dtls_setup_roles(offered, answered, role):
    offer = fixture("chromium_publisher_offer_simulcast.sdp")
    for m in offer.media:
        m.attributes = [a if a.name != "setup" else type(a)(offered) for a in m.attributes]
    answer = answer_offer(offer, local_params())
    assert {m.setup for m in answer.media} == {answered}
    assert local_dtls_role(answer, local_is_offerer=False) is role


def test_holdconn_and_missing_transport_are_negotiation_errors():
    offer = fixture("chromium_publisher_offer_simulcast.sdp")
    for m in offer.media:
        m.attributes = [a if a.name != "setup" else type(a)(SetupRole.HOLDCONN)
                        for a in m.attributes]
    with pytest.raises(NegotiationError, match="holdconn"):
        answer_offer(offer, local_params())
    offer = fixture("chromium_publisher_offer_simulcast.sdp")
    for m in offer.media:
        m.attributes = [a for a in m.attributes if a.name != "fingerprint"]
    with pytest.raises(NegotiationError, match="fingerprint"):
        answer_offer(offer, local_params())
    offer = fixture("chromium_publisher_offer_simulcast.sdp")
    offer.media = []
    with pytest.raises(NegotiationError):
        answer_offer(offer, local_params())


def test_offer_without_bundle_gets_one_section():
    offer = fixture("chromium_publisher_offer_simulcast.sdp")
    offer.attributes = [a for a in offer.attributes if not isinstance(a, Group)]
    answer = answer_offer(offer, local_params())
    assert [m.rejected for m in answer.media] == [False, True]
    assert answer.bundle_groups() == []


# --- aiortc as the publishing client ----------------------------------------------


def test_aiortc_publisher_accepts_our_answer(monkeypatch):
    loopback_only(monkeypatch)
    from aiortc import RTCSessionDescription

    from local_peers import loopback_peer_connection

    async def run():
        pc = loopback_peer_connection()
        try:
            pc.addTransceiver("audio", direction="sendonly")
            pc.addTransceiver("video", direction="sendonly")
            pc.createDataChannel("_reliable")
            await pc.setLocalDescription(await pc.createOffer())
            offer = parse(pc.localDescription.sdp)
            answer = answer_offer(offer, local_params())
            await pc.setRemoteDescription(RTCSessionDescription(serialize(answer), "answer"))
            transceivers = pc.getTransceivers()
            return (offer, answer, pc.signalingState,
                    [(t.mid, t.currentDirection) for t in transceivers],
                    transceivers[0].sender.transport._role,
                    transceivers[0].sender.transport.transport.role,
                    pc.sctp is not None)
        finally:
            await pc.close()

    offer, answer, state, directions, dtls_role, ice_role, has_sctp = asyncio.run(run())
    assert state == "stable"
    assert directions == [("0", "sendonly"), ("1", "sendonly")]
    assert dtls_role == "client"        # we answered passive
    assert ice_role == "controlling"    # we are ICE-lite
    assert has_sctp
    negotiated = negotiated_media(offer, answer)
    assert negotiated["0"].payload_type("opus") is not None
    assert negotiated["1"].payload_type("VP8") is not None
    assert negotiated["1"].ssrc_groups[0].semantics == "FID"


def test_aiortc_parses_our_answers_to_browser_offers():
    """aiortc's independent SDP parser reads what we send to Chromium/libwebrtc."""
    from aiortc.sdp import SessionDescription as AiortcSdp

    for name in ("chromium_publisher_offer_simulcast.sdp", "python_sdk_publisher_offer.sdp"):
        answer = answer_offer(fixture(name), local_params())
        theirs = AiortcSdp.parse(serialize(answer))
        assert theirs.group[0].items == list(answer.bundle_groups()[0])
        for ours, their in zip(answer.media, theirs.media):
            assert their.kind == ours.kind and their.port == ours.port
            if ours.is_rtp and not ours.rejected:
                assert [c.payloadType for c in their.rtp.codecs] == ours.payload_types
                assert their.dtls.role == "server"
                assert their.ice.usernameFragment == "SfuU"


# --- property tests: the negotiator only ever raises NegotiationError ---------------

from budgets import examples
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from sdp.errors import SdpParseError  # noqa: E402

OFFER_FIXTURES = ["chromium_publisher_offer_simulcast.sdp", "python_sdk_publisher_offer.sdp",
                  "chromium_v1_join_offer.sdp", "python_sdk_v1_join_offer.sdp"]
OFFER_LINES = {name: (SDP_DIR / name).read_text().replace("\r\n", "\n").split("\n")[:-1]
               for name in OFFER_FIXTURES}
ALL_LINES = sorted({l for lines in OFFER_LINES.values() for l in lines})

edits = st.lists(st.tuples(
    st.sampled_from(["delete", "duplicate", "replace", "corrupt"]),
    st.integers(0, 10_000), st.sampled_from(ALL_LINES), st.integers(0, 80), st.characters()),
    max_size=6)


def mutate(lines: list[str], script) -> str:
    lines = list(lines)
    for op, index, other, position, char in script:
        if not lines:
            break
        i = index % len(lines)
        if op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "replace":
            lines[i] = other
        else:
            lines[i] = lines[i][:position] + char + lines[i][position + 1:]
    return "\r\n".join(lines) + "\r\n"


@settings(max_examples=examples(2.5), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(OFFER_FIXTURES), edits)
def test_answer_offer_on_mutated_offers_raises_only_negotiation_error(name, script):
    try:
        offer = parse(mutate(OFFER_LINES[name], script))
    except SdpParseError:
        return
    try:
        answer = answer_offer(offer, local_params())
    except NegotiationError:
        return
    assert parse(serialize(answer)) == answer
    assert len(answer.media) == len(offer.media)
    accepted = [a.mid for a in answer.media if not a.rejected]
    assert answer.bundle_groups() in ([tuple(accepted)] if accepted else [], [])
    for o, a in zip(offer.media, answer.media):
        assert a.mid == o.mid
        if a.rejected or not a.is_rtp:
            continue
        offered = {c.payload_type: c for c in o.codecs()}
        for c in a.codecs():
            assert offered[c.payload_type].name == c.name  # offerer's PT numbers kept
            assert not c.is_rtx or c.apt in {x.payload_type for x in a.codecs()}
        assert not a.direction.sends


def _offer_with_sections(count: int) -> str:
    """A usable first m-line, then the smallest m-lines a client can write."""
    first = fixture("chromium_publisher_offer_simulcast.sdp")
    text = serialize(first)
    return text + "m=a 0 b c\r\n" * (count - len(first.media))


def test_offer_with_more_m_lines_than_the_limit_is_refused():
    # 80,000 one-word m-lines (880 KB) were answered with 18.5 MB: each rejected section
    # repeats the transport attributes. Past MAX_OFFER_SECTIONS the offer is refused.
    with pytest.raises(NegotiationError, match="media sections"):
        answer_offer(parse(_offer_with_sections(MAX_OFFER_SECTIONS + 1)), local_params())
    answer = answer_offer(parse(_offer_with_sections(MAX_OFFER_SECTIONS)), local_params())
    assert len(answer.media) == MAX_OFFER_SECTIONS
    assert len(parse(serialize(answer)).media) == MAX_OFFER_SECTIONS
