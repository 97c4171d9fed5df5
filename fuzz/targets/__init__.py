"""Every fuzz target, by name, in the order ``python -m fuzz`` runs them.

Targets load on demand: an atheris worker imports only its own target's parsers, inside the
instrumentation, and starts in a fraction of the time all of them would take.
"""

from __future__ import annotations

import importlib

from fuzz.target import FuzzTarget

# name -> (module under fuzz.targets, attribute holding the FuzzTarget)
_WHERE: dict[str, tuple[str, str]] = {
    "stun": ("stun_messages", "TARGET"),
    "turn": ("turn_messages", "TARGET"),
    "tcp-framing": ("tcp_frames", "TARGET"),
    "rtp": ("rtp_packets", "TARGET"),
    "rtcp": ("rtcp_packets", "TARGET"),
    "sdp-offer": ("sdp_descriptions", "OFFER_TARGET"),
    "sdp-answer": ("sdp_descriptions", "ANSWER_TARGET"),
    "dtls-messages": ("dtls_messages", "MESSAGES_TARGET"),
    "dtls-connection": ("dtls_messages", "CONNECTION_TARGET"),
    "sctp-chunks": ("sctp_packets", "CHUNKS_TARGET"),
    "sctp-association": ("sctp_packets", "ASSOCIATION_TARGET"),
    "signal-request": ("signal_messages", "REQUEST_TARGET"),
    "trickle-json": ("signal_messages", "TRICKLE_TARGET"),
    "twirp": ("api_requests", "TARGET"),
    "relay": ("relay_messages", "TARGET"),
}

NAMES: tuple[str, ...] = tuple(_WHERE)


def load(name: str) -> FuzzTarget:
    module, attribute = _WHERE[name]
    target = getattr(importlib.import_module(f"fuzz.targets.{module}"), attribute)
    assert target.name == name, (name, target.name)
    return target
