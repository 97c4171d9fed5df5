"""The one answerer (``sdp.negotiator.answer_offer``) as a receiving client: ``RECEIVER_ANSWER``.

Our client answers the server's subscriber offers with it. Checked against independent parties:
the subscriber offers aiortc made for real clients are answered and compared with what Chromium
and the LiveKit Python SDK answered to the very same offers (tests/fixtures/sdp/); aiortc's SDP
parser reads the answers; the server side of our own negotiator (``SubscriberOffer.apply_answer``,
which validates strictly) accepts them. And where the two policies differ (the SFU's answer to a
publisher offer and the receiver's), only what the policy names differs.
"""

from __future__ import annotations

import aiortc.sdp
import attrs
import pytest
from budgets import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import FIXTURES
from rtp.errors import RtpStackError
from sdp.codecs import MediaKind
from sdp.errors import NegotiationError
from sdp.model import Direction, Fingerprint, SetupRole
from sdp.negotiator import (
    RECEIVER_ANSWER,
    SFU_ANSWER,
    AnswerPolicy,
    CodecChoice,
    DtlsRole,
    LocalParams,
    SubscriberOffer,
    answer_offer,
    local_dtls_role,
    rejected_answer_media,
    remote_transport,
)
from sdp.parser import parse, serialize

SDP_DIR = FIXTURES / "sdp"
CLIENT = LocalParams("c1ie", "0123456789abcdef0123456789abcdef",
                     (Fingerprint("sha-256", ":".join(["AB"] * 32)),), session_id=4242, ice_options=("trickle",))
SERVER = LocalParams("srvu", "s" * 24, (Fingerprint("sha-256", ":".join(["CD"] * 32)),),
                     ("1 1 udp 2130706431 127.0.0.1 7882 typ host",))


def fixture(name: str):
    return parse((SDP_DIR / name).read_text())


def receive(offer, version: int = 1, policy: AnswerPolicy = RECEIVER_ANSWER):
    return answer_offer(offer, CLIENT, session_version=version, policy=policy)


@pytest.mark.parametrize("offer_name, real_answer_name", [
    ("chromium_subscriber_offer_sent.sdp", "chromium_subscriber_answer.sdp"),
    ("python_sdk_subscriber_offer_sent.sdp", "python_sdk_subscriber_answer.sdp"),
])
def test_answer_matches_what_real_clients_answered(offer_name: str, real_answer_name: str) -> None:
    offer = fixture(offer_name)
    real = fixture(real_answer_name)
    ours = receive(offer)
    # Same shape as the real client's answer: m-line kinds, mids, accepted-ness, directions, DTLS role.
    assert [(m.kind, m.mid, m.rejected) for m in ours.media] == [(m.kind, m.mid, m.rejected) for m in real.media]
    assert [m.direction for m in ours.media if m.kind != "application"] == [
        m.direction for m in real.media if m.kind != "application"]
    assert ours.bundle_groups() == real.bundle_groups()
    for m in ours.media:
        assert ours.effective_setup(m) is SetupRole.ACTIVE is real.effective_setup(real.media[0])
    # We accept every codec and header extension offered, so whatever the real client kept is among ours.
    for mine, theirs in zip(ours.media, real.media):
        assert {c.name.lower() for c in theirs.codecs()} <= {c.name.lower() for c in mine.codecs()}
        assert {e.uri for e in theirs.extmaps} <= {e.uri for e in mine.extmaps}
    # A full ICE agent that trickles, as the real clients: no candidates, no a=ice-lite.
    assert not ours.ice_lite and not any(m.candidates for m in ours.media)
    assert all(m.ice_ufrag == CLIENT.ice_ufrag for m in ours.media)
    # aiortc reads our answer too.
    parsed = aiortc.sdp.SessionDescription.parse(serialize(ours))
    assert [m.kind for m in parsed.media] == [m.kind for m in offer.media]
    assert all(m.dtls.role == "client" for m in parsed.media)
    assert all(m.ice_options == "trickle" for m in parsed.media)
    assert local_dtls_role(ours, local_is_offerer=False) is DtlsRole.CLIENT


def test_the_server_accepts_our_answers_to_its_offers_across_a_renegotiation() -> None:
    """The server's own SubscriberOffer (strict about answers) accepts ours, twice."""
    sub = SubscriberOffer(SERVER)
    sub.table.bind("TR_Aa", MediaKind.AUDIO, "PA_x|camera")
    offer = sub.create_offer()
    assert parse(serialize(offer)).ice_lite
    answer = receive(parse(serialize(offer)), version=1)
    result = sub.apply_answer(parse(serialize(answer)))
    assert sub.dtls_role is DtlsRole.SERVER  # we are the DTLS client (a=setup:active)
    assert sub.remote_ice_ufrag == CLIENT.ice_ufrag
    audio_mid = sub.table.find_by_track("TR_Aa").mid
    assert result[audio_mid].accepted and result[audio_mid].direction is Direction.SENDONLY

    sub.table.bind("TR_Vv", MediaKind.VIDEO, "PA_x|camera")
    offer = sub.create_offer()
    answer = receive(parse(serialize(offer)), version=2)
    result = sub.apply_answer(parse(serialize(answer)))
    video = sub.table.find_by_track("TR_Vv")
    assert result[video.mid].accepted and video.negotiated_codecs
    # The data channel line is accepted with our own SCTP port and limit.
    application = next(m for m in answer.media if m.kind == "application")
    assert not application.rejected
    assert (application.sctp_port, application.max_message_size) == (CLIENT.sctp_port, CLIENT.max_message_size)


def test_ice_lite_is_declared_only_when_the_policy_says() -> None:
    offer = fixture("chromium_subscriber_offer_sent.sdp")
    assert not receive(offer).ice_lite
    assert receive(offer, policy=attrs.evolve(RECEIVER_ANSWER, ice_lite=True)).ice_lite


@pytest.mark.parametrize("offered, sfu, receiver", [
    (SetupRole.ACTPASS, SetupRole.PASSIVE, SetupRole.ACTIVE),  # the choice is ours: the policy's
    (SetupRole.PASSIVE, SetupRole.ACTIVE, SetupRole.ACTIVE),
    (SetupRole.ACTIVE, SetupRole.PASSIVE, SetupRole.PASSIVE),
    (None, SetupRole.PASSIVE, SetupRole.PASSIVE),  # no a=setup means active (RFC 4145 §4)
])
def test_the_setup_role_is_the_policys_only_when_the_offer_leaves_it_open(offered, sfu, receiver) -> None:
    text = (SDP_DIR / "chromium_subscriber_offer_sent.sdp").read_text()
    replacement = f"a=setup:{offered.value}" if offered is not None else ""
    offer = parse("\r\n".join(line for line in (
        replacement if line.startswith("a=setup:") else line for line in text.splitlines()) if line) + "\r\n")
    for policy, expected in ((SFU_ANSWER, sfu), (RECEIVER_ANSWER, receiver)):
        answer = answer_offer(offer, CLIENT, policy=policy)
        assert {answer.effective_setup(m) for m in answer.media} == {expected}


def test_holdconn_is_refused() -> None:
    text = (SDP_DIR / "chromium_subscriber_offer_sent.sdp").read_text().replace("a=setup:actpass", "a=setup:holdconn")
    with pytest.raises(NegotiationError, match="holdconn"):
        receive(parse(text))


def test_a_policy_takes_active_or_passive_only() -> None:
    with pytest.raises(ValueError):
        AnswerPolicy(CodecChoice.AS_OFFERED, None, SetupRole.ACTPASS, ice_lite=False)


def test_the_two_policies_differ_only_in_codecs_extensions_setup_and_ice_lite() -> None:
    """The same publisher offer answered as the SFU and as a receiver: the SFU narrows codecs,
    their feedback and extensions to what it forwards; the receiver takes them as offered.
    The m-lines, their acceptance and directions, the bundle and the transport are the same."""
    offer = fixture("chromium_publisher_offer_simulcast.sdp")
    sfu = answer_offer(offer, CLIENT, policy=SFU_ANSWER)
    taker = answer_offer(offer, CLIENT, policy=RECEIVER_ANSWER)
    assert [(m.kind, m.mid, m.rejected, m.direction) for m in sfu.media] == [
        (m.kind, m.mid, m.rejected, m.direction) for m in taker.media]
    assert sfu.bundle_groups() == taker.bundle_groups()
    assert sfu.ice_lite and not taker.ice_lite
    for offered, narrowed, taken in zip(offer.media, sfu.media, taker.media):
        assert [c.payload_type for c in taken.codecs()] == [c.payload_type for c in offered.codecs()]
        assert taken.codecs() == offered.codecs()  # feedback as offered too
        assert {c.payload_type for c in narrowed.codecs()} <= {c.payload_type for c in offered.codecs()}
        assert [e.uri for e in taken.extmaps] == [e.uri for e in offered.extmaps]
        assert {e.uri for e in narrowed.extmaps} <= {e.uri for e in offered.extmaps}
        # Both answer the offered simulcast as receivers.
        assert [r.rid for r in taken.rids] == [r.rid for r in narrowed.rids]
    video_offered, video_sfu = offer.media[1], sfu.media[1]
    assert len(video_sfu.codecs()) < len(video_offered.codecs())  # the fixture offers what no SFU forwards


def test_answer_rejects_what_it_cannot_take() -> None:
    offer = fixture("chromium_subscriber_offer_sent.sdp")
    offer.media[0].attributes = [a for a in offer.media[0].attributes if getattr(a, "name", "") != "rtcp-mux"]
    answer = receive(offer)
    assert answer.media[0].rejected and answer.media[0].direction is Direction.INACTIVE
    assert not answer.media[1].rejected
    assert answer.bundle_groups()[0] == tuple(m.mid for m in answer.media[1:])


def test_a_rejected_section_is_a_port_zero_inactive_answer_to_its_line() -> None:
    offer = fixture("chromium_subscriber_offer_sent.sdp")
    audio = offer.media[0]
    rejected = rejected_answer_media(audio, CLIENT, SetupRole.ACTIVE)
    assert rejected.rejected and rejected.port == 0 and rejected.mid == audio.mid
    assert rejected.direction is Direction.INACTIVE and rejected.kind == "audio"
    assert [c.payload_type for c in rejected.codecs()] == [c.payload_type for c in audio.codecs()]
    # In an answer in place of the accepted line, aiortc reads it as the refusal it is.
    answer = receive(offer)
    answer.media[0] = rejected
    theirs = aiortc.sdp.SessionDescription.parse(serialize(answer))
    assert theirs.media[0].port == 0 and theirs.media[0].direction == "inactive"
    assert theirs.media[1].port != 0


@settings(max_examples=examples(2), deadline=None)
@given(st.lists(st.sampled_from(range(3)), min_size=1, max_size=6), st.booleans())
def test_answer_keeps_offer_order_for_any_subset(indices: list[int], drop_bundle: bool) -> None:
    base = fixture("chromium_subscriber_offer_sent.sdp")
    offer = fixture("chromium_subscriber_offer_sent.sdp")
    offer.media = [base.media[i] for i in indices]
    if drop_bundle:
        offer.attributes = [a for a in offer.attributes if getattr(a, "name", "") != "group"]
    try:
        answer = receive(offer)
    except RtpStackError:
        assert len(set(indices)) < len(indices)  # only a repeated mid is refused
        return
    assert [m.mid for m in answer.media] == [m.mid for m in offer.media]
    assert len(parse(serialize(answer)).media) == len(offer.media)
    # One transport: without BUNDLE only the first m-line can have it.
    accepted = [m for m in answer.media if not m.rejected]
    assert accepted and (not drop_bundle or len(accepted) == 1)


# --- the peer's transport ------------------------------------------------------------------


def test_remote_transport_reads_the_bundle_transport_of_a_description() -> None:
    offer = fixture("chromium_subscriber_offer_sent.sdp")
    remote = remote_transport(offer)
    first = offer.media[0]
    assert (remote.ice_ufrag, remote.ice_pwd) == (offer.effective_ufrag(first), offer.effective_pwd(first))
    assert [algorithm for algorithm, _ in remote.fingerprints] == ["sha-256", "sha-384", "sha-512"]
    assert remote.candidates and all(" typ " in c for c in remote.candidates) and remote.end_of_candidates
    # Our own trickling answer carries credentials and a fingerprint, no candidates.
    ours = remote_transport(receive(offer))
    assert ours.ice_ufrag == CLIENT.ice_ufrag and ours.fingerprints == (("sha-256", CLIENT.fingerprints[0].value),)
    assert ours.candidates == () and not ours.end_of_candidates


@pytest.mark.parametrize("drop, message", [
    ("a=ice-ufrag", "ICE credentials"),
    ("a=fingerprint", "fingerprint"),
])
def test_remote_transport_refuses_a_description_without_its_transport(drop: str, message: str) -> None:
    text = (SDP_DIR / "chromium_subscriber_offer_sent.sdp").read_text()
    description = parse("\r\n".join(line for line in text.splitlines() if not line.startswith(drop)) + "\r\n")
    with pytest.raises(NegotiationError, match=message):
        remote_transport(description)
    with pytest.raises(NegotiationError, match=message):
        receive(description)


def test_remote_transport_refuses_a_description_with_no_live_line() -> None:
    offer = fixture("chromium_subscriber_offer_sent.sdp")
    for m in offer.media:
        m.port = 0
    with pytest.raises(NegotiationError, match="no live m-line"):
        remote_transport(offer)
