"""The seam between signalling and media, owned by the signal layer.

The signal session (`trio_sfu.signal.participant`) creates one `MediaSession` per participant
through a `MediaSessionFactory`, starts its `run` in the participant's nursery (so the media
tasks end with the participant), and hands it every SDP and ICE message and every change the
media layer must act on, by calling the methods below: no optional hooks, no `getattr`.

The media layer sees its participant only through `MediaParticipant`, the few attributes and
calls it needs; `trio_sfu.signal.participant.Participant` implements it. A participant that
migrated here from another node carries a `MigratedParticipant` record (its old node's state),
which the cluster layer creates and the signal and media layers read.

`UnavailableMediaSession` is what a signal-only server runs: every media request is refused
with a `request_response` that says so, so a client sees a clear error instead of silence.
Test doubles subclass it and override what they exercise.
"""

from __future__ import annotations

from typing import Callable, Optional, Protocol

import attrs
import trio
from livekit.protocol import models, rtc

from sdp.codecs import MediaKind
from trio_sfu.signal.grants import ClaimGrants
from trio_sfu.tracks.subscriber import MigratedTransceiver


class MigratedParticipant(Protocol):
    """What the node a participant migrated from knew about it (the sync state), as the signal
    and media layers read it. `trio_sfu.cluster.node_relay.MigrationIn` implements it."""

    info: models.ParticipantInfo
    track_by_cid: dict[str, str]
    # Track ids it was subscribed to, and the choices its client made explicitly.
    subscriptions: list[str]
    explicit_subscriptions: dict[str, bool]
    # Its subscriber m-lines (mid, SSRC, rewrite state) and their kinds, by track id.
    transceivers: list[MigratedTransceiver]
    kinds: dict[str, MediaKind]
    # The subscriber PC's m-lines on the old node ((mid, kind, live) in order) and its next mid.
    layout: Optional[tuple[list[tuple[str, MediaKind, bool]], int]]
    # Publisher SSRC -> (mid, layer, is RTX), as the old node learned them.
    publisher_streams: dict[int, tuple[str, int, bool]]


class MediaParticipant(Protocol):
    """The participant as its media session sees it."""

    sid: str
    identity: str
    grants: ClaimGrants
    # Published tracks (sid -> info) and the client's cid for each.
    tracks: dict[str, models.TrackInfo]
    track_by_cid: dict[str, str]
    # The client's explicit subscription choices (track sid -> wanted) and latest track settings.
    subscriptions: dict[str, bool]
    track_settings: dict[str, rtc.UpdateTrackSettings]
    # Set when this participant migrated here from another node.
    migrated_in: Optional[MigratedParticipant]

    def send(self, response: rtc.SignalResponse) -> None:
        """Queue a response to this participant's client; never blocks."""

    def unpublish_track(self, track_sid: str) -> Optional[models.TrackInfo]:
        """The media layer saw the client stop sending a track: unpublish it in the room."""


@attrs.frozen
class MediaContext:
    """What the signal session gives a MediaSession when it creates it."""

    room_name: str
    # Unique per room instance: a room closed and opened again under its name is another room.
    room_sid: str
    participant: MediaParticipant
    # Whether the client asked to be subscribed to everything (`auto_subscribe`, default true).
    auto_subscribe: bool = True
    # LiveKit's `/rtc/v1`: one peer connection, offered by the client, carries both directions.
    single_peer_connection: bool = False

    @property
    def participant_sid(self) -> str:
        return self.participant.sid

    @property
    def identity(self) -> str:
        return self.participant.identity

    def send(self, response: rtc.SignalResponse) -> None:
        self.participant.send(response)


class MediaSession(Protocol):
    """Per-participant media: one publisher PC (the client offers) and one subscriber PC (we
    offer); or, in single peer connection mode, the one PC the client offers for both."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The session's tasks (transport timers, subscriptions), started in the participant's
        nursery once the WebSocket is up; it releases everything when it returns or is cancelled."""

    async def handle_publisher_offer(self, offer: rtc.SessionDescription) -> None:
        """A publisher-PC offer; answer with SignalResponse(answer=...) echoing `offer.id`."""

    async def handle_subscriber_answer(self, answer: rtc.SessionDescription) -> None:
        """The client's answer to a server-sent subscriber offer."""

    async def handle_trickle(self, candidate_init_json: str, target: int, final: bool) -> None:
        """A trickled ICE candidate (RTCIceCandidateInit as JSON) for SignalTarget `target`."""

    def subscriptions_changed(self) -> None:
        """`MediaParticipant.subscriptions` changed (UpdateSubscription)."""

    def track_settings_changed(self, track_sids: list[str]) -> None:
        """`MediaParticipant.track_settings` changed for these tracks."""

    def track_muted(self, track: models.TrackInfo) -> None:
        """One of the participant's tracks changed `muted` (the client or the Server API)."""

    def track_unpublished(self, track: models.TrackInfo) -> None:
        """The server unpublished one of the participant's tracks (a permission revoked)."""

    def deliver_data(self, packet: models.DataPacket, kind: int) -> None:
        """A server-originated DataPacket (the Server API's SendData) for the client on the
        RELIABLE or LOSSY channel; queued (bounded) until the data channel is open."""

    def resumable(self) -> bool:
        """Whether media is up without the signal connection (a peer connection is connected):
        a participant whose WebSocket dropped then waits for the client to resume."""

    def resumed(self) -> None:
        """The client resumed on a new signal connection: restart ICE on the subscriber PC."""

    def close(self) -> None:
        """The session ended: release transports now (idempotent; also done when `run` ends)."""


MediaSessionFactory = Callable[[MediaContext], MediaSession]


class UnavailableMediaSession:
    """A server without media: every media request gets a clear refusal; notifications are ignored."""

    REASON = "media transport not available on this server"

    def __init__(self, context: MediaContext) -> None:
        self.context = context

    def _refuse(self, request_id: int, **echo: object) -> None:
        self.context.send(
            rtc.SignalResponse(
                request_response=rtc.RequestResponse(
                    request_id=request_id,
                    reason=rtc.RequestResponse.Reason.UNSUPPORTED_TYPE,
                    message=self.REASON,
                    **echo,
                )
            )
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()

    async def handle_publisher_offer(self, offer: rtc.SessionDescription) -> None:
        self._refuse(offer.id)

    async def handle_subscriber_answer(self, answer: rtc.SessionDescription) -> None:
        self._refuse(answer.id)

    async def handle_trickle(self, candidate_init_json: str, target: int, final: bool) -> None:
        self._refuse(0, trickle=rtc.TrickleRequest(candidateInit=candidate_init_json, target=target, final=final))

    def subscriptions_changed(self) -> None:
        pass

    def track_settings_changed(self, track_sids: list[str]) -> None:
        pass

    def track_muted(self, track: models.TrackInfo) -> None:
        pass

    def track_unpublished(self, track: models.TrackInfo) -> None:
        pass

    def deliver_data(self, packet: models.DataPacket, kind: int) -> None:
        pass  # nowhere to deliver it: no data channels without media

    def resumable(self) -> bool:
        return False  # no media to outlive the signal connection

    def resumed(self) -> None:
        pass

    def close(self) -> None:
        pass
