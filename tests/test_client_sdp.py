"""The client's SDP: our publisher offer.

Checked against independent parties: aiortc's SDP parser reads our offer; the server side of our
own negotiator (``answer_offer``, which validates strictly) accepts it. Our answers to subscriber
offers are the project's one answerer with ``RECEIVER_ANSWER``: ``test_sdp_answer_receiver.py``.
"""

from __future__ import annotations

import aiortc.sdp

from sdp.model import Fingerprint
from sdp.negotiator import (
    DtlsRole,
    LocalParams,
    answer_offer,
    local_dtls_role,
    negotiated_media,
    remote_transport,
)
from sdp.parser import parse, serialize
from trio_sfu.client.publisher_offer import OfferedTrack, build_publisher_offer

OURS = LocalParams("c1ie", "0123456789abcdef0123456789abcdef",
                   (Fingerprint("sha-256", ":".join(["AB"] * 32)),), session_id=4242, ice_options=("trickle",))
SERVER = LocalParams("srvu", "s" * 24, (Fingerprint("sha-256", ":".join(["CD"] * 32)),),
                     ("1 1 udp 2130706431 127.0.0.1 7882 typ host",))
TRACKS = [
    OfferedTrack("0", "audio", "stream", "cid-audio", "cname", (1111,)),
    OfferedTrack("1", "video", "stream", "cid-video", "cname", (2221, 2222, 2223), ("q", "h", "f")),
    OfferedTrack("2", "video", "stream", "cid-screen", "cname", (3333,)),
]


def test_publisher_offer_read_by_aiortc() -> None:
    text = serialize(build_publisher_offer(OURS, TRACKS, version=3))
    theirs = aiortc.sdp.SessionDescription.parse(text)
    assert theirs.group[0].semantic == "BUNDLE" and theirs.group[0].items == ["0", "1", "2"]
    assert [m.kind for m in theirs.media] == ["audio", "video", "video"]
    for media, track in zip(theirs.media, TRACKS):
        assert media.direction == "sendonly" and media.rtcp_mux
        assert media.ice.usernameFragment == OURS.ice_ufrag and media.ice.password == OURS.ice_pwd
        assert media.dtls.role == "auto"  # a=setup:actpass
        assert media.dtls.fingerprints[0].value == OURS.fingerprints[0].value
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
