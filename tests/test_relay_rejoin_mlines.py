"""A publisher's node drops out of the mesh and the publisher rejoins through another node with a
new session and a new track: the subscriber on a third node must get the new track as a new
track, on an m-line whose msid names it, and never see the old track offered again.

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
from server_fixtures import mint_token
from test_relay_mesh import ROOM, packets_flow, tcp_nodes, wait_until
from trio_sfu.client import LiveKitClient
from trio_sfu.client.senders import send_synthetic_audio
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
