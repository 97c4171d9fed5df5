"""RFC 7983 demultiplexing of one UDP 5-tuple carrying STUN, DTLS, SRTP and SRTCP.

The first octet decides the protocol; for RTP/RTCP the second octet (marker
bit + payload type for RTP, packet type for RTCP) separates the two, since
RFC 5761 §4 keeps RTP payload types off the RTCP range 192-223.
"""

from __future__ import annotations

import enum


class PacketKind(enum.Enum):
    STUN = "stun"
    ZRTP = "zrtp"
    DTLS = "dtls"
    TURN_CHANNEL = "turn-channel"
    RTP = "rtp"
    RTCP = "rtcp"
    UNKNOWN = "unknown"


def _first_byte_table() -> tuple[PacketKind, ...]:
    table = [PacketKind.UNKNOWN] * 256
    for b in range(0, 4):
        table[b] = PacketKind.STUN
    for b in range(16, 20):
        table[b] = PacketKind.ZRTP
    for b in range(20, 64):
        table[b] = PacketKind.DTLS
    for b in range(64, 80):
        table[b] = PacketKind.TURN_CHANNEL
    for b in range(128, 192):
        table[b] = PacketKind.RTP  # refined by the second octet below
    return tuple(table)


_BY_FIRST_BYTE = _first_byte_table()
_RTP = PacketKind.RTP
_RTCP = PacketKind.RTCP
_UNKNOWN = PacketKind.UNKNOWN


def classify(data: bytes | bytearray | memoryview) -> PacketKind:
    """Which protocol a received datagram belongs to (RFC 7983 §7, RFC 5761 §4).

    Only looks at the first two octets; it does not validate the packet.
    """
    if not data:
        return _UNKNOWN
    kind = _BY_FIRST_BYTE[data[0]]
    if kind is _RTP:
        if len(data) < 2:
            return _UNKNOWN
        return _RTCP if 192 <= data[1] <= 223 else _RTP
    return kind
