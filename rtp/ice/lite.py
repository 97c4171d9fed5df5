"""The server's ICE-lite responder (RFC 8445 §2.5 and §7.3, RFC 7675 consent).

A lite agent never sends checks; it answers them. Everything it learns comes
from Binding requests, so every request is authenticated — FINGERPRINT, then
USERNAME, then MESSAGE-INTEGRITY with our password — before it may change any
state. Unauthenticated traffic only moves counters (and may get a small error
response that carries nothing of ours and is shorter than the request).
"""

from __future__ import annotations

import collections
import enum

import attrs

from rtp.ice.events import (
    Address,
    IceConnected,
    IceConsentExpired,
    IceEvent,
    IceRestartCompleted,
    IceSelectedPairChanged,
)
from rtp.ice.checks import CheckVerdict, authenticate_check, rejection, role_conflict
from rtp.stun import (
    ATTR_USERNAME,
    Class,
    Method,
    StunParseError,
    binding_success,
    find_attribute,
    parse_stun,
)

#: RFC 7675 §5.1: consent is lost 30 s after the last authenticated check.
CONSENT_TIMEOUT = 30.0
#: Remote addresses that passed a check. A browser offers a handful of
#: candidates; the bound keeps an authenticated-but-hostile peer from growing us.
MAX_VALID_ADDRESSES = 8
_BINDING_REQUEST = b"\x00\x01"
#: Which counter a check that is not authentic adds to (rtp/ice/checks.py decides which).
_REJECTION_COUNTERS = {
    CheckVerdict.NO_FINGERPRINT: "bad_fingerprint",
    CheckVerdict.BAD_REQUEST: "bad_request",
    CheckVerdict.UNKNOWN_USERNAME: "unknown_username",
    CheckVerdict.BAD_INTEGRITY: "bad_integrity",
}


class IceLiteState(enum.Enum):
    NEW = "new"  # no pair nominated yet
    CONNECTED = "connected"  # a pair is nominated and consent is fresh
    EXPIRED = "expired"  # consent lost; only restart() leaves this state


@attrs.define
class IceLiteCounters:
    """Why datagrams were answered or dropped; exported as metrics by the owner."""

    malformed: int = 0  # not parseable as STUN
    ignored: int = 0  # responses, indications (keepalives), other methods
    bad_fingerprint: int = 0  # dropped silently
    bad_request: int = 0  # USERNAME or MESSAGE-INTEGRITY missing: 400
    unknown_username: int = 0  # wrong ufrag(s): 401
    bad_integrity: int = 0  # HMAC did not verify: 401
    role_conflict: int = 0  # peer also controlled: 487
    after_expiry: int = 0  # authenticated, but consent had expired
    accepted: int = 0  # authenticated checks answered with success
    addresses_evicted: int = 0


def ufrag_of(data: bytes) -> str | None:
    """The local-ufrag half of USERNAME in a Binding request, or None.

    Cheap and total, for the UDP mux to route a new peer's first datagram: no
    message object is built and no check is verified here (the agent does that).
    """
    if data[:2] != _BINDING_REQUEST:
        return None
    try:
        username = find_attribute(data, ATTR_USERNAME)
    except StunParseError:
        return None
    if not username:
        return None
    local, sep, _remote = username.partition(b":")
    if not sep or not local:
        return None
    try:
        return local.decode("ascii")
    except UnicodeDecodeError:
        return None


class IceLiteAgent:
    """ICE-lite, always in the controlled role, for one transport (one component)."""

    def __init__(self, local_ufrag: str, local_pwd: str) -> None:
        self._local_ufrag = local_ufrag
        self._local_key = local_pwd.encode("utf-8")
        self._remote_ufrag: str | None = None
        self._remote_pwd: str | None = None
        self.state = IceLiteState.NEW
        self.counters = IceLiteCounters()
        self._selected: Address | None = None
        # address -> time of its last authenticated check, oldest first.
        self._valid: collections.OrderedDict[Address, float] = collections.OrderedDict()
        self._outbox: list[tuple[bytes, Address]] = []
        self._events: collections.deque[IceEvent] = collections.deque()
        self._now = float("-inf")
        # Set by restart() until a check under the new credentials is accepted.
        self._restarting = False

    # ----------------------------------------------------------------- credentials

    @property
    def local_ufrag(self) -> str:
        return self._local_ufrag

    @property
    def remote_ufrag(self) -> str | None:
        return self._remote_ufrag

    @property
    def remote_pwd(self) -> str | None:
        """Not needed to answer checks; kept for the owner (and a future full agent)."""
        return self._remote_pwd

    def set_remote_credentials(self, ufrag: str, pwd: str | None = None) -> None:
        """From the remote description. Until called, any remote ufrag is accepted in USERNAME,
        because a check may race ahead of the offer; our own ufrag and pwd still gate it."""
        self._remote_ufrag = ufrag
        self._remote_pwd = pwd

    def restart(self, new_ufrag: str, new_pwd: str) -> None:
        """ICE restart (RFC 8445 §9): new local credentials; the old ones fail from now on.

        Media keeps flowing on the selected pair until the peer nominates again
        under the new credentials, so the selected address and consent survive.
        The remote credentials are forgotten until :meth:`set_remote_credentials`.
        """
        self._local_ufrag = new_ufrag
        self._local_key = new_pwd.encode("utf-8")
        self._remote_ufrag = None
        self._remote_pwd = None
        self._restarting = True
        if self.state is IceLiteState.EXPIRED:
            self.state = IceLiteState.NEW

    # ----------------------------------------------------------------- queries

    @property
    def selected_address(self) -> Address | None:
        """Where media goes; None before nomination and after consent expiry."""
        return self._selected

    @property
    def valid_addresses(self) -> tuple[Address, ...]:
        """Remote addresses that passed an authenticated check (at most MAX_VALID_ADDRESSES)."""
        return tuple(self._valid)

    def is_valid_address(self, addr: Address) -> bool:
        """Per-datagram filter for non-STUN traffic: a dict lookup."""
        return addr in self._valid

    # ----------------------------------------------------------------- inputs

    def receive_stun(self, data: bytes, addr: Address, now: float) -> None:
        """Handle one datagram already classified as STUN (first byte 0-3)."""
        if now > self._now:
            self._now = now
        try:
            message = parse_stun(data)
        except StunParseError:
            self.counters.malformed += 1
            return
        if message.message_method != Method.BINDING or message.message_class != Class.REQUEST:
            # Lite agents send no requests, so responses are stray; Binding
            # indications are keepalives and need no answer (RFC 8445 §11).
            self.counters.ignored += 1
            return
        tid = message.transaction_id
        verdict = authenticate_check(message, data, self._local_ufrag, self._local_key, self._remote_ufrag)
        if verdict is not CheckVerdict.AUTHENTIC:
            counter = _REJECTION_COUNTERS[verdict]
            setattr(self.counters, counter, getattr(self.counters, counter) + 1)
            answer = rejection(verdict, tid, len(data))
            if answer is not None:
                self._outbox.append((answer, addr))
            return

        # Authenticated from here on. Both sides controlled: 487 (checks.role_conflict).
        if "ICE-CONTROLLED" in message.attributes:
            self.counters.role_conflict += 1
            self._outbox.append((role_conflict(tid, self._local_key), addr))
            return
        if self.state is IceLiteState.EXPIRED:
            self.counters.after_expiry += 1
            return

        self.counters.accepted += 1
        if self._restarting:
            self._restarting = False
            self._events.append(IceRestartCompleted(addr))
        self._remember(addr, now)
        self._outbox.append((binding_success(tid, addr, self._local_key), addr))
        if "USE-CANDIDATE" in message.attributes:
            self._nominate(addr)

    def _remember(self, addr: Address, now: float) -> None:
        if addr in self._valid:
            self._valid.move_to_end(addr)
        elif len(self._valid) >= MAX_VALID_ADDRESSES:
            for old in self._valid:
                if old != self._selected:
                    del self._valid[old]
                    self.counters.addresses_evicted += 1
                    break
        self._valid[addr] = now

    def _nominate(self, addr: Address) -> None:
        # The latest nomination wins: a controlling agent re-nominates to move
        # media (e.g. after a network change), and aggressive nominators mark every check.
        if addr == self._selected:
            return
        self._selected = addr
        self._events.append(IceSelectedPairChanged(addr))
        if self.state is IceLiteState.NEW:
            self.state = IceLiteState.CONNECTED
            self._events.append(IceConnected(addr))

    # ----------------------------------------------------------------- outputs and time

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        """Drain the queued answers. ``now`` is unused: a lite agent only ever answers, but it
        takes the argument every ``*_to_send`` in ``rtp/`` takes."""
        out, self._outbox = self._outbox, []
        return out

    def next_event(self) -> IceEvent | None:
        return self._events.popleft() if self._events else None

    def next_deadline(self) -> float | None:
        """When consent of the selected pair runs out, if a pair is selected."""
        if self.state is not IceLiteState.CONNECTED or self._selected is None:
            return None
        return self._valid[self._selected] + CONSENT_TIMEOUT

    def handle_timeout(self, now: float) -> None:
        if now < self._now:
            return  # time never goes backwards for us
        self._now = now
        deadline = self.next_deadline()
        if deadline is None or now < deadline:
            return
        lost = self._selected
        assert lost is not None  # next_deadline() returned a deadline, so a pair is selected
        self.state = IceLiteState.EXPIRED
        self._selected = None
        self._valid.clear()
        self._events.append(IceConsentExpired(lost))
