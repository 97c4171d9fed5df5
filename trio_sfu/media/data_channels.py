"""Data channels through the server: an SCTP association per peer connection once DTLS is up,
and LiveKit `DataPacket`s forwarded between participants (livekit-protocol.md §2.14).

The client opens `_reliable` / `_lossy` (and `_data_track`) on its publisher PC; we open our own
on its subscriber PC and the client adopts them by label. With a single peer connection
(`/rtc/v1`) there is no subscriber PC: we send on the client's own channels, as LiveKit does
(the clients read messages on their publisher channels too). A packet a client sends arrives on one
of its channels, is checked (`canPublishData`), stamped with the sender's sid and identity (a
client cannot speak for someone else), re-serialized once and queued on each recipient's channel
of the same kind. Server-originated packets (Twirp SendData) come in through
`Participant.deliver_data` -> `data_sink` and take the same last step.

A slow receiver must not stall the room: everything for one recipient waits in that recipient's
own SCTP association, and what may wait there is bounded. Past the lossy bound a lossy packet is
dropped and counted; past the reliable bound the recipient's `_reliable` channel is closed (a
reliable stream with a hole in it would be worse than none), logged and counted. Nobody else
notices: forwarding never blocks and never waits for a receiver.

The SCTP association itself is not here: it belongs to the peer connection's `PeerSession`
(rtp.peer_session), which feeds it DTLS application data, sends what it queues, runs its timers
and hands its events out. A `DataTransport` is LiveKit's channel policy on top of it — which
channel is `_reliable` or `_lossy`, the forwarding rules, the per-recipient bounds — and gets the
association's events from its transport endpoint (trio_sfu.media.transport).

Everything here runs synchronously inside the media task's callbacks (the mux reader and the
participant's timer loop); `now` is trio's clock, as for the sessions. Nothing here knows the
media session: a participant's `ParticipantData` gets its peers and its permission check as
arguments, and each transport endpoint attaches its session's association with
`ParticipantData.attach`, with how to send what was queued on it.
"""

from __future__ import annotations

import collections
import enum
from typing import TYPE_CHECKING, Callable, Iterable, Optional, Union

from google.protobuf.message import DecodeError
from livekit.protocol import models

from rtp import peer_session
from rtp.sctp import (
    AssociationClosed,
    AssociationEstablished,
    ChannelClosed,
    ChannelOpened,
    MessageReceived,
    SctpAssociation,
)

from trio_sfu import metrics as m
from trio_sfu.log import get_logger

if TYPE_CHECKING:
    from sdp.model import SessionDescription

    from trio_sfu.log import ContextLogger

RELIABLE_LABEL = "_reliable"
LOSSY_LABEL = "_lossy"
DATA_TRACK_LABEL = "_data_track"

# RFC 8841 §6.1: sctp-port 5000 and, without a=max-message-size, 64 KiB: the session's defaults.
DEFAULT_SCTP_PORT = peer_session.DEFAULT_SCTP_PORT
DEFAULT_REMOTE_MAX_MESSAGE_SIZE = peer_session.DEFAULT_REMOTE_MAX_MESSAGE_SIZE

#: What a PeerSession says about its association.
AssociationEvent = Union[MessageReceived, ChannelOpened, ChannelClosed, AssociationEstablished, AssociationClosed]

# Bytes that may wait in one recipient's association before we give up on it.
RELIABLE_BUFFER_LIMIT = 4 * 1024 * 1024
LOSSY_BUFFER_LIMIT = 256 * 1024
# Messages kept for a recipient whose subscriber PC is not negotiated yet.
MAX_PENDING_MESSAGES = 256

DATA_RECEIVED = "data_packets_received_total"
DATA_FORWARDED = "data_packets_forwarded_total"
DATA_DENIED = "data_packets_denied_total"
DATA_MALFORMED = "data_packets_malformed_total"
DATA_UNSUPPORTED = "data_packets_unsupported_total"
DATA_LOSSY_DROPPED = "data_lossy_dropped_total"
DATA_RELIABLE_DROPPED = "data_reliable_dropped_total"
DATA_RELIABLE_CLOSED = "data_reliable_channel_closed_total"
DATA_TOO_LARGE = "data_packets_too_large_total"
DATA_PENDING_DROPPED = "data_pending_dropped_total"
DATA_OTHER_CHANNEL = "data_messages_other_channel_total"
DATA_ASSOCIATIONS = "data_sctp_established_total"
DATA_ASSOCIATIONS_CLOSED = "data_sctp_closed_total"

_log = get_logger("trio_sfu.data")


class DataKind(enum.IntEnum):
    """Which channel a packet travels on; the values are `DataPacket.Kind`'s."""

    RELIABLE = models.DataPacket.Kind.RELIABLE
    LOSSY = models.DataPacket.Kind.LOSSY


_LABEL_KINDS = {RELIABLE_LABEL: DataKind.RELIABLE, LOSSY_LABEL: DataKind.LOSSY}

# The DataPacket values a client may send to others. `speaker` is the server's (deprecated) and
# a packet with no value carries nothing.
_FORWARDED_VALUES = frozenset({
    "user", "sip_dtmf", "transcription", "metrics", "chat_message", "rpc_request", "rpc_ack",
    "rpc_response", "stream_header", "stream_chunk", "stream_trailer", "encrypted_packet",
})


def remote_sctp_params(description: "SessionDescription") -> tuple[bool, int, int]:
    """From the peer's SDP: (has an accepted m=application, its sctp-port, its max-message-size)."""
    for section in description.media:
        if section.kind == "application" and not section.rejected:
            size = section.max_message_size
            return (True, section.sctp_port or DEFAULT_SCTP_PORT,
                    DEFAULT_REMOTE_MAX_MESSAGE_SIZE if size is None else size)
    return False, DEFAULT_SCTP_PORT, DEFAULT_REMOTE_MAX_MESSAGE_SIZE


class DataTransport:
    """LiveKit's channels on one peer connection's SCTP association (which its session drives)."""

    def __init__(self, owner: "ParticipantData", name: str, association: SctpAssociation, *,
                 flush: Callable[[float], None]) -> None:
        self.owner = owner
        self.name = name
        self.association = association
        # Send what was queued on the association and wake the timers (the transport endpoint's).
        self._flush = flush
        # No more messages either way: the association ended, or the peer connection is going.
        self.closed = False
        self._counters_folded = False
        # Our channels (subscriber PC): kind -> stream id; gone once closed.
        self.out_channels: dict[DataKind, int] = {}
        # Every open channel with a LiveKit label, ours or the client's: stream id -> kind.
        self.in_kinds: dict[int, DataKind] = {}
        # Never below what is really queued: raised per message, re-measured at a bound.
        self._queued_estimate = 0
        # Single-PC mode: the client's channels are our way out too (no channels of ours).
        self.sends_on_client_channels = False

    def open_server_channels(self) -> None:
        """`_reliable`, `_lossy` and `_data_track` as LiveKit opens them on the subscriber PC."""
        assoc = self.association
        reliable = assoc.open_channel(RELIABLE_LABEL, ordered=True)
        lossy = assoc.open_channel(LOSSY_LABEL, ordered=False, max_retransmits=0)
        assoc.open_channel(DATA_TRACK_LABEL, ordered=False, max_retransmits=0)
        self.out_channels = {DataKind.RELIABLE: reliable, DataKind.LOSSY: lossy}
        self.in_kinds.update({reliable: DataKind.RELIABLE, lossy: DataKind.LOSSY})
        self._queued_estimate = assoc.buffered_amount  # the OPEN messages wait in the same queue

    # ---- driven by the transport endpoint -------------------------------------------------

    def on_event(self, event: AssociationEvent, now: float) -> None:
        """One of the session's events about the association."""
        if self.closed:
            return
        if type(event) is MessageReceived:
            kind = self.in_kinds.get(event.stream_id)
            data = event.data if isinstance(event.data, bytes) else event.data.encode("utf-8")
            if kind is None:
                self.owner.metrics.inc(DATA_OTHER_CHANNEL)
            else:
                self.owner.on_client_packet(kind, data, now)
        elif isinstance(event, ChannelOpened):
            kind = _LABEL_KINDS.get(event.label)
            if kind is not None:
                self.in_kinds[event.stream_id] = kind
                if self.sends_on_client_channels and kind not in self.out_channels:
                    self.out_channels[kind] = event.stream_id
                    if kind is DataKind.RELIABLE:
                        self.owner.downlink_ready(self, now)
            self.owner.log.debug("data channel open", kv={"pc": self.name, "label": event.label,
                                                          "stream": event.stream_id})
        elif isinstance(event, ChannelClosed):
            self.in_kinds.pop(event.stream_id, None)
            for kind, stream in list(self.out_channels.items()):
                if stream == event.stream_id:
                    del self.out_channels[kind]
        elif isinstance(event, AssociationEstablished):
            self.owner.metrics.inc(DATA_ASSOCIATIONS)
            self.owner.log.info("sctp established", kv={"pc": self.name})
        elif isinstance(event, AssociationClosed):
            self.closed = True
            self.out_channels.clear()
            self.owner.metrics.inc(DATA_ASSOCIATIONS_CLOSED)
            self.owner.log.info("sctp closed", kv={"pc": self.name, "reason": event.reason})

    def flush(self, now: float) -> None:
        """Messages were queued: let the session send them."""
        self._flush(now)

    def close(self) -> None:
        """The peer connection is going away; its SCTP counters (malformed packets, retransmits,
        abandoned chunks...) outlive it as `data_sctp_<name>_total`."""
        self.closed = True
        self.out_channels.clear()
        if not self._counters_folded:
            self._counters_folded = True
            m.fold_counters(self.owner.metrics, "data_sctp", self.association.counters)

    # ---- forwarding ---------------------------------------------------------------------------

    def send(self, kind: DataKind, payload: bytes, now: float) -> bool:
        """Queue one DataPacket on our channel of `kind`, within the buffer bounds; never blocks."""
        stream = self.out_channels.get(kind)
        metrics = self.owner.metrics
        if stream is None or self.closed:
            metrics.inc(DATA_LOSSY_DROPPED if kind is DataKind.LOSSY else DATA_RELIABLE_DROPPED)
            return False
        limits = self.owner.limits
        bound = limits[kind]
        size = len(payload)
        if self._queued_estimate + size > bound:
            # Only here is the real backlog measured (it walks the queue).
            self._queued_estimate = self.association.buffered_amount
            if self._queued_estimate + size > bound:
                if kind is DataKind.LOSSY:
                    metrics.inc(DATA_LOSSY_DROPPED)
                    return False
                self._close_overflowing(stream)
                return False
        if not self.association.send(stream, payload, now):
            # Larger than the receiver's max-message-size, or the channel is going away.
            metrics.inc(DATA_TOO_LARGE if size > self.association.remote_max_message_size > 0
                        else DATA_RELIABLE_DROPPED if kind is DataKind.RELIABLE else DATA_LOSSY_DROPPED)
            return False
        self._queued_estimate += size
        return True

    def _close_overflowing(self, stream: int) -> None:
        reason = (f"reliable data backlog over {self.owner.limits[DataKind.RELIABLE]} bytes: "
                  "receiver too slow")
        self.out_channels.pop(DataKind.RELIABLE, None)
        self.association.close_channel(stream)
        self.owner.metrics.inc(DATA_RELIABLE_CLOSED)
        self.owner.metrics.inc(DATA_RELIABLE_DROPPED)
        self.owner.log.warning("closing data channel", kv={"pc": self.name, "label": RELIABLE_LABEL,
                                                           "reason": reason})


class ParticipantData:
    """One participant's data path: the client's channels in, the server's channels out."""

    def __init__(
        self,
        *,
        sid: str,
        identity: str,
        may_publish_data: Callable[[], bool],
        peers: Callable[[], Iterable["ParticipantData"]],
        metrics: m.Metrics,
        log: Optional["ContextLogger"] = None,
        reliable_limit: Optional[int] = None,
        lossy_limit: Optional[int] = None,
        other_nodes: Optional[Callable[[DataKind, bytes], None]] = None,
    ) -> None:
        """`other_nodes`, on a node of a cluster, takes every packet this participant sends
        (stamped, serialized) to the room's participants on the other nodes."""
        self.sid = sid
        self.other_nodes = other_nodes
        self.identity = identity
        self.may_publish_data = may_publish_data
        self.peers = peers
        self.metrics = metrics
        self.log = log if log is not None else _log.bind(participant=sid)
        self.limits = {
            DataKind.RELIABLE: RELIABLE_BUFFER_LIMIT if reliable_limit is None else reliable_limit,
            DataKind.LOSSY: LOSSY_BUFFER_LIMIT if lossy_limit is None else lossy_limit,
        }
        self.transports: dict[str, DataTransport] = {}
        self.downlink: Optional[DataTransport] = None
        # For the time before the subscriber PC exists.
        self._pending: collections.deque[tuple[DataKind, bytes]] = collections.deque()
        self.closed = False

    # ---- wiring ------------------------------------------------------------------------------

    def attach(self, name: str, association: SctpAssociation, *, flush: Callable[[float], None],
               downlink: bool = False, client_channels: bool = False, now: float = 0.0) -> DataTransport:
        """Put LiveKit's channel policy on peer connection `name`'s association (once); `flush`
        sends what was queued on it. `downlink` opens the server's channels, with what waited;
        `client_channels` (single-PC mode) makes the client's channels the way out once its
        `_reliable` opens."""
        existing = self.transports.get(name)
        if existing is not None:
            return existing
        transport = DataTransport(self, name, association, flush=flush)
        self.transports[name] = transport
        if client_channels:
            transport.sends_on_client_channels = True
        elif downlink:
            transport.open_server_channels()
            self.downlink = transport
            pending, self._pending = self._pending, collections.deque()
            for kind, payload in pending:
                transport.send(kind, payload, now)
        return transport

    def downlink_ready(self, transport: DataTransport, now: float) -> None:
        """Single-PC mode: the client's `_reliable` opened on `transport`; what waited goes."""
        if self.downlink is not None or self.closed:
            return
        self.downlink = transport
        pending, self._pending = self._pending, collections.deque()
        for kind, payload in pending:
            transport.send(kind, payload, now)
        transport.flush(now)

    def close(self) -> None:
        self.closed = True
        for transport in self.transports.values():
            transport.close()
        self._pending.clear()

    # ---- in: a client's packet ---------------------------------------------------------------

    def on_client_packet(self, kind: DataKind, data: bytes, now: float) -> None:
        """LiveKit's rules: drop without canPublishData; the server sets who sent it; to the
        destination identities or everyone else; on the same kind of channel; sequence kept."""
        metrics = self.metrics
        metrics.inc(DATA_RECEIVED)
        if self.closed:
            return
        if not self.may_publish_data():
            metrics.inc(DATA_DENIED)
            return
        try:
            packet = models.DataPacket.FromString(data)
        except (DecodeError, ValueError):
            metrics.inc(DATA_MALFORMED)
            return
        value = packet.WhichOneof("value")
        if value not in _FORWARDED_VALUES:
            metrics.inc(DATA_UNSUPPORTED)
            return
        packet.participant_sid = self.sid
        packet.participant_identity = self.identity
        packet.kind = kind  # the channel is the truth, not the (deprecated) field
        if value == "user":
            packet.user.participant_sid = self.sid
            packet.user.participant_identity = self.identity
        identities, sids = destinations(packet)
        payload = packet.SerializeToString()
        deliver_to_peers(self.peers(), kind, payload, identities, sids, now, metrics, sender=self)
        if self.other_nodes is not None:
            self.other_nodes(kind, payload)

    # ---- out: to this participant ------------------------------------------------------------

    def send(self, kind: DataKind, payload: bytes, now: float) -> bool:
        """Queue a serialized DataPacket for this participant; False when it was dropped."""
        if self.closed:
            return False
        downlink = self.downlink
        if downlink is None:
            if len(self._pending) >= MAX_PENDING_MESSAGES:
                self.metrics.inc(DATA_PENDING_DROPPED)
                return False
            self._pending.append((kind, payload))
            return True
        if not downlink.send(kind, payload, now):
            return False
        downlink.flush(now)
        return True

    def deliver(self, packet: models.DataPacket, kind: int, now: float) -> bool:
        """A server-originated packet (Twirp SendData) on the `kind` channel."""
        try:
            data_kind = DataKind(kind)
        except ValueError:
            data_kind = DataKind.RELIABLE
        return self.send(data_kind, packet.SerializeToString(), now)


def destinations(packet: models.DataPacket) -> tuple[set[str], set[str]]:
    """The identities and sids a packet is addressed to (both empty: everyone)."""
    identities = set(packet.destination_identities)
    sids: set[str] = set()
    if packet.WhichOneof("value") == "user":
        identities.update(packet.user.destination_identities)
        sids.update(packet.user.destination_sids)
    return identities, sids


def deliver_to_peers(peers: Iterable[ParticipantData], kind: DataKind, payload: bytes, identities: set[str],
                     sids: set[str], now: float, metrics: m.Metrics, sender: Optional[ParticipantData] = None) -> None:
    """Queue a serialized packet on each of `peers` it is addressed to (never its sender)."""
    targeted = bool(identities or sids)
    for peer in peers:
        if peer is sender or peer.closed:
            continue
        if targeted and peer.identity not in identities and peer.sid not in sids:
            continue
        if peer.send(kind, payload, now):
            metrics.inc(DATA_FORWARDED)


__all__ = [
    "DATA_TRACK_LABEL", "LOSSY_LABEL", "deliver_to_peers", "destinations", "RELIABLE_LABEL", "DataKind", "DataTransport", "ParticipantData",
    "remote_sctp_params",
]
