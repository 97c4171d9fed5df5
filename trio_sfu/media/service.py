"""The media service: one per server, the root of the media layer.

It owns the node's UDP mux (trio_sfu.media.udp_mux: one socket for every peer connection), the
DTLS certificate (one per server start), the advertised host candidate, and each room's
`RoomMedia` by room sid. It is the signal layer's `MediaSessionFactory`: each participant gets a
`ParticipantMedia` from it. The knobs tests shorten (not-found timeout, reconcile interval,
answer timeout) live here, and `relay` is the node-to-node relay when this server is one node
of several (anything implementing `RelayHooks`; the cluster layer sets it).
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Callable, Optional

import trio

from rtp.dtls import DtlsCertificate
from sdp.model import Fingerprint

from trio_sfu import metrics as m
from trio_sfu.log import get_logger
from trio_sfu.media.participant_media import ParticipantMedia
from trio_sfu.media.room_media import RelayHooks, RoomMedia
from trio_sfu.datagram import BindDatagram, UdpSocket
from trio_sfu.media.udp_mux import UdpMux, advertised_ip, host_candidate
from trio_sfu.signal.media_port import MediaContext
from trio_sfu.tracks import FifoHead, RecordedAtClosing, ResolutionPolicy, ResumeFlagPolicy, Seam, no_seam

if TYPE_CHECKING:
    from trio_sfu.config import ServerConfig

#: How long a wanted track may resolve to nothing before the client is told `SE_TRACK_NOTFOUND`.
NOT_FOUND_TIMEOUT = 60.0
#: The subscription manager's periodic reconcile (triggers make most passes sooner).
RECONCILE_INTERVAL = 3.0
#: How long a subscriber offer may wait for the client's answer; then it is offered again.
ANSWER_TIMEOUT = 15.0

_log = get_logger("trio_sfu.media")


class MediaService:
    """Per server: the UDP mux, the DTLS certificate, the advertised candidate, rooms' media."""

    def __init__(self, config: "ServerConfig", metrics: m.Metrics, *,
                 certificate: Optional[DtlsCertificate] = None) -> None:
        self.config = config
        self.metrics = metrics
        # One certificate per server start unless given; trio_sfu may read the wall clock, rtp/ may not.
        self.certificate = certificate or DtlsCertificate.generate(datetime.datetime.now(datetime.timezone.utc))
        self.fingerprints = (Fingerprint("sha-256", self.certificate.fingerprint()),)
        # Where the media socket comes from: the kernel's UDP, or an in-memory network in tests.
        self.bind_datagram: BindDatagram = UdpSocket.bind
        # The rules rooms resolve track ids by and sources fix expected-to-resume by; tests put
        # the pre-fix rules (NewestWins, ReadAtRemoval) here to show the race tests catch them.
        self.resolution: Callable[[], ResolutionPolicy] = FifoHead
        self.resume_policy: Callable[[], ResumeFlagPolicy] = RecordedAtClosing
        # Awaited at the subscription managers' interleaving points ("sub.bound", "sub.post_check");
        # a no-op that never yields unless a test orders interleavings there.
        self.seam: Seam = no_seam
        self.mux: Optional[UdpMux] = None
        self.candidates: tuple[str, ...] = ()
        self.rooms: dict[str, RoomMedia] = {}  # by room sid
        self.not_found_timeout = NOT_FOUND_TIMEOUT
        self.reconcile_interval = RECONCILE_INTERVAL
        self.answer_timeout = ANSWER_TIMEOUT
        # The node-to-node relay when this server is one of several nodes (trio_sfu.cluster.node_relay).
        self.relay: Optional[RelayHooks] = None

    def _bind_host(self) -> str:
        """The UDP bind address: the signalling bind address, unless media must reach an
        advertised `node_ip` that a loopback-only socket would never receive on."""
        hosts = self.config.effective_bind_addresses()
        host = hosts[0] if hosts else "0.0.0.0"
        if host in ("", "::"):
            return "0.0.0.0"
        node_ip = self.config.rtc.node_ip
        if host.startswith("127.") and node_ip and not node_ip.startswith("127."):
            return "0.0.0.0"
        return host

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        host = self._bind_host()
        self.mux = UdpMux.bind(host, self.config.rtc.udp_port, self.metrics, self.bind_datagram)
        ip = advertised_ip(host, self.config.rtc.node_ip)
        port = self.mux.local_address[1]
        self.candidates = (host_candidate(ip, port),)
        _log.info("media UDP listening", kv={"bind": f"{host}:{port}", "candidate": self.candidates[0]})
        await self.mux.run(task_status=task_status)

    @property
    def udp_port(self) -> int:
        assert self.mux is not None
        return self.mux.local_address[1]

    def room_by_name(self, name: str) -> Optional[RoomMedia]:
        """The media of the room called `name` (the newest, should an old one linger)."""
        found = None
        for media in self.rooms.values():
            if media.name == name:
                found = media
        return found

    def room_media(self, name: str, sid: str) -> RoomMedia:
        """The media of room `sid` (a room's sid is unique per instance), created on first use."""
        media = self.rooms.get(sid)
        if media is None:
            media = self.rooms[sid] = RoomMedia(self, name, sid)
        return media

    def participant_media(self, room_name: str, participant_sid: str) -> Optional[ParticipantMedia]:
        """The media session of participant `participant_sid` in the room called `room_name`."""
        room = self.room_by_name(room_name)
        member = room.sessions.get(participant_sid) if room is not None else None
        return member if isinstance(member, ParticipantMedia) else None

    def create_session(self, context: MediaContext) -> ParticipantMedia:
        return ParticipantMedia(self, context)

    __call__ = create_session


__all__ = ["ANSWER_TIMEOUT", "MediaService", "NOT_FOUND_TIMEOUT", "RECONCILE_INTERVAL"]
