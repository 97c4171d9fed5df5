"""STUN messages (RFC 8489/5389): a total parser and the checks aioice leaves to us.

The message codec itself is :mod:`aioice.stun`. This module adds what a server
exposed to the internet needs on top of it:

* :func:`parse_stun` never raises anything but :class:`StunParseError`;
* :func:`verify_message_integrity` and :func:`verify_fingerprint` work on the
  raw bytes (aioice's parser neither takes a key nor insists the FINGERPRINT be
  last), using a bounds-checked walk over the attribute list;
* :func:`find_attribute` lets a UDP mux read USERNAME without building a
  :class:`~aioice.stun.Message`;
* builders for the Binding responses an ICE agent sends.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import struct

from aioice import stun as _aioice_stun
from aioice.stun import Class, Message, Method

from rtp.errors import ParseError

__all__ = [
    "Class",
    "Message",
    "Method",
    "StunParseError",
    "MAGIC_COOKIE",
    "HEADER_LENGTH",
    "ATTR_USERNAME",
    "ATTR_MESSAGE_INTEGRITY",
    "ATTR_FINGERPRINT",
    "looks_like_stun",
    "parse_stun",
    "find_attribute",
    "verify_fingerprint",
    "verify_message_integrity",
    "long_term_key",
    "serialize",
    "binding_success",
    "binding_error",
]

MAGIC_COOKIE = 0x2112A442
HEADER_LENGTH = 20
FINGERPRINT_XOR = 0x5354554E

ATTR_USERNAME = 0x0006
ATTR_MESSAGE_INTEGRITY = 0x0008
ATTR_FINGERPRINT = 0x8028

_MI_VALUE_LENGTH = 20  # HMAC-SHA1
_MI_ATTR_LENGTH = 4 + _MI_VALUE_LENGTH
_FP_ATTR_LENGTH = 8

_HEADER = struct.Struct("!HHI")
_ATTR_HEADER = struct.Struct("!HH")
_U32 = struct.Struct("!I")

#: Methods aioice's Method enum knows; anything else is a parse error, not a ValueError.
_KNOWN_METHODS = frozenset(int(m) for m in Method)


class StunParseError(ParseError):
    """Bytes that are not a well-formed STUN message."""


def looks_like_stun(data: bytes) -> bool:
    """RFC 7983 demux plus the RFC 5389 header invariants; cheap enough for every datagram."""
    if len(data) < HEADER_LENGTH or data[0] > 3:
        return False
    _type, length, cookie = _HEADER.unpack_from(data, 0)
    return cookie == MAGIC_COOKIE and length & 3 == 0 and length == len(data) - HEADER_LENGTH


def _walk(data: bytes):
    """Yield (type, value_offset, value_length) per attribute; raise on any overrun.

    The caller has already checked the header, so the walk covers exactly
    ``data[20:]``. Padding is to 4 bytes (RFC 8489 §14).
    """
    end = len(data)
    pos = HEADER_LENGTH
    while pos < end:
        if end - pos < 4:
            raise StunParseError("truncated STUN attribute header")
        attr_type, attr_len = _ATTR_HEADER.unpack_from(data, pos)
        value_at = pos + 4
        padded = (attr_len + 3) & ~3
        if value_at + padded > end:
            raise StunParseError("STUN attribute overruns the message")
        yield attr_type, value_at, attr_len
        pos = value_at + padded


def _check_header(data: bytes) -> None:
    if len(data) < HEADER_LENGTH:
        raise StunParseError("shorter than a STUN header")
    msg_type, length, cookie = _HEADER.unpack_from(data, 0)
    if msg_type & 0xC000:
        raise StunParseError("top two bits of a STUN message type must be zero")
    if cookie != MAGIC_COOKIE:
        raise StunParseError("no STUN magic cookie")
    if length & 3 or length != len(data) - HEADER_LENGTH:
        raise StunParseError("STUN length field does not match the datagram")


def find_attribute(data: bytes, attr_type: int) -> bytes | None:
    """Value of the first attribute of ``attr_type``, or None; raises only :class:`StunParseError`."""
    _check_header(data)
    for t, at, length in _walk(data):
        if t == attr_type:
            return data[at : at + length]
    return None


def parse_stun(data: bytes) -> Message:
    """Parse a STUN message with aioice, validating the framing first.

    Does not check MESSAGE-INTEGRITY (needs a key: :func:`verify_message_integrity`).
    A FINGERPRINT, if present, is checked by aioice and a mismatch is a parse error.
    """
    _check_header(data)
    # Walk once ourselves: aioice slices past the end on overrunning attributes
    # and would hand short values to struct.unpack.
    for _t, _at, _len in _walk(data):
        pass
    msg_type = _HEADER.unpack_from(data, 0)[0]
    if msg_type & 0x3EEF not in _KNOWN_METHODS:
        raise StunParseError(f"unknown STUN method in type 0x{msg_type:04x}")
    try:
        return _aioice_stun.parse_message(data)
    except (ValueError, struct.error, IndexError, KeyError, TypeError) as exc:
        # ValueError covers UnicodeDecodeError and ipaddress errors too.
        raise StunParseError(f"malformed STUN message: {exc}") from None


def verify_fingerprint(data: bytes) -> bool:
    """True iff the message ends with a FINGERPRINT attribute whose CRC32 matches (RFC 8489 §14.7).

    A FINGERPRINT that is not last, or missing, is a failure. Malformed framing is False too.
    """
    try:
        _check_header(data)
        last = None
        for last in _walk(data):
            pass
    except StunParseError:
        return False
    if last is None:
        return False
    t, at, length = last
    if t != ATTR_FINGERPRINT or length != 4 or at + 4 != len(data):
        return False
    # The header length already counts the FINGERPRINT, as the CRC requires.
    expected = (binascii.crc32(memoryview(data)[: at - 4]) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
    return _U32.unpack_from(data, at)[0] == expected


def verify_message_integrity(data: bytes, key: bytes) -> bool:
    """True iff MESSAGE-INTEGRITY (HMAC-SHA1, RFC 8489 §14.5) verifies under ``key``.

    Only FINGERPRINT may follow MESSAGE-INTEGRITY; the HMAC covers the header,
    with its length rewritten to end just after MESSAGE-INTEGRITY, and every
    attribute before it. Compared in constant time.
    """
    try:
        _check_header(data)
        attrs = list(_walk(data))
    except StunParseError:
        return False
    for i, (t, at, length) in enumerate(attrs):
        if t != ATTR_MESSAGE_INTEGRITY:
            continue
        if length != _MI_VALUE_LENGTH:
            return False
        following = attrs[i + 1 :]
        if following and (len(following) > 1 or following[0][0] != ATTR_FINGERPRINT):
            return False
        mi_start = at - 4
        covered_length = mi_start - HEADER_LENGTH + _MI_ATTR_LENGTH
        mac = hmac.new(key, digestmod=hashlib.sha1)
        mac.update(data[:2])
        mac.update(struct.pack("!H", covered_length))
        mac.update(data[4:mi_start])
        return hmac.compare_digest(mac.digest(), data[at : at + _MI_VALUE_LENGTH])
    return False


def long_term_key(username: str, realm: str, password: str) -> bytes:
    """RFC 8489 §9.2.2 MD5 key; the caller applies OpaqueString/SASLprep to ``password``."""
    return hashlib.md5(f"{username}:{realm}:{password}".encode("utf-8")).digest()


def serialize(message: Message, integrity_key: bytes | None = None) -> bytes:
    """Bytes of ``message`` ending in MESSAGE-INTEGRITY (if a key is given) and FINGERPRINT."""
    if integrity_key is not None:
        message.add_message_integrity(integrity_key)
    else:
        message.add_fingerprint()
    return bytes(message)


def binding_success(transaction_id: bytes, addr: tuple[str, int], integrity_key: bytes) -> bytes:
    """A Binding success response reflecting ``addr`` in XOR-MAPPED-ADDRESS (RFC 8445 §7.3.1.3)."""
    response = Message(Method.BINDING, Class.RESPONSE, transaction_id=transaction_id)
    response.attributes["XOR-MAPPED-ADDRESS"] = addr
    return serialize(response, integrity_key)


def binding_error(
    transaction_id: bytes, code: int, reason: str, integrity_key: bytes | None = None
) -> bytes:
    """A Binding error response; unauthenticated requests get it without MESSAGE-INTEGRITY."""
    response = Message(Method.BINDING, Class.ERROR, transaction_id=transaction_id)
    response.attributes["ERROR-CODE"] = (code, reason)
    return serialize(response, integrity_key)
