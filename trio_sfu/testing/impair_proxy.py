"""A UDP proxy that impairs media between real clients and the server's media port.

For clients we cannot link in-process (Chromium, the `livekit` SDK): the server binds its media
port on one address of the test network namespace and advertises another, where this proxy
listens on the same port (`--bind B --node-ip A`, see `tests/e2e/e2e_harness.py`'s
`impaired_sfu`). The clients' only server candidate is then the proxy. It rewrites nothing: each
datagram from a client goes to the server from an upstream socket of that client's own, and each
datagram the server sends to that socket goes back to the client from the listening address, so
ICE, DTLS and SRTP run end to end. Each client has its own link, impaired independently per
direction (`to_server`, `to_client`: trio_sfu.testing.impairment), seeded from `seed`.

    python -m trio_sfu.testing.impair_proxy --listen 198.18.0.1:7882 --upstream 198.18.0.2:7882 \\
        --to-server delay=0.02,jitter=0.005,loss=0.05 --to-client delay=0.02,jitter=0.005,loss=0.05

prints `{"proxy_ready": ...}` once listening and, on SIGTERM/SIGINT or stdin EOF, the links'
counters as `{"proxy_counters": ...}` (JSON lines on stdout).

The impairment can change while it runs (a bottleneck that lifts, a link that degrades): a JSON
line on stdin such as `{"to_client": "rate_bps=600000"}` or `{"to_client": ""}` (unimpaired)
applies to every client's link in that direction from then on, and to clients yet to come; the
proxy acknowledges with `{"proxy_changed": {..., "at": <Unix time>}}`. A line it cannot use is
answered with `{"proxy_control_error": ...}` and changes nothing.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from typing import Optional, Sequence

import attrs
import trio

from trio_sfu.datagram import UdpSocket
from trio_sfu.testing.impairment import DelayLine, ImpairedLink, Impairment

Address = tuple[str, int]
#: Clients (distinct source addresses) one proxy serves; more are dropped and counted.
MAX_CLIENTS = 64


@attrs.define
class ClientLink:
    """One client's path through the proxy: its address, its upstream socket, its two links."""

    client: Address
    upstream: UdpSocket
    to_server: ImpairedLink
    to_client: ImpairedLink


@attrs.define
class ProxyCounters:
    clients: int = 0
    clients_refused: int = 0
    send_failed: int = 0


class ImpairProxy:
    def __init__(self, listen: Address, upstream: Address, to_server: Impairment, to_client: Impairment,
                 seed: int = 0) -> None:
        self.listen_address = listen
        self.upstream_address = upstream
        self.to_server = to_server
        self.to_client = to_client
        self.seed = seed
        self.counters = ProxyCounters()
        self.links: dict[Address, ClientLink] = {}
        self._line: DelayLine[tuple[UdpSocket, bytes, Address]] = DelayLine()
        self._changed = trio.Event()
        self._listen: Optional[UdpSocket] = None

    async def run(self, *, task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; started() with the listening address."""
        self._listen = UdpSocket.bind(*self.listen_address)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._release)
                nursery.start_soon(self._from_clients, nursery)
                task_status.started(self._listen.getsockname())
        finally:
            self._listen.close()
            for link in self.links.values():
                link.upstream.close()

    def set_impairment(self, *, to_server: Optional[Impairment] = None,
                       to_client: Optional[Impairment] = None) -> None:
        """From now on, each direction given is impaired so, on every client's link (what is
        already queued keeps the departure it was given) and for clients yet to come."""
        if to_server is not None:
            self.to_server = to_server
        if to_client is not None:
            self.to_client = to_client
        for link in self.links.values():
            link.to_server.impairment = self.to_server
            link.to_client.impairment = self.to_client

    def _hold(self, link: ImpairedLink, sock: UdpSocket, data: bytes, destination: Address) -> None:
        arrival = link.admit(len(data), trio.current_time())
        if arrival is not None:
            self._line.push(arrival, (sock, data, destination))
            self._changed.set()

    async def _from_clients(self, nursery: trio.Nursery) -> None:
        listen = self._listen
        assert listen is not None
        while True:
            await listen.wait_readable()
            while True:
                try:
                    data, client = listen.recvfrom(65536)
                except BlockingIOError:
                    break
                link = self.links.get(client)
                if link is None:
                    link = self._new_client(client, nursery)
                    if link is None:
                        continue
                self._hold(link.to_server, link.upstream, data, self.upstream_address)

    def _new_client(self, client: Address, nursery: trio.Nursery) -> Optional[ClientLink]:
        if len(self.links) >= MAX_CLIENTS:
            self.counters.clients_refused += 1
            return None
        index = len(self.links)
        link = ClientLink(client, UdpSocket.bind(self.listen_address[0], 0),
                          ImpairedLink(self.to_server, seed=self.seed * 1000 + 2 * index),
                          ImpairedLink(self.to_client, seed=self.seed * 1000 + 2 * index + 1))
        self.links[client] = link
        self.counters.clients += 1
        nursery.start_soon(self._from_server, link)
        return link

    async def _from_server(self, link: ClientLink) -> None:
        listen = self._listen
        assert listen is not None
        while True:
            await link.upstream.wait_readable()
            while True:
                try:
                    data, _ = link.upstream.recvfrom(65536)
                except BlockingIOError:
                    break
                self._hold(link.to_client, listen, data, link.client)

    async def _release(self) -> None:
        while True:
            self._changed = trio.Event()
            with trio.move_on_at(self._line.next_deadline()):
                await self._changed.wait()
            for sock, data, destination in self._line.pop_due(trio.current_time()):
                try:
                    sock.sendto(data, destination)
                except OSError:
                    self.counters.send_failed += 1

    def report(self) -> dict:
        return {
            "proxy": attrs.asdict(self.counters),
            "links": [{"client": f"{link.client[0]}:{link.client[1]}",
                       "to_server": attrs.asdict(link.to_server.counters),
                       "to_client": attrs.asdict(link.to_client.counters)} for link in self.links.values()],
        }


def _address(text: str) -> Address:
    host, _, port = text.rpartition(":")
    return host, int(port)


def _say(**item: object) -> None:
    print(json.dumps(item), flush=True)


def control(proxy: ImpairProxy, line: str) -> dict:
    """Apply one control line (see the module doc); what to print in answer."""
    try:
        command = json.loads(line)
        if not isinstance(command, dict) or not command or set(command) - {"to_server", "to_client"}:
            raise ValueError("expected an object with to_server and/or to_client")
        changes = {key: Impairment.parse(str(value)) for key, value in command.items()}
    except (ValueError, TypeError) as exc:
        return {"proxy_control_error": f"{exc} in {line.strip()!r}"}
    proxy.set_impairment(**changes)
    return {"proxy_changed": {**{key: attrs.asdict(value) for key, value in changes.items()}, "at": time.time()}}


async def _follow_stdin(proxy: ImpairProxy) -> None:
    """Control lines until stdin closes."""
    stdin = trio.lowlevel.FdStream(sys.stdin.fileno())
    pending = b""
    while chunk := await stdin.receive_some(4096):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line.strip():
                _say(**control(proxy, line.decode(errors="replace")))


async def main_async(args: argparse.Namespace) -> None:
    proxy = ImpairProxy(_address(args.listen), _address(args.upstream), Impairment.parse(args.to_server),
                        Impairment.parse(args.to_client), seed=args.seed)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            listening = await nursery.start(proxy.run)
            _say(proxy_ready={"listen": f"{listening[0]}:{listening[1]}", "upstream": args.upstream,
                              "to_server": attrs.asdict(proxy.to_server),
                              "to_client": attrs.asdict(proxy.to_client)})

            async def stop_on_stdin_eof() -> None:
                await _follow_stdin(proxy)
                nursery.cancel_scope.cancel()

            nursery.start_soon(stop_on_stdin_eof)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break
    _say(proxy_counters=proxy.report())


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT the clients reach (the advertised candidate)")
    parser.add_argument("--upstream", required=True, help="HOST:PORT of the server's media port")
    parser.add_argument("--to-server", default="", help="impairment client -> server, e.g. delay=0.02,jitter=0.005")
    parser.add_argument("--to-client", default="", help="impairment server -> client")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        Impairment.parse(args.to_server), Impairment.parse(args.to_client)
    except (ValueError, TypeError) as exc:
        parser.error(str(exc))
    trio.run(main_async, args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
