"""A sans-IO TURN server (RFC 8656, which obsoletes RFC 5766) that relays only to this node.

The server is a relay of last resort for clients whose UDP and TCP to the media port are
blocked: they reach it over UDP or TLS and it forwards their datagrams to the node's own media
port. It is *not* an open relay: a peer is only ever one of `peer_allowed`'s addresses (the
node's UDP media addresses); a CreatePermission, ChannelBind or Send naming any other address
is refused with 403 and counted, and a datagram arriving at a relayed address from anywhere
else is dropped and counted.

What a caller does (the Trio side is trio_sfu.media.turn_server), in the verbs of rtp/:

* `receive(data, client, client_addr, now, stream=...)` with each STUN message or ChannelData
  message from a client. `client` is the 5-tuple's stand-in, any hashable the caller picks (one
  per UDP source address, one per TLS connection); `stream` says the client is on a stream, where
  ChannelData is padded to 4 bytes (RFC 8656 §12.5).
* `receive_from_peer(data, relay, peer, now)` with each datagram a relayed address received.
* `handle_timeout(now)` at `next_deadline()`; `client_gone(client, now)` when a stream closes.
* After each, `datagrams_to_send(now)`: `ToClient` (bytes for a client) and `ToPeer` (a datagram
  a relayed socket sends), then `next_event()` until None: `RelayNeeded` (an Allocate passed
  authentication and quotas: bind a relayed socket and answer with
  `complete_allocation(request, relay_address_or_None, now)`), `AllocationEnded` (close that
  relayed socket).

Authentication is RFC 8656 §9 / RFC 8489 §9.2 long-term credentials: an unauthenticated request
gets 401 with REALM and NONCE; the nonce is stateless (an issue time and a MAC of it and the
client's IP) and older than `nonce_lifetime` gets 438 with a fresh one. Passwords come from
`password_for(username, allocating)` (rtp.turn_auth issues and checks them); quotas count
allocations per `owner_of(username)` (the participant a credential was issued to).
"""

from __future__ import annotations

import binascii
import collections
import hashlib
import hmac
import struct
from typing import Callable, Hashable, Iterator, Union

import attrs
from aioice import stun as _aioice_stun

from rtp.stun import (
    ATTR_FINGERPRINT,
    ATTR_MESSAGE_INTEGRITY,
    FINGERPRINT_XOR,
    HEADER_LENGTH,
    Class,
    Message,
    Method,
    StunParseError,
    find_attribute,
    long_term_key,
    parse_stun,
    verify_message_integrity,
)

Address = tuple[str, int]

#: REQUESTED-TRANSPORT value for UDP (protocol 17 in the top byte, RFC 8656 §18.7).
TRANSPORT_UDP = 17 << 24
CHANNEL_MIN = 0x4000
CHANNEL_MAX = 0x4FFF
ATTR_XOR_PEER_ADDRESS = 0x0012
ATTR_UNKNOWN_ATTRIBUTES = 0x000A
ATTR_REQUESTED_ADDRESS_FAMILY = 0x0017
FAMILY_IPV4 = 0x01
#: Comprehension-required attributes (below 0x8000, RFC 8489 §14) a request may carry here:
#: STUN's and TURN's that this server reads, and those it may ignore (DONT-FRAGMENT: relayed
#: datagrams go out as the kernel sends them; ICE's PRIORITY and USE-CANDIDATE on a Binding;
#: RFC 8489's SHA-256 integrity and user hash, answered as if absent). Any other one, such as
#: EVEN-PORT or RESERVATION-TOKEN, gets 420 with UNKNOWN-ATTRIBUTES.
_KNOWN_REQUIRED = frozenset({
    0x0001, 0x0006, 0x0008, 0x0009, 0x000A, 0x000C, 0x000D, 0x0012, 0x0013, 0x0014, 0x0015, 0x0016,
    0x0017, 0x0019, 0x001A, 0x001C, 0x001D, 0x001E, 0x0020, 0x0024, 0x0025,
})
#: RFC 8656 §3.4 / §9 / §12: permissions last 5 minutes, channel bindings 10.
PERMISSION_LIFETIME = 300.0
CHANNEL_LIFETIME = 600.0
#: How often expired state is swept; expiry is also checked on every use, so this only frees memory.
SWEEP_INTERVAL = 1.0
#: Largest STUN or ChannelData message accepted (a UDP datagram; also the stream frame cap).
MAX_MESSAGE = 65535 + 4
#: Source IPs whose challenge rate is tracked at once (the least recently seen is forgotten).
MAX_CHALLENGE_SOURCES = 4096
#: Peers one CreatePermission may name.
MAX_PEERS_PER_REQUEST = 8
#: Permissions and channels one allocation may hold (the allowed peers are few anyway).
MAX_PERMISSIONS = 32
MAX_CHANNELS = 32

_CHANNEL_HEADER = struct.Struct("!HH")


@attrs.define
class TurnLimits:
    """Bounds on what clients may hold. Defaults suit a node of a few hundred participants."""

    max_allocations: int = 1000
    max_allocations_per_user: int = 12
    max_allocations_per_ip: int = 64
    default_lifetime: int = 600
    max_lifetime: int = 3600
    nonce_lifetime: float = 600.0
    # Relayed traffic of one allocation, both directions together; a burst of one second.
    max_packets_per_second: int = 5000
    max_bytes_per_second: int = 5_000_000
    # Unauthenticated answers (401/438 challenges, Binding responses) per source IP and second.
    max_challenges_per_second: int = 20


@attrs.define
class TurnCounters:
    """What was refused or dropped, by reason (folded into the server's metrics)."""

    malformed: int = 0
    unexpected_message: int = 0
    unauthenticated: int = 0
    stale_nonce: int = 0
    bad_credentials: int = 0
    allocations: int = 0
    allocation_mismatch: int = 0
    quota_total: int = 0
    quota_user: int = 0
    quota_ip: int = 0
    table_full: int = 0  # an allocation's permissions or channels at their cap
    relay_unavailable: int = 0
    unsupported_transport: int = 0
    unsupported_family: int = 0
    unknown_attribute: int = 0
    challenges_limited: int = 0
    bad_request: int = 0
    forbidden_peer: int = 0
    no_permission: int = 0
    no_allocation: int = 0
    rate_limited: int = 0
    peer_dropped: int = 0
    expired: int = 0
    relayed_to_peer: int = 0
    relayed_to_client: int = 0


# ---- outputs --------------------------------------------------------------------------------


@attrs.frozen
class ToClient:
    client: Hashable
    data: bytes


@attrs.frozen
class ToPeer:
    relay: Address
    peer: Address
    data: bytes


@attrs.frozen
class RelayNeeded:
    """An accepted Allocate: the caller binds a relayed socket and calls `complete_allocation`."""

    client: Hashable
    client_addr: Address
    transaction_id: bytes


@attrs.frozen
class AllocationEnded:
    relay: Address
    client: Hashable


Output = Union[ToClient, ToPeer, RelayNeeded, AllocationEnded]


@attrs.define
class _Pending:
    client_addr: Address
    username: str
    key: bytes
    lifetime: int
    transaction_id: bytes
    stream: bool
    ip_key: str | None  # what the per-IP quota counts it under (None: not counted)


@attrs.define
class Allocation:
    client: Hashable
    client_addr: Address
    stream: bool
    ip_key: str | None
    username: str
    key: bytes
    relay: Address
    expires: float
    # The success response, resent when the client retransmits its Allocate.
    transaction_id: bytes
    response: bytes
    permissions: dict[str, float] = attrs.field(factory=dict)  # peer IP -> expiry
    channels: dict[int, tuple[Address, float]] = attrs.field(factory=dict)  # number -> (peer, expiry)
    peer_channel: dict[Address, int] = attrs.field(factory=dict)
    tokens_packets: float = 0.0
    tokens_bytes: float = 0.0
    tokens_at: float = 0.0

    def permitted(self, peer: Address, now: float) -> bool:
        expiry = self.permissions.get(peer[0])
        return expiry is not None and expiry > now

    def channel_for(self, peer: Address, now: float) -> int | None:
        number = self.peer_channel.get(peer)
        if number is None or self.channels[number][1] <= now:
            return None
        return number


class TurnServer:
    """The TURN server's state: allocations by client and by relayed address."""

    def __init__(
        self,
        *,
        realm: str,
        nonce_secret: bytes,
        password_for: Callable[[str, bool], str | None],
        peer_allowed: Callable[[Address], bool],
        limits: TurnLimits | None = None,
        owner_of: Callable[[str], str] = lambda username: username,
    ) -> None:
        self.realm = realm
        self._nonce_secret = nonce_secret
        self._password_for = password_for
        self._owner_of = owner_of
        self._peer_allowed = peer_allowed
        self.limits = limits or TurnLimits()
        self.counters = TurnCounters()
        self.allocations: dict[Hashable, Allocation] = {}
        self.by_relay: dict[Address, Allocation] = {}
        self._pending: dict[Hashable, _Pending] = {}
        self._per_user: dict[str, int] = {}
        self._per_ip: dict[str, int] = {}
        self._sweep_at: float | None = None
        self._outbox: list[ToClient | ToPeer] = []
        # Challenge token buckets by source IP, least recently seen first.
        self._challenge_buckets: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()
        self._events: collections.deque[RelayNeeded | AllocationEnded] = collections.deque()

    # ---- the public verbs (rtp/__init__.py) ----------------------------------------------

    def receive(self, data: bytes, client: Hashable, client_addr: Address, now: float,
                *, stream: bool = False, shared_source: bool = False) -> None:
        """One STUN or ChannelData message from `client` (at `client_addr`); never raises.
        `shared_source`: `client_addr` is not the client's own but a TLS terminator's in front,
        shared by many clients, so the per-IP quota does not apply to it."""
        self._emit(self._receive(data, client, client_addr, now, stream, shared_source))

    def receive_from_peer(self, data: bytes, relay: Address, peer: Address, now: float) -> None:
        """A datagram the relayed address `relay` received from `peer`: to its client, or
        dropped and counted."""
        self._emit(self._receive_from_peer(data, relay, peer, now))

    def complete_allocation(self, request: RelayNeeded, relay: Address | None, now: float) -> None:
        """Answer the Allocate of `request`: with its relayed address, or 508 when none could be had."""
        self._emit(self._complete_allocation(request, relay, now))

    def client_gone(self, client: Hashable, now: float) -> None:
        """A stream client disconnected: its allocation ends with it (RFC 8656 §3.1)."""
        self._emit(self._client_gone(client))

    def handle_timeout(self, now: float) -> None:
        self._emit(self._handle_timeout(now))

    def next_deadline(self) -> float | None:
        return self._sweep_at

    def datagrams_to_send(self, now: float) -> list[ToClient | ToPeer]:
        """What is ready to go out: to a client (over its UDP address or stream) or, from a
        relayed address, to a peer."""
        out, self._outbox = self._outbox, []
        return out

    def next_event(self) -> RelayNeeded | AllocationEnded | None:
        return self._events.popleft() if self._events else None

    def _emit(self, outputs: list[Output]) -> None:
        for output in outputs:
            if isinstance(output, (ToClient, ToPeer)):
                self._outbox.append(output)
            else:
                self._events.append(output)

    # ---- input from clients -------------------------------------------------------------

    def _receive(self, data: bytes, client: Hashable, client_addr: Address, now: float,
                 stream: bool, shared_source: bool = False) -> list[Output]:
        if not data:
            self.counters.malformed += 1
            return []
        if 0x40 <= data[0] <= 0x7F:
            return self._channel_data(data, client, now)
        try:
            message = parse_stun(data)
        except StunParseError:
            self.counters.malformed += 1
            return []
        if message.message_class == Class.INDICATION:
            if message.message_method == Method.SEND:
                return self._send_indication(message, client, now)
            self.counters.unexpected_message += 1
            return []
        if message.message_class != Class.REQUEST:
            self.counters.unexpected_message += 1
            return []
        if message.message_method == Method.BINDING:
            # Unauthenticated and bigger than a bare request: held to the challenges' rate.
            if not stream and not self._challenge_allowed(client_addr[0], now):
                self.counters.challenges_limited += 1
                return []
            response = Message(Method.BINDING, Class.RESPONSE, transaction_id=message.transaction_id)
            response.attributes["XOR-MAPPED-ADDRESS"] = client_addr
            response.add_fingerprint()
            return [ToClient(client, bytes(response))]
        if message.message_method not in (Method.ALLOCATE, Method.REFRESH, Method.CREATE_PERMISSION,
                                          Method.CHANNEL_BIND):
            self.counters.unexpected_message += 1
            return [self._error(client, message, 400, "Bad Request")]
        return self._request(message, data, client, client_addr, now, stream, shared_source)

    def _request(self, message: Message, data: bytes, client: Hashable, client_addr: Address,
                 now: float, stream: bool, shared_source: bool) -> list[Output]:
        allocation = self.allocations.get(client)
        if (message.message_method == Method.ALLOCATE and allocation is not None
                and message.transaction_id == allocation.transaction_id):
            # A retransmitted Allocate (its response was lost): the same answer (RFC 8656 §7.2).
            return [ToClient(client, allocation.response)]
        authenticated = self._authenticate(message, data, client, client_addr, now, stream)
        if isinstance(authenticated, list):
            return authenticated  # refused: the answer, if any
        username, key = authenticated
        unknown = _unknown_required_attributes(data)
        if unknown:
            # RFC 8489 §6.3.1.1: EVEN-PORT, RESERVATION-TOKEN and the like are not supported here.
            self.counters.unknown_attribute += 1
            return [ToClient(client, _unknown_attributes_error(message, unknown, key))]
        method = message.message_method
        if method == Method.ALLOCATE:
            return self._allocate(message, data, client, client_addr, username, key, stream,
                                  None if shared_source else client_addr[0])
        if allocation is None or allocation.expires <= now:
            self.counters.allocation_mismatch += 1
            return [self._error(client, message, 437, "Allocation Mismatch", key)]
        if allocation.username != username:
            self.counters.bad_credentials += 1
            return [self._error(client, message, 441, "Wrong Credentials", key)]
        if method == Method.REFRESH:
            return self._refresh(message, allocation, now)
        if method == Method.CREATE_PERMISSION:
            return self._create_permission(message, data, allocation, now)
        return self._channel_bind(message, allocation, now)

    def _authenticate(self, message: Message, data: bytes, client: Hashable, client_addr: Address,
                      now: float, stream: bool) -> tuple[str, bytes] | list[Output]:
        attributes = message.attributes
        if "MESSAGE-INTEGRITY" not in attributes:
            self.counters.unauthenticated += 1
            return self._challenge(client, message, 401, "Unauthorized", client_addr, now, stream)
        username, realm, nonce = attributes.get("USERNAME"), attributes.get("REALM"), attributes.get("NONCE")
        if not username or realm is None or nonce is None:
            self.counters.bad_request += 1
            return [self._error(client, message, 400, "Bad Request")]
        if not self._nonce_valid(nonce, client_addr, now):
            self.counters.stale_nonce += 1
            return self._challenge(client, message, 438, "Stale Nonce", client_addr, now, stream)
        allocating = message.message_method == Method.ALLOCATE
        password = self._password_for(username, allocating) if realm == self.realm else None
        if password is None:
            self.counters.bad_credentials += 1
            return self._challenge(client, message, 401, "Unauthorized", client_addr, now, stream)
        key = long_term_key(username, self.realm, password)
        if not verify_message_integrity(data, key):
            self.counters.bad_credentials += 1
            return self._challenge(client, message, 401, "Unauthorized", client_addr, now, stream)
        return username, key

    # ---- the four requests --------------------------------------------------------------

    def _allocate(self, message: Message, data: bytes, client: Hashable, client_addr: Address, username: str,
                  key: bytes, stream: bool, ip_key: str | None) -> list[Output]:
        if client in self.allocations or client in self._pending:
            self.counters.allocation_mismatch += 1
            return [self._error(client, message, 437, "Allocation Mismatch", key)]
        family = find_attribute(data, ATTR_REQUESTED_ADDRESS_FAMILY)
        if family is not None and (len(family) != 4 or family[0] != FAMILY_IPV4):
            # Relayed addresses are IPv4 (the media port's); RFC 8656 §7.2 step 4.
            self.counters.unsupported_family += 1
            return [self._error(client, message, 440, "Address Family not Supported", key)]
        transport = message.attributes.get("REQUESTED-TRANSPORT")
        if transport is None:
            self.counters.bad_request += 1
            return [self._error(client, message, 400, "Bad Request", key)]
        if transport != TRANSPORT_UDP:
            self.counters.unsupported_transport += 1
            return [self._error(client, message, 442, "Unsupported Transport Protocol", key)]
        limits = self.limits
        if len(self.allocations) + len(self._pending) >= limits.max_allocations:
            self.counters.quota_total += 1
            return [self._error(client, message, 486, "Allocation Quota Reached", key)]
        if self._per_user.get(self._owner_of(username), 0) >= limits.max_allocations_per_user:
            self.counters.quota_user += 1
            return [self._error(client, message, 486, "Allocation Quota Reached", key)]
        if ip_key is not None and self._per_ip.get(ip_key, 0) >= limits.max_allocations_per_ip:
            self.counters.quota_ip += 1
            return [self._error(client, message, 486, "Allocation Quota Reached", key)]
        lifetime = self._lifetime(message.attributes.get("LIFETIME"))
        self._pending[client] = _Pending(client_addr, username, key, lifetime, message.transaction_id, stream,
                                         ip_key)
        self._hold(username, ip_key, +1)
        return [RelayNeeded(client, client_addr, message.transaction_id)]

    def _complete_allocation(self, request: RelayNeeded, relay: Address | None, now: float) -> list[Output]:
        pending = self._pending.pop(request.client, None)
        if pending is None or pending.transaction_id != request.transaction_id:
            # The client went away meanwhile: nothing to answer, and the socket is not needed.
            return [AllocationEnded(relay, request.client)] if relay is not None else []
        failed = Message(Method.ALLOCATE, Class.ERROR, transaction_id=pending.transaction_id)
        if relay is None:
            self._hold(pending.username, pending.ip_key, -1)
            self.counters.relay_unavailable += 1
            failed.attributes["ERROR-CODE"] = (508, "Insufficient Capacity")
            failed.add_message_integrity(pending.key)
            return [ToClient(request.client, bytes(failed))]
        response = Message(Method.ALLOCATE, Class.RESPONSE, transaction_id=pending.transaction_id)
        response.attributes["XOR-RELAYED-ADDRESS"] = relay
        response.attributes["LIFETIME"] = pending.lifetime
        response.attributes["XOR-MAPPED-ADDRESS"] = pending.client_addr
        response.add_message_integrity(pending.key)
        raw = bytes(response)
        allocation = Allocation(
            client=request.client, client_addr=pending.client_addr, stream=pending.stream, ip_key=pending.ip_key,
            username=pending.username, key=pending.key, relay=relay, expires=now + pending.lifetime,
            transaction_id=pending.transaction_id, response=raw,
            tokens_packets=float(self.limits.max_packets_per_second),
            tokens_bytes=float(self.limits.max_bytes_per_second), tokens_at=now,
        )
        self.allocations[request.client] = allocation
        self.by_relay[relay] = allocation
        self.counters.allocations += 1
        if self._sweep_at is None:
            self._sweep_at = now + SWEEP_INTERVAL
        return [ToClient(request.client, raw)]

    def _refresh(self, message: Message, allocation: Allocation, now: float) -> list[Output]:
        requested = message.attributes.get("LIFETIME")
        out: list[Output] = []
        response = Message(Method.REFRESH, Class.RESPONSE, transaction_id=message.transaction_id)
        if requested == 0:
            response.attributes["LIFETIME"] = 0
            out.extend(self._end(allocation))
        else:
            lifetime = self._lifetime(requested)
            allocation.expires = now + lifetime
            response.attributes["LIFETIME"] = lifetime
        response.add_message_integrity(allocation.key)
        out.insert(0, ToClient(allocation.client, bytes(response)))
        return out

    def _create_permission(self, message: Message, data: bytes, allocation: Allocation,
                           now: float) -> list[Output]:
        peers = _all_peer_addresses(data, message.transaction_id)
        if peers is None or not peers or len(peers) > MAX_PEERS_PER_REQUEST:
            self.counters.bad_request += 1
            return [self._error(allocation.client, message, 400, "Bad Request", allocation.key)]
        if not all(self._peer_allowed(peer) for peer in peers):
            self.counters.forbidden_peer += 1
            return [self._error(allocation.client, message, 403, "Forbidden", allocation.key)]
        new = {ip for ip, _ in peers} - allocation.permissions.keys()
        if len(allocation.permissions) + len(new) > MAX_PERMISSIONS:
            self.counters.table_full += 1
            return [self._error(allocation.client, message, 508, "Insufficient Capacity", allocation.key)]
        for ip, _port in peers:
            allocation.permissions[ip] = now + PERMISSION_LIFETIME
        return [self._success(allocation, message)]

    def _channel_bind(self, message: Message, allocation: Allocation, now: float) -> list[Output]:
        number = message.attributes.get("CHANNEL-NUMBER")
        peer = message.attributes.get("XOR-PEER-ADDRESS")
        if number is None or peer is None or not CHANNEL_MIN <= number <= CHANNEL_MAX:
            self.counters.bad_request += 1
            return [self._error(allocation.client, message, 400, "Bad Request", allocation.key)]
        if not self._peer_allowed(peer):
            self.counters.forbidden_peer += 1
            return [self._error(allocation.client, message, 403, "Forbidden", allocation.key)]
        bound = allocation.channels.get(number)
        if bound is not None and bound[1] > now and bound[0] != peer:
            self.counters.bad_request += 1  # the number is another peer's (RFC 8656 §12.2)
            return [self._error(allocation.client, message, 400, "Bad Request", allocation.key)]
        other = allocation.peer_channel.get(peer)
        if other is not None and other != number and allocation.channels[other][1] > now:
            self.counters.bad_request += 1  # the peer has another number
            return [self._error(allocation.client, message, 400, "Bad Request", allocation.key)]
        if bound is None and len(allocation.channels) >= MAX_CHANNELS:
            self.counters.table_full += 1
            return [self._error(allocation.client, message, 508, "Insufficient Capacity", allocation.key)]
        if bound is not None and bound[0] != peer:
            allocation.peer_channel.pop(bound[0], None)
        if other is not None and other != number:
            allocation.channels.pop(other, None)
        allocation.channels[number] = (peer, now + CHANNEL_LIFETIME)
        allocation.peer_channel[peer] = number
        # A binding installs or refreshes the peer's permission too (RFC 8656 §12.2).
        if peer[0] not in allocation.permissions and len(allocation.permissions) >= MAX_PERMISSIONS:
            self.counters.table_full += 1
            return [self._error(allocation.client, message, 508, "Insufficient Capacity", allocation.key)]
        allocation.permissions[peer[0]] = now + PERMISSION_LIFETIME
        return [self._success(allocation, message)]

    # ---- data ---------------------------------------------------------------------------

    def _send_indication(self, message: Message, client: Hashable, now: float) -> list[Output]:
        allocation = self._live(client, now)
        if allocation is None:
            return []
        peer = message.attributes.get("XOR-PEER-ADDRESS")
        payload = message.attributes.get("DATA")
        if peer is None or payload is None:
            self.counters.malformed += 1
            return []
        return self._to_peer(allocation, peer, payload, now)

    def _channel_data(self, data: bytes, client: Hashable, now: float) -> list[Output]:
        if len(data) < 4:
            self.counters.malformed += 1
            return []
        number, length = _CHANNEL_HEADER.unpack_from(data, 0)
        # Over UDP the datagram may carry padding; never less than the length says.
        if not CHANNEL_MIN <= number <= CHANNEL_MAX or len(data) < 4 + length:
            self.counters.malformed += 1
            return []
        allocation = self._live(client, now)
        if allocation is None:
            return []
        bound = allocation.channels.get(number)
        if bound is None or bound[1] <= now:
            self.counters.no_permission += 1
            return []
        return self._to_peer(allocation, bound[0], data[4 : 4 + length], now)

    def _to_peer(self, allocation: Allocation, peer: Address, payload: bytes, now: float) -> list[Output]:
        if not self._peer_allowed(peer):
            self.counters.forbidden_peer += 1
            return []
        if not allocation.permitted(peer, now):
            self.counters.no_permission += 1
            return []
        if not self._spend(allocation, len(payload), now):
            return []
        self.counters.relayed_to_peer += 1
        return [ToPeer(allocation.relay, peer, payload)]

    def _receive_from_peer(self, data: bytes, relay: Address, peer: Address, now: float) -> list[Output]:
        allocation = self.by_relay.get(relay)
        if allocation is None or allocation.expires <= now:
            self.counters.peer_dropped += 1
            return []
        if not self._peer_allowed(peer) or not allocation.permitted(peer, now):
            self.counters.peer_dropped += 1
            return []
        if not self._spend(allocation, len(data), now):
            return []
        self.counters.relayed_to_client += 1
        number = allocation.channel_for(peer, now)
        if number is not None:
            framed = _CHANNEL_HEADER.pack(number, len(data)) + data
            if allocation.stream and len(data) & 3:
                framed += bytes(4 - (len(data) & 3))
            return [ToClient(allocation.client, framed)]
        indication = Message(Method.DATA, Class.INDICATION)
        indication.attributes["XOR-PEER-ADDRESS"] = peer
        indication.attributes["DATA"] = data
        return [ToClient(allocation.client, bytes(indication))]

    def _spend(self, allocation: Allocation, size: int, now: float) -> bool:
        limits = self.limits
        elapsed = max(0.0, now - allocation.tokens_at)
        allocation.tokens_at = now
        allocation.tokens_packets = min(float(limits.max_packets_per_second),
                                        allocation.tokens_packets + elapsed * limits.max_packets_per_second)
        allocation.tokens_bytes = min(float(limits.max_bytes_per_second),
                                      allocation.tokens_bytes + elapsed * limits.max_bytes_per_second)
        if allocation.tokens_packets < 1 or allocation.tokens_bytes < size:
            self.counters.rate_limited += 1
            return False
        allocation.tokens_packets -= 1
        allocation.tokens_bytes -= size
        return True

    # ---- lifetime -----------------------------------------------------------------------

    def _client_gone(self, client: Hashable) -> list[Output]:
        pending = self._pending.pop(client, None)
        if pending is not None:
            self._hold(pending.username, pending.ip_key, -1)
        allocation = self.allocations.get(client)
        return self._end(allocation) if allocation is not None else []

    def _handle_timeout(self, now: float) -> list[Output]:
        if self._sweep_at is None or now < self._sweep_at:
            return []
        out: list[Output] = []
        for allocation in list(self.allocations.values()):
            if allocation.expires <= now:
                self.counters.expired += 1
                out.extend(self._end(allocation))
                continue
            for ip, expiry in list(allocation.permissions.items()):
                if expiry <= now:
                    del allocation.permissions[ip]
            for number, (peer, expiry) in list(allocation.channels.items()):
                if expiry <= now:
                    del allocation.channels[number]
                    if allocation.peer_channel.get(peer) == number:
                        del allocation.peer_channel[peer]
        self._sweep_at = now + SWEEP_INTERVAL if self.allocations else None
        return out

    def _end(self, allocation: Allocation) -> list[Output]:
        if self.allocations.get(allocation.client) is not allocation:
            return []
        del self.allocations[allocation.client]
        del self.by_relay[allocation.relay]
        self._hold(allocation.username, allocation.ip_key, -1)
        return [AllocationEnded(allocation.relay, allocation.client)]

    def _live(self, client: Hashable, now: float) -> Allocation | None:
        allocation = self.allocations.get(client)
        if allocation is None or allocation.expires <= now:
            self.counters.no_allocation += 1
            return None
        return allocation

    def _hold(self, username: str, ip_key: str | None, delta: int) -> None:
        holds = [(self._per_user, self._owner_of(username))]
        if ip_key is not None:
            holds.append((self._per_ip, ip_key))
        for table, key in holds:
            count = table.get(key, 0) + delta
            if count > 0:
                table[key] = count
            else:
                table.pop(key, None)

    def _lifetime(self, requested: int | None) -> int:
        limits = self.limits
        if requested is None:
            return limits.default_lifetime
        return max(limits.default_lifetime, min(requested, limits.max_lifetime))

    # ---- nonces and responses -----------------------------------------------------------

    def _nonce(self, client_addr: Address, now: float) -> bytes:
        issued = f"{int(now * 1000):x}"
        mac = hmac.new(self._nonce_secret, f"{issued}|{client_addr[0]}".encode(), hashlib.sha256).hexdigest()[:24]
        return f"{issued}-{mac}".encode("ascii")

    def _nonce_valid(self, nonce: bytes, client_addr: Address, now: float) -> bool:
        try:
            issued_text, mac = nonce.decode("ascii").split("-", 1)
            issued = int(issued_text, 16) / 1000
        except (UnicodeDecodeError, ValueError):
            return False
        expected = hmac.new(self._nonce_secret, f"{issued_text}|{client_addr[0]}".encode(),
                            hashlib.sha256).hexdigest()[:24]
        if not hmac.compare_digest(mac, expected):
            return False
        return issued <= now < issued + self.limits.nonce_lifetime

    def _challenge(self, client: Hashable, request: Message, code: int, reason: str,
                   client_addr: Address, now: float, stream: bool) -> list[Output]:
        """401/438 with a fresh nonce. Unauthenticated, and bigger than the smallest request, so
        over UDP a spoofed source could use it as an amplifier: at most
        `max_challenges_per_second` per source IP, beyond which requests go unanswered (and
        counted). A stream's source cannot be spoofed, and a client on one never retransmits."""
        if not stream and not self._challenge_allowed(client_addr[0], now):
            self.counters.challenges_limited += 1
            return []
        response = Message(request.message_method, Class.ERROR, transaction_id=request.transaction_id)
        response.attributes["ERROR-CODE"] = (code, reason)
        response.attributes["REALM"] = self.realm
        response.attributes["NONCE"] = self._nonce(client_addr, now)
        response.add_fingerprint()
        return [ToClient(client, bytes(response))]

    def _challenge_allowed(self, ip: str, now: float) -> bool:
        rate = self.limits.max_challenges_per_second
        buckets = self._challenge_buckets
        tokens, at = buckets.pop(ip, (float(rate), now))
        tokens = min(float(rate), tokens + (now - at) * rate)
        if len(buckets) >= MAX_CHALLENGE_SOURCES:
            buckets.popitem(last=False)  # the least recently seen source: it starts afresh
        allowed = tokens >= 1
        buckets[ip] = (tokens - 1 if allowed else tokens, now)
        return allowed

    def _error(self, client: Hashable, request: Message, code: int, reason: str,
               key: bytes | None = None) -> ToClient:
        response = Message(request.message_method, Class.ERROR, transaction_id=request.transaction_id)
        response.attributes["ERROR-CODE"] = (code, reason)
        if key is not None:
            response.add_message_integrity(key)
        else:
            response.add_fingerprint()
        return ToClient(client, bytes(response))

    def _success(self, allocation: Allocation, request: Message) -> ToClient:
        response = Message(request.message_method, Class.RESPONSE, transaction_id=request.transaction_id)
        response.add_message_integrity(allocation.key)
        return ToClient(allocation.client, bytes(response))


def _all_peer_addresses(data: bytes, transaction_id: bytes) -> list[Address] | None:
    """Every XOR-PEER-ADDRESS before MESSAGE-INTEGRITY (aioice keeps only the last); None if one is malformed."""
    peers: list[Address] = []
    try:
        for attr_type, at, length in _attributes(data):
            if attr_type == ATTR_MESSAGE_INTEGRITY:
                break
            if attr_type == ATTR_XOR_PEER_ADDRESS:
                peers.append(_aioice_stun.unpack_xor_address(data[at : at + length], transaction_id))
    except (ValueError, struct.error):
        return None
    return peers


def _unknown_required_attributes(data: bytes) -> list[int]:
    unknown = []
    for attr_type, _at, _length in _attributes(data):
        if attr_type == ATTR_MESSAGE_INTEGRITY:
            break
        if attr_type < 0x8000 and attr_type not in _KNOWN_REQUIRED and attr_type not in unknown:
            unknown.append(attr_type)
    return unknown[:8]


def _unknown_attributes_error(request: Message, unknown: list[int], key: bytes) -> bytes:
    """420 naming `unknown` in UNKNOWN-ATTRIBUTES (which aioice's codec cannot write), signed."""
    response = Message(request.message_method, Class.ERROR, transaction_id=request.transaction_id)
    response.attributes["ERROR-CODE"] = (420, "Unknown Attribute")
    value = struct.pack(f"!{len(unknown)}H", *unknown)
    body = bytearray(bytes(response))
    body += struct.pack("!HH", ATTR_UNKNOWN_ATTRIBUTES, len(value)) + value + bytes(-len(value) % 4)
    struct.pack_into("!H", body, 2, len(body) - HEADER_LENGTH + 24)
    mac = hmac.new(key, bytes(body), hashlib.sha1).digest()
    body += struct.pack("!HH", ATTR_MESSAGE_INTEGRITY, 20) + mac
    struct.pack_into("!H", body, 2, len(body) - HEADER_LENGTH + 8)
    crc = (binascii.crc32(bytes(body)) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
    body += struct.pack("!HHI", ATTR_FINGERPRINT, 4, crc)
    return bytes(body)


def _attributes(data: bytes) -> Iterator[tuple[int, int, int]]:
    find_attribute(data, 0)  # checks the header and the walk; raises StunParseError
    pos = HEADER_LENGTH
    while pos + 4 <= len(data):
        attr_type, length = struct.unpack_from("!HH", data, pos)
        yield attr_type, pos + 4, length
        pos += 4 + ((length + 3) & ~3)


# ---- streams (TURN over TCP/TLS) -------------------------------------------------------------


class FrameTooLarge(ValueError):
    """A stream announced a message larger than `MAX_MESSAGE`, or its buffer overflowed."""


class StreamFramer:
    """Splits a TURN stream (RFC 8656 §12.5) into STUN and ChannelData messages.

    STUN messages carry their length in the header (plus 20); ChannelData's length excludes its
    4-byte padding, which streams always carry. `feed` raises FrameTooLarge for a frame larger
    than `max_frame` and malformed first bytes (neither STUN nor ChannelData), after which the
    connection cannot be resynchronised and must be closed.
    """

    def __init__(self, max_frame: int = MAX_MESSAGE) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        frames: list[bytes] = []
        buffer = self._buffer
        start = 0
        while len(buffer) - start >= 4:
            first = buffer[start]
            (length,) = struct.unpack_from("!H", buffer, start + 2)
            if first <= 0x03 and not length & 3:
                size = HEADER_LENGTH + length
            elif 0x40 <= first <= 0x4F:
                size = 4 + ((length + 3) & ~3)
            else:
                raise FrameTooLarge(f"first byte 0x{first:02x} is neither STUN nor ChannelData")
            if size > self.max_frame:
                raise FrameTooLarge(f"a {size}-byte frame exceeds {self.max_frame}")
            if len(buffer) - start < size:
                break
            frames.append(bytes(buffer[start : start + size]))
            start += size
        if start:
            del buffer[:start]
        return frames


__all__ = [
    "Address", "Allocation", "AllocationEnded", "CHANNEL_LIFETIME", "CHANNEL_MAX",
    "CHANNEL_MIN", "FrameTooLarge", "MAX_MESSAGE", "Output", "PERMISSION_LIFETIME", "RelayNeeded",
    "StreamFramer", "TRANSPORT_UDP", "ToClient", "ToPeer", "TurnCounters", "TurnLimits", "TurnServer",
]
