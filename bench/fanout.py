"""In-process cost of the forwarding fan-out, robust to a busy machine (``python -m bench.fanout``).

One TrackReceiver with N DownTracks (``--subscribers``), each DownTrack's ``send_rtp`` doing what
the server's does at the bottom — SRTP protect with its own context and a non-blocking ``sendto``
to a drained-by-nobody loopback sink — fed VP8 packets built like the load tester's (mid/rid
header extensions, send stamps). Reports process CPU µs per forwarded packet, best of
``--repeat`` runs; with ``--bare`` the same loop without receiver/DownTrack (protect + sendto
only) gives the share that is not forwarding logic. The layers between (the server's
TransportEndpoint in trio_sfu.media.transport, PeerTransport, UdpMux) are not included: the
scenarios measure those.
"""

from __future__ import annotations

import argparse
import socket
import time

from rtp.srtp import SrtpContext
from trio_sfu.client.synthetic import RtpStreamWriter, VideoLayerSpec, Vp8FrameSource
from trio_sfu.forwarding.downtrack import DownTrack
from trio_sfu.forwarding.receiver import TrackReceiver

from .floor import PROFILE, _master


def _packets(count: int) -> list[bytes]:
    layer = VideoLayerSpec("", 1280, 720, 1_700_000)
    writer = RtpStreamWriter(0x1234, 96, {1: b"1", 2: b"f"}, 0)
    source = Vp8FrameSource(layer, writer.header_size, keyframe_interval=3.0)
    out: list[bytes] = []
    while len(out) < count:
        _, payloads = source.next_frame(time.time_ns() // 1000)
        out += [writer.packet(p, source.frames_sent * 3000, i == len(payloads) - 1) for i, p in enumerate(payloads)]
    return out


def _keyed_transport(index: int, dest, certificate):
    """A lite PeerTransport put straight into CONNECTED with SRTP keyed, as after a handshake
    (a measuring harness only: it sets the state a DTLS handshake would have set)."""
    from rtp.peer_transport import IceMode, PeerTransport, TransportState
    from rtp.dtls import DtlsRole

    transport = PeerTransport(IceMode.LITE, DtlsRole.SERVER, local_ufrag=f"u{index:04d}", local_pwd="p" * 24,
                              certificate=certificate, remote_ufrag="r", remote_pwd="q" * 24,
                              remote_fingerprints=[("sha-256", certificate.fingerprint())])
    transport._srtp = SrtpContext(PROFILE, _master(f"sub{index}"), _master("unused"))
    transport._selected = dest
    transport.state = TransportState.CONNECTED
    return transport


def run_transports(subscribers: int, packets: int, direct: bool) -> float:
    """PeerTransport + UdpMux send path per subscriber, as the server's TransportEndpoint.send_rtp
    drives it: queued (send_rtp, datagrams_to_send, UdpMux.send) or direct
    (protect_rtp_datagram, UdpMux.send_one)."""
    from rtp.dtls import DtlsCertificate
    from trio_sfu.metrics import Metrics
    from trio_sfu.media.udp_mux import UdpMux

    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    dest = sink.getsockname()
    mux = UdpMux.bind("127.0.0.1", 0, Metrics())
    import datetime

    certificate = DtlsCertificate.generate(datetime.datetime.now(datetime.timezone.utc))
    transports = [_keyed_transport(i, dest, certificate) for i in range(subscribers)]
    wire = _packets(packets)
    start = time.process_time()
    if direct:
        send_one = mux.send_one
        for packet in wire:
            for transport in transports:
                datagram = transport.protect_rtp_datagram(packet)
                if datagram is not None:
                    send_one(datagram[0], datagram[1])
    else:
        send = mux.send
        for packet in wire:
            for transport in transports:
                if transport.send_rtp(packet):
                    out = transport.datagrams_to_send(0.0)
                    if out:
                        send(out)
    elapsed = time.process_time() - start
    mux.sock.close()
    sink.close()
    return elapsed / (len(wire) * subscribers) * 1e6


def run(subscribers: int, packets: int, bare: bool) -> float:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)  # overflow: the kernel drops, as cheap as a drain
    dest = sink.getsockname()
    out_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    out_sock.setblocking(False)
    sendto = out_sock.sendto

    def sender(index: int):
        protect = SrtpContext(PROFILE, _master(f"sub{index}"), _master("unused")).protect_rtp

        def send_rtp(packet: bytes) -> bool:
            try:
                sendto(protect(packet), dest)
            except BlockingIOError:
                pass
            return True
        return send_rtp

    senders = [sender(i) for i in range(subscribers)]
    wire = _packets(packets)
    if bare:
        start = time.process_time()
        for packet in wire:
            for send in senders:
                send(packet)
        return (time.process_time() - start) / (len(wire) * subscribers) * 1e6
    receiver = TrackReceiver("bench", "video/VP8", 90000, send_rtcp=lambda b: True, local_ssrc=1, now=0.0)
    for index, send in enumerate(senders):
        receiver.add_down_track(DownTrack(receiver, ssrc=0x5000 + index, payload_types={96: 96}, clock_rate=90000,
                                          mime_type="video/VP8", send_rtp=send, send_rtcp=lambda b: True,
                                          extension_ids={1: 4, 2: 10}))
    start = time.process_time()
    now = 0.0
    for packet in wire:
        now += 0.0002
        receiver.receive_rtp(packet, now)
    elapsed = time.process_time() - start
    sent = sum(d.counters.packets_sent for d in receiver.down_tracks)
    return elapsed / sent * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fanout")
    parser.add_argument("--subscribers", type=int, default=200)
    parser.add_argument("--packets", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--bare", action="store_true", help="protect + sendto only, no forwarding objects")
    parser.add_argument("--transport-path", choices=("queued", "direct"),
                        help="instead: the PeerTransport + UdpMux send path alone, queued or direct")
    args = parser.parse_args()
    if args.transport_path:
        best = min(run_transports(args.subscribers, args.packets, args.transport_path == "direct")
                   for _ in range(args.repeat))
        print(f"PeerTransport + UdpMux, {args.transport_path}: {best:.2f} us CPU per packet "
              f"({args.subscribers} subscribers, best of {args.repeat})")
        return
    best = min(run(args.subscribers, args.packets, args.bare) for _ in range(args.repeat))
    what = "protect+sendto only" if args.bare else "receiver -> DownTrack -> protect+sendto"
    print(f"{what}: {best:.2f} us CPU per forwarded packet ({args.subscribers} subscribers, best of {args.repeat})")


if __name__ == "__main__":
    main()
