"""Bad input at a real node's relay, under MockClock: sync states naming unknown tracks or
subscriptions, a migration for a participant already present, relay messages for unknown rooms
or tracks, and arbitrary bytes. Each is rejected with a logged reason (and counted); nothing
raises out of the relay's handler, and the nodes keep working afterwards. (The same relay over
loopback, with thousands of messages: tests/test_node_relay_bad_input.py.)"""

from __future__ import annotations

import logging
import random

import trio
import trio.testing
from budgets import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from livekit.protocol import models
from server_fixtures import memory_nodes
from test_migration_world import RECONCILE, ROOM, World, two_nodes, until

from proto import relay_pb2 as pb
from sdp.codecs import MediaKind
from sdp.model import Codec
from trio_sfu.cluster.relay_protocol import TrackSpec

OPUS = Codec(111, "opus", 48000, 2, "minptime=10;useinbandfec=1")


def _sync_state(w: World, **overrides) -> pb.MigrateParticipant:
    """A sync state for a participant "mover" that never was anywhere, subscribed to the track."""
    info = models.ParticipantInfo(sid="PA_mover", identity="mover")
    state = pb.MigrateParticipant(room=ROOM, participant_id=info.sid, subscriptions=[w.track],
                                  participant_info=info.SerializeToString())
    for key, value in overrides.items():
        if isinstance(value, list):
            del getattr(state, key)[:]
            getattr(state, key).extend(value)
        else:
            setattr(state, key, value)
    return state


async def _rejected(w: World, message: pb.RelayMessage, reason: str) -> None:
    assert w.a.relay is not None and w.b.relay is not None
    before = w.b.metrics.get("relay_rejected_total")
    w.a.relay.links["B"].send(message)
    await until(lambda: w.b.metrics.get("relay_rejected_total") > before)
    assert reason in w.b.relay.rejections[-1], w.b.relay.rejections[-1]


async def test_sync_states_naming_what_does_not_exist_are_refused(autojump_clock, caplog):
    caplog.set_level(logging.WARNING, logger="trio_sfu.cluster.node_relay")
    async with two_nodes() as w:
        track_published = TrackSpec("TR_x", "PA_mover", MediaKind.AUDIO, (OPUS,)).to_proto()
        info_with_track = models.ParticipantInfo(sid="PA_mover", identity="mover", tracks=[models.TrackInfo(sid="TR_x")])
        bad = {
            "subscription to unknown track TR_nope": _sync_state(w, subscriptions=["TR_nope"]),
            "published track TR_x unknown here": _sync_state(
                w, published=[track_published], participant_info=info_with_track.SerializeToString()),
            "unusable published track TR_y": _sync_state(w, published=[pb.TrackDescription(track_id="TR_y", kind="smell")]),
            "transceiver for unsubscribed track TR_z": _sync_state(w, transceivers=[
                pb.SubscribedTransceiver(track_id="TR_z", mid="1", ssrc=5, kind="audio")]),
            "transceiver of unknown kind": _sync_state(w, transceivers=[
                pb.SubscribedTransceiver(track_id=w.track, mid="1", ssrc=5, kind="hologram")]),
            "no room or participant id": _sync_state(w, participant_id=""),
            "participant info does not match": _sync_state(w, participant_id="PA_other"),
        }
        for reason, state in bad.items():
            await _rejected(w, pb.RelayMessage(migrate=state), reason)
        assert not w.b.relay._pending_in, "nothing refused may wait for a resume"
        logged = [r.getMessage() + str(getattr(r, "kv", "")) for r in caplog.records]
        assert sum("relay message rejected" in line for line in logged) >= len(bad)
        # A was told each time; with no migration pending it rejects those answers in turn.
        await until(lambda: len([r for r in w.a.relay.rejections if "migrate_rejected" in r]) == len(bad))


async def test_migration_for_a_participant_already_present_is_refused(autojump_clock):
    async with two_nodes() as w:
        assert await w.a.relay.migrate(ROOM, w.sid("pA"), "B")
        await until(lambda: w.subscribed_source("B", "pA") is not None)
        info = models.ParticipantInfo(sid=w.sid("pA"), identity="pA")
        again = _sync_state(w, participant_id=info.sid, participant_info=info.SerializeToString())
        await _rejected(w, pb.RelayMessage(migrate=again), "participant already present")
        await trio.sleep(2 * RECONCILE)
        assert w.subscribed_source("B", "pA") is not None  # the first one is untouched
        assert w.clients["pA"].errors == []


async def test_relay_messages_for_unknown_rooms_and_tracks_are_refused(autojump_clock):
    async with two_nodes() as w:
        assert w.a.relay is not None and w.b.relay is not None and w.b.media is not None
        await _rejected(w, pb.RelayMessage(track_closing=pb.TrackClosing(room=ROOM, track_id="TR_nope")), "unknown track")
        await _rejected(w, pb.RelayMessage(track_migrated=pb.TrackMigrated(room=ROOM, track_id="TR_nope")),
                        "track_migrated for a track not handed over")
        await _rejected(w, pb.RelayMessage(migrate_cancel=pb.MigrateCancel(room=ROOM, participant_id="ghost")),
                        "unknown participant")
        await _rejected(w, pb.RelayMessage(migrate_accepted=pb.MigrateAccepted(room=ROOM, participant_id="ghost")),
                        "no pending migration")
        await _rejected(w, pb.RelayMessage(migrate_resumed=pb.MigrateResumed(room=ROOM, participant_id="ghost")),
                        "no accepted migration")
        await _rejected(w, pb.RelayMessage(track_published=pb.TrackPublished(room=ROOM, track=pb.TrackDescription(
            track_id="T2", kind="audio"))), "unusable description")
        await _rejected(w, pb.RelayMessage(), "empty relay message")
        # A room this node does not host is only remembered, never given media here.
        w.a.relay.links["B"].send(pb.RelayMessage(track_published=pb.TrackPublished(
            room="nowhere", track=TrackSpec("TR_n", "PA_p", MediaKind.AUDIO, (OPUS,)).to_proto())))
        await until(lambda: "nowhere" in w.b.relay._announced)
        assert w.b.media.room_by_name("nowhere") is None
        unknown = w.b.metrics.get("relay_rtp_unknown_total")
        w.a.relay.links["B"].send(pb.RelayMessage(rtp=pb.RelayRtp(room=ROOM, track_id="TR_nope", packet=b"\x80" * 20)))
        w.a.relay.links["B"].send(pb.RelayMessage(rtp=pb.RelayRtp(room="nowhere", track_id=w.track, packet=b"\x80" * 20)))
        await until(lambda: w.b.metrics.get("relay_rtp_unknown_total") == unknown + 2)
        w.b.relay.links["A"].inject_raw(b"\xff\xff\xff")  # not protobuf: counted, skipped
        await until(lambda: w.b.relay.links["A"].malformed == 1)
        assert w.b.metrics.get("relay_handler_failed_total") == 0
        # Still working: pA migrates normally afterwards.
        assert await w.a.relay.migrate(ROOM, w.sid("pA"), "B")
        await until(lambda: w.subscribed_source("B", "pA") is not None)


def _valid_messages() -> list[bytes]:
    spec = TrackSpec("TR_t", "PA_p", MediaKind.AUDIO, (OPUS,)).to_proto()
    info = models.ParticipantInfo(sid="PA_m", identity="mover", tracks=[models.TrackInfo(sid="TR_t")])
    msgs = [
        pb.RelayMessage(track_published=pb.TrackPublished(room=ROOM, track=spec)),
        pb.RelayMessage(rtp=pb.RelayRtp(room=ROOM, track_id="TR_t", packet=bytes([0x80, 111]) + bytes(30))),
        pb.RelayMessage(rtcp=pb.RelayRtcp(room=ROOM, track_id="TR_t", packet=bytes([0x81, 206, 0, 2]) + bytes(8))),
        pb.RelayMessage(track_closing=pb.TrackClosing(room=ROOM, track_id="TR_t", expected_to_resume=True)),
        pb.RelayMessage(migrate=pb.MigrateParticipant(
            room=ROOM, participant_id="PA_m", participant_info=info.SerializeToString(), subscriptions=["TR_t"],
            published=[spec], transceivers=[pb.SubscribedTransceiver(
                track_id="TR_t", mid="1", ssrc=9, kind="audio", stream_id="PA_p|microphone",
                down=pb.DownTrackState(last_sequence=70000))])),
        pb.RelayMessage(migrate_cancel=pb.MigrateCancel(room=ROOM, participant_id="PA_m")),
        pb.RelayMessage(track_migrated=pb.TrackMigrated(room=ROOM, track_id="TR_t")),
        pb.RelayMessage(migrate_resumed=pb.MigrateResumed(room=ROOM, participant_id="PA_m")),
    ]
    return [m.SerializeToString() for m in msgs]


@settings(max_examples=examples(3), deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=200),
                          st.tuples(st.sampled_from(_valid_messages()), st.integers(0, 2**32), st.integers(1, 6))),
                max_size=8))
def test_arbitrary_relay_bytes_never_raise_out_of_the_handler(items):
    # Arbitrary bytes, and valid messages with random bytes flipped, in any order, straight into
    # node B's relay handler while B hosts the room: each is applied or rejected, none raises;
    # after both nodes stop nothing is left (memory_nodes' leak check).
    async def main() -> None:
        async with memory_nodes("A", "B") as nodes, nodes.connect("resident", "B", room=ROOM) as resident:
            await resident.wait_connected()
            relay = nodes["B"].relay
            assert relay is not None
            relay.resume_timeout = 0.5
            link = relay.links["A"]
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
                await relay._handle(link, message)
            await trio.sleep(1.0)  # accepted sync states time out and are given up
            assert not relay._pending_in
            assert resident.errors == []

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
