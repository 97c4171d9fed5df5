"""`trio-sfu --workers` / `--reuse-port` / the cluster config keys: what is accepted and refused,
and the worker command line the supervisor runs (trio_sfu.cli, trio_sfu.workers)."""

from __future__ import annotations

import sys

import pytest

from trio_sfu.cli import apply_worker_index, build_parser, config_from_args, worker_count
from trio_sfu.config import ConfigError, ServerConfig, config_from_mapping
from trio_sfu.workers import worker_command


def parse(*argv: str):
    args = build_parser().parse_args(["--dev", *argv])
    config, _ = config_from_args(args, {})
    return args, config


def test_workers_default_to_one_per_core_with_redis_and_one_without(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    args, config = parse("--port", "7880")
    assert worker_count(args, config) == 1
    args, config = parse("--port", "7880", "--redis-host", "127.0.0.1:6379")
    assert worker_count(args, config) == 4
    args, config = parse("--port", "7880", "--redis-host", "127.0.0.1:6379", "--workers", "1")
    assert worker_count(args, config) == 1


@pytest.mark.parametrize("argv, message", [
    (("--port", "7880", "--workers", "2"), "needs Redis"),
    (("--port", "0", "--workers", "2", "--redis-host", "127.0.0.1:6379"), "fixed --port"),
    (("--port", "7880", "--workers", "0", "--redis-host", "127.0.0.1:6379"), "at least 1"),
    (("--port", "7880", "--reuse-port"), "needs Redis"),
    (("--port", "0", "--reuse-port", "--redis-host", "127.0.0.1:6379"), "fixed --port"),
])
def test_unusable_worker_settings_are_refused_naming_why(argv, message):
    args, config = parse(*argv)
    with pytest.raises(ConfigError, match=message):
        worker_count(args, config)


def test_a_worker_takes_the_udp_port_after_the_configured_one_and_its_command_drops_workers():
    config = ServerConfig()
    config.rtc.udp_port = 7882
    apply_worker_index(config, 3)
    assert config.rtc.udp_port == 7885
    config.rtc.udp_port = 65535
    with pytest.raises(ConfigError, match="out of range"):
        apply_worker_index(config, 1)
    # The ICE/TCP port likewise (rtc.tcp_port: LiveKit has no flag for it); 0 (off) stays off.
    config = ServerConfig()
    assert config.rtc.tcp_port == 7881
    apply_worker_index(config, 2)
    assert config.rtc.tcp_port == 7883
    config.rtc.tcp_port = 0
    apply_worker_index(config, 2)
    assert config.rtc.tcp_port == 0
    config.rtc.tcp_port = 65535
    with pytest.raises(ConfigError, match="ICE/TCP port .* out of range"):
        apply_worker_index(config, 1)
    # A metrics port of its own (prometheus.port) is per worker too: each is a node to scrape.
    config = ServerConfig()
    config.prometheus.port = 6789
    apply_worker_index(config, 2)
    assert config.prometheus.port == 6791
    # So are the TURN ports: a worker's TURN server relays only to that worker's media port.
    assert (config.turn.udp_port, config.turn.tls_port) == (3478 + 2, 5349 + 2)
    config = ServerConfig()
    config.turn.tls_port = 0
    apply_worker_index(config, 1)
    assert (config.turn.udp_port, config.turn.tls_port) == (3479, 0)
    command = worker_command(["--dev", "--workers", "2", "--port", "7880", "--workers=3"], 1)
    assert command == [sys.executable, "-m", "trio_sfu.cli", "--dev", "--port", "7880", "--worker-index", "1"]


def test_cluster_and_node_selector_keys_are_parsed_and_checked():
    config, warnings = config_from_mapping({"cluster": {"key": "k", "heartbeat_interval": 0.5},
                                            "node_selector": {"kind": "sysload", "sysload_limit": 0.7},
                                            "region": "eu"})
    assert not warnings
    assert (config.cluster.key, config.cluster.heartbeat_interval) == ("k", 0.5)
    assert config.node_selector.sysload_limit == 0.7 and config.region == "eu"
    with pytest.raises(ConfigError, match="sysload_limit"):
        config_from_mapping({"node_selector": {"sysload_limit": 1.5}})
    with pytest.raises(ConfigError, match="heartbeat_interval"):
        config_from_mapping({"cluster": {"heartbeat_interval": 0}})


def test_without_a_cluster_key_one_is_derived_from_the_api_keys():
    a, b = ServerConfig(keys={"k": "secret-1"}), ServerConfig(keys={"k": "secret-1"})
    assert a.cluster_key() == b.cluster_key() and len(a.cluster_key()) == 64
    assert ServerConfig(keys={"k": "secret-2"}).cluster_key() != a.cluster_key()
    a.cluster.key = "explicit"
    assert a.cluster_key() == "explicit"
