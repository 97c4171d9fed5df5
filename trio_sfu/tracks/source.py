"""TrackSource: one way a published track can be reached on this node.

A track id may be reachable through several sources over time: the local `TrackReceiver` of a
publisher on this node, or a *remote* source fed by the node-to-node relay while the publisher
lives on another node. A source's state is its receiver's: open → closing → closed.

Why the expected-to-resume flag is recorded when closing begins: a subscriber can be removed
from a closing source by several paths (the subscribe post-check that finds the source no longer
open, the bulk clear while closing). If each path decided "expected to resume?" for itself, the
post-check could run before the bulk clear had stored the flag and read a stale `False`, dropping
the subscriber's transceiver instead of caching it (LiveKit's race 1). Here the flag is fixed
once, at open → closing, and every removal reads that value; the `ReadAtRemoval` policy keeps the
pre-fix behaviour only so tests can show they catch it.
"""

from __future__ import annotations

import enum
import weakref
from typing import Callable, Optional, Protocol

from sdp.codecs import MediaKind
from sdp.model import Codec
from trio_sfu.forwarding.receiver import ReceiverState, TrackReceiver


class SourceOrigin(enum.Enum):
    LOCAL = "local"    # the publisher's PC is on this node
    REMOTE = "remote"  # relayed from the publisher's node


class SourceNotOpenError(Exception):
    """The source is closing or closed; a transient subscribe error (retried)."""


class AlreadySubscribedError(Exception):
    """This subscriber is already attached to the source."""


class TrackSubscriber(Protocol):
    """What a source needs from a subscriber to let it go."""

    @property
    def subscriber_id(self) -> str: ...

    def detach_source(self, source: "TrackSource", expected_to_resume: bool) -> None:
        """Synchronous: when it returns, the subscriber's down track for this source is gone and,
        if `expected_to_resume`, its transceiver and rewrite state are cached by track id."""


class ResumeFlagPolicy(Protocol):
    """Which expected-to-resume value subscriber removals on a closing source read."""

    def on_closing(self, expected_to_resume: bool) -> None: ...

    def on_clear(self, expected_to_resume: bool) -> None: ...

    def for_removal(self) -> bool: ...


class RecordedAtClosing:
    """The fix: the value given when the source began closing, for every removal path."""

    def __init__(self) -> None:
        self._value = False

    def on_closing(self, expected_to_resume: bool) -> None:
        self._value = expected_to_resume

    def on_clear(self, expected_to_resume: bool) -> None:
        pass  # already fixed at closing; a disagreeing later value must not change the outcome

    def for_removal(self) -> bool:
        return self._value


class ReadAtRemoval:
    """Pre-fix behaviour (LiveKit before #3526), kept for the not-vacuous tests: only the bulk
    clear stores the flag, so a removal before it reads the default `False`."""

    def __init__(self) -> None:
        self._value = False

    def on_closing(self, expected_to_resume: bool) -> None:
        pass

    def on_clear(self, expected_to_resume: bool) -> None:
        self._value = expected_to_resume

    def for_removal(self) -> bool:
        return self._value


#: Every TrackSource alive in the process, so leak checks can find one left open or subscribed.
_LIVE_SOURCES: "weakref.WeakSet[TrackSource]" = weakref.WeakSet()


def live_sources() -> list["TrackSource"]:
    return list(_LIVE_SOURCES)


class TrackSource:
    """A receiver plus who is subscribed through it. Synchronous; owners call it from one task."""

    def __init__(self, track_id: str, origin: SourceOrigin, node_id: str, receiver: TrackReceiver,
                 *, kind: MediaKind = MediaKind.AUDIO, publisher_id: str = "", stream_id: str = "",
                 codecs: tuple[Codec, ...] = (),
                 extensions: Optional[dict[int, str]] = None,
                 resume_policy: Optional[ResumeFlagPolicy] = None) -> None:
        self.track_id = track_id
        self.origin = origin
        self.node_id = node_id
        self.receiver = receiver
        self.kind = kind
        self.publisher_id = publisher_id
        self.stream_id = stream_id or f"{publisher_id}|{kind.value}"
        self.codecs = codecs  # publisher payload types, as negotiated on its PC
        # Publisher header-extension id -> URI (None: unknown, forwarded with the ids unchanged).
        self.extensions = extensions
        self._resume = resume_policy if resume_policy is not None else RecordedAtClosing()
        self._subscribers: dict[str, TrackSubscriber] = {}
        self._on_closed: list[Callable[["TrackSource"], None]] = []
        _LIVE_SOURCES.add(self)

    def __repr__(self) -> str:
        return f"<TrackSource {self.track_id} {self.origin.value}@{self.node_id} {self.state.value}>"

    @property
    def state(self) -> ReceiverState:
        return self.receiver.state

    @property
    def is_open(self) -> bool:
        return self.receiver.state is ReceiverState.OPEN

    @property
    def subscriber_ids(self) -> tuple[str, ...]:
        return tuple(self._subscribers)

    def on_closed(self, callback: Callable[["TrackSource"], None]) -> None:
        self._on_closed.append(callback)

    # ---- subscribers -------------------------------------------------------------------------

    def add_subscriber(self, subscriber: TrackSubscriber) -> None:
        if not self.is_open:
            raise SourceNotOpenError(f"{self.track_id} is {self.state.value}")
        if subscriber.subscriber_id in self._subscribers:
            raise AlreadySubscribedError(subscriber.subscriber_id)
        self._subscribers[subscriber.subscriber_id] = subscriber

    def has_subscriber(self, subscriber_id: str) -> bool:
        return subscriber_id in self._subscribers

    def remove_subscriber(self, subscriber_id: str, expected_to_resume: Optional[bool] = None) -> bool:
        """Detach one subscriber. On a closing source the flag is the recorded one whatever the
        caller passes; on an open source the caller decides (an unsubscribe is never a resume)."""
        subscriber = self._subscribers.pop(subscriber_id, None)
        if subscriber is None:
            return False
        if self.state is ReceiverState.OPEN:
            flag = bool(expected_to_resume)
        else:
            flag = self._resume.for_removal()
        subscriber.detach_source(self, flag)
        return True

    # ---- lifecycle ---------------------------------------------------------------------------

    def begin_closing(self, expected_to_resume: bool) -> bool:
        """open → closing, fixing the expected-to-resume value; False if already past open."""
        if self.state is not ReceiverState.OPEN:
            return False
        self.receiver.begin_closing(expected_to_resume)
        self._resume.on_closing(expected_to_resume)
        return True

    def clear_subscribers(self, expected_to_resume: bool) -> int:
        """Remove every subscriber (closing only). Each cache happens before this returns."""
        if self.state is ReceiverState.OPEN:
            self.begin_closing(expected_to_resume)
        self._resume.on_clear(expected_to_resume)
        removed = 0
        for subscriber_id in list(self._subscribers):
            removed += self.remove_subscriber(subscriber_id)
        return removed

    def close(self) -> None:
        """closing → closed once no subscriber remains; then tell the owners (the track manager
        drops the source from its FIFO only now, after every subscriber was cached or removed)."""
        if self.state is ReceiverState.CLOSED:
            return
        if self.state is ReceiverState.OPEN:
            self.begin_closing(False)
        if self._subscribers:
            self.clear_subscribers(self._resume.for_removal())
        self.receiver.close()
        for callback in self._on_closed:
            callback(self)
        self._on_closed.clear()

    def close_now(self, expected_to_resume: bool) -> None:
        """All three steps at once (an unpublish with no seams in between)."""
        self.begin_closing(expected_to_resume)
        self.clear_subscribers(expected_to_resume)
        self.close()
