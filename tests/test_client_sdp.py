"""The client's SDP: our publisher offer and our answers to subscriber offers.

Checked against independent parties: aiortc's SDP parser reads our offer and
answer; the captured subscriber offers aiortc made for real clients are answered
and compared with what Chromium and the LiveKit Python SDK answered to the very
same offers (tests/fixtures/sdp/); the server side of our own negotiator
(``answer_offer``, ``SubscriberOffer.apply_answer``, which validate strictly)
accepts what we produce.
"""

from __future__ import annotations

import pathlib

import aiortc.sdp
import pytest
from budgets import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from rtp.errors import RtpStackError
from sdp.codecs import MediaKind
from sdp.model import Direction, Fingerprint, SetupRole
from sdp.negotiator import (
    DtlsRole,
    LocalParams,
    SubscriberOffer,
    answer_offer,
    local_dtls_role,
    negotiated_media,
)
from sdp.parser import parse, serialize
from trio_sfu.client.sdp_builder import (
    OfferedTrack,
    Transport,
    answer_subscriber_offer,
    build_publisher_offer,
    remote_transport,
)

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "sdp"
OURS = Transport("c1ie", "0123456789abcdef0123456789abcdef",
                 Fingerprint("sha-256", ":".join(["AB"] * 32)), 4242)
SERVER = LocalParams("srvu", "s" * 24, (Fingerprint("sha-256", ":".join(["CD"] * 32)),),
                     ("1 1 udp 2130706431 127.0.0.1 7882 typ host",))
TRACKS = [
    OfferedTrack("0", "audio", "stream", "cid-audio", "cname", (1111,)),
    OfferedTrack("1", "video", "stream", "cid-video", "cname", (2221, 2222, 2223), ("q", "h", "f")),
    OfferedTrack("2", "video", "stream", "cid-screen", "cname", (3333,)),
]


def fixture(name: str):
    return parse((FIXTURES / name).read_text())


def test_publisher_offer_read_by_aiortc() -> None:
    text = serialize(build_publisher_offer(OURS, TRACKS, version=3))
    theirs = aiortc.sdp.SessionDescription.parse(text)
    assert theirs.group[0].semantic == "BUNDLE" and theirs.group[0].items == ["0", "1", "2"]
    assert [m.kind for m in theirs.media] == ["audio", "video", "video"]
    for media, track in zip(theirs.media, TRACKS):
        assert media.direction == "sendonly" and media.rtcp_mux
        assert media.ice.usernameFragment == OURS.ice_ufrag and media.ice.password == OURS.ice_pwd
        assert media.dtls.role == "auto"  # a=setup:actpass
        assert media.dtls.fingerprints[0].value == OURS.fingerprint.value
        assert media.msid == f"stream {track.track_id}"
        assert media.ice_options == "trickle" and not media.ice_candidates
    audio, simulcast, screen = theirs.media
    assert [(c.mimeType, c.clockRate, c.channels) for c in audio.rtp.codecs] == [("audio/opus", 48000, 2)]
    assert [c.mimeType for c in simulcast.rtp.codecs] == ["video/VP8"]
    assert {(f.type, f.parameter) for f in simulcast.rtp.codecs[0].rtcpFeedback} >= {("nack", None), ("nack", "pli")}
    # rid-only simulcast: no SSRCs announced; single streams announce theirs.
    assert simulcast.ssrc == [] and [s.ssrc for s in audio.ssrc] == [1111] and [s.ssrc for s in screen.ssrc] == [3333]
    uris = {e.uri for e in simulcast.rtp.headerExtensions}
    assert "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id" in uris and "urn:ietf:params:rtp-hdrext:sdes:mid" in uris


def test_server_negotiator_accepts_our_offer() -> None:
    offer = parse(serialize(build_publisher_offer(OURS, TRACKS, version=1)))
    answer = answer_offer(offer, SERVER)
    assert [m.rejected for m in answer.media] == [False, False, False]
    assert answer.bundle_groups() == [("0", "1", "2")]
    # Offering actpass, the server answers passive: we run the DTLS client.
    assert local_dtls_role(answer, local_is_offerer=True) is DtlsRole.CLIENT
    media = negotiated_media(offer, answer)
    assert media["0"].ssrcs == (1111,) and media["0"].payload_type("opus") == 111
    assert media["1"].rids == ("q", "h", "f") and media["1"].payload_type("vp8") == 96
    assert media["1"].msid.track_id == "cid-video"
    assert media["2"].ssrcs == (3333,)
    remote = remote_transport(answer)
    assert (remote.ice_ufrag, remote.ice_pwd) == (SERVER.ice_ufrag, SERVER.ice_pwd)
    assert remote.candidates == SERVER.candidates and remote.end_of_candidates


@pytest.mark.parametrize("offer_name, real_answer_name", [
    ("chromium_subscriber_offer_sent.sdp", "chromium_subscriber_answer.sdp"),
    ("python_sdk_subscriber_offer_sent.sdp", "python_sdk_subscriber_answer.sdp"),
])
def test_answer_matches_what_real_clients_answered(offer_name: str, real_answer_name: str) -> None:
    offer = fixture(offer_name)
    real = fixture(real_answer_name)
    ours = answer_subscriber_offer(offer, OURS, version=1)
    # Same shape as the real client's answer: m-line kinds, mids, accepted-ness, directions, DTLS role.
    assert [(m.kind, m.mid, m.rejected) for m in ours.media] == [(m.kind, m.mid, m.rejected) for m in real.media]
    assert [m.direction for m in ours.media if m.kind != "application"] == [
        m.direction for m in real.media if m.kind != "application"]
    assert ours.bundle_groups() == real.bundle_groups()
    for m in ours.media:
        assert ours.effective_setup(m) is SetupRole.ACTIVE is real.effective_setup(real.media[0])
    # We accept every codec offered, so whatever the real client picked is among ours.
    for mine, theirs in zip(ours.media, real.media):
        assert {c.name.lower() for c in theirs.codecs()} <= {c.name.lower() for c in mine.codecs()}
    # aiortc reads our answer too.
    parsed = aiortc.sdp.SessionDescription.parse(serialize(ours))
    assert [m.kind for m in parsed.media] == [m.kind for m in offer.media]
    assert all(m.dtls.role == "client" for m in parsed.media)


def test_server_subscriber_offer_round_trip() -> None:
    """The server's own SubscriberOffer (strict about answers) accepts ours, twice (renegotiation)."""
    sub = SubscriberOffer(SERVER)
    sub.table.bind("TR_Aa", MediaKind.AUDIO, "PA_x|camera")
    offer = sub.create_offer()
    answer = answer_subscriber_offer(parse(serialize(offer)), OURS, version=1)
    result = sub.apply_answer(parse(serialize(answer)))
    assert sub.dtls_role is DtlsRole.SERVER  # we are the DTLS client (a=setup:active)
    assert sub.remote_ice_ufrag == OURS.ice_ufrag
    audio_mid = sub.table.find_by_track("TR_Aa").mid
    assert result[audio_mid].accepted and result[audio_mid].direction is Direction.SENDONLY

    sub.table.bind("TR_Vv", MediaKind.VIDEO, "PA_x|camera")
    offer = sub.create_offer()
    answer = answer_subscriber_offer(parse(serialize(offer)), OURS, version=2)
    result = sub.apply_answer(parse(serialize(answer)))
    video = sub.table.find_by_track("TR_Vv")
    assert result[video.mid].accepted and video.negotiated_codecs
    # The server announced SSRCs with msid track ids: what the client maps packets by.
    section = offer.section(video.mid)
    assert video.ssrc in section.ssrcs and section.msid.track_id == "TR_Vv"


def test_answer_rejects_what_it_cannot_take() -> None:
    offer = fixture("chromium_subscriber_offer_sent.sdp")
    offer.media[0].attributes = [a for a in offer.media[0].attributes if getattr(a, "name", "") != "rtcp-mux"]
    answer = answer_subscriber_offer(offer, OURS, version=1)
    assert answer.media[0].rejected and answer.media[0].direction is Direction.INACTIVE
    assert not answer.media[1].rejected


@settings(max_examples=examples(2), deadline=None)
@given(st.lists(st.sampled_from(range(3)), min_size=1, max_size=6), st.booleans())
def test_answer_keeps_offer_order_for_any_subset(indices: list[int], drop_bundle: bool) -> None:
    base = fixture("chromium_subscriber_offer_sent.sdp")
    offer = fixture("chromium_subscriber_offer_sent.sdp")
    offer.media = [base.media[i] for i in indices]
    if drop_bundle:
        offer.attributes = [a for a in offer.attributes if getattr(a, "name", "") != "group"]
    try:
        answer = answer_subscriber_offer(offer, OURS, version=1)
    except RtpStackError:
        assert len(set(indices)) < len(indices)  # only a repeated mid is refused
        return
    assert [m.mid for m in answer.media] == [m.mid for m in offer.media]
    assert len(parse(serialize(answer)).media) == len(offer.media)
