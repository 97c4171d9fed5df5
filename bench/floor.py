"""The floor: the least a Python forwarder can do per packet — SRTP unprotect, then per
subscriber SRTP protect and a non-blocking ``sendto`` — measured like the server.

Three roles, each its own process so only the forwarder's CPU is counted:

* ``forward`` — one UDP socket; ``recvfrom_into`` a reused buffer until EAGAIN, then
  ``poll``; the sender's address picks its inbound SRTP context (one dict lookup, as the
  server's mux routes by address); packets of a forwarded SSRC go to every sink, each with
  its own outbound SRTP context (each subscriber has its own keys). No trio, no header
  rewriting, no RTCP, no statistics: a floor, not a server. Prints ``forwarded=<n>`` about
  once a second.
* ``traffic`` — the publishers (one socket each, synthetic media built by the load tester's
  own ``trio_sfu.client.synthetic`` at the same sizes and rates, SRTP-protected) and the
  sinks (one socket per subscriber, drained on a thread so the kernel path matches a real
  receiver's).

:func:`run_floor` starts both, samples the forwarder's CPU over a window after warm-up
and returns the same figures the scenarios report.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import select
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from rtp.srtp import SrtpContext
from rtp.srtp_profiles import SrtpProfile
from trio_sfu.client.synthetic import (
    AUDIO_PACKET_INTERVAL,
    OPUS_FRAME_SAMPLES,
    RtpStreamWriter,
    Vp8FrameSource,
    opus_payload,
    simulcast_layers,
)

from . import procstat

#: What the server negotiates first with our client (rtp.srtp_profiles.PREFERRED_SRTP_PROFILES).
PROFILE = SrtpProfile.AEAD_AES_128_GCM
SOCKET_BUFFER = 4 * 1024 * 1024
REPORT_EVERY = 1.0
_MASTER_LENGTH = PROFILE.key_length + PROFILE.salt_length


def _master(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()[:_MASTER_LENGTH]


def _udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
    sock.bind(("127.0.0.1", 0))
    return sock


def _ssrc(publisher: int, stream: int) -> int:
    return 0x10000000 | (publisher << 8) | stream


def forwarded_ssrcs(shape: dict[str, Any]) -> set[int]:
    """Audio, and the top video layer (what a subscriber gets by default), of every publisher."""
    out = set()
    for p in range(shape["publishers"]):
        if shape["audio"]:
            out.add(_ssrc(p, 0))
        if shape["video"]:
            layers = len(simulcast_layers(1280, 720, shape["video_bitrate"], shape["simulcast"]))
            out.add(_ssrc(p, layers))  # streams 1..layers are the video layers, lowest first
    return out


# ---------------------------------------------------------------------- forwarder


def forward(shape: dict[str, Any], publisher_ports: list[int], sink_ports: list[int]) -> None:
    sock = _udp_socket()
    sock.setblocking(False)
    inbound = {("127.0.0.1", port): SrtpContext(PROFILE, _master("unused"), _master(f"pub{i}"))
               for i, port in enumerate(publisher_ports)}
    outbound = [(SrtpContext(PROFILE, _master(f"sub{j}"), _master("unused")), ("127.0.0.1", port))
                for j, port in enumerate(sink_ports)]
    forwarded = forwarded_ssrcs(shape)
    print(f"floor ready port={sock.getsockname()[1]}", flush=True)
    buffer = bytearray(65536)
    view = memoryview(buffer)
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    sent = dropped = errors = 0
    next_report = time.monotonic() + REPORT_EVERY
    handled = 0
    sendto = sock.sendto
    while True:
        try:
            size, addr = sock.recvfrom_into(buffer)
        except BlockingIOError:
            poller.poll(100)
            size = 0
        if size:
            context = inbound.get(addr)
            if context is not None:
                try:
                    plain = context.unprotect_rtp(bytes(view[:size]))
                except Exception:
                    errors += 1
                    continue
                if int.from_bytes(plain[8:12], "big") in forwarded:
                    for out_context, dest in outbound:
                        try:
                            sendto(out_context.protect_rtp(plain), dest)
                            sent += 1
                        except BlockingIOError:
                            dropped += 1
            handled += 1
            if handled < 64:
                continue
            handled = 0
        now = time.monotonic()
        if now >= next_report:
            next_report = now + REPORT_EVERY
            print(f"forwarded={sent} dropped={dropped} errors={errors}", flush=True)


# ---------------------------------------------------------------------- traffic


def traffic(shape: dict[str, Any], forwarder_port_file: str) -> None:
    publishers = [_udp_socket() for _ in range(shape["publishers"])]
    sinks = [_udp_socket() for _ in range(shape["subscribers"])]
    print("traffic ports " + json.dumps({"publishers": [s.getsockname()[1] for s in publishers],
                                         "sinks": [s.getsockname()[1] for s in sinks]}), flush=True)
    port = int(sys.stdin.readline())
    dest = ("127.0.0.1", port)

    received = [0]

    def drain() -> None:
        poller = select.poll()
        by_fd = {s.fileno(): s for s in sinks}
        for s in sinks:
            s.setblocking(False)
            poller.register(s, select.POLLIN)
        while True:
            for fd, _ in poller.poll(1000):
                s = by_fd[fd]
                while True:
                    try:
                        s.recv(2048)
                        received[0] += 1
                    except BlockingIOError:
                        break

    threading.Thread(target=drain, daemon=True).start()

    # Every publisher's streams on one schedule: (due, kind, publisher index, state).
    layers = simulcast_layers(1280, 720, shape["video_bitrate"], shape["simulcast"]) if shape["video"] else []
    streams = []
    start = time.monotonic()
    for p, sock in enumerate(publishers):
        context = SrtpContext(PROFILE, _master(f"pub{p}"), _master("unused"))
        # Stagger publishers across one frame so their packets don't all leave at once.
        offset = p / max(1, len(publishers)) * 0.02
        if shape["audio"]:
            # mid (and rid for video) header extensions as our client sends, so packet sizes match.
            writer = RtpStreamWriter(_ssrc(p, 0), 111, {1: b"0"}, 0)
            streams.append([start + offset, "audio", sock, context, writer, None])
        for index, layer in enumerate(layers, start=1):
            writer = RtpStreamWriter(_ssrc(p, index), 96, {1: b"1", 2: layer.rid.encode()} if layer.rid else {1: b"1"}, 0)
            streams.append([start + offset, "video", sock, context, writer,
                            (layer, Vp8FrameSource(layer, writer.header_size))])
    timestamp = 0
    while True:
        stream = min(streams, key=lambda s: s[0])
        delay = stream[0] - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        due, kind, sock, context, writer, video = stream
        now_us = time.time_ns() // 1000
        if kind == "audio":
            packets = [writer.packet(opus_payload(now_us), writer.packets * OPUS_FRAME_SAMPLES, False)]
            stream[0] = due + AUDIO_PACKET_INTERVAL
        else:
            layer, source = video
            _, payloads = source.next_frame(now_us)
            timestamp = source.frames_sent * 3000
            packets = [writer.packet(payload, timestamp, i == len(payloads) - 1) for i, payload in enumerate(payloads)]
            stream[0] = due + 1.0 / layer.fps
        for packet in packets:
            try:
                sock.sendto(context.protect_rtp(packet), dest)
            except BlockingIOError:
                pass


# ---------------------------------------------------------------------- orchestration


def run_floor(shape: dict[str, Any], warmup: float = 2.0, window: float = 8.0) -> dict[str, Any]:
    """Start traffic + forwarder, measure the forwarder over ``window`` seconds after ``warmup``."""
    spec = json.dumps(shape)
    python = sys.executable
    traffic_proc = subprocess.Popen([python, "-m", "bench.floor", "traffic", spec], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, text=True)
    forwarder = None
    try:
        line = traffic_proc.stdout.readline()
        if not line.startswith("traffic ports "):
            raise RuntimeError(f"floor traffic did not start: {line!r}")
        ports = json.loads(line[len("traffic ports "):])
        forwarder = subprocess.Popen([python, "-m", "bench.floor", "forward", spec, json.dumps(ports)],
                                     stdout=subprocess.PIPE, text=True)
        line = forwarder.stdout.readline()
        if not line.startswith("floor ready port="):
            raise RuntimeError(f"floor forwarder did not start: {line!r}")
        traffic_proc.stdin.write(line.split("=", 1)[1])
        traffic_proc.stdin.flush()

        def report() -> tuple[procstat.ProcSample, procstat.ProcSample, int, int]:
            text = forwarder.stdout.readline()
            if not text:
                raise RuntimeError("floor forwarder exited")
            fields = dict(item.split("=") for item in text.split())
            return (procstat.sample(forwarder.pid), procstat.sample(traffic_proc.pid),
                    int(fields["forwarded"]), int(fields["dropped"]))

        deadline = time.monotonic() + warmup
        first = report()
        while time.monotonic() < deadline:
            first = report()
        last = report()
        while last[0].wall - first[0].wall < window:
            last = report()
        wall = last[0].wall - first[0].wall
        packets = last[2] - first[2]
        cpu = last[0].cpu_seconds - first[0].cpu_seconds
        cores = cpu / wall
        return {
            "shape": shape,
            "window_s": wall,
            "forwarded_pps": packets / wall,
            "send_dropped": last[3] - first[3],
            "cpu_cores": cores,
            "pps_per_core": packets / cpu if cpu > 0 else None,
            "cpu_us_per_packet": cpu / packets * 1e6 if packets else None,
            "rss_mb": last[0].rss_bytes / 2**20,
            "traffic_cpu_cores": procstat.cpu_share(first[1], last[1]),
        }
    finally:
        for proc in (forwarder, traffic_proc):
            if proc is not None:
                proc.kill()
                proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor")
    parser.add_argument("role", choices=("forward", "traffic"))
    parser.add_argument("shape", help="JSON traffic shape")
    parser.add_argument("ports", nargs="?", help="JSON ports (forward)")
    args = parser.parse_args(argv)
    shape = json.loads(args.shape)
    try:
        if args.role == "forward":
            ports = json.loads(args.ports)
            forward(shape, ports["publishers"], ports["sinks"])
        else:
            traffic(shape, "")
    except (KeyboardInterrupt, BrokenPipeError):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
