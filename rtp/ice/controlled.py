"""A controlled full ICE agent (RFC 8445 §7.3.1.5) for our own clients answering a full-ICE offerer.

Against an ICE-lite SFU our client controls (``controlling.py``). A full-ICE offerer such as
Janus (libnice) controls itself (RFC 8445 §6.1.1); rather than declaring ourselves lite, this
agent takes the controlled role as a browser does: it checks every pair itself (the same paced,
retransmitted checks as the controlling agent, carrying ICE-CONTROLLED), answers the peer's
checks, and selects the pair the peer nominates with USE-CANDIDATE — at once when our own check
on it already succeeded, else when it does (a triggered check is sent for a nominated pair not
yet checked). A nomination from an address we have no pair for (a peer-reflexive candidate, RFC
8445 §7.3.1.3) adds that pair, bounded like the others. Consent freshness after selection is the
controlling agent's, unchanged.

Not covered: switching role on a conflict (two controlled agents get 487 from us; the
controlling peer keeps its role), and nominations after the first (the first selected pair
stays).
"""

from __future__ import annotations

from rtp.ice.controlling import (
    MAX_PAIRS,
    CandidatePair,
    IceControllingAgent,
    IceControllingState,
    PairState,
    _CheckKind,
    _Transaction,
)
from rtp.ice.events import Address
from rtp.stun import Message


class IceControlledAgent(IceControllingAgent):
    """Controlled full ICE agent for one component on one local socket (see the module docstring)."""

    ROLE_ATTRIBUTE = "ICE-CONTROLLED"
    NOMINATES = False

    def _answered_check(self, message: Message, addr: Address) -> None:
        if "USE-CANDIDATE" in message.attributes and self.state is IceControllingState.CHECKING:
            self._on_nomination(addr, message.attributes.get("PRIORITY"))

    def _on_nomination(self, addr: Address, priority: object) -> None:
        pair = next((p for p in self._pairs if p.addr == addr), None)
        if pair is None:
            if len(self._pairs) >= MAX_PAIRS:
                self.counters.candidates_ignored += 1
                return
            # A peer-reflexive remote: the pair ranks by the priority the peer's check carried.
            remote_priority = priority if isinstance(priority, int) else 0
            pair = CandidatePair(addr, remote_priority)
            self._pairs.append(pair)
        pair.nominated_by_peer = True
        if pair.state is PairState.SUCCEEDED:
            self._select(pair, self._now)
        elif pair.state is not PairState.IN_PROGRESS:
            # Triggered check (RFC 8445 §7.3.1.4): the pair is selected once ours succeeds.
            pair.state = PairState.IN_PROGRESS
            self._send_check(pair, _CheckKind.ORDINARY, self._now)

    def _check_succeeded(self, tx: _Transaction, now: float) -> None:
        super()._check_succeeded(tx, now)
        pair = tx.pair
        if (tx.kind is _CheckKind.ORDINARY and pair.nominated_by_peer
                and self.state is IceControllingState.CHECKING):
            self._select(pair, now)


__all__ = ["IceControlledAgent"]
