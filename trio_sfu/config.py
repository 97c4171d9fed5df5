"""Server configuration in LiveKit's YAML shape, plus the `LIVEKIT_KEYS` key-list format.

Loading is strict about types (a wrong type is an error naming the key, because a silently
ignored `port: "abc"` is worse than a refusal) and lenient about unknown keys (a warning naming
the key, because LiveKit configs carry many options we do not implement yet).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, Mapping, Optional

import attrs
import yaml

DEFAULT_PORT = 7880
DEFAULT_TCP_PORT = 7881
DEFAULT_UDP_PORT = 7882
# LiveKit's defaults: an unused room lives 5 min, a room everyone left lives 20 s.
DEFAULT_EMPTY_TIMEOUT = 300
DEFAULT_DEPARTURE_TIMEOUT = 20
DEV_API_KEY = "devkey"
DEV_API_SECRET = "secret"
LOG_LEVELS = ("debug", "info", "warn", "warning", "error")


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the offending key."""


@attrs.define
class InterfacesConfig:
    """LiveKit's `rtc.interfaces`: which network interfaces (by name) media candidates may name;
    with `includes` only those, else all but `excludes`."""

    includes: list[str] = attrs.field(factory=list)
    excludes: list[str] = attrs.field(factory=list)


@attrs.define
class RtcConfig:
    udp_port: int = DEFAULT_UDP_PORT
    tcp_port: int = DEFAULT_TCP_PORT
    node_ip: str | None = None
    use_external_ip: bool = False
    interfaces: InterfacesConfig = attrs.field(factory=InterfacesConfig)
    # LiveKit's `rtc.enable_loopback_candidate`; None = the mode's default (on in development).
    enable_loopback_candidate: bool | None = None
    # LiveKit's `rtc.congestion_control.enabled`: each subscriber's downlink estimate drives its
    # stream allocator (layers, pauses, probes). On by default, as in LiveKit; off, every
    # subscriber gets the layers its settings ask for (the estimate is made and logged either way).
    congestion_control: bool = True
    # LiveKit's `rtc.congestion_control.allow_pause`: whether the allocator may pause a video
    # track whose lowest layer does not fit the estimate (off by default, as in LiveKit: the
    # lowest layer keeps flowing, a few frames late rather than none).
    congestion_control_allow_pause: bool = False

    def loopback_candidate(self, development: bool) -> bool:
        """Whether the media port offers a loopback candidate besides the interface addresses."""
        return development if self.enable_loopback_candidate is None else self.enable_loopback_candidate


@attrs.define
class RoomConfig:
    empty_timeout: int = DEFAULT_EMPTY_TIMEOUT
    departure_timeout: int = DEFAULT_DEPARTURE_TIMEOUT
    auto_create: bool = True
    max_participants: int = 0
    # LiveKit's `room.enable_remote_unmute`: may the Server API unmute a participant's track?
    enable_remote_unmute: bool = False


@attrs.define
class VideoConfig:
    """LiveKit's `video:` section (the part the media layer reads)."""

    # LiveKit's `video.dynacast_pause_delay` (seconds here; a Go duration such as "5s" is read
    # too): how long a lower subscribed quality waits before the publisher is told.
    dynacast_pause_delay: float = 5.0
    # Ours: false sends publishers no `subscribed_quality_update` at all (LiveKit's server has
    # the switch only internally, as ParticipantParams.DisableDynacast; its clients also decide
    # for themselves: livekit-client acts on the update only with `dynacast: true`).
    dynacast: bool = True


@attrs.define
class LimitConfig:
    """LiveKit's `limit:` section: sizes of what a participant or an API caller may set.

    Lengths and sizes are counted in UTF-8 bytes, as LiveKit (Go's `len`) counts them; 0 means
    no limit, as in LiveKit. The defaults are LiveKit's.
    """

    max_metadata_size: int = 64000
    # The sum of the lengths of every key and value of a participant's attributes.
    max_attributes_size: int = 64000
    max_room_name_length: int = 256
    max_participant_identity_length: int = 256
    max_participant_name_length: int = 256


# LiveKit's Redis timeouts are integers in milliseconds; 0 (or unset) means these defaults.
DEFAULT_REDIS_DIAL_TIMEOUT_MS = 2000
DEFAULT_REDIS_READ_TIMEOUT_MS = 3000
DEFAULT_REDIS_WRITE_TIMEOUT_MS = 3000
DEFAULT_REDIS_PORT = 6379


@attrs.define
class RedisConfig:
    """LiveKit's `redis:` section (livekit/protocol's RedisConfig), the cluster's shared state.

    `address` is "host:port" (the port defaults to 6379); `enabled` is LiveKit's
    `IsConfigured`. Sentinel and Redis Cluster keys are parsed, but refused at load time until
    the node directory supports them.
    """

    address: str = ""
    username: str = ""
    password: str = ""
    db: int = 0
    use_tls: bool = False
    sentinel_master_name: str = ""
    sentinel_username: str = ""
    sentinel_password: str = ""
    sentinel_addresses: list[str] = attrs.field(factory=list)
    cluster_addresses: list[str] = attrs.field(factory=list)
    dial_timeout: int = DEFAULT_REDIS_DIAL_TIMEOUT_MS
    read_timeout: int = DEFAULT_REDIS_READ_TIMEOUT_MS
    write_timeout: int = DEFAULT_REDIS_WRITE_TIMEOUT_MS
    # Connections the client may open at once (LiveKit's go-redis `pool_size`); 0 = no cap.
    pool_size: int = 0

    @property
    def enabled(self) -> bool:
        return bool(self.address or self.sentinel_addresses or self.cluster_addresses)

    def host_port(self) -> tuple[str, int]:
        """`address` split into host and port (a ConfigError names the key if it is malformed)."""
        return parse_host_port(self.address, "config key 'redis.address'")


def parse_host_port(text: str, name: str, default_port: int = DEFAULT_REDIS_PORT) -> tuple[str, int]:
    """ "host:port", "host", "[v6]:port" or "[v6]" → (host, port). `name` says where the text
    came from in an error ("config key 'redis.address'", "--redis-host")."""
    host, port_text = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or (end + 1 < len(text) and text[end + 1] != ":"):
            raise ConfigError(f"{name} must be host:port, got {text!r}")
        host, port_text = text[1:end], text[end + 2:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif ":" in text:
        raise ConfigError(f"{name} must be host:port (an IPv6 host in brackets), got {text!r}")
    if not host or any(c.isspace() for c in host):
        raise ConfigError(f"{name} must be host:port, got {text!r}")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ConfigError(f"{name} must be host:port with a port 1-65535, got {text!r}")
    return host, int(port_text)


# TURN's defaults: the ports LiveKit's sample config documents as its defaults (UDP 3478, TLS
# 5349), the relay range its config falls back to outside development (30000-40000), and its
# credential TTL (300 s, capped at a day) and per-participant allocation limit (12).
DEFAULT_TURN_UDP_PORT = 3478
DEFAULT_TURN_TLS_PORT = 5349
DEFAULT_TURN_RELAY_RANGE = (30000, 40000)
DEFAULT_TURN_TTL_SECONDS = 300
MAX_TURN_TTL_SECONDS = 24 * 3600
DEFAULT_TURN_ALLOCATIONS_PER_USER = 12
MAX_TURN_ALLOCATIONS = 1000  # rtp.turn.TurnLimits.max_allocations: the node's total


@attrs.define
class TurnConfig:
    """LiveKit's `turn:` section: the embedded TURN server (trio_sfu.media.turn_server).

    It relays only to this node's own media port, for clients whose UDP and TCP to it are
    blocked. `udp_port` 0 turns TURN/UDP off, `tls_port` 0 TURN/TLS; `external_tls` means a load
    balancer in front terminates TLS, so `tls_port` speaks plain TURN over TCP. `domain` is the
    host name `turns:` URLs name (the certificate's name); without it the URLs name the media
    address. Without `cert_file`/`key_file` (development) a self-signed certificate is made at
    start-up and its path logged, so a client can be told to trust it. `enabled` None: the
    mode's default (on in development, off otherwise)."""

    enabled: bool | None = None
    domain: str = ""
    udp_port: int = DEFAULT_TURN_UDP_PORT
    tls_port: int = DEFAULT_TURN_TLS_PORT
    cert_file: str = ""
    key_file: str = ""
    relay_range_start: int = DEFAULT_TURN_RELAY_RANGE[0]
    relay_range_end: int = DEFAULT_TURN_RELAY_RANGE[1]
    external_tls: bool = False
    # LiveKit's: how long a participant's credential may start allocations (its allocations then
    # live on), and how many allocations one participant may hold at once.
    ttl_seconds: int = DEFAULT_TURN_TTL_SECONDS
    per_user_relay_allocation_limit: int = DEFAULT_TURN_ALLOCATIONS_PER_USER

    def active(self, development: bool) -> bool:
        return development if self.enabled is None else self.enabled


@attrs.define
class LoggingConfig:
    level: str = "info"


@attrs.define
class NodeSelectorConfig:
    """LiveKit's `node_selector:` section, as far as placement uses it (trio_sfu.cluster.placement):
    a node whose CPU load reaches `sysload_limit` (0..1) is full."""

    sysload_limit: float = 0.9


@attrs.define
class ClusterConfig:
    """The `cluster:` section: how this node links to the other nodes of a cluster.

    `key` is the shared secret every node of the cluster holds; it authenticates the relay links
    (HMAC challenge-response, trio_sfu.cluster.tcp_link) but does not encrypt them. `relay_port`
    is the TCP port the node's relay listens on (0: any free port). Without a key, a node of a
    cluster derives one from its API keys (every node of a cluster holds the same ones, and
    whoever holds them is an administrator anyway): `cluster_key()`. `heartbeat_interval` is how
    often the node refreshes its directory entry (seconds); an entry three intervals old is dead.
    """

    key: str = ""
    relay_port: int = 0
    heartbeat_interval: float = 2.0


@attrs.define
class PrometheusConfig:
    """The `prometheus:` section: the `/metrics` endpoint (trio_sfu.api.prometheus).

    `enabled` serves `/metrics` on the HTTP port, to a caller holding an API key pair (HTTP basic
    auth: key as the user, secret as the password) or a token with the `roomList` grant — or, in
    development, to anyone on loopback. `port` (LiveKit's `prometheus.port`, or its older
    top-level `prometheus_port`) also serves it on a port of its own, open as LiveKit's is
    unless `username` and `password` are set, which it then requires as basic auth (the HTTP
    port accepts that pair too).
    """

    enabled: bool = True
    port: int = 0
    username: str = ""
    password: str = ""


@attrs.define
class AudioConfig:
    """LiveKit's `audio` section: what counts as speaking (trio_sfu.media.speakers)."""

    active_level: int = 35  # -dBov (0 loudest .. 127 silence); this loud or louder is speech
    min_percentile: int = 40  # % of an update interval that must be speech
    update_interval: int = 400  # ms: the audio per level window, and between speaker updates
    smooth_intervals: int = 2  # windows the level is averaged over (0: none)


@attrs.define
class ServerConfig:
    port: int = DEFAULT_PORT
    # Empty = the mode's default: loopback in development (as LiveKit's --dev), else all interfaces.
    bind_addresses: list[str] = attrs.field(factory=list)
    rtc: RtcConfig = attrs.field(factory=RtcConfig)
    keys: dict[str, str] = attrs.field(factory=dict)
    room: RoomConfig = attrs.field(factory=RoomConfig)
    audio: AudioConfig = attrs.field(factory=AudioConfig)
    limit: LimitConfig = attrs.field(factory=LimitConfig)
    video: VideoConfig = attrs.field(factory=VideoConfig)
    logging: LoggingConfig = attrs.field(factory=LoggingConfig)
    cluster: ClusterConfig = attrs.field(factory=ClusterConfig)
    # Accepted and kept for the webhook module (api.webhooks reads it); not interpreted here.
    webhook: dict[str, Any] | None = None
    redis: RedisConfig = attrs.field(factory=RedisConfig)
    node_selector: NodeSelectorConfig = attrs.field(factory=NodeSelectorConfig)
    prometheus: PrometheusConfig = attrs.field(factory=PrometheusConfig)
    turn: TurnConfig = attrs.field(factory=TurnConfig)
    region: str = ""
    development: bool = False

    def cluster_key(self) -> str:
        """The relay links' shared key: `cluster.key`, else one derived from the API keys."""
        if self.cluster.key:
            return self.cluster.key
        material = "\n".join(f"{k}:{v}" for k, v in sorted(self.keys.items()))
        return hmac.new(b"trio-sfu cluster key", material.encode(), hashlib.sha256).hexdigest()

    def turn_secret(self) -> bytes:
        """What TURN credentials are derived from (rtp.turn_auth): the API keys, so every node
        of a cluster issues and accepts the same ones and nobody without a secret can mint one."""
        material = "\n".join(f"{k}:{v}" for k, v in sorted(self.keys.items()))
        return hmac.new(b"trio-sfu turn credentials", material.encode(), hashlib.sha256).digest()

    def effective_bind_addresses(self) -> list[str]:
        if self.bind_addresses:
            return list(self.bind_addresses)
        return ["127.0.0.1"] if self.development else ["0.0.0.0"]


# Each known key: (expected python types, human type name). Sections are nested dicts.
_INT = ((int,), "an integer")
_STR = ((str,), "a string")
_BOOL = ((bool,), "a boolean")
_MAP = ((dict,), "a mapping")
_LIST = ((list,), "a list")
_ANY = ((object,), "anything")

def _duration(value: Any, key: str) -> float:
    """Seconds from a number or a Go-style duration string ("500ms", "5s", "1m")."""
    seconds: Optional[float] = None
    if isinstance(value, str):
        text = value.strip()
        for suffix, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0)):
            if text.endswith(suffix):
                try:
                    seconds = float(text[: -len(suffix)]) * scale
                except ValueError:
                    pass
                break
        if seconds is None:
            raise ConfigError(f"config key '{key}' must be a duration such as \"5s\", not {value!r}")
    elif not isinstance(value, bool):
        seconds = float(value)
    if seconds is None or not 0 <= seconds <= 3600:
        raise ConfigError(f"config key '{key}' must be between 0 and 3600 seconds")
    return seconds


_SCHEMA: dict[str, Any] = {
    "port": _INT,
    "bind_addresses": _LIST,
    "development": _BOOL,
    "keys": _MAP,
    "key_file": _STR,
    "region": _STR,
    "node_selector": {
        "kind": _STR,
        "sort_by": _STR,
        "sysload_limit": ((int, float), "a number"),
        "regions": _LIST,
    },
    "webhook": _MAP,
    "prometheus_port": _INT,
    "prometheus": {
        "enabled": _BOOL,
        "port": _INT,
        "username": _STR,
        "password": _STR,
    },
    "redis": {
        "address": _STR,
        "username": _STR,
        "password": _STR,
        "db": _INT,
        "use_tls": _BOOL,
        "sentinel_master_name": _STR,
        "sentinel_username": _STR,
        "sentinel_password": _STR,
        "sentinel_addresses": _LIST,
        "cluster_addresses": _LIST,
        "dial_timeout": _INT,
        "read_timeout": _INT,
        "write_timeout": _INT,
        "pool_size": _INT,
        # Redis Cluster only (refused below until supported).
        "max_redirects": _INT,
    },
    "rtc": {
        "udp_port": _INT,
        "tcp_port": _INT,
        "node_ip": _STR,
        "use_external_ip": _BOOL,
        "interfaces": {
            "includes": _LIST,
            "excludes": _LIST,
        },
        "enable_loopback_candidate": _BOOL,
        "congestion_control": {
            "enabled": _BOOL,
            "allow_pause": _BOOL,
        },
        # Accepted without effect until the media layer reads them.
        "port_range_start": _INT,
        "port_range_end": _INT,
        "use_ice_lite": _BOOL,
        "stun_servers": _LIST,
        "turn_servers": _LIST,
    },
    "room": {
        "empty_timeout": _INT,
        "departure_timeout": _INT,
        "auto_create": _BOOL,
        "max_participants": _INT,
        "enabled_codecs": _LIST,
        # LiveKit's older names for three `limit` keys; when set they win, as in LiveKit.
        "max_metadata_size": _INT,
        "max_room_name_length": _INT,
        "max_participant_identity_length": _INT,
        "enable_remote_unmute": _BOOL,
    },
    "audio": {
        "active_level": _INT,
        "min_percentile": _INT,
        "update_interval": _INT,
        "smooth_intervals": _INT,
    },
    "video": {
        "dynacast_pause_delay": ((int, float, str), "a duration (seconds, or like \"5s\")"),
        "dynacast": _BOOL,
    },
    "limit": {
        "max_metadata_size": _INT,
        "max_attributes_size": _INT,
        "max_room_name_length": _INT,
        "max_participant_identity_length": _INT,
        "max_participant_name_length": _INT,
        # Accepted without effect (LiveKit's node-wide track and bandwidth budgets).
        "num_tracks": _INT,
        "bytes_per_sec": ((int, float), "a number"),
        "subscription_limit_video": _INT,
        "subscription_limit_audio": _INT,
    },
    "cluster": {
        "key": _STR,
        "relay_port": _INT,
        "heartbeat_interval": ((int, float), "a number"),
    },
    "turn": {
        "enabled": _BOOL,
        "domain": _STR,
        "udp_port": _INT,
        "tls_port": _INT,
        "cert_file": _STR,
        "key_file": _STR,
        "relay_range_start": _INT,
        "relay_range_end": _INT,
        "external_tls": _BOOL,
        "ttl_seconds": _INT,
        "per_user_relay_allocation_limit": _INT,
    },
    "logging": {
        "level": _STR,
        "json": _BOOL,
        "pion_level": _STR,
        "sample": _BOOL,
    },
}


#: The `audio` keys' allowed values (update_interval in ms: at least one 20 ms audio frame).
_AUDIO_RANGES = {"active_level": (0, 127), "min_percentile": (0, 100), "update_interval": (20, 60_000),
                 "smooth_intervals": (0, 1000)}


def _check(value: Any, spec: tuple[tuple[type, ...], str], key: str) -> None:
    types, name = spec
    # bool is an int subclass; `port: true` must not pass as an integer.
    if isinstance(value, bool) and bool not in types and object not in types:
        raise ConfigError(f"config key '{key}' must be {name}, got bool")
    if not isinstance(value, types):
        raise ConfigError(f"config key '{key}' must be {name}, got {type(value).__name__}")


def _walk(data: Mapping[Any, Any], schema: Mapping[str, Any], prefix: str, warnings: list[str]) -> None:
    for raw_key, value in data.items():
        key = f"{prefix}{raw_key}"
        spec = schema.get(raw_key) if isinstance(raw_key, str) else None
        if spec is None:
            warnings.append(f"unknown config key '{key}' ignored")
            continue
        if isinstance(spec, dict):
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{key}' must be a mapping, got {type(value).__name__}")
            _walk(value, spec, key + ".", warnings)
        elif value is not None:
            _check(value, spec, key)


def _port(value: int, key: str) -> int:
    if not 0 <= value <= 65535:
        raise ConfigError(f"config key '{key}' must be a port number 0-65535, got {value}")
    return value


def _non_negative(value: int, key: str) -> int:
    if value < 0:
        raise ConfigError(f"config key '{key}' must not be negative")
    return value


def parse_keys(text: str, source: str = "keys") -> dict[str, str]:
    """Parse LiveKit's key list: YAML `key: secret` pairs, one per line."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not 'key: secret' pairs ({exc.__class__.__name__})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected 'key: secret' pairs")
    return _keys_from_mapping(data, source)


def _keys_from_mapping(data: Mapping[Any, Any], source: str) -> dict[str, str]:
    keys: dict[str, str] = {}
    for key, secret in data.items():
        if not isinstance(key, str) or not isinstance(secret, str) or not key or not secret:
            raise ConfigError(f"{source}: every API key and secret must be a non-empty string")
        keys[key] = secret
    return keys


def config_from_mapping(data: Any) -> tuple[ServerConfig, list[str]]:
    """Build a ServerConfig from parsed YAML; return it with warnings about unknown keys."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("config file must be a mapping at the top level")
    warnings: list[str] = []
    _walk(data, _SCHEMA, "", warnings)

    config = ServerConfig()
    if data.get("port") is not None:
        config.port = _port(data["port"], "port")
    if data.get("bind_addresses") is not None:
        addresses = data["bind_addresses"]
        if not all(isinstance(a, str) for a in addresses):
            raise ConfigError("config key 'bind_addresses' must be a list of strings")
        # LiveKit writes "" for "all interfaces".
        config.bind_addresses = [a or "0.0.0.0" for a in addresses]
    if data.get("development") is not None:
        config.development = data["development"]
    if data.get("keys") is not None:
        config.keys = _keys_from_mapping(data["keys"], "config key 'keys'")
    if data.get("webhook") is not None:
        config.webhook = dict(data["webhook"])
    config.redis = _redis_config(data.get("redis") or {})
    if data.get("region") is not None:
        config.region = data["region"]
    selector = data.get("node_selector") or {}
    if selector.get("sysload_limit") is not None:
        limit_value = float(selector["sysload_limit"])
        if not 0 < limit_value <= 1:
            raise ConfigError("config key 'node_selector.sysload_limit' must be in (0, 1]")
        config.node_selector.sysload_limit = limit_value

    rtc = data.get("rtc") or {}
    if rtc.get("udp_port") is not None:
        config.rtc.udp_port = _port(rtc["udp_port"], "rtc.udp_port")
    if rtc.get("tcp_port") is not None:
        config.rtc.tcp_port = _port(rtc["tcp_port"], "rtc.tcp_port")
    if rtc.get("node_ip") is not None:
        config.rtc.node_ip = rtc["node_ip"]
    if rtc.get("use_external_ip") is not None:
        config.rtc.use_external_ip = rtc["use_external_ip"]
    if rtc.get("enable_loopback_candidate") is not None:
        config.rtc.enable_loopback_candidate = rtc["enable_loopback_candidate"]
    congestion_control = rtc.get("congestion_control") or {}
    if congestion_control.get("enabled") is not None:
        config.rtc.congestion_control = congestion_control["enabled"]
    if congestion_control.get("allow_pause") is not None:
        config.rtc.congestion_control_allow_pause = congestion_control["allow_pause"]
    interfaces = rtc.get("interfaces") or {}
    for name in ("includes", "excludes"):
        names = interfaces.get(name)
        if names is None:
            continue
        if not all(isinstance(n, str) and n for n in names):
            raise ConfigError(f"config key 'rtc.interfaces.{name}' must be a list of interface names")
        setattr(config.rtc.interfaces, name, list(names))

    room = data.get("room") or {}
    for name in ("empty_timeout", "departure_timeout", "max_participants"):
        if room.get(name) is not None:
            if room[name] < 0:
                raise ConfigError(f"config key 'room.{name}' must not be negative")
            setattr(config.room, name, room[name])
    if room.get("auto_create") is not None:
        config.room.auto_create = room["auto_create"]
    if room.get("enable_remote_unmute") is not None:
        config.room.enable_remote_unmute = room["enable_remote_unmute"]

    audio = data.get("audio") or {}
    for name, (low, high) in _AUDIO_RANGES.items():
        if audio.get(name) is not None:
            if not low <= audio[name] <= high:
                raise ConfigError(f"config key 'audio.{name}' must be between {low} and {high}")
            setattr(config.audio, name, audio[name])

    video = data.get("video") or {}
    if video.get("dynacast_pause_delay") is not None:
        config.video.dynacast_pause_delay = _duration(video["dynacast_pause_delay"], "video.dynacast_pause_delay")
    if video.get("dynacast") is not None:
        config.video.dynacast = video["dynacast"]

    limit = data.get("limit") or {}
    for name in attrs.fields_dict(LimitConfig):
        if limit.get(name) is not None:
            setattr(config.limit, name, _non_negative(limit[name], f"limit.{name}"))
    for name in ("max_metadata_size", "max_room_name_length", "max_participant_identity_length"):
        # LiveKit copies these legacy `room` keys over the `limit` ones when they are non-zero.
        if room.get(name):
            setattr(config.limit, name, _non_negative(room[name], f"room.{name}"))

    cluster = data.get("cluster") or {}
    if cluster.get("key") is not None:
        config.cluster.key = cluster["key"]
    if cluster.get("relay_port") is not None:
        config.cluster.relay_port = _port(cluster["relay_port"], "cluster.relay_port")
    if cluster.get("heartbeat_interval") is not None:
        interval = float(cluster["heartbeat_interval"])
        if not 0.05 <= interval <= 60:
            raise ConfigError("config key 'cluster.heartbeat_interval' must be between 0.05 and 60 seconds")
        config.cluster.heartbeat_interval = interval

    config.prometheus = _prometheus_config(data.get("prometheus") or {}, data.get("prometheus_port"))
    config.turn = _turn_config(data.get("turn") or {})

    log = data.get("logging") or {}
    if log.get("level") is not None:
        if log["level"].lower() not in LOG_LEVELS:
            raise ConfigError(f"config key 'logging.level' must be one of {', '.join(LOG_LEVELS)}")
        config.logging.level = log["level"].lower()
    return config, warnings


def _prometheus_config(section: Mapping[str, Any], legacy_port: int | None) -> PrometheusConfig:
    """The `prometheus:` section (and LiveKit's older `prometheus_port`), already type-checked."""
    prometheus = PrometheusConfig()
    if section.get("enabled") is not None:
        prometheus.enabled = section["enabled"]
    if legacy_port is not None:
        prometheus.port = _port(legacy_port, "prometheus_port")
    if section.get("port") is not None:
        # LiveKit: the section's port wins over the deprecated top-level key.
        prometheus.port = _port(section["port"], "prometheus.port")
    for name in ("username", "password"):
        if section.get(name) is not None:
            setattr(prometheus, name, section[name])
    if bool(prometheus.username) != bool(prometheus.password):
        raise ConfigError("config keys 'prometheus.username' and 'prometheus.password' go together: set both or neither")
    return prometheus


def _turn_config(section: Mapping[str, Any]) -> TurnConfig:
    """The `turn:` section, already type-checked by `_walk`; values checked here."""
    turn = TurnConfig()
    for name in ("enabled", "domain", "cert_file", "key_file", "external_tls"):
        if section.get(name) is not None:
            setattr(turn, name, section[name])
    for name in ("udp_port", "tls_port", "relay_range_start", "relay_range_end"):
        if section.get(name) is not None:
            setattr(turn, name, _port(section[name], f"turn.{name}"))
    if (turn.relay_range_start == 0) != (turn.relay_range_end == 0) or turn.relay_range_start > turn.relay_range_end:
        raise ConfigError("config keys 'turn.relay_range_start' and 'turn.relay_range_end' must be a range "
                          "(start <= end), or both 0 for any free port")
    if section.get("ttl_seconds") is not None:
        # LiveKit: a non-positive TTL means the default, a large one is capped.
        ttl = section["ttl_seconds"]
        turn.ttl_seconds = DEFAULT_TURN_TTL_SECONDS if ttl <= 0 else min(ttl, MAX_TURN_TTL_SECONDS)
    if section.get("per_user_relay_allocation_limit") is not None:
        # LiveKit: 0 or less turns the per-participant quota off (the totals still hold).
        limit = section["per_user_relay_allocation_limit"]
        turn.per_user_relay_allocation_limit = limit if limit > 0 else MAX_TURN_ALLOCATIONS
    if bool(turn.cert_file) != bool(turn.key_file):
        raise ConfigError("config keys 'turn.cert_file' and 'turn.key_file' go together: set both or neither")
    if turn.enabled and not turn.udp_port and not turn.tls_port:
        raise ConfigError("config key 'turn.enabled' needs 'turn.udp_port' or 'turn.tls_port'")
    return turn


def _redis_config(section: Mapping[str, Any]) -> RedisConfig:
    """The `redis:` section, already type-checked by `_walk`; values checked here."""
    redis = RedisConfig()
    for name in ("address", "username", "password", "use_tls", "sentinel_master_name",
                 "sentinel_username", "sentinel_password"):
        if section.get(name) is not None:
            setattr(redis, name, section[name])
    for name in ("sentinel_addresses", "cluster_addresses"):
        addresses = section.get(name)
        if addresses is None:
            continue
        if not all(isinstance(a, str) and a for a in addresses):
            raise ConfigError(f"config key 'redis.{name}' must be a list of host:port strings")
        for address in addresses:
            parse_host_port(address, f"config key 'redis.{name}'")
        setattr(redis, name, list(addresses))
    if section.get("db") is not None:
        redis.db = _non_negative(section["db"], "redis.db")
    if section.get("pool_size") is not None:
        redis.pool_size = _non_negative(section["pool_size"], "redis.pool_size")
    for name in ("dial_timeout", "read_timeout", "write_timeout"):
        # LiveKit: milliseconds, 0 = the default.
        if section.get(name):
            setattr(redis, name, _non_negative(section[name], f"redis.{name}"))
    if redis.address:
        redis.host_port()
    # The node directory speaks to one Redis server; Sentinel and Cluster would need failover
    # and key-slot handling it does not have. Refused rather than silently used as a plain
    # server (or ignored, leaving the node alone while its operator believes it clustered).
    if redis.sentinel_addresses or redis.sentinel_master_name:
        key = "sentinel_addresses" if redis.sentinel_addresses else "sentinel_master_name"
        raise ConfigError(f"config key 'redis.{key}': Redis Sentinel is not supported yet (use 'redis.address')")
    if redis.cluster_addresses or section.get("max_redirects") is not None:
        key = "cluster_addresses" if redis.cluster_addresses else "max_redirects"
        raise ConfigError(f"config key 'redis.{key}': Redis Cluster is not supported yet (use 'redis.address')")
    return redis


def load_config_file(path: str) -> tuple[ServerConfig, list[str]]:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    return config_from_mapping(data)
