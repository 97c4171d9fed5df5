"""A small controlling ICE agent (RFC 8445) for our own clients.

Scope: one component, one local socket (one host base), UDP only. It pairs
that base with each remote candidate, checks the pairs in priority order paced
by Ta, and uses **regular nomination** (RFC 8445 §8.1.1): ordinary checks
carry no USE-CANDIDATE; once a pair succeeds, one more check on it carries
USE-CANDIDATE, and its success nominates the pair. (Aggressive nomination is
deprecated by RFC 8445, and a lite peer takes whichever pair we mark.)

After nomination it keeps consent fresh (RFC 7675): a check on the selected
pair every ~5 s (randomised 0.8-1.2), and consent is lost 30 s after the last
authenticated response. Those checks are also what keeps an ICE-lite peer's
own consent timer alive.

Timers, all explicit through next_deadline()/handle_timeout(now):

* pacing: at most one new transaction (check or nomination) per Ta (50 ms);
* retransmission: RTO = max(500 ms, Ta x active pairs) (RFC 8445 §14.3),
  doubling per resend up to ``max_rto``, ``max_transmissions`` sends in all,
  then the pair fails after one more RTO;
* overall: IceFailed when every pair failed after end-of-candidates, or when
  nothing was nominated within ``connect_timeout``.
"""

from __future__ import annotations

import collections
import enum
import ipaddress
import random

import attrs
from aioice.candidate import Candidate, candidate_priority

from rtp.ice.checks import CheckVerdict, authenticate_check, rejection, role_conflict
from rtp.ice.events import Address, IceConnected, IceConsentExpired, IceEvent, IceFailed
from rtp.stun import (
    Class,
    Message,
    Method,
    StunParseError,
    binding_success,
    parse_stun,
    serialize,
    verify_fingerprint,
    verify_message_integrity,
)

MAX_PAIRS = 64
#: Consent checks outstanding at once; older ones are forgotten, not waited for.
MAX_CONSENT_TRANSACTIONS = 8


class IceControllingState(enum.Enum):
    NEW = "new"  # start(now) not called yet
    CHECKING = "checking"
    CONNECTED = "connected"
    FAILED = "failed"
    EXPIRED = "expired"  # consent lost after connecting


class PairState(enum.Enum):
    WAITING = "waiting"
    IN_PROGRESS = "in-progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class _CheckKind(enum.Enum):
    ORDINARY = "ordinary"
    NOMINATION = "nomination"
    CONSENT = "consent"


@attrs.define(eq=False)
class CandidatePair:
    addr: Address
    priority: int
    state: PairState = PairState.WAITING
    #: The controlling peer sent USE-CANDIDATE on it (only a controlled agent tracks this).
    nominated_by_peer: bool = False


@attrs.define(eq=False)
class _Transaction:
    pair: CandidatePair
    kind: _CheckKind
    request: bytes
    rto: float
    deadline: float
    sends: int = 1


@attrs.define
class IceControllingCounters:
    malformed: int = 0
    unmatched_responses: int = 0  # unknown transaction id (late, stray or forged)
    unauthenticated_responses: int = 0  # bad MI/FINGERPRINT: ignored, retransmission goes on
    address_mismatch: int = 0  # response from another address than the request went to
    error_responses: int = 0
    role_conflicts: int = 0
    retransmissions: int = 0
    requests_answered: int = 0
    requests_rejected: int = 0
    candidates_ignored: int = 0


def _pair_priority(local: int, remote: int) -> int:
    # RFC 8445 §6.1.2.3 with us controlling: G is the local priority.
    g, d = local, remote
    return (1 << 32) * min(g, d) + 2 * max(g, d) + (1 if g > d else 0)


class IceControllingAgent:
    """Controlling full ICE agent for one component on one local socket."""

    #: The role attribute our checks carry; whether we nominate (the controlled subclass does not).
    ROLE_ATTRIBUTE = "ICE-CONTROLLING"
    NOMINATES = True

    def __init__(
        self,
        local_ufrag: str,
        local_pwd: str,
        remote_ufrag: str,
        remote_pwd: str,
        tie_breaker: int,
        *,
        ta: float = 0.05,
        initial_rto: float = 0.5,
        max_rto: float = 4.0,
        max_transmissions: int = 7,
        connect_timeout: float = 30.0,
        consent_interval: float = 5.0,
        consent_timeout: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        self._local_ufrag = local_ufrag
        self._local_key = local_pwd.encode("utf-8")
        self._remote_ufrag = remote_ufrag
        self._remote_key = remote_pwd.encode("utf-8")
        self._username = f"{remote_ufrag}:{local_ufrag}"
        self.tie_breaker = tie_breaker
        self._ta = ta
        self._initial_rto = initial_rto
        self._max_rto = max_rto
        self._max_transmissions = max_transmissions
        self._connect_timeout = connect_timeout
        self._consent_interval = consent_interval
        self._consent_timeout = consent_timeout
        self._rng = rng or random.Random()
        # The PRIORITY attribute carries what a peer-reflexive candidate of
        # ours would get (RFC 8445 §7.1.1); pairs are ordered with our host priority.
        self._prflx_priority = candidate_priority(1, "prflx")
        self._host_priority = candidate_priority(1, "host")

        self.state = IceControllingState.NEW
        self.counters = IceControllingCounters()
        self._pairs: list[CandidatePair] = []
        self._end_of_candidates = False
        self._transactions: dict[bytes, _Transaction] = {}
        self._nominating: CandidatePair | None = None
        self._selected: CandidatePair | None = None
        self._next_pace = 0.0
        self._connect_deadline = 0.0
        self._next_consent = 0.0
        self._last_consent = 0.0
        self._outbox: list[tuple[bytes, Address]] = []
        self._events: collections.deque[IceEvent] = collections.deque()
        self._now = float("-inf")

    # ----------------------------------------------------------------- inputs

    @property
    def selected_address(self) -> Address | None:
        return self._selected.addr if self._selected is not None else None

    @property
    def pairs(self) -> tuple[CandidatePair, ...]:
        return tuple(self._pairs)

    def add_remote_candidate(self, candidate: Candidate | None) -> None:
        """Add a (trickled) remote candidate; None signals end-of-candidates (RFC 8838)."""
        if candidate is None:
            self.end_of_candidates()
            return
        if candidate.component != 1 or candidate.transport.lower() != "udp":
            self.counters.candidates_ignored += 1
            return
        try:
            host = str(ipaddress.ip_address(candidate.host))
        except ValueError:
            # mDNS (.local) names need a resolver; that is the owner's job.
            self.counters.candidates_ignored += 1
            return
        addr = (host, candidate.port)
        if any(p.addr == addr for p in self._pairs) or len(self._pairs) >= MAX_PAIRS:
            self.counters.candidates_ignored += 1
            return
        self._pairs.append(CandidatePair(addr, _pair_priority(self._host_priority, candidate.priority)))
        self._pairs.sort(key=lambda p: p.priority, reverse=True)

    def end_of_candidates(self) -> None:
        self._end_of_candidates = True
        self._maybe_fail()

    def start(self, now: float) -> None:
        """Begin checking; candidates may still trickle in afterwards."""
        if self.state is not IceControllingState.NEW:
            return
        self._now = now
        self.state = IceControllingState.CHECKING
        self._next_pace = now
        self._connect_deadline = now + self._connect_timeout
        self._maybe_fail()

    def receive_stun(self, data: bytes, addr: Address, now: float) -> None:
        if now > self._now:
            self._now = now
        try:
            message = parse_stun(data)
        except StunParseError:
            self.counters.malformed += 1
            return
        if message.message_method != Method.BINDING:
            self.counters.malformed += 1
            return
        if message.message_class == Class.REQUEST:
            self._answer_request(message, data, addr)
        elif message.message_class in (Class.RESPONSE, Class.ERROR):
            self._handle_response(message, data, addr, now)

    def _answer_request(self, message: Message, data: bytes, addr: Address) -> None:
        # A full peer checks us too: we answer so its checks succeed (checks.py authenticates
        # them, as the lite agent does). The controlling agent learns nothing more from them
        # (no triggered checks, no peer-reflexive remotes); the controlled one overrides
        # _answered_check to follow the peer's nominations.
        verdict = authenticate_check(message, data, self._local_ufrag, self._local_key, self._remote_ufrag)
        if verdict is not CheckVerdict.AUTHENTIC:
            self.counters.requests_rejected += 1
            answer = rejection(verdict, message.transaction_id, len(data))
            if answer is not None:
                self._outbox.append((answer, addr))
            return
        if self.ROLE_ATTRIBUTE in message.attributes:
            # RFC 8445 §7.3.1.1: the peer claims our role. We cannot switch (checks.role_conflict).
            self.counters.role_conflicts += 1
            self._outbox.append((role_conflict(message.transaction_id, self._local_key), addr))
            return
        self.counters.requests_answered += 1
        self._outbox.append((binding_success(message.transaction_id, addr, self._local_key), addr))
        self._answered_check(message, addr)

    def _answered_check(self, message: Message, addr: Address) -> None:
        """An authentic check from the peer was answered with success."""

    def _handle_response(self, message: Message, data: bytes, addr: Address, now: float) -> None:
        tx = self._transactions.get(message.transaction_id)
        if tx is None:
            self.counters.unmatched_responses += 1
            return
        if not verify_fingerprint(data) or not verify_message_integrity(data, self._remote_key):
            # RFC 8489 §9.1.4: an unauthenticated response is discarded and the
            # transaction continues, so a forged error cannot fail our check.
            self.counters.unauthenticated_responses += 1
            return
        del self._transactions[message.transaction_id]
        pair = tx.pair
        if addr != pair.addr:
            # RFC 8445 §7.2.5.2.1: non-symmetric addresses fail the check.
            self.counters.address_mismatch += 1
            self._check_failed(tx)
            return
        if message.message_class == Class.ERROR:
            self.counters.error_responses += 1
            if message.error_code == 487:
                self.counters.role_conflicts += 1
            self._check_failed(tx)
            return
        self._check_succeeded(tx, now)

    # ----------------------------------------------------------------- check outcomes

    def _check_succeeded(self, tx: _Transaction, now: float) -> None:
        pair = tx.pair
        if tx.kind is _CheckKind.CONSENT:
            self._last_consent = now
            return
        if self.state is not IceControllingState.CHECKING:
            return
        if tx.kind is _CheckKind.ORDINARY:
            pair.state = PairState.SUCCEEDED
            return
        # Nomination succeeded: this pair carries media from now on.
        self._nominating = None
        self._select(pair, now)

    def _select(self, pair: CandidatePair, now: float) -> None:
        self._selected = pair
        self.state = IceControllingState.CONNECTED
        self._last_consent = now
        self._next_consent = now + self._consent_delay()
        # Remaining ordinary checks are moot.
        for tid, other in list(self._transactions.items()):
            if other.kind is _CheckKind.ORDINARY:
                del self._transactions[tid]
        self._events.append(IceConnected(pair.addr))

    def _check_failed(self, tx: _Transaction) -> None:
        if tx.kind is _CheckKind.CONSENT:
            return  # consent is judged by time since the last success, not per check
        tx.pair.state = PairState.FAILED
        if tx.kind is _CheckKind.NOMINATION:
            self._nominating = None
        self._maybe_fail()

    def _maybe_fail(self) -> None:
        if self.state is not IceControllingState.CHECKING or not self._end_of_candidates:
            return
        if all(p.state is PairState.FAILED for p in self._pairs):
            self._fail("every candidate pair failed" if self._pairs else "no remote candidates")

    def _fail(self, reason: str) -> None:
        self.state = IceControllingState.FAILED
        self._transactions.clear()
        self._nominating = None
        self._events.append(IceFailed(reason))

    def _consent_delay(self) -> float:
        return self._consent_interval * self._rng.uniform(0.8, 1.2)

    # ----------------------------------------------------------------- sending

    def _send_check(self, pair: CandidatePair, kind: _CheckKind, now: float) -> None:
        request = Message(Method.BINDING, Class.REQUEST)
        request.attributes["USERNAME"] = self._username
        request.attributes["PRIORITY"] = self._prflx_priority
        request.attributes[self.ROLE_ATTRIBUTE] = self.tie_breaker
        if kind is _CheckKind.NOMINATION:
            request.attributes["USE-CANDIDATE"] = None
        data = serialize(request, self._remote_key)
        active = sum(1 for p in self._pairs if p.state in (PairState.WAITING, PairState.IN_PROGRESS))
        rto = max(self._initial_rto, self._ta * active)
        if kind is _CheckKind.CONSENT:
            # One shot each (RFC 7675 §5.1 sends a fresh check per interval instead).
            consent = [t for t, x in self._transactions.items() if x.kind is _CheckKind.CONSENT]
            if len(consent) >= MAX_CONSENT_TRANSACTIONS:
                del self._transactions[consent[0]]  # dicts keep insertion order: the oldest
            tx = _Transaction(pair, kind, data, rto, now + self._consent_timeout)
        else:
            tx = _Transaction(pair, kind, data, rto, now + rto)
        self._transactions[request.transaction_id] = tx
        self._outbox.append((data, pair.addr))

    def _pace(self, now: float) -> None:
        """Start at most one new transaction per Ta: a pending nomination first, then a check."""
        if self.state is not IceControllingState.CHECKING or now < self._next_pace:
            return
        if self.NOMINATES and self._nominating is None:
            succeeded = [p for p in self._pairs if p.state is PairState.SUCCEEDED]
            if succeeded:
                self._nominating = succeeded[0]  # pairs are sorted: best valid pair
                self._send_check(succeeded[0], _CheckKind.NOMINATION, now)
                self._next_pace = now + self._ta
                return
        for pair in self._pairs:
            if pair.state is PairState.WAITING:
                pair.state = PairState.IN_PROGRESS
                self._send_check(pair, _CheckKind.ORDINARY, now)
                self._next_pace = now + self._ta
                return

    def _has_paced_work(self) -> bool:
        if self.state is not IceControllingState.CHECKING:
            return False
        if self.NOMINATES and self._nominating is None and any(p.state is PairState.SUCCEEDED for p in self._pairs):
            return True
        return any(p.state is PairState.WAITING for p in self._pairs)

    # ----------------------------------------------------------------- outputs and time

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        """Drain queued datagrams. Checks that are due are started by :meth:`handle_timeout`
        (at :meth:`next_deadline`), never here: draining output has no side effects."""
        out, self._outbox = self._outbox, []
        return out

    def next_event(self) -> IceEvent | None:
        return self._events.popleft() if self._events else None

    def next_deadline(self) -> float | None:
        if self.state is IceControllingState.CHECKING:
            deadlines = [self._connect_deadline]
            if self._has_paced_work():
                deadlines.append(self._next_pace)
        elif self.state is IceControllingState.CONNECTED:
            deadlines = [self._next_consent, self._last_consent + self._consent_timeout]
        else:
            return None
        deadlines.extend(tx.deadline for tx in self._transactions.values())
        return min(deadlines)

    def handle_timeout(self, now: float) -> None:
        if now < self._now:
            now = self._now  # never go backwards; a stale call just re-checks due work
        self._now = now
        if self.state is IceControllingState.CHECKING and now >= self._connect_deadline:
            self._fail("no pair nominated before the connect timeout")
            return
        if self.state is IceControllingState.CONNECTED:
            assert self._selected is not None  # CONNECTED is entered with a selected pair
            if now >= self._last_consent + self._consent_timeout:
                self.state = IceControllingState.EXPIRED
                self._transactions.clear()
                self._events.append(IceConsentExpired(self._selected.addr))
                return
            if now >= self._next_consent:
                self._send_check(self._selected, _CheckKind.CONSENT, now)
                self._next_consent = now + self._consent_delay()
        self._retransmit(now)
        self._pace(now)

    def _retransmit(self, now: float) -> None:
        for tid, tx in list(self._transactions.items()):
            if now < tx.deadline:
                continue
            if tx.kind is _CheckKind.CONSENT or tx.sends >= self._max_transmissions:
                del self._transactions[tid]
                self._check_failed(tx)
                continue
            tx.sends += 1
            tx.rto = min(tx.rto * 2, self._max_rto)
            tx.deadline = now + tx.rto
            self.counters.retransmissions += 1
            self._outbox.append((tx.request, tx.pair.addr))
