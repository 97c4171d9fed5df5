"""Bad input at the node boundary: sync states naming unknown tracks or subscriptions, a
migration for a participant already present, relay messages for unknown rooms/tracks, and
arbitrary bytes on the relay. Each is rejected with a logged reason; nothing raises out of the
node's tasks, and the node keeps working afterwards."""

from __future__ import annotations

import logging
import random

import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from server_fixtures import assert_nodes_clean, leak_baseline
from test_migration_world import (
    OPUS,
    ROOM,
    TRACK,
    FakeClient,
    subscribed_source,
    two_nodes,
)
from test_race_scenarios import until

from proto import relay_pb2 as pb
from sdp.codecs import MediaKind
from trio_sfu.cluster.node_model import Node, TrackSpec


def _sync_state(**overrides) -> pb.MigrateParticipant:
    state = pb.MigrateParticipant(room=ROOM, participant_id="pA", subscriptions=[TRACK])
    for key, value in overrides.items():
        if isinstance(value, list):
            getattr(state, key).extend(value)
        else:
            setattr(state, key, value)
    return state


async def _rejected(w, message: pb.RelayMessage, reason: str) -> None:
    before = len(w.b.rejections)
    w.a.links["B"].send(message)
    await until(lambda: len(w.b.rejections) > before)
    assert reason in w.b.rejections[-1], w.b.rejections[-1]


async def test_sync_states_naming_what_does_not_exist_are_refused(autojump_clock, caplog):
    caplog.set_level(logging.WARNING, logger="trio_sfu.cluster.node_model")
    async with two_nodes() as w:
        bad = {
            "subscription to unknown track TR_nope": _sync_state(subscriptions=["TR_nope"]),
            "published track TR_x unknown here": _sync_state(published=[
                TrackSpec("TR_x", "pA", MediaKind.AUDIO, (OPUS,)).to_proto()]),
            "unusable published track TR_y": _sync_state(published=[pb.TrackDescription(track_id="TR_y", kind="smell")]),
            "transceiver for unsubscribed track TR_z": _sync_state(transceivers=[
                pb.SubscribedTransceiver(track_id="TR_z", mid="1", ssrc=5, kind="audio")]),
            "transceiver of unknown kind": _sync_state(transceivers=[
                pb.SubscribedTransceiver(track_id=TRACK, mid="1", ssrc=5, kind="hologram")]),
            "no participant id": _sync_state(participant_id=""),
        }
        for reason, state in bad.items():
            await _rejected(w, pb.RelayMessage(migrate=state), reason)
            assert "pA" not in w.b.rooms[ROOM].participants
        logged = [r.getMessage() for r in caplog.records]
        for reason in bad:
            assert any(reason in line for line in logged), reason
        # A was told each time; with no migration pending it rejects those answers in turn.
        await until(lambda: len([r for r in w.a.rejections if "migrate_rejected" in r]) == len(bad))


async def test_migration_for_a_participant_already_present_is_refused(autojump_clock):
    async with two_nodes() as w:
        assert await w.a.migrate(ROOM, "pA", "B")
        await _rejected(w, pb.RelayMessage(migrate=_sync_state()), "participant already present")
        await trio.sleep(1.0)
        assert subscribed_source(w, "B", "pA") is not None  # the first one is untouched


async def test_relay_messages_for_unknown_rooms_and_tracks_are_refused(autojump_clock):
    async with two_nodes() as w:
        await _rejected(w, pb.RelayMessage(track_published=pb.TrackPublished(
            room="nowhere", track=TrackSpec("T", "p", MediaKind.AUDIO, (OPUS,)).to_proto())), "unknown room")
        await _rejected(w, pb.RelayMessage(track_closing=pb.TrackClosing(room=ROOM, track_id="TR_nope")), "unknown track")
        await _rejected(w, pb.RelayMessage(track_migrated=pb.TrackMigrated(room=ROOM, track_id="TR_nope")), "unknown track")
        await _rejected(w, pb.RelayMessage(migrate_cancel=pb.MigrateCancel(room=ROOM, participant_id="ghost")), "unknown participant")
        await _rejected(w, pb.RelayMessage(migrate_accepted=pb.MigrateAccepted(room=ROOM, participant_id="ghost")), "no pending migration")
        await _rejected(w, pb.RelayMessage(track_published=pb.TrackPublished(room=ROOM, track=pb.TrackDescription(
            track_id="T2", kind="audio"))), "unusable description")
        await _rejected(w, pb.RelayMessage(), "empty relay message")
        unknown = w.b.relay_rtp_unknown
        w.a.links["B"].send(pb.RelayMessage(rtp=pb.RelayRtp(room=ROOM, track_id="TR_nope", packet=b"\x80" * 20)))
        w.a.links["B"].send(pb.RelayMessage(rtp=pb.RelayRtp(room="nowhere", track_id=TRACK, packet=b"\x80" * 20)))
        await until(lambda: w.b.relay_rtp_unknown == unknown + 2)
        w.b.links["A"].inject_raw(b"\xff\xff\xff")  # not protobuf: counted, skipped
        await until(lambda: w.b.links["A"].malformed == 1)
        # Still working: pA migrates normally afterwards.
        assert await w.a.migrate(ROOM, "pA", "B")
        await until(lambda: subscribed_source(w, "B", "pA") is not None)


class _NullLink:
    peer_node_id = "A"

    def __init__(self) -> None:
        self.sent: list[pb.RelayMessage] = []

    def send(self, message) -> bool:
        self.sent.append(message)
        return True

    def close(self) -> None:
        pass


def _valid_messages() -> list[bytes]:
    spec = TrackSpec(TRACK, "pB", MediaKind.AUDIO, (OPUS,)).to_proto()
    msgs = [
        pb.RelayMessage(track_published=pb.TrackPublished(room=ROOM, track=spec)),
        pb.RelayMessage(rtp=pb.RelayRtp(room=ROOM, track_id=TRACK, packet=bytes([0x80, 111]) + bytes(30))),
        pb.RelayMessage(rtcp=pb.RelayRtcp(room=ROOM, track_id=TRACK, packet=bytes([0x81, 206, 0, 2]) + bytes(8))),
        pb.RelayMessage(track_closing=pb.TrackClosing(room=ROOM, track_id=TRACK, expected_to_resume=True)),
        pb.RelayMessage(migrate=_sync_state(published=[spec], transceivers=[
            pb.SubscribedTransceiver(track_id=TRACK, mid="1", ssrc=9, kind="audio", down=pb.DownTrackState(last_sequence=70000))])),
        pb.RelayMessage(migrate_cancel=pb.MigrateCancel(room=ROOM, participant_id="pA")),
        pb.RelayMessage(track_migrated=pb.TrackMigrated(room=ROOM, track_id=TRACK)),
    ]
    return [m.SerializeToString() for m in msgs]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=200),
                          st.tuples(st.sampled_from(_valid_messages()), st.integers(0, 2**32), st.integers(1, 6))),
                max_size=8))
def test_arbitrary_relay_bytes_never_raise_out_of_the_handler(items):
    # Arbitrary bytes, and valid messages with random bytes flipped, in any order: the handler
    # either applies them or rejects them; it never raises.
    async def main() -> None:
        baseline = leak_baseline()
        node = Node("B", clients={"pA": FakeClient("pA")}.get)
        link = _NullLink()
        node.links["A"] = link  # type: ignore[assignment]
        node.host_room(ROOM)
        for item in items:
            if isinstance(item, tuple):
                data, seed, flips = item
                rng = random.Random(seed)
                buf = bytearray(data)
                for _ in range(flips):
                    buf[rng.randrange(len(buf))] = rng.randrange(256)
                data = bytes(buf)
            else:
                data = item
            message = pb.RelayMessage()
            try:
                message.ParseFromString(data)
            except Exception:
                continue  # the link counts these as malformed
            node._handle(link, message)  # type: ignore[arg-type]
        node.close()
        assert_nodes_clean([node], baseline)

    trio.run(main)
