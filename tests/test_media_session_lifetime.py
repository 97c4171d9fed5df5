"""A participant's media session joins its room's media only while it lives.

The signal session creates the session, then starts its `run` in the participant's nursery; a
`close` in between (the room closing, a duplicate identity taking over) must not let the later
`run` join the room: a closed member would stay in the room's media for good, and the room's
media (with the relay's remote copies of it on a node of several) would never be let go.
"""

from __future__ import annotations

from typing import Optional

import attrs
import trio
from livekit.protocol import models, rtc

from server_fixtures import make_config
from trio_sfu.media.service import MediaService
from trio_sfu.metrics import Metrics
from trio_sfu.signal.grants import ClaimGrants
from trio_sfu.signal.media_port import MediaContext, MigratedParticipant


@attrs.define
class _Participant:
    """The signal side of the MediaParticipant seam (signal/media_port.py), as a join fills it."""

    sid: str
    identity: str
    grants: ClaimGrants = attrs.field(factory=lambda: ClaimGrants(api_key="devkey"))
    tracks: dict[str, models.TrackInfo] = attrs.field(factory=dict)
    track_by_cid: dict[str, str] = attrs.field(factory=dict)
    subscriptions: dict[str, bool] = attrs.field(factory=dict)
    track_settings: dict[str, rtc.UpdateTrackSettings] = attrs.field(factory=dict)
    migrated_in: Optional[MigratedParticipant] = None
    sent: list[rtc.SignalResponse] = attrs.field(factory=list)

    def send(self, response: rtc.SignalResponse) -> None:
        self.sent.append(response)

    def unpublish_track(self, track_sid: str) -> Optional[models.TrackInfo]:
        return self.tracks.pop(track_sid, None)


def _context(sid: str) -> MediaContext:
    return MediaContext(room_name="room1", room_sid="RM_room1", participant=_Participant(sid, sid.lower()))


async def test_a_session_closed_before_its_run_never_joins_the_room() -> None:
    service = MediaService(make_config(), Metrics())
    alice = service.create_session(_context("PA_alice"))
    bob = service.create_session(_context("PA_bob"))
    room = alice.room_media
    assert bob.room_media is room
    async with trio.open_nursery() as nursery:
        await nursery.start(alice.run)
        bob.close()
        await nursery.start(bob.run)
        assert list(room.sessions) == ["PA_alice"]
        nursery.cancel_scope.cancel()
    # Alice's scope ended: she closed on the way out, and with her the room's media is let go.
    assert alice.closed and not room.sessions
    assert service.rooms == {}
