"""TURN: rtp.turn's server core (every request, Send indications, ChannelData, data from peers)
and its stream framer, as a client that holds a valid credential and an allocation reaches them."""

from __future__ import annotations

import hashlib
import hmac
import struct

from aioice.stun import Class, Message, Method

from fuzz.target import FuzzTarget
from rtp.stun import ATTR_MESSAGE_INTEGRITY, HEADER_LENGTH
from rtp.turn import FrameTooLarge, RelayNeeded, StreamFramer, TRANSPORT_UDP, TurnServer
from rtp.turn_auth import issue_credential, password_for

SECRET = b"fuzz turn secret"
WALL = 1_800_000_000
CLIENT = ("198.51.100.5", 40000)
MEDIA = ("10.0.0.1", 7882)
RELAY = ("10.0.0.1", 30000)
REALM = "trio-sfu"
CREDENTIAL = issue_credential(SECRET, "PA_fuzz", WALL + 3600)
KEY = hashlib.md5(f"{CREDENTIAL.username}:{REALM}:{CREDENTIAL.password}".encode()).digest()
# First input byte: bit 0 signs the rest with the credential's key (MESSAGE-INTEGRITY), so
# mutations reach the authenticated paths; bit 1 feeds it through the stream framer first.
SIGN = 0x01
STREAM = 0x02


def _server() -> TurnServer:
    return TurnServer(realm=REALM, nonce_secret=b"fuzz nonce secret",
                      password_for=lambda username, allocating: password_for(SECRET, username, WALL, allocating=allocating),
                      peer_allowed=lambda addr: addr == MEDIA)


NONCE = _server()._nonce(CLIENT, 0.0)


def _sign(message: bytes) -> bytes:
    if len(message) < HEADER_LENGTH or (len(message) - HEADER_LENGTH) % 4:
        return message
    body = bytearray(message)
    struct.pack_into("!H", body, 2, len(body) - HEADER_LENGTH + 24)
    mac = hmac.new(KEY, bytes(body), hashlib.sha1).digest()
    return bytes(body) + struct.pack("!HH", ATTR_MESSAGE_INTEGRITY, 20) + mac


def _authenticated(method: Method, **attributes: object) -> Message:
    message = Message(method, Class.REQUEST, transaction_id=bytes(range(12)))
    message.attributes["USERNAME"] = CREDENTIAL.username
    message.attributes["REALM"] = REALM
    message.attributes["NONCE"] = NONCE
    for name, value in attributes.items():
        message.attributes[name.replace("_", "-")] = value
    return message


def _allocated(server: TurnServer) -> None:
    allocate = _authenticated(Method.ALLOCATE, REQUESTED_TRANSPORT=TRANSPORT_UDP)
    allocate.transaction_id = bytes(12)
    server.receive(_sign(bytes(allocate)), "client", CLIENT, 1.0)
    needed = server.next_event()
    assert isinstance(needed, RelayNeeded)
    server.complete_allocation(needed, RELAY, 1.0)
    server.datagrams_to_send(1.0)


def run(data: bytes) -> None:
    if not data:
        return
    server = _server()
    _allocated(server)
    body = data[1:]
    if data[0] & SIGN:
        body = _sign(body)
    frames = [body]
    if data[0] & STREAM:
        try:
            frames = StreamFramer(max_frame=4096).feed(body)
        except FrameTooLarge:
            return
    for frame in frames:
        server.receive(frame, "client", CLIENT, 2.0, stream=bool(data[0] & STREAM))
        _drain(server)
        server.receive_from_peer(frame, RELAY, MEDIA, 2.0)
        _drain(server)
    server.handle_timeout(5000.0)
    _drain(server)


def _drain(server: TurnServer) -> None:
    server.datagrams_to_send(2.0)
    while (event := server.next_event()) is not None:
        if isinstance(event, RelayNeeded):
            server.complete_allocation(event, ("10.0.0.1", 30001), 2.0)
            server.datagrams_to_send(2.0)


def seeds() -> list[bytes]:
    requests = [
        _authenticated(Method.ALLOCATE, REQUESTED_TRANSPORT=TRANSPORT_UDP, LIFETIME=600),
        _authenticated(Method.REFRESH, LIFETIME=1200),
        _authenticated(Method.REFRESH, LIFETIME=0),
        _authenticated(Method.CREATE_PERMISSION, XOR_PEER_ADDRESS=MEDIA),
        _authenticated(Method.CHANNEL_BIND, CHANNEL_NUMBER=0x4001, XOR_PEER_ADDRESS=MEDIA),
    ]
    send = Message(Method.SEND, Class.INDICATION, transaction_id=bytes(range(12)))
    send.attributes["XOR-PEER-ADDRESS"] = MEDIA
    send.attributes["DATA"] = b"relayed payload"
    channel = struct.pack("!HH", 0x4001, 5) + b"hello" + bytes(3)
    out = [bytes([SIGN]) + bytes(m) for m in requests]
    out += [bytes([SIGN | STREAM]) + bytes(m) for m in requests[:2]]
    out += [bytes([0]) + bytes(send), bytes([0]) + channel, bytes([STREAM]) + channel + channel]
    return out


TARGET = FuzzTarget(
    "turn", "rtp.turn.TurnServer (requests, indications, ChannelData, peer data) and StreamFramer",
    run, (), seeds, max_len=1500,
)
