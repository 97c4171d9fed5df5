"""`trio-sfu` command line: flags and config file → ServerConfig, then run until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import functools
import os
import signal
import sys
from typing import Sequence

import trio

from trio_sfu import __version__
from trio_sfu.config import (DEV_API_KEY, DEV_API_SECRET, ConfigError, ServerConfig, load_config_file, parse_host_port,
                             parse_keys)
from trio_sfu.client.commands import COMMANDS as CLIENT_COMMANDS
from trio_sfu.client.commands import add_commands as add_client_commands
from trio_sfu.client.commands import run_command as run_client_command
from trio_sfu.client.loadtest import add_arguments as add_load_test_arguments
from trio_sfu.client.loadtest_command import run_command as run_load_test
from trio_sfu.log import configure, get_logger
from trio_sfu.media.service import format_address
from trio_sfu.server import Server
from trio_sfu.workers import run_workers
from trio_sfu.api.webhooks import WebhookConfig

_log = get_logger("trio_sfu.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trio-sfu", description="A LiveKit-compatible WebRTC SFU on Trio")
    parser.add_argument("--dev", action="store_true", help=f"development mode: API key {DEV_API_KEY!r}, secret {DEV_API_SECRET!r}, "
                        "signal on 127.0.0.1, media on every interface address and loopback, "
                        "TURN on UDP 3478 and TLS 5349 (self-signed certificate)")
    parser.add_argument("--config", metavar="FILE", help="YAML config file in LiveKit's shape")
    parser.add_argument("--bind", action="append", metavar="ADDR", help="address to listen on (repeatable)")
    parser.add_argument("--port", type=int, help="HTTP/WebSocket port (default 7880; 0 = ephemeral)")
    parser.add_argument("--udp-port", type=int, help="UDP media port (default 7882)")
    parser.add_argument("--node-ip", help="the one IP address to advertise in ICE candidates "
                        "(default: every interface address)")
    parser.add_argument("--keys", help="API keys as 'key: secret' pairs (env LIVEKIT_KEYS)")
    parser.add_argument("--redis-host", metavar="HOST:PORT", help="Redis server for a cluster of nodes (env REDIS_HOST)")
    parser.add_argument("--redis-password", metavar="PASSWORD", help="password of the Redis server (env REDIS_PASSWORD)")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="node processes on this machine sharing --port (needs Redis; default with Redis: one per core)")
    parser.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)  # set by the supervisor
    parser.add_argument("--reuse-port", action="store_true",
                        help="share --port with other trio-sfu nodes on this machine started separately (as --workers does)")
    parser.add_argument("--drain-timeout", type=float, metavar="SECONDS",
                        help="on SIGTERM, a cluster node moves its participants to other nodes for at most this long (default 60)")
    parser.add_argument("--version", action="version", version=f"trio-sfu {__version__}")
    # `trio-sfu load-test|token|room|join ...`; without a subcommand `trio-sfu` runs the server.
    commands = parser.add_subparsers(dest="command", metavar="{load-test,token,room,join}")
    add_load_test_arguments(commands.add_parser("load-test", help="LiveKit-style load test against a server"))
    add_client_commands(commands)
    return parser


def config_from_args(args: argparse.Namespace, environ: dict[str, str]) -> tuple[ServerConfig, list[str]]:
    """Precedence (as LiveKit): flags over environment over the config file over defaults."""
    if args.config:
        config, warnings = load_config_file(args.config)
    else:
        config, warnings = ServerConfig(), []
    if args.dev:
        config.development = True
    keys_text = args.keys if args.keys is not None else environ.get("LIVEKIT_KEYS")
    if keys_text is not None:
        config.keys = parse_keys(keys_text, "--keys" if args.keys is not None else "LIVEKIT_KEYS")
    if config.development and not config.keys:
        config.keys = {DEV_API_KEY: DEV_API_SECRET}
    if args.bind:
        config.bind_addresses = list(args.bind)
    if args.port is not None:
        config.port = args.port
    if args.udp_port is not None:
        config.rtc.udp_port = args.udp_port
    if args.node_ip is not None:
        config.rtc.node_ip = args.node_ip
    # LiveKit's names: --redis-host / REDIS_HOST set `redis.address`, --redis-password /
    # REDIS_PASSWORD `redis.password`.
    redis_host = args.redis_host if args.redis_host is not None else environ.get("REDIS_HOST")
    if redis_host:
        config.redis.address = redis_host
        parse_host_port(redis_host, "--redis-host" if args.redis_host is not None else "REDIS_HOST")
    redis_password = args.redis_password if args.redis_password is not None else environ.get("REDIS_PASSWORD")
    if redis_password:
        config.redis.password = redis_password
    for name, value in (("--port", config.port), ("--udp-port", config.rtc.udp_port)):
        if not 0 <= value <= 65535:
            raise ConfigError(f"{name} must be a port number 0-65535, got {value}")
    if not config.keys:
        raise ConfigError("no API keys configured: use --keys, LIVEKIT_KEYS, 'keys' in --config, or --dev")
    # Checked here, not when the server starts, so a bad webhook section is a
    # one-line error naming the key rather than a traceback out of trio.run.
    WebhookConfig.from_server_config(config)
    return config, warnings


def worker_count(args: argparse.Namespace, config: ServerConfig) -> int:
    """How many node processes to run here: --workers, else one per core on a cluster."""
    if args.worker_index is not None:
        return 1  # a worker itself
    if args.workers is not None:
        if args.workers < 1:
            raise ConfigError("--workers must be at least 1")
        if args.workers > 1 and not config.redis.enabled:
            raise ConfigError("--workers above 1 needs Redis (--redis-host or redis.address): workers are nodes of a cluster")
        count = args.workers
    else:
        count = (os.cpu_count() or 1) if config.redis.enabled else 1
    if (count > 1 or args.reuse_port) and config.port == 0:
        raise ConfigError("--workers and --reuse-port need a fixed --port to share")
    if args.reuse_port and not config.redis.enabled:
        raise ConfigError("--reuse-port needs Redis: the nodes sharing a port must be one cluster")
    return count


def apply_worker_index(config: ServerConfig, index: int) -> None:
    """Worker `index` of several: its own UDP port, ICE/TCP port (and metrics and TURN ports) next to
    the configured ones."""
    if config.rtc.udp_port:
        config.rtc.udp_port += index
        if config.rtc.udp_port > 65535:
            raise ConfigError(f"worker {index}'s UDP port {config.rtc.udp_port} is out of range")
    if config.rtc.tcp_port:
        # Like the UDP port: a client's TCP connection must reach the node its candidates name.
        config.rtc.tcp_port += index
        if config.rtc.tcp_port > 65535:
            raise ConfigError(f"worker {index}'s ICE/TCP port {config.rtc.tcp_port} is out of range")
    for name in ("udp_port", "tls_port"):
        # Each worker's TURN server relays only to that worker's media port, so each has ports of
        # its own too (its JoinResponses name them).
        port = getattr(config.turn, name)
        if port:
            if port + index > 65535:
                raise ConfigError(f"worker {index}'s TURN {name} {port + index} is out of range")
            setattr(config.turn, name, port + index)
    if config.prometheus.port:
        # Each worker is a node with metrics of its own, scraped on its own port.
        config.prometheus.port += index
        if config.prometheus.port > 65535:
            raise ConfigError(f"worker {index}'s metrics port {config.prometheus.port} is out of range")


async def serve(config: ServerConfig, *, reuse_port: bool = False, drain_timeout: float | None = None) -> None:
    server = Server(config, enable_media=True, reuse_port=reuse_port)
    if drain_timeout is not None:
        server.drain_deadline = drain_timeout
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            async def run_server(task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED) -> None:
                await server.run(task_status=task_status)
                nursery.cancel_scope.cancel()  # it ended by itself (drained): stop waiting for signals

            await nursery.start(run_server)
            print(f"trio-sfu {__version__} listening on {server.public_url}", flush=True)
            if config.development:
                for key, secret in config.keys.items():
                    print(f"dev API key: {key}  secret: {secret}", flush=True)
            node = (f" node={server.relay.node_id} node_url={server.url} pid={os.getpid()}"
                    if server.cluster is not None and server.relay is not None else "")
            media = ""
            if server.media is not None and server.media.reachable:
                media = " media reachable at " + ", ".join(format_address(*a) for a in server.media.reachable)
            print(f"trio-sfu ready url={server.public_url}{node}{media}", flush=True)

            async def wait_for_signal() -> None:
                drained = False
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if server.cluster is not None and not drained:
                        # A cluster node drains first: its participants move to other nodes.
                        _log.info("signal received, draining", kv={"signal": name})
                        server.request_drain()
                        drained = True
                        continue
                    _log.info("signal received, shutting down", kv={"signal": name})
                    server.request_shutdown()
                    return

            nursery.start_soon(wait_for_signal)
    print("trio-sfu stopped", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "load-test":
        return run_load_test(args)
    if args.command in CLIENT_COMMANDS:
        return run_client_command(args)
    try:
        config, warnings = config_from_args(args, dict(os.environ))
    except ConfigError as exc:
        print(f"trio-sfu: error: {exc}", file=sys.stderr)
        return 2
    try:
        workers = worker_count(args, config)
        if args.worker_index is not None:
            apply_worker_index(config, args.worker_index)
    except ConfigError as exc:
        print(f"trio-sfu: error: {exc}", file=sys.stderr)
        return 2
    configure(config.logging.level)
    for warning in warnings:
        _log.warning(warning)
    if workers > 1:
        return run_workers(sys.argv[1:] if argv is None else list(argv), workers)
    try:
        trio.run(functools.partial(serve, config, reuse_port=args.worker_index is not None or args.reuse_port,
                                   drain_timeout=args.drain_timeout))
    except (OSError, BaseExceptionGroup) as exc:
        error = _startup_error(exc)
        if error is None:
            raise
        print(f"trio-sfu: error: {error.strerror or error}", file=sys.stderr)
        return 1
    return 0


def _startup_error(exc: BaseException) -> OSError | None:
    """The OSError a server that could not start raised (a port in use, no media address),
    out of the exception groups its nurseries wrap it in; None for anything else."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, OSError) else None


if __name__ == "__main__":
    sys.exit(main())
