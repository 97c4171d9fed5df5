"""Throughput of the sans-IO SCTP stack, our association to our association, no I/O.

    .venv/bin/python bench/sctp_bench.py [--loss 0.0] [--size 1200] [--count 20000]

Reports wall-clock throughput of the Python work per message (codec, CRC32c,
SACK handling, reassembly); the link is a list, so this is the CPU ceiling of
one data channel, not a network measurement.
"""

from __future__ import annotations

import argparse
import random
import time

from rtp.sctp import MessageReceived, SctpAssociation


def run(count: int, size: int, loss: float, seed: int) -> None:
    rng = random.Random(seed)
    a = SctpAssociation(True, max_message_size=1 << 20, remote_max_message_size=1 << 20)
    b = SctpAssociation(False, max_message_size=1 << 20, remote_max_message_size=1 << 20)
    now = 0.0
    a.start(now)
    sid = a.open_channel("bench")
    payload = rng.randbytes(size)
    for _ in range(count):
        a.send(sid, payload)
    received = 0
    packets = 0
    started = time.perf_counter()
    while received < count:
        moved = False
        for x, y in ((a, b), (b, a)):
            for packet in x.packets_to_send(now):
                packets += 1
                moved = True
                if rng.random() >= loss:
                    y.receive_packet(packet, now)
        while (event := b.next_event()) is not None:
            if isinstance(event, MessageReceived):
                received += 1
        while a.next_event() is not None:
            pass
        if not moved:
            # Nothing in flight can move without a timer: jump the simulated clock to it.
            deadlines = [t for t in (a.next_deadline(), b.next_deadline()) if t is not None]
            now = max(now, min(deadlines)) if deadlines else now + 0.01
            a.handle_timeout(now)
            b.handle_timeout(now)
        else:
            now += 0.001
    elapsed = time.perf_counter() - started
    mb = count * size / 1e6
    print(
        f"{count} x {size} B, loss {loss:.0%}: {elapsed:.2f} s wall, {mb / elapsed:.1f} MB/s, "
        f"{count / elapsed:.0f} msg/s, {packets / elapsed:.0f} packets/s, "
        f"delivered {b.counters.messages_received}, retransmitted {a.counters.chunks_retransmitted}, simulated {now:.1f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--loss", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    run(args.count, args.size, args.loss, args.seed)


if __name__ == "__main__":
    main()
