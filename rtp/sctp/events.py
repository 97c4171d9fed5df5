"""Events handed out by :meth:`SctpAssociation.next_event`."""

from __future__ import annotations

from typing import Optional, Union

import attrs


@attrs.frozen
class Reliability:
    """Partial reliability of a channel (RFC 8832 §5.1); both None means fully reliable."""

    max_retransmits: Optional[int] = None
    max_packet_lifetime: Optional[int] = None  # milliseconds


@attrs.frozen
class AssociationEstablished:
    pass


@attrs.frozen
class ChannelOpened:
    stream_id: int
    label: str
    protocol: str
    ordered: bool
    reliability: Reliability
    # True when we sent the DATA_CHANNEL_OPEN and this event reports the peer's ACK.
    locally_initiated: bool = False


@attrs.frozen
class MessageReceived:
    stream_id: int
    # str for the string PPIDs (51, 56), bytes for the binary ones (53, 57).
    data: Union[bytes, str]
    ppid: int


@attrs.frozen
class ChannelClosed:
    stream_id: int


@attrs.frozen
class AssociationClosed:
    reason: str


Event = Union[AssociationEstablished, ChannelOpened, MessageReceived, ChannelClosed, AssociationClosed]
