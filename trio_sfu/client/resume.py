"""Following the server's ``leave{action=RESUME}``: a move to another node, or a resume here.

LiveKit moves a participant (``leave{reason=MIGRATION, action=RESUME, regions=[node]}``) by
telling it to resume at the node in ``regions``; without a region the resume is at the same URL.
The old node's ICE/DTLS sessions ended with it, so both PCs are closed and built anew; what the
participant *is* carries over: its sid and token, its publications with their mids, cids and
SSRCs (so the new node recognises them from one offer, no ``add_track``), its subscriptions
and their statistics. The new node hears ``sync_state`` (our last subscriber answer,
subscriptions, publications) right after our new publisher offer.

The move runs in the client's reader task, between two messages, so nothing the new node sends
is handled before the new connection is set up.
"""

from __future__ import annotations

import functools
from typing import Awaitable, Callable

import trio
from livekit.protocol import rtc

from trio_sfu.client.publisher import Publisher
from trio_sfu.client.signal_connection import ResumeFailed, SignalConnection
from trio_sfu.client.subscriber import Subscriber

#: How often a move checks whether its new PCs are up (it is counted once they are).
_CONNECTED_POLL = 0.01


class ResumeFollower:
    """Moves one participant's signal connection and PCs to where a resume leave points.

    ``dispatch`` handles a response as the reader would (the new node's first message when it is
    not ``reconnect``); ``on_refused`` takes the new node's leave refusing the resume; ``on_failed``
    a resume that could not happen (why, for the client's errors). Either way the client has left.
    """

    def __init__(self, participant_sid: str, signal: SignalConnection, publisher: Publisher,
                 subscriber: Subscriber, *, left: trio.Event,
                 dispatch: Callable[[rtc.SignalResponse], Awaitable[None]],
                 on_refused: Callable[[rtc.LeaveRequest], None],
                 on_failed: Callable[[str], None]) -> None:
        self._participant_sid = participant_sid
        self._signal = signal
        self._publisher = publisher
        self._subscriber = subscriber
        self._left = left
        self._dispatch = dispatch
        self._on_refused = on_refused
        self._on_failed = on_failed
        #: Moves whose new PeerConnections all connected.
        self.migrations = 0
        #: Moves whose new signal connection was accepted (``reconnect`` received).
        self.signal_resumes = 0
        self.reconnect_response: rtc.ReconnectResponse | None = None
        self.sync_states_sent = 0
        self._target: str | None = None

    def expect(self, leave: rtc.LeaveRequest) -> None:
        """A resume leave arrived: requests wait for the new connection from now on, and the
        reader moves (:meth:`take_target`, :meth:`follow`) before it reads on."""
        urls = [region.url for region in leave.regions.regions if region.url]
        self._target = urls[0] if urls else self._signal.url
        self._signal.hold()

    def take_target(self) -> str | None:
        """Where the reader must move before it reads on, once; None when it need not."""
        target, self._target = self._target, None
        return target

    async def follow(self, nursery: trio.Nursery, base_url: str) -> bool:
        """Resume at ``base_url``; False when that failed or was refused (the client has left).

        ``nursery`` is the client's: the new connection and the task counting the move live
        as long as the client.
        """
        generation = self._signal.next_generation()
        had_subscriber = self._subscriber.pc is not None
        self._publisher.leave_node()
        self._subscriber.leave_node()
        try:
            first = await self._signal.resume_at(nursery, base_url, self._participant_sid)
        except ResumeFailed as exc:
            self._on_failed(str(exc))
            self._signal.release()
            return False
        kind = first.WhichOneof("message")
        if kind == "leave":
            self._signal.release()
            self._on_refused(first.leave)  # e.g. STATE_MISMATCH: a resume is not retried
            return False
        if kind == "reconnect":
            self.reconnect_response = first.reconnect
        # Anything else but a leave also means the node took us back (as livekit-client reads it).
        self._signal.url = base_url
        self.signal_resumes += 1
        self._subscriber.expect_new_node()
        self._signal.release()
        published = self._publisher.published
        if published:
            self._publisher.offer_again(then=functools.partial(self._send_sync_state, generation))
        else:
            await self._send_sync_state(generation)
        nursery.start_soon(self._count_migration, generation, published, had_subscriber)
        if kind != "reconnect":
            await self._dispatch(first)
        return True

    def sync_state(self) -> rtc.SyncState:
        """What we tell a node we resumed on: last subscriber answer, subscriptions, publications."""
        state = rtc.SyncState(
            subscription=rtc.UpdateSubscription(
                track_sids=[sid for sid, track in self._subscriber.subscriptions.items() if track.active],
                subscribe=True),
            publish_tracks=[rtc.TrackPublishedResponse(cid=p.cid, track=p.track_info)
                            for p in self._publisher.publications
                            if p.published.is_set() and p.track_info is not None],
        )
        if self._subscriber.last_answer is not None:
            state.answer.CopyFrom(self._subscriber.last_answer)
        return state

    async def _send_sync_state(self, generation: int) -> None:
        if await self._signal.send(rtc.SignalRequest(sync_state=self.sync_state()), generation):
            self.sync_states_sent += 1

    async def _count_migration(self, generation: int, need_publisher: bool, need_subscriber: bool) -> None:
        """Count the move once its new PCs are up (the ones the client had before it)."""
        while generation == self._signal.generation and not self._left.is_set():
            publisher, subscriber = self._publisher.pc, self._subscriber.pc
            if (not need_publisher or (publisher is not None and publisher.connected.is_set())) and (
                    not need_subscriber or (subscriber is not None and subscriber.connected.is_set())):
                self.migrations += 1
                return
            await trio.sleep(_CONNECTED_POLL)


__all__ = ["ResumeFollower"]
