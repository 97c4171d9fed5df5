"""A deterministic byte-level mutator: the engine that needs nothing but the standard library.

No coverage feedback: each input is a seed (or a splice of two) with a few random edits of
the kinds that break parsers — bit flips, boundary values in length fields, bytes inserted,
deleted, duplicated or cut off, dictionary tokens spliced in. Same PRNG seed, same inputs.
"""

from __future__ import annotations

import random
import struct
from typing import Callable, Iterator, Sequence

_INTERESTING_8 = (0, 1, 0x7F, 0x80, 0xFF)
_INTERESTING_16 = (0, 1, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF)
_INTERESTING_32 = (0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)


class Mutator:
    def __init__(self, seeds: Sequence[bytes], max_len: int, rng: random.Random,
                 dictionary: Sequence[bytes] = ()) -> None:
        self.seeds = [s[:max_len] for s in seeds] or [b""]
        self.max_len = max_len
        self.rng = rng
        self.dictionary = list(dictionary)
        self._edits: list[Callable[[bytearray], None]] = [
            self._flip_bit, self._set_byte, self._set_u16, self._set_u32, self._insert_bytes,
            self._delete_range, self._duplicate_range, self._truncate, self._splice, self._swap_ranges,
        ]
        if self.dictionary:
            self._edits += [self._insert_token, self._insert_token]

    def inputs(self, count: int) -> Iterator[bytes]:
        """The seeds first, then mutants, ``count`` in all."""
        for i in range(count):
            if i < len(self.seeds):
                yield self.seeds[i]
            else:
                yield self.mutant()

    def mutant(self) -> bytes:
        data = bytearray(self.rng.choice(self.seeds))
        for _ in range(1 + min(7, int(self.rng.expovariate(0.7)))):
            self.rng.choice(self._edits)(data)
        return bytes(data[: self.max_len])

    def _position(self, data: bytearray) -> int:
        return self.rng.randrange(len(data)) if data else 0

    def _flip_bit(self, data: bytearray) -> None:
        if data:
            data[self._position(data)] ^= 1 << self.rng.randrange(8)

    def _set_byte(self, data: bytearray) -> None:
        if data:
            value = self.rng.choice(_INTERESTING_8) if self.rng.random() < 0.5 else self.rng.randrange(256)
            data[self._position(data)] = value

    def _set_u16(self, data: bytearray) -> None:
        if len(data) >= 2:
            value = self.rng.choice(_INTERESTING_16 + (len(data), len(data) - 4, len(data) + 1))
            struct.pack_into("!H", data, self.rng.randrange(len(data) - 1), value & 0xFFFF)

    def _set_u32(self, data: bytearray) -> None:
        if len(data) >= 4:
            struct.pack_into("!I", data, self.rng.randrange(len(data) - 3), self.rng.choice(_INTERESTING_32))

    def _insert_bytes(self, data: bytearray) -> None:
        n = self.rng.choice((1, 1, 2, 4, 16, 200))
        fill = self.rng.choice((b"\x00", b"\xff", None))
        chunk = fill * n if fill is not None else self.rng.randbytes(n)
        data[self._position(data):self._position(data)] = chunk

    def _delete_range(self, data: bytearray) -> None:
        if data:
            start = self._position(data)
            del data[start : start + self.rng.choice((1, 2, 4, 8, 64))]

    def _duplicate_range(self, data: bytearray) -> None:
        if data:
            start = self._position(data)
            piece = data[start : start + self.rng.choice((1, 4, 16, 128))]
            at = self._position(data)
            data[at:at] = piece * self.rng.choice((1, 2, 8))

    def _truncate(self, data: bytearray) -> None:
        if data:
            del data[self._position(data):]

    def _splice(self, data: bytearray) -> None:
        other = self.rng.choice(self.seeds)
        if other:
            cut = self._position(data)
            data[cut:] = other[self.rng.randrange(len(other)):]

    def _swap_ranges(self, data: bytearray) -> None:
        if len(data) >= 4:
            a, b = sorted(self.rng.sample(range(len(data)), 2))
            n = min(self.rng.choice((1, 2, 4, 8)), b - a, len(data) - b)
            data[a : a + n], data[b : b + n] = data[b : b + n], data[a : a + n]

    def _insert_token(self, data: bytearray) -> None:
        at = self._position(data)
        data[at:at] = self.rng.choice(self.dictionary)
