"""Bad input at a real server's relay (issue 5): sync states naming what does not exist, a
migration for a participant already present, relay messages for unknown rooms or tracks, stray
migration steps, arbitrary bytes, and a resume nobody handed over. Each is rejected with a logged
reason and counted (`relay_rejected_total`); nothing raises out of the relay's tasks, and media
keeps flowing between the two nodes afterwards.

The messages are sent by node A's real link object, so they cross the link as bytes exactly as
A's NodeRelay would send them.
"""

from __future__ import annotations

import logging

import trio
from livekit.protocol import models, rtc

from proto import relay_pb2 as pb
from sdp.codecs import MediaKind
from sdp.model import Codec
from server_fixtures import media_nodes, mint_token, recv_kind, signal_client
from trio_sfu.client import LiveKitClient
from trio_sfu.client.senders import send_synthetic_audio
from trio_sfu.cluster.relay_protocol import TrackSpec

ROOM = "shared"
OPUS = Codec(111, "opus", 48000, 2)


async def rejected(a, b, message: pb.RelayMessage, reason: str) -> None:
    before = len(b.relay.rejections)
    a.relay.links["node-b"].send(message)
    with trio.fail_after(5):
        while len(b.relay.rejections) == before:
            await trio.sleep(0.01)
    assert reason in b.relay.rejections[-1], b.relay.rejections[-1]


def sync_state(identity: str = "mover", sid: str = "PA_mover", **fields) -> pb.MigrateParticipant:
    info = models.ParticipantInfo(sid=sid, identity=identity)
    state = pb.MigrateParticipant(room=ROOM, participant_id=sid, participant_info=info.SerializeToString())
    for key, value in fields.items():
        if isinstance(value, list):
            getattr(state, key).extend(value)
        else:
            setattr(state, key, value)
    return state


async def test_bad_relay_input_is_rejected_and_the_nodes_keep_working(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="trio_sfu.cluster.node_relay")
    async with media_nodes("node-a", "node-b") as (a, b):
        # Someone is in the room on B, so the room and its media exist there.
        async with LiveKitClient.connect(b.url, mint_token("resident", room=ROOM)) as resident:
            await resident.wait_connected(timeout=10)
            resident_sid = resident.participant_sid
            cases = [
                (pb.RelayMessage(), "empty relay message"),
                (pb.RelayMessage(track_published=pb.TrackPublished(room=ROOM, track=pb.TrackDescription(
                    track_id="TR_x", kind="smell"))), "track_published with an unusable description"),
                (pb.RelayMessage(track_published=pb.TrackPublished(room=ROOM, track=TrackSpec(
                    "TR_ext", "PA_p", MediaKind.AUDIO, (OPUS,), extensions=((0, "urn:x"),)).to_proto())),
                 "track_published with an unusable description"),
                # Ids go into the subscribers' SDP: a control character would break its lines.
                (pb.RelayMessage(track_published=pb.TrackPublished(room=ROOM, track=TrackSpec(
                    "TR_ctl", "PA_\x0b", MediaKind.AUDIO, (OPUS,)).to_proto())),
                 "track_published with an unusable description"),
                (pb.RelayMessage(track_published=pb.TrackPublished(room=ROOM, track=TrackSpec(
                    "TR_ sp", "PA_p", MediaKind.AUDIO, (OPUS,)).to_proto())),
                 "track_published with an unusable description"),
                (pb.RelayMessage(track_closing=pb.TrackClosing(room=ROOM, track_id="TR_nope")),
                 "track_closing for unknown track"),
                (pb.RelayMessage(migrate_accepted=pb.MigrateAccepted(room=ROOM, participant_id="PA_x", signal_url="ws://x")),
                 "migrate_accepted for no pending migration"),
                (pb.RelayMessage(migrate_cancel=pb.MigrateCancel(room=ROOM, participant_id="PA_x")),
                 "migrate_cancel for unknown participant"),
                (pb.RelayMessage(track_migrated=pb.TrackMigrated(room=ROOM, track_id="TR_nope")),
                 "track_migrated for a track not handed over"),
                (pb.RelayMessage(migrate=pb.MigrateParticipant(room=ROOM, participant_id="PA_m", participant_info=b"\xff\xff")),
                 "unparsable participant info"),
                (pb.RelayMessage(migrate=pb.MigrateParticipant(room=ROOM, participant_id="PA_m", participant_info=(
                    models.ParticipantInfo(sid="PA_other", identity="x").SerializeToString()))),
                 "participant info does not match"),
                (pb.RelayMessage(migrate=sync_state(identity="resident", sid="PA_new")), "participant already present"),
                (pb.RelayMessage(migrate=sync_state(sid=resident_sid, identity="someone")), "participant already present"),
                (pb.RelayMessage(migrate=sync_state(subscriptions=["TR_nope"])), "subscription to unknown track TR_nope"),
                (pb.RelayMessage(migrate=sync_state(published=[
                    TrackSpec("TR_p", "PA_mover", MediaKind.AUDIO, (OPUS,)).to_proto()])), "unusable published track TR_p"),
                (pb.RelayMessage(migrate=sync_state(transceivers=[
                    pb.SubscribedTransceiver(track_id="TR_z", mid="1", ssrc=5, kind="audio")])),
                 "transceiver for unsubscribed track TR_z"),
                (pb.RelayMessage(migrate=sync_state(participant_id="")), "no room or participant id"),
                (pb.RelayMessage(migrate=sync_state(participant_id="PA_\x0b")), "no room or participant id"),
                (pb.RelayMessage(migrate=sync_state(publisher_streams=[
                    pb.PublisherStream(track_id="TR_x", mid="1", ssrc=5)])), "unusable publisher stream 5 of TR_x"),
                (pb.RelayMessage(migrate=sync_state(lines=[pb.SubscriberLine(mid="0", kind="application", live=True),
                                                           pb.SubscriberLine(mid="0", kind="audio", live=True)])),
                 "subscriber m-lines with empty or repeated mids"),
            ]
            for message, reason in cases:
                await rejected(a, b, message, reason)
            # A refused migration is answered, so A hears the refusal it never asked for.
            with trio.fail_after(5):
                while not any("migrate_rejected for no pending migration" in r for r in a.relay.rejections):
                    await trio.sleep(0.01)
            # Media for an unknown track or room is counted and dropped; garbage bytes too.
            a.relay.links["node-b"].send(pb.RelayMessage(rtp=pb.RelayRtp(room="nowhere", track_id="TR_q", packet=b"\x80" * 20)))
            b.relay.links["node-a"].inject_raw(b"\x0a\xff\xff\xff\xff\x0f")
            with trio.fail_after(5):
                while b.metrics.get("relay_rtp_unknown_total") < 1 or b.relay.links["node-a"].malformed < 1:
                    await trio.sleep(0.01)
            assert b.metrics.get("relay_rejected_total") == len(b.relay.rejections) >= len(cases)
            assert any("relay message rejected" in r.getMessage() for r in caplog.records)
            assert not b.relay._pending_in, "nothing refused may wait for a resume"

            # Both nodes still relay media: a publisher on A reaches the resident on B.
            async with LiveKitClient.connect(a.url, mint_token("pub", room=ROOM)) as publisher, \
                    trio.open_nursery() as senders:
                audio = await publisher.publish_audio()
                senders.start_soon(send_synthetic_audio, audio, 10.0)
                (track,) = await resident.wait_for_tracks(1)
                with trio.fail_after(10):
                    while track.stats.packets < 20:
                        await trio.sleep(0.02)
                senders.cancel_scope.cancel()


async def test_a_resume_nobody_handed_over_is_told_to_rejoin() -> None:
    async with media_nodes("node-a", "node-b") as (a, b):
        token = mint_token("stranger", room=ROOM)
        async with signal_client(b, token, query="&reconnect=1&sid=PA_unknown") as ws:
            leave = await recv_kind(ws, "leave")
        assert leave.leave.reason == models.DisconnectReason.STATE_MISMATCH
        assert leave.leave.action == rtc.LeaveRequest.Action.RECONNECT
        assert not b.registry.rooms


def random_message(rng, track_ids: list[str], sids: list[str]) -> pb.RelayMessage:
    """A structurally valid relay message with arbitrary contents."""
    room = rng.choice([ROOM, ROOM, "elsewhere", ""])
    track = rng.choice(track_ids)
    sid = rng.choice(sids)
    kind = rng.choice(["track_published", "track_closing", "rtp", "rtcp", "migrate", "migrate_accepted",
                       "migrate_rejected", "migrate_cancel", "track_migrated"])
    if kind == "track_published":
        codecs = [pb.Codec(payload_type=rng.choice([0, 96, 111, 200]), name=rng.choice(["opus", "", "rtx"]),
                           clock_rate=rng.choice([0, 48000, 90000]), channels=rng.choice([0, 2]))
                  for _ in range(rng.randrange(3))]
        body = pb.TrackPublished(room=room, track=pb.TrackDescription(
            track_id=track, publisher_id=sid, kind=rng.choice(["audio", "video", "application", "x"]), codecs=codecs,
            extensions={rng.randrange(300): rng.choice(["", "urn:ietf:params:rtp-hdrext:sdes:mid"])
                        for _ in range(rng.randrange(2))}))
        return pb.RelayMessage(track_published=body)
    if kind == "track_closing":
        return pb.RelayMessage(track_closing=pb.TrackClosing(room=room, track_id=track, expected_to_resume=rng.random() < 0.5))
    if kind in ("rtp", "rtcp"):
        packet = bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
        if rng.random() < 0.5:
            packet = b"\x80\x6f" + packet  # RTP-looking, or an RTCP-looking PLI header
        message = pb.RelayMessage()
        getattr(message, kind).CopyFrom((pb.RelayRtp if kind == "rtp" else pb.RelayRtcp)(room=room, track_id=track, packet=packet))
        return message
    if kind == "migrate":
        info = models.ParticipantInfo(sid=sid, identity=rng.choice(["mover", "resident", ""]),
                                      tracks=[models.TrackInfo(sid=t) for t in rng.sample(track_ids, rng.randrange(2))])
        state = pb.MigrateParticipant(room=room, participant_id=rng.choice([sid, sid, ""]),
                                      participant_info=info.SerializeToString() if rng.random() < 0.9 else b"\x07",
                                      subscriptions=rng.sample(track_ids, rng.randrange(2)))
        for t in rng.sample(track_ids, rng.randrange(2)):
            state.transceivers.append(pb.SubscribedTransceiver(track_id=t, mid=rng.choice(["", "1", "7"]),
                                                               ssrc=rng.choice([0, 1234]), kind=rng.choice(["audio", "video", "x"])))
        return pb.RelayMessage(migrate=state)
    body_type = {"migrate_accepted": pb.MigrateAccepted, "migrate_rejected": pb.MigrateRejected,
                 "migrate_cancel": pb.MigrateCancel, "track_migrated": pb.TrackMigrated}[kind]
    fields = {"room": room}
    fields.update({"track_id": track} if kind == "track_migrated" else {"participant_id": sid})
    message = pb.RelayMessage()
    getattr(message, kind).CopyFrom(body_type(**fields))
    return message


async def test_thousands_of_arbitrary_relay_messages_never_break_a_node() -> None:
    """2,000 structurally valid messages with arbitrary contents and 500 arbitrary byte strings
    (seeded, reproducible) at node B while a publisher on A reaches a subscriber on B: nothing
    escapes the relay's tasks, the media keeps flowing, and after both nodes stop nothing is left
    (the fixture's leak check), including sync states B accepted and gave up on."""
    import random

    rng = random.Random(20261125)
    async with media_nodes("node-a", "node-b") as (a, b):
        b.relay.resume_timeout = 0.5
        async with LiveKitClient.connect(a.url, mint_token("pub", room=ROOM)) as publisher, \
                LiveKitClient.connect(b.url, mint_token("resident", room=ROOM)) as resident, \
                trio.open_nursery() as senders:
            audio = await publisher.publish_audio()
            senders.start_soon(send_synthetic_audio, audio, 60.0)
            (track,) = await resident.wait_for_tracks(1)
            # Not the live track: the peer is trusted, and a well-formed TrackClosing for it from
            # there is an instruction, not junk. Everything else goes.
            track_ids = ["TR_a", "TR_b", ""]
            sids = [publisher.participant_sid, resident.participant_sid, "PA_mover", ""]
            link_to_b = a.relay.links["node-b"]
            for i in range(2000):
                link_to_b.send(random_message(rng, track_ids, sids))
                if i % 4 == 0:
                    b.relay.links["node-a"].inject_raw(bytes(rng.randrange(256) for _ in range(rng.randrange(64))))
                if i % 100 == 0:
                    await trio.sleep(0.01)  # let B's relay task drain the link
            before = track.stats.packets
            with trio.fail_after(10):
                while track.stats.packets < before + 25:
                    await trio.sleep(0.02)
            assert b.relay._nursery is not None  # its tasks still run
            assert b.metrics.get("relay_rejected_total") > 100
            # Every rejection was a check saying why, not an exception caught by the loop.
            assert a.metrics.get("relay_handler_failed_total") == b.metrics.get("relay_handler_failed_total") == 0, [
                r for r in list(b.relay.rejections) + list(a.relay.rejections) if r.startswith("relay message failed")]
            # Accepted sync states time out (resume_timeout) and are given up: waited for, not
            # slept on, so a busy machine only makes it later.
            with trio.fail_after(b.relay.resume_timeout + 20):
                while b.relay._pending_in:
                    await trio.sleep(0.05)
            senders.cancel_scope.cancel()
