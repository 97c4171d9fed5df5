"""Events the ICE agents hand to their owner through ``next_event()``."""

from __future__ import annotations

from typing import Union

import attrs

Address = tuple[str, int]


@attrs.frozen
class IceConnected:
    """A pair is nominated; media may flow to ``addr``. Emitted once per connection."""

    addr: Address


@attrs.frozen
class IceSelectedPairChanged:
    """The remote address media goes to is now ``addr`` (first nomination included)."""

    addr: Address


@attrs.frozen
class IceRestartCompleted:
    """After a restart, the first check authenticated with the new credentials arrived from
    ``addr``: the peer restarted its side too (the old credentials are gone for good)."""

    addr: Address


@attrs.frozen
class IceConsentExpired:
    """RFC 7675: no authenticated check (lite) / response (controlling) for the consent timeout.

    The owner must stop sending media to ``addr``.
    """

    addr: Address


@attrs.frozen
class IceFailed:
    """The controlling agent gave up before any pair was nominated."""

    reason: str


IceEvent = Union[IceConnected, IceSelectedPairChanged, IceRestartCompleted, IceConsentExpired, IceFailed]
