"""CPU a hostile data-channel peer can make one SCTP association spend, no I/O.

    .venv/bin/python -m bench.sctp_attack [--count 8000] [--scenario middle|sparse-sack|forward-tsn|all] [--json]

Two of our associations complete the handshake over a list; then the peer stops behaving
and writes packets by hand, knowing only what it saw on the wire (our verification tag, its
own next TSN). The figure is the victim's CPU time (``time.process_time``) to take those
packets in and answer them, which on the server is time the one event loop is not serving
anyone else.

Scenarios:

``middle``       ``--count`` DATA chunks with B and E clear (1-byte middles of one ordered
                 message that never begins), consecutive TSNs, bundled as many as fit in a
                 1200-byte packet: the reassembly flood of the hardening issue.
``sparse-sack``  ``--count`` single middles on every other TSN (nothing merges, so the SACK has
                 that many gaps), then as many one-chunk packets that each demand a SACK.
``forward-tsn``  ``--count`` unmergeable middles ahead, then as many FORWARD-TSN chunks that each
                 move the cumulative TSN by one (``--count`` up to 32,767 keeps them in the window).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Callable

from rtp.sctp import chunks as c
from rtp.sctp.association import SctpAssociation

PACKET_BUDGET = 1200
PORT = 5000


class Attack:
    """An established pair; ``victim`` is ours, the attacker writes raw packets to it."""

    def __init__(self) -> None:
        self.peer = SctpAssociation(True)
        self.victim = SctpAssociation(False)
        self.victim_tag = 0
        self.next_tsn = 0
        self.bytes_sent = 0
        self.packets_sent = 0
        self.peer.start(0.0)
        self._pump()
        self.peer.open_channel("attack")
        self._pump()

    def _pump(self) -> None:
        for _ in range(50):
            moved = False
            for packet in self.peer.packets_to_send(0.0):
                self._learn(packet)
                self.victim.receive_packet(packet, 0.0)
                moved = True
            for packet in self.victim.packets_to_send(0.0):
                for chunk in c.parse_packet(packet).chunks:
                    if isinstance(chunk, c.InitChunk):  # INIT or INIT-ACK: the tag we must use
                        self.victim_tag = chunk.initiate_tag
                self.peer.receive_packet(packet, 0.0)
                moved = True
            if not moved:
                return

    def _learn(self, packet: bytes) -> None:
        for chunk in c.parse_packet(packet).chunks:
            if isinstance(chunk, c.DataChunk):
                self.next_tsn = (chunk.tsn + 1) & 0xFFFFFFFF

    def send(self, chunks: list[bytes], now: float = 1.0) -> None:
        """Bundle serialized chunks into packets; deliver them and let the victim answer."""
        pieces: list[bytes] = []
        size = c.COMMON_HEADER_LENGTH
        for raw in chunks:
            if pieces and size + len(raw) > PACKET_BUDGET:
                self._deliver(pieces, now)
                pieces, size = [], c.COMMON_HEADER_LENGTH
            pieces.append(raw)
            size += len(raw)
        if pieces:
            self._deliver(pieces, now)

    def _deliver(self, pieces: list[bytes], now: float) -> None:
        packet = c.serialize_packet_from_chunks(PORT, PORT, self.victim_tag, b"".join(pieces))
        self.bytes_sent += len(packet)
        self.packets_sent += 1
        self.victim.receive_packet(packet, now)
        self.victim.packets_to_send(now)


def middle(tsn: int, stream: int = 1, ssn: int = 0) -> bytes:
    # Stream 0 carries the channel the handshake opened; the flood goes next to it.
    return c.serialize_chunk(c.DataChunk(0, tsn & 0xFFFFFFFF, stream, ssn, 51, b"m"))


def scenario_middle(attack: Attack, count: int) -> None:
    start = attack.next_tsn
    attack.send([middle(start + i) for i in range(count)])


def scenario_sparse_sack(attack: Attack, count: int) -> None:
    start = attack.next_tsn
    # TSN start is never sent, so none of these is in order and every one opens a gap.
    attack.send([middle(start + 2 + 2 * i, stream=1 + i % 16, ssn=i) for i in range(count)])
    for i in range(count):
        # A duplicate of something already buffered: the victim answers each with a SACK.
        attack.send([middle(start + 2 + 2 * (i % count), stream=1 + i % 16, ssn=i % count)])


def scenario_forward_tsn(attack: Attack, count: int) -> None:
    start = attack.next_tsn
    # Consecutive TSNs on alternating streams: nothing merges, all within the TSN window.
    ahead = start + count + 1
    attack.send([middle(ahead + i, stream=1 + i % 16, ssn=i // 16) for i in range(count)])
    forwards = [c.serialize_chunk(c.ForwardTsnChunk((start + i) & 0xFFFFFFFF, [])) for i in range(count)]
    attack.send(forwards)


SCENARIOS: dict[str, Callable[[Attack, int], None]] = {
    "middle": scenario_middle,
    "sparse-sack": scenario_sparse_sack,
    "forward-tsn": scenario_forward_tsn,
}


def run(name: str, count: int) -> dict[str, Any]:
    attack = Attack()
    started = time.process_time()
    SCENARIOS[name](attack, count)
    cpu = time.process_time() - started
    victim = attack.victim
    counters = victim.counters
    return {
        "scenario": name,
        "count": count,
        "attack_packets": attack.packets_sent,
        "attack_bytes": attack.bytes_sent,
        "victim_cpu_s": round(cpu, 4),
        "victim_us_per_packet": round(cpu / max(1, attack.packets_sent) * 1e6, 1),
        "victim_state": victim.state.value,
        "data_chunks_received": counters.data_chunks_received,
        "data_dropped_no_buffer": counters.data_dropped_no_buffer,
        "malformed_messages": counters.malformed_messages,
        "unexpected_chunks": counters.unexpected_chunks,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sctp_attack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=8000)
    parser.add_argument("--scenario", choices=sorted(SCENARIOS) + ["all"], default="all")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    names = sorted(SCENARIOS) if args.scenario == "all" else [args.scenario]
    results = []
    for name in names:
        result = run(name, args.count)
        results.append(result)
        if not args.json:
            print(f"{name}: {result['count']} fragments in {result['attack_packets']} packets "
                  f"({result['attack_bytes'] / 1000:.0f} KB) -> victim CPU {result['victim_cpu_s']:.3f} s "
                  f"({result['victim_us_per_packet']:.0f} us/packet); state {result['victim_state']}, "
                  f"dropped {result['data_dropped_no_buffer']}, malformed messages {result['malformed_messages']}, "
                  f"unexpected {result['unexpected_chunks']}", flush=True)
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
