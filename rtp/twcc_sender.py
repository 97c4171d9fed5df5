"""The send side of transport-wide congestion control: our own sequence numbers and their history.

A subscriber's bandwidth can only be estimated from feedback about what *we* sent it, so every
RTP packet leaving on a subscriber transport (media of every track, RTX, padding probes) gets a
fresh transport-wide sequence number (draft-holmer-rmcat-transport-wide-cc-extensions-01) in the
element id the subscriber negotiated — never the publisher's number, which counts a different
link. `TransportSequencer.stamp` writes it into the packet's RFC 8285 block (in place of the
element the forwarder already renumbered, else into zeroed padding octets, else by growing the
block or adding one, as LiveKit adds the element when the publisher sent none), and notes the
send time and size in a ring of typed arrays: no object per packet.

`TransportSequencer.on_feedback` matches a transport-cc feedback packet (rtp.rtcp.TransportCc)
against that ring and gives one `PacketResult` per packet it covers that we still remember:
send time, size, arrival time on the receiver's clock (None: reported lost), probe cluster.

Sans-IO: packets and `now` in, stamped packets and results out.
"""

from __future__ import annotations

from array import array
from typing import NamedTuple, Optional

from rtp.packet import append_extension_element
from rtp.rtcp import TWCC_REFERENCE_UNIT_US, TransportCc

#: Packets remembered for matching feedback. Feedback comes every 50-100 ms, so this is about a
#: second at 20 Mbit/s, several at a camera's rates; 25 octets each (51 KB per subscriber
#: transport: 8192 made it 205 KB, more than the rest of a participant together). Power of two.
DEFAULT_HISTORY = 2048
#: Feedback about a seq further back than this from the newest sent is not ours to trust.
_MAX_BACK = 0x8000
_NO_CLUSTER = -1
#: TransportSequencer._state's slots (trio_sfu/native/fanout.c reads them by these numbers).
_NEXT, _PACKETS, _BYTES, _CLUSTER = range(4)


class PacketResult(NamedTuple):
    """What the feedback said about one packet we sent (times in seconds)."""

    sequence: int  # extended (never wraps)
    send_time: float  # our clock, when it was handed to the socket
    size: int  # octets of the RTP packet
    arrival: Optional[float]  # the receiver's clock; None when reported lost
    probe_cluster: int  # -1: not a probe


class TransportSequencer:
    """One subscriber transport's transport-wide sequence numbers and send history."""

    def __init__(self, ext_id: int, history: int = DEFAULT_HISTORY) -> None:
        if not 1 <= ext_id <= 255:
            raise ValueError(f"extension id {ext_id} outside 1..255")
        size = 1
        while size < history:
            size <<= 1
        self.ext_id = ext_id
        self._mask = size - 1
        self._seq = array("q", [-1]) * size
        self._sent_at = array("d", [0.0]) * size
        self._size = array("I", [0]) * size
        self._cluster = array("i", [_NO_CLUSTER]) * size
        self._reported = array("b", [0]) * size
        # next_sequence, packets_stamped, bytes_stamped, probe_cluster: in one typed array so a
        # compiled fan-out (trio_sfu/native) numbers from the same counts (the properties below).
        self._state = array("q", [0, 0, 0, _NO_CLUSTER])
        self._last_stamped: Optional[bytes] = None  # what `unstamp` may take back
        # Feedback's reference time unwraps against the previous one (24 bits of 64 ms).
        self._last_reference: Optional[int] = None
        self._reference_base = 0
        self.elements_added = 0
        self.unstampable = 0  # no room for the element (a malformed block, an id the form cannot carry)
        self.feedback_unknown = 0  # covered seqs we no longer (or never) remember

    @property
    def next_sequence(self) -> int:
        """Extended (never wraps); the wire carries its low 16 bits."""
        return self._state[_NEXT]

    @next_sequence.setter
    def next_sequence(self, value: int) -> None:
        self._state[_NEXT] = value

    @property
    def packets_stamped(self) -> int:
        return self._state[_PACKETS]

    @property
    def bytes_stamped(self) -> int:
        """Octets of the packets stamped (a probe cluster's sender paces by it)."""
        return self._state[_BYTES]

    @property
    def probe_cluster(self) -> int:
        """The probe cluster the packets stamped now belong to (the prober sets it around a burst)."""
        return self._state[_CLUSTER]

    @probe_cluster.setter
    def probe_cluster(self, value: int) -> None:
        self._state[_CLUSTER] = value

    # ---- per packet -----------------------------------------------------------------------

    def stamp(self, packet: bytes, now: float) -> bytes:
        """`packet` with the next transport-wide seq in our element, recorded as sent at `now`.
        A packet the element cannot be put into goes out unchanged and is counted."""
        seq = self._state[_NEXT]
        out = write_transport_seq(packet, self.ext_id, seq & 0xFFFF)
        if out is None:
            self.unstampable += 1
            return packet
        if len(out) != len(packet):
            self.elements_added += 1
        self._record(seq, len(out), now)
        self._last_stamped = out
        return out

    def stamp_at(self, packet: bytearray, at: int, now: float, added: bool = False) -> int:
        """Write the next transport-wide seq into `packet` in place, at `at` (where the 2-octet
        value of our element is: the forwarder found it once for a whole fan-out), recorded as
        sent at `now`; the seq written (for `give_back`). `added`: the layout added the element
        (`transport_seq_layout` grew the packet). The fan-out's path: no scan of the extension
        block and no copy per subscriber."""
        seq = self._state[_NEXT]
        packet[at] = (seq >> 8) & 0xFF
        packet[at + 1] = seq & 0xFF
        if added:
            self.elements_added += 1
        self._record(seq, len(packet), now)
        self._last_stamped = None
        return seq

    def give_back(self, seq: int) -> None:
        """`seq`, written by `stamp_at` last, went nowhere (the send failed): the subscriber
        must see no gap it would report as a loss."""
        if seq != self.next_sequence - 1 or seq < 0 or self._seq[seq & self._mask] != seq:
            return
        self._forget(seq)

    def _record(self, seq: int, size: int, now: float) -> None:
        slot = seq & self._mask
        state = self._state
        self._seq[slot] = seq
        self._sent_at[slot] = now
        self._size[slot] = size
        self._cluster[slot] = state[_CLUSTER]
        self._reported[slot] = 0
        state[_NEXT] = seq + 1
        state[_PACKETS] += 1
        state[_BYTES] += size

    def _forget(self, seq: int) -> None:
        slot = seq & self._mask
        state = self._state
        state[_BYTES] -= self._size[slot]
        self._seq[slot] = -1
        state[_NEXT] = seq
        state[_PACKETS] -= 1

    def unstamp(self, packet: bytes) -> None:
        """`packet`, the last one stamped, never left (the transport could not send it): its
        number is given back, so the subscriber sees no gap it would report as a loss."""
        seq = self.next_sequence - 1
        if packet is not self._last_stamped or seq < 0 or self._seq[seq & self._mask] != seq:
            return  # not the packet stamped last (one that could not be stamped, say): nothing to give back
        self._last_stamped = None
        self._forget(seq)

    # ---- feedback -------------------------------------------------------------------------

    def on_feedback(self, feedback: TransportCc) -> list[PacketResult]:
        """The packets `feedback` covers, in seq order, that we remember and that no earlier
        feedback reported as received (libwebrtc repeats a seq when it was first lost)."""
        newest = self.next_sequence - 1
        if newest < 0 or feedback.status_count == 0:
            return []
        arrivals = {}
        base_us = self._reference_us(feedback.reference_time)
        t = base_us
        for seq16, delta_us in feedback.arrivals:
            t += delta_us
            arrivals[seq16] = t
        out: list[PacketResult] = []
        base = feedback.base_sequence
        # A report may claim 65535 statuses in a few bytes; we remember no more than the ring
        # holds, so no more than that is looked at (the rest counted unknown, not walked).
        covered = min(feedback.status_count, self._mask + 1)
        self.feedback_unknown += feedback.status_count - covered
        for i in range(covered):
            seq16 = (base + i) & 0xFFFF
            back = (newest - seq16) & 0xFFFF
            ext = newest - back
            slot = ext & self._mask
            if back >= _MAX_BACK or ext < 0 or self._seq[slot] != ext:
                self.feedback_unknown += 1
                continue
            if self._reported[slot]:
                continue
            arrival_us = arrivals.get(seq16)
            if arrival_us is not None:
                self._reported[slot] = 1
            out.append(PacketResult(ext, self._sent_at[slot], self._size[slot],
                                    None if arrival_us is None else arrival_us / 1e6, self._cluster[slot]))
        return out

    def _reference_us(self, reference: int) -> int:
        """The report's reference time in µs on an unwrapped timeline (24 bits of 64 ms wrap)."""
        last = self._last_reference
        if last is None:
            self._reference_base = reference
        else:
            step = (reference - last) & 0xFFFFFF
            if step >= 0x800000:
                # An older report arriving late: place it before the newest, move nothing.
                return (self._reference_base - ((last - reference) & 0xFFFFFF)) * TWCC_REFERENCE_UNIT_US
            self._reference_base += step
        self._last_reference = reference
        return self._reference_base * TWCC_REFERENCE_UNIT_US


def mentions_transport_cc(data: bytes) -> bool:
    """Whether a compound RTCP packet that failed to parse holds a transport-cc feedback header
    (RTPFB, FMT 15), so a malformed one can be counted as such."""
    pos = 0
    while pos + 4 <= len(data):
        if data[pos + 1] == 205 and data[pos] & 0x1F == 15:
            return True
        pos += 4 * (((data[pos + 2] << 8) | data[pos + 3]) + 1)
    return False


def transport_seq_layout(packet: bytes, ext_id: int) -> Optional[tuple[bytes, int]]:
    """`packet` as `write_transport_seq` lays it out (the element overwritten, written into
    zeroed octets or added) with the value 0, and the offset of the element's 2-octet value:
    a fan-out lays a packet out once and numbers each copy with two octet writes. None when
    the element cannot be put in."""
    low = write_transport_seq(packet, ext_id, 0)
    if low is None:
        return None
    high = write_transport_seq(packet, ext_id, 0xFFFF)
    assert high is not None and len(high) == len(low)
    at = next(i for i in range(len(low)) if low[i] != high[i])
    return low, at


def write_transport_seq(packet: bytes, ext_id: int, seq: int) -> Optional[bytes]:
    """`packet` with element `ext_id` = `seq` (16 bits): overwritten where the element is,
    else written into a zeroed run of the one-byte block, else added (growing the block, or
    adding one). None when it cannot be (a malformed packet or block, or an id > 14 in a
    one-byte block)."""
    size = len(packet)
    if size < 12:
        return None
    value = bytes(((seq >> 8) & 0xFF, seq & 0xFF))
    pos = 12 + 4 * (packet[0] & 0x0F)
    if not packet[0] & 0x10:
        if size < pos:
            return None
        if ext_id <= 14:
            block = bytes((0xBE, 0xDE, 0, 1, (ext_id << 4) | 1)) + value + b"\x00"
        else:
            block = bytes((0x10, 0x00, 0, 1, ext_id, 2)) + value
        return bytes((packet[0] | 0x10,)) + packet[1:pos] + block + packet[pos:]
    if size < pos + 4:
        return None
    profile = (packet[pos] << 8) | packet[pos + 1]
    words = (packet[pos + 2] << 8) | packet[pos + 3]
    start = pos + 4
    end = start + 4 * words
    if end > size:
        return None
    if profile == 0xBEDE:
        if ext_id > 14:
            return None
        i = start
        zero_run_at = -1
        zeros = 0
        while i < end:
            b = packet[i]
            if b == 0:
                if zeros == 0:
                    zero_run_at = i
                zeros += 1
                i += 1
                continue
            if zeros < 3:
                zeros = 0
            elem_id = b >> 4
            if elem_id == 15:
                break
            length = (b & 0x0F) + 1
            if i + 1 + length > end:
                return None
            if elem_id == ext_id:
                if length != 2:
                    return None
                return packet[:i + 1] + value + packet[i + 3:]
            i += 1 + length
        if zeros >= 3:
            return packet[:zero_run_at] + bytes(((ext_id << 4) | 1,)) + value + packet[zero_run_at + 3:]
        return _grown(packet, pos, end, ext_id, value)
    if profile & 0xFFF0 == 0x1000:
        i = start
        while i < end:
            elem_id = packet[i]
            if elem_id == 0:
                i += 1
                continue
            if i + 1 >= end:
                return None
            length = packet[i + 1]
            if i + 2 + length > end:
                return None
            if elem_id == ext_id:
                if length != 2:
                    return None
                return packet[:i + 2] + value + packet[i + 4:]
            i += 2 + length
        return _grown(packet, pos, end, ext_id, value)
    return None  # an RFC 3550 extension of another profile: no room for RFC 8285 elements


def _grown(packet: bytes, pos: int, end: int, ext_id: int, value: bytes) -> Optional[bytes]:
    """`packet` with the element added at the end of its block (from `pos` to `end`)."""
    block = append_extension_element(packet[pos:end], ext_id, value)
    return None if block is None else packet[:pos] + block + packet[end:]


__all__ = ["DEFAULT_HISTORY", "PacketResult", "TransportSequencer", "mentions_transport_cc", "transport_seq_layout",
           "write_transport_seq"]
