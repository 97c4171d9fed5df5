"""Trickle ICE towards the client: a server that puts no candidate in its answer and trickles it.

The server here is the project's signal server with a test MediaSession plugged
in through ``media_factory``: it answers the publisher offer with the SFU's own
negotiator but *without* candidates (as a full-trickle server such as LiveKit
does), runs an ICE-lite PeerTransport on its own UDP socket, and sends its host
candidate as a ``trickle`` (JSON RTCIceCandidateInit, target PUBLISHER), then an
end-of-candidates trickle. The client's publisher PC can only connect if it
parsed that trickle into a candidate pair; then RTP it sends must come out of
the server transport decrypted, with the mid and rid header extensions the
answer agreed on.
"""

from __future__ import annotations

import datetime
import json
import math
import secrets

import trio
from livekit.protocol import rtc

from rtp.dtls import DtlsCertificate, DtlsRole
from rtp.header_extensions import decode_mid, decode_rid
from rtp.packet import parse as parse_rtp
from rtp.peer_transport import IceMode, PeerTransport
from rtp.peer_transport_events import RtpReceived
from sdp.model import Fingerprint
from sdp.negotiator import LocalParams, answer_offer, local_dtls_role, negotiated_media
from sdp.parser import parse as parse_sdp
from sdp.parser import serialize
from server_fixtures import make_config, mint_token, running_server
from trio_sfu.client import LiveKitClient
from trio_sfu.signal.media_port import UnavailableMediaSession


class TrickleOnlyMedia(UnavailableMediaSession):
    """Answers the publisher offer without candidates and trickles its one host candidate."""

    instances: list["TrickleOnlyMedia"] = []

    def __init__(self, context) -> None:
        super().__init__(context)
        self.nursery: trio.Nursery | None = None
        self.received: list[bytes] = []
        self.negotiated = None
        TrickleOnlyMedia.instances.append(self)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        # The participant's nursery runs this: the transport task below ends with the participant.
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    async def handle_publisher_offer(self, offer: rtc.SessionDescription) -> None:
        parsed = parse_sdp(offer.sdp)
        certificate = DtlsCertificate.generate(datetime.datetime.now(datetime.timezone.utc))
        local = LocalParams(secrets.token_hex(4), secrets.token_hex(12),
                            (Fingerprint("sha-256", certificate.fingerprint()),))
        answer = answer_offer(parsed, local)
        assert not any(m.candidates for m in answer.media)
        self.negotiated = negotiated_media(parsed, answer)
        first = parsed.media[0]
        transport = PeerTransport(
            IceMode.LITE, DtlsRole(local_dtls_role(answer, local_is_offerer=False).value),
            local_ufrag=local.ice_ufrag, local_pwd=local.ice_pwd, certificate=certificate,
            remote_ufrag=parsed.effective_ufrag(first), remote_pwd=parsed.effective_pwd(first),
            remote_fingerprints=[(f.algorithm, f.value) for f in parsed.effective_fingerprints(first)],
        )
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await sock.bind(("127.0.0.1", 0))
        self.nursery.start_soon(self._drive, transport, sock)
        self.context.send(rtc.SignalResponse(answer=rtc.SessionDescription(
            type="answer", sdp=serialize(answer), id=offer.id)))
        port = sock.getsockname()[1]
        init = {"candidate": f"candidate:1 1 udp 2130706431 127.0.0.1 {port} typ host",
                "sdpMid": first.mid, "sdpMLineIndex": 0}
        self.context.send(rtc.SignalResponse(trickle=rtc.TrickleRequest(
            candidateInit=json.dumps(init), target=rtc.SignalTarget.PUBLISHER)))
        self.context.send(rtc.SignalResponse(trickle=rtc.TrickleRequest(
            candidateInit="", target=rtc.SignalTarget.PUBLISHER, final=True)))

    async def _drive(self, transport: PeerTransport, sock) -> None:
        with sock:
            transport.start(trio.current_time())
            while True:
                for datagram, addr in transport.datagrams_to_send(trio.current_time()):
                    await sock.sendto(datagram, addr)
                while (event := transport.next_event()) is not None:
                    if isinstance(event, RtpReceived):
                        self.received.append(event.packet)
                deadline = transport.next_deadline()
                with trio.move_on_at(math.inf if deadline is None else deadline):
                    data, addr = await sock.recvfrom(65536)
                    transport.receive_datagram(data, addr[:2], trio.current_time())
                    continue
                transport.handle_timeout(trio.current_time())

    async def handle_subscriber_answer(self, answer: rtc.SessionDescription) -> None:
        pass

    async def handle_trickle(self, candidate_init_json: str, target: int, final: bool) -> None:
        pass  # an ICE-lite server learns the client's address from its checks


async def test_publisher_pc_connects_through_a_trickled_candidate() -> None:
    TrickleOnlyMedia.instances.clear()
    # server_fixtures.running_server: shutdown, then its leak check (tasks, sockets, rooms, sources).
    async with running_server(make_config(), media_factory=TrickleOnlyMedia) as server:
        async with LiveKitClient.connect(server.url, mint_token("pub")) as client:
            video = await client.publish_video(width=320, height=180, bitrate=200_000, simulcast=True)
            await video.wait_ready(timeout=10)
            pc = client.publisher_pc
            assert pc.transport.selected_address[0] == "127.0.0.1"
            for rid in video.rids:
                assert video.send_rtp(b"\x90\x80\x00\x01" + bytes(20), timestamp=1234, marker=True, rid=rid)
            (media,) = TrickleOnlyMedia.instances
            with trio.fail_after(5):
                while len(media.received) < 3:
                    await trio.sleep(0.01)
            extensions = media.negotiated[video.mid].extensions
            mid_id = next(i for i, uri in extensions.items() if uri.endswith("sdes:mid"))
            rid_id = next(i for i, uri in extensions.items() if uri.endswith("rtp-stream-id") and "repaired" not in uri)
            packets = [parse_rtp(p) for p in media.received]
            assert {decode_mid(p.extensions[mid_id]) for p in packets} == {video.mid}
            assert [decode_rid(p.extensions[rid_id]) for p in packets] == ["q", "h", "f"]
            assert [p.ssrc for p in packets] == [video.ssrcs[r] for r in ("q", "h", "f")]
            assert all(p.timestamp == 1234 and p.marker and p.payload_type == 96 for p in packets)
            assert not client.errors, client.errors
