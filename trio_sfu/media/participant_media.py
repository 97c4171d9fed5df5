"""ParticipantMedia: one participant's media session, composed of one part per idea.

The signal session (trio_sfu.signal.participant) creates it through the media service, starts
its `run` in the participant's nursery and calls it through the `MediaSession` seam
(trio_sfu.signal.media_port). It owns, and wires together:

- `transports` (trio_sfu.media.transport): ICE credentials and the publisher and subscriber
  peer connections on the node's UDP mux, each one `PeerSession` (ICE, DTLS, SRTP, the data
  channels' SCTP association, transport-wide CC feedback);
- `publishing` (trio_sfu.media.publishing): what the client publishes — offers answered, packets
  matched to tracks, tracks published in the room, moderation;
- `subscribing` (trio_sfu.media.subscribing): what the client receives — the subscription
  manager, the subscriber offers, layers and mutes;
- `data` (trio_sfu.media.data_channels): LiveKit's data channels on both peer connections'
  associations;
- `timers` (trio_sfu.media.timers): one task sleeping until the earliest deadline of the parts —
  the sessions' (all their protocol timers), the receivers' (NACKs, receiver reports) and the
  down tracks' (sender reports).

Its life: `run` joins the room's media, starts the subscription manager in its own nursery and
serves the timer loop itself, until the participant's scope ends; `close` (idempotent, also
run on the way out) unpublishes the participant's tracks (or hands them over when it is moving
to another node), detaches its down tracks from their sources, closes and unregisters both peer
connections, and leaves the room once.

The media hot path does not pass through here: the mux's reader calls the publisher endpoint,
which calls `PublisherMedia.on_rtp`, whose track receiver calls each subscriber's `DownTrack`,
which sends through that subscriber's endpoint — plain calls, no task switch.
"""

from __future__ import annotations

import time
from typing import Optional, Protocol, Sequence

import trio
from livekit.protocol import models, rtc
from rtp import rtcp
from sdp.model import SessionDescription
from sdp.negotiator import SubscriberOffer
from sdp.parser import serialize as serialize_sdp

from trio_sfu import metrics as m
from trio_sfu.log import get_logger
from trio_sfu.media.data_channels import DataKind, ParticipantData, remote_sctp_params
from trio_sfu.media.handoff import MigrationSync, begin_migration, migrated_streams, restore_subscriber_lines
from trio_sfu.media.publishing import PublisherMedia
from trio_sfu.media.room_media import PublishedTrack, RelayHooks, RoomMedia
from trio_sfu.media.subscribing import SubscriberMedia, SubscriptionTimeouts
from trio_sfu.media.timers import TimerLoop
from trio_sfu.media.transport import ParticipantTransports, TransportService
from trio_sfu.signal.codec import SignalDecodeError, decode_candidate_init
from trio_sfu.signal.media_port import MediaContext
from trio_sfu.tracks.subscriber import Binding

#: The timer loop wakes at least this often: receiver and sender reports are due about once a second.
REPORT_INTERVAL = 1.0

_log = get_logger("trio_sfu.media")


class ParticipantMediaService(TransportService, SubscriptionTimeouts, Protocol):
    """What a participant's media needs of the node's media service (trio_sfu.media.service)."""

    metrics: m.Metrics
    relay: Optional[RelayHooks]
    # How long a lower subscribed quality waits before a publisher hears it; None: no dynacast.
    dynacast_pause_delay: Optional[float]
    # Whether subscribers' downlink estimates drive their stream allocators.
    congestion_control: bool
    # Whether their allocators may pause a track whose lowest layer does not fit.
    allow_pause: bool

    def room_media(self, name: str, sid: str) -> RoomMedia:
        """The media of room `sid`, created on first use."""


class ParticipantMedia:
    """One participant's media session (a `MediaSession`, and its room's `RoomMember`)."""

    def __init__(self, service: ParticipantMediaService, context: MediaContext) -> None:
        self.service = service
        self.context = context
        self.metrics = service.metrics
        self.participant = context.participant
        self.sid = context.participant_sid
        self.log = _log.bind(room=context.room_name, participant=context.participant_sid)
        self.room_media = service.room_media(context.room_name, context.room_sid)
        self.closed = False
        # Set when this participant moves to another node: its tracks are handed over at close.
        self.migrating = False

        self.timers = TimerLoop(at_least_every=REPORT_INTERVAL)
        wake_by = self.timers.wake_by
        self.transports = ParticipantTransports(service, wake_by=wake_by, metrics=self.metrics, log=self.log,
                                                single_pc=context.single_peer_connection)
        migrated = self.participant.migrated_in
        self.publishing = PublisherMedia(self.sid, self.participant, self.room_media, self.transports,
                                         migrated_streams=migrated_streams(migrated), wake_by=wake_by,
                                         metrics=self.metrics, log=self.log,
                                         dynacast_pause_delay=service.dynacast_pause_delay)
        self.subscribing = SubscriberMedia(context, self.room_media, self.transports, service,
                                           answered=self._subscriber_answered,
                                           # trio's clock + this = Unix time, for the down tracks' SR wall clock.
                                           wallclock_offset=time.time() - trio.current_time(),
                                           wake_by=wake_by, metrics=self.metrics, log=self.log,
                                           congestion_control=service.congestion_control,
                                           allow_pause=service.allow_pause)
        self.data = ParticipantData(sid=self.sid, identity=self.participant.identity,
                                    may_publish_data=self._may_publish_data, peers=self._data_peers,
                                    metrics=self.metrics, log=self.log, other_nodes=self._data_to_other_nodes)
        if migrated is not None:
            # Its m-lines as the old node had them (same mids, SSRCs and rewrite state), waiting
            # in the cache for its subscriptions.
            restore_subscriber_lines(self.subscribing.endpoint, migrated, self.log)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The session's life, in the participant's nursery: it joins the room's media, then
        runs its timers and its subscription manager until cancelled, and closes on the way out."""
        if self.closed:
            # Closed between its creation and this task's start: joining now would leave a
            # closed member in the room's media for good.
            task_status.started()
            return
        try:
            self.room_media.join(self)
            self.update_desired()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.subscribing.run)
                # Its ICE-TCP connections, once identified, run here: they end with its media.
                nursery.start_soon(self.transports.run_tcp_paths)
                task_status.started()
                # The timers run in this task, the nursery's body, rather than in a child of
                # their own: one task less per participant, and the same lifetime (a failure
                # of either cancels the other, and cancelling the participant ends both).
                # The order each wake-up serves them in: the peer sessions' protocol timers
                # (ICE, DTLS, SCTP, transport-cc feedback), then the RTCP the forwarding
                # objects owe.
                # Last, the room's reports (speakers, connection quality), which every member's
                # loop serves and the first one past their time makes; only the room's
                # timekeeper's loop is woken for their times (room_reports.ReportsTimer).
                reports = self.room_media.reports.timer(self.timers.wake_by)
                try:
                    await self.timers.run((self.transports, self.publishing, self.subscribing, reports))
                finally:
                    reports.close()
        finally:
            self.close()

    def close(self) -> None:
        """Unpublish, unsubscribe, close and unregister both transports, leave the room (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self.data.close()
        room = self.room_media
        room.leave(self)
        relay = self.service.relay
        if self.migrating and relay is not None:
            # Moving to another node: the tracks stay until their new source appears there.
            def hand_over(tracks: list[PublishedTrack]) -> list[PublishedTrack]:
                return relay.hand_over(room, tracks, self.sid)

            self.publishing.close(hand_over)
        else:
            self.publishing.close()
        self.subscribing.close()  # every down track leaves its source, no resume
        self.transports.close(trio.current_time())
        # Left above while its tracks were still published; once they are gone the room may be idle.
        room.forget_if_idle()

    # ---- RoomMember ----------------------------------------------------------------------------

    @property
    def subscriptions(self) -> dict[str, Binding]:
        """Track id -> its binding on the subscriber PC (`.down` once forwarding)."""
        return self.subscribing.endpoint.bindings

    @property
    def sub_offer(self) -> SubscriberOffer:
        """The subscriber PC's offer/answer state and m-line table."""
        return self.subscribing.endpoint.offer

    def published_tracks(self) -> list[PublishedTrack]:
        return list(dict.fromkeys(self.publishing.tracks_by_mid.values()))

    def update_desired(self) -> None:
        if not self.closed:
            self.subscribing.update_desired()

    def reallocate(self, now: float) -> None:
        if not self.closed:
            self.subscribing.reallocate(now)

    def _may_publish_data(self) -> bool:
        video = self.participant.grants.video
        return video is None or video.may_publish_data

    def _data_to_other_nodes(self, kind: DataKind, payload: bytes) -> None:
        relay = self.service.relay
        if relay is not None:
            relay.data_published(self.room_media, int(kind), payload)

    def _data_peers(self) -> list[ParticipantData]:
        return [member.data for member in list(self.room_media.sessions.values())]

    # ---- MediaSession: signalling ---------------------------------------------------------------

    async def handle_publisher_offer(self, offer: rtc.SessionDescription) -> None:
        if self.closed:
            return
        publishing = self.publishing
        subscribing = self.subscribing
        single_pc = self.transports.single_pc
        endpoint = subscribing.endpoint
        answer = publishing.answer_offer(offer.sdp, endpoint.client_offered if single_pc else None)
        if answer is None:
            return
        if answer.ice_restart is not None:
            # The client restarted ICE (after a resume, or a network change): the open publisher
            # PC takes both sides' new credentials; DTLS and the published tracks carry on.
            self.transports.restart_publisher(answer.ice_restart, (answer.remote_ufrag, answer.remote_pwd))
        if single_pc:
            # One PC both ways: the client's RTCP concerns what it sends and what it receives.
            publisher = self.transports.open_publisher(
                answer.dtls_role, answer.remote_ufrag, answer.remote_pwd, answer.remote_fingerprints,
                on_rtp=publishing.on_rtp, on_rtcp=self._single_pc_rtcp, on_connected=subscribing.on_connected)
        else:
            publisher = self.transports.open_publisher(
                answer.dtls_role, answer.remote_ufrag, answer.remote_pwd, answer.remote_fingerprints,
                on_rtp=publishing.on_rtp, on_rtcp=publishing.on_rtcp)
        publishing.apply(answer.media)
        publisher.session.set_transport_cc_extension(publishing.transport_cc_extension)
        if single_pc:
            # The down tracks go out on this PC: their downstream estimate starts with the first
            # offer that negotiates transport-wide sequence numbers.
            subscribing.start_bandwidth_estimation(answer.answer)
        publisher.open_data(self.data, answer.sctp, client_channels=single_pc)
        self.context.send(rtc.SignalResponse(answer=rtc.SessionDescription(
            type="answer", sdp=serialize_sdp(answer.answer), id=offer.id,
            mid_to_track_id=endpoint.mid_to_track_id() if single_pc else {})))
        if single_pc:
            subscribing.client_offer_answered()
        if answer.first_mid is not None:
            for trickle in self.transports.candidate_trickles(rtc.SignalTarget.PUBLISHER, answer.first_mid):
                self.context.send(trickle)

    def _single_pc_rtcp(self, packets: Sequence[rtcp.RtcpPacket], now: float) -> None:
        self.publishing.on_rtcp(packets, now)
        self.subscribing.on_rtcp(packets, now)

    async def handle_subscriber_answer(self, answer: rtc.SessionDescription) -> None:
        self.subscribing.handle_answer(answer)

    def _subscriber_answered(self, answer: SessionDescription) -> None:
        """The first applied answer fixes the subscriber PC's ICE and DTLS peer: start it."""
        offer = self.subscribing.endpoint.offer
        if self.closed or offer.dtls_role is None:
            return
        subscribing = self.subscribing
        if self.transports.subscriber is not None:
            # An answer on an open PC: after our ICE-restart offer it names the client's new credentials.
            self.transports.subscriber.follow_remote_credentials(
                (offer.remote_ice_ufrag or "", offer.remote_ice_pwd or ""))
        subscriber = self.transports.open_subscriber(
            offer.dtls_role, offer.remote_ice_ufrag or "", offer.remote_ice_pwd or "", offer.remote_fingerprints,
            on_rtcp=subscribing.on_rtcp, on_connected=subscribing.on_connected)
        subscribing.start_bandwidth_estimation(answer)
        subscriber.open_data(self.data, remote_sctp_params(answer), downlink=True)

    async def handle_trickle(self, candidate_init_json: str, target: int, final: bool) -> None:
        # ICE-lite learns the peer's addresses from its checks; candidates are only validated.
        if not candidate_init_json:
            return
        try:
            decode_candidate_init(candidate_init_json)
        except SignalDecodeError:
            self.metrics.inc(m.MEDIA_TRICKLE_MALFORMED)

    # ---- MediaSession: the signal connection came back ------------------------------------------

    def resumable(self) -> bool:
        """A peer connection is up and none is dead: media goes on without the signal connection,
        so the participant may resume on a new one (LiveKit closes at once when none is up)."""
        return not self.closed and self.transports.resumable

    def resumed(self) -> None:
        """The client resumed on a new signal connection: as LiveKit on every resume, the next
        subscriber offer restarts ICE (new credentials; the client restarts its side with its
        answer). Nothing to restart before the subscriber PC was first answered."""
        if self.closed or self.transports.subscriber is None:
            return
        self.subscribing.restart_ice(self.transports.new_subscriber_credentials())

    # ---- MediaSession: what changed on the signal side ------------------------------------------

    def subscriptions_changed(self) -> None:
        self.subscribing.subscriptions_changed()

    def track_settings_changed(self, track_sids: list[str]) -> None:
        self.subscribing.track_settings_changed(track_sids)

    def track_muted(self, track: models.TrackInfo) -> None:
        self.publishing.track_muted(track)

    def track_unpublished(self, track: models.TrackInfo) -> None:
        self.publishing.track_unpublished(track)

    def deliver_data(self, packet: models.DataPacket, kind: int) -> None:
        self.data.deliver(packet, kind, trio.current_time())

    # ---- moving between nodes ------------------------------------------------------------------

    def begin_migration(self) -> MigrationSync:
        """This participant moves to another node: every subscription lets its source go
        expecting a resume (m-line and rewrite state cached by track id), the subscription
        manager stops, and what the new node needs is returned. The published tracks stay."""
        self.migrating = True
        return begin_migration(self.subscribing, self.publishing)

    def restart_published_track(self, track_sid: str) -> bool:
        """Hand one of the participant's tracks over to a new source (a migration hand-back): see
        PublisherMedia.restart."""
        return self.publishing.restart(track_sid)


__all__ = ["REPORT_INTERVAL", "ParticipantMedia", "ParticipantMediaService"]
