"""A participant's outgoing signal queue: bounded in messages and in bytes, and coalescing.

Producers (the participant itself, and everyone whose changes it must hear) never wait: `put`
either queues the frame or says the queue is over its bounds, and the session then drops this
client as too slow -- for its own backlog. A frame given a `key` replaces the queued, not yet
sent frame with the same key, in its place: a ParticipantUpdate carries a participant's whole
current state, so when several about one participant are waiting only the newest matters, and
one participant changing itself a thousand times takes one slot in everyone else's queue. The
replacement keeps the older frame's position, so what follows it still follows newer state.

One consumer, the session's writer, takes frames in order with `get`. `close` lets it drain what
is queued (a final goodbye included, which `put_final` queues past the bounds) and then ends it.
"""

from __future__ import annotations

import collections
from typing import Any, Hashable

import attrs
import trio


@attrs.define
class _Slot:
    item: Any
    size: int
    key: Hashable | None


class SignalOutbox:
    def __init__(self, max_messages: int, max_bytes: int) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._queue: collections.deque[_Slot] = collections.deque()
        self._keyed: dict[Hashable, _Slot] = {}
        self._bytes = 0
        self._closed = False
        self._wakeup = trio.Event()
        #: Frames that replaced a queued one instead of taking a slot of their own.
        self.coalesced = 0

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._queue)

    def put(self, frame: bytes, key: Hashable | None = None) -> bool:
        """Queue `frame` (coalescing on `key`); False if that would exceed the bounds.

        A frame larger than `max_bytes` is still taken into an empty queue, so one large but
        legitimate message (a join response in a big room) never counts as a backlog.
        """
        if self._closed:
            return True  # the session is ending; nothing more goes out
        size = len(frame)
        slot = self._keyed.get(key) if key is not None else None
        if slot is not None:
            if self._queue and self._bytes - slot.size + size > self.max_bytes:
                return False
            self._bytes += size - slot.size
            slot.item, slot.size = frame, size
            self.coalesced += 1
            return True
        if self._queue and (len(self._queue) >= self.max_messages or self._bytes + size > self.max_bytes):
            return False
        self._append(_Slot(frame, size, key))
        return True

    def put_front(self, frame: bytes) -> None:
        """Queue `frame` ahead of everything queued, regardless of the bounds: the one message a
        resumed connection must start with (LiveKit's `reconnect`), however much waited for it."""
        if self._closed:
            return
        slot = _Slot(frame, len(frame), None)
        self._queue.appendleft(slot)
        self._bytes += slot.size
        self._wakeup.set()

    def put_final(self, item: Any) -> None:
        """Queue a last item (a goodbye, a close marker) regardless of the bounds."""
        if not self._closed:
            self._append(_Slot(item, 0, None))

    def _append(self, slot: _Slot) -> None:
        self._queue.append(slot)
        self._bytes += slot.size
        if slot.key is not None:
            self._keyed[slot.key] = slot
        self._wakeup.set()

    def close(self) -> None:
        """Take nothing more; `get` ends once what is queued has been taken."""
        self._closed = True
        self._wakeup.set()

    def clear(self) -> None:
        """Forget everything queued (the session is cut without a goodbye)."""
        self._queue.clear()
        self._keyed.clear()
        self._bytes = 0

    async def get(self) -> Any:
        """The next item; raises trio.EndOfChannel once closed and drained.

        A checkpoint that costs the writer one scheduling step per item, as a memory channel's
        `receive` does: a queued item is taken after a yield, and when the queue is empty the
        wait for the next `put` is the yield (a full `checkpoint` first would wake the writer
        twice per message, for every participant).
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._queue or self._closed:
            await trio.lowlevel.cancel_shielded_checkpoint()
        while not self._queue:
            if self._closed:
                raise trio.EndOfChannel
            self._wakeup = trio.Event()
            await self._wakeup.wait()
        slot = self._queue.popleft()
        self._bytes -= slot.size
        if slot.key is not None and self._keyed.get(slot.key) is slot:
            del self._keyed[slot.key]
        return slot.item
