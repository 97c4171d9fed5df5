"""The server's subscriber offers, answered by aiortc and by captured Chromium/libwebrtc answers."""

import asyncio
import copy
import hashlib

import pytest

from conftest import FIXTURES
from sdp.codecs import MediaKind
from sdp.errors import NegotiationError, TransceiverInvariantError
from sdp.model import Direction, Fingerprint, Mid, Rtpmap, SetupRole, Ssrc, SsrcGroup
from sdp.negotiator import (
    DtlsRole, LocalParams, SignalingState, SubscriberOffer, local_dtls_role, negotiated_media,
)
from sdp.parser import parse, serialize
from sdp.transceivers import TransceiverState

SDP_DIR = FIXTURES / "sdp"


def local_params() -> LocalParams:
    digest = hashlib.sha256(b"server certificate").hexdigest().upper()
    return LocalParams(
        ice_ufrag="SfuU", ice_pwd="sfu-password-0123456789ab",
        fingerprints=(Fingerprint("sha-256", ":".join(digest[i:i + 2] for i in range(0, 64, 2))),),
        candidates=("1 1 udp 2130706431 127.0.0.1 7882 typ host",), session_id=7)


class AiortcSubscriber:
    """aiortc playing the LiveKit client on its subscriber PC: it answers our offers."""

    def __init__(self):
        from local_peers import loopback_peer_connection
        self.pc = loopback_peer_connection()
        self.tracks = []
        self.pc.on("track", self.tracks.append)

    async def answer(self, offer_text: str) -> str:
        from aiortc import RTCSessionDescription
        await self.pc.setRemoteDescription(RTCSessionDescription(offer_text, "offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return self.pc.localDescription.sdp


@pytest.fixture
def loopback(monkeypatch):
    import aioice.ice
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


def test_first_offer_has_only_data_channel_and_aiortc_accepts_it(loopback):
    sub = SubscriberOffer(local_params())
    offer = sub.create_offer()
    assert [m.kind for m in offer.media] == ["application"]
    assert offer.ice_lite and offer.media[0].setup is SetupRole.ACTPASS

    async def run():
        client = AiortcSubscriber()
        try:
            return await client.answer(serialize(offer)), client.pc.sctp is not None
        finally:
            await client.pc.close()

    answer_text, has_sctp = asyncio.run(run())
    result = sub.apply_answer(parse(answer_text))
    assert has_sctp and result["0"].accepted and result["0"].sctp_port == 5000
    assert sub.state is SignalingState.STABLE
    assert sub.dtls_role is DtlsRole.SERVER  # aiortc answered active
    assert sub.remote_ice_ufrag and sub.remote_fingerprints


def test_aiortc_subscriber_full_cycle(loopback):
    """Bind, offer, answer, unbind+cache, re-bind, stop, recycle — aiortc answers each offer."""
    sub = SubscriberOffer(local_params(), cname="sfu-cname")
    table = sub.table
    audio = table.bind("TR_a", MediaKind.AUDIO, "PA_x|camera")
    video = table.bind("TR_v", MediaKind.VIDEO, "PA_x|camera", )

    async def run():
        client = AiortcSubscriber()
        log = []
        try:
            # 1. Two tracks.
            offer1 = sub.create_offer()
            answer1 = parse(await client.answer(serialize(offer1)))
            log.append(("1", offer1, answer1, sub.apply_answer(answer1),
                        [t.id for t in client.tracks]))
            # 2. Audio's source closed expecting a resume (cached), a second video appears.
            table.unbind("TR_a", cache=True)
            table.bind("TR_v2", MediaKind.VIDEO, "PA_y|camera")
            offer2 = sub.create_offer()
            answer2 = parse(await client.answer(serialize(offer2)))
            log.append(("2", offer2, answer2, sub.apply_answer(answer2),
                        [(t.mid, t.currentDirection) for t in client.pc.getTransceivers()]))
            # 3. Audio resubscribed: same m-line, same SSRC.
            table.bind("TR_a", MediaKind.AUDIO, "PA_x|camera")
            offer3 = sub.create_offer()
            answer3 = parse(await client.answer(serialize(offer3)))
            log.append(("3", offer3, answer3, sub.apply_answer(answer3),
                        [(t.mid, t.currentDirection) for t in client.pc.getTransceivers()]))
        finally:
            await client.pc.close()
        return log

    log = asyncio.run(run())
    (_, offer1, answer1, result1, track_ids), (_, offer2, answer2, result2, dirs2), \
        (_, offer3, answer3, result3, dirs3) = log

    # Offer 1: data channel first (it existed first), then audio and video sendonly with msid/ssrc.
    assert [m.kind for m in offer1.media] == ["application", "audio", "video"]
    a1, v1 = offer1.media[1], offer1.media[2]
    assert a1.direction is Direction.SENDONLY and a1.msid.track_id == "TR_a"
    assert a1.msid.stream_id == "PA_x|camera"
    assert Ssrc(audio.ssrc, "cname", "sfu-cname") in a1.attributes
    assert Ssrc(audio.ssrc, "msid", "PA_x|camera TR_a") in a1.attributes
    assert SsrcGroup("FID", (video.ssrc, video.rtx_ssrc)) in v1.attributes
    assert offer1.bundle_groups() == [("0", "1", "2")]
    assert sorted(track_ids) == ["TR_a", "TR_v"]  # aiortc took the track ids from our msid
    assert result1["1"].payload_type("opus") == 111  # aiortc kept our numbers
    assert result1["2"].payload_type("VP8") == 96
    assert audio.negotiated_codecs == result1["1"].codecs

    # Offer 2: m-line order and mids stable; the audio line is held for TR_a's resume, so it is
    # offered as aiortc last saw it (sendonly, same msid and SSRC); new video appended.
    assert [m.mid for m in offer2.media] == ["0", "1", "2", "3"]
    assert offer2.media[1].direction is Direction.SENDONLY and offer2.media[1].msid.track_id == "TR_a"
    assert offer2.media[1].ssrcs == [audio.ssrc] and offer2.media[1].msid.stream_id == "PA_x|camera"
    assert offer2.media[3].msid.track_id == "TR_v2"
    assert dict(dirs2)["1"] == "recvonly" and dict(dirs2)["3"] == "recvonly"
    assert offer2.origin.session_version == offer1.origin.session_version + 1
    assert offer2.origin.session_id == offer1.origin.session_id

    # Offer 3: TR_a back on mid 1 with its old SSRC, no new m-line.
    assert [m.mid for m in offer3.media] == ["0", "1", "2", "3"]
    assert offer3.media[1].msid.track_id == "TR_a"
    assert offer3.media[1].ssrcs == [audio.ssrc] == [result1["1"].ssrcs[0]]
    assert dict(dirs3)["1"] == "recvonly"
    assert [t.track_id for t in sub.table.transceivers] == [None, "TR_a", "TR_v", "TR_v2"]


def test_an_idle_line_is_offered_inactive_unless_the_cache_holds_it_for_a_resume():
    sub = SubscriberOffer(local_params(), cname="sfu-cname")
    audio = sub.table.bind("TR_a", MediaKind.AUDIO, "PA_x|microphone")
    sub.table.unbind("TR_a")  # unsubscribed: nothing comes back to this line
    line = sub.create_offer().media[1]
    assert line.direction is Direction.INACTIVE and line.msid is None and line.ssrcs == []
    again = sub.table.bind("TR_a", MediaKind.AUDIO, "PA_x|microphone")
    sub.table.unbind("TR_a", cache=True)  # its source closes expecting a resume
    line = sub.create_offer().media[1]
    assert (again.mid, line.mid) == (audio.mid, audio.mid)
    assert line.direction is Direction.SENDONLY and line.msid.track_id == "TR_a"
    assert line.msid.stream_id == "PA_x|microphone" and line.ssrcs == [again.ssrc]
    sub.table.cache.discard_mid(audio.mid)  # the resume will not happen: plain idle again
    line = sub.create_offer().media[1]
    assert line.direction is Direction.INACTIVE and line.msid is None and line.ssrcs == []


def test_stop_and_recycle_with_aiortc(loopback):
    sub = SubscriberOffer(local_params())
    sub.table.bind("TR_v", MediaKind.VIDEO, "PA_x|camera")

    async def run():
        client = AiortcSubscriber()
        try:
            sub.apply_answer(parse(await client.answer(serialize(sub.create_offer()))))
            sub.table.stop("1")
            offer2 = sub.create_offer()
            answer2 = parse(await client.answer(serialize(offer2)))
            state_before = sub.table.get("1").state
            sub.apply_answer(answer2)
            state_after = sub.table.get("1").state
            sub.table.bind("TR_w", MediaKind.AUDIO, "PA_y|camera")
            offer3 = sub.create_offer()
            answer3 = parse(await client.answer(serialize(offer3)))
            sub.apply_answer(answer3)
            return offer2, answer2, state_before, state_after, offer3, answer3
        finally:
            await client.pc.close()

    offer2, answer2, before, after, offer3, answer3 = asyncio.run(run())
    assert offer2.media[1].port == 0 and offer2.bundle_groups() == [("0",)]
    # aiortc 1.x answers a port-0 m-line with a live port (against RFC 3264 §6);
    # apply_answer treats what we offered stopped as stopped whatever the port says.
    assert answer2.media[1].mid == "1"
    assert before is TransceiverState.STOPPING and after is TransceiverState.RECYCLABLE
    # The slot was reused by a new transceiver with a new mid (never "1" again).
    assert [(m.kind, m.mid, m.port != 0) for m in offer3.media] == [
        ("application", "0", True), ("audio", "2", True)]
    assert answer3.media[1].mid == "2" and not answer3.media[1].rejected


def test_slot_is_not_recycled_before_the_answer():
    sub = SubscriberOffer(local_params())
    sub.table.bind("TR_v", MediaKind.VIDEO, "s")
    sub.create_offer()
    sub.table.stop("1")
    # No answer applied yet for an offer carrying the port-0 line: a new track appends.
    t = sub.table.bind("TR_w", MediaKind.VIDEO, "s")
    assert t.mid == "2" and [x.mid for x in sub.table.transceivers] == ["0", "1", "2"]


@pytest.mark.parametrize("client", ["chromium", "python_sdk"])
def test_captured_subscriber_answers(client):
    """Chromium's / libwebrtc's answer to a captured server offer: DTLS role, codecs, rtx, extensions."""
    offer = parse((SDP_DIR / f"{client}_subscriber_offer_sent.sdp").read_text())
    answer = parse((SDP_DIR / f"{client}_subscriber_answer.sdp").read_text())
    result = negotiated_media(offer, answer, local_is_offerer=True)
    assert local_dtls_role(answer, local_is_offerer=True) is DtlsRole.SERVER
    assert result["0"].direction is Direction.SENDONLY
    assert result["0"].payload_type("opus") == 96
    assert result["0"].ssrcs == tuple(offer.media[0].ssrcs)
    assert result["1"].payload_type("VP8") == 97
    assert {c.apt for c in result["1"].codecs if c.is_rtx} == {97, 99, 101}
    assert result["1"].extensions == {3: "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
                                     1: "urn:ietf:params:rtp-hdrext:sdes:mid"}
    assert result["2"].sctp_port == 5000


def _offer_and_answer(sub):
    """Our offer and a hand-made answer from it (as a client would), to corrupt in tests."""
    offer = sub.create_offer()
    answer = copy.deepcopy(offer)
    answer.attributes = [a for a in answer.attributes if getattr(a, "name", "") != "ice-lite"]
    for m in answer.media:
        m.attributes = [type(a)(SetupRole.ACTIVE) if a.name == "setup" else a
                        for a in m.attributes if a.name not in ("ssrc", "ssrc-group", "msid")]
        m.attributes = [a if a.name != "sendonly" else type(a)("recvonly", None)
                        for a in m.attributes]
    return offer, answer


def test_apply_answer_accepts_a_well_formed_answer():
    sub = SubscriberOffer(local_params())
    sub.table.bind("TR_v", MediaKind.VIDEO, "s")
    _, answer = _offer_and_answer(sub)
    result = sub.apply_answer(answer)
    assert result["1"].direction is Direction.SENDONLY
    with pytest.raises(NegotiationError, match="no offer"):
        sub.apply_answer(answer)


@pytest.mark.parametrize("corrupt, message", [
    (lambda a: a.media.pop(), "m-lines"),
    (lambda a: a.media.reverse(), "kind|order"),
    (lambda a: setattr(a.media[1], "attributes",
                       [Mid("9") if isinstance(x, Mid) else x for x in a.media[1].attributes]),
     "order"),
    (lambda a: (a.media[1].formats.insert(0, "120"),
                a.media[1].attributes.append(Rtpmap(120, "H265", 90000))), "not offered"),
    (lambda a: setattr(a.media[1], "attributes",
                       [x for x in a.media[1].attributes if x.name != "fingerprint"]
                       ) or setattr(a.media[0], "attributes",
                                    [x for x in a.media[0].attributes if x.name != "fingerprint"]),
     "fingerprint"),
    (lambda a: [setattr(m, "attributes", [type(x)(SetupRole.ACTPASS) if x.name == "setup" else x
                                          for x in m.attributes]) for m in a.media], "setup"),
    (lambda a: setattr(a.media[1], "attributes",
                       [type(x)("sendrecv", None) if x.name == "recvonly" else x
                        for x in a.media[1].attributes]), "direction"),
])
def test_apply_answer_rejects_answers_that_do_not_match(corrupt, message):
    sub = SubscriberOffer(local_params())
    sub.table.bind("TR_v", MediaKind.VIDEO, "s")
    _, answer = _offer_and_answer(sub)
    corrupt(answer)
    with pytest.raises(NegotiationError, match=message):
        sub.apply_answer(answer)
    assert sub.state is SignalingState.HAVE_LOCAL_OFFER  # nothing applied


def test_client_rejecting_a_live_line_frees_the_track():
    sub = SubscriberOffer(local_params())
    sub.table.bind("TR_v", MediaKind.VIDEO, "s")
    _, answer = _offer_and_answer(sub)
    answer.media[1].port = 0
    sub.apply_answer(answer)
    assert sub.rejected_track_ids == ["TR_v"]
    assert sub.table.get("1").state is TransceiverState.RECYCLABLE
    assert sub.table.find_by_track("TR_v") is None


def test_offer_refuses_two_live_lines_for_one_track():
    sub = SubscriberOffer(local_params())
    sub.table.bind("TR_v", MediaKind.VIDEO, "s")
    with pytest.raises(TransceiverInvariantError):
        sub.table.bind("TR_v", MediaKind.VIDEO, "s")
    # Corrupt the table behind its back: the offer builder still refuses.
    other = sub.table.bind("TR_w", MediaKind.VIDEO, "s")
    other.track_id = "TR_v"
    with pytest.raises(TransceiverInvariantError):
        sub.create_offer()


# --- property test: apply_answer on corrupted answers ----------------------------------

from budgets import examples
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from sdp.errors import SdpParseError  # noqa: E402


def _bound_sub():
    sub = SubscriberOffer(local_params())
    sub.table.bind("TR_a", MediaKind.AUDIO, "s")
    sub.table.bind("TR_v", MediaKind.VIDEO, "s")
    return sub


_ANSWER_LINES = serialize(_offer_and_answer(_bound_sub())[1]).split("\r\n")[:-1]


@settings(max_examples=examples(2.5), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["delete", "duplicate", "replace", "corrupt"]),
                          st.integers(0, 10_000), st.sampled_from(_ANSWER_LINES),
                          st.integers(0, 60), st.characters()), max_size=5))
def test_apply_answer_on_corrupted_answers_raises_only_negotiation_error(script):
    sub = _bound_sub()
    offer = sub.create_offer()
    lines = list(_ANSWER_LINES)
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
    try:
        answer = parse("\r\n".join(lines) + "\r\n")
    except SdpParseError:
        return
    try:
        result = sub.apply_answer(answer)
    except NegotiationError:
        assert sub.state is SignalingState.HAVE_LOCAL_OFFER
        return
    assert sub.state is SignalingState.STABLE
    for o in offer.media:
        r = result[o.mid]
        if r.accepted and o.is_rtp:
            offered = {c.payload_type: c.name for c in o.codecs()}
            assert all(offered[c.payload_type] == c.name for c in r.codecs)
    sub.table.check_invariant()


def test_ice_restart_offers_new_credentials_until_an_answer_to_them_lands(loopback):
    """A resume's subscriber ICE restart (RFC 8839 §4.4.1.1.1): the next offer carries the new
    ufrag/pwd, `ice_restarting` holds until the answer to such an offer is applied, and the
    client's new credentials in that answer become the remote ones."""
    import re

    import attrs

    from sdp.negotiator import restarts_ice

    sub = SubscriberOffer(local_params())

    async def first_answer() -> str:
        client = AiortcSubscriber()
        try:
            return await client.answer(serialize(sub.create_offer()))
        finally:
            await client.pc.close()

    answer_text = asyncio.run(first_answer())
    sub.apply_answer(parse(answer_text))
    old_remote = (sub.remote_ice_ufrag, sub.remote_ice_pwd)
    assert not sub.ice_restarting

    with pytest.raises(NegotiationError):
        sub.restart_ice(local_params())  # the same credentials restart nothing
    fresh = attrs.evolve(local_params(), ice_ufrag="NewU", ice_pwd="new-sfu-password-0123456789")
    sub.restart_ice(fresh)
    assert sub.ice_restarting
    offer = sub.create_offer()
    first = offer.media[0]
    assert (offer.effective_ufrag(first), offer.effective_pwd(first)) == ("NewU", "new-sfu-password-0123456789")
    # The offer, seen from the client that knew our old credentials, restarts ICE.
    assert restarts_ice(("SfuU", "sfu-password-0123456789ab"), offer)
    assert not restarts_ice(("NewU", "new-sfu-password-0123456789"), offer)
    assert not restarts_ice(None, offer)

    # The client restarts its side too: its answer carries new credentials.
    restarted = re.sub(r"a=ice-ufrag:\S+", "a=ice-ufrag:CliN", answer_text)
    restarted = re.sub(r"a=ice-pwd:\S+", "a=ice-pwd:client-new-password-01234567", restarted)
    sub.apply_answer(parse(restarted))
    assert not sub.ice_restarting
    assert (sub.remote_ice_ufrag, sub.remote_ice_pwd) == ("CliN", "client-new-password-01234567") != old_remote
    # Later offers keep the new credentials and are no restart.
    again = sub.create_offer()
    assert again.effective_ufrag(again.media[0]) == "NewU" and not sub.ice_restarting


def test_a_second_ice_restart_before_the_first_is_answered_needs_its_own_offer():
    import attrs

    sub = SubscriberOffer(local_params())
    sub.create_offer()
    sub.restart_ice(attrs.evolve(local_params(), ice_ufrag="One1", ice_pwd="first-new-password-0123456"))
    first = sub.create_offer()
    sub.restart_ice(attrs.evolve(local_params(), ice_ufrag="Two2", ice_pwd="second-new-password-012345"))
    # An answer to the offer with the first new credentials: the second restart is still owed.
    answer = parse(serialize(first).replace("a=setup:actpass", "a=setup:active")
                   .replace("a=ice-ufrag:One1", "a=ice-ufrag:CliA")
                   .replace("a=ice-pwd:first-new-password-0123456", "a=ice-pwd:client-password-0123456789"))
    sub.apply_answer(answer)
    assert sub.ice_restarting
    offer = sub.create_offer()
    assert offer.effective_ufrag(offer.media[0]) == "Two2"
