"""End to end: aiortc (an independent asyncio WebRTC stack) against one PeerSession.

aiortc runs in a subprocess (``tests/aiortc_peer.py --data-channel``): it offers a 440 Hz
Opus track and a data channel. We answer as the SFU does — ICE-lite, ``a=setup:passive``
(aiortc is the DTLS client and its SCTP the client side), data channels accepted — and drive
one PeerSession from one Trio UDP socket: one ``receive``, one ``datagrams_to_send``, one
``next_deadline`` / ``handle_timeout``, whatever layer the work is for.

What has to work: aiortc's ICE, OpenSSL DTLS and libsrtp against ours, its SCTP (which sends
its own INIT at the same time as ours, RFC 8841 §9.3) against our association inside the
session, DCEP both ways, and both ways of ending: aiortc closing (ABORT, then close_notify)
and our ``close()`` (SHUTDOWN that aiortc acknowledges, then close_notify).
"""

from __future__ import annotations

import hashlib
import math
import os
import secrets
import subprocess
import sys

import pytest
import trio

from dtls_helpers import make_certificate
from rtp.dtls import DtlsRole
from rtp.packet import RtpPacket
from rtp.packet import parse as parse_rtp
from rtp.peer_session import PeerSession, SessionState
from rtp.peer_transport import IceMode, PeerTransport
from rtp.peer_transport_events import RtpReceived, TransportClosed, TransportConnected, TransportFailed
from rtp.sctp import AssociationClosed, AssociationEstablished, ChannelOpened, MessageReceived
from sdp.model import Fingerprint
from sdp.negotiator import LocalParams, answer_offer, local_dtls_role, negotiated_media
from sdp.parser import parse, serialize
from test_peer_transport_aiortc import JsonLines, dominant_frequency

AIORTC_PEER = os.path.join(os.path.dirname(__file__), "aiortc_peer.py")
#: What aiortc_peer.py sends on "chat" after its greeting.
DATA_BLOB = bytes(i * 7 % 251 for i in range(20000))
OUR_MEDIA_SSRC = 0x0BADCAFE


class SessionDriver:
    """Moves datagrams between a Trio UDP socket and a PeerSession, and runs its one timer."""

    def __init__(self, session: PeerSession, sock: trio.socket.SocketType) -> None:
        self.session = session
        self.sock = sock
        self.events: list = []
        self._wait: trio.CancelScope | None = None

    async def flush(self) -> None:
        for datagram, addr in self.session.datagrams_to_send(trio.current_time()):
            await self.sock.sendto(datagram, addr)
        while (event := self.session.next_event()) is not None:
            self.events.append(event)

    async def act(self, action) -> None:
        """Something the test does to the session (a send, a close): then flush, and make the
        loop read the deadline again, since the action may have moved it."""
        action(trio.current_time())
        await self.flush()
        if self._wait is not None:
            self._wait.cancel()

    async def run(self) -> None:
        session = self.session
        session.start(trio.current_time())
        while True:
            await self.flush()
            deadline = session.next_deadline()
            with trio.CancelScope(deadline=math.inf if deadline is None else deadline) as self._wait:
                data, addr = await self.sock.recvfrom(65536)
                session.receive(data, addr[:2], trio.current_time())
                continue
            self._wait = None
            if deadline is not None and trio.current_time() >= deadline:
                session.handle_timeout(trio.current_time())

    def of(self, kind) -> list:
        return [e for e in self.events if isinstance(e, kind)]

    async def until(self, predicate, what: str) -> None:
        with trio.move_on_after(20) as scope:
            while not predicate():
                await trio.sleep(0.02)
        assert not scope.cancelled_caught, f"timed out waiting for {what}"


async def with_aiortc(scenario) -> None:
    certificate = make_certificate()
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    proc = await trio.lowlevel.open_process(
        [sys.executable, AIORTC_PEER, "all", "--data-channel"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    peer = JsonLines(proc.stdout, proc.stdin)
    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                driver, aiortc_ssrc = await answer(nursery, peer, sock, certificate)
                await scenario(peer, driver, aiortc_ssrc)
                nursery.cancel_scope.cancel()
    finally:
        with trio.move_on_after(5):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        sock.close()


async def answer(nursery, peer: JsonLines, sock, certificate) -> tuple[SessionDriver, int]:
    """aiortc's offer in, our answer out; the session built from them as the SFU would."""
    offer_message = await peer.read()
    assert offer_message["type"] == "offer"
    offer = parse(offer_message["sdp"])
    port = sock.getsockname()[1]
    local = LocalParams(
        ice_ufrag=secrets.token_hex(4),
        ice_pwd=secrets.token_hex(12),
        fingerprints=(Fingerprint("sha-256", certificate.fingerprint()),),
        candidates=(f"1 1 udp 2130706431 127.0.0.1 {port} typ host",),
    )
    answer_sdp = answer_offer(offer, local)
    audio_section = next(m for m in offer.media if m.kind == "audio")
    (aiortc_ssrc,) = negotiated_media(offer, answer_sdp)[audio_section.mid].ssrcs
    application = next(m for m in offer.media if m.kind == "application")
    assert not next(m for m in answer_sdp.media if m.kind == "application").rejected

    session = PeerSession(PeerTransport(
        IceMode.LITE,
        DtlsRole(local_dtls_role(answer_sdp, local_is_offerer=False).value),
        local_ufrag=local.ice_ufrag,
        local_pwd=local.ice_pwd,
        certificate=certificate,
        remote_ufrag=offer.effective_ufrag(audio_section),
        remote_pwd=offer.effective_pwd(audio_section),
        remote_fingerprints=[(f.algorithm, f.value) for f in offer.effective_fingerprints(audio_section)],
    ))
    assert session.transport.dtls_role is DtlsRole.SERVER
    session.enable_data_channels(
        trio.current_time(),
        remote_port=application.sctp_port or 5000,
        remote_max_message_size=65536 if application.max_message_size is None else application.max_message_size,
    )
    driver = SessionDriver(session, sock)
    nursery.start_soon(driver.run)
    await peer.write({"type": "answer", "sdp": serialize(answer_sdp)})
    connected = await peer.read()
    assert connected["type"] == "connected", connected
    assert connected["dtls_role"] == "client" and connected["peer_certificate_sha256"] == certificate.fingerprint()
    await driver.until(lambda: driver.of(TransportConnected) and driver.of(AssociationEstablished),
                       "our transport and association")
    return driver, aiortc_ssrc


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_aiortc_exchanges_media_and_data_channel_messages_with_one_session():
    async def scenario(peer: JsonLines, driver: SessionDriver, aiortc_ssrc: int) -> None:
        session = driver.session
        # aiortc's channel and its two messages, through the same receive() as its audio.
        await driver.until(lambda: len(driver.of(MessageReceived)) >= 2 and len(driver.of(RtpReceived)) >= 50,
                           "aiortc's messages and audio")
        (chat,) = [e for e in driver.of(ChannelOpened) if e.label == "chat"]
        assert not chat.locally_initiated and chat.ordered
        assert [(e.stream_id, e.data) for e in driver.of(MessageReceived)] == [
            (chat.stream_id, "hello from aiortc"), (chat.stream_id, DATA_BLOB)]
        packets = [parse_rtp(e.packet) for e in driver.of(RtpReceived)]
        assert {p.ssrc for p in packets} == {aiortc_ssrc}
        assert dominant_frequency([p.payload for p in packets[10:]]) == pytest.approx(440, abs=5)

        # Ours the other way: on aiortc's channel, on one we open, and RTP it must decrypt.
        reply = bytes(range(256)) * 100
        ours_rtp = [RtpPacket(payload_type=111, sequence_number=7000 + i, timestamp=960 * i, ssrc=OUR_MEDIA_SSRC,
                              payload=b"\xfc" * (30 + i)).serialize() for i in range(5)]

        def send_ours(now: float) -> None:
            sctp = session.sctp
            assert sctp.send(chat.stream_id, "hello from trio-sfu", now)
            assert sctp.send(chat.stream_id, reply, now)
            ours = sctp.open_channel("ours", ordered=True)
            assert sctp.send(ours, "on our own channel", now)
            assert all(session.send_rtp(p) for p in ours_rtp)

        await driver.act(send_ours)
        report = None
        for _ in range(100):
            await peer.write({"type": "report"})
            report = await peer.read()
            if len(report["data_received"]) >= 3 and len(report["rtp_decrypted"]) >= 5:
                break
            await trio.sleep(0.05)
        assert report["data_received"] == [
            ["chat", "text", "hello from trio-sfu"],
            ["chat", "binary", len(reply), sha(reply)],
            ["ours", "text", "on our own channel"],
        ]
        assert report["data_channels"] == {"chat": "open", "ours": "open"}
        assert report["rtp_decrypted"] == [[OUR_MEDIA_SSRC, 7000 + i, len(p)] for i, p in enumerate(ours_rtp)]
        assert session.transport.counters.srtp_auth_failed == 0
        assert session.counters.sctp_packets_refused == 0

        # aiortc closes: its SCTP aborts, its DTLS sends close_notify. Inner layer first for us.
        await peer.write({"type": "quit"})
        assert (await peer.read())["type"] == "bye"
        await driver.until(lambda: driver.of(TransportClosed), "the close_notify")
        ends = [e for e in driver.events if isinstance(e, (AssociationClosed, TransportClosed, TransportFailed))]
        assert ends == [AssociationClosed("aborted by peer"), TransportClosed(by_peer=True)]
        assert session.state is SessionState.CLOSED and session.next_deadline() is None

    await with_aiortc(scenario)


async def test_our_close_delivers_what_was_queued_then_shuts_aiortc_down_cleanly():
    async def scenario(peer: JsonLines, driver: SessionDriver, aiortc_ssrc: int) -> None:
        session = driver.session
        await driver.until(lambda: len(driver.of(MessageReceived)) >= 2, "aiortc's messages")
        (chat,) = [e for e in driver.of(ChannelOpened) if e.label == "chat"]
        last_words = [f"last words {i}" for i in range(20)] + [DATA_BLOB[::-1]]

        def send_then_close(now: float) -> None:
            for message in last_words:
                assert session.sctp.send(chat.stream_id, message, now)
            session.close(now)  # before any of it went out
            assert session.state is SessionState.CLOSING

        await driver.act(send_then_close)
        await driver.until(lambda: driver.of(TransportClosed), "our close to finish")
        await peer.write({"type": "wait_data_closed"})
        closed = await peer.read()
        assert closed["type"] == "data_closed"
        expected = [["chat", "text", m] for m in last_words[:-1]]
        expected.append(["chat", "binary", len(DATA_BLOB), sha(DATA_BLOB[::-1])])
        assert closed["data_received"] == expected
        assert closed["data_channels"] == {"chat": "closed"}
        # aiortc went through an orderly SHUTDOWN (not an ABORT) before it closed.
        states = closed["sctp_states"]
        assert states[-3:] == ["SHUTDOWN_RECEIVED", "SHUTDOWN_ACK_SENT", "CLOSED"], states
        ends = [e for e in driver.events if isinstance(e, (AssociationClosed, TransportClosed, TransportFailed))]
        assert ends == [AssociationClosed("shutdown"), TransportClosed(by_peer=False)]
        assert session.state is SessionState.CLOSED and session.next_deadline() is None

    await with_aiortc(scenario)
