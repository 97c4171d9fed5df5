"""Subscriber m-lines when a publisher's track is gone for good.

A publisher's node drops out of the mesh and the publisher rejoins through another node with a
new session and a new track: the subscriber on a third node must get the new track as a new
track, on an m-line whose msid names it, and never see the old track offered again. And an
m-line held for a track expected back (a hand-over to a new source) is let go once the track's
publisher has left instead: later offers never present the old track again.

Why the msid *stream* id matters, not only its track id: a client whose transceiver is reused for
another track keeps the receiver (and the MediaStreamTrack id) it created for the first one —
libwebrtc fixes the receiver's track id when the transceiver is made. LiveKit's SDKs therefore
take the track sid from the packed stream id `PA_<publisher>|TR_<track>` when its suffix starts
with `TR` (livekit-client's `unpackStreamId`, the Rust SDK's `handle_media_track`), and only fall
back to the MediaStreamTrack id. A stream id like `PA_x|microphone` on a reused m-line makes the
SDK look for the *old* track sid (seen end to end: `track_subscription_failed` for the old sid).

Real servers linked by the TCP mesh (tests/test_relay_mesh.py), our LiveKitClient as peers; the
offers are read from the subscriber's endpoint on its node (every offer it made is kept).
"""

from __future__ import annotations

import trio

from sdp.model import SessionDescription, Ssrc
from server_fixtures import media_server, mint_token
from test_relay_mesh import ROOM, packets_flow, tcp_nodes, wait_until
from trio_sfu.client import LiveKitClient
from trio_sfu.client.senders import send_synthetic_audio, send_synthetic_video
from trio_sfu.server import Server


def subscriber_offers(server: Server, participant_sid: str) -> list[SessionDescription]:
    (room,) = server.media.rooms.values()
    return list(room.sessions[participant_sid].subscribing.endpoint.offers)


def tracks_offered(offer: SessionDescription) -> dict[str, tuple[str, str, list[str]]]:
    """mid -> (msid stream id, msid track id, the track ids of its a=ssrc msid lines), for every
    live m-line that sends something."""
    out = {}
    for m in offer.media:
        if m.rejected or m.kind not in ("audio", "video") or not m.direction.sends:
            continue
        msid = m.msid
        ssrc_tracks = [line.value.split(" ", 1)[1] for line in m.all(Ssrc)
                       if line.attribute == "msid" and line.value and " " in line.value]
        out[m.mid] = (msid.stream_id if msid else "", (msid.track_id or "") if msid else "", ssrc_tracks)
    return out


async def test_a_rejoined_publishers_new_track_reaches_a_third_node_on_an_m_line_that_names_it() -> None:
    async with tcp_nodes("node-a", "node-b", "node-c") as nodes:
        a, b, c = (nodes.servers[n] for n in ("node-a", "node-b", "node-c"))
        await nodes.wait_linked()
        finished: list[bool] = []
        async with LiveKitClient.connect(c.url, mint_token("bob", room=ROOM)) as bob:
            # alice publishes on A; bob on C receives it through the relay.
            async with LiveKitClient.connect(a.url, mint_token("alice", room=ROOM)) as alice, \
                    trio.open_nursery() as senders:
                old = await alice.publish_audio("mic")
                senders.start_soon(send_synthetic_audio, old, 120.0)
                (first,) = await bob.wait_for_tracks(1)
                assert first.sid == old.sid
                await packets_flow(first)
                old_mid = first.mid
                # A drops out of the mesh (it dials both others, so both links go and nobody
                # redials): C loses the link, closes its copy of the track without a resume.
                nodes.meshes["node-a"].set_peers({})
                await wait_until(lambda: "node-a" not in c.relay.links and "node-a" not in b.relay.links)
                await wait_until(lambda: not bob.subscriptions[old.sid].active)
                assert alice.participant_sid not in bob.remote_participants
                offers_before = len(subscriber_offers(c, bob.participant_sid))
                senders.cancel_scope.cancel()
            # alice comes back through B: a new session, a new track.
            async with LiveKitClient.connect(b.url, mint_token("alice", room=ROOM)) as alice2, \
                    trio.open_nursery() as senders2:
                new = await alice2.publish_audio("mic")
                assert new.sid != old.sid and alice2.participant_sid != alice.participant_sid
                senders2.start_soon(send_synthetic_audio, new, 120.0)
                await wait_until(lambda: new.sid in bob.subscriptions and bob.subscriptions[new.sid].active)
                track = bob.subscriptions[new.sid]
                await packets_flow(track)

                after = subscriber_offers(c, bob.participant_sid)[offers_before - 1:]
                # No offer after the loss puts the old track in front of bob again.
                for offer in after[1:]:
                    for mid, (stream, track_id, ssrc_tracks) in tracks_offered(offer).items():
                        assert old.sid not in (track_id, *ssrc_tracks) and old.sid not in stream, \
                            f"m-line {mid} offers the closed track {old.sid} again: {stream} {track_id}"
                # The new track came on the m-line the old one left (transceiver reuse) ...
                assert track.mid == old_mid
                # ... and that m-line's msid names the new track, in the stream id the SDKs read
                # on a reused transceiver as well as in the track id.
                stream, track_id, ssrc_tracks = tracks_offered(after[-1])[track.mid]
                assert track_id == new.sid and set(ssrc_tracks) == {new.sid}
                assert stream == f"{alice2.participant_sid}|{new.sid}", stream
                assert not bob.subscription_failures
                senders2.cancel_scope.cancel()
            finished.append(True)
        assert finished, "the scenario was cut short"


async def test_an_m_line_held_for_a_resume_that_never_comes_is_let_go_once_the_publisher_is_gone() -> None:
    """A remote track closes expecting a resume (its subscriber's m-line is cached and held,
    offered as the client last saw it), but nothing comes back: its publisher leaves instead and
    the client is told so. From then on no offer may present the old track (sendonly, its msid)
    — not the one that lets the held m-line go, nor one made for another track later."""
    async with tcp_nodes("node-a", "node-b", "node-c") as nodes:
        a, b, c = (nodes.servers[n] for n in ("node-a", "node-b", "node-c"))
        await nodes.wait_linked()
        finished: list[bool] = []
        async with LiveKitClient.connect(c.url, mint_token("bob", room=ROOM)) as bob:
            async with LiveKitClient.connect(a.url, mint_token("alice", room=ROOM)) as alice:
                async with trio.open_nursery() as senders:
                    old = await alice.publish_audio("mic")
                    senders.start_soon(send_synthetic_audio, old, 120.0)
                    (first,) = await bob.wait_for_tracks(1)
                    await packets_flow(first)
                    senders.cancel_scope.cancel()
                # A hands the track to a new source that never appears (no packet follows): C's
                # copy closes expecting a resume, bob's m-line is held for the track.
                session_a = a.media.participant_media(ROOM, alice.participant_sid)
                assert session_a is not None and session_a.restart_published_track(old.sid)
                bob_on_c = c.media.participant_media(ROOM, bob.participant_sid)
                assert bob_on_c is not None
                endpoint = bob_on_c.subscribing.endpoint
                await wait_until(lambda: old.sid in endpoint.cached_track_ids)
                held_mid = first.mid
            # alice leaves instead: bob is told she is gone.
            await wait_until(lambda: alice.participant_sid not in bob.remote_participants)
            offers_before = len(endpoint.offers)
            # Someone else publishes video through B: bob gets an offer for it.
            async with LiveKitClient.connect(b.url, mint_token("carol", room=ROOM)) as carol, \
                    trio.open_nursery() as senders:
                video = await carol.publish_video("cam", width=320, height=180, simulcast=False)
                senders.start_soon(send_synthetic_video, video, 120.0)
                await wait_until(lambda: video.sid in bob.subscriptions and bob.subscriptions[video.sid].active)
                await packets_flow(bob.subscriptions[video.sid])
                after = endpoint.offers[offers_before:]
                assert after, "bob was offered carol's video"
                for offer in after:
                    for mid, (stream, track_id, ssrc_tracks) in tracks_offered(offer).items():
                        assert old.sid not in (track_id, *ssrc_tracks) and old.sid not in stream, \
                            f"m-line {mid} still offers {old.sid}, whose publisher left: {stream} {track_id}"
                # The held m-line was let go (the client no longer receives the old track on it),
                # and nothing of the old track stays cached.
                assert not bob.subscriptions[old.sid].active
                assert old.sid not in endpoint.cached_track_ids and old.sid not in endpoint.table.cache
                assert old.sid not in endpoint.snapshots
                line = endpoint.table.get(held_mid)
                assert line is not None and line.track_id != old.sid
                senders.cancel_scope.cancel()
            finished.append(True)
        assert finished, "the scenario was cut short"


async def test_on_one_node_an_m_line_held_for_a_publisher_that_left_is_let_go() -> None:
    """The same on one node: a local track hands over to a new source that never appears, then
    its publisher leaves; the subscriber's later offers never present the old track."""
    finished: list[bool] = []
    async with media_server() as server, LiveKitClient.connect(server.url, mint_token("bob")) as bob:
        async with LiveKitClient.connect(server.url, mint_token("alice")) as alice:
            async with trio.open_nursery() as senders:
                old = await alice.publish_audio("mic")
                senders.start_soon(send_synthetic_audio, old, 120.0)
                (first,) = await bob.wait_for_tracks(1)
                await packets_flow(first)
                senders.cancel_scope.cancel()
            (room,) = server.media.rooms.values()
            assert room.sessions[alice.participant_sid].restart_published_track(old.sid)
            endpoint = room.sessions[bob.participant_sid].subscribing.endpoint
            await wait_until(lambda: old.sid in endpoint.cached_track_ids)
        await wait_until(lambda: alice.participant_sid not in bob.remote_participants)
        offers_before = len(endpoint.offers)
        async with LiveKitClient.connect(server.url, mint_token("carol")) as carol, trio.open_nursery() as senders:
            video = await carol.publish_video("cam", width=320, height=180, simulcast=False)
            senders.start_soon(send_synthetic_video, video, 120.0)
            await wait_until(lambda: video.sid in bob.subscriptions and bob.subscriptions[video.sid].active)
            after = endpoint.offers[offers_before:]
            assert after
            for offer in after:
                for mid, (stream, track_id, ssrc_tracks) in tracks_offered(offer).items():
                    assert old.sid not in (track_id, *ssrc_tracks) and old.sid not in stream, \
                        f"m-line {mid} still offers {old.sid}, whose publisher left: {stream} {track_id}"
            assert not bob.subscriptions[old.sid].active
            assert old.sid not in endpoint.cached_track_ids and old.sid not in endpoint.table.cache
            senders.cancel_scope.cancel()
        finished.append(True)
    assert finished, "the scenario was cut short"
