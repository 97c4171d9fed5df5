"""Bounds-checked big-endian reader shared by the DTLS codecs.

Every read checks the remaining length first, so a short or lying buffer raises
:class:`DtlsParseError` and never IndexError/struct.error; vectors are sliced from the
input, so nothing is allocated from a length field before it is known to be present.
"""

from __future__ import annotations

from rtp.dtls.errors import DtlsParseError


class Reader:
    __slots__ = ("_data", "_pos", "_end")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0
        self._end = len(data)

    @property
    def remaining(self) -> int:
        return self._end - self._pos

    def _take(self, n: int) -> bytes:
        if n < 0 or self._pos + n > self._end:
            raise DtlsParseError(f"need {n} bytes, {self._end - self._pos} left")
        chunk = self._data[self._pos : self._pos + n]
        self._pos += n
        return bytes(chunk)

    def u8(self) -> int:
        return self._take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self._take(2), "big")

    def u24(self) -> int:
        return int.from_bytes(self._take(3), "big")

    def raw(self, n: int) -> bytes:
        return self._take(n)

    def rest(self) -> bytes:
        return self._take(self._end - self._pos)

    def vec8(self, minimum: int = 0, maximum: int = 0xFF) -> bytes:
        return self._bounded(self.u8(), minimum, maximum)

    def vec16(self, minimum: int = 0, maximum: int = 0xFFFF) -> bytes:
        return self._bounded(self.u16(), minimum, maximum)

    def vec24(self, minimum: int = 0, maximum: int = 0xFFFFFF) -> bytes:
        return self._bounded(self.u24(), minimum, maximum)

    def _bounded(self, n: int, minimum: int, maximum: int) -> bytes:
        if not minimum <= n <= maximum:
            raise DtlsParseError(f"vector length {n} outside [{minimum}, {maximum}]")
        return self._take(n)

    def expect_end(self) -> None:
        if self._pos != self._end:
            raise DtlsParseError(f"{self._end - self._pos} trailing bytes")


def u16_list(data: bytes) -> list[int]:
    """A vector body of uint16 values (cipher suites, groups, schemes)."""
    if len(data) % 2:
        raise DtlsParseError("odd length for a list of uint16")
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


def vec8(data: bytes) -> bytes:
    if len(data) > 0xFF:
        raise ValueError("vector too long for an 8-bit length")
    return bytes((len(data),)) + data


def vec16(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise ValueError("vector too long for a 16-bit length")
    return len(data).to_bytes(2, "big") + data


def vec24(data: bytes) -> bytes:
    if len(data) > 0xFFFFFF:
        raise ValueError("vector too long for a 24-bit length")
    return len(data).to_bytes(3, "big") + data


def u16_vector(values: "list[int] | tuple[int, ...]") -> bytes:
    return vec16(b"".join(int(v).to_bytes(2, "big") for v in values))
