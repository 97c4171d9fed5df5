"""End to end: aiortc (an independent asyncio WebRTC stack) publishes audio to our PeerTransport.

aiortc runs in a subprocess (``tests/aiortc_peer.py``) and trades SDP and reports
with us as JSON lines on its stdin/stdout. Our side stays on Trio: one UDP socket
on 127.0.0.1 (ephemeral port), ``sdp.negotiator.answer_offer`` for the answer
(ICE-lite, our fingerprint, ``a=setup:passive`` so aiortc is the DTLS client, one
host candidate), and a small driver that moves datagrams between the socket and
the sans-IO transport.

What has to work for the assertions to hold: aiortc's ICE (aioice, controlling)
against our lite agent; its OpenSSL DTLS client against our DTLS server, each side
checking the other's certificate against the SDP fingerprint; its libsrtp keys and
ours from the same exporter; and its RTCP parser reading our SRTCP (an RR it turns
into ``remote-inbound-rtp`` stats with a round-trip time, a PLI, a NACK it answers).
"""

from __future__ import annotations

import json
import math
import os
import secrets
import subprocess
import sys

import pytest
import trio

from dtls_helpers import make_certificate
from rtp import rtcp
from rtp.dtls import DtlsRole
from rtp.packet import RtpPacket, parse as parse_rtp
from rtp.peer_transport import IceMode, PeerTransport, TransportState
from rtp.peer_transport_events import (
    RtcpReceived,
    RtpReceived,
    TransportClosed,
    TransportConnected,
    TransportFailed,
)
from rtp.srtp_profiles import SrtpProfile
from sdp.model import Fingerprint
from sdp.negotiator import LocalParams, answer_offer, local_dtls_role, negotiated_media
from sdp.parser import parse, serialize

AIORTC_PEER = os.path.join(os.path.dirname(__file__), "aiortc_peer.py")
OUR_RTCP_SSRC = 0x5EEDF00D
OUR_MEDIA_SSRC = 0x0BADCAFE
#: Distinctive numbers in our RR, so aiortc's stats can only have come from it.
REPORTED_LOST, REPORTED_FRACTION, REPORTED_JITTER = 3, 7, 42
GCM, CM = SrtpProfile.AEAD_AES_128_GCM, SrtpProfile.AES128_CM_HMAC_SHA1_80
OPENSSL_NAME = {GCM: "SRTP_AEAD_AES_128_GCM", CM: "SRTP_AES128_CM_SHA1_80"}


def dominant_frequency(opus_payloads: list[bytes]) -> float:
    """Decode with libopus (through PyAV) and find the strongest tone: the payloads we
    decrypted are the very Opus frames aiortc encoded from its 440 Hz sine."""
    import av
    import numpy

    decoder = av.CodecContext.create("libopus", "r")
    pcm = []
    for payload in opus_payloads:
        for frame in decoder.decode(av.Packet(payload)):
            channels = frame.to_ndarray()
            if not frame.format.is_planar:  # packed: one row of interleaved samples
                channels = channels.reshape(-1, len(frame.layout.channels)).T
            pcm.append(channels[0].astype(numpy.float64))
    samples = numpy.concatenate(pcm)
    spectrum = numpy.abs(numpy.fft.rfft(samples * numpy.hanning(len(samples))))
    return float(numpy.fft.rfftfreq(len(samples), 1 / decoder.sample_rate)[numpy.argmax(spectrum)])


class JsonLines:
    """Newline-delimited JSON over a Trio byte stream."""

    def __init__(self, receive, send) -> None:
        self._receive = receive
        self._send = send
        self._buffer = b""

    async def read(self) -> dict:
        while b"\n" not in self._buffer:
            chunk = await self._receive.receive_some(65536)
            if not chunk:
                raise EOFError("aiortc peer closed its stdout")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)

    async def write(self, message: dict) -> None:
        await self._send.send_all(json.dumps(message).encode() + b"\n")


class Driver:
    """Moves datagrams between a Trio UDP socket and a PeerTransport, and runs its timer."""

    def __init__(self, transport: PeerTransport, sock: trio.socket.SocketType, on_event) -> None:
        self.transport = transport
        self.sock = sock
        self.on_event = on_event
        self.events: list = []

    async def flush(self) -> None:
        # Handling an event may queue more output (an RR answering an SR), so loop until quiet.
        while True:
            out = self.transport.datagrams_to_send(trio.current_time())
            for datagram, addr in out:
                await self.sock.sendto(datagram, addr)
            handled = False
            while (event := self.transport.next_event()) is not None:
                handled = True
                self.events.append(event)
                self.on_event(event, trio.current_time())
            if not out and not handled:
                return

    async def run(self) -> None:
        self.transport.start(trio.current_time())
        while True:
            await self.flush()
            deadline = self.transport.next_deadline()
            with trio.move_on_at(math.inf if deadline is None else deadline):
                data, addr = await self.sock.recvfrom(65536)
                self.transport.receive_datagram(data, addr[:2], trio.current_time())
                continue
            self.transport.handle_timeout(trio.current_time())

    def of(self, kind) -> list:
        return [e for e in self.events if isinstance(e, kind)]


class FeedbackSender:
    """Answers every SR from aiortc's SSRC with an RR (LSR/DLSR filled in, RFC 3550 §6.4.1)."""

    def __init__(self, transport: PeerTransport, media_ssrc: int) -> None:
        self.transport = transport
        self.media_ssrc = media_ssrc
        self.highest_seq = 0
        self.sender_reports = 0
        self.receiver_reports = 0
        self.other_rtcp: list[str] = []

    def __call__(self, event, now: float) -> None:
        if isinstance(event, RtpReceived):
            self.highest_seq = parse_rtp(event.packet).sequence_number
        elif isinstance(event, RtcpReceived):
            for packet in rtcp.parse_rtcp(event.packet):
                if isinstance(packet, rtcp.SenderReport) and packet.ssrc == self.media_ssrc:
                    self.sender_reports += 1
                    self._answer(packet, now, arrived=now)
                else:
                    self.other_rtcp.append(type(packet).__name__)

    def _answer(self, sr: rtcp.SenderReport, now: float, arrived: float) -> None:
        # DLSR in 1/65536 s, at least 1: aiortc only computes a round trip when DLSR is non-zero.
        dlsr = max(1, int((now - arrived) * 65536))
        block = rtcp.ReportBlock(
            self.media_ssrc,
            fraction_lost=REPORTED_FRACTION,
            packets_lost=REPORTED_LOST,
            highest_sequence=self.highest_seq,
            jitter=REPORTED_JITTER,
            lsr=rtcp.compact_ntp(sr.ntp_timestamp),
            dlsr=dlsr,
        )
        if self.transport.send_rtcp(rtcp.ReceiverReport(OUR_RTCP_SSRC, [block]).serialize()):
            self.receiver_reports += 1


@pytest.mark.parametrize(
    "aiortc_offers, we_accept, expected",
    [
        ("all", (GCM, CM), GCM),
        ("all", (CM,), CM),
        ("cm", (GCM, CM), CM),
    ],
    ids=["aiortc-all-we-prefer-gcm", "aiortc-all-we-take-cm", "aiortc-cm-only"],
)
async def test_aiortc_publishes_audio_through_ice_dtls_srtp(aiortc_offers, we_accept, expected):
    certificate = make_certificate()
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]

    proc = await trio.lowlevel.open_process(
        [sys.executable, AIORTC_PEER, aiortc_offers], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    peer = JsonLines(proc.stdout, proc.stdin)
    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                await _exchange(nursery, peer, sock, port, certificate, we_accept, expected)
                nursery.cancel_scope.cancel()
    finally:
        with trio.move_on_after(5):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        sock.close()


async def _exchange(nursery, peer, sock, port, certificate, we_accept, expected) -> None:
    offer_message = await peer.read()
    assert offer_message["type"] == "offer"
    offer = parse(offer_message["sdp"])
    # Gathered on loopback with no ICE server (tests/local_peers.py): host candidates on
    # 127.0.0.1 only, nothing reflexive or relayed from beyond this machine.
    gathered = [c.to_aioice() for m in offer.media for c in m.candidates]
    assert gathered and {(c.host, c.type) for c in gathered} == {("127.0.0.1", "host")}, gathered
    local = LocalParams(
        ice_ufrag=secrets.token_hex(4),
        ice_pwd=secrets.token_hex(12),
        fingerprints=(Fingerprint("sha-256", certificate.fingerprint()),),
        candidates=(f"1 1 udp 2130706431 127.0.0.1 {port} typ host",),
    )
    answer = answer_offer(offer, local)
    assert answer.ice_lite
    first = offer.media[0]
    audio = negotiated_media(offer, answer)[first.mid]
    opus_pt = audio.payload_type("opus")
    (aiortc_ssrc,) = audio.ssrcs
    offered_fingerprints = [(f.algorithm, f.value) for f in offer.effective_fingerprints(first)]

    transport = PeerTransport(
        IceMode.LITE,
        DtlsRole(local_dtls_role(answer, local_is_offerer=False).value),
        local_ufrag=local.ice_ufrag,
        local_pwd=local.ice_pwd,
        certificate=certificate,
        remote_ufrag=offer.effective_ufrag(first),
        remote_pwd=offer.effective_pwd(first),
        remote_fingerprints=offered_fingerprints,
        srtp_profiles=we_accept,
    )
    assert transport.dtls_role is DtlsRole.SERVER  # we answered a=setup:passive
    feedback = FeedbackSender(transport, aiortc_ssrc)
    driver = Driver(transport, sock, feedback)
    nursery.start_soon(driver.run)
    await peer.write({"type": "answer", "sdp": serialize(answer)})

    connected = await peer.read()
    assert connected["type"] == "connected", connected
    assert connected["dtls_role"] == "client" and connected["ice_role"] == "controlling"
    # Both sides speak the same profile, and aiortc verified the certificate we promised in SDP.
    assert connected["srtp_profile"] == OPENSSL_NAME[expected]
    assert connected["peer_certificate_sha256"] == certificate.fingerprint()
    assert connected["ssrc"] == aiortc_ssrc

    while not driver.of(TransportConnected):
        await trio.sleep(0.02)
    (ours,) = driver.of(TransportConnected)
    assert ours.srtp_profile is expected and transport.srtp_profile is expected
    # Our DTLS checked aiortc's certificate against every fingerprint in its offer.
    assert ("sha-256", ours.peer_fingerprint) in offered_fingerprints
    assert ours.addr[0] == "127.0.0.1" and transport.selected_address == ours.addr

    # Media: decrypted on our side, from the SSRC and with the payload type the SDP promised.
    while len(driver.of(RtpReceived)) < 50 or feedback.receiver_reports < 2:
        await trio.sleep(0.05)
    packets = [parse_rtp(e.packet) for e in driver.of(RtpReceived)]
    assert {p.ssrc for p in packets} == {aiortc_ssrc}
    assert {p.payload_type for p in packets} == {opus_pt}
    assert all((b.sequence_number - a.sequence_number) & 0xFFFF == 1 for a, b in zip(packets, packets[1:]))
    assert all((b.timestamp - a.timestamp) & 0xFFFFFFFF == 960 for a, b in zip(packets, packets[1:]))
    assert dominant_frequency([p.payload for p in packets[10:]]) == pytest.approx(440, abs=5)
    assert "Sdes" in feedback.other_rtcp  # aiortc's compound SR+SDES parsed by our RTCP codec

    # Feedback aiortc must decrypt and act on: a PLI, and a NACK for a packet we already have
    # (aiortc resends it as is, so our SRTP replay window must drop the copy).
    nacked = packets[-5].sequence_number
    replayed_before = transport.counters.srtp_replayed
    assert transport.send_rtcp(
        rtcp.serialize_rtcp(
            [
                rtcp.ReceiverReport(OUR_RTCP_SSRC),
                rtcp.Pli(OUR_RTCP_SSRC, aiortc_ssrc),
                rtcp.Nack.from_lost(OUR_RTCP_SSRC, aiortc_ssrc, [nacked]),
            ]
        )
    )
    # RTP the other way: aiortc has no receiver for it (the publisher answer is recvonly),
    # but its SRTP session must still decrypt it before routing drops it.
    ours_rtp = [
        RtpPacket(
            payload_type=opus_pt, sequence_number=4000 + i, timestamp=960 * i, ssrc=OUR_MEDIA_SSRC, payload=b"\xfc" * (40 + i)
        ).serialize()
        for i in range(5)
    ]
    assert all(transport.send_rtp(p) for p in ours_rtp)
    await driver.flush()

    report = None
    for _ in range(100):
        await peer.write({"type": "report"})
        report = await peer.read()
        seen_by_aiortc = report["keyframe_requests"] and report["retransmitted"] and report["remote_inbound"]
        if seen_by_aiortc and len(report["rtp_decrypted"]) == 5 and transport.counters.srtp_replayed > replayed_before:
            break
        await trio.sleep(0.1)
    assert report is not None
    (remote_inbound,) = report["remote_inbound"]
    assert remote_inbound["ssrc"] == OUR_RTCP_SSRC  # aiortc files it under the reporter's SSRC
    assert remote_inbound["packetsLost"] == REPORTED_LOST
    assert remote_inbound["fractionLost"] == REPORTED_FRACTION
    assert remote_inbound["jitter"] == REPORTED_JITTER
    # aiortc matched our LSR to its own last SR and subtracted our DLSR: a loopback round trip.
    assert remote_inbound["roundTripTime"] is not None
    assert -0.01 < remote_inbound["roundTripTime"] < 1.0
    assert report["keyframe_requests"] >= 1
    assert nacked in report["retransmitted"]
    assert transport.counters.srtp_replayed > replayed_before
    assert report["rtp_decrypted"] == [[OUR_MEDIA_SSRC, 4000 + i, len(p)] for i, p in enumerate(ours_rtp)]
    assert transport.counters.srtp_auth_failed == 0 and transport.counters.unauthenticated_source == 0
    assert not driver.of(TransportFailed)

    # aiortc closing its peer connection sends a DTLS close_notify: an orderly close for us.
    await peer.write({"type": "quit"})
    assert (await peer.read())["type"] == "bye"
    while not driver.of(TransportClosed):
        await trio.sleep(0.02)
    assert driver.of(TransportClosed) == [TransportClosed(by_peer=True)]
    assert transport.state is TransportState.CLOSED
