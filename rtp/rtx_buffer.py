"""Sent-packet history for answering NACKs (RFC 4588 retransmission).

A power-of-two ring indexed by ``seq & mask``. Each slot also remembers the
*extended* sequence number it holds, and lookups are judged against the newest
extended number stored, so a slot still holding a packet from one or more
ring laps (or 16-bit wraps) ago never answers for a different packet.
"""

from __future__ import annotations

from typing import Optional

_SEQ_MOD = 1 << 16
_SEQ_HALF = 1 << 15


class RetransmissionBuffer:
    """Holds the last ``capacity`` sequence numbers' packets (capacity rounded up to a power of two)."""

    __slots__ = ("capacity", "_mask", "_packets", "_extended", "_newest")

    def __init__(self, capacity: int) -> None:
        if not 1 <= capacity <= 1 << 15:
            # Beyond half the sequence space "older" and "newer" stop being decidable.
            raise ValueError("capacity must be 1..32768")
        size = 1
        while size < capacity:
            size <<= 1
        self.capacity = size
        self._mask = size - 1
        self._packets: list[Optional[bytes]] = [None] * size
        self._extended: list[int] = [-1] * size
        self._newest: Optional[int] = None

    def _extend(self, seq: int) -> int:
        newest = self._newest
        d = (seq - newest) & 0xFFFF  # type: ignore[operator]
        if d >= _SEQ_HALF:
            d -= _SEQ_MOD
        return newest + d  # type: ignore[operator]

    def put(self, seq: int, packet: bytes) -> bool:
        """Store ``packet`` as sequence number ``seq``; False when it is too old to keep.

        A jump forward of more than the capacity implicitly forgets everything
        older, because lookups outside the window are refused.
        """
        if self._newest is None:
            # Start the extended line one full cycle up so it never goes negative.
            ext = _SEQ_MOD + (seq & 0xFFFF)
            self._newest = ext
        else:
            ext = self._extend(seq)
            if ext > self._newest:
                self._newest = ext
            elif self._newest - ext >= self.capacity:
                return False
        slot = ext & self._mask
        self._packets[slot] = packet
        self._extended[slot] = ext
        return True

    def get(self, seq: int) -> Optional[bytes]:
        """The packet stored for ``seq`` if it is still in the window, else None."""
        if self._newest is None:
            return None
        ext = self._extend(seq)
        if ext > self._newest or self._newest - ext >= self.capacity:
            return None
        slot = ext & self._mask
        if self._extended[slot] != ext:
            return None
        return self._packets[slot]

    def holds(self, seq: int) -> bool:
        """Whether the packet of ``seq`` is stored (a copy arriving now is a duplicate)."""
        newest = self._newest
        if newest is None:
            return False
        d = (seq - newest) & 0xFFFF
        if d and d < _SEQ_HALF:
            return False  # newer than anything stored: the common case, decided at once
        ext = newest + d - (_SEQ_MOD if d else 0)
        return newest - ext < self.capacity and self._extended[ext & self._mask] == ext

    def clear(self) -> None:
        self._packets = [None] * self.capacity
        self._extended = [-1] * self.capacity
        self._newest = None
