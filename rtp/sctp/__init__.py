"""SCTP over DTLS (RFC 8261) and WebRTC data channels (RFC 8831 / DCEP RFC 8832), sans-IO.

The association eats and produces whole SCTP packets (one per DTLS record):

    assoc = SctpAssociation(is_client=dtls_role_is_client)
    assoc.start(now)                        # the DTLS client sends INIT
    assoc.receive_packet(record, now)       # for every DTLS application-data record
    for packet in assoc.packets_to_send(now): dtls.send(packet)
    assoc.handle_timeout(now) once now >= assoc.next_deadline()
    while (event := assoc.next_event()) is not None: ...

Channels: ``open_channel`` / ``send`` / ``close_channel``; events in
:mod:`rtp.sctp.events`.
"""

from rtp.sctp.association import AssociationState, ChannelState, SctpAssociation, SctpCounters
from rtp.sctp.dcep import Ppid
from rtp.sctp.errors import SctpParseError, SctpProtocolError
from rtp.sctp.events import (
    AssociationClosed,
    AssociationEstablished,
    ChannelClosed,
    ChannelOpened,
    Event,
    MessageReceived,
    Reliability,
)

__all__ = [
    "AssociationClosed",
    "AssociationEstablished",
    "AssociationState",
    "ChannelClosed",
    "ChannelOpened",
    "ChannelState",
    "Event",
    "MessageReceived",
    "Ppid",
    "Reliability",
    "SctpAssociation",
    "SctpCounters",
    "SctpParseError",
    "SctpProtocolError",
]
