"""The compiled fan-out against the pure Python one, side by side in one process
(``python -m bench.fanout_paths``).

One simulcast VP8 TrackReceiver (the load tester's traffic shape: mid/rid extensions, three
layers, every subscriber on the top one) with N DownTracks, each on a downlink as the server's
subscriber transport is: transport-wide numbering (a real TransportSequencer), SRTP protect
with its own libsrtp context, a non-blocking send to a loopback sink nobody drains (the kernel
drops what overflows, as in bench.fanout). The same packets go through a receiver on each
path, runs alternating; it prints process CPU µs per forwarded packet, best of ``--repeat``.
The receive side (unprotect, routing) is not in it: that is ``python -m bench.fanout
--server-path``'s.
"""

from __future__ import annotations

import argparse
import json
import socket
import time

from rtp.header_extensions import encode_mid, encode_rid
from rtp.packet import RtpPacket
from rtp.srtp import SrtpContext
from rtp.srtp_profiles import SrtpProfile
from rtp.twcc_sender import TransportSequencer
from trio_sfu import native
from trio_sfu.forwarding import DownTrack, TrackReceiver
from trio_sfu.native import NativeSendTarget

MID_EXT, RID_EXT, TWCC_EXT = 1, 4, 3
PROFILE = SrtpProfile.AES128_CM_HMAC_SHA1_80


class _Downlink:
    def __init__(self, index: int, sink: tuple[str, int]) -> None:
        size = PROFILE.key_length + PROFILE.salt_length
        self.srtp = SrtpContext(PROFILE, bytes([index % 250 + 1]) * size, bytes(size))
        self.sequencer = TransportSequencer(TWCC_EXT)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.sink = sink
        self.now = 0.0

    @property
    def transport_sequencer(self) -> TransportSequencer:
        return self.sequencer

    def send_numbered_rtp(self, packet: bytes) -> bool:
        try:
            self.sock.sendto(self.srtp.protect_rtp(packet), self.sink)
        except OSError:
            return False
        return True

    def send_rtp(self, packet: bytes) -> bool:
        return self.send_numbered_rtp(self.sequencer.stamp(packet, self.now))

    def native_send_target(self) -> NativeSendTarget:
        return NativeSendTarget(self.srtp.outbound_handle, self.sock.fileno(), self.sink, lambda *counts: None,
                                owners=(self.srtp, self.sock))


def _packets(count: int) -> list[tuple[float, bytes]]:
    out = []
    seq = [100, 2000, 30000]
    for i in range(count):
        now = i / 900
        layer = i % 3
        payload = bytes([0x90, 0x80, 0x80 | (i >> 8 & 0x7F), i & 0xFF, 0x00 if i < 3 else 0x01]) + bytes(
            (200, 500, 1100)[layer])
        packet = RtpPacket(96, seq[layer] & 0xFFFF, 3000 * (i // 3), 0x1000 + layer, marker=True, payload=payload,
                           extensions={MID_EXT: encode_mid("1"), RID_EXT: encode_rid("qhf"[layer])}).serialize()
        seq[layer] += 1
        out.append((now, packet))
    return out


def _world(fast: bool, subscribers: int, sink: tuple[str, int]):
    receiver = TrackReceiver("TR_v", "video/VP8", 90000, send_rtcp=lambda b: True, local_ssrc=1,
                             rids=("q", "h", "f"), rid_extension_id=RID_EXT, fast_path=fast)
    downs, links = [], []
    for i in range(subscribers):
        link = _Downlink(i, sink)
        down = DownTrack(receiver, ssrc=0x5000 + i, payload_types={96: 96}, clock_rate=90000, mime_type="video/VP8",
                         send_rtp=link.send_rtp, send_rtcp=lambda b: True, target_layer=2,
                         extension_ids={MID_EXT: 1, RID_EXT: 2}, numbered=link)
        receiver.add_down_track(down)
        downs.append(down)
        links.append(link)
    return receiver, downs, links


def measure(fast: bool, subscribers: int, packets: list[tuple[float, bytes]], sink) -> tuple[float, int]:
    """CPU µs per forwarded packet, and the packets forwarded."""
    receiver, downs, links = _world(fast, subscribers, sink)
    warm, timed = packets[:300], packets[300:]
    for now, packet in warm:
        receiver.receive_rtp(packet, now)
    before = sum(d.counters.packets_sent for d in downs)
    start = time.process_time()
    for now, packet in timed:
        for link in links:
            link.now = now
        receiver.receive_rtp(packet, now)
    spent = time.process_time() - start
    forwarded = sum(d.counters.packets_sent for d in downs) - before
    for link in links:
        link.sock.close()
    return spent * 1e6 / max(forwarded, 1), forwarded


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fanout_paths")
    parser.add_argument("--subscribers", type=int, default=200)
    parser.add_argument("--packets", type=int, default=1500)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--only", choices=("pure", "compiled"), help="run one path (e.g. under a profiler)")
    args = parser.parse_args()
    sink_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink_sock.bind(("127.0.0.1", 0))
    sink = sink_sock.getsockname()
    packets = _packets(args.packets)
    paths = [False, True] if native.FAST_PATH else [False]
    if args.only:
        paths = [args.only == "compiled"]
    runs: dict[bool, list[float]] = {p: [] for p in paths}
    forwarded: dict[bool, int] = {}
    for _ in range(args.repeat):
        for fast in paths:
            us, n = measure(fast, args.subscribers, packets, sink)
            runs[fast].append(us)
            forwarded[fast] = n
    result = {"subscribers": args.subscribers, "fast_path_available": native.FAST_PATH,
              "pure_us_per_packet": min(runs[False]) if runs.get(False) else None,
              "forwarded": next(iter(forwarded.values()))}
    if runs.get(True):
        result["compiled_us_per_packet"] = min(runs[True])
        if runs.get(False):
            result["speedup"] = min(runs[False]) / min(runs[True])
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
