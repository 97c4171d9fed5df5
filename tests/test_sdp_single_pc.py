"""Single peer connection mode (LiveKit's `/rtc/v1`): the client offers every m-line, its
receive-only ones are the transceiver table's lines (the subscriber endpoint takes each offer),
and the server's answer sends the bound tracks on them. Driven with the offers real clients made
(tests/fixtures/sdp)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdp.codecs import EXT_MID, EXT_RID, MediaKind, subscriber_codecs
from sdp.errors import TransceiverInvariantError
from sdp.model import Direction, Fingerprint, Group, SessionDescription
from sdp.negotiator import LocalParams, OutgoingTrack, answer_offer, negotiated_media, offered_receive_lines
from sdp.parser import parse, serialize
from sdp.transceivers import UNPLACED_MID_PREFIX, TransceiverState, TransceiverTable
from trio_sfu.tracks.subscriber import SubscriberEndpoint

SDP_DIR = Path(__file__).parent / "fixtures" / "sdp"
LOCAL = LocalParams("srvufrag", "serverpassword1234567890",
                    (Fingerprint("sha-256", ":".join(["AB"] * 32)),), ("1 1 udp 2130706431 198.18.0.1 7882 typ host",))


def offer(name: str) -> SessionDescription:
    return parse((SDP_DIR / name).read_bytes().decode())


def with_more_receive_lines(base: SessionDescription, kind: str, mids: list[str]) -> SessionDescription:
    """`base` as the client offers it after adding recvonly transceivers (what a client does on
    a MediaSectionsRequirement): copies of its first recvonly line of `kind`, under new mids."""
    text = serialize(base)
    description = parse(text)
    template_text = serialize(description)
    source = next(m for m in description.media if m.kind == kind and m.direction is Direction.RECVONLY)
    for mid in mids:
        copy = parse(template_text).media[description.media.index(source)]
        for i, attribute in enumerate(copy.attributes):
            if type(attribute).__name__ == "Mid":
                copy.attributes[i] = type(attribute)(mid)
        description.media.append(copy)
    # A client bundles what it adds (one transport).
    for i, attribute in enumerate(description.attributes):
        if isinstance(attribute, Group) and attribute.semantics == "BUNDLE":
            description.attributes[i] = Group("BUNDLE", (*attribute.mids, *mids))
    return description


async def _no_exchange(offer: SessionDescription) -> SessionDescription:
    raise AssertionError("a single-PC endpoint never offers")


async def _no_request(audios: int, videos: int) -> None:
    raise AssertionError("not negotiating here")


class ServerSide:
    """The server's subscriber endpoint in single-PC mode, fed the client's offers."""

    def __init__(self, description: SessionDescription) -> None:
        self.endpoint = SubscriberEndpoint("PA_me", LOCAL, _no_exchange, lambda packet: True,
                                           request_offer=_no_request)
        self.table = self.endpoint.table
        self.take(description)

    def take(self, description: SessionDescription) -> dict[str, OutgoingTrack | None]:
        """The endpoint takes a client offer; returns what the answer sends on each receive line."""
        return self.endpoint.client_offered(description)




@pytest.mark.parametrize("name", ["chromium_v1_join_offer.sdp", "python_sdk_v1_join_offer.sdp"])
def test_the_join_offer_gives_six_idle_receive_lines_with_the_clients_payload_types(name: str) -> None:
    description = offer(name)
    side = ServerSide(description)
    table = side.table
    lines = table.transceivers
    assert [(t.mid, t.kind) for t in lines] == [(str(i), MediaKind.AUDIO) for i in range(3)] + [
        (str(i), MediaKind.VIDEO) for i in range(3, 6)]
    assert all(t.state is TransceiverState.IDLE and t.placed for t in lines)
    offered_pts = {m.mid: {c.payload_type for c in m.codecs()} for m in description.media}
    for t in lines:
        # The client's numbers (an answer must reuse the offerer's), only codecs we can send.
        assert t.codecs and {c.payload_type for c in t.codecs} <= offered_pts[t.mid]
        assert {c.name.lower() for c in t.codecs} <= {"opus", "red", "vp8", "vp9", "h264", "av1", "rtx"}
        assert EXT_MID not in t.extensions.values() and EXT_RID not in t.extensions.values()

    answer = answer_offer(description, LOCAL, outgoing=side.take(description))
    directions = [(m.kind, m.direction) for m in answer.media]
    # Nothing to send yet: the receive lines are inactive, the data channel is accepted.
    assert directions[:6] == [(m.kind, Direction.INACTIVE) for m in description.media[:6]]
    assert answer.media[6].kind == "application" and not answer.media[6].rejected
    assert not any(m.rejected for m in answer.media)


def test_a_bound_track_is_sent_on_the_clients_line_and_reused_after_it_leaves() -> None:
    description = offer("chromium_v1_join_offer.sdp")
    side = ServerSide(description)
    table = side.table
    first = table.bind("TR_a", MediaKind.AUDIO, "PA_x|TR_a", subscriber_codecs(MediaKind.AUDIO, ("audio/opus",)))
    first_ssrc = first.ssrc
    assert first.placed and first.mid == "0" and not table.unplaced()
    answer = answer_offer(description, LOCAL, outgoing=side.take(description), cname="PA_me")
    line = answer.media[0]
    assert line.direction is Direction.SENDONLY
    assert line.msid is not None and (line.msid.stream_id, line.msid.track_id) == ("PA_x|TR_a", "TR_a")
    assert first.ssrc in line.ssrcs
    media = negotiated_media(description, answer)
    # The server sends on it and does not receive: not a publisher line.
    assert media["0"].direction is Direction.SENDONLY
    # Browsers offer later m-lines only the extensions an earlier answer took (one BUNDLE): the
    # receive lines accept the publisher's mid too; the table (what down tracks write) does not.
    assert EXT_MID in {e.uri for e in line.extmaps}
    assert EXT_MID not in first.extensions.values()

    # Unsubscribed: the line goes idle and the next track of that kind takes the same m-line
    # with fresh SSRCs: no new m-line, nothing for the client to add.
    table.unbind("TR_a")
    second = table.bind("TR_b", MediaKind.AUDIO, "PA_y|TR_b", subscriber_codecs(MediaKind.AUDIO, ("audio/opus",)))
    assert second.mid == "0" and second.ssrc != first_ssrc
    assert not table.unplaced()


def test_a_cached_track_keeps_its_line_and_ssrc_and_is_presented_meanwhile() -> None:
    description = offer("python_sdk_v1_join_offer.sdp")
    side = ServerSide(description)
    table = side.table
    t = table.bind("TR_v", MediaKind.VIDEO, "PA_x|TR_v", subscriber_codecs(MediaKind.VIDEO, ("video/VP8",)))
    mid, ssrc = t.mid, t.ssrc
    table.unbind("TR_v", cache=True)  # its source closed expecting a resume (migration, restart)
    held = table.held(table.get(mid))
    assert held is not None and held[0] == "TR_v"
    # Another video track binds meanwhile: it does not take the held line.
    other = table.bind("TR_w", MediaKind.VIDEO, "PA_y|TR_w", subscriber_codecs(MediaKind.VIDEO, ("video/VP8",)))
    assert other.mid != mid
    back = table.bind("TR_v", MediaKind.VIDEO, "PA_x|TR_v", subscriber_codecs(MediaKind.VIDEO, ("video/VP8",)))
    assert (back.mid, back.ssrc) == (mid, ssrc)


def test_tracks_beyond_the_offered_lines_wait_unplaced_until_the_client_offers_more() -> None:
    description = offer("chromium_v1_join_offer.sdp")
    side = ServerSide(description)
    table = side.table
    audio = [table.bind(f"TR_{i}", MediaKind.AUDIO, f"PA_{i}|TR_{i}", subscriber_codecs(MediaKind.AUDIO, ("audio/opus",)))
             for i in range(5)]
    assert [t.mid for t in audio[:3]] == ["0", "1", "2"]
    waiting = table.unplaced()
    assert [t.track_id for t in waiting] == ["TR_3", "TR_4"]
    assert all(t.mid.startswith(UNPLACED_MID_PREFIX) for t in waiting)
    # An answer now cannot present them: they are in no m-line of the client.
    outgoing = side.take(description)
    assert {o.track_id for o in outgoing.values() if o} == {"TR_0", "TR_1", "TR_2"}

    # The client adds two recvonly audio transceivers and offers again.
    later = with_more_receive_lines(description, "audio", ["9", "10"])
    outgoing = side.take(later)
    assert not table.unplaced()
    assert (table.find_by_track("TR_3").mid, table.find_by_track("TR_4").mid) == ("9", "10")
    answer = answer_offer(later, LOCAL, outgoing=outgoing)
    sent = {m.mid: m.msid.track_id for m in answer.media if m.direction is Direction.SENDONLY and m.msid}
    assert sent == {"0": "TR_0", "1": "TR_1", "2": "TR_2", "9": "TR_3", "10": "TR_4"}


def test_a_line_the_client_stops_loses_its_track() -> None:
    description = offer("chromium_v1_join_offer.sdp")
    side = ServerSide(description)
    table = side.table
    table.bind("TR_a", MediaKind.AUDIO, "PA_x|TR_a", subscriber_codecs(MediaKind.AUDIO, ("audio/opus",)))
    stopped = parse(serialize(description))
    stopped.media[0].port = 0
    side.take(stopped)
    assert table.find_by_track("TR_a") is None
    assert table.get("0").state is TransceiverState.RECYCLABLE


def test_the_publishing_offer_keeps_the_lines_and_sends_nothing_on_the_clients_own() -> None:
    join = offer("chromium_v1_join_offer.sdp")
    side = ServerSide(join)
    table = side.table
    table.bind("TR_v", MediaKind.VIDEO, "PA_x|TR_v", subscriber_codecs(MediaKind.VIDEO, ("video/VP8",)))
    later = offer("chromium_v1_publishing_offer.sdp")
    outgoing = side.take(later)
    # The lines the client sends on (mids 7, 8) are its publisher lines, not ours.
    assert set(outgoing) == {"0", "1", "2", "3", "4", "5"}
    answer = answer_offer(later, LOCAL, outgoing=outgoing)
    by_mid = {m.mid: m for m in answer.media}
    assert by_mid["3"].direction is Direction.SENDONLY and by_mid["3"].msid.track_id == "TR_v"
    assert by_mid["7"].direction is Direction.RECVONLY and by_mid["8"].direction is Direction.RECVONLY
    # The simulcast publisher line keeps its rids and the rid extension.
    assert by_mid["8"].simulcast is not None and EXT_RID in {e.uri for e in by_mid["8"].extmaps}


def test_a_mid_in_the_provisional_namespace_is_refused() -> None:
    table = TransceiverTable(client_offers=True)
    with pytest.raises(TransceiverInvariantError):
        table.offered_line(UNPLACED_MID_PREFIX + "0", MediaKind.AUDIO, subscriber_codecs(MediaKind.AUDIO), {})


def test_a_line_that_changes_kind_is_refused() -> None:
    table = TransceiverTable(client_offers=True)
    table.offered_line("0", MediaKind.AUDIO, subscriber_codecs(MediaKind.AUDIO), {})
    with pytest.raises(TransceiverInvariantError):
        table.offered_line("0", MediaKind.VIDEO, subscriber_codecs(MediaKind.VIDEO), {})


def test_an_offer_with_too_many_m_lines_is_refused_before_the_table_grows() -> None:
    from sdp.errors import NegotiationError
    from sdp.negotiator import MAX_OFFER_SECTIONS
    description = offer("chromium_v1_join_offer.sdp")
    huge = with_more_receive_lines(description, "audio", [str(100 + i) for i in range(MAX_OFFER_SECTIONS)])
    with pytest.raises(NegotiationError, match="more than"):
        offered_receive_lines(huge)
