"""The node's media traffic, read at one moment: what every published track received and every
down track sent since the server started.

Receivers and down tracks count in their own attrs counters, so the per-packet path touches no
shared state; a finished one folds its counters into the server's `Metrics` (under
`RECEIVER_PREFIX` and `DOWNTRACK_PREFIX`). The node's total of a counter is therefore the
folded part plus the live objects' counters, which `media_traffic` adds up by walking the rooms'
media: one pass over the node's tracks per reading (a Prometheus scrape every few seconds), and
nothing at all on the forwarding path.

A total can step back for a moment: a track handed over to the relay while its participant
moves to another node (trio_sfu.cluster) is neither in a room here nor folded until it closes,
and a layer's loss count starts over with a new SSRC. A reader that needs counters that never go
down (Prometheus) keeps the highest value it reported (trio_sfu.api.prometheus).
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Iterator

import attrs

from trio_sfu import metrics as m
from trio_sfu.forwarding.downtrack import DownTrackCounters
from trio_sfu.forwarding.receiver import ReceiverCounters, ReceiverState, TrackReceiver
from trio_sfu.media.participant_media import ParticipantMedia
from trio_sfu.media.room_media import RECEIVER_LOST, RECEIVER_PREFIX, RoomMedia
from trio_sfu.media.subscribing import DOWNTRACK_PREFIX

RECEIVER_FIELDS = tuple(f.name for f in attrs.fields(ReceiverCounters))
DOWNTRACK_FIELDS = tuple(f.name for f in attrs.fields(DownTrackCounters))


@attrs.frozen
class MediaTraffic:
    """Node-wide totals since the server started, and what is live now."""

    #: ReceiverCounters field -> its total over every track published on this node.
    receivers: dict[str, int]
    #: DownTrackCounters field -> its total over every down track of this node's subscribers.
    down_tracks: dict[str, int]
    #: Packets of the publishers' streams that never reached this node (RTP sequence gaps).
    packets_lost: int
    #: Media kind ("audio", "video") -> down tracks live now (what LiveKit calls subscribed tracks).
    subscribed: dict[str, int]

    def metric_totals(self) -> Iterator[tuple[str, int]]:
        """(the name finished objects fold it under in the server's Metrics, node total) of each
        receiver and down track counter, and of the publishers' lost packets."""
        for name, value in self.receivers.items():
            yield f"{RECEIVER_PREFIX}_{name}_total", value
        for name, value in self.down_tracks.items():
            yield f"{DOWNTRACK_PREFIX}_{name}_total", value
        yield RECEIVER_LOST, self.packets_lost


def folded_metric_names() -> frozenset[str]:
    """The names under which finished receivers and down tracks fold their counters into the
    server's Metrics: a reader of `media_traffic` has their full totals and must not show the
    folded part again."""
    names = {f"{RECEIVER_PREFIX}_{name}_total" for name in RECEIVER_FIELDS}
    names |= {f"{DOWNTRACK_PREFIX}_{name}_total" for name in DOWNTRACK_FIELDS}
    names.add(RECEIVER_LOST)
    return frozenset(names)


def media_traffic(rooms: Iterable[RoomMedia], metrics: m.Metrics) -> MediaTraffic:
    """Totals over the given rooms' media (the node's `MediaService.rooms.values()`) plus what
    finished receivers and down tracks folded into `metrics`."""
    receivers = {name: metrics.get(f"{RECEIVER_PREFIX}_{name}_total") for name in RECEIVER_FIELDS}
    down_tracks = {name: metrics.get(f"{DOWNTRACK_PREFIX}_{name}_total") for name in DOWNTRACK_FIELDS}
    lost = metrics.get(RECEIVER_LOST)
    subscribed: Counter[str] = Counter()
    for room in list(rooms):
        for session in list(room.sessions.values()):
            if not isinstance(session, ParticipantMedia):
                continue
            for receiver in _live_receivers(session):
                counters = receiver.counters
                for name in RECEIVER_FIELDS:
                    receivers[name] += getattr(counters, name)
                lost += receiver.packets_lost()
            for binding in list(session.subscribing.endpoint.bindings.values()):
                down = binding.down
                if down is None:
                    continue
                subscribed[binding.source.kind.value] += 1
                own = down.own_counters()
                for name in DOWNTRACK_FIELDS:
                    down_tracks[name] += getattr(own, name)
    return MediaTraffic(receivers=receivers, down_tracks=down_tracks, packets_lost=lost, subscribed=dict(subscribed))


def _live_receivers(session: ParticipantMedia) -> list[TrackReceiver]:
    """The receivers of the participant's published tracks that have not folded their counters
    yet (a closed one has: PublishedTrack.close folds, then closes)."""
    tracks = dict.fromkeys(session.publishing.tracks_by_mid.values())
    return [t.receiver for t in tracks if t.receiver.state is not ReceiverState.CLOSED]


__all__ = ["DOWNTRACK_FIELDS", "MediaTraffic", "RECEIVER_FIELDS", "folded_metric_names", "media_traffic"]
