"""Authenticating an incoming connectivity check: the same rules for every agent here, the
server's lite responder (lite.py) and our clients' full agents (controlling.py, controlled.py).

A Binding request is a check of ours when it carries FINGERPRINT (RFC 8445 §7.1; without it the
datagram may not even be ICE's, so it gets no answer), USERNAME and MESSAGE-INTEGRITY (else 400,
RFC 5389 §10.1.2), a USERNAME "<our ufrag>:<their ufrag>" (else 401; their ufrag is not checked
while it is unknown, as after an ICE restart) and an integrity our password verifies (else 401).
An error answer to an unauthenticated request is sent only when it is no bigger than the request:
its source address may be spoofed, and we never amplify.
"""

from __future__ import annotations

import enum
from typing import Optional

from rtp.stun import Message, binding_error, verify_fingerprint, verify_message_integrity


class CheckVerdict(enum.Enum):
    AUTHENTIC = "authentic"
    NO_FINGERPRINT = "no fingerprint"
    BAD_REQUEST = "no username or message integrity"
    UNKNOWN_USERNAME = "unknown username"
    BAD_INTEGRITY = "message integrity does not verify"


def authenticate_check(message: Message, data: bytes, local_ufrag: str, local_key: bytes,
                       remote_ufrag: Optional[str]) -> CheckVerdict:
    """Whether the Binding request `message` (parsed from `data`) is an authentic check for us."""
    if not verify_fingerprint(data):
        return CheckVerdict.NO_FINGERPRINT
    username = message.attributes.get("USERNAME")
    if username is None or "MESSAGE-INTEGRITY" not in message.attributes:
        return CheckVerdict.BAD_REQUEST
    local, sep, remote = username.partition(":")
    if not sep or local != local_ufrag or (remote_ufrag is not None and remote != remote_ufrag):
        return CheckVerdict.UNKNOWN_USERNAME
    if not verify_message_integrity(data, local_key):
        return CheckVerdict.BAD_INTEGRITY
    return CheckVerdict.AUTHENTIC


_ERRORS = {
    CheckVerdict.BAD_REQUEST: (400, "Bad Request"),
    CheckVerdict.UNKNOWN_USERNAME: (401, "Unauthorized"),
    CheckVerdict.BAD_INTEGRITY: (401, "Unauthorized"),
}


def rejection(verdict: CheckVerdict, transaction_id: bytes, request_length: int) -> Optional[bytes]:
    """The error response to a check that is not authentic, or None when it gets none (no
    FINGERPRINT, or the answer would be bigger than the request)."""
    if verdict not in _ERRORS:
        return None
    response = binding_error(transaction_id, *_ERRORS[verdict])
    return response if len(response) <= request_length else None


def role_conflict(transaction_id: bytes, local_key: bytes) -> bytes:
    """487 Role Conflict (RFC 8445 §7.3.1.1) to an authentic check claiming our own role. None
    of our agents can switch role (lite is never controlling, §6.1.1; our clients keep the role
    they were given), so the answer is always 487, as if our tie-breaker were the largest: the
    peer, if it can, switches."""
    return binding_error(transaction_id, 487, "Role Conflict", local_key)
