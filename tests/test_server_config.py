"""Config: LiveKit-shaped YAML, key lists, and CLI precedence."""

from __future__ import annotations

import pathlib

import attrs
import pytest

from trio_sfu.cli import build_parser, config_from_args
from trio_sfu.config import ConfigError, RedisConfig, config_from_mapping, load_config_file, parse_keys

LIVEKIT_SAMPLE = """
port: 7880
bind_addresses:
  - 127.0.0.1
rtc:
  udp_port: 7882
  tcp_port: 7881
  node_ip: 192.0.2.10
  use_external_ip: false
keys:
  APIabc: secretabc
  APIdef: secretdef
room:
  empty_timeout: 600
  departure_timeout: 10
logging:
  level: debug
webhook:
  api_key: APIabc
  urls:
    - https://example.com/hook
redis:
  address: localhost:6379
"""


def write(tmp_path: pathlib.Path, text: str) -> str:
    path = tmp_path / "livekit.yaml"
    path.write_text(text)
    return str(path)


def test_livekit_shaped_file(tmp_path: pathlib.Path) -> None:
    config, warnings = load_config_file(write(tmp_path, LIVEKIT_SAMPLE))
    assert warnings == []
    assert config.port == 7880 and config.bind_addresses == ["127.0.0.1"]
    assert (config.rtc.udp_port, config.rtc.tcp_port, config.rtc.node_ip) == (7882, 7881, "192.0.2.10")
    assert config.keys == {"APIabc": "secretabc", "APIdef": "secretdef"}
    assert (config.room.empty_timeout, config.room.departure_timeout) == (600, 10)
    assert config.logging.level == "debug"
    assert config.webhook == {"api_key": "APIabc", "urls": ["https://example.com/hook"]}
    assert config.redis.address == "localhost:6379" and config.redis.enabled
    assert config.redis.host_port() == ("localhost", 6379)


def test_congestion_control_is_on_by_default_as_in_livekit_and_the_key_turns_it_off() -> None:
    config, warnings = config_from_mapping({})
    assert warnings == [] and config.rtc.congestion_control is True
    config, warnings = config_from_mapping({"rtc": {"congestion_control": {"enabled": False}}})
    assert warnings == [] and config.rtc.congestion_control is False
    assert config.rtc.congestion_control_allow_pause is False  # LiveKit's default
    config, warnings = config_from_mapping({"rtc": {"congestion_control": {"allow_pause": True}}})
    assert warnings == [] and config.rtc.congestion_control is True  # another key leaves the default
    assert config.rtc.congestion_control_allow_pause is True
    with pytest.raises(ConfigError, match="rtc.congestion_control.enabled"):
        config_from_mapping({"rtc": {"congestion_control": {"enabled": "yes please"}}})


def test_unknown_keys_warn_with_their_name() -> None:
    config, warnings = config_from_mapping({"port": 1, "frobnicate": True, "rtc": {"udp_port": 5, "warp_drive": 1}})
    assert config.port == 1 and config.rtc.udp_port == 5
    assert any("'frobnicate'" in w for w in warnings)
    assert any("'rtc.warp_drive'" in w for w in warnings)


@pytest.mark.parametrize(
    "data,key",
    [
        ({"port": "7880"}, "port"),
        ({"port": True}, "port"),
        ({"rtc": {"udp_port": "x"}}, "rtc.udp_port"),
        ({"rtc": []}, "rtc"),
        ({"room": {"empty_timeout": 1.5}}, "room.empty_timeout"),
        ({"keys": ["a"]}, "keys"),
        ({"logging": {"level": 3}}, "logging.level"),
        ({"webhook": "http://x"}, "webhook"),
        ({"port": 70000}, "port"),
    ],
)
def test_wrong_types_name_the_key(data: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"'{key}'"):
        config_from_mapping(data)


def test_limit_section_has_livekits_defaults_and_keys() -> None:
    config, warnings = config_from_mapping({})
    assert (config.limit.max_metadata_size, config.limit.max_attributes_size, config.limit.max_room_name_length,
            config.limit.max_participant_identity_length, config.limit.max_participant_name_length) == (
        64000, 64000, 256, 256, 256)
    config, warnings = config_from_mapping({"limit": {
        "max_metadata_size": 10, "max_attributes_size": 20, "max_room_name_length": 30,
        "max_participant_identity_length": 40, "max_participant_name_length": 0, "num_tracks": 5,
        "bytes_per_sec": 1.5}})
    assert warnings == []
    assert (config.limit.max_metadata_size, config.limit.max_attributes_size, config.limit.max_room_name_length,
            config.limit.max_participant_identity_length, config.limit.max_participant_name_length) == (10, 20, 30, 40, 0)
    with pytest.raises(ConfigError, match="'limit.max_metadata_size'"):
        config_from_mapping({"limit": {"max_metadata_size": -1}})
    with pytest.raises(ConfigError, match="'limit.max_attributes_size'"):
        config_from_mapping({"limit": {"max_attributes_size": "big"}})


def test_cluster_section_holds_the_relay_key_and_port(tmp_path: pathlib.Path) -> None:
    config, warnings = config_from_mapping({})
    assert (config.cluster.key, config.cluster.relay_port) == ("", 0)
    config, warnings = load_config_file(write(tmp_path, LIVEKIT_SAMPLE + "cluster:\n  key: s3cret-shared\n  relay_port: 7890\n"))
    assert warnings == []
    assert (config.cluster.key, config.cluster.relay_port) == ("s3cret-shared", 7890)
    with pytest.raises(ConfigError, match="'cluster.key'"):
        config_from_mapping({"cluster": {"key": 12345}})
    with pytest.raises(ConfigError, match="'cluster.relay_port'"):
        config_from_mapping({"cluster": {"relay_port": 70000}})
    with pytest.raises(ConfigError, match="'cluster.relay_port'"):
        config_from_mapping({"cluster": {"relay_port": "7890"}})
    _, warnings = config_from_mapping({"cluster": {"key": "k", "gossip": True}})
    assert any("'cluster.gossip'" in w for w in warnings)


def test_audio_section_in_livekits_shape_reaches_the_speaker_meters() -> None:
    from trio_sfu.media.speakers import AudioLevelConfig, AudioLevelMeter

    config, warnings = config_from_mapping({})
    assert AudioLevelConfig.from_config(config.audio) == AudioLevelConfig()  # LiveKit's defaults
    config, warnings = config_from_mapping({"audio": {
        "active_level": 20, "min_percentile": 10, "update_interval": 200, "smooth_intervals": 0}})
    assert warnings == []
    levels = AudioLevelConfig.from_config(config.audio)
    assert levels == AudioLevelConfig(active_level=20, min_percentile=10, update_interval=0.2, smooth_intervals=0)
    # -25 dBov for 220 ms: speech at LiveKit's -35 dBov threshold, not at this config's -20.
    for active_level, speaking in ((35, True), (20, False)):
        meter = AudioLevelMeter(48000, attrs.evolve(levels, active_level=active_level))
        for i in range(12):
            meter.observe(25, 960 * i, 0.02 * i)
        assert meter.level(0.22)[1] is speaking
    for name, bad in (("active_level", 128), ("min_percentile", 101), ("update_interval", 0),
                      ("smooth_intervals", -1)):
        with pytest.raises(ConfigError, match=f"audio.{name}"):
            config_from_mapping({"audio": {name: bad}})


def test_legacy_room_limits_override_the_limit_section_as_in_livekit() -> None:
    config, warnings = config_from_mapping({
        "room": {"max_metadata_size": 100, "max_room_name_length": 50, "max_participant_identity_length": 60},
        "limit": {"max_metadata_size": 5, "max_room_name_length": 5, "max_participant_identity_length": 5}})
    assert warnings == []
    assert (config.limit.max_metadata_size, config.limit.max_room_name_length,
            config.limit.max_participant_identity_length) == (100, 50, 60)
    # Zero in the legacy key means "not set" there, as LiveKit reads it.
    config, _ = config_from_mapping({"room": {"max_metadata_size": 0}, "limit": {"max_metadata_size": 5}})
    assert config.limit.max_metadata_size == 5


def test_bad_yaml_and_non_mapping(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError):
        load_config_file(write(tmp_path, "port: [unclosed"))
    with pytest.raises(ConfigError):
        load_config_file(write(tmp_path, "- just\n- a list\n"))
    with pytest.raises(ConfigError):
        load_config_file(str(tmp_path / "missing.yaml"))


def test_parse_keys_livekit_format() -> None:
    assert parse_keys("devkey: secret") == {"devkey": "secret"}
    assert parse_keys("k1: s1\nk2: s2") == {"k1": "s1", "k2": "s2"}
    for bad in ("just-a-string", "k1: [1]", "k1:"):
        with pytest.raises(ConfigError):
            parse_keys(bad)


def test_cli_precedence(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, LIVEKIT_SAMPLE)
    args = build_parser().parse_args(["--config", path, "--port", "0", "--udp-port", "9999", "--node-ip", "198.51.100.1"])
    # The sample's webhook signs with APIabc, so the keys that replace the file's must keep it.
    config, _ = config_from_args(args, {"LIVEKIT_KEYS": "envkey: envsecret\nAPIabc: s"})
    assert (config.port, config.rtc.udp_port, config.rtc.node_ip) == (0, 9999, "198.51.100.1")
    assert config.keys == {"envkey": "envsecret", "APIabc": "s"}  # env beats file
    args = build_parser().parse_args(["--config", path, "--keys", "flagkey: flagsecret\nAPIabc: s"])
    config, _ = config_from_args(args, {"LIVEKIT_KEYS": "envkey: envsecret\nAPIabc: s"})
    assert config.keys == {"flagkey": "flagsecret", "APIabc": "s"}  # flag beats env
    # Keys that drop the webhook's key are refused up front, naming the key.
    args = build_parser().parse_args(["--config", path, "--keys", "flagkey: flagsecret"])
    with pytest.raises(ConfigError, match="webhook.api_key"):
        config_from_args(args, {})


def test_cli_dev_defaults() -> None:
    config, _ = config_from_args(build_parser().parse_args(["--dev"]), {})
    assert config.keys == {"devkey": "secret"}
    assert config.effective_bind_addresses() == ["127.0.0.1"] and config.port == 7880 and config.rtc.udp_port == 7882
    assert config.rtc.tcp_port == 7881  # ICE/TCP on LiveKit's dev port
    config, _ = config_from_args(build_parser().parse_args(["--dev", "--bind", "0.0.0.0"]), {})
    assert config.effective_bind_addresses() == ["0.0.0.0"]
    config, _ = config_from_args(build_parser().parse_args(["--keys", "k: s"]), {})
    assert config.effective_bind_addresses() == ["0.0.0.0"]  # LiveKit binds everywhere outside dev


def test_cli_without_keys_is_an_error() -> None:
    with pytest.raises(ConfigError, match="no API keys"):
        config_from_args(build_parser().parse_args([]), {})


REDIS_SECTION = """
keys:
  k: s
redis:
  address: redis.internal:6380
  username: sfu
  password: hunter2
  db: 3
  use_tls: true
  dial_timeout: 1500
  read_timeout: 250
  write_timeout: 0
  pool_size: 8
"""


def test_redis_section_in_livekits_shape(tmp_path: pathlib.Path) -> None:
    config, warnings = load_config_file(write(tmp_path, REDIS_SECTION))
    assert warnings == []
    redis = config.redis
    assert redis.enabled and redis.host_port() == ("redis.internal", 6380)
    assert (redis.username, redis.password, redis.db, redis.use_tls, redis.pool_size) == ("sfu", "hunter2", 3, True, 8)
    # Milliseconds as in LiveKit; 0 means the default.
    assert (redis.dial_timeout, redis.read_timeout, redis.write_timeout) == (1500, 250, RedisConfig().write_timeout)


def test_without_redis_the_server_config_is_single_node() -> None:
    config, warnings = config_from_mapping({})
    assert warnings == [] and not config.redis.enabled and config.redis == RedisConfig()
    config, warnings = config_from_mapping({"redis": None})
    assert warnings == [] and not config.redis.enabled
    # A section with only credentials names no server: still not enabled, as LiveKit's IsConfigured.
    config, _ = config_from_mapping({"redis": {"password": "x"}})
    assert not config.redis.enabled


@pytest.mark.parametrize("address,expected", [
    ("localhost", ("localhost", 6379)),
    ("10.0.0.5:7000", ("10.0.0.5", 7000)),
    ("[::1]:6390", ("::1", 6390)),
    ("[fd00::2]", ("fd00::2", 6379)),
])
def test_redis_address_forms(address: str, expected: tuple[str, int]) -> None:
    config, _ = config_from_mapping({"redis": {"address": address}})
    assert config.redis.host_port() == expected


@pytest.mark.parametrize("data,key", [
    ({"redis": "localhost:6379"}, "redis"),
    ({"redis": {"address": 6379}}, "redis.address"),
    ({"redis": {"address": "localhost:0"}}, "redis.address"),
    ({"redis": {"address": "localhost:http"}}, "redis.address"),
    ({"redis": {"address": ":6379"}}, "redis.address"),
    ({"redis": {"address": "::1:6379"}}, "redis.address"),
    ({"redis": {"address": "[::1"}}, "redis.address"),
    ({"redis": {"db": -1}}, "redis.db"),
    ({"redis": {"db": "0"}}, "redis.db"),
    ({"redis": {"use_tls": "yes"}}, "redis.use_tls"),
    ({"redis": {"dial_timeout": 1.5}}, "redis.dial_timeout"),
    ({"redis": {"read_timeout": -5}}, "redis.read_timeout"),
    ({"redis": {"write_timeout": True}}, "redis.write_timeout"),
    ({"redis": {"sentinel_addresses": "a:1"}}, "redis.sentinel_addresses"),
    ({"redis": {"cluster_addresses": [1]}}, "redis.cluster_addresses"),
])
def test_redis_wrong_values_name_the_key(data: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"'{key}'"):
        config_from_mapping(data)


@pytest.mark.parametrize("section,key,what", [
    ({"sentinel_master_name": "mymaster", "sentinel_addresses": ["s1:26379", "s2:26379"]}, "sentinel_addresses", "Sentinel"),
    ({"address": "r:6379", "sentinel_master_name": "mymaster"}, "sentinel_master_name", "Sentinel"),
    ({"cluster_addresses": ["c1:7000", "c2:7000"]}, "cluster_addresses", "Cluster"),
    ({"address": "r:6379", "max_redirects": 3}, "max_redirects", "Cluster"),
])
def test_redis_sentinel_and_cluster_are_refused_naming_the_key(section: dict, key: str, what: str) -> None:
    with pytest.raises(ConfigError, match=f"'redis.{key}': Redis {what} is not supported yet"):
        config_from_mapping({"redis": section})


def test_cli_redis_flags_and_environment(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, REDIS_SECTION)
    # LiveKit's flags and their environment variables set redis.address and redis.password.
    config, _ = config_from_args(build_parser().parse_args(["--dev", "--redis-host", "127.0.0.1:7001"]), {})
    assert config.redis.enabled and config.redis.host_port() == ("127.0.0.1", 7001) and config.redis.password == ""
    config, _ = config_from_args(build_parser().parse_args(["--dev"]),
                                 {"REDIS_HOST": "cache:6390", "REDIS_PASSWORD": "envpw"})
    assert (config.redis.address, config.redis.password) == ("cache:6390", "envpw")
    # Flag over environment over file; what the flags do not set stays as the file says.
    args = build_parser().parse_args(["--config", path, "--redis-host", "flaghost:1", "--redis-password", "flagpw"])
    config, _ = config_from_args(args, {"REDIS_HOST": "envhost:2", "REDIS_PASSWORD": "envpw"})
    assert (config.redis.address, config.redis.password, config.redis.db) == ("flaghost:1", "flagpw", 3)
    config, _ = config_from_args(build_parser().parse_args(["--config", path]), {"REDIS_HOST": "envhost:2"})
    assert (config.redis.address, config.redis.password) == ("envhost:2", "hunter2")
    config, _ = config_from_args(build_parser().parse_args(["--config", path]), {})
    assert (config.redis.address, config.redis.password) == ("redis.internal:6380", "hunter2")
    # Without any of them the node stays alone.
    config, _ = config_from_args(build_parser().parse_args(["--dev"]), {})
    assert not config.redis.enabled


def test_cli_bad_redis_host_names_its_source() -> None:
    with pytest.raises(ConfigError, match="--redis-host"):
        config_from_args(build_parser().parse_args(["--dev", "--redis-host", "host:99999"]), {})
    with pytest.raises(ConfigError, match="REDIS_HOST"):
        config_from_args(build_parser().parse_args(["--dev"]), {"REDIS_HOST": "a:b:c"})


def test_turn_section_in_livekits_shape() -> None:
    config, warnings = config_from_mapping({"turn": {
        "enabled": True, "domain": "turn.example.com", "udp_port": 443, "tls_port": 5350,
        "cert_file": "/c.pem", "key_file": "/k.pem", "relay_range_start": 31000, "relay_range_end": 31999,
        "external_tls": True, "ttl_seconds": 600, "per_user_relay_allocation_limit": 4,
    }})
    assert warnings == []
    turn = config.turn
    assert (turn.enabled, turn.domain, turn.udp_port, turn.tls_port) == (True, "turn.example.com", 443, 5350)
    assert (turn.cert_file, turn.key_file, turn.external_tls) == ("/c.pem", "/k.pem", True)
    assert (turn.relay_range_start, turn.relay_range_end) == (31000, 31999)
    assert (turn.ttl_seconds, turn.per_user_relay_allocation_limit) == (600, 4)
    # LiveKit: a TTL of 0 or less is the default (300 s), a per-user limit of 0 or less is off.
    off = config_from_mapping({"turn": {"ttl_seconds": 0, "per_user_relay_allocation_limit": 0}})[0].turn
    assert off.ttl_seconds == 300 and off.per_user_relay_allocation_limit == 1000
    # LiveKit's defaults; on in development unless the file says otherwise, off elsewhere.
    default = config_from_mapping({})[0].turn
    assert (default.udp_port, default.tls_port, default.relay_range_start, default.relay_range_end) == \
        (3478, 5349, 30000, 40000)
    assert default.active(development=True) and not default.active(development=False)
    assert not config_from_mapping({"turn": {"enabled": False}})[0].turn.active(development=True)


@pytest.mark.parametrize("turn, key", [
    ({"udp_port": 70000}, "turn.udp_port"),
    ({"relay_range_start": 40000, "relay_range_end": 30000}, "turn.relay_range_start"),
    ({"relay_range_start": 0}, "turn.relay_range_start"),
    ({"cert_file": "/c.pem"}, "turn.cert_file"),
    ({"enabled": True, "udp_port": 0, "tls_port": 0}, "turn.enabled"),
    ({"enabled": "yes"}, "turn.enabled"),
])
def test_turn_wrong_values_name_the_key(turn: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config_from_mapping({"turn": turn})


def test_turn_secret_follows_the_api_keys() -> None:
    a = config_from_mapping({"keys": {"k": "s1"}})[0]
    b = config_from_mapping({"keys": {"k": "s2"}})[0]
    assert a.turn_secret() != b.turn_secret() and len(a.turn_secret()) == 32
