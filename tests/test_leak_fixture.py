"""The node tests' leak check (server_fixtures.assert_nodes_clean, which memory_nodes runs on
exit) is not vacuous: it passes for a node whose track was published and withdrawn, and fails
for a subscriber still registered, a node that still holds a room's media, a source dropped from
the rooms while open, a task left running, migration bookkeeping left in the relay, and a socket
left on the in-memory network. (tests/test_tracks_leak_check.py does the same for a single
server's assert_no_leaks.)

The node is a real Server with media and a relay, not started: its RoomMedia publishes a track
through the real code path (TrackSource in the FIFO, the relay's tap and announcement).
"""

from __future__ import annotations

import pytest
import trio
from server_fixtures import assert_nodes_clean, leak_baseline, media_config, shared_certificate

from sdp.codecs import MediaKind
from sdp.model import Codec
from trio_sfu.forwarding.receiver import TrackReceiver
from trio_sfu.media.room_media import PublishedTrack, RoomMedia
from trio_sfu.server import Server
from trio_sfu.testing.memory_network import MemoryNetwork

ROOM = "room"
TRACK = "TR_leak"
OPUS = Codec(111, "opus", 48000, 2)


class Subscriber:
    """The smallest TrackSubscriber: remembers being detached."""

    subscriber_id = "pX"

    def __init__(self) -> None:
        self.detached = False

    def detach_source(self, source: object, expected_to_resume: bool) -> None:
        self.detached = True


def _publishing_node() -> tuple[Server, RoomMedia, PublishedTrack]:
    server = Server(media_config(), enable_media=True, node_id="LEAK", dtls_certificate=shared_certificate())
    assert server.media is not None
    room = server.media.room_media(ROOM, "RM_leak")
    receiver = TrackReceiver(TRACK, "audio/opus", 48000, send_rtcp=lambda packet: True, local_ssrc=1, now=0.0)
    track = PublishedTrack(TRACK, MediaKind.AUDIO, "PA_pub", "PA_pub|microphone", (OPUS,), {}, receiver)
    room.publish(track)
    return server, room, track


def _withdraw(room: RoomMedia, track: PublishedTrack) -> None:
    room.unpublish([track])
    room.forget_if_idle()


async def test_a_node_whose_track_was_withdrawn_passes() -> None:
    baseline = leak_baseline()
    server, room, track = _publishing_node()
    assert track.source is not None
    track.source.add_subscriber(Subscriber())
    _withdraw(room, track)
    assert_nodes_clean([server], baseline)


async def test_a_registered_subscriber_fails() -> None:
    baseline = leak_baseline()
    server, room, track = _publishing_node()
    subscriber = Subscriber()
    assert track.source is not None
    track.source.add_subscriber(subscriber)
    with pytest.raises(AssertionError, match="subscribers still registered on LEAK"):
        assert_nodes_clean([server], baseline)
    _withdraw(room, track)
    assert subscriber.detached
    assert_nodes_clean([server], baseline)


async def test_a_node_that_still_holds_a_rooms_media_fails() -> None:
    baseline = leak_baseline()
    server, room, track = _publishing_node()
    with pytest.raises(AssertionError, match="media rooms survived on LEAK"):
        assert_nodes_clean([server], baseline)
    _withdraw(room, track)
    assert_nodes_clean([server], baseline)


async def test_a_source_dropped_from_the_rooms_while_open_fails() -> None:
    # The server no longer knows the source; only the process-wide registry still sees it open.
    baseline = leak_baseline()
    server, room, track = _publishing_node()
    assert server.media is not None and server.relay is not None and track.source is not None
    source = track.source
    server.media.rooms.clear()
    server.relay.local_closing(room, source, False)  # the relay let go of it, the source stayed open
    with pytest.raises(AssertionError, match="track sources survived the nodes"):
        assert_nodes_clean([server], baseline)
    source.close_now(False)
    assert_nodes_clean([server], baseline)


async def test_a_task_left_running_fails() -> None:
    baseline = leak_baseline()
    server, room, track = _publishing_node()
    _withdraw(room, track)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.sleep_forever, name="left-running")
        await trio.lowlevel.checkpoint()
        with pytest.raises(AssertionError, match="tasks survived the nodes: .*left-running"):
            assert_nodes_clean([server], baseline)
        nursery.cancel_scope.cancel()
    assert_nodes_clean([server], baseline)


async def test_migration_bookkeeping_left_behind_fails() -> None:
    baseline = leak_baseline()
    server, room, track = _publishing_node()
    _withdraw(room, track)
    assert server.relay is not None
    server.relay._pending_in[(ROOM, "PA_x")] = object()  # type: ignore[assignment]  # what a cancelled move must clear
    with pytest.raises(AssertionError, match="migrations survived on LEAK"):
        assert_nodes_clean([server], baseline)
    server.relay._pending_in.clear()
    assert_nodes_clean([server], baseline)


async def test_a_socket_left_on_the_in_memory_network_fails() -> None:
    baseline = leak_baseline()
    server, room, track = _publishing_node()
    _withdraw(room, track)
    network = MemoryNetwork()
    sock = network.bind_datagram("127.0.0.1", 0)
    with pytest.raises(AssertionError, match="sockets survived on the network"):
        assert_nodes_clean([server], baseline, network)
    sock.close()
    assert_nodes_clean([server], baseline, network)
