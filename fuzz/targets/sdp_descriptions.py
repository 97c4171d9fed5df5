"""SDP: the parser and serializer, and the negotiation the server runs on what a client sends.

``sdp-offer`` is the publisher path of the media session: parse the client's offer, answer it,
read the agreed media and the DTLS role. ``sdp-answer`` is the subscriber path: the server
offers audio, video and a data channel, and the client's answer is parsed and applied.
"""

from __future__ import annotations

import hashlib
import os

from fuzz.target import FuzzTarget
from sdp.codecs import MediaKind
from sdp.errors import NegotiationError, SdpParseError
from sdp.model import Fingerprint
from sdp.negotiator import LocalParams, SubscriberOffer, answer_offer, local_dtls_role, negotiated_media
from sdp.parser import parse, serialize

_FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                         "tests", "fixtures", "sdp")
_DIGEST = hashlib.sha256(b"server certificate").hexdigest().upper()
LOCAL = LocalParams(
    ice_ufrag="SfuU", ice_pwd="sfu-password-0123456789ab",
    fingerprints=(Fingerprint("sha-256", ":".join(_DIGEST[i:i + 2] for i in range(0, 64, 2))),),
    candidates=("1 1 udp 2130706431 192.0.2.1 7882 typ host",), session_id=7,
)


def _reparse(text: str) -> None:
    """What we serialize we must be able to parse: our output goes to clients."""
    try:
        parse(text)
    except SdpParseError as exc:
        raise AssertionError(f"our own serialization ({len(text)} characters) does not parse: {exc}\n"
                             f"{text[:2000]}") from None


def run_offer(data: bytes) -> None:
    offer = parse(data)
    _reparse(serialize(offer))
    answer = answer_offer(offer, LOCAL, session_version=2)
    _reparse(serialize(answer))
    negotiated_media(offer, answer)
    local_dtls_role(answer, local_is_offerer=False)
    # What the media session reads next for the transport, from the first usable section.
    first = next((m for m in offer.media if not m.rejected), None)
    if first is not None:
        offer.effective_ufrag(first), offer.effective_pwd(first), offer.effective_fingerprints(first)


def _subscriber() -> SubscriberOffer:
    offerer = SubscriberOffer(LOCAL)
    offerer.table.bind("TR_audio", MediaKind.AUDIO, "PA_x|mic")
    offerer.table.bind("TR_video", MediaKind.VIDEO, "PA_x|camera")
    return offerer


def run_answer(data: bytes) -> None:
    answer = parse(data)
    offerer = _subscriber()
    offerer.create_offer()
    offerer.apply_answer(answer)
    # The next offer is built from the table the answer just updated.
    _reparse(serialize(offerer.create_offer()))


def _fixtures(kind: str) -> list[bytes]:
    out = []
    for name in sorted(os.listdir(_FIXTURES)):
        if name.endswith(".sdp") and kind in name:
            with open(os.path.join(_FIXTURES, name), "rb") as f:
                out.append(f.read())
    return out


def offer_seeds() -> list[bytes]:
    return _fixtures("offer")


def _answer_to(offer_text: str) -> str:
    """A client-style answer to our subscriber offer: receive what we send, DTLS client, own ICE."""
    lines = []
    for line in offer_text.split("\r\n"):
        if line.startswith(("a=candidate", "a=ice-lite", "a=ssrc", "a=msid:")):
            continue
        line = line.replace("a=sendonly", "a=recvonly").replace("a=setup:actpass", "a=setup:active")
        line = line.replace("a=ice-ufrag:SfuU", "a=ice-ufrag:cli1").replace(
            "a=ice-pwd:sfu-password-0123456789ab", "a=ice-pwd:client-password-0123456789")
        lines.append(line)
    return "\r\n".join(lines)


def answer_seeds() -> list[bytes]:
    ours = _answer_to(serialize(_subscriber().create_offer()))
    return [ours.encode()] + _fixtures("answer")


_DICTIONARY = tuple(t.encode() for t in (
    "\r\n", "v=0", "o=- ", "s=-", "t=0 0", "c=IN IP4 0.0.0.0", "m=audio ", "m=video ", "m=application ",
    " UDP/TLS/RTP/SAVPF ", " UDP/DTLS/SCTP webrtc-datachannel", "a=group:BUNDLE ", "a=mid:", "a=rtpmap:",
    "a=fmtp:", "a=rtcp-fb:", "a=extmap:", "a=extmap-allow-mixed", "a=msid:", "a=msid-semantic:", "a=ssrc:",
    "a=ssrc-group:FID ", "a=ssrc-group:SIM ", "a=rid:", " send", " recv", "a=simulcast:send ", "a=simulcast:recv ",
    "a=ice-ufrag:", "a=ice-pwd:", "a=ice-options:trickle", "a=fingerprint:sha-256 ", "a=setup:",
    "actpass", "active", "passive", "a=sendonly", "a=recvonly", "a=sendrecv", "a=inactive", "a=rtcp-mux",
    "a=rtcp-rsize", "a=sctp-port:", "a=max-message-size:", "a=candidate:", " typ host", "a=end-of-candidates",
    "a=ice-lite", "apt=", "opus/48000/2", "VP8/90000", "H264/90000", "rtx/90000", "red/48000/2", "nack pli",
    "goog-remb", "transport-cc", "urn:ietf:params:rtp-hdrext:sdes:mid", ";", ":", " ", "/", "~", "=",
))

OFFER_TARGET = FuzzTarget(
    "sdp-offer", "sdp.parser parse/serialize, answer_offer, negotiated_media, local_dtls_role on a client offer",
    run_offer, (SdpParseError, NegotiationError), offer_seeds, max_len=24576, dictionary=_DICTIONARY,
)
ANSWER_TARGET = FuzzTarget(
    "sdp-answer", "sdp.parser parse, SubscriberOffer.apply_answer on a client answer, the next offer",
    run_answer, (SdpParseError, NegotiationError), answer_seeds, max_len=24576, dictionary=_DICTIONARY,
)
