"""STUN: the framing checks and aioice's codec behind rtp.stun, and the ICE-lite agent on top."""

from __future__ import annotations

import binascii
import hashlib
import hmac
import struct

from aioice.stun import Class, Message, Method

from fuzz.target import FuzzTarget
from rtp.ice.lite import IceLiteAgent, ufrag_of
from rtp.stun import (
    ATTR_FINGERPRINT, ATTR_MESSAGE_INTEGRITY, ATTR_USERNAME, FINGERPRINT_XOR, HEADER_LENGTH, StunParseError,
    find_attribute, looks_like_stun, parse_stun, serialize, verify_fingerprint, verify_message_integrity,
)

LOCAL_UFRAG, LOCAL_PWD, REMOTE_UFRAG = "SfuU", "sfu-password-0123456789ab", "peer"
KEY = LOCAL_PWD.encode()
ADDR = ("192.0.2.7", 40000)
# First input byte, bit 0: append MESSAGE-INTEGRITY (with the agent's key) and FINGERPRINT to
# the rest, as a real peer that knows the password would, so mutations reach the
# authenticated paths past the HMAC and CRC.
SIGN = 0x01


def _sign(message: bytes) -> bytes:
    """Append MESSAGE-INTEGRITY and FINGERPRINT (RFC 8489 §14.5, §14.7), fixing the length."""
    if len(message) < HEADER_LENGTH or (len(message) - HEADER_LENGTH) % 4:
        return message
    body = bytearray(message)
    struct.pack_into("!H", body, 2, len(body) - HEADER_LENGTH + 24)
    mac = hmac.new(KEY, bytes(body), hashlib.sha1).digest()
    body += struct.pack("!HH", ATTR_MESSAGE_INTEGRITY, 20) + mac
    struct.pack_into("!H", body, 2, len(body) - HEADER_LENGTH + 8)
    crc = (binascii.crc32(bytes(body)) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
    body += struct.pack("!HHI", ATTR_FINGERPRINT, 4, crc)
    return bytes(body)


def run(data: bytes) -> None:
    if not data:
        return
    message = _sign(data[1:]) if data[0] & SIGN else data[1:]
    looks_like_stun(message)
    ufrag_of(message)
    verify_fingerprint(message)
    verify_message_integrity(message, KEY)
    try:
        find_attribute(message, ATTR_USERNAME)
    except StunParseError:
        pass
    agent = IceLiteAgent(LOCAL_UFRAG, LOCAL_PWD)
    agent.set_remote_credentials(REMOTE_UFRAG)
    agent.receive_stun(message, ADDR, 1.0)
    agent.datagrams_to_send(1.0)
    agent.handle_timeout(100.0)
    parse_stun(message)


def _unsigned(message: Message) -> bytes:
    """A message's bytes without integrity or fingerprint, for the harness to sign."""
    return bytes(message)


def seeds() -> list[bytes]:
    tid = bytes(range(12))
    request = Message(Method.BINDING, Class.REQUEST, transaction_id=tid)
    request.attributes["USERNAME"] = f"{LOCAL_UFRAG}:{REMOTE_UFRAG}"
    request.attributes["PRIORITY"] = 1853824767
    request.attributes["ICE-CONTROLLING"] = 0x1122334455667788
    nominating = Message(Method.BINDING, Class.REQUEST, transaction_id=tid)
    nominating.attributes.update(request.attributes)
    nominating.attributes["USE-CANDIDATE"] = None
    conflict = Message(Method.BINDING, Class.REQUEST, transaction_id=tid)
    conflict.attributes["USERNAME"] = f"{LOCAL_UFRAG}:{REMOTE_UFRAG}"
    conflict.attributes["ICE-CONTROLLED"] = 5
    success = Message(Method.BINDING, Class.RESPONSE, transaction_id=tid)
    success.attributes["XOR-MAPPED-ADDRESS"] = ("2001:db8::1", 5000)
    error = Message(Method.BINDING, Class.ERROR, transaction_id=tid)
    error.attributes["ERROR-CODE"] = (487, "Role Conflict")
    indication = Message(Method.BINDING, Class.INDICATION, transaction_id=tid)
    allocate = Message(Method.ALLOCATE, Class.REQUEST, transaction_id=tid)
    allocate.attributes["LIFETIME"] = 600
    allocate.attributes["REQUESTED-TRANSPORT"] = 0x11000000
    allocate.attributes["SOFTWARE"] = "trio-sfu"
    out = [bytes([SIGN]) + _unsigned(m) for m in (request, nominating, conflict)]
    out += [bytes([0]) + serialize(m, KEY) for m in (success, error)]
    out += [bytes([0]) + serialize(m) for m in (indication, allocate)]
    return out


TARGET = FuzzTarget(
    "stun", "rtp.stun (framing, aioice codec, integrity, fingerprint) and IceLiteAgent.receive_stun",
    run, (StunParseError,), seeds, max_len=1500,
)
