"""SubscriberEndpoint: one participant's subscriber PC as the subscription manager drives it.

It owns the m-line table (sdp.transceivers) and the down tracks, and is the `TrackSubscriber`
that sources detach. The transceiver cache is keyed by track id and holds two halves that
always move together: the table's `CachedTransceiver` (mid, SSRCs, payload types) and the
down track's `DownTrackSnapshot` (rewrite state). A later subscription to the same track id —
through whichever source — takes both, so the client sees the same m-line and SSRC and
continuous sequence numbers and timestamps, with no new m-line to negotiate.

Negotiation is injected (`Exchange`: offer in, answer out, awaited), so the same endpoint runs
behind a real signal session or an in-memory test client.

Single peer connection mode (LiveKit's `/rtc/v1`, `request_offer` given): the client offers the
one peer connection and the server answers, so the m-lines are the client's receive-only ones
(`client_offered` takes each offer, `client_answered` records what the answer presented). A
negotiation then is asking the client to offer again — with as many new m-lines as tracks wait
for one — and waiting for the answer to that offer (`RequestOffer`).
"""

from __future__ import annotations

from typing import Awaitable, Callable, Optional

import attrs
import trio

from sdp.codecs import EXT_PLAYOUT_DELAY, MediaKind, subscriber_codecs
from sdp.errors import NegotiationError, TransceiverInvariantError
from sdp.model import SessionDescription
from sdp.negotiator import LocalParams, OutgoingTrack, SubscriberOffer, offered_receive_lines
from sdp.transceivers import UNPLACED_MID_PREFIX, CachedTransceiver, TransceiverState, TransceiverTable
from trio_sfu.forwarding import DownTrack, NumberedDownlink, map_payload_types
from trio_sfu.forwarding.downtrack import DownTrackSnapshot

from trio_sfu.tracks.source import TrackSource

Exchange = Callable[[SessionDescription], Awaitable[SessionDescription]]
Detached = Callable[[str, TrackSource, bool], None]
Answered = Callable[[SessionDescription], None]
#: Tracks whose m-line the client stopped (single-PC mode: seen in its own offer).
Refused = Callable[[list[str]], None]
#: Single-PC mode: ask the client for a new offer with this many more audio and video m-lines;
#: returns once an answer to a later client offer went out, raises NoAnswerError after a timeout.
RequestOffer = Callable[[int, int], Awaitable[None]]

#: Single-PC mode: offers asked for in one negotiation before giving up on unplaced m-lines.
MAX_OFFER_REQUESTS = 3


class NoCommonCodecError(Exception):
    """The subscriber's m-line negotiated no codec the source publishes (permanent)."""


class NoAnswerError(NegotiationError):
    """The client did not answer an offer in time (transient: the next pass offers again)."""


@attrs.define
class Binding:
    """A track id bound on an m-line through one source; `down` once forwarding started."""

    source: TrackSource
    mid: str
    snapshot: Optional[DownTrackSnapshot]
    reused: bool  # the m-line came from the cache
    down: Optional[DownTrack] = None


@attrs.frozen
class MigratedTransceiver:
    """A subscribed m-line carried to another node in a migration's sync state."""

    track_id: str
    mid: str
    ssrc: Optional[int]
    rtx_ssrc: Optional[int]
    snapshot: Optional[DownTrackSnapshot]
    # The msid stream the client knows the m-line by (None: unknown).
    stream_id: Optional[str] = None


class SubscriberEndpoint:
    def __init__(self, subscriber_id: str, local: LocalParams, exchange: Exchange,
                 send_rtp: Callable[[bytes], bool], *,
                 send_rtcp: Callable[[bytes], bool] = lambda packet: True,
                 table: Optional[TransceiverTable] = None,
                 answered: Optional[Answered] = None,
                 request_offer: Optional[RequestOffer] = None,
                 numbered: Optional[NumberedDownlink] = None) -> None:
        self._id = subscriber_id
        self._numbered = numbered
        self._request_offer = request_offer
        if table is None:
            table = TransceiverTable(client_offers=request_offer is not None)
        # Single-PC mode: no m=application of ours (the client's offer carries the data channel).
        self.offer = SubscriberOffer(local, table, cname=subscriber_id, data_channel=request_offer is None)
        self._exchange = exchange
        # Runs once the answer is applied (the server creates the subscriber transport from it).
        self._answered = answered
        self._send_rtp = send_rtp
        self._send_rtcp = send_rtcp
        self.bindings: dict[str, Binding] = {}
        self.snapshots: dict[str, DownTrackSnapshot] = {}
        self.cached_track_ids: set[str] = set()  # keys this endpoint put in the table's cache
        self.offers: list[SessionDescription] = []  # every offer made, for invariant checks
        # mid -> (track id, ssrc) as the last answered offer had it; a binding equal to it needs
        # no negotiation (the client's transceiver already carries that SSRC for that track).
        self._negotiated: dict[str, tuple[Optional[str], Optional[int]]] = {}
        self._negotiation = trio.Lock()
        # An offer went out and no answer was applied since: the client's view is unknown.
        self._unanswered = False
        self.on_detached: Optional[Detached] = None
        self.on_refused: Optional[Refused] = None
        self.closed = False

    @property
    def subscriber_id(self) -> str:
        return self._id

    @property
    def table(self) -> TransceiverTable:
        return self.offer.table

    # ---- binding ----------------------------------------------------------------------------

    def bind(self, source: TrackSource) -> Binding:
        """Put the source's track on an m-line: the cached one for its track id if any."""
        track_id = source.track_id
        if track_id in self.bindings:
            raise TransceiverInvariantError(f"track {track_id} is already bound")
        codecs = subscriber_codecs(source.kind, tuple(f"{source.kind.value}/{c.name}" for c in source.codecs if not c.is_rtx))
        cached = self.table.cache.peek(track_id)
        snapshot = self.snapshots.pop(track_id, None)
        t = self.table.bind(track_id, source.kind, source.stream_id, codecs=codecs or None)
        self.cached_track_ids.discard(track_id)
        reused = cached is not None and cached.mid == t.mid and cached.ssrc == t.ssrc
        binding = Binding(source, t.mid, snapshot if reused else None, reused)
        self.bindings[track_id] = binding
        return binding

    def _line_states(self) -> dict[str, tuple[Optional[str], Optional[int]]]:
        """mid -> (track id, SSRC) as an offer presents the line: its track, or the track the
        cache holds it for, or nothing."""
        states: dict[str, tuple[Optional[str], Optional[int]]] = {}
        for t in self.table.transceivers:
            if t.kind.value == "application":
                continue
            held = self.table.held(t)
            if t.state is TransceiverState.ACTIVE:
                states[t.mid] = (t.track_id, t.ssrc)
            elif held is not None:
                states[t.mid] = (held[0], held[1].ssrc)
            else:
                states[t.mid] = (None, None)
        return states

    def needs_negotiation(self) -> bool:
        """Whether the client's view (the last answered offer) differs from the table. An m-line
        idle only because its track is cached for a resume does not count: the client keeps it."""
        if self._unanswered or self.offer.ice_restarting:
            return True
        reserved = self.table.cache.mids()
        for mid, state in self._line_states().items():
            if state[0] is None and mid in reserved:
                continue
            if self._negotiated.get(mid, (None, None)) != state:
                return True
        return False

    async def negotiate(self) -> None:
        """One offer/answer round (serialized). Raises what the exchange raises, and
        NegotiationError for an answer that does not answer the offer."""
        async with self._negotiation:
            if self._request_offer is not None:
                await self._negotiate_by_client_offer(self._request_offer)
                return
            offer = self.offer.create_offer()
            self.offers.append(offer)
            offered = self._line_states()
            # Without an answer the offer stays pending; the next create_offer replaces it.
            self._unanswered = True
            answer = await self._exchange(offer)
            self.offer.apply_answer(answer)
            self._unanswered = False
            self._negotiated = offered
            if self._answered is not None:
                self._answered(answer)

    # ---- single-PC mode: the client offers ---------------------------------------------------

    @property
    def client_offers(self) -> bool:
        return self._request_offer is not None

    def _waiting_lines(self) -> dict[MediaKind, int]:
        """Tracks bound to no m-line of the client yet, by kind."""
        waiting = {MediaKind.AUDIO: 0, MediaKind.VIDEO: 0}
        for t in self.table.unplaced():
            if t.state is TransceiverState.ACTIVE:
                waiting[t.kind] += 1
        return waiting

    async def _negotiate_by_client_offer(self, request_offer: RequestOffer) -> None:
        self._unanswered = True
        # Lines asked for in this negotiation that no offer brought yet: an offer the client
        # had already sent when we asked does not have them, and asking again would make the
        # client add them twice.
        asked = {MediaKind.AUDIO: 0, MediaKind.VIDEO: 0}
        for _ in range(MAX_OFFER_REQUESTS):
            before = self._waiting_lines()
            more = {kind: max(0, before[kind] - asked[kind]) for kind in asked}
            for kind in asked:
                asked[kind] += more[kind]
            # LiveKit asks even for none: the request is what makes the client offer again.
            await request_offer(more[MediaKind.AUDIO], more[MediaKind.VIDEO])
            after = self._waiting_lines()
            if not any(after.values()):
                self._unanswered = False
                return
            for kind in asked:
                asked[kind] = max(0, asked[kind] - (before[kind] - after[kind]))
        raise NoAnswerError(f"the client did not offer the m-lines asked for in {MAX_OFFER_REQUESTS} offers")

    def client_offered(self, offer: SessionDescription) -> dict[str, Optional[OutgoingTrack]]:
        """A client offer (single-PC mode): its receive-only m-lines become the table's lines
        (unplaced transceivers take the new ones), lines it no longer offers for receiving are
        lost; returns what the answer sends on each receive-only line."""
        outgoing: dict[str, Optional[OutgoingTrack]] = {}
        lines = offered_receive_lines(offer)
        offered = {line.mid for line in lines}
        lost: list[str] = []
        for t in list(self.table.transceivers):
            if t.placed and t.state.live and t.kind is not MediaKind.APPLICATION and t.mid not in offered:
                # JSEP never drops an m-line; a client that does has no such line any more. (This
                # also keeps the table no larger than one offer's m-lines.)
                lost_track = self.table.mark_rejected(t.mid, offered_stopped=True)
                if lost_track is not None:
                    lost.append(lost_track)
        for line in lines:
            mid = line.mid
            if not line.live:
                lost_track = self.table.mark_rejected(mid, offered_stopped=True) if self.table.get(mid) else None
                if lost_track is not None:
                    lost.append(lost_track)
                continue
            t = self.table.offered_line(mid, line.kind, line.codecs, line.extensions)
            binding = self.bindings.get(t.track_id) if t.track_id is not None else None
            if binding is not None:
                binding.mid = t.mid
            held = self.table.held(t)
            if t.state is TransceiverState.ACTIVE and t.track_id and t.stream_id and t.ssrc is not None:
                outgoing[mid] = OutgoingTrack(t.stream_id, t.track_id, t.ssrc, t.rtx_ssrc)
            elif held is not None and held[1].ssrc is not None and held[1].stream_id:
                outgoing[mid] = OutgoingTrack(held[1].stream_id, held[0], held[1].ssrc, held[1].rtx_ssrc)
            else:
                outgoing[mid] = None
        lost = [track_id for track_id in lost if track_id in self.bindings]
        if lost and self.on_refused is not None:
            self.on_refused(lost)
        return outgoing

    def client_answered(self) -> None:
        """The answer to the client's offer went out: it presented the placed lines as they are."""
        self._negotiated = {mid: state for mid, state in self._line_states().items()
                            if not mid.startswith(UNPLACED_MID_PREFIX)}

    def mid_to_track_id(self) -> dict[str, str]:
        """Mid -> track id of every placed line sending a track (LiveKit's answer field)."""
        return {t.mid: t.track_id for t in self.table.transceivers
                if t.placed and t.state is TransceiverState.ACTIVE and t.track_id is not None}

    def refused_track_ids(self) -> list[str]:
        """Bound tracks whose m-line the client's last answer refused (port 0): permanent."""
        return [track_id for track_id in self.bindings if self.table.find_by_track(track_id) is None]

    def start(self, track_id: str, now: float, wallclock_offset: float = 0.0) -> DownTrack:
        """Forward the bound source to the client on the negotiated m-line: the answer's payload
        types (RTX too) and extension ids, the cached rewrite state if the m-line was reused."""
        binding = self.bindings[track_id]
        source = binding.source
        t = self.table.find_by_track(track_id)
        assert t is not None and t.ssrc is not None
        negotiated = t.negotiated_codecs or t.codecs
        pt_map = map_payload_types(
            [(c.payload_type, c.name) for c in source.codecs if not c.is_rtx],
            [(c.payload_type, c.name) for c in negotiated if not c.is_rtx],
        )
        if not pt_map:
            raise NoCommonCodecError(track_id)
        rtx_pts = {c.apt: c.payload_type for c in negotiated if c.is_rtx and c.apt is not None}
        extension_ids = None
        ours = {uri: ext_id for ext_id, uri in t.extensions.items()}
        if source.extensions is not None:
            # (The playout delay is ours to send: a publisher's would be forwarded to the
            # subscriber's jitter buffer, so it is never mapped.)
            extension_ids = {pub: ours[uri] for pub, uri in source.extensions.items()
                             if uri in ours and uri != EXT_PLAYOUT_DELAY}
        primary = next(c for c in source.codecs if not c.is_rtx)
        down = DownTrack(
            source.receiver, ssrc=t.ssrc, payload_types=pt_map, clock_rate=primary.clock_rate,
            mime_type=f"{source.kind.value}/{primary.name}", send_rtp=self._send_rtp,
            send_rtcp=self._send_rtcp, cname=self._id, wallclock_offset=wallclock_offset,
            target_layer=self.target_layer(source),
            rtx_ssrc=t.rtx_ssrc if rtx_pts else None, rtx_payload_types=rtx_pts,
            extension_ids=extension_ids, snapshot=binding.snapshot, numbered=self._numbered,
            playout_delay_id=ours.get(EXT_PLAYOUT_DELAY) if source.kind is MediaKind.VIDEO else None,
        )
        binding.down = down
        first_subscriber = not source.receiver.down_tracks
        self.down_track_starting(source, down, now)
        source.receiver.add_down_track(down)
        self.down_track_started(source, down, first_subscriber, now)
        return down

    # Hooks for the server's endpoint (trio_sfu.media.subscribing); the defaults suit a plain client.

    def target_layer(self, source: TrackSource) -> Optional[int]:
        """The layer the client gets first (None = paused)."""
        return 0

    def down_track_starting(self, source: TrackSource, down: DownTrack, now: float) -> None:
        """Before the down track receives its first packet (e.g. pause it for a muted track)."""

    def down_track_started(self, source: TrackSource, down: DownTrack, first_subscriber: bool, now: float) -> None:
        """After it joined the receiver (e.g. ask the publisher for a keyframe)."""

    def down_track_stopped(self, down: DownTrack) -> None:
        """It left its receiver for good (e.g. fold its counters into metrics)."""

    # ---- TrackSubscriber ---------------------------------------------------------------------

    def detach_source(self, source: TrackSource, expected_to_resume: bool) -> None:
        binding = self.bindings.get(source.track_id)
        if binding is None or binding.source is not source:
            return
        del self.bindings[source.track_id]
        snapshot = binding.snapshot
        if binding.down is not None:
            snapshot = binding.down.snapshot() or snapshot
            source.receiver.remove_down_track(binding.down)
            self.down_track_stopped(binding.down)
        if self.table.find_by_track(source.track_id) is not None:
            # Cache first, then tell the manager: it must never see "unsubscribed" before the
            # cache entry exists, or its retry could take a fresh m-line.
            self.table.unbind(source.track_id, cache=expected_to_resume)
            if expected_to_resume:
                self.cached_track_ids.add(source.track_id)
        if expected_to_resume and snapshot is not None:
            self.snapshots[source.track_id] = snapshot
        else:
            self.snapshots.pop(source.track_id, None)
        if self.on_detached is not None:
            self.on_detached(source.track_id, source, expected_to_resume)

    def forget_cached(self, track_id: str) -> bool:
        """The track an m-line is cached (held) for will not come back: the m-line stops being
        held, so the next offer presents it idle — without the track's msid — and the next track
        may take it with fresh SSRCs. Returns whether this endpoint had cached the track."""
        if track_id not in self.cached_track_ids:
            return False
        self.cached_track_ids.discard(track_id)
        self.snapshots.pop(track_id, None)
        self.table.cache.take(track_id)
        return True

    # ---- migration ---------------------------------------------------------------------------

    def migrated_state(self) -> list[MigratedTransceiver]:
        """What a node taking this participant over needs to keep its m-lines: the cached ones
        (a migrating participant's subscriptions were all detached with resume first)."""
        out = []
        for track_id in sorted(self.cached_track_ids):
            c = self.table.cache.peek(track_id)
            if c is not None:
                out.append(MigratedTransceiver(track_id, c.mid, c.ssrc, c.rtx_ssrc, self.snapshots.get(track_id),
                                               c.stream_id))
        return out

    def restore_migrated(self, entries: list[MigratedTransceiver], kinds: dict[str, MediaKind],
                         layout: Optional[tuple[list[tuple[str, MediaKind, bool]], int]] = None) -> list[str]:
        """Rebuild the m-lines a previous node had as cache entries; returns the track ids whose
        mid could not be reproduced (they will get new m-lines). With the previous node's whole
        `layout` (its m-lines in order and its next mid) the table first takes that shape, so a
        client that keeps its peer connection sees every m-line it had, in place."""
        if layout is not None:
            try:
                self.table.restore_layout(*layout)
            except ValueError:
                layout = None  # fall back to rebuilding the cached m-lines alone
        if layout is not None:
            failed = []
            for entry in entries:
                kind = kinds.get(entry.track_id)
                t = self.table.get(entry.mid)
                if kind is None or t is None or t.kind is not kind or t.state is not TransceiverState.IDLE:
                    failed.append(entry.track_id)
                    continue
                t.ssrc, t.rtx_ssrc = entry.ssrc, entry.rtx_ssrc
                self.table.cache.put(entry.track_id, CachedTransceiver(t.mid, kind, entry.ssrc, entry.rtx_ssrc, t.codecs,
                                                                       stream_id=entry.stream_id))
                self.cached_track_ids.add(entry.track_id)
                if entry.snapshot is not None:
                    self.snapshots[entry.track_id] = entry.snapshot
            return failed
        failed = []
        for entry in sorted(entries, key=lambda e: int(e.mid) if e.mid.isdigit() else 1 << 30):
            kind = kinds.get(entry.track_id)
            if kind is None:
                failed.append(entry.track_id)
                continue
            t = self.table.bind(entry.track_id, kind, f"migrated|{entry.track_id}")
            if t.mid != entry.mid:
                self.table.unbind(entry.track_id)
                failed.append(entry.track_id)
                continue
            t.ssrc, t.rtx_ssrc = entry.ssrc, entry.rtx_ssrc
            t.stream_id = entry.stream_id
            self.table.unbind(entry.track_id, cache=True)
            self.cached_track_ids.add(entry.track_id)
            if entry.snapshot is not None:
                self.snapshots[entry.track_id] = entry.snapshot
        return failed

    def close(self) -> None:
        """Detach from every source without resume (the participant is gone)."""
        self.closed = True
        for binding in list(self.bindings.values()):
            binding.source.remove_subscriber(self._id, expected_to_resume=False)
            # A source that no longer lists us (it is closing) still must not keep our down track.
            self.detach_source(binding.source, False)
        self.snapshots.clear()
