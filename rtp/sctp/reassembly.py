"""Inbound side of an association: which TSNs arrived, and turning DATA chunks into messages.

:class:`TsnTracker` answers "is this new?" and builds the SACK (cumulative TSN,
gap blocks, duplicates). :class:`Reassembler` rebuilds fragmented messages per
stream and releases ordered messages in stream-sequence order, unordered ones as
soon as they are whole.

Every operation costs a bounded amount of work per chunk, whatever order or shape
of chunks the peer sends: received TSNs above the cumulative point are kept as
sorted runs, and the fragments of each message as runs of consecutive TSNs whose
first/last TSN, size and B/E ends are known without walking the fragments. A
message's fragments are walked once, when it is whole. Memory is bounded by the
caller's receive window (:meth:`Reassembler.admit`), by a chunk count overall and
per stream, and by ``max_message_size`` and a fragment count per message, never by
a size the peer announces.
"""

from __future__ import annotations

import enum
import heapq
import itertools
from bisect import bisect_right
from typing import Optional

import attrs

from rtp.sctp.chunks import FLAG_BEGIN, FLAG_END, FLAG_UNORDERED, DataChunk
from rtp.sctp.errors import SctpProtocolError
from rtp.sctp.serial import MASK16, MASK32, TsnUnwrapper, ssn_ge, tsn_diff, tsn_gt

# A SACK must fit in one packet next to nothing else; 100 blocks is 400 bytes.
MAX_GAP_BLOCKS = 100
MAX_DUPLICATES_REPORTED = 32
# Gap block offsets are 16 bits (RFC 9260 §3.3.4).
_MAX_GAP_OFFSET = 0xFFFF

# Buffered chunks (fragments plus whole ordered messages waiting for an earlier SSN), over
# all streams and per stream. The per-stream share keeps one stream's backlog from taking
# the whole buffer; the next in-order TSN is exempt from it (see Reassembler.admit).
MAX_BUFFERED_CHUNKS = 1 << 15
MAX_BUFFERED_CHUNKS_PER_STREAM = 1 << 13
# A sender fragments for the path MTU (about 1,200 bytes a piece in WebRTC stacks); pieces
# averaging under 64 bytes are not that, and each one costs far more memory than its payload.
MIN_AVERAGE_FRAGMENT = 64
MIN_FRAGMENTS_PER_MESSAGE = 64


class TsnTracker:
    """The TSNs received so far: a cumulative point plus sorted, disjoint runs above it.

    TSNs are kept unwrapped (plain ints, see :class:`TsnUnwrapper`) relative to the
    cumulative point, so runs stay in order across the 32-bit wrap.
    """

    def __init__(self, peer_initial_tsn: int) -> None:
        # Unwrapped: the first TSN the peer will send is peer_initial_tsn itself.
        self._cum = peer_initial_tsn - 1
        # Runs of received TSNs above the cumulative point: [starts[i], ends[i]], sorted,
        # separated by at least one missing TSN, all starting at or after _cum + 2.
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._duplicates: list[int] = []

    @property
    def cumulative_tsn(self) -> int:
        return self._cum & MASK32

    def _unwrap_above(self, tsn: int) -> Optional[int]:
        """The unwrapped TSN if it is after the cumulative point, else None."""
        cum = self._cum & MASK32
        if not tsn_gt(tsn, cum):
            return None
        return self._cum + tsn_diff(tsn, cum)

    def _run_index(self, value: int) -> int:
        """Index of the run that starts at or before value, or -1."""
        return bisect_right(self._starts, value) - 1

    def is_duplicate(self, tsn: int) -> bool:
        value = self._unwrap_above(tsn)
        if value is None:
            return True
        i = self._run_index(value)
        return i >= 0 and self._ends[i] >= value

    def note_duplicate(self, tsn: int) -> None:
        if len(self._duplicates) < MAX_DUPLICATES_REPORTED:
            self._duplicates.append(tsn)

    def distance(self, tsn: int) -> int:
        return tsn_diff(tsn, self._cum & MASK32)

    def add(self, tsn: int) -> None:
        value = self._unwrap_above(tsn)
        if value is None:
            return
        starts, ends = self._starts, self._ends
        if value == self._cum + 1:
            self._cum = value
            self._advance()
            return
        i = self._run_index(value)
        if i >= 0 and ends[i] >= value:
            return
        joins_left = i >= 0 and ends[i] == value - 1
        joins_right = i + 1 < len(starts) and starts[i + 1] == value + 1
        if joins_left and joins_right:
            ends[i] = ends[i + 1]
            del starts[i + 1], ends[i + 1]
        elif joins_left:
            ends[i] = value
        elif joins_right:
            starts[i + 1] = value
        else:
            starts.insert(i + 1, value)
            ends.insert(i + 1, value)

    def forward_to(self, new_cumulative_tsn: int) -> None:
        """FORWARD-TSN: everything up to new_cumulative_tsn counts as received (RFC 3758 §3.6)."""
        value = self._unwrap_above(new_cumulative_tsn)
        if value is None:
            return
        starts, ends = self._starts, self._ends
        covered = self._run_index(value) + 1
        if covered:
            # A run reaching past the new point carries the cumulative point with it.
            value = max(value, ends[covered - 1])
            del starts[:covered], ends[:covered]
        self._cum = value
        self._advance()

    def _advance(self) -> None:
        starts = self._starts
        if starts and starts[0] == self._cum + 1:
            self._cum = self._ends[0]
            del starts[0], self._ends[0]

    @property
    def has_gaps(self) -> bool:
        return bool(self._starts)

    def gap_blocks(self) -> list[tuple[int, int]]:
        """Up to MAX_GAP_BLOCKS (start, end) offsets from the cumulative TSN, lowest first."""
        cum = self._cum
        count = min(MAX_GAP_BLOCKS, bisect_right(self._starts, cum + _MAX_GAP_OFFSET))
        starts, ends = self._starts[:count], self._ends[:count]
        return [(start - cum, min(end - cum, _MAX_GAP_OFFSET)) for start, end in zip(starts, ends)]

    def take_duplicates(self) -> list[int]:
        dups, self._duplicates = self._duplicates, []
        return dups


class Admission(enum.Enum):
    """Whether a new DATA chunk may be buffered; if not, it is dropped unacknowledged."""

    ACCEPT = "accept"
    NO_BUFFER = "no-buffer"  # the receive window or the overall chunk limit is full
    STREAM_FULL = "stream-full"  # its stream holds its share of buffered chunks


@attrs.define(slots=True, eq=False)
class _Run:
    """Fragments of one message with consecutive TSNs first..last (unwrapped), all present.

    Two runs never touch unless a message boundary (E before, B after) or a different
    message separates them, so a run that begins with B and ends with E is a whole message.
    """

    stream_id: int
    unordered: bool
    ssn: int
    ppid: int  # of the fragment at ``first``: the B fragment once the run begins
    first: int
    last: int
    size: int
    begins: bool
    ends: bool
    live: bool = True

    @property
    def count(self) -> int:
        return self.last - self.first + 1

    def same_message(self, stream_id: int, unordered: bool, ssn: int) -> bool:
        if stream_id != self.stream_id or unordered != self.unordered:
            return False
        # Unordered fragments carry no usable SSN; TSN adjacency alone ties them.
        return unordered or ssn == self.ssn


@attrs.define(slots=True, eq=False)
class _InboundStream:
    next_ssn: int = 0
    # Chunks this stream holds in the buffer: fragments plus ``ready`` messages.
    held: int = 0
    runs: set[_Run] = attrs.field(factory=set)
    # Whole ordered messages waiting for an earlier SSN: ssn -> (ppid, data).
    ready: dict[int, tuple[int, bytes]] = attrs.field(factory=dict)


Delivered = list[tuple[int, int, bytes]]  # (stream id, ppid, data)


class Reassembler:
    """Fragments in, whole messages out; refuses (by :meth:`admit`) what would overrun its bounds.

    :meth:`add` raises :class:`SctpProtocolError` for a message that can never be accepted
    (over ``max_message_size`` or ``max_fragments_per_message``); the association aborts.
    """

    def __init__(
        self,
        max_message_size: int,
        receive_window: Optional[int] = None,
        max_buffered_chunks: int = MAX_BUFFERED_CHUNKS,
        max_chunks_per_stream: int = MAX_BUFFERED_CHUNKS_PER_STREAM,
        max_fragments_per_message: Optional[int] = None,
    ) -> None:
        self.max_message_size = max_message_size
        self.receive_window = receive_window or max(1 << 20, 2 * max_message_size)
        self.max_buffered_chunks = max_buffered_chunks
        self.max_chunks_per_stream = max_chunks_per_stream
        self.max_fragments_per_message = max_fragments_per_message or min(
            max_buffered_chunks, max(MIN_FRAGMENTS_PER_MESSAGE, max_message_size // MIN_AVERAGE_FRAGMENT)
        )
        self.buffered_bytes = 0
        self.buffered_chunks = 0
        self._streams: dict[int, _InboundStream] = {}
        self._unwrapper = TsnUnwrapper()
        # Payload of every buffered fragment by unwrapped TSN (TSNs are unique across streams).
        self._fragments: dict[int, bytes] = {}
        self._run_by_first: dict[int, _Run] = {}
        self._run_by_last: dict[int, _Run] = {}
        # (first TSN, tie-breaker, run) for FORWARD-TSN to find the runs it abandons in
        # order. Entries go stale when a run dies or grows to the left; they are skipped
        # when popped and swept when they outnumber the live runs.
        self._by_start: list[tuple[int, int, _Run]] = []
        self._tiebreak = itertools.count()

    def _stream(self, stream_id: int) -> _InboundStream:
        stream = self._streams.get(stream_id)
        if stream is None:
            stream = self._streams[stream_id] = _InboundStream()
        return stream

    def admit(self, chunk: DataChunk, in_order: bool) -> Admission:
        """May this new chunk be buffered? ``in_order``: its TSN is the next cumulative one.

        The next in-order TSN is taken past the window (by up to one message) and past its
        stream's share, so neither can wedge the association shut; the overall chunk limit
        holds for every chunk.
        """
        if self.buffered_chunks >= self.max_buffered_chunks:
            return Admission.NO_BUFFER
        over_window = self.buffered_bytes + len(chunk.user_data) > self.receive_window
        if in_order:
            if over_window and self.buffered_bytes > self.receive_window + self.max_message_size:
                return Admission.NO_BUFFER
            return Admission.ACCEPT
        if over_window:
            return Admission.NO_BUFFER
        stream = self._streams.get(chunk.stream_id)
        if stream is not None and stream.held >= self.max_chunks_per_stream:
            return Admission.STREAM_FULL
        return Admission.ACCEPT

    def add(self, chunk: DataChunk) -> Delivered:
        """Take one new (non-duplicate) DATA chunk; return the messages it completes, in order."""
        stream = self._stream(chunk.stream_id)
        flags = chunk.flags
        unordered = bool(flags & FLAG_UNORDERED)
        if not unordered and not ssn_ge(chunk.stream_seq, stream.next_ssn):
            # Its message was already delivered or skipped by FORWARD-TSN.
            return []
        size = len(chunk.user_data)
        if flags & (FLAG_BEGIN | FLAG_END) == (FLAG_BEGIN | FLAG_END):
            if size > self.max_message_size:
                raise SctpProtocolError("message larger than max-message-size")
            return self._complete(stream, chunk.stream_id, unordered, chunk.stream_seq, chunk.ppid, chunk.user_data)
        tsn = self._unwrapper.unwrap(chunk.tsn)
        if tsn in self._fragments:
            return []
        stream_id, ssn = chunk.stream_id, chunk.stream_seq
        left = self._run_by_last.get(tsn - 1)
        if left is not None and (left.ends or flags & FLAG_BEGIN or not left.same_message(stream_id, unordered, ssn)):
            left = None
        right = self._run_by_first.get(tsn + 1)
        if right is not None and (
            right.begins or flags & FLAG_END or not right.same_message(stream_id, unordered, ssn)
        ):
            right = None
        total_size = size + (left.size if left else 0) + (right.size if right else 0)
        total_count = 1 + (left.count if left else 0) + (right.count if right else 0)
        # Refused before anything is stored: the caller aborts, the buffer stays consistent.
        if total_size > self.max_message_size:
            raise SctpProtocolError("message larger than max-message-size")
        if total_count > self.max_fragments_per_message:
            raise SctpProtocolError("message in more fragments than allowed")
        self._fragments[tsn] = chunk.user_data
        self.buffered_bytes += size
        self.buffered_chunks += 1
        stream.held += 1
        run = self._join(stream, chunk, unordered, tsn, left, right)
        run.size = total_size
        if run.begins and run.ends:
            return self._take(stream, run)
        return []

    def _join(
        self, stream: _InboundStream, chunk: DataChunk, unordered: bool, tsn: int,
        left: Optional[_Run], right: Optional[_Run],
    ) -> _Run:
        """Make the fragment at tsn part of a run, merging it with its neighbours; O(1)."""
        by_first, by_last = self._run_by_first, self._run_by_last
        if left is not None:
            del by_last[left.last]
            if right is not None:
                del by_first[right.first]
                right.live = False
                stream.runs.discard(right)
                left.last, left.ends = right.last, right.ends
            else:
                left.last, left.ends = tsn, bool(chunk.flags & FLAG_END)
            by_last[left.last] = left
            return left
        if right is not None:
            del by_first[right.first]
            right.first, right.begins, right.ppid = tsn, bool(chunk.flags & FLAG_BEGIN), chunk.ppid
            by_first[tsn] = right
            self._index_start(right)
            return right
        run = _Run(
            chunk.stream_id, unordered, chunk.stream_seq, chunk.ppid, tsn, tsn, 0,
            bool(chunk.flags & FLAG_BEGIN), bool(chunk.flags & FLAG_END),
        )
        by_first[tsn] = by_last[tsn] = run
        stream.runs.add(run)
        self._index_start(run)
        return run

    def _index_start(self, run: _Run) -> None:
        heap = self._by_start
        if len(heap) > 2 * len(self._run_by_first) + 64:
            heap[:] = [entry for entry in heap if entry[2].live and entry[2].first == entry[0]]
            heapq.heapify(heap)
        heapq.heappush(heap, (run.first, next(self._tiebreak), run))

    def _forget(self, stream: _InboundStream, run: _Run) -> list[bytes]:
        """Remove a run and its fragments from the buffer; returns their payloads in order."""
        fragments = self._fragments
        parts = [fragments.pop(tsn) for tsn in range(run.first, run.last + 1)]
        del self._run_by_first[run.first], self._run_by_last[run.last]
        run.live = False
        stream.runs.discard(run)
        count = len(parts)
        stream.held -= count
        self.buffered_chunks -= count
        self.buffered_bytes -= run.size
        return parts

    def _take(self, stream: _InboundStream, run: _Run) -> Delivered:
        data = b"".join(self._forget(stream, run))
        return self._complete(stream, run.stream_id, run.unordered, run.ssn, run.ppid, data)

    def _complete(
        self, stream: _InboundStream, stream_id: int, unordered: bool, ssn: int, ppid: int, data: bytes
    ) -> Delivered:
        if unordered:
            return [(stream_id, ppid, data)]
        if ssn != stream.next_ssn:
            if ssn not in stream.ready:
                stream.ready[ssn] = (ppid, data)
                self.buffered_bytes += len(data)
                self.buffered_chunks += 1
                stream.held += 1
            return []
        out = [(stream_id, ppid, data)]
        stream.next_ssn = (ssn + 1) & MASK16
        self._drain(stream, stream_id, out)
        return out

    def _release(self, stream: _InboundStream, stream_id: int, ssn: int, out: Delivered) -> None:
        ppid, data = stream.ready.pop(ssn)
        self.buffered_bytes -= len(data)
        self.buffered_chunks -= 1
        stream.held -= 1
        out.append((stream_id, ppid, data))

    def _drain(self, stream: _InboundStream, stream_id: int, out: Delivered) -> None:
        ready = stream.ready
        while stream.next_ssn in ready:
            self._release(stream, stream_id, stream.next_ssn, out)
            stream.next_ssn = (stream.next_ssn + 1) & MASK16

    def forward_tsn(self, new_cumulative_tsn: int, skipped: list[tuple[int, int]]) -> Delivered:
        """Drop fragments the peer abandoned and skip ordered SSNs (RFC 3758 §3.6).

        A run that starts at or before the new cumulative TSN is dropped whole: the sender
        abandons whole messages, so its later fragments can never complete it either. So is
        a run right after it that lacks its B fragment: the TSN before it will never be
        taken again.
        """
        limit = self._unwrapper.unwrap(new_cumulative_tsn)
        heap = self._by_start
        keep = None
        while heap and heap[0][0] <= limit + 1:
            entry = heapq.heappop(heap)
            first, _, run = entry
            if not run.live or run.first != first:
                continue
            if first <= limit or not run.begins:
                self._forget(self._streams[run.stream_id], run)
            else:
                keep = entry
        if keep is not None:
            heapq.heappush(heap, keep)
        out: Delivered = []
        for stream_id, ssn in skipped:
            stream = self._stream(stream_id)
            if not ssn_ge(ssn, stream.next_ssn):
                continue
            self._release_through(stream, stream_id, ssn, out)
            stream.next_ssn = (ssn + 1) & MASK16
            self._drain(stream, stream_id, out)
        return out

    def _release_through(self, stream: _InboundStream, stream_id: int, ssn: int, out: Delivered) -> None:
        """Deliver, in SSN order, the waiting messages from next_ssn up to ssn.

        Costs the smaller of the SSN distance and the number waiting, so a peer that skips
        one SSN at a time past a long queue pays a packet per step, not per queued message.
        """
        ready = stream.ready
        if not ready:
            return
        base = stream.next_ssn
        distance = (ssn - base) & MASK16
        if distance < len(ready):
            due = [s for s in ((base + i) & MASK16 for i in range(distance + 1)) if s in ready]
        else:
            due = sorted((s for s in ready if (s - base) & MASK16 <= distance), key=lambda s: (s - base) & MASK16)
        for s in due:
            self._release(stream, stream_id, s, out)

    def reset_stream(self, stream_id: int) -> None:
        """RFC 6525 incoming stream reset: the next message on it has SSN 0."""
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        for run in list(stream.runs):
            self._forget(stream, run)
        for _, data in stream.ready.values():
            self.buffered_bytes -= len(data)
            self.buffered_chunks -= 1

    def next_ssn(self, stream_id: int) -> Optional[int]:
        stream = self._streams.get(stream_id)
        return None if stream is None else stream.next_ssn


__all__ = ["Admission", "Delivered", "Reassembler", "TsnTracker"]
