"""Data Channel Establishment Protocol messages (RFC 8832) and the PPIDs of RFC 8831."""

from __future__ import annotations

import enum
import struct
from typing import Optional, Union

import attrs

from rtp.sctp.errors import SctpParseError
from rtp.sctp.events import Reliability


class Ppid(enum.IntEnum):
    DCEP = 50
    STRING = 51
    BINARY = 53
    STRING_EMPTY = 56
    BINARY_EMPTY = 57


class MessageType(enum.IntEnum):
    ACK = 0x02
    OPEN = 0x03


# Channel type: high bit = unordered, low bits = reliability kind (RFC 8832 §5.1).
UNORDERED_BIT = 0x80
RELIABILITY_REXMIT = 0x01
RELIABILITY_TIMED = 0x02

_OPEN_HEADER = struct.Struct("!BBHLHH")


@attrs.frozen
class DataChannelOpen:
    channel_type: int
    priority: int
    reliability_parameter: int
    label: str
    protocol: str

    @property
    def ordered(self) -> bool:
        return not self.channel_type & UNORDERED_BIT

    @property
    def reliability(self) -> Reliability:
        kind = self.channel_type & 0x7F
        if kind == RELIABILITY_REXMIT:
            return Reliability(max_retransmits=self.reliability_parameter)
        if kind == RELIABILITY_TIMED:
            return Reliability(max_packet_lifetime=self.reliability_parameter)
        return Reliability()

    @classmethod
    def for_channel(
        cls,
        label: str,
        protocol: str,
        ordered: bool,
        max_retransmits: Optional[int],
        max_packet_lifetime: Optional[int],
        priority: int,
    ) -> DataChannelOpen:
        channel_type = 0 if ordered else UNORDERED_BIT
        parameter = 0
        if max_retransmits is not None:
            channel_type |= RELIABILITY_REXMIT
            parameter = max_retransmits
        elif max_packet_lifetime is not None:
            channel_type |= RELIABILITY_TIMED
            parameter = max_packet_lifetime
        return cls(channel_type, priority, parameter, label, protocol)

    def serialize(self) -> bytes:
        label = self.label.encode("utf-8")
        protocol = self.protocol.encode("utf-8")
        if len(label) > 0xFFFF or len(protocol) > 0xFFFF:
            raise SctpParseError("label or protocol longer than 65535 bytes")
        header = _OPEN_HEADER.pack(
            MessageType.OPEN, self.channel_type, self.priority, self.reliability_parameter, len(label), len(protocol)
        )
        return header + label + protocol


@attrs.frozen
class DataChannelAck:
    def serialize(self) -> bytes:
        return bytes([MessageType.ACK])


DcepMessage = Union[DataChannelOpen, DataChannelAck]

_KNOWN_CHANNEL_TYPES = {0x00, 0x01, 0x02, 0x80, 0x81, 0x82}


def parse_dcep(data: bytes) -> DcepMessage:
    """Parse a PPID-50 message; raises SctpParseError only."""
    if not data:
        raise SctpParseError("empty DCEP message")
    if data[0] == MessageType.ACK:
        # RFC 8832 §5.2: the ACK is exactly one byte.
        if len(data) != 1:
            raise SctpParseError("DATA_CHANNEL_ACK must be one byte")
        return DataChannelAck()
    if data[0] != MessageType.OPEN:
        raise SctpParseError(f"unknown DCEP message type {data[0]}")
    if len(data) < _OPEN_HEADER.size:
        raise SctpParseError("truncated DATA_CHANNEL_OPEN")
    _, channel_type, priority, parameter, label_len, protocol_len = _OPEN_HEADER.unpack_from(data)
    if channel_type not in _KNOWN_CHANNEL_TYPES:
        raise SctpParseError(f"unknown channel type {channel_type:#x}")
    if len(data) != _OPEN_HEADER.size + label_len + protocol_len:
        raise SctpParseError("DATA_CHANNEL_OPEN label/protocol lengths do not match")
    pos = _OPEN_HEADER.size
    try:
        label = bytes(data[pos : pos + label_len]).decode("utf-8")
        protocol = bytes(data[pos + label_len : pos + label_len + protocol_len]).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SctpParseError("label or protocol is not UTF-8") from exc
    return DataChannelOpen(channel_type, priority, parameter, label, protocol)
