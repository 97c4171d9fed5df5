"""`/metrics`: the server's state in Prometheus' text format, read when it is scraped.

`ServerCollector` is a prometheus_client collector: nothing is counted twice and nothing on the
media path knows Prometheus exists. At each scrape it reads the room registry (rooms,
participants, published tracks), the media layer's node-wide totals (trio_sfu.media.traffic:
every receiver's and down track's counters, live plus folded), the server's `Metrics` (every
drop, refusal and error counter, and the forwarding latency histogram), and the node from /proc.

Names are LiveKit's (livekit-server's pkg/telemetry/prometheus) where LiveKit exports the same
thing, so a dashboard made for LiveKit reads them:

- `livekit_room_total`, `livekit_participant_total` (gauges: on this node now);
  `livekit_track_published_total{kind}`, `livekit_track_subscribed_total{kind}` (gauges, kind
  AUDIO/VIDEO as LiveKit's TrackType names it);
- `livekit_packet_total{direction,transmission}` (RTP packets: incoming from publishers,
  outgoing to subscribers; transmission "initial" or "retransmit": RTX repairs in, NACK answers
  out); `livekit_packet_bytes{direction}` (incoming: whole RTP packets after SRTP; outgoing: RTP
  payload octets, as sender reports count them). LiveKit's name has no `_total`, and
  prometheus_client writes a counter's samples with one, so this one is exported untyped under
  LiveKit's exact name;
- `livekit_nack_total{direction}` (sequence numbers NACKed: incoming from subscribers, outgoing to
  publishers), `livekit_pli_total{direction}`, `livekit_fir_total{direction="incoming"}` (we never
  send a FIR), `livekit_packet_loss_total{direction="incoming"}` (publisher packets that never
  arrived).

Everything else is under `trio_sfu_`: each counter of `trio_sfu.metrics` as
`trio_sfu_<name>` (the peer connections' own counters, `media_transport_*`, `media_session_*`
and `data_sctp_*`, are folded in when a connection closes, so they count closed connections),
the receivers' and down tracks' counters, live ones included, as
`trio_sfu_media_receiver_<field>_total` / `trio_sfu_media_downtrack_<field>_total`, the
forwarding latency as the histogram `trio_sfu_forward_latency_seconds` (LiveKit's
`livekit_forward_latency` is a gauge of an average whose unit changed between releases; a
histogram of one packet in 64, timed from the datagram's arrival to the end of its fan-out, says
more), the agent workers (gauges `trio_sfu_agent_workers`, `trio_sfu_agent_workers_available`,
`trio_sfu_agent_jobs_running`), and the node's memory, load and CPU count. prometheus_client's process collector adds the
standard `process_*` metrics (CPU seconds, resident memory, open descriptors) from /proc.

Cardinality is bounded by construction: labels take values from fixed sets (direction,
transmission, kind, a load period, a memory state) and never name a room, participant or track.

Counters never go down: a total read from live objects can dip for a moment (see
trio_sfu.media.traffic), so each one reports the highest value it has reported before.

Access (`prometheus:` config, trio_sfu.config.PrometheusConfig): on the HTTP port `/metrics`
answers a caller that sends an API key pair as HTTP basic auth (key as user, secret as password),
the `prometheus.username`/`password` pair if configured, or a bearer token whose video grant has
`roomList` (the grant that already lets its holder list every room of the server); anyone else
gets 401. In development (`--dev`) a client on a loopback address needs no credentials, so
`curl localhost:7880/metrics` works after `make run`; `--dev` listens on loopback only unless
`--bind` says otherwise. `prometheus.enabled: false` turns the endpoint off (404). A port of
its own (`prometheus.port`) serves only `/metrics`, open unless username and password are set,
as LiveKit's metrics port is.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import os
from typing import TYPE_CHECKING, Iterable, Iterator, Mapping

import attrs
from livekit.protocol import models
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric,
                                    UnknownMetricFamily)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from trio_sfu import metrics as m
from trio_sfu.api.auth import BEARER_PREFIX, AuthError, TokenVerifier
from trio_sfu.config import ServerConfig
from trio_sfu.log import get_logger
from trio_sfu.media.traffic import MediaTraffic, folded_metric_names, media_traffic
from trio_sfu.signal.rooms import RoomRegistry

if TYPE_CHECKING:
    from trio_sfu.agents.dispatcher import AgentDispatcher
    from trio_sfu.media.service import MediaService

METRICS_PATH = "/metrics"
#: Every name and label here is a classic Prometheus name, so the text is the 0.0.4 format,
#: which every Prometheus reads (prometheus_client's newest default names 1.0.0, which older
#: servers do not know).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OWN_PREFIX = "trio_sfu_"
BASIC_PREFIX = "Basic "
_MEMINFO = "/proc/meminfo"

_log = get_logger("trio_sfu.api.prometheus")


class ServerCollector(Collector):
    """The server's metrics, read from its parts at each scrape."""

    def __init__(self, metrics: m.Metrics, registry: RoomRegistry, media: "MediaService | None",
                 agents: "AgentDispatcher | None" = None) -> None:
        self.metrics = metrics
        self.registry = registry
        self.media = media
        self.agents = agents
        self._folded = folded_metric_names()
        # (sample name, label values) -> the highest value reported: counters never go down.
        self._highest: dict[tuple[str, tuple[str, ...]], float] = {}

    def collect(self) -> Iterator[Metric]:
        yield from self._rooms()
        if self.agents is not None:
            yield from self._agents(self.agents)
        traffic = media_traffic(self.media.rooms.values(), self.metrics) if self.media is not None else None
        if traffic is not None:
            yield from self._livekit_media(traffic)
        yield from self._own_counters(traffic)
        yield self._forward_latency()
        yield from _node()

    # ---- rooms and tracks (the signal layer's view, as LiveKit counts them) ---------------

    def _rooms(self) -> Iterator[Metric]:
        rooms = list(self.registry.rooms.values())
        participants = [p for room in rooms for p in list(room.participants.values())]
        yield GaugeMetricFamily("livekit_room_total", "Rooms open on this node.", value=len(rooms))
        yield GaugeMetricFamily("livekit_participant_total", "Participants connected to this node.",
                                value=len(participants))
        published = GaugeMetricFamily("livekit_track_published_total", "Tracks published on this node, by kind.",
                                      labels=["kind"])
        kinds = {"AUDIO": 0, "VIDEO": 0}
        for participant in participants:
            for track in list(participant.tracks.values()):
                kind = models.TrackType.Name(track.type)
                if kind in kinds:
                    kinds[kind] += 1
        for kind, count in kinds.items():
            published.add_metric([kind], count)
        yield published

    @staticmethod
    def _agents(agents: "AgentDispatcher") -> Iterator[Metric]:
        workers = list(agents.workers.workers.values())
        yield GaugeMetricFamily("trio_sfu_agent_workers", "Agent workers registered on this node.", value=len(workers))
        yield GaugeMetricFamily("trio_sfu_agent_workers_available",
                                "Registered agent workers that can take a job now.",
                                value=sum(1 for w in workers if w.available))
        yield GaugeMetricFamily("trio_sfu_agent_jobs_running", "Agent jobs running on this node's workers.",
                                value=agents.jobs_running())

    # ---- media, under LiveKit's names ---------------------------------------------------------

    def _livekit_media(self, traffic: MediaTraffic) -> Iterator[Metric]:
        rx, tx = traffic.receivers, traffic.down_tracks
        subscribed = GaugeMetricFamily("livekit_track_subscribed_total",
                                       "Subscriptions forwarding on this node (down tracks), by kind.", labels=["kind"])
        for kind in ("audio", "video"):
            subscribed.add_metric([kind.upper()], traffic.subscribed.get(kind, 0))
        yield subscribed

        yield self._counter("livekit_packet_total", "RTP packets: incoming from publishers, outgoing to subscribers.",
                            ["direction", "transmission"], [
                                (("incoming", "initial"), rx["packets"] - rx["rtx_recovered"]),
                                (("incoming", "retransmit"), rx["rtx_recovered"]),
                                (("outgoing", "initial"), tx["packets_sent"]),
                                (("outgoing", "retransmit"), tx["nack_resent"]),
                            ])
        packet_bytes = UnknownMetricFamily(
            "livekit_packet_bytes",
            "RTP bytes (a counter, untyped to keep LiveKit's name): incoming whole packets after SRTP, "
            "outgoing payload octets as sender reports count them.", labels=["direction"])
        for direction, value in (("incoming", rx["bytes"]), ("outgoing", tx["octets_sent"])):
            packet_bytes.add_metric([direction], self._monotonic("livekit_packet_bytes", (direction,), value))
        yield packet_bytes
        yield self._counter("livekit_nack_total",
                            "Sequence numbers NACKed: incoming from subscribers, outgoing to publishers.",
                            ["direction"], [(("incoming",), tx["nack_requests"]),
                                            (("outgoing",), rx["nack_seqs_requested"])])
        yield self._counter("livekit_pli_total", "PLIs: incoming from subscribers, outgoing to publishers.",
                            ["direction"], [(("incoming",), tx["keyframe_requests_received"] - tx["firs_received"]),
                                            (("outgoing",), rx["keyframe_requests_sent"])])
        yield self._counter("livekit_fir_total", "FIRs from subscribers (this server asks publishers with PLIs).",
                            ["direction"], [(("incoming",), tx["firs_received"])])
        yield self._counter("livekit_packet_loss_total", "Publisher RTP packets that never reached this node.",
                            ["direction"], [(("incoming",), traffic.packets_lost)])

    # ---- our own counters ---------------------------------------------------------------------

    def _own_counters(self, traffic: MediaTraffic | None) -> Iterator[Metric]:
        totals: dict[str, int] = {name: value for name, value in self.metrics.snapshot().items()
                                  if name not in self._folded}
        if traffic is not None:
            totals.update(traffic.metric_totals())
        for name in sorted(totals):
            full = OWN_PREFIX + name
            yield self._counter(full, f"trio-sfu counter {name}.", [], [((), totals[name])])

    def _forward_latency(self) -> Metric:
        histogram = self.metrics.forward_latency
        family = HistogramMetricFamily(
            "trio_sfu_forward_latency_seconds",
            f"From a media datagram's arrival to the end of its fan-out to every subscriber "
            f"(one packet in {m.FORWARD_LATENCY_SAMPLE_EVERY} per published track).", labels=[])
        buckets = [(floatToGoString(bound), count) for bound, count in histogram.cumulative()]
        family.add_metric([], buckets, histogram.sum)
        return family

    # ---- helpers ------------------------------------------------------------------------------

    def _counter(self, name: str, documentation: str, labels: list[str],
                 values: Iterable[tuple[tuple[str, ...], int]]) -> CounterMetricFamily:
        family = CounterMetricFamily(name, documentation, labels=labels)
        for label_values, value in values:
            family.add_metric(list(label_values), self._monotonic(name, label_values, value))
        return family

    def _monotonic(self, name: str, label_values: tuple[str, ...], value: float) -> float:
        key = (name, label_values)
        highest = max(self._highest.get(key, 0.0), float(value))
        self._highest[key] = highest
        return highest


def _node() -> Iterator[Metric]:
    """The machine: load averages, memory (from /proc/meminfo where there is one), CPUs."""
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    if load is not None:
        family = GaugeMetricFamily("trio_sfu_node_load_average", "The machine's load average.", labels=["period"])
        for period, value in zip(("1m", "5m", "15m"), load):
            family.add_metric([period], value)
        yield family
    memory = _meminfo()
    if memory:
        family = GaugeMetricFamily("trio_sfu_node_memory_bytes", "The machine's memory.", labels=["state"])
        for state, value in memory.items():
            family.add_metric([state], value)
        yield family
    yield GaugeMetricFamily("trio_sfu_node_cpus", "CPUs of the machine.", value=os.cpu_count() or 0)


def _meminfo() -> dict[str, int]:
    """MemTotal and MemAvailable in bytes; empty where /proc/meminfo is unreadable."""
    wanted = {"MemTotal:": "total", "MemAvailable:": "available"}
    found: dict[str, int] = {}
    try:
        with open(_MEMINFO, encoding="ascii") as handle:
            for line in handle:
                fields = line.split()
                if len(fields) >= 2 and fields[0] in wanted and fields[1].isdigit():
                    found[wanted[fields[0]]] = int(fields[1]) * 1024  # kB
    except OSError:
        return {}
    return found


# ---- the endpoint -------------------------------------------------------------------------------


@attrs.frozen
class MetricsReply:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


_CHALLENGE = (("www-authenticate", 'Basic realm="trio-sfu metrics"'),)


class MetricsEndpoint:
    """`/metrics` for one server: who may read it, and the exposition itself."""

    def __init__(self, config: ServerConfig, verifier: TokenVerifier, metrics: m.Metrics, registry: RoomRegistry,
                 media: "MediaService | None", *, agents: "AgentDispatcher | None" = None) -> None:
        self.config = config
        self.verifier = verifier
        self.metrics = metrics
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = ServerCollector(metrics, registry, media, agents)
        self.registry.register(self.collector)
        ProcessCollector(registry=self.registry)

    def answer(self, method: str, headers: Mapping[str, str], peer_ip: str | None, *,
               own_port: bool = False) -> MetricsReply:
        """The reply to a request for `/metrics` (headers lower-cased). `own_port`: it came to
        `prometheus.port`, a listener serving nothing else, open unless `prometheus.username` and
        `password` are set (as LiveKit's metrics port is)."""
        if not self.config.prometheus.enabled:
            return MetricsReply(404, b"not found\n")
        if method not in ("GET", "HEAD"):
            return MetricsReply(405, b"method not allowed\n", headers=(("allow", "GET, HEAD"),))
        refusal = self.refusal(headers, peer_ip, own_port=own_port)
        if refusal is not None:
            self.metrics.inc(m.AUTH_FAILED)
            _log.info("metrics request refused", kv={"status": refusal.status, "reason": refusal.reason})
            return MetricsReply(refusal.status, refusal.reason.encode() + b"\n",
                                headers=_CHALLENGE if refusal.status == 401 else ())
        return MetricsReply(200, generate_latest(self.registry), content_type=CONTENT_TYPE)

    def refusal(self, headers: Mapping[str, str], peer_ip: str | None, *, own_port: bool = False) -> AuthError | None:
        """None if the caller may read the metrics, else why not (401: who are you; 403: not you)."""
        prometheus = self.config.prometheus
        authorization = headers.get("authorization", "")
        if own_port and not prometheus.username:
            return None
        if not authorization:
            if not own_port and self.config.development and _is_loopback(peer_ip):
                return None
            return AuthError(401, "metrics need credentials: an API key pair as basic auth, or a token with roomList")
        if authorization.startswith(BASIC_PREFIX):
            pair = _basic_pair(authorization[len(BASIC_PREFIX):])
            if pair is None:
                return AuthError(401, "malformed basic credentials")
            user, password = pair
            if prometheus.username and _same(user, prometheus.username) and _same(password, prometheus.password):
                return None
            if not own_port:
                secret = self.config.keys.get(user)
                if secret is not None and _same(password, secret):
                    return None
            return AuthError(401, "invalid credentials")
        if authorization.startswith(BEARER_PREFIX) and not own_port:
            try:
                grants = self.verifier.verify(authorization[len(BEARER_PREFIX):].strip())
            except AuthError as exc:
                return exc
            if grants.video is None or not grants.video.room_list:
                return AuthError(403, "the token lacks the roomList grant metrics need")
            return None
        return AuthError(401, "metrics need basic auth or a bearer token")


def _basic_pair(encoded: str) -> tuple[str, str] | None:
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    user, colon, password = decoded.partition(":")
    return (user, password) if colon else None


def _same(given: str, expected: str) -> bool:
    """A constant-time comparison: how long a refusal takes says nothing about the secret."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def _is_loopback(ip: str | None) -> bool:
    if not ip:
        return False
    try:
        return ipaddress.ip_address(ip.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


__all__ = ["METRICS_PATH", "MetricsEndpoint", "MetricsReply", "ServerCollector"]
