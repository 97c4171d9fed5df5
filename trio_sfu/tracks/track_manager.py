"""TrackManager: per room, track id → FIFO of sources; resolution is the head or nothing.

Why a FIFO and not "newest wins": during a migration the same track id is reachable through a
remote source (relayed from the old node) and, once the publisher's media reaches this node, a
local source. If the new local source became resolvable while the remote one was still closing,
a subscriber could be bound to the local source before its remote-source transceiver was cached,
and the next offer would carry the track on two m-lines (LiveKit's race 2). Here a source leaves
the FIFO only from its own on-closed callback, which runs after every subscriber was removed
(and cached where expected to resume), and while the head is not open nothing resolves — so "the
local source is resolvable" always happens after "the remote subscribers were cached".

`NewestWins` keeps the pre-fix policy only so tests can show they would catch it.
"""

from __future__ import annotations

from typing import Callable, Optional, Protocol, Sequence

from trio_sfu.tracks.source import TrackSource

TrackChanged = Callable[[str], None]


class ResolutionPolicy(Protocol):
    def resolve(self, sources: Sequence[TrackSource]) -> Optional[TrackSource]: ...


class FifoHead:
    """The earliest added source, and only while it is open."""

    def resolve(self, sources: Sequence[TrackSource]) -> Optional[TrackSource]:
        if not sources:
            return None
        head = sources[0]
        return head if head.is_open else None


class NewestWins:
    """Pre-fix (LiveKit #1382 until #3526): the last added source, if open."""

    def resolve(self, sources: Sequence[TrackSource]) -> Optional[TrackSource]:
        if not sources:
            return None
        newest = sources[-1]
        return newest if newest.is_open else None


class TrackManager:
    def __init__(self, policy: Optional[ResolutionPolicy] = None) -> None:
        self._policy = policy if policy is not None else FifoHead()
        self._sources: dict[str, list[TrackSource]] = {}
        self._watchers: dict[int, TrackChanged] = {}
        self._next_watch = 0

    # ---- queries -----------------------------------------------------------------------------

    def resolve(self, track_id: str) -> Optional[TrackSource]:
        return self._policy.resolve(self._sources.get(track_id, ()))

    def sources(self, track_id: str) -> tuple[TrackSource, ...]:
        return tuple(self._sources.get(track_id, ()))

    def track_ids(self) -> tuple[str, ...]:
        return tuple(self._sources)

    def all_sources(self) -> list[TrackSource]:
        return [s for fifo in self._sources.values() for s in fifo]

    def __contains__(self, track_id: object) -> bool:
        return track_id in self._sources

    # ---- changes -----------------------------------------------------------------------------

    def add(self, source: TrackSource) -> bool:
        """Append `source` behind any other source of its track id; adding it again is a no-op."""
        fifo = self._sources.setdefault(source.track_id, [])
        if any(s is source for s in fifo):
            return False
        fifo.append(source)
        source.on_closed(self._source_closed)
        self._notify(source.track_id)
        return True

    def _source_closed(self, source: TrackSource) -> None:
        # The only way out of the FIFO: the source is closed and has no subscribers left.
        fifo = self._sources.get(source.track_id)
        if fifo is None:
            return
        kept = [s for s in fifo if s is not source]
        if len(kept) == len(fifo):
            return
        if kept:
            self._sources[source.track_id] = kept
        else:
            del self._sources[source.track_id]
        self._notify(source.track_id)

    # ---- watchers ----------------------------------------------------------------------------

    def watch(self, callback: TrackChanged) -> int:
        """`callback(track_id)` runs synchronously after every add/removal; it must not block
        (subscription managers only queue a reconcile)."""
        self._next_watch += 1
        self._watchers[self._next_watch] = callback
        return self._next_watch

    def unwatch(self, token: int) -> None:
        self._watchers.pop(token, None)

    @property
    def watcher_count(self) -> int:
        return len(self._watchers)

    def _notify(self, track_id: str) -> None:
        for callback in list(self._watchers.values()):
            callback(track_id)
