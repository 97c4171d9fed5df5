"""Config: LiveKit-shaped YAML, key lists, and CLI precedence."""

from __future__ import annotations

import pathlib

import pytest

from trio_sfu.cli import build_parser, config_from_args
from trio_sfu.config import ConfigError, config_from_mapping, load_config_file, parse_keys

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
    assert config.redis == {"address": "localhost:6379"}


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
    config, _ = config_from_args(build_parser().parse_args(["--dev", "--bind", "0.0.0.0"]), {})
    assert config.effective_bind_addresses() == ["0.0.0.0"]
    config, _ = config_from_args(build_parser().parse_args(["--keys", "k: s"]), {})
    assert config.effective_bind_addresses() == ["0.0.0.0"]  # LiveKit binds everywhere outside dev


def test_cli_without_keys_is_an_error() -> None:
    with pytest.raises(ConfigError, match="no API keys"):
        config_from_args(build_parser().parse_args([]), {})
