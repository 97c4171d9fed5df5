"""SubscriptionManager: per participant, what it wants reconciled with what resolves.

One task per participant loops on Trio's clock: it wakes for a periodic tick
(`reconcile_interval`) or for a trigger (a track change in the room's TrackManager, a source
detaching this subscriber, a desired-set change) sent without blocking on a bounded channel — a
full channel drops the trigger and the tick catches up, as LiveKit does.

Tolerance, as LiveKit's: a track that resolves to nothing while a source for it is listed (its
head is closing) is retried without limit; a track with no source at all is retried until
`not_found_timeout` after the subscription was wanted, then given up and reported
(`SE_TRACK_NOTFOUND`); a source that stopped being open while we were negotiating is a transient
error and retried; anything else is permanent and reported at once (`subscription_response`).

A reconcile pass binds every target it can first, then makes one offer for all of them (a
client joining a busy room gets one offer, not one per track), then starts each binding. The
offer/answer round is the pass's one await; because a source may start closing during it, each
binding is checked again after it (the post-check); removal then goes through
`TrackSource.remove_subscriber`, which reads the expected-to-resume value recorded when the
source began closing — so the transceiver is cached exactly when a resume is expected.
"""

from __future__ import annotations

import math
from typing import Awaitable, Callable, Optional

import attrs
import trio
from livekit.protocol import models

from sdp.errors import NegotiationError, TransceiverInvariantError
from trio_sfu.log import get_logger

from trio_sfu.tracks.source import AlreadySubscribedError, SourceNotOpenError, TrackSource
from trio_sfu.tracks.subscriber import Binding, NoAnswerError, NoCommonCodecError, SubscriberEndpoint
from trio_sfu.tracks.track_manager import TrackManager

_log = get_logger("trio_sfu.tracks")

#: Sentinel trigger: reconcile every subscription.
RECONCILE_ALL = ""

Report = Callable[[str, int], None]  # (track id, models.SubscriptionError) -> subscription_response
Hook = Callable[[str, str], Awaitable[None]]  # (seam name, track id): test interleavings


@attrs.define
class TrackSubscription:
    track_id: str
    desired: bool
    wanted_since: float
    source: Optional[TrackSource] = None
    forwarding: bool = False
    attempts: int = 0
    transient_errors: list[str] = attrs.field(factory=list)


async def _no_hook(seam: str, track_id: str) -> None:
    return None


class SubscriptionManager:
    def __init__(self, endpoint: SubscriberEndpoint, tracks: TrackManager, *,
                 report: Report, reconcile_interval: float = 3.0, not_found_timeout: float = 60.0,
                 hook: Hook = _no_hook, wallclock_offset: float = 0.0, log=None) -> None:
        self.endpoint = endpoint
        self.tracks = tracks
        self._report = report
        self.reconcile_interval = reconcile_interval
        self.not_found_timeout = not_found_timeout
        self._hook = hook
        self._wallclock_offset = wallclock_offset
        self.log = log if log is not None else _log.bind(participant=endpoint.subscriber_id)
        self.subscriptions: dict[str, TrackSubscription] = {}
        self.permanent_errors: list[tuple[str, str]] = []
        self._send, self._receive = trio.open_memory_channel[str](50)
        self._watch: Optional[int] = None
        self.closed = False
        self.dropped_triggers = 0
        endpoint.on_detached = self._detached
        endpoint.on_refused = self._refused_by_client

    # ---- what the participant wants -------------------------------------------------------

    def set_desired(self, track_id: str, desired: bool) -> None:
        s = self.subscriptions.get(track_id)
        if s is None:
            if not desired:
                return
            s = self.subscriptions[track_id] = TrackSubscription(track_id, True, trio.current_time())
        elif desired and not s.desired:
            s.desired, s.wanted_since = True, trio.current_time()
        else:
            s.desired = desired
        self.trigger(track_id)

    def trigger(self, track_id: str = RECONCILE_ALL) -> None:
        if self.closed:
            return
        try:
            self._send.send_nowait(track_id)
        except trio.WouldBlock:
            self.dropped_triggers += 1

    def _detached(self, track_id: str, source: TrackSource, expected_to_resume: bool) -> None:
        s = self.subscriptions.get(track_id)
        if s is not None and s.source is source:
            s.source, s.forwarding = None, False
        self.trigger(track_id)

    def _track_changed(self, track_id: str) -> None:
        if track_id in self.subscriptions:
            self.trigger(track_id)

    # ---- the loop ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self.closed:  # closed before its task started: register nothing
            task_status.started()
            return
        self._watch = self.tracks.watch(self._track_changed)
        try:
            task_status.started()
            next_tick = trio.current_time()
            while not self.closed:
                # A dict, not a set: reconcile in trigger order, the same in every process.
                targets: dict[str, None] = {}
                wake = min(next_tick, self._next_not_found_deadline())
                try:
                    with trio.move_on_at(wake) as timer:
                        targets[await self._receive.receive()] = None
                        while True:  # drain what is already queued into one pass
                            try:
                                targets[self._receive.receive_nowait()] = None
                            except trio.WouldBlock:
                                break
                except (trio.ClosedResourceError, trio.EndOfChannel):
                    return  # closed from outside (the participant left or moved away)
                if timer.cancelled_caught:
                    if trio.current_time() >= next_tick:
                        next_tick = trio.current_time() + self.reconcile_interval
                    targets[RECONCILE_ALL] = None
                await self.reconcile(targets)
        finally:
            self.close()

    def _next_not_found_deadline(self) -> float:
        """When the earliest wanted-but-unlisted track runs out of time: its report is not
        left waiting for the next tick."""
        deadline = math.inf
        for s in self.subscriptions.values():
            if s.desired and s.source is None and s.track_id not in self.tracks:
                deadline = min(deadline, s.wanted_since + self.not_found_timeout)
        return deadline

    async def reconcile(self, targets: dict[str, None] | set[str]) -> None:
        """One pass: bind every target that can be bound, one offer for all of them (and for
        any m-line an unsubscribe freed), then check and start each binding."""
        ids = list(self.subscriptions) if RECONCILE_ALL in targets else [t for t in targets if t in self.subscriptions]
        bound: list[tuple[TrackSubscription, TrackSource, Binding]] = []
        for track_id in ids:
            s = self.subscriptions.get(track_id)
            if s is not None and not self.closed:
                result = self._reconcile_one(s)
                if result is not None:
                    bound.append(result)
        for s, _, _ in bound:
            await self._hook("bound", s.track_id)
        if self.closed:
            return
        if self.endpoint.needs_negotiation():
            try:
                await self.endpoint.negotiate()
            except NoAnswerError as exc:
                if self.closed:
                    return  # the participant left while its offer was out
                # Transient: let the bindings go (nothing was negotiated for them) and offer
                # again on a later pass; `needs_negotiation` stays true until an answer lands.
                self.log.warning("offer unanswered", kv={"error": str(exc)})
                for s, source, _ in bound:
                    source.remove_subscriber(self.endpoint.subscriber_id, expected_to_resume=False)
                    s.transient_errors.append("no_answer")
                return
            except (NegotiationError, TransceiverInvariantError) as exc:
                if self.closed:
                    return
                if not bound:
                    self.log.warning("renegotiation failed", kv={"error": str(exc)})
                for s, source, _ in bound:
                    source.remove_subscriber(self.endpoint.subscriber_id, expected_to_resume=False)
                    s.desired = False
                    self._permanent(s, f"negotiation failed: {exc}", models.SubscriptionError.SE_UNKNOWN)
                return
            if self.closed:
                return
            refused = set(self.endpoint.refused_track_ids())
            for s, source, _ in bound:
                if s.track_id in refused:
                    # The client turned the m-line down: offering it again would loop.
                    source.remove_subscriber(self.endpoint.subscriber_id, expected_to_resume=False)
                    s.desired = False
                    self._permanent(s, "the client refused the m-line", models.SubscriptionError.SE_CODEC_UNSUPPORTED)
            handled = {b[0].track_id for b in bound}
            bound = [b for b in bound if b[0].track_id not in refused]
            self._refused_by_client(sorted(refused - handled))
        for s, source, binding in bound:
            await self._hook("post_check", s.track_id)
            if self.closed:
                return
            self._start(s, source, binding)

    def _refused_by_client(self, track_ids: list[str]) -> None:
        """M-lines already forwarding that the client now refuses (its answer, or in single-PC
        mode its own offer, stops them): let them go for good; offering them again would loop."""
        for track_id in track_ids:
            binding = self.endpoint.bindings.get(track_id)
            if binding is not None and not binding.source.remove_subscriber(
                    self.endpoint.subscriber_id, expected_to_resume=False):
                self.endpoint.detach_source(binding.source, False)
            s = self.subscriptions.get(track_id)
            if s is not None and s.desired:
                s.desired = False
                self._permanent(s, "the client refused the m-line", models.SubscriptionError.SE_CODEC_UNSUPPORTED)

    def _reconcile_one(self, s: TrackSubscription) -> Optional[tuple[TrackSubscription, TrackSource, Binding]]:
        if s.desired:
            if s.source is None or not s.source.is_open:
                return self._bind(s)
            return None
        if s.source is not None:
            s.source.remove_subscriber(self.endpoint.subscriber_id, expected_to_resume=False)
        if s.source is None:
            del self.subscriptions[s.track_id]
        return None

    def _bind(self, s: TrackSubscription) -> Optional[tuple[TrackSubscription, TrackSource, Binding]]:
        track_id = s.track_id
        source = self.tracks.resolve(track_id)
        now = trio.current_time()
        if source is None:
            if self.tracks.sources(track_id):
                s.transient_errors.append("closing")  # the head is closing: it will leave or reopen
                return None
            if now - s.wanted_since >= self.not_found_timeout:
                s.desired = False
                self._permanent(s, "track not found", models.SubscriptionError.SE_TRACK_NOTFOUND)
                return None
            s.transient_errors.append("not_found")
            return None
        if source is s.source:
            return None
        s.attempts += 1
        try:
            source.add_subscriber(self.endpoint)
        except SourceNotOpenError:
            s.transient_errors.append("not_open")
            return None
        except AlreadySubscribedError:
            return None
        try:
            binding = self.endpoint.bind(source)
        except TransceiverInvariantError as exc:
            # Only reachable if resolution handed out a second source while the first still
            # held this track's m-line — the race the FIFO excludes. Never offer it twice.
            source.remove_subscriber(self.endpoint.subscriber_id, expected_to_resume=False)
            s.desired = False
            self._permanent(s, f"m-line conflict: {exc}", models.SubscriptionError.SE_UNKNOWN)
            return None
        s.source = source
        return s, source, binding

    def _start(self, s: TrackSubscription, source: TrackSource, binding: Binding) -> None:
        track_id = s.track_id
        if self.endpoint.bindings.get(track_id) is not binding:
            return  # the source let us go meanwhile (and cached, if a resume is expected)
        if not source.is_open:
            # Post-check: the flag is the one recorded at closing, not decided here.
            source.remove_subscriber(self.endpoint.subscriber_id)
            s.transient_errors.append("not_open")
            return
        try:
            self.endpoint.start(track_id, trio.current_time(), self._wallclock_offset)
        except NoCommonCodecError:
            source.remove_subscriber(self.endpoint.subscriber_id, expected_to_resume=False)
            s.desired = False
            self._permanent(s, "no common codec", models.SubscriptionError.SE_CODEC_UNSUPPORTED)
            return
        s.forwarding = True
        s.attempts = 0
        self.log.debug("subscribed", kv={"track": track_id, "source": source.origin.value,
                                         "node": source.node_id, "reused": binding.reused})

    def _permanent(self, s: TrackSubscription, reason: str, error: int) -> None:
        self.permanent_errors.append((s.track_id, reason))
        self.log.warning("subscription failed", kv={"track": s.track_id, "reason": reason})
        self._report(s.track_id, error)

    # ---- end --------------------------------------------------------------------------------

    def close(self) -> None:
        """Unregister from the room and detach from every source (idempotent)."""
        if self.closed:
            return
        self.closed = True
        if self._watch is not None:
            self.tracks.unwatch(self._watch)
            self._watch = None
        self.endpoint.close()
        self.subscriptions.clear()
        self._send.close()
        self._receive.close()
