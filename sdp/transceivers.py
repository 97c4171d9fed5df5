"""The subscriber side's m-line table and the transceiver cache.

The server is the offerer on a subscriber peer connection, so it owns the m-line
order. The table is that order: one :class:`Transceiver` per m-line, never
reordered (JSEP, RFC 8829 §5.2.2). A transceiver is stopped by offering its
m-line with port 0; only once the answer to *that* offer is applied may its slot
be recycled for a new transceiver (with a new mid).

Binding a track looks, in order, for: the transceiver cached for that track id
(a resumed subscription keeps its mid, SSRCs and payload types), an idle
transceiver of the same kind, a recyclable slot, and finally appends an m-line.

A cached transceiver *holds* its idle m-line for the track expected back: an offer
made meanwhile still presents it as the peer last saw it (sendonly, same msid and
SSRCs), so a resume that happens across another negotiation is invisible to the
peer (LiveKit never removes the sender of an expected-to-resume subscription).

Invariant, checked on every offer: no two live m-lines carry the same track id.

Single peer connection mode (``client_offers``): the client is the offerer of the one
peer connection, so the m-lines and their mids are the client's. The table then holds the
client's receive-only m-lines (:meth:`TransceiverTable.offered_line` adds them as the offers
come); a track bound when no line of its kind is idle gets an *unplaced* transceiver with a
provisional mid, which :meth:`TransceiverTable.place` gives the next new m-line of its kind
the client offers (the server asks for it with LiveKit's ``MediaSectionsRequirement``).
"""

from __future__ import annotations

import enum
import secrets
from collections import OrderedDict
from typing import Callable, Sequence

import attrs

from sdp.codecs import MediaKind, subscriber_codecs
from sdp.errors import TransceiverInvariantError
from sdp.model import Codec, Direction


class TransceiverState(enum.Enum):
    ACTIVE = "active"          # carrying a track: offered sendonly
    IDLE = "idle"              # negotiated, no track: offered inactive, reusable
    STOPPING = "stopping"      # stopped locally: offered with port 0, answer pending
    RECYCLABLE = "recyclable"  # the answer rejecting it was applied: slot may be reused

    @property
    def live(self) -> bool:
        """Whether the m-line has a non-zero port in an offer."""
        return self in (TransceiverState.ACTIVE, TransceiverState.IDLE)


@attrs.define
class Transceiver:
    mid: str
    kind: MediaKind
    state: TransceiverState = TransceiverState.IDLE
    ssrc: int | None = None
    rtx_ssrc: int | None = None
    # What we offer on this m-line; stable for its life so PTs never change.
    codecs: tuple[Codec, ...] = ()
    # What the last applied answer chose (a subset of ``codecs``).
    negotiated_codecs: tuple[Codec, ...] = ()
    extensions: dict[int, str] = attrs.field(factory=dict)
    track_id: str | None = None
    stream_id: str | None = None
    # True once an offer carried this stopped m-line with port 0: only the
    # answer to such an offer makes it recyclable.
    stop_offered: bool = False
    # Single-PC mode: False until the client offered an m-line for it (its mid is provisional).
    placed: bool = True

    @property
    def direction(self) -> Direction:
        if self.kind is MediaKind.APPLICATION:
            return Direction.SENDRECV
        return Direction.SENDONLY if self.state is TransceiverState.ACTIVE else Direction.INACTIVE

    @property
    def payload_types(self) -> tuple[int, ...]:
        return tuple(c.payload_type for c in self.codecs)


@attrs.frozen
class CachedTransceiver:
    """What a subscription to a track had negotiated, kept for when it resumes."""

    mid: str
    kind: MediaKind
    ssrc: int | None
    rtx_ssrc: int | None
    codecs: tuple[Codec, ...]
    negotiated_codecs: tuple[Codec, ...] = ()
    # The msid stream the peer knows the m-line by (None: unknown, the line is offered inactive).
    stream_id: str | None = None


class TransceiverCache:
    """Track id → the transceiver state it last used; bounded, oldest evicted first."""

    def __init__(self, max_entries: int = 1024) -> None:
        self._entries: OrderedDict[str, CachedTransceiver] = OrderedDict()
        self._max_entries = max_entries

    def put(self, track_id: str, state: CachedTransceiver) -> None:
        self._entries.pop(track_id, None)
        self._entries[track_id] = state
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def take(self, track_id: str) -> CachedTransceiver | None:
        return self._entries.pop(track_id, None)

    def peek(self, track_id: str) -> CachedTransceiver | None:
        return self._entries.get(track_id)

    def holding(self, mid: str) -> tuple[str, CachedTransceiver] | None:
        """The track id whose entry holds ``mid``, and the entry (None if none does)."""
        for track_id, entry in self._entries.items():
            if entry.mid == mid:
                return track_id, entry
        return None

    def discard_mid(self, mid: str) -> None:
        """Forget entries pointing at ``mid`` (it was given to another track or stopped)."""
        for track_id in [t for t, c in self._entries.items() if c.mid == mid]:
            del self._entries[track_id]

    def rename_mid(self, old: str, new: str) -> None:
        """Entries pointing at ``old`` point at ``new`` (an unplaced m-line got its mid)."""
        for track_id, entry in self._entries.items():
            if entry.mid == old:
                self._entries[track_id] = attrs.evolve(entry, mid=new)

    def mids(self) -> set[str]:
        return {c.mid for c in self._entries.values()}

    def ssrcs(self) -> set[int]:
        return {s for c in self._entries.values() for s in (c.ssrc, c.rtx_ssrc) if s is not None}

    def __contains__(self, track_id: object) -> bool:
        return track_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)


def _random_ssrc() -> int:
    return secrets.randbits(32) or 1


#: Provisional mids of unplaced transceivers start with this; no client mid does (JSEP mids
#: are tokens the offerer picks; browsers and libwebrtc use decimal numbers).
UNPLACED_MID_PREFIX = "unplaced-"


class TransceiverTable:
    """Ordered transceivers of one subscriber peer connection (or, with ``client_offers``, of
    the receive-only m-lines of a single peer connection the client offers)."""

    def __init__(self, cache: TransceiverCache | None = None,
                 ssrc_source: Callable[[], int] = _random_ssrc, *, client_offers: bool = False) -> None:
        self._slots: list[Transceiver] = []
        self.cache = cache if cache is not None else TransceiverCache()
        self._ssrc_source = ssrc_source
        self._next_mid = 0
        self.client_offers = client_offers

    # --- queries ---

    @property
    def transceivers(self) -> tuple[Transceiver, ...]:
        return tuple(self._slots)

    def get(self, mid: str) -> Transceiver | None:
        for t in self._slots:
            if t.mid == mid:
                return t
        return None

    def find_by_track(self, track_id: str) -> Transceiver | None:
        for t in self._slots:
            if t.track_id == track_id and t.state is TransceiverState.ACTIVE:
                return t
        return None

    def check_invariant(self) -> None:
        """Raise if two live m-lines would carry one track id."""
        seen: set[str] = set()
        for t in self._slots:
            if t.state.live and t.track_id is not None:
                if t.track_id in seen:
                    raise TransceiverInvariantError(f"track {t.track_id} on two live m-lines")
                seen.add(t.track_id)
            if t.state is not TransceiverState.ACTIVE and t.track_id is not None:
                raise TransceiverInvariantError(f"mid {t.mid} is {t.state.value} but has a track")

    @property
    def next_mid(self) -> int:
        """The counter new mids are drawn from (mids are never reused)."""
        return self._next_mid

    # --- mutations ---

    def restore_layout(self, lines: Sequence[tuple[str, MediaKind, bool]], next_mid: int) -> None:
        """Recreate another table's m-lines — (mid, kind, live) in m-line order — so this table's
        offers continue that peer connection: live lines come back idle, dead ones recyclable,
        the data channel keeps its place, and new mids start where the other table's would.
        Only for a table that holds nothing but its data channel (a peer connection moving
        to another node); raises ValueError for a layout it cannot reproduce."""
        data = [t for t in self._slots if t.kind is MediaKind.APPLICATION]
        if len(data) != len(self._slots) or len(data) > 1 or self.cache:
            raise ValueError("a layout is restored into a fresh table only")
        slots: list[Transceiver] = []
        mids: set[str] = set()
        for mid, kind, live in lines:
            if not mid or mid in mids:
                raise ValueError(f"m-line {mid!r} is empty or repeated")
            mids.add(mid)
            if kind is MediaKind.APPLICATION:
                if not data or not live or any(t.kind is MediaKind.APPLICATION for t in slots):
                    raise ValueError("the data channel m-line does not match")
                data[0].mid = mid
                slots.append(data[0])
                continue
            state = TransceiverState.IDLE if live else TransceiverState.RECYCLABLE
            slots.append(Transceiver(mid, kind, state, codecs=tuple(subscriber_codecs(kind))))
        if data and data[0] not in slots:
            raise ValueError("the layout has no data channel m-line")
        self._slots = slots
        numeric = [int(mid) for mid in mids if mid.isdigit()]
        self._next_mid = max([next_mid, *(n + 1 for n in numeric)])

    def add_data_channel(self) -> Transceiver:
        """The ``m=application`` line; at most one, it stays for the connection's life."""
        for t in self._slots:
            if t.kind is MediaKind.APPLICATION and t.state.live:
                return t
        t = Transceiver(self._new_mid(), MediaKind.APPLICATION, TransceiverState.IDLE)
        self._place(t)
        return t

    def bind(self, track_id: str, kind: MediaKind, stream_id: str,
             codecs: Sequence[Codec] | None = None) -> Transceiver:
        """Put ``track_id`` on an m-line: cached one, idle one, recycled slot or a new one."""
        if kind is MediaKind.APPLICATION:
            raise ValueError("data channels are not bound to tracks")
        if self.find_by_track(track_id) is not None:
            raise TransceiverInvariantError(f"track {track_id} is already bound")

        cached = self.cache.take(track_id)
        if cached is not None:
            t = self.get(cached.mid)
            if t is not None and t.state is TransceiverState.IDLE and t.kind is kind:
                t.ssrc, t.rtx_ssrc = cached.ssrc, cached.rtx_ssrc
                t.codecs, t.negotiated_codecs = cached.codecs, cached.negotiated_codecs
                return self._activate(t, track_id, stream_id)

        wanted = tuple(codecs) if codecs is not None else tuple(subscriber_codecs(kind))
        idle = [t for t in self._slots if t.state is TransceiverState.IDLE and t.kind is kind
                and _offers_all(t.codecs, wanted)]
        if idle:
            # Leave transceivers a cached subscription may come back to for last.
            reserved = self.cache.mids()
            t = next((t for t in idle if t.mid not in reserved), idle[0])
            self.cache.discard_mid(t.mid)
            # A different track gets fresh SSRCs so receivers never splice two
            # tracks into one stream; the mid and payload types stay.
            t.ssrc, t.rtx_ssrc = self._new_ssrcs(kind)
            return self._activate(t, track_id, stream_id)

        if self.client_offers:
            # The client owns the m-lines: this one waits for the client to offer it (place).
            t = Transceiver(UNPLACED_MID_PREFIX + self._new_mid(), kind, TransceiverState.IDLE,
                            codecs=wanted, placed=False)
        else:
            t = Transceiver(self._new_mid(), kind, TransceiverState.IDLE, codecs=wanted)
        t.ssrc, t.rtx_ssrc = self._new_ssrcs(kind)
        self._place(t)
        return self._activate(t, track_id, stream_id)

    # --- single-PC mode: the client's m-lines ---

    def unplaced(self) -> list[Transceiver]:
        """Transceivers still waiting for an m-line from the client, in table order."""
        return [t for t in self._slots if not t.placed and t.state.live]

    def offered_line(self, mid: str, kind: MediaKind, codecs: Sequence[Codec],
                     extensions: dict[int, str]) -> Transceiver:
        """A receive-only m-line the client offers (single-PC mode): the transceiver already
        on ``mid``; else an unplaced one of ``kind`` takes it; else a new idle one. Its codecs
        and extension ids are the client's (the answer takes its payload types and ids)."""
        if not self.client_offers:
            raise ValueError("only a table of client-offered m-lines takes offered lines")
        if mid.startswith(UNPLACED_MID_PREFIX):
            raise TransceiverInvariantError(f"mid {mid!r} collides with the provisional mids")
        t = self.get(mid)
        if t is None:
            waiting = next((u for u in self.unplaced() if u.kind is kind), None)
            if waiting is not None:
                self.place(waiting.mid, mid)
                t = waiting
            else:
                t = Transceiver(mid, kind, TransceiverState.IDLE)
                self._place(t)
        elif t.kind is not kind:
            raise TransceiverInvariantError(f"m-line {mid} changed kind from {t.kind.value} to {kind.value}")
        if t.state is TransceiverState.STOPPING or t.state is TransceiverState.RECYCLABLE:
            # The client offers a mid again that it had stopped: JSEP never reuses a mid, so
            # this is a new line under an old name; start it idle.
            t.state = TransceiverState.IDLE
            t.track_id = t.stream_id = None
        t.codecs = t.negotiated_codecs = tuple(codecs)
        t.extensions = dict(extensions)
        return t

    def place(self, provisional: str, mid: str) -> None:
        """The unplaced transceiver ``provisional`` is the client's m-line ``mid`` from now on
        (cache entries follow it)."""
        t = self.get(provisional)
        if t is None or t.placed:
            raise KeyError(provisional)
        if self.get(mid) is not None:
            raise TransceiverInvariantError(f"mid {mid} is already in the table")
        t.mid = mid
        t.placed = True
        self.cache.rename_mid(provisional, mid)

    def unbind(self, track_id: str, cache: bool = False) -> Transceiver:
        """Take ``track_id`` off its m-line (now idle); ``cache`` keeps it for a resume."""
        t = self.find_by_track(track_id)
        if t is None:
            raise KeyError(track_id)
        if cache:
            self.cache.put(track_id, CachedTransceiver(
                t.mid, t.kind, t.ssrc, t.rtx_ssrc, t.codecs, t.negotiated_codecs, t.stream_id))
        t.track_id = t.stream_id = None
        t.state = TransceiverState.IDLE
        return t

    def stop(self, mid: str) -> Transceiver:
        """Stop an m-line: the next offer gives it port 0 (JSEP §4.2.1 stop())."""
        t = self.get(mid)
        if t is None:
            raise KeyError(mid)
        if not t.state.live:
            return t
        t.track_id = t.stream_id = None
        t.state = TransceiverState.STOPPING
        t.stop_offered = False
        self.cache.discard_mid(mid)
        return t

    def held(self, t: Transceiver) -> tuple[str, CachedTransceiver] | None:
        """The track an idle m-line is held for and its cache entry, if the entry can be
        offered as the peer last saw it (same kind, known SSRC and msid stream)."""
        if t.state is not TransceiverState.IDLE or t.kind is MediaKind.APPLICATION:
            return None
        holding = self.cache.holding(t.mid)
        if holding is None:
            return None
        entry = holding[1]
        if entry.kind is not t.kind or entry.ssrc is None or not entry.stream_id:
            return None
        return holding

    def mark_offered(self) -> None:
        """Called when an offer is made: stopped m-lines in it are now offered with port 0."""
        for t in self._slots:
            if t.state is TransceiverState.STOPPING:
                t.stop_offered = True

    def mark_rejected(self, mid: str, offered_stopped: bool) -> str | None:
        """The applied answer has port 0 for ``mid``; returns the track id it lost, if any."""
        t = self.get(mid)
        if t is None:
            return None
        if t.state is TransceiverState.STOPPING:
            if offered_stopped:
                t.state = TransceiverState.RECYCLABLE
            return None
        if t.state.live:
            # The peer refused a live m-line: it is stopped for good (RFC 3264 §6).
            lost = t.track_id
            t.track_id = t.stream_id = None
            t.state = TransceiverState.RECYCLABLE
            self.cache.discard_mid(mid)
            return lost
        return None

    # --- helpers ---

    def _activate(self, t: Transceiver, track_id: str, stream_id: str) -> Transceiver:
        t.track_id, t.stream_id = track_id, stream_id
        t.state = TransceiverState.ACTIVE
        self.check_invariant()
        return t

    def _place(self, t: Transceiver) -> None:
        for i, slot in enumerate(self._slots):
            if slot.state is TransceiverState.RECYCLABLE:
                self._slots[i] = t
                return
        self._slots.append(t)

    def _new_mid(self) -> str:
        # Mids are never reused, even for recycled slots (JSEP §5.2.2).
        while True:
            mid = str(self._next_mid)
            self._next_mid += 1
            if self.get(mid) is None:
                return mid

    def _used_ssrcs(self) -> set[int]:
        used = self.cache.ssrcs()
        for t in self._slots:
            used.update(s for s in (t.ssrc, t.rtx_ssrc) if s is not None)
        return used

    def _new_ssrcs(self, kind: MediaKind) -> tuple[int, int | None]:
        used = self._used_ssrcs()
        fresh: list[int] = []
        for _ in range(2 if kind is MediaKind.VIDEO else 1):
            ssrc = self._ssrc_source()
            for _attempt in range(1000):
                if ssrc not in used and ssrc not in fresh and 0 < ssrc <= 0xFFFFFFFF:
                    break
                ssrc = self._ssrc_source()
            else:
                raise TransceiverInvariantError("SSRC source keeps returning used values")
            fresh.append(ssrc)
        return fresh[0], fresh[1] if len(fresh) > 1 else None


def _offers_all(offered: Sequence[Codec], wanted: Sequence[Codec]) -> bool:
    """An idle m-line can carry a track only if it already offers the track's codecs."""
    names = {c.name.lower() for c in offered}
    return all(c.name.lower() in names for c in wanted)

