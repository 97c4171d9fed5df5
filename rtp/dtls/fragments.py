"""Handshake message fragmentation (outgoing) and reassembly (incoming), RFC 6347 §4.2.3.

The reassembler keeps fragments as received instead of pre-allocating a buffer of the
advertised message length, so memory grows with bytes actually received, and it is
capped in messages ahead, fragments per message and total bytes.
"""

from __future__ import annotations

from rtp.dtls.handshake_messages import encode_handshake_header

#: Largest handshake message we reassemble (a certificate chain of a few KB is typical).
MAX_MESSAGE_LENGTH = 1 << 16
#: Messages beyond the next expected one that we buffer (a whole flight is at most 5).
MAX_MESSAGES_AHEAD = 8
MAX_FRAGMENTS_PER_MESSAGE = 64
MAX_BUFFERED_BYTES = 2 * MAX_MESSAGE_LENGTH


def fragment_message(msg_type: int, message_seq: int, body: bytes, max_fragment: int) -> list[bytes]:
    """Handshake header + fragment byte strings, each carrying at most ``max_fragment`` body bytes."""
    if max_fragment < 1:
        raise ValueError("max_fragment must be positive")
    length = len(body)
    if length == 0:
        return [encode_handshake_header(msg_type, 0, message_seq, 0, 0)]
    out = []
    for offset in range(0, length, max_fragment):
        chunk = body[offset : offset + max_fragment]
        out.append(encode_handshake_header(msg_type, length, message_seq, offset, len(chunk)) + chunk)
    return out


class _PartialMessage:
    __slots__ = ("msg_type", "length", "epoch", "fragments", "size")

    def __init__(self, msg_type: int, length: int, epoch: int) -> None:
        self.msg_type = msg_type
        self.length = length
        self.epoch = epoch
        self.fragments: dict[int, bytes] = {}
        self.size = 0

    def body(self) -> bytes | None:
        """The whole message once the fragments cover [0, length), else None."""
        covered = 0
        for offset in sorted(self.fragments):
            if offset > covered:
                return None
            covered = max(covered, offset + len(self.fragments[offset]))
        if covered < self.length:
            return None
        out = bytearray(self.length)
        for offset, data in self.fragments.items():
            out[offset : offset + len(data)] = data
        return bytes(out)


class FragmentVerdict:
    """What happened to a fragment given to :meth:`HandshakeReassembler.add`."""

    BUFFERED = "buffered"
    OLD = "old"  # belongs to a message already processed: the peer is retransmitting
    DROPPED = "dropped"  # too far ahead, inconsistent or over a limit


class HandshakeReassembler:
    def __init__(self, next_seq: int = 0) -> None:
        self.next_seq = next_seq
        self._messages: dict[int, _PartialMessage] = {}
        self._buffered = 0

    @property
    def buffered_bytes(self) -> int:
        return self._buffered

    @property
    def buffered_messages(self) -> int:
        return len(self._messages)

    def add(self, msg_type: int, length: int, message_seq: int, offset: int, data: bytes, epoch: int) -> str:
        if message_seq < self.next_seq:
            return FragmentVerdict.OLD
        if message_seq >= self.next_seq + MAX_MESSAGES_AHEAD or length > MAX_MESSAGE_LENGTH:
            return FragmentVerdict.DROPPED
        partial = self._messages.get(message_seq)
        if partial is None:
            partial = self._messages[message_seq] = _PartialMessage(msg_type, length, epoch)
        elif partial.msg_type != msg_type or partial.length != length or partial.epoch != epoch:
            return FragmentVerdict.DROPPED
        previous = partial.fragments.get(offset)
        if previous is not None and len(previous) >= len(data):
            return FragmentVerdict.BUFFERED  # a duplicate: nothing new
        if len(partial.fragments) >= MAX_FRAGMENTS_PER_MESSAGE and previous is None:
            return FragmentVerdict.DROPPED
        growth = len(data) - (len(previous) if previous is not None else 0)
        if self._buffered + growth > MAX_BUFFERED_BYTES:
            return FragmentVerdict.DROPPED
        partial.fragments[offset] = data
        partial.size += growth
        self._buffered += growth
        return FragmentVerdict.BUFFERED

    def pop(self) -> tuple[int, int, int, bytes] | None:
        """The next in-order complete message as (msg_type, message_seq, epoch, body), or None."""
        partial = self._messages.get(self.next_seq)
        if partial is None:
            return None
        body = partial.body()
        if body is None:
            return None
        del self._messages[self.next_seq]
        self._buffered -= partial.size
        seq = self.next_seq
        self.next_seq += 1
        return partial.msg_type, seq, partial.epoch, body

    def clear(self) -> None:
        self._messages.clear()
        self._buffered = 0
