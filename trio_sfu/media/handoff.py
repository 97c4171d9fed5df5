"""A participant's media moving between nodes: what the old node hands over, what the new one restores.

On the old node, `begin_migration` lets every subscription go expecting a resume (each m-line and
down-track rewrite state lands in the transceiver cache), stops the subscription manager, and
returns the media half of the sync state (`MigrationSync`): the wanted subscriptions, their
cached m-lines and the subscriber PC's whole m-line layout, the open published tracks and the
publisher streams learned so far. The cluster's relay (trio_sfu.cluster.node_relay) sends it to
the new node, whose record of it is a `MigratedParticipant` (trio_sfu.signal.media_port).

On the new node, `restore_subscriber_lines` rebuilds those m-lines (same mids, SSRCs, rewrite
state) in the new subscriber endpoint before anything subscribes, and `migrated_streams` gives
the publisher ingest the SSRCs the old node had placed: the client's packets may no longer name
their stream (libwebrtc drops MID/RID once an SSRC is acknowledged).
"""

from __future__ import annotations

from typing import Optional

import attrs

from sdp.codecs import MediaKind

from trio_sfu.log import ContextLogger
from trio_sfu.media.publishing import MigratedStreams, PublisherMedia
from trio_sfu.media.room_media import PublishedTrack
from trio_sfu.media.subscribing import SubscriberMedia
from trio_sfu.signal.media_port import MigratedParticipant
from trio_sfu.tracks.subscriber import MigratedTransceiver, SubscriberEndpoint


@attrs.define
class MigrationSync:
    """What ParticipantMedia.begin_migration gives back: the sync state's media half."""

    subscriptions: list[str]
    transceivers: list[MigratedTransceiver]
    kinds: dict[str, MediaKind]
    published: list[PublishedTrack]
    lines: list[tuple[str, MediaKind, bool]]
    next_mid: int
    publisher_streams: list[tuple[str, str, int, int, bool]]  # track id, mid, SSRC, layer, RTX


def begin_migration(subscribing: SubscriberMedia, publishing: PublisherMedia) -> MigrationSync:
    """Let the participant's subscriptions go expecting a resume and stop its subscription
    manager; the published tracks stay. Returns what the new node needs."""
    sid = subscribing.sid
    endpoint = subscribing.endpoint
    manager = subscribing.manager
    endpoint.on_detached = None  # the manager must not rebind what we let go
    for binding in list(endpoint.bindings.values()):
        if not binding.source.remove_subscriber(sid, expected_to_resume=True):
            endpoint.detach_source(binding.source, True)
    desired = [s.track_id for s in manager.subscriptions.values() if s.desired]
    entries = [e for e in endpoint.migrated_state() if e.track_id in desired]
    kinds = {}
    for e in entries:
        cached = endpoint.table.cache.peek(e.track_id)
        kinds[e.track_id] = cached.kind if cached is not None else MediaKind.AUDIO
    manager.close()
    published = [t for t in dict.fromkeys(publishing.tracks_by_mid.values())
                 if t.source is not None and t.source.is_open]
    lines = [(t.mid, t.kind, t.state.live) for t in endpoint.table.transceivers]
    streams = []
    for mid, track in publishing.tracks_by_mid.items():
        if track in published:
            media, rtx = track.receiver.ssrc_layers()
            streams += [(track.sid, mid, ssrc, layer, False) for ssrc, layer in media.items()]
            streams += [(track.sid, mid, ssrc, layer, True) for ssrc, layer in rtx.items()]
    return MigrationSync(desired, entries, kinds, published, lines, endpoint.table.next_mid, streams)


def migrated_streams(migrated: Optional[MigratedParticipant]) -> MigratedStreams:
    """Publisher SSRC -> (mid, layer, is RTX) as the old node learned them (none for a newcomer)."""
    return migrated.publisher_streams if migrated is not None else {}


def restore_subscriber_lines(endpoint: SubscriberEndpoint, migrated: MigratedParticipant, log: ContextLogger) -> None:
    """The m-lines the old node had, waiting in the transceiver cache for the subscriptions."""
    failed = endpoint.restore_migrated(migrated.transceivers, migrated.kinds, migrated.layout)
    if failed:
        log.warning("m-lines not reproduced after migration", kv={"tracks": ",".join(failed)})


__all__ = ["MigrationSync", "begin_migration", "migrated_streams", "restore_subscriber_lines"]
