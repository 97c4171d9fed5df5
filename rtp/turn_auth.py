"""Long-term TURN credentials issued per participant, checked without a lookup.

The server hands each participant a username and password in its JoinResponse's `ice_servers`;
the TURN server (rtp.turn) must find the password again from the username alone, on any node
holding the same secret, with no shared table. So the username carries what the password is
derived from (the scheme of draft-uberti-behave-turn-rest, which coturn calls `use-auth-secret`):

    username = "<expiry, Unix seconds>:<participant sid>"
    password = base64(HMAC-SHA1(secret, username))

and the password is refused for an Allocate once the expiry has passed; an allocation made in
time keeps its credential for its Refreshes, permissions and channels, so a long call does not
lose its relay (LiveKit's rule: its credentials, derived from the API key, the participant id
and an expiry, also bound only the Allocate, five minutes by default).

Sans-IO: the wall-clock time is a parameter (`wall_now`), as `now` is everywhere in rtp/.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import attrs

#: Longest username accepted: an expiry, a colon and a participant sid fit in far less.
MAX_USERNAME_LENGTH = 128


@attrs.frozen
class TurnCredential:
    username: str
    password: str
    expires_at: int  # Unix seconds


def _password(secret: bytes, username: str) -> str:
    return base64.b64encode(hmac.new(secret, username.encode("utf-8"), hashlib.sha1).digest()).decode("ascii")


def issue_credential(secret: bytes, participant_sid: str, expires_at: int) -> TurnCredential:
    """The credential participant `participant_sid` may allocate with until `expires_at`."""
    if ":" in participant_sid:
        raise ValueError("a participant sid must not contain ':'")
    username = f"{int(expires_at)}:{participant_sid}"
    return TurnCredential(username, _password(secret, username), int(expires_at))


def password_for(secret: bytes, username: str, wall_now: float, *, allocating: bool = True) -> str | None:
    """The password of `username`, or None when it is malformed, or expired and `allocating`."""
    if not username or len(username) > MAX_USERNAME_LENGTH:
        return None
    expiry_text, sep, sid = username.partition(":")
    if not sep or not sid or not expiry_text.isdigit() or len(expiry_text) > 12:
        return None
    if allocating and int(expiry_text) < wall_now:
        return None
    return _password(secret, username)


def participant_of(username: str) -> str:
    """The participant sid a (well-formed) username was issued to."""
    return username.partition(":")[2]
