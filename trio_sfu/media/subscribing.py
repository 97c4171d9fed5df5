"""What a participant receives: its subscriber PC's m-lines and down tracks, and the policy that fills them.

The participant's `SubscriptionManager` (trio_sfu.tracks) reconciles what the participant
should receive with what the room's TrackManager resolves; `ParticipantSubscriber` is the
subscriber endpoint it drives (m-lines bound through the transceiver cache, down tracks), with
LiveKit's behaviour around a down track's start and end. `SubscriberMedia` owns both and adds:

- the policy — every track in the room (auto-subscribe) or those the client asked for, minus its
  own, the withdrawn and those reported not found (`SE_TRACK_NOTFOUND`) until the client asks
  again — and each down track's layer: the client's track settings cap it (adaptive stream: the
  element's size, hidden = paused), the stream allocator shares the downlink estimate among the
  video tracks under those caps and pauses what does not fit (told as `stream_state_update`);
- m-lines held for a resume that can no longer come (the track is gone from the room) let go;
- the offer/answer exchange with the client: we offer on the subscriber PC and wait (bounded) for
  the answer to that offer; a late or unknown answer is counted and dropped. In single peer
  connection mode the client offers: we ask it to offer again (`media_sections_requirement`,
  with the number of m-lines tracks wait for) and wait (bounded) for our answer to its offer;
- the subscriber PC's RTCP to the down tracks, and the downlink RTCP they owe (`Timed`);
- the subscriber's downstream bandwidth estimate (trio_sfu.media.bandwidth), once the PC the
  down tracks go out on negotiated transport-wide sequence numbers (the subscriber PC's answer,
  or the one PC's offer with /rtc/v1): its feedback, its probes' timer, and each new estimate
  given to the allocator from that timer (as LiveKit's allocator: not a lower one while a probe
  is in flight; and none before the estimate is settled — its starting guess is no ceiling, every
  track keeps the layer its settings ask for until the initial probes measured the link); after
  each allocation, probes asked for while a track is held back, and the estimate's loss floor
  (what audio and the lowest layers need).
"""

from __future__ import annotations

from typing import Callable, Optional, Protocol, Sequence

import attrs
import trio
from livekit.protocol import models, rtc

from rtp import rtcp
from sdp.codecs import MediaKind
from sdp.errors import NegotiationError, SdpParseError
from sdp.model import SessionDescription
from sdp.negotiator import LocalParams
from sdp.parser import parse as parse_sdp
from sdp.parser import serialize as serialize_sdp

from trio_sfu import metrics as m
from trio_sfu.forwarding import DownTrack, PublishedLayer, select_target_layer
from trio_sfu.forwarding.allocator import StreamAllocator, StreamState
from trio_sfu.log import ContextLogger
from trio_sfu.media.bandwidth import SubscriberBandwidth, negotiated_transport_cc_id
from trio_sfu.media.room_media import RoomMedia
from trio_sfu.media.transport import ParticipantTransports, WakeBy
from trio_sfu.signal.media_port import MediaContext
from trio_sfu.tracks import Seam, TrackSource
from trio_sfu.tracks.subscriber import NoAnswerError, SubscriberEndpoint
from trio_sfu.tracks.subscription_manager import RECONCILE_ALL, SubscriptionManager


#: Where a finished down track's counters go in the server's metrics (trio_sfu.media.traffic).
DOWNTRACK_PREFIX = "media_downtrack"
#: The downstream estimate's changes are logged at most this often per participant.
ESTIMATE_LOG_INTERVAL = 2.0
#: Under an estimate, the allocator runs again at least this often (the layers' measured
#: bitrates change with no new estimate; the participant's timer loop wakes about this often).
REALLOCATE_INTERVAL = 1.0
#: A probe asks for this much more than the tracks' wants (audio included): the allocator raises
#: a track only with its headroom (15 %) to spare, and a probe measures at most the rate it was
#: sent at, often a little less (a result just short of the headroom would hold probing back for
#: its retry interval while the track stays low).
PROBE_GOAL_FACTOR = 1.5
#: Where a finished subscriber's stream allocator counters go (allocations, layer changes, pauses).
ALLOCATOR_PREFIX = "media_allocator"


class SubscriptionTimeouts(Protocol):
    """The knobs of subscribing, as the node's media service holds them (tests shorten them)."""

    # The subscription manager's periodic reconcile (triggers make most passes sooner).
    reconcile_interval: float
    # How long a wanted track may resolve to nothing before the client is told SE_TRACK_NOTFOUND.
    not_found_timeout: float
    # How long a subscriber offer may wait for the client's answer; then it is offered again.
    answer_timeout: float
    # Awaited at the subscription managers' interleaving points (a no-op outside race tests).
    seam: Seam


@attrs.define
class _PendingAnswer:
    """The subscriber offer waiting for its answer (one at a time: SubscriberEndpoint's lock)."""

    offer_id: int
    arrived: trio.Event = attrs.field(factory=trio.Event)
    answer: Optional[SessionDescription] = None
    error: str = ""


class ParticipantSubscriber(SubscriberEndpoint):
    """A participant's subscriber PC as its SubscriptionManager drives it: what the server adds
    to a plain endpoint is LiveKit's behaviour around a down track's start and end."""

    def __init__(self, owner: "SubscriberMedia", *, answered: Callable[[SessionDescription], None]) -> None:
        transports = owner.transports
        super().__init__(owner.sid, transports.sub_local, owner.exchange, transports.send_down,
                         send_rtcp=transports.send_subscriber_rtcp, answered=answered,
                         request_offer=owner.request_client_offer if transports.single_pc else None,
                         numbered=transports)
        self._owner = owner

    def target_layer(self, source: TrackSource) -> Optional[int]:
        return self._owner.target_layer(source)

    def down_track_starting(self, source: TrackSource, down: DownTrack, now: float) -> None:
        owner = self._owner
        if owner.publisher_muted(source):
            down.set_disabled(True, now)  # the unmute resumes it (PublisherMedia.track_muted)
        elif not owner.transports.subscriber_connected:
            # Nothing can reach the client yet: packets sent now would be lost and leave a gap
            # in its numbering (a resumed m-line must continue exactly). on_connected resumes it.
            down.set_disabled(True, now)

    def down_track_started(self, source: TrackSource, down: DownTrack, first_subscriber: bool, now: float) -> None:
        owner = self._owner
        if first_subscriber:
            # LiveKit tells the publisher when its track gets its first subscriber.
            publisher = owner.room_media.sessions.get(source.publisher_id)
            if publisher is not None:
                publisher.participant.send(rtc.SignalResponse(track_subscribed=rtc.TrackSubscribed(track_sid=source.track_id)))
        if not down.disabled:
            source.receiver.request_keyframe(down.target_layer, now)
        owner.wake_by(down.next_deadline())
        bandwidth = owner.bandwidth
        if bandwidth is not None and down.mime_type.startswith("video/"):
            bandwidth.video_track_added(now)  # probes pad beside video: an audio-only downlink waits for one
        # One more track shares the subscriber's downlink (and counts in its publisher's dynacast).
        owner.reallocate(now)

    def down_track_stopped(self, down: DownTrack) -> None:
        m.fold_counters(self._owner.metrics, DOWNTRACK_PREFIX, down.own_counters())


class SubscriberMedia:
    """One participant's receiving side: its subscriber endpoint, subscription manager and offers."""

    def __init__(self, context: MediaContext, room_media: RoomMedia, transports: ParticipantTransports,
                 timeouts: SubscriptionTimeouts, *, answered: Callable[[SessionDescription], None],
                 wallclock_offset: float, wake_by: WakeBy, metrics: m.Metrics, log: ContextLogger,
                 congestion_control: bool = False, allow_pause: bool = True) -> None:
        self.context = context
        # `rtc.congestion_control.enabled`: the estimate drives the allocator and asks for probes.
        self.congestion_control = congestion_control
        self.participant = context.participant
        self.sid = context.participant_sid
        self.room_media = room_media
        self.transports = transports
        self.wake_by = wake_by
        self.metrics = metrics
        self.log = log
        self._timeouts = timeouts
        self.closed = False
        # The subscriber PC's m-lines, down tracks and transceiver cache, driven by this
        # participant's SubscriptionManager on the room's tracks.
        self.endpoint = ParticipantSubscriber(self, answered=answered)
        self.manager = SubscriptionManager(
            self.endpoint, room_media.track_manager, report=self._subscription_failed,
            reconcile_interval=timeouts.reconcile_interval, not_found_timeout=timeouts.not_found_timeout,
            wallclock_offset=wallclock_offset, log=log, hook=self._subscription_seam)
        self._offer_id = 0
        self._pending_answer: Optional[_PendingAnswer] = None
        # Single-PC mode: answers to the client's offers so far, and the event the next one sets.
        self._client_answers = 0
        self._client_answer_sent = trio.Event()
        # Tracks reported not found: no longer wanted until the client asks again.
        self._given_up: set[str] = set()
        # The downstream estimate, once the subscriber PC is open with transport-cc negotiated.
        self.bandwidth: Optional[SubscriberBandwidth] = None
        self._estimate_logged_at = float("-inf")
        # A lower estimate that came while a probe was in flight, not yet given to the allocator.
        self._estimate_held = False
        # What the estimate was last asked to probe up to (0: nothing).
        self._probe_goal = 0
        # The downlink estimate shared among the video tracks (see set_available_bitrate), and
        # the stream state each track was last reported in (only PAUSED is ever news).
        self.allocator = StreamAllocator(allow_pause=allow_pause)
        self._stream_states: dict[str, StreamState] = {}
        self._allocated_at = float("-inf")

    async def run(self) -> None:
        """The first subscriber offer (with whatever is already published, and the data
        channel m-line), then the subscription manager's loop, for the participant's life."""
        try:
            if self.transports.single_pc:
                # The client's first offer (with its join, or right after) opens the one PC and
                # brings the m-lines the first subscriptions go on.
                with trio.move_on_after(self._timeouts.answer_timeout):
                    while not self._client_answers:
                        await self._client_answer_sent.wait()
            await self.manager.reconcile({RECONCILE_ALL})
            if not self.endpoint.offers and not self.endpoint.client_offers and not self.closed:
                try:
                    await self.endpoint.negotiate()
                except NegotiationError as exc:
                    self.log.warning("first subscriber offer failed", kv={"error": str(exc)})
            await self.manager.run()
        finally:
            self.manager.close()

    def down_tracks(self) -> list[DownTrack]:
        return [b.down for b in self.endpoint.bindings.values() if b.down is not None]

    # ---- offers and answers ------------------------------------------------------------------

    def restart_ice(self, local: LocalParams) -> None:
        """The next offer restarts ICE with `local`'s credentials; the manager negotiates it."""
        self.endpoint.offer.restart_ice(local)
        self.manager.trigger()

    async def exchange(self, offer: SessionDescription) -> SessionDescription:
        """One subscriber offer out, its answer back (SubscriberEndpoint's `Exchange`)."""
        # An offer under new credentials restarts ICE on the open PC as it goes out.
        self.transports.subscriber_offering(self.endpoint.offer.local)
        self._offer_id += 1
        pending = self._pending_answer = _PendingAnswer(self._offer_id)
        self.context.send(rtc.SignalResponse(offer=rtc.SessionDescription(
            type="offer", sdp=serialize_sdp(offer), id=pending.offer_id)))
        first = next((s for s in offer.media if not s.rejected), None)
        if pending.offer_id == 1 and first is not None and first.mid is not None:
            for trickle in self.transports.candidate_trickles(rtc.SignalTarget.SUBSCRIBER, first.mid):
                self.context.send(trickle)
        timeout = self._timeouts.answer_timeout
        try:
            with trio.move_on_after(timeout):
                await pending.arrived.wait()
        finally:
            if self._pending_answer is pending:
                self._pending_answer = None
        if pending.answer is not None:
            return pending.answer
        if pending.error:
            raise NegotiationError(pending.error)
        self.metrics.inc(m.MEDIA_ANSWER_TIMEOUT)
        raise NoAnswerError(f"no answer to subscriber offer {pending.offer_id} within {timeout:g} s")

    async def request_client_offer(self, audios: int, videos: int) -> None:
        """Single-PC mode (SubscriberEndpoint's `RequestOffer`): ask the client to offer again
        with `audios` and `videos` more receive-only m-lines, and wait for our answer to a
        client offer made after the request."""
        seen = self._client_answers
        if audios or videos:
            self.log.info("asking the client for more m-lines", kv={"audio": audios, "video": videos})
        self.context.send(rtc.SignalResponse(media_sections_requirement=rtc.MediaSectionsRequirement(
            num_audios=audios, num_videos=videos)))
        timeout = self._timeouts.answer_timeout
        with trio.move_on_after(timeout):
            while self._client_answers == seen and not self.closed:
                await self._client_answer_sent.wait()
        if self.closed:
            raise NegotiationError("the participant left")
        if self._client_answers == seen:
            self.metrics.inc(m.MEDIA_ANSWER_TIMEOUT)
            raise NoAnswerError(f"no client offer within {timeout:g} s of asking for one")

    def client_offer_answered(self) -> None:
        """Single-PC mode: our answer to a client offer went out (it presented the table)."""
        self.endpoint.client_answered()
        self._client_answers += 1
        self._client_answer_sent.set()
        self._client_answer_sent = trio.Event()

    def handle_answer(self, answer: rtc.SessionDescription) -> None:
        """Hand the answer to the offer waiting for it (the subscription manager's negotiation
        applies it); an answer nobody waits for, or to another offer, is counted and dropped."""
        pending = self._pending_answer
        if self.closed or pending is None or (answer.id and answer.id != pending.offer_id):
            self.metrics.inc(m.MEDIA_ANSWER_UNEXPECTED)
            self.log.warning("subscriber answer without a matching offer",
                             kv={"answer_id": answer.id, "offer_id": pending.offer_id if pending else None})
            return
        try:
            pending.answer = parse_sdp(answer.sdp)
        except SdpParseError as exc:
            self.metrics.inc(m.MEDIA_SDP_REJECTED)
            self.log.warning("SDP refused", kv={"what": "subscriber answer", "error": str(exc)})
            pending.error = f"unparsable answer: {exc}"
        pending.arrived.set()

    # ---- what the participant should receive ---------------------------------------------------

    def _wants(self, track_id: str) -> bool:
        participant = self.participant
        if track_id in self._given_up or track_id in self.room_media.withdrawn or track_id in participant.tracks:
            return False
        sources = self.room_media.track_manager.sources(track_id)
        if sources and sources[0].publisher_id == self.sid:
            return False
        grants = participant.grants.video
        if grants is not None and not grants.may_subscribe:
            return False
        explicit = participant.subscriptions.get(track_id)
        if explicit is not None:
            return explicit
        return self.context.auto_subscribe and bool(sources)

    def update_desired(self) -> None:
        """Tell the subscription manager what this participant should receive now: every track
        in the room (auto-subscribe) or those it asked for, minus its own, the withdrawn and
        the given up. The manager binds, negotiates and retries on its own task."""
        if self.closed:
            return
        manager = self.manager
        self._let_go_of_lines_held_in_vain()
        ids = dict.fromkeys(self.room_media.track_manager.track_ids())
        ids.update(dict.fromkeys(self.participant.subscriptions))
        ids.update(dict.fromkeys(manager.subscriptions))
        for track_id in ids:
            want = self._wants(track_id)
            current = manager.subscriptions.get(track_id)
            if want != (current is not None and current.desired):
                manager.set_desired(track_id, want)

    def _let_go_of_lines_held_in_vain(self) -> None:
        """An m-line cached for a track expected back is held: offers keep presenting the track
        as the client last saw it. Once nothing of the track is left — no source here, withdrawn
        or no longer listed by any participant of the room, so the client was told it is gone —
        no resume is coming, and the m-line must not keep offering a track the client no longer
        has: it is let go, and a pass offers it idle."""
        room = self.room_media
        released = False
        for track_id in list(self.endpoint.cached_track_ids):
            if track_id not in room.withdrawn and (room.track_manager.sources(track_id) or room.listed(track_id)):
                continue
            released |= self.endpoint.forget_cached(track_id)
            self.log.debug("held m-line let go", kv={"track": track_id})
        if released:
            self.manager.trigger()

    async def _subscription_seam(self, seam: str, track_id: str) -> None:
        await self._timeouts.seam(f"sub.{seam}", {"participant": self.sid, "track": track_id})

    def subscriptions_changed(self) -> None:
        # A new request re-arms tracks given up on (the request does not say which sids it named).
        self._given_up.clear()
        self.update_desired()

    def _subscription_failed(self, track_id: str, error: int) -> None:
        """The manager gave a subscription up: tell the client, as LiveKit does."""
        self.metrics.inc(m.MEDIA_SUBSCRIPTION_FAILED)
        self._given_up.add(track_id)
        self.context.send(rtc.SignalResponse(subscription_response=rtc.SubscriptionResponse(
            track_sid=track_id, err=error)))  # type: ignore[arg-type]

    # ---- layers and mutes --------------------------------------------------------------------

    def track_settings_changed(self, track_sids: list[str]) -> None:
        """New caps for these tracks: the allocator shares the estimate again under them."""
        self.reallocate(trio.current_time())

    def set_available_bitrate(self, bps: int, now: float) -> None:
        """The subscriber's downlink estimate in bits per second, from the send-side bandwidth
        estimator of its transport (the narrow input the allocator needs; until the first call
        every track gets the layer its track settings ask for, as before there was one)."""
        allocator = self.allocator
        before = allocator.budget
        allocator.set_available_bitrate(bps, now)
        if allocator.budget != before:  # inside the dead band nothing can change: no pass
            self.reallocate(now)

    def reallocate(self, now: float) -> None:
        """Give every down track its layer: the allocator's share of the estimate under the cap
        its track settings set; tracks the allocator pauses or resumes are reported to the client."""
        if self.closed:
            return
        self._allocated_at = now
        allocator = self.allocator
        video: dict[str, tuple[TrackSource, DownTrack]] = {}
        audio = 0
        for track_id, binding in self.endpoint.bindings.items():
            down = binding.down
            if down is None:
                continue
            if binding.source.kind is MediaKind.VIDEO:
                video[track_id] = (binding.source, down)
            else:
                audio += 1
        for track_id in allocator.track_ids:
            if track_id not in video:
                allocator.remove_track(track_id)
                self._stream_states.pop(track_id, None)
        for track_id, (source, _) in video.items():
            info = self.room_media.track_info(source)
            # A muted track sends nothing and takes no share (PublisherMedia.track_muted reallocates).
            allocator.set_track(track_id, bitrates=self._layer_bitrates(source, info),
                                cap=None if self.publisher_muted(source) else self.requested_layer(source),
                                screen_share=info is not None and info.source == models.TrackSource.SCREEN_SHARE,
                                priority=self._priority(track_id),
                                temporal_bitrates=source.receiver.layer_temporal_bitrates())
        allocator.set_audio_tracks(audio)
        changed = allocator.allocate(now)
        for track_id, allocation in changed.items():
            # Not per packet: an allocation changes at most at an estimate or a track's change.
            self.log.info("allocation changed", kv={
                "track": track_id, "layer": allocation.layer, "temporal": allocation.temporal,
                "state": allocation.state.value,
                "budget": allocator.budget, "bitrates": allocator.bitrates(track_id),
                "temporal_bitrates": allocator.temporal_bitrates(track_id)})
        states: list[rtc.StreamStateInfo] = []
        for track_id, (source, down) in video.items():
            allocation = allocator.allocation(track_id)
            if allocation is None:
                continue
            down.set_subscribed_max_layer(self.requested_layer(source))
            if down.target_layer != allocation.layer:
                down.set_target_layer(allocation.layer, now)
                if self.publisher_muted(source):
                    down.set_disabled(True, now)  # a new layer choice does not unmute
            down.set_target_temporal(allocation.temporal)
            was = self._stream_states.get(track_id, StreamState.ACTIVE)
            if allocation.state is not was:
                self._stream_states[track_id] = allocation.state
                states.append(rtc.StreamStateInfo(
                    participant_sid=source.publisher_id, track_sid=track_id,
                    state=rtc.StreamState.PAUSED if allocation.state is StreamState.PAUSED else rtc.StreamState.ACTIVE))
        for track_id, binding in self.endpoint.bindings.items():
            down = binding.down
            if down is None or track_id in video:
                continue
            # Audio (and anything not video) takes no share: only the subscriber's settings count.
            layer = self.requested_layer(binding.source)
            if down.target_layer != layer:
                down.set_target_layer(layer, now)
                if self.publisher_muted(binding.source):
                    down.set_disabled(True, now)
        if states:
            self.metrics.inc(m.MEDIA_STREAM_STATE_UPDATES, len(states))
            self.context.send(rtc.SignalResponse(stream_state_update=rtc.StreamStateUpdate(stream_states=states)))
        if self.bandwidth is not None:
            # Loss alone never takes the estimate below what audio and the lowest layers need.
            self.bandwidth.estimator.loss_floor_bps = allocator.floor_bps()
        self._update_probe(now)
        self.wake_by(allocator.next_deadline())

    def _update_probe(self, now: float) -> None:
        """Probe for more while a track is held below what it wants (a deficit), as LiveKit's
        allocator does, up to what all of them want; stop (0) once nothing is held back.
        Before the allocator has an estimate, the tracks' wants above the estimator's own
        starting figure are the deficit (so the estimate ramps up from the start)."""
        bandwidth = self.bandwidth
        if bandwidth is None or not self.congestion_control:
            return
        allocator = self.allocator
        wanted = allocator.wanted_bps()
        if allocator.budget is None:
            deficit = wanted > bandwidth.estimate_bps
        else:
            deficit = allocator.deficient
        goal = int(wanted * PROBE_GOAL_FACTOR) if deficit else 0
        if goal != self._probe_goal:
            self._probe_goal = goal
            bandwidth.request_probe(goal, now)

    def _priority(self, track_id: str) -> int:
        """The priority the subscriber gave the track (UpdateTrackSettings.priority; 0: none)."""
        settings = self.participant.track_settings.get(track_id)
        return settings.priority if settings is not None else 0

    def _layer_bitrates(self, source: TrackSource, info: Optional[models.TrackInfo]) -> dict[int, int]:
        """Each layer's bitrate: the larger of what arrives (the receiver measures it per RR
        interval) and what the publisher announced (its encoder's ceiling) — never less than the
        layer may take, so a layer just restarted (measured low) does not look cheap — else 0
        (the allocator assumes a typical figure)."""
        announced = {lay.quality: lay.bitrate for lay in (info.layers if info is not None else [])}
        receiver = source.receiver
        measured = receiver.layer_bitrates()
        if not receiver.simulcast:
            # One layer: the best announced figure describes it.
            return {0: max(measured.get(0, 0), *announced.values(), 0)} if 0 in receiver.layers else {}
        return {layer: max(measured.get(layer, 0), announced.get(layer, 0)) for layer in receiver.layers}

    def target_layer(self, track: TrackSource) -> Optional[int]:
        """The layer a new down track starts on: the allocator's share once it has one."""
        allocation = self.allocator.allocation(track.track_id)
        if allocation is not None and self.allocator.budget is not None:
            return allocation.layer
        return self.requested_layer(track)

    def requested_layer(self, track: TrackSource) -> Optional[int]:
        """The layer this subscriber asks for (None = paused), from its UpdateTrackSettings."""
        settings = self.participant.track_settings.get(track.track_id)
        layers = track.receiver.layers
        if settings is None:
            return max(layers)
        if settings.disabled or settings.quality == models.VideoQuality.OFF:
            return None
        if not track.receiver.simulcast:
            return 0
        info = self.room_media.track_info(track)  # a track relayed from another node too
        published = [PublishedLayer(lay.quality, lay.width, lay.height) for lay in (info.layers if info else [])]
        if not published:
            # Sizes unknown (the publisher's node has not described the track yet): by quality.
            published = [PublishedLayer(layer) for layer in layers]
        target = select_target_layer(published, width=settings.width, height=settings.height,
                                     quality=settings.quality)
        return target if target is None or target in layers else max(layers)

    def publisher_muted(self, track: TrackSource) -> bool:
        info = self._track_info(track)
        return info is not None and info.muted

    def _track_info(self, track: TrackSource) -> Optional[models.TrackInfo]:
        publisher = self.room_media.sessions.get(track.publisher_id)
        return publisher.participant.tracks.get(track.track_id) if publisher is not None else None

    # ---- the subscriber PC (its transport endpoint calls these) ------------------------------

    def on_rtcp(self, packets: Sequence[rtcp.RtcpPacket], now: float) -> None:
        """The client's RTCP on the subscriber PC (NACK, PLI, receiver reports) to every down
        track; transport-cc feedback and REMB to the bandwidth estimate."""
        for down in self.down_tracks():
            down.handle_rtcp(packets, now)
        if self.bandwidth is not None:
            self.bandwidth.on_rtcp(packets, now)

    def start_bandwidth_estimation(self, description: SessionDescription) -> Optional[SubscriberBandwidth]:
        """Once the PC the down tracks go out on is open: if its negotiation kept transport-wide
        sequence numbers, every packet we send on it is stamped from now on and the client's
        feedback estimated. Two PCs: the client's answer to our subscriber offer; one PC
        (/rtc/v1): our answer to the client's offer (BUNDLE gives the extension one id on the
        PC, the one the client chose; what it sends us keeps being recorded under the same id
        by the PC's receive side, rtp.twcc, which is independent of this send side)."""
        subscriber = self.transports.downlink
        if self.bandwidth is not None or subscriber is None:
            return self.bandwidth
        ext_id = negotiated_transport_cc_id(description)
        if ext_id is None:
            return None
        self.bandwidth = SubscriberBandwidth(ext_id, self.down_tracks, metrics=self.metrics, wake_by=self.wake_by)
        self.bandwidth.on_estimate_changed = self._estimate_changed
        self.bandwidth.on_playout_delay_changed = self._playout_delay_changed
        subscriber.stamper = self.bandwidth
        self._probe_goal = 0
        self._update_probe(trio.current_time())
        return self.bandwidth

    def _playout_delay_changed(self, min_ms: int, now: float) -> None:
        bandwidth = self.bandwidth
        share = bandwidth.playout.last_share if bandwidth is not None else None
        self.log.info("playout delay floor", kv={"min_ms": min_ms, "step_loss": None if share is None else round(share, 3)})

    def _estimate_changed(self, bps: int, now: float) -> None:
        """The estimate moved (called from the participant's timer, never per packet): the
        stream allocator shares it, and it is logged at most every `ESTIMATE_LOG_INTERVAL` (a
        per-participant value belongs in the log, not in a metric label)."""
        if self.congestion_control:
            self._take_estimate(bps, now)
        if now - self._estimate_logged_at < ESTIMATE_LOG_INTERVAL:
            return
        self._estimate_logged_at = now
        self._log_bandwidth("downstream estimate")

    def _take_estimate(self, bps: int, now: float) -> None:
        """Give the estimate to the allocator — unless it is lower than what the allocator has
        while a probe is in flight: the probe's padding queues at the bottleneck on purpose, so
        (as LiveKit's allocator) a fall then is held until the probe is done, and the estimate
        as it stands then is taken (`handle_timeout`)."""
        bandwidth = self.bandwidth
        available = self.allocator.available
        if bandwidth is not None and not bandwidth.settled:
            # The estimator's starting guess, not a measurement: no ceiling yet (every track
            # keeps the layer its settings ask for); its initial probes are what settles it.
            self._update_probe(now)
            return
        if bandwidth is not None and bandwidth.probe_in_flight and available is not None and bps < available:
            self._estimate_held = True
            self.metrics.inc(m.MEDIA_BWE_ESTIMATES_HELD_IN_PROBE)
            return
        self._estimate_held = False
        self.metrics.inc(m.MEDIA_BWE_ESTIMATES_APPLIED)
        self.set_available_bitrate(bps, now)
        self._update_probe(now)  # set_available_bitrate reallocates only outside the dead band

    def _log_bandwidth(self, what: str) -> None:
        bandwidth = self.bandwidth
        if bandwidth is None:
            return
        counters = bandwidth.estimator.counters
        self.log.info(what, kv={"bps": bandwidth.estimate_bps, "feedback": counters.feedback_packets,
                                "acked": counters.packets_acked, "lost": counters.packets_lost,
                                "recovered": counters.packets_recovered,
                                "remb": counters.remb_received, "probes": counters.probe_clusters,
                                "probe_results": counters.probe_results,
                                "delay_based": int(bandwidth.estimator.delay_based_bps),
                                "loss_based": int(bandwidth.estimator.loss_based_bps),
                                "loss": round(bandwidth.estimator.loss_fraction, 3),
                                "loss_cuts": bandwidth.estimator.loss_cuts,
                                "overuse": counters.overuse_signals, "overuse_ignored": counters.overuse_ignored,
                                "stamped": bandwidth.sequencer.packets_stamped})

    def on_connected(self, now: float) -> None:
        """The subscriber PC is up: down tracks held until now resume (at a keyframe)."""
        for binding in self.endpoint.bindings.values():
            down = binding.down
            if down is None or down.target_layer is None or self.publisher_muted(binding.source):
                continue  # paused by the subscriber or muted by the publisher: stays quiet
            if down.disabled:
                down.set_disabled(False, now)  # held until now; asks for a keyframe itself
            else:
                binding.source.receiver.request_keyframe(down.target_layer, now)

    # ---- Timed (trio_sfu.media.timers): downlink RTCP we owe (sender reports...) ------------------

    def next_deadline(self) -> Optional[float]:
        deadline = self.allocator.next_deadline()  # a held upgrade
        if self.bandwidth is not None:
            bwe_due = self.bandwidth.next_deadline()
            if bwe_due is not None and (deadline is None or bwe_due < deadline):
                deadline = bwe_due
        for down in self.down_tracks():
            t = down.next_deadline()
            if t is not None and (deadline is None or t < deadline):
                deadline = t
        return deadline

    def handle_timeout(self, now: float) -> None:
        bandwidth = self.bandwidth
        if bandwidth is not None:
            bandwidth.handle_timeout(now)  # the estimate's changes reach _estimate_changed
            if self._estimate_held and not bandwidth.probe_in_flight:
                self._take_estimate(bandwidth.estimate_bps, now)  # the probe is over
            elif self.congestion_control and bandwidth.settled and self.allocator.available is None:
                self._take_estimate(bandwidth.estimate_bps, now)  # the first estimate that counts
        downs = self.down_tracks()
        # One report due brings the others due within half an interval along (DownTrack.poll_rtcp):
        # the subscriber's reports fall onto one timer wake-up rather than one per down track.
        coalesce = len(downs) > 1 and any(down.sender_report_due(now) for down in downs)
        for down in downs:
            down.poll_rtcp(now, coalesce)
        due = self.allocator.next_deadline()
        if (due is not None and due <= now) or (
                self.allocator.budget is not None and now - self._allocated_at >= REALLOCATE_INTERVAL):
            # A held upgrade is due, or the layers' measured bitrates may have moved.
            self.reallocate(now)

    def close(self) -> None:
        """Every down track leaves its source (no resume); an offer waiting for its answer ends."""
        if not self.closed:
            m.fold_counters(self.metrics, ALLOCATOR_PREFIX, self.allocator.counters)
        self.closed = True
        self._log_bandwidth("downstream bandwidth at close")
        if self.bandwidth is not None:
            self.metrics.inc(m.MEDIA_TWCC_UNSTAMPABLE, self.bandwidth.sequencer.unstampable)
        self.manager.close()
        pending, self._pending_answer = self._pending_answer, None
        if pending is not None:
            pending.error = "the participant left"
            pending.arrived.set()
        self._client_answer_sent.set()


__all__ = ["ParticipantSubscriber", "SubscriberMedia", "SubscriptionTimeouts"]
