"""In-process cost of the forwarding fan-out, robust to a busy machine (``python -m bench.fanout``).

One TrackReceiver with N DownTracks (``--subscribers``), each DownTrack's ``send_rtp`` doing what
the server's does at the bottom — SRTP protect with its own context and a non-blocking ``sendto``
to a drained-by-nobody loopback sink — fed VP8 packets built like the load tester's (mid/rid
header extensions, send stamps). Reports process CPU µs per forwarded packet, best of
``--repeat`` runs; with ``--bare`` the same loop without receiver/DownTrack (protect + sendto
only) gives the share that is not forwarding logic. The layers between (the server's
TransportEndpoint in trio_sfu.media.transport, its PeerSession, UdpMux) are not included there.

``--server-path`` measures the server's own per-packet path instead, with its real objects:
SRTP-protected datagrams handed to ``UdpMux.route`` -> the publisher's ``TransportEndpoint``
and its ``PeerSession`` (SRTP unprotect, transport-cc arrival noted) -> ``PublisherMedia.on_rtp``
-> ``TrackReceiver`` -> each ``DownTrack`` -> the subscriber's ``TransportEndpoint.send_rtp``
(protect, non-blocking ``sendto``), with the publisher's timers served as its participant's
timer task would (transport-cc feedback, receiver reports). Only the handshakes are skipped:
each transport is put into CONNECTED with SRTP keyed, as a DTLS handshake would leave it. With
``--subscribers 0`` it is the ingest alone (mux, endpoint, session, publisher ingest, receiver),
per packet taken in.
"""

from __future__ import annotations

import argparse
import math
import socket
import time
from typing import Callable, Optional

import attrs

from rtp.srtp import SrtpContext
from trio_sfu.client.synthetic import RtpStreamWriter, VideoLayerSpec, Vp8FrameSource
from trio_sfu.forwarding.downtrack import DownTrack
from trio_sfu.forwarding.receiver import TrackReceiver
from trio_sfu.media.speakers import AudioLevelConfig
from trio_sfu.tracks import FifoHead, RecordedAtClosing

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


_CID = "cid-video"
_TRACK_SID = "TR_bench"
_EXT_MID, _EXT_TWCC = 1, 3


def _publisher_offer(fingerprint: str) -> str:
    """A libwebrtc-shaped publisher offer: VP8 video named by the mid header extension, with
    transport-wide CC, and the data channels' m=application (as LiveKit clients offer)."""
    lines = [
        "v=0", "o=- 1 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0 1", "a=msid-semantic: WMS *",
        "m=video 9 UDP/TLS/RTP/SAVPF 96", "c=IN IP4 0.0.0.0", "a=ice-ufrag:benc", "a=ice-pwd:" + "p" * 24,
        f"a=fingerprint:sha-256 {fingerprint}", "a=setup:actpass", "a=mid:0",
        f"a=extmap:{_EXT_MID} urn:ietf:params:rtp-hdrext:sdes:mid",
        f"a=extmap:{_EXT_TWCC} http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
        "a=sendonly", "a=rtcp-mux", f"a=msid:stream {_CID}", "a=rtpmap:96 VP8/90000",
        "a=rtcp-fb:96 nack", "a=rtcp-fb:96 nack pli", "a=rtcp-fb:96 transport-cc",
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel", "c=IN IP4 0.0.0.0", "a=ice-ufrag:benc",
        "a=ice-pwd:" + "p" * 24, f"a=fingerprint:sha-256 {fingerprint}", "a=setup:actpass", "a=mid:1",
        "a=sctp-port:5000", "a=max-message-size:262144",
    ]
    return "\r\n".join(lines) + "\r\n"


class _BenchTimers:
    """`TimerLoop`'s bookkeeping without its task: the measuring loop serves the parts itself
    when a packet's `now` reaches the earliest deadline, as the participant's timer task would."""

    def __init__(self, parts: tuple, at_least_every: float) -> None:
        self.parts = parts
        self.at_least_every = at_least_every
        self.armed = math.inf

    def wake_by(self, deadline: Optional[float]) -> None:
        if deadline is not None and deadline < self.armed:
            self.armed = deadline

    def serve(self, now: float) -> None:
        from trio_sfu.media.timers import TimerLoop

        for part in self.parts:
            part.handle_timeout(now)
        self.armed = TimerLoop.earliest(self.parts, now + self.at_least_every)


@attrs.define
class _BenchService:
    """What ParticipantTransports and RoomMedia need of the node's media service."""

    certificate: object
    fingerprints: tuple
    mux: object
    metrics: object
    candidates: tuple = ("1 1 udp 2130706431 127.0.0.1 9 typ host",)
    relay: None = None
    rooms: dict = attrs.Factory(dict)
    # The rules that ship (trio_sfu.media.service.MediaService has the same defaults).
    resolution: object = FifoHead
    resume_policy: object = RecordedAtClosing
    audio_levels: AudioLevelConfig = attrs.Factory(AudioLevelConfig)
    congestion_control: bool = False


@attrs.define
class _BenchParticipant:
    """The publisher as its media sees it (trio_sfu.signal.media_port.MediaParticipant)."""

    sid: str
    identity: str
    grants: object
    tracks: dict
    track_by_cid: dict
    subscriptions: dict = attrs.Factory(dict)
    track_settings: dict = attrs.Factory(dict)
    migrated_in: None = None

    def send(self, response: object) -> None:
        pass

    def unpublish_track(self, track_sid: str) -> None:
        return None


def _key(endpoint, remote: tuple[str, int], label: str) -> None:
    """Put a server endpoint's transport where a handshake with `remote` leaves it (a measuring
    harness only: it sets the state ICE and DTLS would have set)."""
    from rtp.peer_transport import TransportState

    transport = endpoint.transport
    transport._srtp = SrtpContext(PROFILE, _master(f"{label}-server"), _master(f"{label}-client"))
    transport._selected = remote
    transport._ice._valid[remote] = 0.0
    transport.state = TransportState.CONNECTED


def _frames(source, writer, twcc: Callable[[], int], count: int, first_timestamp: int) -> list[bytes]:
    """`count` frames' RTP packets, each with its transport-wide sequence number."""
    from rtp.packet import find_extension_span

    out: list[bytes] = []
    for _ in range(count):
        _, payloads = source.next_frame(source.frames_sent * 33_333)
        timestamp = first_timestamp + source.frames_sent * 3000
        for i, payload in enumerate(payloads):
            packet = bytearray(writer.packet(payload, timestamp, i == len(payloads) - 1))
            span = find_extension_span(packet, _EXT_TWCC)
            assert span is not None and span[1] == 2
            packet[span[0]:span[0] + 2] = twcc().to_bytes(2, "big")
            out.append(bytes(packet))
    return out


async def _server_path(subscribers: int, packets: int) -> float:
    import datetime
    import itertools

    import trio
    from livekit.protocol import models

    from rtp.dtls import DtlsCertificate
    from trio_sfu.log import get_logger
    from trio_sfu.media.data_channels import ParticipantData
    from trio_sfu.media.publishing import PublisherMedia
    from trio_sfu.media.participant_media import REPORT_INTERVAL
    from trio_sfu.media.room_media import RoomMedia
    from trio_sfu.media.transport import ParticipantTransports
    from trio_sfu.media.udp_mux import UdpMux
    from trio_sfu.metrics import Metrics
    from trio_sfu.signal.grants import ClaimGrants
    from trio_sfu.client.synthetic import RtpStreamWriter, VideoLayerSpec, Vp8FrameSource

    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)  # overflow: the kernel drops
    dest = sink.getsockname()
    metrics = Metrics()
    mux = UdpMux.bind("127.0.0.1", 0, metrics)
    certificate = DtlsCertificate.generate(datetime.datetime.now(datetime.timezone.utc))
    from sdp.model import Fingerprint

    fingerprints = (Fingerprint("sha-256", certificate.fingerprint()),)
    service = _BenchService(certificate, fingerprints, mux, metrics)
    log = get_logger("bench.fanout")
    timers = _BenchTimers((), REPORT_INTERVAL)
    try:
        info = models.TrackInfo(sid=_TRACK_SID, type=models.TrackType.VIDEO, source=models.TrackSource.CAMERA)
        participant = _BenchParticipant("PA_pub", "pub", ClaimGrants(api_key="bench"), {_TRACK_SID: info},
                                        {_CID: _TRACK_SID})
        room = RoomMedia(service, "bench", "RM_bench")
        transports = ParticipantTransports(service, wake_by=timers.wake_by, metrics=metrics, log=log)
        publishing = PublisherMedia("PA_pub", participant, room, transports, migrated_streams={},
                                    wake_by=timers.wake_by, metrics=metrics, log=log)
        # What ParticipantMedia.handle_publisher_offer does with a client's offer.
        answer = publishing.answer_offer(_publisher_offer(certificate.fingerprint()))
        assert answer is not None
        publisher = transports.open_publisher(answer.dtls_role, answer.remote_ufrag, answer.remote_pwd,
                                              answer.remote_fingerprints, on_rtp=publishing.on_rtp,
                                              on_rtcp=publishing.on_rtcp)
        publishing.apply(answer.media)
        publisher.session.set_transport_cc_extension(publishing.transport_cc_extension)
        data = ParticipantData(sid="PA_pub", identity="pub", may_publish_data=lambda: True, peers=lambda: [],
                               metrics=metrics)
        publisher.open_data(data, answer.sctp)
        # The publisher's timers, as ParticipantMedia's loop serves them (its RTCP goes to the sink).
        timers.parts = (transports, publishing)
        _key(publisher, dest, "pub")
        mux.by_addr[dest] = publisher  # as UdpMux.route does once ICE validated it
        client = SrtpContext(PROFILE, _master("pub-client"), _master("pub-server"))

        seq = itertools.count(1)
        writer = RtpStreamWriter(0x1234, 96, {_EXT_MID: b"0", _EXT_TWCC: b"\x00\x00"}, 0)
        source = Vp8FrameSource(VideoLayerSpec("", 1280, 720, 1_700_000), writer.header_size)
        now = trio.current_time()
        # The first frames match the track and publish it (a receiver with no down tracks yet).
        for packet in _frames(source, writer, lambda: next(seq) & 0xFFFF, 10, 0):
            now += 0.0002
            mux.route(client.protect_rtp(packet), dest, now)
        track = publishing.tracks_by_mid["0"]
        assert track.published, "the warm-up packets must publish the track"
        receiver = track.receiver
        for index in range(subscribers):
            sub = ParticipantTransports(service, wake_by=timers.wake_by, metrics=metrics, log=log)
            endpoint = sub.open_subscriber(answer.dtls_role, f"s{index:04d}", "q" * 24, fingerprints,
                                           on_rtcp=lambda packets, now: None, on_connected=lambda now: None)
            _key(endpoint, dest, f"sub{index}")
            receiver.add_down_track(DownTrack(receiver, ssrc=0x5000 + index, payload_types={96: 96},
                                              clock_rate=90000, mime_type="video/VP8", send_rtp=sub.send_down,
                                              send_rtcp=sub.send_subscriber_rtcp, extension_ids={_EXT_MID: 4}))
        source.request_keyframe()  # the down tracks start at the next keyframe
        wire: list[bytes] = []
        while len(wire) < packets:
            wire += [client.protect_rtp(p) for p in _frames(source, writer, lambda: next(seq) & 0xFFFF, 1, 0)]
        sent_before = sum(d.counters.packets_sent for d in receiver.down_tracks)
        route = mux.route
        serve = timers.serve
        timers.armed = now  # the first packet finds the loop awake
        start = time.process_time()
        for datagram in wire:
            now += 0.0002
            route(datagram, dest, now)
            if now >= timers.armed:
                serve(now)
        elapsed = time.process_time() - start
        if len(wire) * 0.0002 > 0.25:  # past two transport-cc feedback intervals (0.1 s)
            assert publisher.transport.counters.rtcp_sent > 0, "the timers must have sent feedback"
        sent = sum(d.counters.packets_sent for d in receiver.down_tracks) - sent_before
        assert sent >= len(wire) * subscribers * 0.99, f"only {sent} of {len(wire) * subscribers} forwarded"
        assert receiver.counters.packets >= len(wire), "the ingest must take every packet"
        return elapsed / (sent or len(wire)) * 1e6
    finally:
        mux.sock.close()
        sink.close()


def run_server_path(subscribers: int, packets: int) -> float:
    """CPU µs per forwarded packet through the server's own objects (see the module docstring)."""
    import trio

    return trio.run(_server_path, subscribers, packets)


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
    parser.add_argument("--server-path", action="store_true",
                        help="instead: the server's mux -> endpoint -> publisher ingest -> receiver -> "
                             "DownTrack -> endpoint send path, with its real objects")
    args = parser.parse_args()
    if args.server_path:
        best = min(run_server_path(args.subscribers, args.packets) for _ in range(args.repeat))
        what = "per forwarded packet" if args.subscribers else "per packet taken in (no subscribers)"
        print(f"server path (mux -> endpoint -> ingest -> receiver -> DownTrack -> endpoint send): {best:.2f} us CPU "
              f"{what} ({args.subscribers} subscribers, best of {args.repeat})")
        return
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
