"""The sans-IO TURN server (rtp/turn.py) and its credentials (rtp/turn_auth.py), under a fake `now`.

Requests are built with aioice's STUN codec the way a TURN client builds them (aioice.turn does
the same): long-term credentials, MESSAGE-INTEGRITY over the MD5 key.
"""

from __future__ import annotations

import os
import struct

import pytest
from aioice import stun
from hypothesis import given, settings
from hypothesis import strategies as st

from rtp.turn import (
    CHANNEL_LIFETIME,
    PERMISSION_LIFETIME,
    TRANSPORT_UDP,
    AllocationEnded,
    FrameTooLarge,
    RelayNeeded,
    StreamFramer,
    ToClient,
    ToPeer,
    TurnLimits,
    TurnServer,
)
from rtp.turn_auth import issue_credential, participant_of, password_for

SECRET = b"turn test secret"
MEDIA = ("10.0.0.1", 7882)
OTHER = ("10.0.0.1", 9999)
STRANGER = ("192.0.2.7", 7882)
CLIENT = ("198.51.100.5", 40000)
RELAY = ("10.0.0.1", 30000)
WALL = 1_800_000_000


class Driven:
    """The core driven as trio_sfu.media.turn_server drives it: after each input, what it has to
    send (`datagrams_to_send`) and then its events (`next_event`), returned as one list."""

    def __init__(self, core: TurnServer) -> None:
        self.core = core

    def __getattr__(self, name):
        return getattr(self.core, name)

    def _drained(self) -> list:
        out = list(self.core.datagrams_to_send(0.0))
        while (event := self.core.next_event()) is not None:
            out.append(event)
        return out

    def receive(self, data, client, client_addr, now, *, stream=False, shared_source=False) -> list:
        self.core.receive(data, client, client_addr, now, stream=stream, shared_source=shared_source)
        return self._drained()

    def receive_from_peer(self, relay, peer, data, now) -> list:
        self.core.receive_from_peer(data, relay, peer, now)
        return self._drained()

    def complete_allocation(self, request, relay, now) -> list:
        self.core.complete_allocation(request, relay, now)
        return self._drained()

    def client_gone(self, client, now) -> list:
        self.core.client_gone(client, now)
        return self._drained()

    def handle_timeout(self, now) -> list:
        self.core.handle_timeout(now)
        return self._drained()


def make_server(**limits) -> Driven:
    return Driven(TurnServer(
        realm="trio-sfu",
        nonce_secret=b"nonce secret",
        password_for=lambda username, allocating: password_for(SECRET, username, WALL, allocating=allocating),
        peer_allowed=lambda addr: addr == MEDIA,
        limits=TurnLimits(**limits),
    ))


def request(method, **attributes) -> stun.Message:
    message = stun.Message(message_method=method, message_class=stun.Class.REQUEST)
    for name, value in attributes.items():
        message.attributes[name.replace("_", "-")] = value
    return message


def parse(out) -> stun.Message:
    (item,) = out
    assert isinstance(item, ToClient)
    return stun.parse_message(item.data)


class Client:
    """One TURN client's credentials and its view of the server's realm and nonce."""

    def __init__(self, server: Driven, addr=CLIENT, sid="PA_alice", expires=WALL + 3600, client=None):
        self.server = server
        self.addr = addr
        self.client = client if client is not None else ("udp", addr)
        credential = issue_credential(SECRET, sid, expires)
        self.username, self.password = credential.username, credential.password
        self.nonce = None
        self.realm = None

    def send(self, message: stun.Message, now: float, *, authenticate=True, password=None):
        if authenticate and self.nonce is not None:
            message.attributes["USERNAME"] = self.username
            message.attributes["REALM"] = self.realm
            message.attributes["NONCE"] = self.nonce
            key = _key(self.username, self.realm, password or self.password)
            message.add_message_integrity(key)
        return self.server.receive(bytes(message), self.client, self.addr, now)

    def challenge(self, now: float) -> None:
        out = self.send(request(stun.Method.ALLOCATE, REQUESTED_TRANSPORT=TRANSPORT_UDP), now, authenticate=False)
        response = parse(out)
        assert response.message_class == stun.Class.ERROR
        assert response.attributes["ERROR-CODE"][0] == 401
        self.realm = response.attributes["REALM"]
        self.nonce = response.attributes["NONCE"]

    def allocate(self, now: float, relay=RELAY, lifetime=None) -> stun.Message:
        if self.nonce is None:
            self.challenge(now)
        attrs = {"REQUESTED_TRANSPORT": TRANSPORT_UDP}
        if lifetime is not None:
            attrs["LIFETIME"] = lifetime
        out = self.send(request(stun.Method.ALLOCATE, **attrs), now)
        (needed,) = out
        assert isinstance(needed, RelayNeeded), out
        response = parse(self.server.complete_allocation(needed, relay, now))
        assert response.message_class == stun.Class.RESPONSE
        assert response.check_message_integrity(_key(self.username, self.realm, self.password))
        return response


def _key(username, realm, password) -> bytes:
    import hashlib

    return hashlib.md5(f"{username}:{realm}:{password}".encode()).digest()


def error_code(out) -> int:
    response = parse(out)
    assert response.message_class == stun.Class.ERROR, response
    return response.attributes["ERROR-CODE"][0]


# ---- credentials ----------------------------------------------------------------------------


def test_credentials_round_trip_and_expire():
    credential = issue_credential(SECRET, "PA_x", WALL + 10)
    assert credential.username == f"{WALL + 10}:PA_x"
    assert participant_of(credential.username) == "PA_x"
    assert password_for(SECRET, credential.username, WALL) == credential.password
    assert password_for(b"another secret", credential.username, WALL) != credential.password
    assert password_for(SECRET, credential.username, WALL + 11) is None
    for bad in ("", "PA_x", ":PA_x", f"{WALL}:", "abc:PA_x", "9" * 13 + ":x", "1:" + "x" * 200):
        assert password_for(SECRET, bad, WALL) is None
    with pytest.raises(ValueError):
        issue_credential(SECRET, "a:b", WALL)


# ---- authentication -------------------------------------------------------------------------


def test_unauthenticated_allocate_gets_401_with_realm_and_nonce():
    server = make_server()
    client = Client(server)
    client.challenge(0.0)
    assert client.realm == "trio-sfu" and client.nonce
    assert server.counters.unauthenticated == 1
    assert not server.allocations


def test_allocate_with_credentials_relays_and_reports_addresses():
    server = make_server()
    client = Client(server)
    response = client.allocate(1.0, lifetime=1200)
    assert response.attributes["XOR-RELAYED-ADDRESS"] == RELAY
    assert response.attributes["XOR-MAPPED-ADDRESS"] == CLIENT
    assert response.attributes["LIFETIME"] == 1200
    assert server.by_relay[RELAY].client == client.client


def test_wrong_password_and_expired_username_are_refused():
    server = make_server()
    client = Client(server)
    client.challenge(0.0)
    out = client.send(request(stun.Method.ALLOCATE, REQUESTED_TRANSPORT=TRANSPORT_UDP), 0.0, password="guess")
    assert error_code(out) == 401
    expired = Client(server, expires=WALL - 1)
    expired.challenge(0.0)
    out = expired.send(request(stun.Method.ALLOCATE, REQUESTED_TRANSPORT=TRANSPORT_UDP), 0.0)
    assert error_code(out) == 401
    assert server.counters.bad_credentials == 2
    assert not server.allocations


def test_forged_and_stale_nonces_get_438_and_a_fresh_nonce_works():
    server = make_server(nonce_lifetime=60.0)
    client = Client(server)
    client.challenge(0.0)
    good = client.nonce
    client.nonce = b"0-" + b"0" * 24
    assert error_code(client.send(request(stun.Method.ALLOCATE, REQUESTED_TRANSPORT=TRANSPORT_UDP), 1.0)) == 438
    # A nonce is bound to the client's IP.
    thief = Client(server, addr=("203.0.113.9", 1))
    thief.realm, thief.nonce = client.realm, good
    assert error_code(thief.send(request(stun.Method.ALLOCATE, REQUESTED_TRANSPORT=TRANSPORT_UDP), 1.0)) == 438
    client.nonce = good
    out = client.send(request(stun.Method.ALLOCATE, REQUESTED_TRANSPORT=TRANSPORT_UDP), 61.0)
    response = parse(out)
    assert response.attributes["ERROR-CODE"][0] == 438
    client.nonce = response.attributes["NONCE"]
    assert client.nonce != good
    (needed,) = client.send(request(stun.Method.ALLOCATE, REQUESTED_TRANSPORT=TRANSPORT_UDP), 62.0)
    assert isinstance(needed, RelayNeeded)
    assert server.counters.stale_nonce == 3


def test_requests_need_an_allocation_and_its_own_username():
    server = make_server()
    client = Client(server)
    client.challenge(0.0)
    assert error_code(client.send(request(stun.Method.REFRESH, LIFETIME=600), 0.0)) == 437
    client.allocate(0.0)
    # Another participant's credential on the same 5-tuple.
    other = Client(server, sid="PA_mallory")
    other.realm, other.nonce = client.realm, client.nonce
    assert error_code(other.send(request(stun.Method.REFRESH, LIFETIME=600), 1.0)) == 441
    # A second Allocate on the same 5-tuple is a mismatch; a retransmission is answered again.
    assert error_code(client.send(request(stun.Method.ALLOCATE, REQUESTED_TRANSPORT=TRANSPORT_UDP), 1.0)) == 437


def test_allocate_retransmission_gets_the_same_response():
    server = make_server()
    client = Client(server)
    client.challenge(0.0)
    message = request(stun.Method.ALLOCATE, REQUESTED_TRANSPORT=TRANSPORT_UDP)
    (needed,) = client.send(message, 0.0)
    (first,) = server.complete_allocation(needed, RELAY, 0.0)
    (again,) = server.receive(bytes(message), client.client, CLIENT, 0.5)
    assert again.data == first.data


def test_tcp_transport_is_refused_with_442():
    server = make_server()
    client = Client(server)
    client.challenge(0.0)
    out = client.send(request(stun.Method.ALLOCATE, REQUESTED_TRANSPORT=6 << 24), 0.0)
    assert error_code(out) == 442
    out = client.send(request(stun.Method.ALLOCATE), 0.0)
    assert error_code(out) == 400


def test_no_relayed_socket_is_508():
    server = make_server()
    client = Client(server)
    client.challenge(0.0)
    (needed,) = client.send(request(stun.Method.ALLOCATE, REQUESTED_TRANSPORT=TRANSPORT_UDP), 0.0)
    assert error_code(server.complete_allocation(needed, None, 0.0)) == 508
    assert server.counters.relay_unavailable == 1
    # The quota hold was released: the client may try again.
    (needed,) = client.send(request(stun.Method.ALLOCATE, REQUESTED_TRANSPORT=TRANSPORT_UDP), 1.0)
    assert isinstance(needed, RelayNeeded)


# ---- permissions, channels, data ------------------------------------------------------------


def test_permission_to_another_address_is_forbidden_and_counted():
    server = make_server()
    client = Client(server)
    client.allocate(0.0)
    for peer in (OTHER, STRANGER):
        assert error_code(client.send(request(stun.Method.CREATE_PERMISSION, XOR_PEER_ADDRESS=peer), 1.0)) == 403
        assert error_code(client.send(request(stun.Method.CHANNEL_BIND, CHANNEL_NUMBER=0x4000,
                                              XOR_PEER_ADDRESS=peer), 1.0)) == 403
    assert server.counters.forbidden_peer == 4
    assert not server.allocations[client.client].permissions


def test_one_forbidden_peer_among_several_refuses_the_whole_request():
    server = make_server()
    client = Client(server)
    client.allocate(0.0)
    message = request(stun.Method.CREATE_PERMISSION, XOR_PEER_ADDRESS=MEDIA)
    # aioice keeps one attribute per name; splice a second XOR-PEER-ADDRESS in by hand.
    client_msg = _with_two_peers(message, MEDIA, STRANGER, client)
    out = server.receive(client_msg, client.client, CLIENT, 1.0)
    assert error_code(out) == 403
    assert not server.allocations[client.client].permissions


def _with_two_peers(message, first, second, client) -> bytes:
    tid = message.transaction_id
    attrs = b""
    for peer in (first, second):
        value = stun.pack_xor_address(peer, tid)
        attrs += struct.pack("!HH", 0x0012, len(value)) + value
    for name, value in (("USERNAME", client.username.encode()), ("REALM", client.realm.encode()),
                        ("NONCE", client.nonce)):
        number = stun.ATTRIBUTES_BY_NAME[name][0]
        attrs += struct.pack("!HH", number, len(value)) + value + bytes(-len(value) % 4)
    import hashlib
    import hmac

    header = struct.pack("!HHI", 0x0008, len(attrs) + 24, stun.COOKIE) + tid
    mac = hmac.new(_key(client.username, client.realm, client.password), header + attrs, hashlib.sha1).digest()
    return header + attrs + struct.pack("!HH", 0x0008, 20) + mac


def test_send_indication_needs_permission_then_relays_and_data_comes_back():
    server = make_server()
    client = Client(server)
    client.allocate(0.0)
    send = stun.Message(stun.Method.SEND, stun.Class.INDICATION)
    send.attributes["XOR-PEER-ADDRESS"] = MEDIA
    send.attributes["DATA"] = b"hello"
    assert server.receive(bytes(send), client.client, CLIENT, 1.0) == []
    assert server.counters.no_permission == 1
    assert server.receive_from_peer(RELAY, MEDIA, b"early", 1.0) == []
    assert server.counters.peer_dropped == 1
    assert parse(client.send(request(stun.Method.CREATE_PERMISSION, XOR_PEER_ADDRESS=MEDIA), 1.0)).message_class \
        == stun.Class.RESPONSE
    assert server.receive(bytes(send), client.client, CLIENT, 2.0) == [ToPeer(RELAY, MEDIA, b"hello")]
    data = parse(server.receive_from_peer(RELAY, MEDIA, b"back", 2.0))
    assert data.message_method == stun.Method.DATA and data.message_class == stun.Class.INDICATION
    assert data.attributes["DATA"] == b"back" and data.attributes["XOR-PEER-ADDRESS"] == MEDIA
    # The relayed address hears nothing from anywhere else, even the same IP on another port.
    assert server.receive_from_peer(RELAY, OTHER, b"x", 2.0) == []
    assert server.receive_from_peer(RELAY, STRANGER, b"x", 2.0) == []
    # A Send to a forbidden address is dropped and counted, never relayed.
    send.attributes["XOR-PEER-ADDRESS"] = STRANGER
    assert server.receive(bytes(send), client.client, CLIENT, 2.0) == []
    assert server.counters.forbidden_peer == 1


def test_permission_expires_after_five_minutes():
    server = make_server()
    client = Client(server)
    client.allocate(0.0)
    client.send(request(stun.Method.CREATE_PERMISSION, XOR_PEER_ADDRESS=MEDIA), 0.0)
    assert server.receive_from_peer(RELAY, MEDIA, b"ok", PERMISSION_LIFETIME - 1)
    assert server.receive_from_peer(RELAY, MEDIA, b"late", PERMISSION_LIFETIME + 1) == []


def test_channel_bind_carries_channel_data_both_ways_padded_on_streams():
    server = make_server()
    client = Client(server, client="tls-1")
    client.server = server
    # A stream client: allocate through receive(stream=True).
    client.challenge(0.0)
    message = request(stun.Method.ALLOCATE, REQUESTED_TRANSPORT=TRANSPORT_UDP)
    message.attributes["USERNAME"] = client.username
    message.attributes["REALM"] = client.realm
    message.attributes["NONCE"] = client.nonce
    message.add_message_integrity(_key(client.username, client.realm, client.password))
    (needed,) = server.receive(bytes(message), "tls-1", CLIENT, 0.0, stream=True)
    server.complete_allocation(needed, RELAY, 0.0)
    out = client.send(request(stun.Method.CHANNEL_BIND, CHANNEL_NUMBER=0x4001, XOR_PEER_ADDRESS=MEDIA), 1.0)
    assert parse(out).message_class == stun.Class.RESPONSE
    framed = struct.pack("!HH", 0x4001, 3) + b"abc" + b"\x00"
    assert server.receive(framed, "tls-1", CLIENT, 2.0, stream=True) == [ToPeer(RELAY, MEDIA, b"abc")]
    (back,) = server.receive_from_peer(RELAY, MEDIA, b"12345", 2.0)
    assert back.data == struct.pack("!HH", 0x4001, 5) + b"12345" + bytes(3)
    # Rebinding the number to another peer, or the peer to another number, is refused.
    assert error_code(client.send(request(stun.Method.CHANNEL_BIND, CHANNEL_NUMBER=0x4002,
                                          XOR_PEER_ADDRESS=MEDIA), 3.0)) == 400
    assert error_code(client.send(request(stun.Method.CHANNEL_BIND, CHANNEL_NUMBER=0x3FFF,
                                          XOR_PEER_ADDRESS=MEDIA), 3.0)) == 400
    # The binding lapses after ten minutes unless refreshed, even while the allocation and
    # the peer's permission live on.
    assert parse(client.send(request(stun.Method.REFRESH, LIFETIME=1200), 500.0)).message_class \
        == stun.Class.RESPONSE
    client.send(request(stun.Method.CREATE_PERMISSION, XOR_PEER_ADDRESS=MEDIA), CHANNEL_LIFETIME - 10)
    assert server.receive(framed, "tls-1", CLIENT, CHANNEL_LIFETIME + 1, stream=True) == []
    assert server.counters.no_permission == 1


def test_channel_data_on_unbound_channel_and_malformed_is_counted():
    server = make_server()
    client = Client(server)
    client.allocate(0.0)
    assert server.receive(struct.pack("!HH", 0x4005, 1) + b"x", client.client, CLIENT, 1.0) == []
    assert server.counters.no_permission == 1
    before = server.counters.malformed
    for junk in (b"\x40", struct.pack("!HH", 0x4000, 10) + b"short", struct.pack("!HH", 0x5000, 0),
                 b"\x00\x01\x00\x00" + b"\x21\x12\xa4\x42" + bytes(11), os.urandom(3), b""):
        assert server.receive(junk, client.client, CLIENT, 1.0) == []
    assert server.counters.malformed == before + 6


# ---- refresh and expiry ---------------------------------------------------------------------


def test_refresh_extends_and_lifetime_zero_deletes():
    server = make_server(default_lifetime=600, max_lifetime=3600)
    client = Client(server)
    client.allocate(0.0)
    response = parse(client.send(request(stun.Method.REFRESH, LIFETIME=99999), 500.0))
    assert response.attributes["LIFETIME"] == 3600
    assert server.allocations[client.client].expires == 4100.0
    out = client.send(request(stun.Method.REFRESH, LIFETIME=0), 501.0)
    assert parse(out[:1]).attributes["LIFETIME"] == 0
    assert out[1] == AllocationEnded(RELAY, client.client)
    assert not server.allocations and not server.by_relay


def test_allocation_expires_at_its_deadline():
    server = make_server(default_lifetime=600)
    client = Client(server)
    client.allocate(0.0)
    assert server.next_deadline() is not None
    now = 0.0
    ended = []
    while now < 700 and not ended:
        now = server.next_deadline()
        ended = server.handle_timeout(now)
    assert ended == [AllocationEnded(RELAY, client.client)]
    assert 600.0 <= now <= 601.0
    assert server.counters.expired == 1
    assert server.next_deadline() is None


# ---- quotas ---------------------------------------------------------------------------------


def test_allocation_floods_hit_the_quotas():
    server = make_server(max_allocations_per_user=2, max_allocations_per_ip=3, max_allocations=4)
    alice = [Client(server, addr=("198.51.100.5", 40000 + i)) for i in range(3)]
    for i, client in enumerate(alice[:2]):
        client.allocate(0.0, relay=("10.0.0.1", 30000 + i))
    alice[2].challenge(0.0)
    assert error_code(alice[2].send(request(stun.Method.ALLOCATE, REQUESTED_TRANSPORT=TRANSPORT_UDP), 0.0)) == 486
    assert server.counters.quota_user == 1
    bob = Client(server, addr=("198.51.100.5", 41000), sid="PA_bob")
    bob.allocate(0.0, relay=("10.0.0.1", 30010))
    carol = Client(server, addr=("198.51.100.5", 41001), sid="PA_carol")
    carol.challenge(0.0)
    assert error_code(carol.send(request(stun.Method.ALLOCATE, REQUESTED_TRANSPORT=TRANSPORT_UDP), 0.0)) == 486
    assert server.counters.quota_ip == 1
    dave = Client(server, addr=("203.0.113.1", 1), sid="PA_dave")
    dave.allocate(0.0, relay=("10.0.0.1", 30011))
    erin = Client(server, addr=("203.0.113.2", 1), sid="PA_erin")
    erin.challenge(0.0)
    assert error_code(erin.send(request(stun.Method.ALLOCATE, REQUESTED_TRANSPORT=TRANSPORT_UDP), 0.0)) == 486
    assert server.counters.quota_total == 1
    assert len(server.allocations) == 4


def test_relayed_traffic_is_rate_limited_per_allocation():
    server = make_server(max_packets_per_second=10, max_bytes_per_second=100_000)
    client = Client(server)
    client.allocate(0.0)
    client.send(request(stun.Method.CREATE_PERMISSION, XOR_PEER_ADDRESS=MEDIA), 0.0)
    relayed = sum(len(server.receive_from_peer(RELAY, MEDIA, b"x", 1.0)) for _ in range(50))
    assert relayed == 10
    assert server.counters.rate_limited == 40
    # A second later the bucket has refilled.
    assert server.receive_from_peer(RELAY, MEDIA, b"x", 2.0)


def test_stream_client_gone_ends_its_allocation():
    server = make_server()
    client = Client(server)
    client.allocate(0.0)
    assert server.client_gone(client.client, 1.0) == [AllocationEnded(RELAY, client.client)]
    assert server.client_gone(client.client, 1.0) == []


# ---- stream framing -------------------------------------------------------------------------


def test_stream_framer_splits_stun_and_padded_channel_data_across_reads():
    framer = StreamFramer()
    stun_message = bytes(request(stun.Method.BINDING))
    channel = struct.pack("!HH", 0x4000, 5) + b"hello" + bytes(3)
    stream = stun_message + channel + stun_message
    frames = []
    for i in range(0, len(stream), 7):
        frames += framer.feed(stream[i : i + 7])
    assert frames == [stun_message, channel, stun_message]
    assert framer.buffered == 0


def test_stream_framer_refuses_oversized_and_garbage_frames():
    with pytest.raises(FrameTooLarge):
        StreamFramer(max_frame=1000).feed(struct.pack("!HH", 0x4000, 2000))
    with pytest.raises(FrameTooLarge):
        StreamFramer().feed(b"\x16\x03\x01\x02\x00")  # a TLS record where TURN was expected
    with pytest.raises(FrameTooLarge):
        StreamFramer().feed(b"\x80\x00\x00\x00")


# ---- hostile bytes --------------------------------------------------------------------------

def _valid_messages(client: Client) -> list[bytes]:
    out = []
    for method, attrs in ((stun.Method.ALLOCATE, {"REQUESTED_TRANSPORT": TRANSPORT_UDP, "LIFETIME": 600}),
                          (stun.Method.CREATE_PERMISSION, {"XOR_PEER_ADDRESS": MEDIA}),
                          (stun.Method.CHANNEL_BIND, {"CHANNEL_NUMBER": 0x4000, "XOR_PEER_ADDRESS": MEDIA}),
                          (stun.Method.REFRESH, {"LIFETIME": 0})):
        message = request(method, **attrs)
        message.attributes["USERNAME"] = client.username
        message.attributes["REALM"] = client.realm
        message.attributes["NONCE"] = client.nonce
        message.add_message_integrity(_key(client.username, client.realm, client.password))
        out.append(bytes(message))
    send = stun.Message(stun.Method.SEND, stun.Class.INDICATION)
    send.attributes["XOR-PEER-ADDRESS"] = MEDIA
    send.attributes["DATA"] = b"payload"
    out.append(bytes(send))
    out.append(struct.pack("!HH", 0x4000, 4) + b"data")
    return out


@settings(deadline=None)
@given(st.data())
def test_mutated_and_random_input_never_raises(data):
    """Whatever a client sends (valid messages with bytes flipped, cut or appended, or noise),
    the core answers or drops and counts; it never raises, and its tables stay consistent."""
    server = make_server()
    client = Client(server)
    client.allocate(0.0)
    messages = _valid_messages(client)
    for _ in range(data.draw(st.integers(1, 8))):
        base = bytearray(data.draw(st.sampled_from(messages)) if data.draw(st.booleans())
                         else data.draw(st.binary(max_size=200)))
        for _ in range(data.draw(st.integers(0, 4))):
            if base:
                base[data.draw(st.integers(0, len(base) - 1))] = data.draw(st.integers(0, 255))
        cut = data.draw(st.integers(0, len(base)))
        raw = bytes(base[:cut] if data.draw(st.booleans()) else base) + data.draw(st.binary(max_size=8))
        for output in server.receive(raw, client.client, CLIENT, 1.0):
            if isinstance(output, RelayNeeded):
                server.complete_allocation(output, ("10.0.0.1", 30001), 1.0)
        server.receive_from_peer(RELAY, MEDIA, raw, 1.0)
    # Every relayed address belongs to a live allocation of its client, and the other way round.
    assert len(server.by_relay) == len(server.allocations)
    assert all(server.allocations[a.client] is a and server.by_relay[a.relay] is a for a in server.by_relay.values())
    ended = server.handle_timeout(10_000.0)
    assert not server.allocations and not server.by_relay and len(ended) == len(set(o.relay for o in ended))
    # Quota holds are released with their allocations (a leak would lock a credential out).
    assert not server._per_user and not server._per_ip


def _with_raw_attribute(client: Client, method, attr_type: int, value: bytes, **attributes) -> bytes:
    """A signed request carrying an attribute aioice cannot write (EVEN-PORT, REQUESTED-ADDRESS-FAMILY)."""
    import hashlib
    import hmac

    message = request(method, **attributes)
    message.attributes["USERNAME"] = client.username
    message.attributes["REALM"] = client.realm
    message.attributes["NONCE"] = client.nonce
    body = bytearray(bytes(message))
    body += struct.pack("!HH", attr_type, len(value)) + value + bytes(-len(value) % 4)
    struct.pack_into("!H", body, 2, len(body) - 20 + 24)
    mac = hmac.new(_key(client.username, client.realm, client.password), bytes(body), hashlib.sha1).digest()
    return bytes(body) + struct.pack("!HH", 0x0008, 20) + mac


def test_unknown_comprehension_required_attribute_gets_420_naming_it():
    server = make_server()
    client = Client(server)
    client.challenge(0.0)
    raw = _with_raw_attribute(client, stun.Method.ALLOCATE, 0x0018, b"\x80\x00\x00\x00",
                              REQUESTED_TRANSPORT=TRANSPORT_UDP)  # EVEN-PORT
    (out,) = server.receive(raw, client.client, CLIENT, 0.0)
    response = stun.parse_message(out.data)
    assert response.attributes["ERROR-CODE"][0] == 420
    assert response.check_message_integrity(_key(client.username, client.realm, client.password))
    assert struct.pack("!HH", 0x000A, 2) + b"\x00\x18" in out.data  # UNKNOWN-ATTRIBUTES: EVEN-PORT
    assert server.counters.unknown_attribute == 1 and not server.allocations
    # A comprehension-optional one (0x8000 and up) is ignored.
    raw = _with_raw_attribute(client, stun.Method.ALLOCATE, 0x8000, b"\x01\x00\x00\x00",
                              REQUESTED_TRANSPORT=TRANSPORT_UDP)
    (needed,) = server.receive(raw, client.client, CLIENT, 0.0)
    assert isinstance(needed, RelayNeeded)


def test_ipv6_relayed_address_is_refused_with_440():
    server = make_server()
    client = Client(server)
    client.challenge(0.0)
    raw = _with_raw_attribute(client, stun.Method.ALLOCATE, 0x0017, b"\x02\x00\x00\x00",
                              REQUESTED_TRANSPORT=TRANSPORT_UDP)
    assert error_code(server.receive(raw, client.client, CLIENT, 0.0)) == 440
    raw = _with_raw_attribute(client, stun.Method.ALLOCATE, 0x0017, b"\x01\x00\x00\x00",
                              REQUESTED_TRANSPORT=TRANSPORT_UDP)
    (needed,) = server.receive(raw, client.client, CLIENT, 0.0)
    assert isinstance(needed, RelayNeeded)


def test_unauthenticated_challenges_are_rate_limited_per_source():
    """A 401 is bigger than the smallest Allocate: a flood with a spoofed source must not turn
    the server into an amplifier aimed at that source."""
    server = make_server(max_challenges_per_second=5)
    bare = bytes(request(stun.Method.ALLOCATE, REQUESTED_TRANSPORT=TRANSPORT_UDP))
    answered = sum(len(server.receive(bare, ("udp", CLIENT), CLIENT, 1.0)) for _ in range(50))
    assert answered == 5 and server.counters.challenges_limited == 45
    other = ("203.0.113.50", 1)
    assert server.receive(bare, ("udp", other), other, 1.0)  # another source is not affected
    assert len(server.receive(bare, ("udp", CLIENT), CLIENT, 2.0)) == 1  # refilled a second later


def test_an_allocations_permissions_are_capped():
    from rtp.turn import MAX_PERMISSIONS

    server = Driven(TurnServer(realm="trio-sfu", nonce_secret=b"n",
                               password_for=lambda username, allocating: password_for(SECRET, username, WALL, allocating=allocating),
                               peer_allowed=lambda addr: addr[0].startswith("10.1.")))
    client = Client(server)
    client.allocate(0.0)
    for i in range(MAX_PERMISSIONS):
        out = client.send(request(stun.Method.CREATE_PERMISSION, XOR_PEER_ADDRESS=(f"10.1.0.{i}", 7882)), 1.0)
        assert parse(out).message_class == stun.Class.RESPONSE
    out = client.send(request(stun.Method.CREATE_PERMISSION, XOR_PEER_ADDRESS=("10.1.1.1", 7882)), 1.0)
    assert error_code(out) == 508 and server.counters.table_full == 1
    # Refreshing one it holds still works.
    assert parse(client.send(request(stun.Method.CREATE_PERMISSION, XOR_PEER_ADDRESS=("10.1.0.3", 7882)),
                             2.0)).message_class == stun.Class.RESPONSE


def test_an_expired_credential_cannot_allocate_but_keeps_its_allocation():
    """LiveKit's rule: the expiry bounds the Allocate; the allocation then lives on its Refreshes."""
    clock = {"wall": WALL}
    server = Driven(TurnServer(realm="trio-sfu", nonce_secret=b"n",
                               password_for=lambda username, allocating: password_for(
                                   SECRET, username, clock["wall"], allocating=allocating),
                               peer_allowed=lambda addr: addr == MEDIA, owner_of=participant_of))
    client = Client(server, expires=WALL + 300)
    client.allocate(0.0)
    clock["wall"] = WALL + 400  # the credential has expired
    assert parse(client.send(request(stun.Method.REFRESH, LIFETIME=600), 100.0)).message_class == stun.Class.RESPONSE
    assert parse(client.send(request(stun.Method.CREATE_PERMISSION, XOR_PEER_ADDRESS=MEDIA), 100.0)).message_class \
        == stun.Class.RESPONSE
    late = Client(server, addr=("198.51.100.5", 40001), expires=WALL + 300)
    late.challenge(100.0)
    assert error_code(late.send(request(stun.Method.ALLOCATE, REQUESTED_TRANSPORT=TRANSPORT_UDP), 100.0)) == 401


def test_the_per_user_quota_counts_every_credential_of_a_participant():
    server = Driven(TurnServer(realm="trio-sfu", nonce_secret=b"n",
                               password_for=lambda username, allocating: password_for(SECRET, username, WALL),
                               peer_allowed=lambda addr: addr == MEDIA, owner_of=participant_of,
                               limits=TurnLimits(max_allocations_per_user=2)))
    # Three joins of one participant (each its own credential), one allocation each.
    clients = [Client(server, addr=("198.51.100.5", 40000 + i), expires=WALL + 3600 + i) for i in range(3)]
    clients[0].allocate(0.0, relay=("10.0.0.1", 30000))
    clients[1].allocate(0.0, relay=("10.0.0.1", 30001))
    clients[2].challenge(0.0)
    assert error_code(clients[2].send(request(stun.Method.ALLOCATE, REQUESTED_TRANSPORT=TRANSPORT_UDP), 0.0)) == 486
    assert server.counters.quota_user == 1


def test_clients_behind_a_tls_terminator_share_no_per_ip_quota_or_challenge_rate():
    """With external_tls every stream comes from the terminator's address: the per-IP bounds,
    meant for distinct clients, must not throttle all of them together."""
    server = make_server(max_allocations_per_ip=1, max_challenges_per_second=1)
    terminator = ("10.9.9.9", 443)
    bare = bytes(request(stun.Method.ALLOCATE, REQUESTED_TRANSPORT=TRANSPORT_UDP))
    for i in range(3):
        (challenge,) = server.receive(bare, f"tls-{i}", terminator, 0.0, stream=True, shared_source=True)
        nonce = stun.parse_message(challenge.data).attributes["NONCE"]
        client = Client(server, addr=terminator, sid=f"PA_{i}", client=f"tls-{i}")
        client.realm, client.nonce = "trio-sfu", nonce
        message = request(stun.Method.ALLOCATE, REQUESTED_TRANSPORT=TRANSPORT_UDP)
        message.attributes.update(USERNAME=client.username, REALM=client.realm, NONCE=client.nonce)
        message.add_message_integrity(_key(client.username, client.realm, client.password))
        (needed,) = server.receive(bytes(message), f"tls-{i}", terminator, 0.0, stream=True, shared_source=True)
        assert isinstance(needed, RelayNeeded)
        server.complete_allocation(needed, ("10.0.0.1", 30000 + i), 0.0)
    assert len(server.allocations) == 3 and server.counters.challenges_limited == 0
    assert server.counters.quota_ip == 0 and not server._per_ip
    # The same from one UDP source is held to both.
    udp = Client(server, addr=("198.51.100.7", 1), sid="PA_udp")
    udp.allocate(0.0, relay=("10.0.0.1", 30010))
    other = Client(server, addr=("198.51.100.7", 2), sid="PA_udp2")
    other.realm, other.nonce = udp.realm, udp.nonce
    assert error_code(other.send(request(stun.Method.ALLOCATE, REQUESTED_TRANSPORT=TRANSPORT_UDP), 0.0)) == 486
