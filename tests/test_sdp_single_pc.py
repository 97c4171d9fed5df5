"""Single peer connection mode (LiveKit's `/rtc/v1`): the client offers every m-line, its
receive-only ones are the transceiver table's lines (the subscriber endpoint takes each offer),
and the server's answer sends the bound tracks on them. Driven with the offers real clients made
(tests/fixtures/sdp)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from livekit.protocol import models

from sdp.codecs import EXT_MID, EXT_RID, MediaKind, subscriber_codecs
from sdp.errors import TransceiverInvariantError
from sdp.model import Direction, Fingerprint, Group, SessionDescription
from sdp.negotiator import LocalParams, OutgoingTrack, answer_offer, negotiated_media, offered_receive_lines
from sdp.parser import parse, serialize
from sdp.transceivers import UNPLACED_MID_PREFIX, TransceiverState, TransceiverTable
from sdp.model import Codec
from trio_sfu.forwarding.receiver import TrackReceiver
from trio_sfu.tracks import SourceOrigin, TrackManager, TrackSource
from trio_sfu.tracks.subscriber import MAX_OFFER_REQUESTS, SubscriberEndpoint
from trio_sfu.tracks.subscription_manager import SubscriptionManager

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


# ---- the subscription manager negotiating with a single-PC client ----------------------------------

def audio_source(track_id: str) -> TrackSource:
    receiver = TrackReceiver(track_id, "audio/opus", 48000, send_rtcp=lambda p: True, local_ssrc=7, now=0.0)
    return TrackSource(track_id, SourceOrigin.LOCAL, "n1", receiver, kind=MediaKind.AUDIO, publisher_id="pB",
                       codecs=(Codec(111, "opus", 48000, 2),))


class OfferingClient:
    """The client side of one PC: it starts from the captured livekit-client join offer and, when
    asked (MediaSectionsRequirement), adds the recvonly lines asked for and offers again; the
    endpoint takes each offer as ParticipantMedia does (client_offered, then the answer, then
    client_answered). `adds_lines=False` is a client that offers again but never adds lines."""

    def __init__(self, adds_lines: bool = True) -> None:
        self.description = offer("chromium_v1_join_offer.sdp")
        self.adds_lines = adds_lines
        self.requests: list[tuple[int, int]] = []
        self.answers: list[SessionDescription] = []
        self.endpoint = SubscriberEndpoint("pA", LOCAL, _no_exchange, lambda packet: True,
                                           request_offer=self.requested)
        self.next_mid = 100

    def offer_now(self) -> None:
        outgoing = self.endpoint.client_offered(self.description)
        self.answers.append(answer_offer(self.description, LOCAL, outgoing=outgoing))
        self.endpoint.client_answered()

    async def requested(self, audios: int, videos: int) -> None:
        self.requests.append((audios, videos))
        await trio.sleep(0.05)  # the round trip
        if self.adds_lines and audios:
            mids = [str(self.next_mid + i) for i in range(audios)]
            self.next_mid += audios
            self.description = with_more_receive_lines(self.description, "audio", mids)
        self.offer_now()

    def sending(self) -> dict[str, str]:
        return {m.mid: m.msid.track_id for m in self.answers[-1].media
                if m.direction is Direction.SENDONLY and m.msid is not None}


async def test_the_manager_asks_for_the_lines_it_needs_and_reuses_them(autojump_clock) -> None:
    tm = TrackManager()
    for i in range(4):
        tm.add(audio_source(f"TR_{i}"))
    client = OfferingClient()
    client.offer_now()  # the join offer, answered before the first pass
    manager = SubscriptionManager(client.endpoint, tm, report=lambda t, e: None, reconcile_interval=1.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        for i in range(4):
            manager.set_desired(f"TR_{i}", True)
        await trio.sleep(0.5)
        # Three audio lines in the join offer, four tracks: one more line asked for, in one pass.
        assert client.requests == [(1, 0)]
        assert all(manager.subscriptions[f"TR_{i}"].forwarding for i in range(4))
        assert sorted(client.sending().values()) == ["TR_0", "TR_1", "TR_2", "TR_3"]
        assert client.sending()["100"] in {"TR_0", "TR_1", "TR_2", "TR_3"}

        # Unsubscribed: the client is asked to offer again (no new line) and the line goes idle.
        manager.set_desired("TR_1", False)
        await trio.sleep(0.5)
        assert client.requests[-1] == (0, 0) and "TR_1" not in client.sending().values()
        freed = next(t.mid for t in client.endpoint.table.transceivers
                     if t.kind is MediaKind.AUDIO and t.track_id is None)
        # A new track takes the freed line: no new m-line asked for.
        tm.add(audio_source("TR_4"))
        manager.set_desired("TR_4", True)
        await trio.sleep(0.5)
        assert client.requests[-1] == (0, 0) and client.sending()[freed] == "TR_4"
        # Nothing changed: nothing asked.
        asked = len(client.requests)
        await trio.sleep(3)
        assert len(client.requests) == asked
        nursery.cancel_scope.cancel()


async def test_a_client_that_never_adds_the_lines_is_given_up_on_per_pass(autojump_clock) -> None:
    tm = TrackManager()
    for i in range(4):
        tm.add(audio_source(f"TR_{i}"))
    client = OfferingClient(adds_lines=False)
    client.offer_now()
    manager = SubscriptionManager(client.endpoint, tm, report=lambda t, e: None, reconcile_interval=1.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        for i in range(4):
            manager.set_desired(f"TR_{i}", True)
        await trio.sleep(0.5)
        # The line is asked for once per pass (an offer the client had in flight would not have
        # it: asking again would make the client add it twice); the pass makes the client offer
        # MAX_OFFER_REQUESTS times in all, then lets its bindings go (the transient no-answer
        # path): nothing forwards half-negotiated.
        assert client.requests[:MAX_OFFER_REQUESTS] == [(1, 0)] + [(0, 0)] * (MAX_OFFER_REQUESTS - 1)
        assert not any(s.forwarding for s in manager.subscriptions.values())
        # The next pass asks for the line again (the client may have dropped the request).
        await trio.sleep(1.5)
        assert client.requests[MAX_OFFER_REQUESTS] == (1, 0)
        assert not any(s.forwarding for s in manager.subscriptions.values())
        nursery.cancel_scope.cancel()


async def test_a_line_the_client_stops_ends_its_subscription_for_good(autojump_clock) -> None:
    tm = TrackManager()
    tm.add(audio_source("TR_0"))
    client = OfferingClient()
    client.offer_now()
    reports = []
    manager = SubscriptionManager(client.endpoint, tm, report=lambda t, e: reports.append((t, e)),
                                  reconcile_interval=1.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        manager.set_desired("TR_0", True)
        await trio.sleep(0.5)
        assert manager.subscriptions["TR_0"].forwarding
        source = tm.resolve("TR_0")
        mid = client.endpoint.bindings["TR_0"].mid
        # The client stops that transceiver (port 0) in an offer of its own.
        line = next(m for m in client.description.media if m.mid == mid)
        line.port = 0
        client.offer_now()
        await trio.sleep(0.5)
        assert "TR_0" not in client.endpoint.bindings and not source.has_subscriber("pA")
        assert not source.receiver.down_tracks
        assert reports == [("TR_0", models.SubscriptionError.SE_CODEC_UNSUPPORTED)]
        nursery.cancel_scope.cancel()
