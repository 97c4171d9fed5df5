"""aiortc as an independent WebRTC peer for tests/test_peer_transport_aiortc.py and
tests/test_peer_session_aiortc.py (not a test itself).

Usage: aiortc_peer.py SRTP_PROFILES [--data-channel]
(``all``: aiortc's defaults; ``cm``: AES128_CM_HMAC_SHA1_80 only)

JSON lines on stdout/stdin:

1. we print ``{"type": "offer", "sdp": ...}``: one sendonly audio transceiver
   carrying a 440 Hz tone, host candidate on 127.0.0.1 only (no ICE servers: nothing
   leaves the machine);
2. we read ``{"type": "answer", "sdp": ...}`` and apply it;
3. we print ``{"type": "connected", ...}`` (or ``"failed"``) with what aiortc
   negotiated: DTLS role, SRTP profile, SSRC, the peer certificate it verified;
4. each ``{"type": "report"}`` read is answered with ``{"type": "report", ...}``:
   the sender's stats (``remote-inbound-rtp`` exists only once an RTCP RR from the
   peer was decrypted and parsed), and what the peer's RTCP feedback made the sender
   do (PLI → keyframe requests, NACK → retransmitted sequence numbers), and the
   (SSRC, sequence number, length) of each RTP packet from the peer that aiortc's
   SRTP session decrypted;
5. ``{"type": "quit"}`` closes the peer connection and exits.

With ``--data-channel`` the offer also has ``m=application``: aiortc opens channel ``chat``
and, once it is open, sends ``"hello from aiortc"`` and ``DATA_BLOB`` on it. Every message
it receives, on ``chat`` or on a channel the peer opened, is recorded; reports add
``data_received`` (``[label, "text", str]`` or ``[label, "binary", length, sha256 hex]``),
``data_channels`` (label -> readyState) and ``sctp_states`` (every association state
aiortc's SCTP went through). ``{"type": "wait_data_closed"}`` waits (10 s at most) for every
channel to be closed and answers with a report of type ``data_closed``.
"""

import asyncio
import fractions
import hashlib
import json
import sys

import aioice.ice
import numpy
from av import AudioFrame
from cryptography.hazmat.primitives.serialization import Encoding

import aiortc.rtcdtlstransport as dtls_module
from aiortc import RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack
from aiortc.rtcrtpsender import RTCRtpSender
from aiortc.rtcsctptransport import RTCSctpTransport
from local_peers import forbid_ice_servers, loopback_peer_connection  # tests/ is this script's directory

SAMPLE_RATE = 48000
SAMPLES = 960  # 20 ms
#: Binary message aiortc sends on ``chat``: larger than one SCTP packet, recognisable byte by byte.
DATA_BLOB = bytes(i * 7 % 251 for i in range(20000))


class ToneTrack(AudioStreamTrack):
    """A 440 Hz sine, paced by AudioStreamTrack's own 20 ms clock."""

    def __init__(self) -> None:
        super().__init__()
        self._phase = 0

    async def recv(self) -> AudioFrame:
        await super().recv()  # only for its pacing: it sleeps until the next 20 ms frame is due
        t = (numpy.arange(SAMPLES) + self._phase) / SAMPLE_RATE
        samples = (numpy.sin(2 * numpy.pi * 440 * t) * 8000).astype(numpy.int16).reshape(1, -1)
        frame = AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._phase
        self._phase += SAMPLES
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        return frame


def emit(message: dict) -> None:
    print(json.dumps(message), flush=True)


async def read_message() -> dict:
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if not line:
        return {"type": "quit"}
    return json.loads(line)


def describe(label: str, message) -> list:
    if isinstance(message, str):
        return [label, "text", message]
    return [label, "binary", len(message), hashlib.sha256(message).hexdigest()]


async def main() -> None:
    profiles = sys.argv[1] if len(sys.argv) > 1 else "all"
    with_data_channel = "--data-channel" in sys.argv[2:]
    forbid_ice_servers()  # this process's own guard: conftest's does not reach a subprocess
    # aioice skips loopback when gathering; the test runs on 127.0.0.1 only.
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]
    if profiles == "cm":
        # RTCDtlsTransport copies this module list when it is built: offer only CM in use_srtp.
        dtls_module.SRTP_PROFILES[:] = [dtls_module.SRTP_AES128_CM_SHA1_80]

    # Observe what incoming RTCP feedback makes the sender do, without changing it.
    keyframe_requests: list[int] = []
    retransmitted: list[int] = []
    original_keyframe = RTCRtpSender._send_keyframe
    original_retransmit = RTCRtpSender._retransmit

    def send_keyframe(self) -> None:
        keyframe_requests.append(1)
        original_keyframe(self)

    async def retransmit(self, sequence_number: int) -> None:
        retransmitted.append(sequence_number)
        await original_retransmit(self, sequence_number)

    RTCRtpSender._send_keyframe = send_keyframe
    RTCRtpSender._retransmit = retransmit

    # aiortc calls this only with RTP its libsrtp session unprotected: record what got through.
    rtp_decrypted: list[list[int]] = []
    original_handle_rtp = dtls_module.RTCDtlsTransport._handle_rtp_data

    async def handle_rtp(self, data: bytes, arrival_time_ms: int) -> None:
        rtp_decrypted.append([int.from_bytes(data[8:12], "big"), int.from_bytes(data[2:4], "big"), len(data)])
        await original_handle_rtp(self, data, arrival_time_ms)

    dtls_module.RTCDtlsTransport._handle_rtp_data = handle_rtp

    # Every association state aiortc's SCTP enters, to tell a SHUTDOWN from an ABORT.
    sctp_states: list[str] = []
    original_set_state = RTCSctpTransport._set_state

    def set_state(self, state) -> None:
        if not sctp_states or sctp_states[-1] != state.name:
            sctp_states.append(state.name)
        original_set_state(self, state)

    RTCSctpTransport._set_state = set_state

    pc = loopback_peer_connection()
    connected = asyncio.Event()
    channels: dict = {}
    data_received: list[list] = []

    def watch(channel) -> None:
        channels[channel.label] = channel

        @channel.on("message")
        def on_message(message) -> None:
            data_received.append(describe(channel.label, message))

    if with_data_channel:
        chat = pc.createDataChannel("chat")
        watch(chat)

        @chat.on("open")
        def on_open() -> None:
            chat.send("hello from aiortc")
            chat.send(DATA_BLOB)

        @pc.on("datachannel")
        def on_datachannel(channel) -> None:
            watch(channel)

    def data_report(kind: str) -> dict:
        return {
            "type": kind,
            "data_received": data_received,
            "data_channels": {label: channel.readyState for label, channel in channels.items()},
            "sctp_states": sctp_states,
        }

    @pc.on("connectionstatechange")
    def on_state() -> None:
        if pc.connectionState in ("connected", "failed", "closed"):
            connected.set()

    transceiver = pc.addTransceiver(ToneTrack(), direction="sendonly")
    sender = transceiver.sender
    await pc.setLocalDescription(await pc.createOffer())
    emit({"type": "offer", "sdp": pc.localDescription.sdp})

    answer = await read_message()
    await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
    try:
        await asyncio.wait_for(connected.wait(), 20)
    except asyncio.TimeoutError:
        pass
    dtls = sender.transport
    if pc.connectionState != "connected":
        emit({"type": "failed", "state": pc.connectionState, "dtls_state": dtls.state})
    else:
        peer_certificate = dtls._ssl.get_peer_certificate(as_cryptography=True)
        digest = hashlib.sha256(peer_certificate.public_bytes(Encoding.DER)).hexdigest().upper()
        emit(
            {
                "type": "connected",
                "dtls_role": dtls._role,
                "ice_role": dtls.transport.role,
                "srtp_profile": dtls._ssl.get_selected_srtp_profile().decode(),
                "ssrc": sender._ssrc,
                "peer_certificate_sha256": ":".join(digest[i : i + 2] for i in range(0, 64, 2)),
            }
        )

    while True:
        message = await read_message()
        if message["type"] == "quit":
            break
        if message["type"] == "report":
            stats = await sender.getStats()
            remote_inbound = [
                {
                    "ssrc": s.ssrc,
                    "packetsLost": s.packetsLost,
                    "fractionLost": s.fractionLost,
                    "jitter": s.jitter,
                    "roundTripTime": s.roundTripTime,
                }
                for s in stats.values()
                if s.type == "remote-inbound-rtp"
            ]
            outbound = [{"ssrc": s.ssrc, "packetsSent": s.packetsSent} for s in stats.values() if s.type == "outbound-rtp"]
            emit(
                {
                    "type": "report",
                    "remote_inbound": remote_inbound,
                    "outbound": outbound,
                    "keyframe_requests": len(keyframe_requests),
                    "retransmitted": retransmitted,
                    "rtp_decrypted": rtp_decrypted,
                    "dtls_state": dtls.state,
                    **data_report("report"),
                }
            )
        if message["type"] == "wait_data_closed":
            for _ in range(1000):
                if channels and all(c.readyState == "closed" for c in channels.values()):
                    break
                await asyncio.sleep(0.01)
            emit({**data_report("data_closed"), "dtls_state": dtls.state})
    await pc.close()
    emit({"type": "bye"})


if __name__ == "__main__":
    asyncio.run(main())
