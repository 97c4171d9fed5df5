"""Inbound side of an association: which TSNs arrived, and turning DATA chunks into messages.

:class:`TsnTracker` answers "is this new?" and builds the SACK (cumulative TSN,
gap blocks, duplicates). :class:`Reassembler` rebuilds fragmented messages per
stream and releases ordered messages in stream-sequence order, unordered ones as
soon as they are whole. Memory is bounded by the caller's receive window
(``buffered_bytes``) and by ``max_message_size`` per message, never by a size
the peer announces.
"""

from __future__ import annotations

from typing import Optional

import attrs

from rtp.sctp.chunks import FLAG_BEGIN, FLAG_END, FLAG_UNORDERED, DataChunk
from rtp.sctp.errors import SctpProtocolError
from rtp.sctp.serial import MASK16, MASK32, ssn_ge, ssn_gt, tsn_add, tsn_diff, tsn_ge, tsn_gt

# A SACK must fit in one packet next to nothing else; 100 blocks is 400 bytes.
MAX_GAP_BLOCKS = 100
MAX_DUPLICATES_REPORTED = 32


class TsnTracker:
    def __init__(self, peer_initial_tsn: int) -> None:
        self.cumulative_tsn = tsn_add(peer_initial_tsn, -1)
        self._above: set[int] = set()
        self._duplicates: list[int] = []

    def is_duplicate(self, tsn: int) -> bool:
        return not tsn_gt(tsn, self.cumulative_tsn) or tsn in self._above

    def note_duplicate(self, tsn: int) -> None:
        if len(self._duplicates) < MAX_DUPLICATES_REPORTED:
            self._duplicates.append(tsn)

    def distance(self, tsn: int) -> int:
        return tsn_diff(tsn, self.cumulative_tsn)

    def add(self, tsn: int) -> None:
        if tsn == tsn_add(self.cumulative_tsn, 1):
            self.cumulative_tsn = tsn
            self._advance()
        else:
            self._above.add(tsn)

    def forward_to(self, new_cumulative_tsn: int) -> None:
        """FORWARD-TSN: everything up to new_cumulative_tsn counts as received (RFC 3758 §3.6)."""
        if not tsn_gt(new_cumulative_tsn, self.cumulative_tsn):
            return
        self.cumulative_tsn = new_cumulative_tsn
        self._above = {t for t in self._above if tsn_gt(t, new_cumulative_tsn)}
        self._advance()

    def _advance(self) -> None:
        above = self._above
        if not above:
            return
        nxt = tsn_add(self.cumulative_tsn, 1)
        while nxt in above:
            above.discard(nxt)
            self.cumulative_tsn = nxt
            nxt = tsn_add(nxt, 1)

    @property
    def has_gaps(self) -> bool:
        return bool(self._above)

    def gap_blocks(self) -> list[tuple[int, int]]:
        cum = self.cumulative_tsn
        offsets = sorted(tsn_diff(t, cum) for t in self._above)
        blocks: list[tuple[int, int]] = []
        for off in offsets:
            if off > 0xFFFF:
                break
            if blocks and blocks[-1][1] + 1 == off:
                blocks[-1] = (blocks[-1][0], off)
            elif len(blocks) == MAX_GAP_BLOCKS:
                break
            else:
                blocks.append((off, off))
        return blocks

    def take_duplicates(self) -> list[int]:
        dups, self._duplicates = self._duplicates, []
        return dups


@attrs.define(slots=True)
class _InboundStream:
    next_ssn: int = 0
    fragments: dict[int, DataChunk] = attrs.field(factory=dict)
    # Whole ordered messages waiting for an earlier SSN: ssn -> (ppid, data).
    ready: dict[int, tuple[int, bytes]] = attrs.field(factory=dict)


Delivered = list[tuple[int, int, bytes]]  # (stream id, ppid, data)


class Reassembler:
    def __init__(self, max_message_size: int) -> None:
        self.max_message_size = max_message_size
        self.buffered_bytes = 0
        self.buffered_chunks = 0
        self._streams: dict[int, _InboundStream] = {}

    def _stream(self, stream_id: int) -> _InboundStream:
        stream = self._streams.get(stream_id)
        if stream is None:
            stream = self._streams[stream_id] = _InboundStream()
        return stream

    def add(self, chunk: DataChunk) -> Delivered:
        """Take one new (non-duplicate) DATA chunk; return the messages it completes, in order."""
        stream = self._stream(chunk.stream_id)
        flags = chunk.flags
        unordered = bool(flags & FLAG_UNORDERED)
        if not unordered and not ssn_ge(chunk.stream_seq, stream.next_ssn):
            # Its message was already delivered or skipped by FORWARD-TSN.
            return []
        if flags & (FLAG_BEGIN | FLAG_END) == (FLAG_BEGIN | FLAG_END):
            if len(chunk.user_data) > self.max_message_size:
                raise SctpProtocolError("message larger than max-message-size")
            return self._complete(stream, chunk.stream_id, unordered, chunk.stream_seq, chunk.ppid, chunk.user_data)
        stream.fragments[chunk.tsn] = chunk
        self.buffered_bytes += len(chunk.user_data)
        self.buffered_chunks += 1
        return self._try_assemble(stream, chunk)

    def _try_assemble(self, stream: _InboundStream, chunk: DataChunk) -> Delivered:
        frags = stream.fragments
        first = chunk.tsn
        size = len(chunk.user_data)
        cur = chunk
        # Fragments of one message carry consecutive TSNs (RFC 9260 §6.9).
        while not cur.flags & FLAG_BEGIN:
            prev = frags.get(tsn_add(first, -1))
            if prev is None or not self._same_message(prev, chunk):
                return []
            first = tsn_add(first, -1)
            size += len(prev.user_data)
            cur = prev
        last = chunk.tsn
        cur = chunk
        while not cur.flags & FLAG_END:
            if size > self.max_message_size:
                raise SctpProtocolError("message larger than max-message-size")
            nxt = frags.get(tsn_add(last, 1))
            if nxt is None or not self._same_message(nxt, chunk):
                return []
            last = tsn_add(last, 1)
            size += len(nxt.user_data)
            cur = nxt
        if size > self.max_message_size:
            raise SctpProtocolError("message larger than max-message-size")
        parts = []
        count = tsn_diff(last, first) + 1
        for i in range(count):
            part = frags.pop(tsn_add(first, i))
            parts.append(part.user_data)
        self.buffered_bytes -= size
        self.buffered_chunks -= count
        unordered = bool(chunk.flags & FLAG_UNORDERED)
        return self._complete(stream, chunk.stream_id, unordered, chunk.stream_seq, chunk.ppid, b"".join(parts))

    @staticmethod
    def _same_message(a: DataChunk, b: DataChunk) -> bool:
        unordered = a.flags & FLAG_UNORDERED
        if unordered != b.flags & FLAG_UNORDERED:
            return False
        return bool(unordered) or a.stream_seq == b.stream_seq

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
            return []
        out = [(stream_id, ppid, data)]
        stream.next_ssn = (ssn + 1) & MASK16
        self._drain(stream, stream_id, out)
        return out

    def _drain(self, stream: _InboundStream, stream_id: int, out: Delivered) -> None:
        ready = stream.ready
        while ready:
            item = ready.pop(stream.next_ssn, None)
            if item is None:
                return
            self.buffered_bytes -= len(item[1])
            self.buffered_chunks -= 1
            out.append((stream_id, item[0], item[1]))
            stream.next_ssn = (stream.next_ssn + 1) & MASK16

    def forward_tsn(self, new_cumulative_tsn: int, skipped: list[tuple[int, int]]) -> Delivered:
        """Drop fragments the peer abandoned and skip ordered SSNs (RFC 3758 §3.6)."""
        for stream in self._streams.values():
            stale = [t for t in stream.fragments if not tsn_gt(t, new_cumulative_tsn)]
            for t in stale:
                chunk = stream.fragments.pop(t)
                self.buffered_bytes -= len(chunk.user_data)
                self.buffered_chunks -= 1
        out: Delivered = []
        for stream_id, ssn in skipped:
            stream = self._streams.get(stream_id)
            if stream is None:
                stream = self._stream(stream_id)
            if not ssn_ge(ssn, stream.next_ssn):
                continue
            # Whole messages up to the skipped SSN are still delivered, in order.
            for ready_ssn in sorted(
                (s for s in stream.ready if not ssn_gt(s, ssn)), key=lambda s: (s - stream.next_ssn) & MASK16
            ):
                ppid, data = stream.ready.pop(ready_ssn)
                self.buffered_bytes -= len(data)
                self.buffered_chunks -= 1
                out.append((stream_id, ppid, data))
            stream.next_ssn = (ssn + 1) & MASK16
            self._drain(stream, stream_id, out)
        return out

    def reset_stream(self, stream_id: int) -> None:
        """RFC 6525 incoming stream reset: the next message on it has SSN 0."""
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        for chunk in stream.fragments.values():
            self.buffered_bytes -= len(chunk.user_data)
            self.buffered_chunks -= 1
        for _, data in stream.ready.values():
            self.buffered_bytes -= len(data)
            self.buffered_chunks -= 1

    def next_ssn(self, stream_id: int) -> Optional[int]:
        stream = self._streams.get(stream_id)
        return None if stream is None else stream.next_ssn


__all__ = ["TsnTracker", "Reassembler", "MASK32", "tsn_ge"]
