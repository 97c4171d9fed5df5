"""Transport-wide CC feedback from the real server (in process) to a publisher.

The publisher is our own client PeerConnection (test_media_forwarding's `ClientPc`: controlling
ICE, DTLS client, SRTP) and its offer negotiates the transport-wide sequence number extension.
What must hold: the server answers with the extension; every RTP packet that carried a
transport-wide sequence number is reported back as received, a number that never arrived is
reported lost, each exactly once, about the publisher's SSRC; a second burst after the first
report gets reports of its own (the feedback timer is armed again by the first arrival after a
report, and by that arrival itself, not by the participant's periodic timer wake-up); and what
the server counted outlives the participant.
"""

from __future__ import annotations

import trio
from livekit.protocol import models, rtc

from rtp import rtcp
from rtp.packet import RtpPacket
from sdp.codecs import EXT_TWCC
from sdp.parser import parse as parse_sdp
from trio_sfu import metrics as m
from trio_sfu.media import participant_media
from server_fixtures import mint_token, recv, send, signal_client
from test_media_forwarding import MID_EXT_ID, VIDEO_SSRC, ClientPc, media_server, publisher_offer, recv_until, vp8_payload

TWCC_EXT_ID = 5


def offer_with_transport_cc(pc: ClientPc) -> str:
    """test_media_forwarding's publisher offer, with transport-cc on every m-line (as libwebrtc)."""
    mid_line = f"a=extmap:{MID_EXT_ID} urn:ietf:params:rtp-hdrext:sdes:mid\r\n"
    sdp = publisher_offer(pc.ufrag, pc.pwd, pc.fingerprint)
    assert mid_line in sdp
    return sdp.replace(mid_line, f"{mid_line}a=extmap:{TWCC_EXT_ID} {EXT_TWCC}\r\n")


def feedback(pc: ClientPc) -> list[rtcp.TransportCc]:
    return [p for p in pc.rtcp if isinstance(p, rtcp.TransportCc)]


def reported(pc: ClientPc) -> dict[int, list[bool]]:
    """Transport-wide seq -> what each report said about it (received or not)."""
    out: dict[int, list[bool]] = {}
    for report in feedback(pc):
        for status in report.statuses():
            out.setdefault(status.seq, []).append(status.received)
    return out


async def connected_publisher(ws, nursery: trio.Nursery) -> tuple[ClientPc, str]:
    """Alice's publisher PC with transport-cc negotiated, up (ICE, DTLS, SRTP), and her sid."""
    joined = await recv(ws)
    assert joined.WhichOneof("message") == "join"
    pub = ClientPc()
    await send(ws, rtc.SignalRequest(add_track=rtc.AddTrackRequest(
        cid="cid-video", type=models.TrackType.VIDEO, source=models.TrackSource.CAMERA, name="cam")))
    await recv_until(ws, "track_published")
    await send(ws, rtc.SignalRequest(offer=rtc.SessionDescription(type="offer", sdp=offer_with_transport_cc(pub), id=1)))
    answer = (await recv_until(ws, "answer")).answer
    video = next(m for m in parse_sdp(answer.sdp).media if m.kind == "video")
    assert (TWCC_EXT_ID, EXT_TWCC) in [(e.id, e.uri) for e in video.extmaps]
    pub.connect(answer.sdp)
    nursery.start_soon(pub.run)
    await pub.connected.wait()
    return pub, joined.join.participant.sid


async def leave_and_wait_until_gone(server, ws) -> None:
    await send(ws, rtc.SignalRequest(leave=rtc.LeaveRequest()))
    with trio.fail_after(5):
        while not server.media.mux.is_empty() or server.media.rooms:
            await trio.sleep(0.02)


async def test_publisher_gets_transport_cc_feedback_for_what_arrived() -> None:
    async with media_server() as server:
        async with trio.open_nursery() as nursery, signal_client(server, mint_token("alice")) as ws:
            pub, _ = await connected_publisher(ws, nursery)
            arrived: set[int] = set()

            async def burst(twcc_seqs: range, lost: int) -> None:
                for i, twcc in enumerate(twcc_seqs):
                    if twcc == lost:
                        continue  # "lost": the server never sees this transport-wide seq
                    await pub.send_rtp(RtpPacket(96, 1000 + twcc, 3000 * twcc, VIDEO_SSRC,
                                                 extensions={TWCC_EXT_ID: twcc.to_bytes(2, "big")},
                                                 payload=vp8_payload(i == 0)))
                    arrived.add(twcc)

            await burst(range(1, 11), lost=6)
            await pub.wait_for(lambda: set(range(1, 11)) <= reported(pub).keys())
            first_reports = len(feedback(pub))
            # Nothing more arrives until the next burst: the next report is armed by its first packet.
            await trio.sleep(0.3)
            assert len(feedback(pub)) == first_reports
            await burst(range(11, 21), lost=15)
            await pub.wait_for(lambda: set(range(1, 21)) <= reported(pub).keys())
            assert len(feedback(pub)) > first_reports

            assert reported(pub) == {seq: [seq in arrived] for seq in range(1, 21)}
            assert {6, 15}.isdisjoint(arrived)
            for report in feedback(pub):
                assert report.media_ssrc == VIDEO_SSRC and report.sender_ssrc != 0
            # The arrival times are ours, in the order we sent (each report rounds to 250 µs steps).
            times = [t for report in feedback(pub) for _, t in report.arrival_times_us()]
            assert all(later >= earlier - 250 for earlier, later in zip(times, times[1:]))

            await leave_and_wait_until_gone(server, ws)
            assert server.metrics.get("media_transport_rtcp_sent_total") >= len(feedback(pub))
            assert server.metrics.get("media_session_transport_cc_feedback_sent_total") >= len(feedback(pub))
            nursery.cancel_scope.cancel()


async def test_feedback_is_due_by_the_arrival_not_by_the_periodic_wake_up(monkeypatch) -> None:
    # The participant's timer loop otherwise sleeps up to a minute: only the arrivals themselves
    # can make it wake for the feedback. No track takes these packets (an SSRC no m-line names),
    # so no receiver has a deadline of its own: transport-wide feedback covers every packet.
    monkeypatch.setattr(participant_media, "REPORT_INTERVAL", 60.0)
    async with media_server() as server:
        async with trio.open_nursery() as nursery, signal_client(server, mint_token("alice")) as ws:
            pub, sid = await connected_publisher(ws, nursery)
            # From now on the network loses the client's STUN (its consent checks): nothing but
            # the media reaches the server, so nothing else can wake the loop either.
            assert pub.transport is not None
            send_all = pub.transport.datagrams_to_send
            pub.transport.datagrams_to_send = lambda now: [(d, a) for d, a in send_all(now) if d[0] > 3]  # type: ignore[method-assign]
            # And the handshake's last timers have run out: the loop sleeps for a long while.
            media = server.media.participant_media("room1", sid)
            assert media is not None
            with trio.fail_after(5):
                while media.timers.armed < trio.current_time() + 10:
                    await trio.sleep(0.05)
            for twcc in range(100, 105):
                await pub.send_rtp(RtpPacket(111, twcc, 960 * twcc, 0x7777,
                                             extensions={TWCC_EXT_ID: twcc.to_bytes(2, "big")}, payload=b"\xfc" * 40))
            await pub.wait_for(lambda: set(range(100, 105)) <= reported(pub).keys())
            assert reported(pub) == {seq: [True] for seq in range(100, 105)}
            assert {report.media_ssrc for report in feedback(pub)} == {0x7777}
            assert server.metrics.get(m.MEDIA_RTP_UNMATCHED) == 5
            await leave_and_wait_until_gone(server, ws)
            nursery.cancel_scope.cancel()
