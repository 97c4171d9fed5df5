"""Sans-IO ICE: the server's ICE-lite responder and a small controlling full agent.

* :class:`IceLiteAgent` (``lite.py``) answers connectivity checks on the SFU
  side (RFC 8445 §2.5, RFC 7675 consent freshness).
* :class:`IceControllingAgent` (``controlling.py``) runs checks against a peer
  for our own clients (tests, load tester, node links).
* :class:`IceControlledAgent` (``controlled.py``): the same checks in the controlled role,
  for our clients answering a full-ICE offerer (Janus).
* :func:`ufrag_of` routes a new peer's first datagram to its agent.
"""

from rtp.ice.controlled import IceControlledAgent
from rtp.ice.controlling import IceControllingAgent, IceControllingCounters, IceControllingState
from rtp.ice.events import (
    IceConnected,
    IceConsentExpired,
    IceEvent,
    IceFailed,
    IceRestartCompleted,
    IceSelectedPairChanged,
)
from rtp.ice.lite import IceLiteAgent, IceLiteCounters, IceLiteState, ufrag_of

__all__ = [
    "IceConnected",
    "IceConsentExpired",
    "IceControlledAgent",
    "IceControllingAgent",
    "IceControllingCounters",
    "IceControllingState",
    "IceEvent",
    "IceFailed",
    "IceLiteAgent",
    "IceLiteCounters",
    "IceLiteState",
    "IceRestartCompleted",
    "IceSelectedPairChanged",
    "ufrag_of",
]
