"""The media service: one per server, the root of the media layer.

It owns the node's UDP mux (trio_sfu.media.udp_mux: one port for every peer connection), the
DTLS certificate (one per server start), the advertised host candidates, and each room's
`RoomMedia` by room sid. It is the signal layer's `MediaSessionFactory`: each participant gets a
`ParticipantMedia` from it. The knobs tests shorten (not-found timeout, reconcile interval,
answer timeout) live here, and `relay` is the node-to-node relay when this server is one node
of several (anything implementing `RelayHooks`; the cluster layer sets it).

Which addresses the media port listens on and names in its candidates (`media_addresses`):
`rtc.node_ip` (`--node-ip`) when given, only that one; else a specific bind address when one
was configured, that one; else, as LiveKit, every usable interface address
(trio_sfu.media.interfaces, filtered by `rtc.interfaces`), plus loopback when
`rtc.enable_loopback_candidate` (on by default in development) — so `trio-sfu --dev` is
reached by a browser or SDK on the same machine or the LAN with no flags, while its signal
port stays on 127.0.0.1.
"""

from __future__ import annotations

import datetime
import ipaddress
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import attrs

import trio

from rtp.dtls import DtlsCertificate
from sdp.model import Fingerprint

from trio_sfu import metrics as m
from trio_sfu.log import get_logger
from trio_sfu.media.participant_media import ParticipantMedia
from trio_sfu.media.speakers import AudioLevelConfig
from trio_sfu.media.transport import TransportEndpoint
from trio_sfu.media.room_media import RelayHooks, RoomMedia
from trio_sfu.datagram import BindDatagram, UdpSocket
from trio_sfu.media.ice_tcp import IceTcpLimits, IceTcpListener, TcpEndpoint, bind_listeners, passive_candidate
from trio_sfu.media.interfaces import InterfaceAddress, interface_addresses, usable_addresses
from trio_sfu.media.udp_mux import UdpMux, discover_node_ip, host_candidate
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
#: Candidate local preferences (RFC 8445 §5.1.2.2): interface addresses from the top down,
#: loopback below every one of them (a client that can use a real address should).
REAL_PREFERENCE = 65535
LOOPBACK_PREFERENCE = 1000
#: The same for passive TCP candidates, in RFC 6544's 13-bit "other preference" (below
#: LOOPBACK_PREFERENCE for loopback, whose direction preference is 0: see tcp_candidates_for).
TCP_REAL_PREFERENCE = 8191
TCP_LOOPBACK_PREFERENCE = 100
_WILDCARDS = ("0.0.0.0", "::", "")

_log = get_logger("trio_sfu.media")


class MediaService:
    """Per server: the UDP mux, the DTLS certificate, the advertised candidates, rooms' media."""

    def __init__(self, config: "ServerConfig", metrics: m.Metrics, *,
                 certificate: Optional[DtlsCertificate] = None) -> None:
        self.config = config
        self.metrics = metrics
        # One certificate per server start unless given; trio_sfu may read the wall clock, rtp/ may not.
        self.certificate = certificate or DtlsCertificate.generate(datetime.datetime.now(datetime.timezone.utc))
        self.fingerprints = (Fingerprint("sha-256", self.certificate.fingerprint()),)
        # What counts as speaking in every room (the config's `audio` section).
        self.audio_levels = AudioLevelConfig.from_config(config.audio)
        # Where the media socket comes from: the kernel's UDP, or an in-memory network in tests.
        self.bind_datagram: BindDatagram = UdpSocket.bind
        # The rules rooms resolve track ids by and sources fix expected-to-resume by; tests put
        # the pre-fix rules (NewestWins, ReadAtRemoval) here to show the race tests catch them.
        self.resolution: Callable[[], ResolutionPolicy] = FifoHead
        self.resume_policy: Callable[[], ResumeFlagPolicy] = RecordedAtClosing
        # Awaited at the subscription managers' interleaving points ("sub.bound", "sub.post_check");
        # a no-op that never yields unless a test orders interleavings there.
        self.seam: Seam = no_seam
        # Where the interface addresses come from: the OS, or a test's list.
        self.list_interfaces: Callable[[], list[InterfaceAddress]] = interface_addresses
        self.default_route_address: Callable[[], str] = discover_node_ip
        self.mux: Optional[UdpMux] = None
        # ICE over TCP (trio_sfu.media.ice_tcp) on `rtc.tcp_port`, 0 there turning it off as in
        # LiveKit. `ice_tcp_port` overrides that port: tests set 0 here for one the kernel picks.
        self.ice_tcp_port: Optional[int] = None
        self.ice_tcp_limits = IceTcpLimits()
        self.ice_tcp: Optional[IceTcpListener] = None
        self.candidates: tuple[str, ...] = ()
        # (address, port) of each candidate, highest priority first: where clients reach media.
        self.reachable: tuple[tuple[str, int], ...] = ()
        self.rooms: dict[str, RoomMedia] = {}  # by room sid
        self.not_found_timeout = NOT_FOUND_TIMEOUT
        self.reconcile_interval = RECONCILE_INTERVAL
        self.answer_timeout = ANSWER_TIMEOUT
        # The node-to-node relay when this server is one of several nodes (trio_sfu.cluster.node_relay).
        self.relay: Optional[RelayHooks] = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        plan = media_addresses(self.config, self.list_interfaces, self.default_route_address)
        self.mux = UdpMux.bind_all(plan.bind, self.config.rtc.udp_port, self.metrics, self.bind_datagram)
        port = self.mux.local_address[1]
        # Interface mode names what it could bind (an address that vanished was skipped).
        bound = [host for host, _ in self.mux.local_addresses]
        advertised = plan.advertise or tuple(bound)
        self.reachable = tuple((ip, port) for ip in advertised)
        candidates = candidates_for(advertised, port)
        _log.info("media UDP listening", kv={"bind": ", ".join(format_address(h, port) for h in bound),
                                             "reachable": ", ".join(format_address(ip, port) for ip in advertised)})
        tcp_port = self.config.rtc.tcp_port if self.ice_tcp_port is None else self.ice_tcp_port
        if self.ice_tcp_port is not None or tcp_port:
            try:
                # Where the UDP sockets are (a TCP reply leaves on its connection, but a
                # candidate must name an address that accepts).
                listeners = await bind_listeners(bound, tcp_port)
            except BaseException:
                for sock in self.mux.sockets:
                    sock.close()
                raise
            self.ice_tcp = IceTcpListener(listeners, self._endpoint_by_ufrag, self.metrics, self.ice_tcp_limits)
            tcp_port = self.ice_tcp.port
            tcp_bound = [host for host, _ in self.ice_tcp.local_addresses]
            tcp_advertised = plan.advertise or tuple(tcp_bound)
            candidates += tcp_candidates_for(tcp_advertised, tcp_port, first_foundation=len(candidates) + 1)
            _log.info("media ICE/TCP listening", kv={
                "bind": ", ".join(format_address(h, tcp_port) for h in tcp_bound),
                "reachable": ", ".join(format_address(ip, tcp_port) for ip in tcp_advertised)})
        self.candidates = candidates
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.mux.run)
                if self.ice_tcp is not None:
                    await nursery.start(self.ice_tcp.run)
                task_status.started()
        finally:
            if self.ice_tcp is not None:
                # Its run closes them; this is for a cancel that came before it started.
                for listener in self.ice_tcp.listeners:
                    listener.socket.close()

    def _endpoint_by_ufrag(self, ufrag: str) -> Optional[TcpEndpoint]:
        """The transport an ICE-TCP connection's first check names: the one the UDP mux has
        registered under that local ufrag (one registry for both paths)."""
        mux = self.mux
        endpoint = mux.by_ufrag.get(ufrag) if mux is not None else None
        return endpoint if isinstance(endpoint, TransportEndpoint) else None

    @property
    def tcp_port(self) -> Optional[int]:
        """The ICE-TCP port, None when ICE-TCP is off."""
        return self.ice_tcp.port if self.ice_tcp is not None else None

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

    @property
    def congestion_control(self) -> bool:
        """Whether subscribers' downlink estimates drive their stream allocators."""
        return self.config.rtc.congestion_control

    @property
    def allow_pause(self) -> bool:
        """Whether a subscriber's allocator may pause a track whose lowest layer does not fit."""
        return self.config.rtc.congestion_control_allow_pause

    @property
    def dynacast_pause_delay(self) -> Optional[float]:
        video = self.config.video
        return video.dynacast_pause_delay if video.dynacast else None

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


@attrs.frozen
class MediaAddresses:
    """Where the media port listens (one socket per address, one port) and which addresses its
    candidates name; `advertise` empty: each address it could bind."""

    bind: tuple[str, ...]
    advertise: tuple[str, ...] = ()


def media_addresses(config: "ServerConfig", list_interfaces: Callable[[], list[InterfaceAddress]] = interface_addresses,
                    default_route_address: Callable[[], str] = discover_node_ip) -> MediaAddresses:
    """The module's doc says the rule; a config that leaves no usable address is an OSError
    naming what was found (the command line reports it like a port in use)."""
    rtc = config.rtc
    hosts = config.effective_bind_addresses()
    host = hosts[0] if hosts else "0.0.0.0"
    if rtc.node_ip:
        # Only the address given, as before: bound where the signal port is, unless that is
        # loopback and the address is not (a loopback socket would never receive on it).
        if host in _WILDCARDS or (host.startswith("127.") and not rtc.node_ip.startswith("127.")):
            host = "0.0.0.0"
        return MediaAddresses(bind=(host,), advertise=(rtc.node_ip,))
    if config.bind_addresses and host not in _WILDCARDS:
        return MediaAddresses(bind=(host,), advertise=(host,))
    try:
        found = list_interfaces()
    except OSError as exc:
        _log.warning("cannot list interface addresses; media on the default route's", kv={"error": str(exc)})
        return MediaAddresses(bind=(default_route_address(),))
    preferred = default_route_address()
    usable = usable_addresses(found, include_loopback=rtc.loopback_candidate(config.development),
                              includes=rtc.interfaces.includes, excludes=rtc.interfaces.excludes,
                              preferred=preferred)
    if not usable:
        listed = ", ".join(f"{a.interface} {a.address}" for a in found) or "none"
        raise OSError(f"no usable media address (rtc.interfaces includes={rtc.interfaces.includes} "
                      f"excludes={rtc.interfaces.excludes}; interface addresses: {listed})")
    return MediaAddresses(bind=tuple(a.address for a in usable))


def candidates_for(addresses: Sequence[str], port: int) -> tuple[str, ...]:
    """Host candidates for `addresses` (highest priority first), loopback ones below the rest
    (a lone address keeps the top preference, loopback or not)."""
    loopback = [ipaddress.ip_address(ip).is_loopback for ip in addresses]
    demote = not all(loopback)
    out = []
    real = loop = 0
    for index, ip in enumerate(addresses):
        if demote and loopback[index]:
            preference, loop = LOOPBACK_PREFERENCE - loop, loop + 1
        else:
            preference, real = REAL_PREFERENCE - real, real + 1
        out.append(host_candidate(ip, port, foundation=str(index + 1), local_preference=preference))
    return tuple(out)


def tcp_candidates_for(addresses: Sequence[str], port: int, first_foundation: int = 1) -> tuple[str, ...]:
    """Passive TCP host candidates for `addresses`, in the order `candidates_for` gives the
    UDP ones (loopback demoted the same way), each below the UDP candidate of its address and
    every UDP candidate of a real address (trio_sfu.media.ice_tcp.passive_candidate);
    foundations from `first_foundation` (a TCP candidate never shares one with a UDP one)."""
    loopback = [ipaddress.ip_address(ip).is_loopback for ip in addresses]
    demote = not all(loopback)
    real = [ip for ip, is_loop in zip(addresses, loopback) if not (demote and is_loop)]
    loop = [ip for ip, is_loop in zip(addresses, loopback) if demote and is_loop]
    # (direction preference, other preference): a demoted loopback address gets direction 0,
    # which keeps it below the UDP loopback candidate, as every other TCP candidate is below
    # the UDP one of its address.
    preference = {ip: (4, TCP_REAL_PREFERENCE - index) for index, ip in enumerate(real)}
    preference.update({ip: (0, TCP_LOOPBACK_PREFERENCE - index) for index, ip in enumerate(loop)})
    return tuple(passive_candidate(ip, port, foundation=str(first_foundation + index),
                                   direction_preference=preference[ip][0], other_preference=preference[ip][1])
                 for index, ip in enumerate(addresses))


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


__all__ = ["ANSWER_TIMEOUT", "MediaAddresses", "MediaService", "NOT_FOUND_TIMEOUT", "RECONCILE_INTERVAL",
           "candidates_for", "format_address", "media_addresses", "tcp_candidates_for"]
