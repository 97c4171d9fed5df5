"""The SCTP association over DTLS (RFC 8261) with WebRTC data channels on top (RFC 8831/8832).

Sans-IO: whole SCTP packets in (``receive_packet``), whole packets out
(``packets_to_send``), explicit deadlines (``next_deadline``/``handle_timeout``),
events out (``next_event``). Malformed or unacceptable input is dropped and
counted in :attr:`SctpAssociation.counters`; nothing but ``rtp.errors``
subclasses escapes, and only from API misuse.

Tag and TSN choice: our verification tag and initial TSN are fixed for the
lifetime of the object, so when both ends send INIT at once (WebRTC peers such as
aiortc always do, RFC 8841 §9.3) both INIT-ACKs carry the same values and the
collision resolves itself (RFC 9260 §5.2.1).

Timer choices: RTO.Initial 1 s as RFC 9260 §16; RTO.Min 0.4 s rather than 1 s,
and RTO.Max 10 s rather than 60 s. A WebRTC path is a single ICE pair whose RTT
is measured continuously and which ICE consent freshness declares dead after
30 s anyway, so a minute-long exponential backoff only stalls a channel that a
few lost packets in a row left with a one-packet window.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import struct
from collections import deque
from typing import Optional, Union

import attrs

from rtp.sctp import chunks as c
from rtp.sctp.dcep import DataChannelAck, DataChannelOpen, Ppid, parse_dcep
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
from rtp.sctp.reassembly import Admission, Reassembler, TsnTracker
from rtp.sctp.serial import tsn_add, tsn_diff, tsn_ge, tsn_gt

RTO_INITIAL = 1.0
RTO_MIN = 0.4
RTO_MAX = 10.0
RTO_ALPHA = 1 / 8
RTO_BETA = 1 / 4
MAX_INIT_RETRANSMITS = 8
MAX_ASSOCIATION_RETRANSMITS = 10
DELAYED_SACK = 0.2
COOKIE_LIFETIME = 60.0
MAX_PACKET_SIZE = 1200
MAX_DATA_PAYLOAD = (MAX_PACKET_SIZE - c.COMMON_HEADER_LENGTH - c.DATA_CHUNK_HEADER_LENGTH) // 4 * 4
MAX_STREAMS = 65535
# Past this many chunks ahead of the cumulative TSN a DATA chunk is not buffered.
MAX_TSN_AHEAD = 1 << 16
# What a peer's DATA_CHANNEL_OPEN may ask of us. LiveKit needs a handful of channels (_reliable,
# _lossy, _data_track, each side's) with short labels; an OPEN past either cap is refused
# (counted, never ACKed), so channels cannot grow without bound nor carry 64 KiB labels.
MAX_CHANNELS = 64
MAX_LABEL_BYTES = 1024  # label and protocol, each, in UTF-8

_COOKIE = struct.Struct("!dLLLHHBL")
_DATA_CHUNK_HEADER = struct.Struct("!BBHLHHL")
_COOKIE_MAC_LENGTH = 16


class AssociationState(enum.Enum):
    CLOSED = "closed"
    COOKIE_WAIT = "cookie-wait"
    COOKIE_ECHOED = "cookie-echoed"
    ESTABLISHED = "established"
    SHUTDOWN_PENDING = "shutdown-pending"
    SHUTDOWN_SENT = "shutdown-sent"
    SHUTDOWN_RECEIVED = "shutdown-received"
    SHUTDOWN_ACK_SENT = "shutdown-ack-sent"


class ChannelState(enum.Enum):
    CONNECTING = "connecting"
    OPEN = "open"
    CLOSING = "closing"


_DATA_STATES = {
    AssociationState.ESTABLISHED,
    AssociationState.SHUTDOWN_PENDING,
    AssociationState.SHUTDOWN_RECEIVED,
    AssociationState.SHUTDOWN_SENT,
}


@attrs.define
class SctpCounters:
    packets_received: int = 0
    packets_sent: int = 0
    malformed_packets: int = 0
    bad_verification_tag: int = 0
    unexpected_chunks: int = 0
    unknown_chunks: int = 0
    data_chunks_received: int = 0
    data_chunks_sent: int = 0
    duplicate_tsns: int = 0
    data_dropped_no_buffer: int = 0
    # Not in order and its stream already holds its share of the receive buffer.
    data_dropped_stream_full: int = 0
    chunks_retransmitted: int = 0
    fast_retransmits: int = 0
    t3_expirations: int = 0
    chunks_abandoned: int = 0
    forward_tsn_sent: int = 0
    forward_tsn_received: int = 0
    sacks_sent: int = 0
    sacks_received: int = 0
    messages_sent: int = 0
    messages_received: int = 0
    # Messages over max-message-size or split into more fragments than allowed; each aborts.
    malformed_messages: int = 0
    invalid_stream: int = 0
    #: send() refused: no channel on that stream, or it is closing.
    send_no_channel: int = 0
    #: send() refused: larger than the peer's a=max-message-size.
    send_too_large: int = 0
    #: a peer's DATA_CHANNEL_OPEN refused: MAX_CHANNELS open already, or a label or protocol
    #: over MAX_LABEL_BYTES.
    channel_opens_refused: int = 0


@attrs.define(slots=True, eq=False)
class _OutMessage:
    stream_id: int
    ordered: bool
    ssn: int
    max_retransmits: Optional[int]
    expiry: Optional[float]
    abandoned: bool = False


@attrs.define(slots=True, eq=False)
class _OutChunk:
    message: _OutMessage
    flags: int
    ppid: int
    data: bytes
    tsn: int = 0
    sent_time: float = 0.0
    sent_count: int = 0
    acked: bool = False
    in_flight: bool = False
    retransmit: bool = False
    fast_retransmitted: bool = False
    misses: int = 0


@attrs.define(slots=True, eq=False)
class _Channel:
    stream_id: int
    label: str
    protocol: str
    ordered: bool
    reliability: Reliability
    priority: int
    state: ChannelState
    outbound_reset: bool = False
    inbound_reset: bool = False
    reset_requested: bool = False


@attrs.define(slots=True)
class _Alone:
    """A chunk that must travel in its own packet under a specific tag (INIT, INIT-ACK)."""

    chunk: c.Chunk
    tag: int


class SctpAssociation:
    def __init__(
        self,
        is_client: bool,
        local_port: int = 5000,
        remote_port: int = 5000,
        max_message_size: int = 262144,
        remote_max_message_size: int = 65536,
        receive_window: Optional[int] = None,
    ) -> None:
        self.is_client = is_client
        self.local_port = local_port
        self.remote_port = remote_port
        self.max_message_size = max_message_size
        # RFC 8841 §6: 0 means the peer accepts any size.
        self.remote_max_message_size = remote_max_message_size
        self.receive_window = receive_window or max(1 << 20, 2 * max_message_size)
        self.counters = SctpCounters()
        self.state = AssociationState.CLOSED
        self._close_reported = False

        self._cookie_key = os.urandom(32)
        self._local_tag = int.from_bytes(os.urandom(4), "big") or 1
        self._initial_tsn = int.from_bytes(os.urandom(4), "big")
        self._remote_tag = 0
        self._peer_forward_tsn = False
        self._events: deque[Event] = deque()
        self._control: list[Union[c.Chunk, _Alone]] = []

        # inbound
        self._tracker: Optional[TsnTracker] = None
        self._reassembler = Reassembler(max_message_size, self.receive_window)
        self._sack_pending = False
        self._sack_now = False
        self._data_packets_unacked = 0
        self._delayed_sack_at: Optional[float] = None

        # outbound
        self._next_tsn = self._initial_tsn
        self._last_cum_ack = tsn_add(self._initial_tsn, -1)
        self._advanced_peer_ack = self._last_cum_ack
        self._outbound: deque[_OutChunk] = deque()
        self._sent: dict[int, _OutChunk] = {}
        self._stream_ssn: dict[int, int] = {}
        self._flight_size = 0
        self._cwnd = 4 * MAX_PACKET_SIZE
        self._ssthresh = 1 << 30
        self._partial_bytes_acked = 0
        self._peer_rwnd = 0
        self._fast_recovery_exit: Optional[int] = None
        self._forward_tsn_pending = False
        # Conservative hint that some chunk in _sent may be marked for retransmission,
        # so an idle packets_to_send does not walk the whole sent queue.
        self._maybe_retransmits = False
        # The chunk whose acknowledgement gives the next RTT sample.
        self._rtt_probe: Optional[_OutChunk] = None

        # timers
        self._rto = RTO_INITIAL
        self._srtt: Optional[float] = None
        self._rttvar = 0.0
        self._t1_at: Optional[float] = None
        self._t1_chunk: Optional[c.Chunk] = None
        self._t1_tag = 0
        self._t1_count = 0
        self._t2_at: Optional[float] = None
        self._t2_count = 0
        self._t3_at: Optional[float] = None
        self._t3_count = 0

        # stream reset (RFC 6525)
        self._reconfig_seq = self._initial_tsn
        self._reconfig_request: Optional[c.OutgoingResetRequest] = None
        self._reconfig_at: Optional[float] = None
        self._reset_queue: list[int] = []
        self._peer_reconfig_expected = 0
        self._peer_reconfig_last_response: Optional[c.ReconfigResponse] = None
        self._peer_reconfig_deferred: Optional[c.OutgoingResetRequest] = None

        # data channels
        self._channels: dict[int, _Channel] = {}
        # RFC 8832 §6: the DTLS client takes even stream ids, the server odd ones.
        self._channel_id_base = 0 if is_client else 1
        # Negotiated stream counts (RFC 9260 §5.1.1); MAX_STREAMS until the peer says.
        self._outbound_streams = MAX_STREAMS
        self._inbound_streams = MAX_STREAMS
        # Latest time seen through any entry point, for send() without an explicit now.
        self._now = 0.0

    # ------------------------------------------------------------------ API

    def start(self, now: float) -> None:
        """The DTLS client initiates (RFC 8261 §5 lets either; one INIT is enough)."""
        self._now = max(self._now, now)
        if self.is_client and self.state is AssociationState.CLOSED and self._t1_at is None:
            init = c.InitChunk(
                self._local_tag, self._our_rwnd(), MAX_STREAMS, MAX_STREAMS, self._initial_tsn, self._init_params()
            )
            self._send_alone(init, 0)
            self._start_t1(init, 0, now)
            self.state = AssociationState.COOKIE_WAIT

    def next_event(self) -> Optional[Event]:
        return self._events.popleft() if self._events else None

    def next_deadline(self) -> Optional[float]:
        deadlines = [
            t
            for t in (self._t1_at, self._t2_at, self._t3_at, self._delayed_sack_at, self._reconfig_at)
            if t is not None
        ]
        return min(deadlines) if deadlines else None

    def open_channel(
        self,
        label: str,
        protocol: str = "",
        ordered: bool = True,
        max_retransmits: Optional[int] = None,
        max_packet_lifetime: Optional[int] = None,
        priority: int = 256,
    ) -> int:
        """Send DATA_CHANNEL_OPEN on a fresh stream of our parity and return its id."""
        if self.state not in (AssociationState.CLOSED, AssociationState.COOKIE_WAIT, AssociationState.COOKIE_ECHOED,
                              AssociationState.ESTABLISHED):
            raise SctpProtocolError("association is shutting down")
        if max_retransmits is not None and max_packet_lifetime is not None:
            raise SctpProtocolError("a channel has max_retransmits or max_packet_lifetime, not both")
        # The lowest free id: ids of fully closed channels are reused, as browsers do.
        stream_id = self._channel_id_base
        while stream_id in self._channels:
            stream_id += 2
        if stream_id >= self._outbound_streams:
            raise SctpProtocolError("no free stream id within the negotiated stream count")
        open_msg = DataChannelOpen.for_channel(label, protocol, ordered, max_retransmits, max_packet_lifetime,
                                               priority)
        self._channels[stream_id] = _Channel(
            stream_id, label, protocol, ordered, open_msg.reliability, priority, ChannelState.CONNECTING
        )
        self._queue_message(stream_id, Ppid.DCEP, open_msg.serialize(), True, None, None, 0.0)
        return stream_id

    def send(self, stream_id: int, data: Union[bytes, str], now: Optional[float] = None) -> bool:
        """Queue one message on an open (or opening) channel; False (counted) when refused:
        no such channel, a closing one, or a message over the peer's max-message-size.

        ``now`` starts the lifetime clock of a timed channel; by default the latest
        time the association was given.
        """
        if now is None:
            now = self._now
        channel = self._channels.get(stream_id)
        if channel is None or channel.state is ChannelState.CLOSING:
            self.counters.send_no_channel += 1
            return False
        if isinstance(data, str):
            payload = data.encode("utf-8")
            ppid = Ppid.STRING if payload else Ppid.STRING_EMPTY
        else:
            payload = bytes(data)
            ppid = Ppid.BINARY if payload else Ppid.BINARY_EMPTY
        if not payload:
            # RFC 8831 §6.6: an empty message is sent as one zero byte with the *_EMPTY PPID.
            payload = b"\x00"
        if self.remote_max_message_size and len(payload) > self.remote_max_message_size:
            self.counters.send_too_large += 1
            return False
        # RFC 8832 §6: until the ACK arrives, messages go ordered so they cannot overtake the OPEN.
        ordered = channel.ordered or channel.state is ChannelState.CONNECTING
        rel = channel.reliability
        expiry = None if rel.max_packet_lifetime is None else now + rel.max_packet_lifetime / 1000
        self._queue_message(stream_id, ppid, payload, ordered, rel.max_retransmits, expiry, now)
        return True

    def close_channel(self, stream_id: int) -> None:
        """Reset our outgoing stream (RFC 8831 §6.7); ChannelClosed follows once both sides reset."""
        channel = self._channels.get(stream_id)
        if channel is None or channel.reset_requested:
            return
        channel.state = ChannelState.CLOSING
        channel.reset_requested = True
        self._reset_queue.append(stream_id)

    def shutdown(self) -> None:
        """Graceful close: deliver what is queued, then SHUTDOWN (RFC 9260 §9.2)."""
        if self.state is AssociationState.ESTABLISHED:
            self.state = AssociationState.SHUTDOWN_PENDING
        elif self.state in (AssociationState.CLOSED, AssociationState.COOKIE_WAIT, AssociationState.COOKIE_ECHOED):
            self._close("shutdown")

    def abort(self, reason: str = "abort") -> None:
        if self.state is AssociationState.CLOSED:
            return
        self._control.append(c.AbortChunk())
        self._close(reason)

    @property
    def channels(self) -> dict[int, str]:
        """stream id -> label of the channels that are not fully closed."""
        return {sid: ch.label for sid, ch in self._channels.items()}

    def channel_state(self, stream_id: int) -> Optional[ChannelState]:
        ch = self._channels.get(stream_id)
        return None if ch is None else ch.state

    @property
    def rto(self) -> float:
        return self._rto

    @property
    def cwnd(self) -> int:
        return self._cwnd

    @property
    def unacked_chunks(self) -> int:
        """DATA chunks sent and not yet covered by the peer's cumulative ack (abandoned ones included)."""
        return len(self._sent)

    @property
    def buffered_amount(self) -> int:
        return sum(len(ch.data) for ch in self._outbound)

    # ------------------------------------------------------------ receiving

    def receive_packet(self, data: bytes, now: float) -> None:
        self.counters.packets_received += 1
        self._now = max(self._now, now)
        if self._close_reported:
            # One association per object: after it ended, nothing restarts it.
            self.counters.unexpected_chunks += 1
            return
        try:
            packet = c.parse_packet(data)
        except SctpParseError:
            self.counters.malformed_packets += 1
            return
        if packet.destination_port != self.local_port or not packet.chunks:
            self.counters.malformed_packets += 1
            return
        if not self._verification_tag_ok(packet):
            self.counters.bad_verification_tag += 1
            return
        had_data = False
        for chunk in packet.chunks:
            if self.state is AssociationState.CLOSED and not isinstance(chunk, (c.InitChunk, c.CookieEchoChunk)):
                self.counters.unexpected_chunks += 1
                continue
            if isinstance(chunk, c.DataChunk):
                had_data = True
                self._receive_data(chunk)
            elif isinstance(chunk, c.UnknownChunk):
                self.counters.unknown_chunks += 1
                # RFC 9260 §3.2: top bit clear means stop processing the packet.
                if not chunk.type & 0x80:
                    break
            else:
                try:
                    self._receive_control(chunk, now)
                except SctpParseError:
                    self.counters.malformed_packets += 1
        if had_data:
            self._after_data(now)

    def _verification_tag_ok(self, packet: c.Packet) -> bool:
        first = packet.chunks[0]
        if len(packet.chunks) > 1 and any(type(ch) is c.InitChunk for ch in packet.chunks):
            return False
        if isinstance(first, c.InitChunk) and not isinstance(first, c.InitAckChunk):
            # RFC 9260 §8.5.1: INIT has tag 0 and travels alone.
            return packet.verification_tag == 0 and len(packet.chunks) == 1
        if isinstance(first, (c.AbortChunk, c.ShutdownCompleteChunk)) and not isinstance(first, c.ErrorChunk):
            if first.flags & c.FLAG_T:
                return packet.verification_tag == self._remote_tag and self._remote_tag != 0
        return packet.verification_tag == self._local_tag

    def _receive_control(self, chunk: c.Chunk, now: float) -> None:
        state = self.state
        if isinstance(chunk, c.SackChunk):
            if state in _DATA_STATES or state is AssociationState.SHUTDOWN_ACK_SENT:
                self._receive_sack(chunk, now)
        elif isinstance(chunk, c.InitAckChunk):
            if state is AssociationState.COOKIE_WAIT:
                self._receive_init_ack(chunk, now)
        elif isinstance(chunk, c.InitChunk):
            self._receive_init(chunk, now)
        elif isinstance(chunk, c.CookieEchoChunk):
            self._receive_cookie_echo(chunk, now)
        elif isinstance(chunk, c.CookieAckChunk):
            if state is AssociationState.COOKIE_ECHOED:
                self._t1_at = None
                self._established()
        elif isinstance(chunk, c.HeartbeatAckChunk):
            pass
        elif isinstance(chunk, c.HeartbeatChunk):
            self._control.append(c.HeartbeatAckChunk(chunk.params))
        elif isinstance(chunk, c.ForwardTsnChunk):
            if state in _DATA_STATES and self._tracker is not None:
                self._receive_forward_tsn(chunk)
                self._after_data(now, immediate=True)
        elif isinstance(chunk, c.ReconfigChunk):
            if state in _DATA_STATES:
                self._receive_reconfig(chunk, now)
        elif isinstance(chunk, c.ErrorChunk):
            if state in (AssociationState.COOKIE_WAIT, AssociationState.COOKIE_ECHOED):
                self._close("peer reported an error during setup")
        elif isinstance(chunk, c.AbortChunk):
            # Nothing more goes to a peer that aborted, not even queued replies.
            self._control.clear()
            self._close("aborted by peer")
        elif isinstance(chunk, c.ShutdownChunk):
            if state in _DATA_STATES:
                self._receive_cum_ack(chunk.cumulative_tsn)
                if state is not AssociationState.SHUTDOWN_SENT:
                    self.state = AssociationState.SHUTDOWN_RECEIVED
                else:
                    self._send_shutdown_ack(now)
        elif isinstance(chunk, c.ShutdownAckChunk):
            if state in (AssociationState.SHUTDOWN_SENT, AssociationState.SHUTDOWN_ACK_SENT):
                self._control.append(c.ShutdownCompleteChunk())
                self._close("shutdown")
        elif isinstance(chunk, c.ShutdownCompleteChunk):
            if state is AssociationState.SHUTDOWN_ACK_SENT:
                self._close("shutdown")
        else:
            self.counters.unexpected_chunks += 1

    # association setup

    def _init_params(self) -> c.Params:
        return [
            (c.ParamType.FORWARD_TSN_SUPPORTED, b""),
            (c.ParamType.SUPPORTED_EXTENSIONS, bytes([c.ChunkType.RECONFIG, c.ChunkType.FORWARD_TSN])),
        ]

    @staticmethod
    def _peer_supports_forward_tsn(params: c.Params) -> bool:
        for ptype, value in params:
            if ptype == c.ParamType.FORWARD_TSN_SUPPORTED:
                return True
            if ptype == c.ParamType.SUPPORTED_EXTENSIONS and c.ChunkType.FORWARD_TSN in value:
                return True
        return False

    def _receive_init(self, init: c.InitChunk, now: float) -> None:
        if init.initiate_tag == 0 or init.outbound_streams == 0 or init.inbound_streams == 0:
            self.counters.unexpected_chunks += 1
            return
        if self.state not in (AssociationState.CLOSED, AssociationState.COOKIE_WAIT,
                              AssociationState.COOKIE_ECHOED, AssociationState.ESTABLISHED):
            return
        body = _COOKIE.pack(
            now,
            init.initiate_tag,
            init.initial_tsn,
            init.a_rwnd,
            init.outbound_streams,
            init.inbound_streams,
            1 if self._peer_supports_forward_tsn(init.params) else 0,
            self._local_tag,
        )
        cookie = body + self._cookie_mac(body)
        params = self._init_params() + [(c.ParamType.STATE_COOKIE, cookie)]
        ack = c.InitAckChunk(self._local_tag, self._our_rwnd(), MAX_STREAMS, MAX_STREAMS, self._initial_tsn, params)
        # The INIT-ACK goes out under the tag the INIT announced, alone.
        self._send_alone(ack, init.initiate_tag)

    def _cookie_mac(self, body: bytes) -> bytes:
        return hmac.new(self._cookie_key, body, hashlib.sha256).digest()[:_COOKIE_MAC_LENGTH]

    def _receive_cookie_echo(self, echo: c.CookieEchoChunk, now: float) -> None:
        cookie = echo.cookie
        if len(cookie) != _COOKIE.size + _COOKIE_MAC_LENGTH:
            self.counters.unexpected_chunks += 1
            return
        body, mac = cookie[: _COOKIE.size], cookie[_COOKIE.size :]
        if not hmac.compare_digest(mac, self._cookie_mac(body)):
            self.counters.unexpected_chunks += 1
            return
        created, peer_tag, peer_tsn, peer_rwnd, _out, _in, fwd, our_tag = _COOKIE.unpack(body)
        if our_tag != self._local_tag or not (created - 1.0 <= now <= created + COOKIE_LIFETIME):
            self.counters.unexpected_chunks += 1
            return
        if self.state in (AssociationState.CLOSED, AssociationState.COOKIE_WAIT, AssociationState.COOKIE_ECHOED):
            self._adopt_peer(peer_tag, peer_tsn, peer_rwnd, bool(fwd), _out, _in)
            self._t1_at = None
            self._control.append(c.CookieAckChunk())
            self._established()
        elif self.state is AssociationState.ESTABLISHED and peer_tag == self._remote_tag:
            # Our COOKIE-ACK was lost; say it again (RFC 9260 §5.2.4 action D).
            self._control.append(c.CookieAckChunk())
        else:
            self.counters.unexpected_chunks += 1

    def _receive_init_ack(self, ack: c.InitAckChunk, now: float) -> None:
        cookie = next((v for t, v in ack.params if t == c.ParamType.STATE_COOKIE), None)
        if cookie is None or ack.initiate_tag == 0:
            self.counters.unexpected_chunks += 1
            return
        if ack.outbound_streams == 0 or ack.inbound_streams == 0:
            self.counters.unexpected_chunks += 1
            return
        self._adopt_peer(
            ack.initiate_tag,
            ack.initial_tsn,
            ack.a_rwnd,
            self._peer_supports_forward_tsn(ack.params),
            ack.outbound_streams,
            ack.inbound_streams,
        )
        echo = c.CookieEchoChunk(cookie)
        self._control.append(echo)
        self._start_t1(echo, self._remote_tag, now)
        self.state = AssociationState.COOKIE_ECHOED

    def _adopt_peer(
        self, tag: int, initial_tsn: int, rwnd: int, forward_tsn: bool, peer_outbound: int, peer_inbound: int
    ) -> None:
        self._outbound_streams = min(MAX_STREAMS, peer_inbound)
        self._inbound_streams = min(MAX_STREAMS, peer_outbound)
        self._remote_tag = tag
        self._peer_rwnd = rwnd
        self._peer_forward_tsn = forward_tsn
        if self._tracker is None or self._peer_reconfig_expected != initial_tsn:
            self._tracker = TsnTracker(initial_tsn)
        self._peer_reconfig_expected = initial_tsn

    def _established(self) -> None:
        if self.state is not AssociationState.ESTABLISHED:
            self.state = AssociationState.ESTABLISHED
            self._events.append(AssociationEstablished())

    def _start_t1(self, chunk: c.Chunk, tag: int, now: float) -> None:
        self._t1_chunk = chunk
        self._t1_tag = tag
        self._t1_count = 0
        self._t1_at = now + self._rto

    # data receive

    def _our_rwnd(self) -> int:
        return max(0, self.receive_window - self._reassembler.buffered_bytes)

    def _receive_data(self, chunk: c.DataChunk) -> None:
        tracker = self._tracker
        if tracker is None or self.state not in _DATA_STATES:
            self.counters.unexpected_chunks += 1
            return
        self.counters.data_chunks_received += 1
        self._sack_pending = True
        if chunk.stream_id >= self._inbound_streams:
            # RFC 9260 §6.5 says report it; dropping is enough to stay safe. It is
            # still acknowledged, as the sender would otherwise retransmit it forever.
            self.counters.invalid_stream += 1
            if not tracker.is_duplicate(chunk.tsn) and tracker.distance(chunk.tsn) <= MAX_TSN_AHEAD:
                tracker.add(chunk.tsn)
            return
        tsn = chunk.tsn
        if tracker.is_duplicate(tsn):
            self.counters.duplicate_tsns += 1
            tracker.note_duplicate(tsn)
            self._sack_now = True
            return
        distance = tracker.distance(tsn)
        reasm = self._reassembler
        in_order = distance == 1
        # Dropped chunks are not acknowledged: the peer sends them again once there is room.
        admission = Admission.NO_BUFFER if distance > MAX_TSN_AHEAD else reasm.admit(chunk, in_order)
        if admission is not Admission.ACCEPT:
            if admission is Admission.STREAM_FULL:
                self.counters.data_dropped_stream_full += 1
            else:
                self.counters.data_dropped_no_buffer += 1
            self._sack_now = True
            return
        tracker.add(tsn)
        if not in_order or tracker.has_gaps:
            self._sack_now = True
        try:
            delivered = reasm.add(chunk)
        except SctpProtocolError as exc:
            self.counters.malformed_messages += 1
            self._abort_with_cause(str(exc))
            return
        for stream_id, ppid, data in delivered:
            self._deliver(stream_id, ppid, data)

    def _after_data(self, now: float, immediate: bool = False) -> None:
        self._data_packets_unacked += 1
        if immediate or self._sack_now or self._data_packets_unacked >= 2:
            self._sack_now = True
        elif self._delayed_sack_at is None:
            self._delayed_sack_at = now + DELAYED_SACK
        self._check_deferred_reset()

    def _receive_forward_tsn(self, chunk: c.ForwardTsnChunk) -> None:
        self.counters.forward_tsn_received += 1
        assert self._tracker is not None
        self._sack_pending = True
        new_cum = chunk.new_cumulative_tsn
        if not tsn_gt(new_cum, self._tracker.cumulative_tsn) or tsn_diff(
            new_cum, self._tracker.cumulative_tsn
        ) > MAX_TSN_AHEAD:
            return
        self._tracker.forward_to(new_cum)
        for stream_id, ppid, data in self._reassembler.forward_tsn(new_cum, chunk.streams):
            self._deliver(stream_id, ppid, data)

    def _deliver(self, stream_id: int, ppid: int, data: bytes) -> None:
        if ppid == Ppid.DCEP:
            self._receive_dcep(stream_id, data)
            return
        channel = self._channels.get(stream_id)
        if channel is None:
            self.counters.malformed_messages += 1
            return
        if channel.state is ChannelState.CONNECTING:
            # RFC 8832 §6: any user message implies the peer got our OPEN.
            self._channel_acked(channel)
        payload: Union[bytes, str]
        if ppid == Ppid.STRING:
            try:
                payload = data.decode("utf-8")
            except UnicodeDecodeError:
                self.counters.malformed_messages += 1
                return
        elif ppid == Ppid.STRING_EMPTY:
            payload = ""
        elif ppid == Ppid.BINARY:
            payload = data
        elif ppid == Ppid.BINARY_EMPTY:
            payload = b""
        else:
            self.counters.malformed_messages += 1
            return
        self.counters.messages_received += 1
        self._events.append(MessageReceived(stream_id, payload, ppid))

    def _receive_dcep(self, stream_id: int, data: bytes) -> None:
        try:
            msg = parse_dcep(data)
        except SctpParseError:
            self.counters.malformed_messages += 1
            return
        channel = self._channels.get(stream_id)
        if isinstance(msg, DataChannelOpen):
            if channel is not None:
                self.counters.malformed_messages += 1
                return
            if (len(self._channels) >= MAX_CHANNELS or len(msg.label.encode("utf-8")) > MAX_LABEL_BYTES
                    or len(msg.protocol.encode("utf-8")) > MAX_LABEL_BYTES):
                # No ACK: the peer's channel never opens; its messages on the stream are dropped
                # (no channel) like any message on an unknown stream.
                self.counters.channel_opens_refused += 1
                return
            channel = _Channel(
                stream_id, msg.label, msg.protocol, msg.ordered, msg.reliability, msg.priority, ChannelState.OPEN
            )
            self._channels[stream_id] = channel
            self._queue_message(stream_id, Ppid.DCEP, DataChannelAck().serialize(), True, None, None, 0.0)
            self._events.append(ChannelOpened(stream_id, msg.label, msg.protocol, msg.ordered, msg.reliability))
        elif isinstance(msg, DataChannelAck):
            if channel is None or channel.state is not ChannelState.CONNECTING:
                self.counters.malformed_messages += 1
                return
            self._channel_acked(channel)

    def _channel_acked(self, channel: _Channel) -> None:
        channel.state = ChannelState.OPEN
        self._events.append(
            ChannelOpened(channel.stream_id, channel.label, channel.protocol, channel.ordered, channel.reliability,
                          locally_initiated=True)
        )

    # data send

    def _queue_message(
        self,
        stream_id: int,
        ppid: int,
        payload: bytes,
        ordered: bool,
        max_retransmits: Optional[int],
        expiry: Optional[float],
        now: float,
    ) -> None:
        if ordered:
            ssn = self._stream_ssn.get(stream_id, 0)
            self._stream_ssn[stream_id] = (ssn + 1) & 0xFFFF
        else:
            ssn = 0
        message = _OutMessage(stream_id, ordered, ssn, max_retransmits, expiry)
        base_flags = 0 if ordered else c.FLAG_UNORDERED
        total = len(payload)
        for pos in range(0, total, MAX_DATA_PAYLOAD):
            flags = base_flags
            if pos == 0:
                flags |= c.FLAG_BEGIN
            if pos + MAX_DATA_PAYLOAD >= total:
                flags |= c.FLAG_END
            self._outbound.append(_OutChunk(message, flags, ppid, payload[pos : pos + MAX_DATA_PAYLOAD]))
        self.counters.messages_sent += 1

    def _receive_cum_ack(self, cum: int) -> int:
        """Release everything up to ``cum``; return the bytes newly acknowledged."""
        acked_bytes = 0
        if not tsn_gt(cum, self._last_cum_ack) or not tsn_gt(self._next_tsn, cum):
            return 0
        sent = self._sent
        tsn = tsn_add(self._last_cum_ack, 1)
        count = tsn_diff(cum, self._last_cum_ack)
        for _ in range(count):
            chunk = sent.pop(tsn, None)
            tsn = tsn_add(tsn, 1)
            if chunk is None:
                continue
            if not chunk.acked:
                acked_bytes += len(chunk.data)
                chunk.acked = True
            if chunk.in_flight:
                chunk.in_flight = False
                self._flight_size -= len(chunk.data)
        self._last_cum_ack = cum
        if tsn_gt(cum, self._advanced_peer_ack):
            self._advanced_peer_ack = cum
        return acked_bytes

    def _receive_sack(self, sack: c.SackChunk, now: float) -> None:
        self.counters.sacks_received += 1
        cum = sack.cumulative_tsn
        if tsn_gt(self._last_cum_ack, cum) or not tsn_gt(self._next_tsn, cum):
            return  # stale or acknowledges what we never sent
        flight_before = self._flight_size
        advanced = cum != self._last_cum_ack
        acked_bytes = self._receive_cum_ack(cum)

        # Gap blocks: must be increasing and disjoint, within what we have sent.
        highest_newly_acked = None
        outstanding = tsn_diff(tsn_add(self._next_tsn, -1), cum)
        prev_end = 0
        for start, end in sack.gaps:
            if start <= prev_end or end < start:
                break
            prev_end = end
            for off in range(start, min(end, outstanding) + 1):
                chunk = self._sent.get(tsn_add(cum, off))
                if chunk is not None and not chunk.acked:
                    chunk.acked = True
                    chunk.retransmit = False
                    acked_bytes += len(chunk.data)
                    if chunk.in_flight:
                        chunk.in_flight = False
                        self._flight_size -= len(chunk.data)
                    highest_newly_acked = chunk.tsn
            if end >= outstanding:
                break

        # One timed chunk per round trip (RFC 9260 §6.3.1 C4); never one sent twice (C5, Karn).
        probe = self._rtt_probe
        if probe is not None and probe.acked:
            self._rtt_probe = None
            if probe.sent_count == 1 and not probe.message.abandoned:
                self._update_rto(now - probe.sent_time)

        # Fast retransmit: three reports of a hole (RFC 9260 §7.2.4).
        newly_marked = False
        if highest_newly_acked is not None:
            for chunk in self._sent.values():
                if not tsn_gt(highest_newly_acked, chunk.tsn):
                    break
                if chunk.acked or chunk.message.abandoned or chunk.fast_retransmitted:
                    continue
                chunk.misses += 1
                if chunk.misses >= 3:
                    chunk.fast_retransmitted = True
                    if self._abandon_if_due(chunk, now):
                        continue
                    chunk.retransmit = True
                    self._maybe_retransmits = True
                    newly_marked = True
                    if chunk.in_flight:
                        chunk.in_flight = False
                        self._flight_size -= len(chunk.data)
        if newly_marked:
            self.counters.fast_retransmits += 1
            if self._fast_recovery_exit is None:
                self._ssthresh = max(self._cwnd // 2, 4 * MAX_PACKET_SIZE)
                self._cwnd = self._ssthresh
                self._partial_bytes_acked = 0
                self._fast_recovery_exit = tsn_add(self._next_tsn, -1)

        # Congestion window growth (RFC 9260 §7.2.1, §7.2.2).
        if self._fast_recovery_exit is not None and tsn_ge(cum, self._fast_recovery_exit):
            self._fast_recovery_exit = None
        if advanced and self._fast_recovery_exit is None:
            if self._cwnd <= self._ssthresh:
                if flight_before + MAX_PACKET_SIZE >= self._cwnd:
                    self._cwnd += min(acked_bytes, MAX_PACKET_SIZE)
            else:
                self._partial_bytes_acked += acked_bytes
                if self._partial_bytes_acked >= self._cwnd and flight_before + MAX_PACKET_SIZE >= self._cwnd:
                    self._partial_bytes_acked -= self._cwnd
                    self._cwnd += MAX_PACKET_SIZE

        self._peer_rwnd = max(0, sack.a_rwnd - self._flight_size)
        if advanced:
            self._t3_count = 0
        if not self._sent:
            self._t3_at = None
        elif advanced:
            self._t3_at = now + self._rto
        self._update_advanced_peer_ack()

    def _update_rto(self, rtt: float) -> None:
        if rtt < 0:
            return
        if self._srtt is None:
            self._srtt = rtt
            self._rttvar = rtt / 2
        else:
            self._rttvar = (1 - RTO_BETA) * self._rttvar + RTO_BETA * abs(self._srtt - rtt)
            self._srtt = (1 - RTO_ALPHA) * self._srtt + RTO_ALPHA * rtt
        self._rto = min(RTO_MAX, max(RTO_MIN, self._srtt + 4 * self._rttvar))

    def _abandon_if_due(self, chunk: _OutChunk, now: float) -> bool:
        """PR-SCTP (RFC 3758 §3.5): drop the whole message once its budget is spent."""
        message = chunk.message
        if message.abandoned:
            return True
        if not self._peer_forward_tsn:
            return False
        over_budget = message.max_retransmits is not None and chunk.sent_count > message.max_retransmits
        expired = message.expiry is not None and now >= message.expiry
        if not (over_budget or expired):
            return False
        message.abandoned = True
        for other in self._sent.values():
            if other.message is message:
                self.counters.chunks_abandoned += 1
                other.retransmit = False
                if other.in_flight:
                    other.in_flight = False
                    self._flight_size -= len(other.data)
        # Unsent fragments are dropped when they reach the head of the queue.
        return True

    def _update_advanced_peer_ack(self) -> None:
        if not self._peer_forward_tsn:
            return
        apa = self._advanced_peer_ack
        if tsn_gt(self._last_cum_ack, apa):
            apa = self._last_cum_ack
        while True:
            chunk = self._sent.get(tsn_add(apa, 1))
            if chunk is None or not chunk.message.abandoned:
                break
            apa = tsn_add(apa, 1)
        self._advanced_peer_ack = apa
        if tsn_gt(apa, self._last_cum_ack):
            self._forward_tsn_pending = True

    def _forward_tsn_chunk(self) -> c.ForwardTsnChunk:
        streams: dict[int, int] = {}
        tsn = tsn_add(self._last_cum_ack, 1)
        for _ in range(tsn_diff(self._advanced_peer_ack, self._last_cum_ack)):
            chunk = self._sent.get(tsn)
            tsn = tsn_add(tsn, 1)
            if chunk is not None and chunk.message.ordered:
                streams[chunk.message.stream_id] = chunk.message.ssn
        return c.ForwardTsnChunk(self._advanced_peer_ack, sorted(streams.items()))

    # stream reset (RFC 6525)

    def _receive_reconfig(self, chunk: c.ReconfigChunk, now: float) -> None:
        for ptype, value in chunk.params:
            if ptype == c.ParamType.OUTGOING_SSN_RESET_REQUEST:
                self._receive_reset_request(c.OutgoingResetRequest.parse(value))
            elif ptype == c.ParamType.RECONFIG_RESPONSE:
                self._receive_reconfig_response(c.ReconfigResponse.parse(value), now)
            elif ptype in (
                c.ParamType.INCOMING_SSN_RESET_REQUEST,
                c.ParamType.SSN_TSN_RESET_REQUEST,
                c.ParamType.ADD_OUTGOING_STREAMS_REQUEST,
                c.ParamType.ADD_INCOMING_STREAMS_REQUEST,
            ):
                if len(value) >= 4:
                    seq = int.from_bytes(value[:4], "big")
                    self._send_reconfig_response(c.ReconfigResponse(seq, c.ReconfigResult.DENIED))

    def _send_reconfig_response(self, response: c.ReconfigResponse) -> None:
        self._control.append(c.ReconfigChunk([response.to_param()]))

    def _receive_reset_request(self, request: c.OutgoingResetRequest) -> None:
        expected = self._peer_reconfig_expected
        if request.request_seq == expected:
            if self._peer_reconfig_deferred is None:
                self._peer_reconfig_deferred = request
            self._check_deferred_reset(always_answer=True)
        elif request.request_seq == tsn_add(expected, -1) and self._peer_reconfig_last_response is not None:
            self._send_reconfig_response(self._peer_reconfig_last_response)
        else:
            self._send_reconfig_response(
                c.ReconfigResponse(request.request_seq, c.ReconfigResult.ERROR_BAD_SEQUENCE_NUMBER)
            )

    def _check_deferred_reset(self, always_answer: bool = False) -> None:
        request = self._peer_reconfig_deferred
        if request is None or self._tracker is None:
            return
        if not tsn_ge(self._tracker.cumulative_tsn, request.last_tsn):
            # RFC 6525 §5.2.2 E2: wait for the data sent before the reset.
            if always_answer:
                self._send_reconfig_response(c.ReconfigResponse(request.request_seq, c.ReconfigResult.IN_PROGRESS))
            return
        self._peer_reconfig_deferred = None
        streams = request.streams or list(self._channels)
        for stream_id in streams:
            self._reassembler.reset_stream(stream_id)
            channel = self._channels.get(stream_id)
            if channel is None:
                continue
            channel.inbound_reset = True
            # RFC 8831 §6.7: a reset of the peer's outgoing stream closes the channel both ways.
            self.close_channel(stream_id)
            self._maybe_channel_closed(channel)
        response = c.ReconfigResponse(request.request_seq, c.ReconfigResult.SUCCESS_PERFORMED)
        self._peer_reconfig_last_response = response
        self._peer_reconfig_expected = tsn_add(self._peer_reconfig_expected, 1)
        self._send_reconfig_response(response)

    def _receive_reconfig_response(self, response: c.ReconfigResponse, now: float) -> None:
        request = self._reconfig_request
        if request is None or response.response_seq != request.request_seq:
            return
        if response.result == c.ReconfigResult.IN_PROGRESS:
            self._reconfig_at = now + self._rto
            return
        self._reconfig_request = None
        self._reconfig_at = None
        self._reconfig_seq = tsn_add(self._reconfig_seq, 1)
        for stream_id in request.streams:
            self._stream_ssn.pop(stream_id, None)
            channel = self._channels.get(stream_id)
            if channel is not None:
                channel.outbound_reset = True
                if response.result not in (c.ReconfigResult.SUCCESS_PERFORMED,
                                           c.ReconfigResult.SUCCESS_NOTHING_TO_DO):
                    # Refused: the channel is closed for us regardless, as the application asked.
                    channel.inbound_reset = True
                self._maybe_channel_closed(channel)

    def _maybe_channel_closed(self, channel: _Channel) -> None:
        if channel.inbound_reset and channel.outbound_reset:
            self._channels.pop(channel.stream_id, None)
            self._events.append(ChannelClosed(channel.stream_id))

    def _maybe_send_reset_request(self, now: float) -> None:
        if self._reconfig_request is not None or not self._reset_queue:
            return
        if self.state is not AssociationState.ESTABLISHED:
            return
        queued = {ch.message.stream_id for ch in self._outbound}
        ready = [sid for sid in self._reset_queue if sid not in queued]
        if not ready:
            return
        self._reset_queue = [sid for sid in self._reset_queue if sid in queued]
        self._reconfig_request = c.OutgoingResetRequest(
            self._reconfig_seq,
            tsn_add(self._peer_reconfig_expected, -1),
            tsn_add(self._next_tsn, -1),
            ready,
        )
        self._control.append(c.ReconfigChunk([self._reconfig_request.to_param()]))
        self._reconfig_at = now + self._rto

    # shutdown / close

    def _send_shutdown_ack(self, now: float) -> None:
        self._control.append(c.ShutdownAckChunk())
        self.state = AssociationState.SHUTDOWN_ACK_SENT
        self._t2_at = now + self._rto
        self._t2_count = 0

    def _maybe_progress_shutdown(self, now: float) -> None:
        if self._outbound or self._sent:
            return
        if self.state is AssociationState.SHUTDOWN_PENDING:
            self.state = AssociationState.SHUTDOWN_SENT
            self._control.append(c.ShutdownChunk(self._tracker.cumulative_tsn if self._tracker else 0))
            self._t2_at = now + self._rto
            self._t2_count = 0
        elif self.state is AssociationState.SHUTDOWN_RECEIVED:
            self._send_shutdown_ack(now)

    def _abort_with_cause(self, reason: str) -> None:
        self._control.append(c.AbortChunk())
        self._close(reason)

    def _close(self, reason: str) -> None:
        already = self._close_reported
        self._close_reported = True
        self.state = AssociationState.CLOSED
        self._t1_at = self._t2_at = self._t3_at = self._delayed_sack_at = self._reconfig_at = None
        self._outbound.clear()
        self._sent.clear()
        self._flight_size = 0
        for stream_id in list(self._channels):
            self._events.append(ChannelClosed(stream_id))
        self._channels.clear()
        if not already:
            self._events.append(AssociationClosed(reason))
        self._tracker = None
        # Whatever a peer left half-sent is freed now, not when the object goes.
        self._reassembler = Reassembler(self.max_message_size, self.receive_window)

    # ------------------------------------------------------------ timers

    def handle_timeout(self, now: float) -> None:
        self._now = max(self._now, now)
        if self._t1_at is not None and now >= self._t1_at:
            self._t1_count += 1
            if self._t1_count > MAX_INIT_RETRANSMITS:
                self._close("association setup timed out")
                return
            self._rto = min(RTO_MAX, self._rto * 2)
            assert self._t1_chunk is not None
            if isinstance(self._t1_chunk, c.InitChunk):
                self._send_alone(self._t1_chunk, 0)
            else:
                self._control.append(self._t1_chunk)
            self._t1_at = now + self._rto
        if self._t2_at is not None and now >= self._t2_at:
            self._t2_count += 1
            if self._t2_count > MAX_ASSOCIATION_RETRANSMITS:
                self._close("shutdown timed out")
                return
            if self.state is AssociationState.SHUTDOWN_SENT:
                self._control.append(c.ShutdownChunk(self._tracker.cumulative_tsn if self._tracker else 0))
            elif self.state is AssociationState.SHUTDOWN_ACK_SENT:
                self._control.append(c.ShutdownAckChunk())
            self._t2_at = now + self._rto
        if self._delayed_sack_at is not None and now >= self._delayed_sack_at:
            self._sack_now = True
            self._delayed_sack_at = None
        if self._reconfig_at is not None and now >= self._reconfig_at:
            if self._reconfig_request is not None:
                self._control.append(c.ReconfigChunk([self._reconfig_request.to_param()]))
                self._reconfig_at = now + self._rto
            else:
                self._reconfig_at = None
        if self._t3_at is not None and now >= self._t3_at:
            self._t3_expired(now)

    def _t3_expired(self, now: float) -> None:
        self._t3_at = None
        if not self._sent:
            return
        self.counters.t3_expirations += 1
        self._t3_count += 1
        if self._t3_count > MAX_ASSOCIATION_RETRANSMITS:
            self._abort_with_cause("too many retransmissions")
            return
        self._rto = min(RTO_MAX, self._rto * 2)
        # Anything in flight now may be acknowledged only after a retransmission: no sample from it.
        self._rtt_probe = None
        self._ssthresh = max(self._cwnd // 2, 4 * MAX_PACKET_SIZE)
        self._cwnd = MAX_PACKET_SIZE
        self._partial_bytes_acked = 0
        self._fast_recovery_exit = None
        for chunk in list(self._sent.values()):
            if chunk.acked or chunk.message.abandoned:
                continue
            if self._abandon_if_due(chunk, now):
                continue
            chunk.retransmit = True
            self._maybe_retransmits = True
            if chunk.in_flight:
                chunk.in_flight = False
                self._flight_size -= len(chunk.data)
        self._update_advanced_peer_ack()
        if tsn_gt(self._advanced_peer_ack, self._last_cum_ack):
            self._forward_tsn_pending = True
        # Kept running while anything is unacknowledged, abandoned chunks included,
        # so a lost FORWARD-TSN is sent again.
        self._t3_at = now + self._rto

    # ------------------------------------------------------------ sending

    def _send_alone(self, chunk: c.Chunk, tag: int) -> None:
        self._control.append(_Alone(chunk, tag))

    def packets_to_send(self, now: float) -> list[bytes]:
        self._now = max(self._now, now)
        packets: list[bytes] = []
        pieces: list[bytes] = []
        size = c.COMMON_HEADER_LENGTH
        tag = self._remote_tag

        def flush() -> None:
            nonlocal pieces, size
            if pieces:
                packets.append(c.serialize_packet_from_chunks(self.local_port, self.remote_port, tag, b"".join(pieces)))
                pieces = []
                size = c.COMMON_HEADER_LENGTH

        def add(raw: bytes) -> None:
            nonlocal size
            if size + len(raw) > MAX_PACKET_SIZE:
                flush()
            pieces.append(raw)
            size += len(raw)

        if self.state in _DATA_STATES:
            self._maybe_send_reset_request(now)
        control, self._control = self._control, []
        for item in control:
            if isinstance(item, _Alone):
                packets.append(
                    c.serialize_packet_from_chunks(self.local_port, self.remote_port, item.tag,
                                                   c.serialize_chunk(item.chunk))
                )
                continue
            add(c.serialize_chunk(item))

        if self.state in _DATA_STATES or self.state is AssociationState.SHUTDOWN_ACK_SENT:
            data_pieces = self._data_to_send(now)
            if self._sack_pending and (self._sack_now or data_pieces):
                add(c.serialize_chunk(self._make_sack()))
            if self._forward_tsn_pending and tsn_gt(self._advanced_peer_ack, self._last_cum_ack):
                self._forward_tsn_pending = False
                self.counters.forward_tsn_sent += 1
                add(c.serialize_chunk(self._forward_tsn_chunk()))
            for raw in data_pieces:
                add(raw)
            if self._sent and self._t3_at is None:
                self._t3_at = now + self._rto
            self._maybe_progress_shutdown(now)
            if self._control:
                for item in self._control:
                    add(c.serialize_chunk(item))
                self._control = []
        flush()
        self.counters.packets_sent += len(packets)
        return packets

    def _make_sack(self) -> c.SackChunk:
        assert self._tracker is not None
        self._sack_pending = False
        self._sack_now = False
        self._data_packets_unacked = 0
        self._delayed_sack_at = None
        self.counters.sacks_sent += 1
        return c.SackChunk(
            self._tracker.cumulative_tsn, self._our_rwnd(), self._tracker.gap_blocks(), self._tracker.take_duplicates()
        )

    def _data_to_send(self, now: float) -> list[bytes]:
        out: list[bytes] = []
        cwnd = self._cwnd
        # Retransmissions first, oldest TSN first; a fast retransmit may exceed cwnd by one packet.
        budget_extra = MAX_PACKET_SIZE
        blocked = False
        for chunk in self._sent.values() if self._maybe_retransmits else ():
            if not chunk.retransmit or chunk.acked:
                continue
            if self._flight_size + len(chunk.data) > cwnd:
                if not (chunk.fast_retransmitted and budget_extra > 0):
                    blocked = True
                    break
                budget_extra -= len(chunk.data) + c.DATA_CHUNK_HEADER_LENGTH
            if self._abandon_if_due(chunk, now):
                continue
            chunk.retransmit = False
            chunk.sent_count += 1
            chunk.sent_time = now
            chunk.in_flight = True
            self._flight_size += len(chunk.data)
            self.counters.chunks_retransmitted += 1
            out.append(self._serialize_data(chunk))
        if blocked:
            # Outstanding retransmissions go before any new data (RFC 9260 §6.3.3 E3).
            return out
        self._maybe_retransmits = False
        if self._forward_tsn_pending:
            self._update_advanced_peer_ack()
        # New data, within cwnd and the peer's window (one chunk may probe a zero window).
        outbound = self._outbound
        while outbound:
            chunk = outbound[0]
            message = chunk.message
            if message.abandoned or (message.expiry is not None and now >= message.expiry
                                     and chunk.flags & c.FLAG_BEGIN and self._peer_forward_tsn):
                message.abandoned = True
                outbound.popleft()
                self.counters.chunks_abandoned += 1
                continue
            length = len(chunk.data)
            if self._flight_size + length > cwnd and self._flight_size > 0:
                break
            if length > self._peer_rwnd and self._flight_size > 0:
                break
            outbound.popleft()
            chunk.tsn = self._next_tsn
            self._next_tsn = tsn_add(self._next_tsn, 1)
            chunk.sent_count = 1
            chunk.sent_time = now
            chunk.in_flight = True
            self._flight_size += length
            self._peer_rwnd = max(0, self._peer_rwnd - length)
            self._sent[chunk.tsn] = chunk
            if self._rtt_probe is None:
                self._rtt_probe = chunk
            self.counters.data_chunks_sent += 1
            out.append(self._serialize_data(chunk))
        return out

    @staticmethod
    def _serialize_data(chunk: _OutChunk) -> bytes:
        # Per-packet path: packed straight from the queue entry, no DataChunk built.
        message = chunk.message
        length = c.DATA_CHUNK_HEADER_LENGTH + len(chunk.data)
        header = _DATA_CHUNK_HEADER.pack(
            c.ChunkType.DATA, chunk.flags, length, chunk.tsn, message.stream_id, message.ssn, chunk.ppid
        )
        return header + chunk.data + b"\x00" * (-length & 3)
