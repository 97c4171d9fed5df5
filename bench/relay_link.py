"""Cost of one relayed RTP packet on the node-to-node link (``python -m bench.relay_link``).

Not a test: numbers depend on the machine. Both ends run in this process on one Trio run, so
the CPU time measured is what the cluster pays per relayed packet, sender and receiver
together (on two nodes it is split between them). Each packet takes the path the relay gives
it: a `RelayTap` on the sending side wraps it in a `RelayMessage` and hands it to the link's
`send`; the receiving side's `receive` returns the parsed message, as `NodeRelay` reads it.

Rows:
  protobuf only   serialize + parse, no transport: the floor of any link carrying RelayMessages
  in-memory link  trio_sfu.cluster.link.in_memory_link_pair (a memory channel between the two)
  tcp link        trio_sfu.cluster.tcp_link.TcpRelayLink over loopback TCP, after a real handshake

The sender yields whenever the link's queue is half full, so nothing is dropped (drops are
reported if they happen); the figures are the best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Callable

import trio

from proto import relay_pb2 as pb
from trio_sfu.cluster.link import in_memory_link_pair
from trio_sfu.cluster.relay_protocol import RelayTap
from trio_sfu.forwarding.receiver import TrackReceiver
from trio_sfu.cluster.tcp_link import LinkLimits, TcpRelayLink, accept_link, connect_link

KEY = b"bench-key"


def _packet(index: int, size: int) -> bytes:
    header = bytes([0x80, 96]) + (index & 0xFFFF).to_bytes(2, "big") + (index * 960).to_bytes(4, "big") + (0x1234).to_bytes(4, "big")
    return header + b"\x55" * (size - len(header))


def _result(name: str, packets: int, cpu: float, wall: float, dropped: int) -> dict[str, Any]:
    return {"link": name, "packets": packets, "dropped": dropped, "cpu_us_per_packet": cpu / packets * 1e6,
            "packets_per_s": packets / wall, "packets_per_cpu_s": packets / cpu if cpu else None}


def bench_protobuf(packets: int, size: int) -> dict[str, Any]:
    payloads = [_packet(i, size) for i in range(1024)]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i in range(packets):
        data = pb.RelayMessage(from_node="node-a", rtp=pb.RelayRtp(room="bench", track_id="TR_bench",
                                                                    packet=payloads[i & 1023])).SerializeToString()
        message = pb.RelayMessage()
        message.ParseFromString(data)
    return _result("protobuf only", packets, time.process_time() - cpu0, time.perf_counter() - wall0, 0)


async def _pump(send_link: Any, receive_link: Any, packets: int, size: int,
                backlogged: Callable[[], bool]) -> tuple[float, float]:
    """Send `packets` through a RelayTap on `send_link` and receive them all on `receive_link`;
    (cpu seconds, wall seconds)."""
    payloads = [_packet(i, size) for i in range(1024)]
    receiver = TrackReceiver("TR_bench", "video/VP8", 90000, send_rtcp=lambda packet: True, local_ssrc=1,
                             cname="bench", buffer_capacity=1024, now=0.0)
    tap = RelayTap(send_link, "bench", "TR_bench", receiver)
    tap.request([0], 0.0)  # the peer wants layer 0 (the relay is on demand)
    done = trio.Event()

    async def receiver() -> None:
        for _ in range(packets - send_link.dropped):
            await receive_link.receive()
        done.set()

    cpu0, wall0 = time.process_time(), time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(receiver)
        for i in range(packets):
            while backlogged():
                await trio.sleep(0)
            tap.write_rtp(0, payloads[i & 1023], 0.0)
        while not done.is_set() and send_link.dropped == 0:
            await trio.sleep(0)
        nursery.cancel_scope.cancel()
    return time.process_time() - cpu0, time.perf_counter() - wall0


async def bench_in_memory(packets: int, size: int) -> dict[str, Any]:
    capacity = 4096
    a, b = in_memory_link_pair("node-a", "node-b", capacity=capacity)
    cpu, wall = await _pump(a, b, packets, size, lambda: a._out.statistics().current_buffer_used >= capacity // 2)
    a.close()
    b.close()
    return _result("in-memory link", packets, cpu, wall, a.dropped)


async def _tcp_pair(limits: LinkLimits) -> tuple[TcpRelayLink, TcpRelayLink]:
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    accepted: list[TcpRelayLink] = []

    async def accept() -> None:
        stream = await listener.accept()
        accepted.append(await accept_link(stream, local_node_id="node-b", key=KEY, limits=limits))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept)
        dialed = await connect_link("127.0.0.1", listener.socket.getsockname()[1], local_node_id="node-a",
                                    peer_node_id="node-b", key=KEY, limits=limits)
    await listener.aclose()
    return dialed, accepted[0]


async def bench_tcp(packets: int, size: int) -> dict[str, Any]:
    limits = LinkLimits()
    a, b = await _tcp_pair(limits)
    async with trio.open_nursery() as writers:
        writers.start_soon(a.run)
        writers.start_soon(b.run)
        cpu, wall = await _pump(a, b, packets, size, lambda: (a.queued_bytes >= limits.max_queue_bytes // 2
                                                              or a.queued_messages >= limits.max_queue_messages // 2))
        a.close()
        b.close()
    return _result("tcp link", packets, cpu, wall, a.dropped)


def run(packets: int, size: int, repeat: int) -> list[dict[str, Any]]:
    rows = []
    for name, fn in (("protobuf only", lambda: bench_protobuf(packets, size)),
                     ("in-memory link", lambda: trio.run(bench_in_memory, packets, size)),
                     ("tcp link", lambda: trio.run(bench_tcp, packets, size))):
        runs = [fn() for _ in range(repeat)]
        rows.append(min(runs, key=lambda r: r["cpu_us_per_packet"]))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.relay_link", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packets", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=1200, help="RTP packet size in bytes")
    parser.add_argument("--repeat", type=int, default=3, help="runs per row; the best is reported")
    parser.add_argument("--json", action="store_true", help="print machine-readable results on stdout")
    args = parser.parse_args(argv)
    rows = run(args.packets, args.size, args.repeat)
    if args.json:
        json.dump({"packets": args.packets, "size": args.size, "results": rows}, sys.stdout, indent=2)
        print()
        return 0
    print(f"relayed RTP packets of {args.size} B, {args.packets:,} per run, best of {args.repeat}; "
          "sender and receiver in one process")
    for r in rows:
        print(f"  {r['link']:15s} {r['cpu_us_per_packet']:6.2f} us/packet CPU  {r['packets_per_s']:>10,.0f} packets/s"
              + (f"  ({r['dropped']} dropped)" if r["dropped"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
