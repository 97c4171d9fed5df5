"""PeerSession in memory: our controlling client session against our ICE-lite server session.

Both ends are the real objects (ICE agents, DTLS, SRTP, the SCTP association, the TWCC
recorder) behind one ``receive`` / ``datagrams_to_send`` / ``next_event`` / ``next_deadline`` /
``handle_timeout`` each. The link is str0m's ``progress`` loop on a virtual clock: it steps to
the earliest of the two sessions' deadlines and the next datagram's arrival, so a session that
under-reports its deadline stalls and one that over-reports is probed early (``probe_early``):
every test here would fail if ``next_deadline`` lied either way.

The same session against an independent stack (aiortc) is in ``test_peer_session_aiortc.py``.
"""

from __future__ import annotations

import heapq
import itertools
import random

import attrs
import pytest
from aioice.candidate import Candidate
from budgets import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from dtls_helpers import make_certificate
from rtp import rtcp
from rtp.dtls import DtlsRole
from rtp.packet import RtpPacket
from rtp.peer_session import PeerSession, SessionState
from rtp.peer_transport import IceMode, PeerTransport
from rtp.peer_transport_events import (
    RtcpReceived,
    RtpReceived,
    SelectedAddressChanged,
    TransportClosed,
    TransportConnected,
    TransportFailed,
)
from rtp.sctp import (
    AssociationClosed,
    AssociationEstablished,
    AssociationState,
    ChannelOpened,
    MessageReceived,
    Reliability,
)
from rtp.twcc import REORDER_HOLD

CLIENT_ADDR = ("10.0.0.1", 50000)
SERVER_ADDR = ("10.0.0.2", 7882)
S_UFRAG, S_PWD = "srvU", "server-password-0123456789"
C_UFRAG, C_PWD = "cliU", "client-password-0123456789"
CLIENT_CERT = make_certificate()
SERVER_CERT = make_certificate()
TWCC_ID = 5
LATENCY = 0.005


def make_sessions(*, seed: int = 0, connect_timeout: float = 30.0, **session_options) -> tuple[PeerSession, PeerSession]:
    """(client, server) as an offer/answer would build them: fingerprints cross over."""
    server = PeerSession(
        PeerTransport(
            IceMode.LITE,
            DtlsRole.SERVER,
            local_ufrag=S_UFRAG,
            local_pwd=S_PWD,
            certificate=SERVER_CERT,
            remote_ufrag=C_UFRAG,
            remote_pwd=C_PWD,
            remote_fingerprints=[("sha-256", CLIENT_CERT.fingerprint())],
            connect_timeout=connect_timeout,
        ),
        rng=random.Random(seed + 1),
        **session_options,
    )
    client = PeerSession(
        PeerTransport(
            IceMode.CONTROLLING,
            DtlsRole.CLIENT,
            local_ufrag=C_UFRAG,
            local_pwd=C_PWD,
            certificate=CLIENT_CERT,
            remote_ufrag=S_UFRAG,
            remote_pwd=S_PWD,
            remote_fingerprints=[("sha-256", SERVER_CERT.fingerprint())],
            remote_candidates=[Candidate("1", 1, "udp", 2130706431, SERVER_ADDR[0], SERVER_ADDR[1], "host")],
            connect_timeout=connect_timeout,
            rng=random.Random(seed),
        ),
        rng=random.Random(seed + 2),
        **session_options,
    )
    client.transport.add_remote_candidate(None)
    return client, server


class Link:
    """Two sessions and the datagrams between them, on a virtual clock."""

    def __init__(self, client: PeerSession, server: PeerSession, *, latency: float = LATENCY,
                 probe_early: bool = True, media_path: bool = False) -> None:
        self.ends = {CLIENT_ADDR: client, SERVER_ADDR: server}
        # True: RTP goes in through `receive_rtp` (the server's media path), its packet recorded
        # as the RtpReceived event `receive` would have queued.
        self.media_path = media_path
        self.latency = latency
        self.probe_early = probe_early
        self.now = 0.0
        self.order = itertools.count()
        self.in_flight: list[tuple[float, int, tuple, tuple, bytes]] = []
        self.sent: list[tuple[float, tuple, tuple, bytes]] = []  # (time, src, dst, datagram)
        self.events: dict[tuple, list[tuple[float, object]]] = {CLIENT_ADDR: [], SERVER_ADDR: []}
        self.timeouts: dict[tuple, list[float]] = {CLIENT_ADDR: [], SERVER_ADDR: []}
        self.drop = lambda src, dst, datagram, now: False
        self.early_probes = 0

    @property
    def client(self) -> PeerSession:
        return self.ends[CLIENT_ADDR]

    @property
    def server(self) -> PeerSession:
        return self.ends[SERVER_ADDR]

    def start(self) -> None:
        for session in self.ends.values():
            session.start(self.now)
        self.drain()

    def send(self, src: tuple, dst: tuple, datagram: bytes) -> None:
        self.sent.append((self.now, src, dst, datagram))
        if dst in self.ends and not self.drop(src, dst, datagram, self.now):
            heapq.heappush(self.in_flight, (self.now + self.latency, next(self.order), src, dst, datagram))

    def drain(self) -> None:
        """What every driver does after every input: datagrams out, then events, until quiet."""
        for addr, session in self.ends.items():
            for datagram, dst in session.datagrams_to_send(self.now):
                self.send(addr, dst, datagram)
            while (event := session.next_event()) is not None:
                self.events[addr].append((self.now, event))

    def _probe_early(self, until: float) -> None:
        """handle_timeout before a session's deadline must do nothing at all."""
        for addr, session in self.ends.items():
            deadline = session.next_deadline()
            if deadline is None or deadline <= self.now:
                continue
            early = self.now + (min(deadline, until) - self.now) / 2
            if early <= self.now or early >= deadline:
                continue
            state = session.state
            session.handle_timeout(early)
            self.early_probes += 1
            assert session.datagrams_to_send(early) == [], f"{addr} sent something before its deadline"
            assert session.next_event() is None, f"{addr} had an event before its deadline"
            assert session.next_deadline() == deadline and session.state is state

    def step(self, end: float) -> bool:
        """Advance to the next thing that happens (not past ``end``); False when nothing does."""
        times = [s.next_deadline() for s in self.ends.values()]
        if self.in_flight:
            times.append(self.in_flight[0][0])
        due = [t for t in times if t is not None]
        if not due or min(due) > end:
            return False
        target = max(self.now, min(due))
        if self.probe_early:
            self._probe_early(target)
        self.now = target
        while self.in_flight and self.in_flight[0][0] <= self.now:
            _, _, src, dst, datagram = heapq.heappop(self.in_flight)
            if self.media_path and 127 < datagram[0] < 192 and not 191 < datagram[1] < 224:
                packet = self.ends[dst].receive_rtp(datagram, src, self.now)
                if packet is not None:
                    self.events[dst].append((self.now, RtpReceived(packet)))
            else:
                self.ends[dst].receive(datagram, src, self.now)
            self.drain()
        for addr, session in self.ends.items():
            deadline = session.next_deadline()
            if deadline is not None and deadline <= self.now:
                self.timeouts[addr].append(self.now)
                session.handle_timeout(self.now)
                self.drain()
        return True

    def run_until(self, end: float) -> None:
        for _ in range(200_000):
            if not self.step(end):
                self.now = max(self.now, end)
                return
        raise AssertionError("the link never went quiet")

    def run_while(self, busy, limit: float = 60.0) -> None:
        for _ in range(200_000):
            if not busy():
                return
            if not self.step(limit):
                raise AssertionError(f"stuck at {self.now:.3f} s (nothing due before {limit} s)")
        raise AssertionError("the link never went quiet")

    def of(self, addr: tuple, kind) -> list:
        return [e for _, e in self.events[addr] if isinstance(e, kind)]

    def timed(self, addr: tuple, kind) -> list[tuple[float, object]]:
        return [(t, e) for t, e in self.events[addr] if isinstance(e, kind)]


def connected_link(*, data_channels: bool = False, media_path: bool = False, **options) -> Link:
    client, server = make_sessions(**options)
    if data_channels:
        # As after an offer/answer with m=application: both sides, before anything connects.
        client.enable_data_channels(0.0)
        server.enable_data_channels(0.0)
    link = Link(client, server, media_path=media_path)
    link.start()
    link.run_while(lambda: not (link.of(CLIENT_ADDR, TransportConnected) and link.of(SERVER_ADDR, TransportConnected)))
    if data_channels:
        link.run_while(lambda: not (link.of(CLIENT_ADDR, AssociationEstablished)
                                    and link.of(SERVER_ADDR, AssociationEstablished)))
    return link


def rtp_bytes(seq: int, ssrc: int = 0x11223344, twcc: int | None = None, size: int = 60) -> bytes:
    extensions = {} if twcc is None else {TWCC_ID: (twcc & 0xFFFF).to_bytes(2, "big")}
    return RtpPacket(payload_type=96, sequence_number=seq & 0xFFFF, timestamp=3000 * seq, ssrc=ssrc,
                     extensions=extensions, payload=bytes([seq & 0xFF]) * size).serialize()


# ---------------------------------------------------------------------------------- connecting


def test_controlling_client_and_lite_server_sessions_connect():
    client, server = make_sessions()
    assert client.state is server.state is SessionState.NEW and client.is_alive
    link = Link(client, server)
    link.start()
    assert client.state is SessionState.CONNECTING  # its first check is on the wire
    link.run_while(lambda: not (link.of(CLIENT_ADDR, TransportConnected) and link.of(SERVER_ADDR, TransportConnected)))
    assert client.state is server.state is SessionState.CONNECTED
    (c_up,) = link.of(CLIENT_ADDR, TransportConnected)
    (s_up,) = link.of(SERVER_ADDR, TransportConnected)
    assert c_up.addr == SERVER_ADDR and s_up.addr == CLIENT_ADDR
    assert c_up.srtp_profile is s_up.srtp_profile
    # Each side checked the other's certificate against what "the SDP" said.
    assert c_up.peer_fingerprint == SERVER_CERT.fingerprint()
    assert s_up.peer_fingerprint == CLIENT_CERT.fingerprint()
    # ICE picks the address before DTLS reports the transport up.
    for addr in (CLIENT_ADDR, SERVER_ADDR):
        kinds = [type(e) for _, e in link.events[addr]]
        assert kinds.index(SelectedAddressChanged) < kinds.index(TransportConnected)
    assert client.transport.counters.unauthenticated_source == server.transport.counters.unauthenticated_source == 0
    assert link.early_probes > 0
    # Without data channels negotiated nothing but ICE consent is scheduled once connected.
    assert server.sctp is None and client.sctp is None


def test_sessions_connect_over_a_lossy_link_by_their_deadlines_alone():
    client, server = make_sessions(seed=3)
    link = Link(client, server)
    lost = itertools.count()
    link.drop = lambda src, dst, datagram, now: now < 4.0 and next(lost) % 3 == 0
    link.start()
    link.run_while(lambda: not (link.of(CLIENT_ADDR, TransportConnected) and link.of(SERVER_ADDR, TransportConnected)))
    # Only the deadlines the sessions reported brought the retransmissions that got through.
    assert client.transport.dtls_counters.retransmissions + client.transport.ice_counters.retransmissions > 0
    assert link.timeouts[CLIENT_ADDR]
    assert not link.of(CLIENT_ADDR, TransportFailed) and not link.of(SERVER_ADDR, TransportFailed)


def test_a_candidate_trickled_after_start_is_checked_by_the_deadline_and_connects():
    """Our client learns the server's address by trickle, after its session started: the session
    takes the candidate (and the end of candidates), reports the check it now owes as its
    deadline, and connects; nothing was sent before there was an address to send to."""
    _, server = make_sessions()
    trickling = PeerSession(PeerTransport(
        IceMode.CONTROLLING, DtlsRole.CLIENT, local_ufrag=C_UFRAG, local_pwd=C_PWD, certificate=CLIENT_CERT,
        remote_ufrag=S_UFRAG, remote_pwd=S_PWD, remote_fingerprints=[("sha-256", SERVER_CERT.fingerprint())],
        rng=random.Random(7)), rng=random.Random(8))
    link = Link(trickling, server)
    link.start()
    link.run_until(0.5)
    assert trickling.state is SessionState.CONNECTING and not link.sent
    trickling.add_remote_candidate(Candidate("1", 1, "udp", 2130706431, SERVER_ADDR[0], SERVER_ADDR[1], "host"))
    trickling.add_remote_candidate(None)
    assert trickling.next_deadline() is not None and trickling.next_deadline() <= link.now + 0.1
    link.run_while(lambda: not (link.of(CLIENT_ADDR, TransportConnected) and link.of(SERVER_ADDR, TransportConnected)))
    assert trickling.state is server.state is SessionState.CONNECTED
    assert trickling.transport.selected_address == SERVER_ADDR
    # A lite agent learns addresses from checks: a candidate given to it changes nothing.
    server.add_remote_candidate(Candidate("1", 1, "udp", 1, "10.9.9.9", 9, "host"))
    assert server.transport.selected_address == CLIENT_ADDR


def test_connect_timeout_fails_at_the_reported_deadline_and_then_nothing_is_scheduled():
    client, server = make_sessions(connect_timeout=5.0)
    link = Link(client, server)
    link.drop = lambda src, dst, datagram, now: True  # the server is unreachable
    link.start()
    link.run_until(100.0)
    ((failed_at, failed),) = link.timed(CLIENT_ADDR, TransportFailed)
    assert failed_at == pytest.approx(5.0) and "5 s" in failed.reason
    assert client.state is SessionState.FAILED and not client.is_alive
    assert client.next_deadline() is None and client.datagrams_to_send(100.0) == []
    # The lite server, started with it, heard nothing and gives up on the same timer.
    ((server_failed_at, _),) = link.timed(SERVER_ADDR, TransportFailed)
    assert server_failed_at == pytest.approx(5.0) and server.next_deadline() is None


# ---------------------------------------------------------------------------------- media


@pytest.mark.parametrize("media_path", [False, True], ids=["receive", "receive_rtp"])
def test_media_both_ways(media_path):
    link = connected_link(media_path=media_path)
    client, server = link.client, link.server
    up = [rtp_bytes(i) for i in range(20)]
    assert all(client.send_rtp(p) for p in up)
    link.drain()
    # Down: the fan-out path hands the protected datagram back to send at once.
    down = [rtp_bytes(1000 + i, ssrc=0x55667788, size=200) for i in range(20)]
    for packet in down:
        out = server.protect_rtp_datagram(packet)
        assert out is not None and out[1] == CLIENT_ADDR
        link.send(SERVER_ADDR, out[1], out[0])
    report = rtcp.serialize_rtcp([rtcp.ReceiverReport(0x1, [rtcp.ReportBlock(0x11223344, highest_sequence=19)]),
                                  rtcp.Pli(0x1, 0x11223344)])
    assert server.send_rtcp(report)
    assert client.send_rtcp(rtcp.Pli(0x2, 0x55667788).serialize())
    link.drain()
    link.run_until(link.now + 1.0)
    assert [e.packet for e in link.of(SERVER_ADDR, RtpReceived)] == up
    assert [e.packet for e in link.of(CLIENT_ADDR, RtpReceived)] == down
    assert [e.packet for e in link.of(CLIENT_ADDR, RtcpReceived)] == [report]
    assert [e.packet for e in link.of(SERVER_ADDR, RtcpReceived)] == [rtcp.Pli(0x2, 0x55667788).serialize()]
    assert server.transport.counters.rtp_sent == 20 and client.transport.counters.rtp_received == 20


def test_per_packet_send_paths_are_the_transports_own_methods():
    # The forwarder calls these once per subscriber per packet: the session must add no call.
    client, server = make_sessions()
    for session in (client, server):
        for name in ("protect_rtp_datagram", "send_rtp", "send_rtcp", "accepts"):
            method = getattr(session, name)
            assert method.__self__ is session.transport
            assert method.__func__ is getattr(PeerTransport, name)
    # Before keys exist they refuse and count, like the transport's.
    assert server.protect_rtp_datagram(rtp_bytes(1)) is None and server.send_rtp(rtp_bytes(1)) is False
    assert server.transport.counters.send_not_ready == 2


# ---------------------------------------------------------------------------------- data channels


def test_data_channel_messages_both_ways():
    link = connected_link(data_channels=True)
    client, server = link.client, link.server
    reliable = client.sctp.open_channel("_reliable", ordered=True)
    lossy = client.sctp.open_channel("_lossy", ordered=False, max_retransmits=0)
    ours = server.sctp.open_channel("_reliable", ordered=True)
    big = bytes(range(256)) * 200  # 51 200 bytes: many DTLS records each way
    assert client.sctp.send(reliable, "hello from the client", link.now)
    assert client.sctp.send(reliable, big, link.now)
    assert client.sctp.send(lossy, b"lossy", link.now)
    assert server.sctp.send(ours, "hello from the server", link.now)
    assert server.sctp.send(ours, big[::-1], link.now)
    link.drain()
    link.run_until(link.now + 2.0)

    opened_at_server = {e.label: e for e in link.of(SERVER_ADDR, ChannelOpened) if not e.locally_initiated}
    assert opened_at_server["_reliable"].stream_id == reliable and opened_at_server["_reliable"].ordered
    assert opened_at_server["_lossy"].reliability == Reliability(max_retransmits=0)
    (opened_at_client,) = [e for e in link.of(CLIENT_ADDR, ChannelOpened) if not e.locally_initiated]
    assert (opened_at_client.stream_id, opened_at_client.label) == (ours, "_reliable")
    # Each side also hears the peer's DCEP ACK for the channels it opened.
    assert {e.stream_id for e in link.of(CLIENT_ADDR, ChannelOpened) if e.locally_initiated} == {reliable, lossy}
    assert [e.stream_id for e in link.of(SERVER_ADDR, ChannelOpened) if e.locally_initiated] == [ours]
    at_server = [(e.stream_id, e.data) for e in link.of(SERVER_ADDR, MessageReceived)]
    assert at_server == [(reliable, "hello from the client"), (reliable, big), (lossy, b"lossy")]
    at_client = [(e.stream_id, e.data) for e in link.of(CLIENT_ADDR, MessageReceived)]
    assert at_client == [(ours, "hello from the server"), (ours, big[::-1])]
    assert client.counters.sctp_packets_refused == server.counters.sctp_packets_refused == 0


def test_data_channels_negotiated_after_dtls_is_up_still_connect():
    # The server learns about m=application late (its answer raced the client's DTLS): the
    # client's first INIT arrives before the association exists, is dropped and counted, and
    # the client's T1 retransmission establishes it.
    client, server = make_sessions()
    client.enable_data_channels(0.0)
    link = Link(client, server)
    link.start()
    link.run_while(lambda: not link.of(SERVER_ADDR, TransportConnected))
    link.run_until(link.now + 0.1)
    assert server.counters.data_without_association >= 1 and not link.of(SERVER_ADDR, AssociationEstablished)
    server.enable_data_channels(link.now)
    link.run_while(lambda: not (link.of(CLIENT_ADDR, AssociationEstablished) and link.of(SERVER_ADDR, AssociationEstablished)))
    sid = client.sctp.open_channel("late")
    assert client.sctp.send(sid, "made it", link.now)
    link.drain()
    link.run_until(link.now + 1.0)
    assert [e.data for e in link.of(SERVER_ADDR, MessageReceived)] == ["made it"]


def test_lost_sctp_packets_are_retransmitted_on_the_sessions_deadline():
    link = connected_link(data_channels=True)
    client = link.client
    sid = client.sctp.open_channel("x")
    link.drain()
    link.run_until(link.now + 1.0)
    dropped = []

    def drop_application_records(src, dst, datagram, now):
        if src == CLIENT_ADDR and datagram[0] == 23 and len(dropped) < 3:
            dropped.append(now)
            return True
        return False

    link.drop = drop_application_records
    sent_at = link.now
    assert client.sctp.send(sid, "again and again", link.now)
    link.drain()
    link.run_until(link.now + 30.0)
    assert [e.data for e in link.of(SERVER_ADDR, MessageReceived)] == ["again and again"]
    assert len(dropped) == 3 and client.sctp.counters.t3_expirations >= 2
    # Each retransmission happened when the client's session said it would, not on a poll.
    retransmit_times = dropped[1:]
    assert all(t in link.timeouts[CLIENT_ADDR] for t in retransmit_times)
    assert retransmit_times[0] > sent_at


# ---------------------------------------------------------------------------------- TWCC feedback


@pytest.mark.parametrize("media_path", [False, True], ids=["receive", "receive_rtp"])
def test_transport_cc_feedback_is_sent_on_schedule_and_reports_the_arrivals(media_path):
    link = connected_link(media_path=media_path)
    client, server = link.client, link.server
    server.set_transport_cc_extension(TWCC_ID)
    start = link.now + 0.5
    link.run_until(start)
    arrivals: dict[int, float] = {}
    # One packet every 12 ms (never on a report's instant), transport seqs 100.., one in ten lost.
    for i in range(40):
        link.run_until(start + i * 0.012)
        if i % 10 == 7:
            continue
        assert client.send_rtp(rtp_bytes(i, twcc=100 + i))
        link.drain()
        arrivals[100 + i] = link.now + LATENCY
        if i == 0:
            link.run_until(link.now + LATENCY)
            assert server.next_deadline() == pytest.approx(arrivals[100] + server.feedback_recorder.interval)
    link.run_until(link.now + 1.0)

    feedback = [(t, p) for t, e in link.timed(CLIENT_ADDR, RtcpReceived)
                for p in rtcp.parse_rtcp(e.packet) if isinstance(p, rtcp.TransportCc)]
    assert feedback, "no transport-cc feedback reached the sender"
    # On schedule: a report leaves one interval after the first arrival it covers, or, when the
    # one before held back a hole too young to call lost (rtp.twcc.REORDER_HOLD), that long after it.
    interval = server.feedback_recorder.interval
    previous = None
    for t, report in feedback:
        sent_at = t - LATENCY
        fresh = [arrivals[s.seq] for s in report.statuses()
                 if s.received and (previous is None or arrivals[s.seq] > previous)]
        on_interval = bool(fresh) and abs(sent_at - (min(fresh) + interval)) < 1e-9
        after_hold = previous is not None and abs(sent_at - (previous + REORDER_HOLD)) < 1e-9
        assert on_interval or after_hold, (sent_at, previous, fresh)
        previous = sent_at
    assert len(feedback) >= 5  # 470 ms of arrivals
    assert server.feedback_recorder.reports_sent == len(feedback)
    # What they say: every seq once, received ones at their arrival time (±125 µs), losses lost.
    reported: dict[int, bool] = {}
    for _, report in feedback:
        assert report.media_ssrc == 0x11223344
        times = dict(report.arrival_times_us())
        for status in report.statuses():
            assert status.seq not in reported
            reported[status.seq] = status.received
            if status.received:
                assert abs(times[status.seq] - round(arrivals[status.seq] * 1e6)) <= 125
    assert reported == {seq: seq in arrivals for seq in range(100, 140)}
    assert server.counters.transport_cc_feedback_sent == len(feedback)
    # Nothing pending: no feedback deadline left.
    assert server.feedback_recorder.next_deadline() is None


def test_no_transport_cc_feedback_without_the_negotiated_extension():
    link = connected_link()
    for i in range(10):
        assert link.client.send_rtp(rtp_bytes(i, twcc=i))
        link.drain()
        link.run_until(link.now + 0.02)
    link.run_until(link.now + 1.0)
    rtcp_at_client = [p for e in link.of(CLIENT_ADDR, RtcpReceived) for p in rtcp.parse_rtcp(e.packet)]
    assert not any(isinstance(p, rtcp.TransportCc) for p in rtcp_at_client)
    assert link.server.feedback_recorder.packets_recorded == 0
    with pytest.raises(ValueError):
        link.server.set_transport_cc_extension(0)


# ---------------------------------------------------------------------------------- closing


def test_close_drains_the_association_then_closes_dtls():
    link = connected_link(data_channels=True)
    client, server = link.client, link.server
    sid = client.sctp.open_channel("_reliable")
    link.drain()
    link.run_until(link.now + 0.5)
    messages = [f"message {i} ".encode() * (1 + 50 * (i % 4)) for i in range(20)]
    for message in messages:
        assert client.sctp.send(sid, message, link.now)
    client.close(link.now)  # at once: nothing has been sent yet
    assert client.state is SessionState.CLOSING and client.is_alive
    assert client.send_rtp(rtp_bytes(1))  # media still flows while the association drains
    closing_at = link.now
    link.drain()
    link.run_until(link.now + 10.0)

    assert [e.data for e in link.of(SERVER_ADDR, MessageReceived)] == messages
    # Inner layer first on both sides; ours an orderly close, the server's by its peer.
    client_ends = [e for _, e in link.events[CLIENT_ADDR] if isinstance(e, (AssociationClosed, TransportClosed))]
    server_ends = [e for _, e in link.events[SERVER_ADDR] if isinstance(e, (AssociationClosed, TransportClosed))]
    assert client_ends == [AssociationClosed("shutdown"), TransportClosed(by_peer=False)]
    assert server_ends == [AssociationClosed("shutdown"), TransportClosed(by_peer=True)]
    assert client.sctp.state is server.sctp.state is AssociationState.CLOSED
    assert client.state is server.state is SessionState.CLOSED and not client.is_alive
    # The drain took round trips, not the close timeout.
    ((closed_at, _),) = link.timed(CLIENT_ADDR, TransportClosed)
    assert closed_at - closing_at < 0.2
    assert client.next_deadline() is None and server.next_deadline() is None
    assert client.datagrams_to_send(link.now) == [] and server.datagrams_to_send(link.now) == []
    client.close(link.now)  # idempotent
    assert client.next_event() is None


def test_close_drains_over_a_lossy_link():
    # A close timeout long enough for SCTP's backed-off retransmissions.
    link = connected_link(data_channels=True, close_timeout=30.0)
    client = link.client
    sid = client.sctp.open_channel("_reliable")
    link.drain()
    link.run_until(link.now + 0.5)
    lost = itertools.count()
    # A third of the SCTP-carrying records lost both ways; close_notify (an alert) gets through.
    link.drop = lambda src, dst, datagram, now: datagram[0] == 23 and next(lost) % 3 == 1
    messages = [bytes([i]) * 3000 for i in range(10)]
    for message in messages:
        assert client.sctp.send(sid, message, link.now)
    client.close(link.now)
    link.drain()
    link.run_until(link.now + 30.0)
    assert [e.data for e in link.of(SERVER_ADDR, MessageReceived)] == messages
    assert client.sctp.counters.chunks_retransmitted > 0
    assert link.of(CLIENT_ADDR, AssociationClosed) == [AssociationClosed("shutdown")]
    assert link.of(SERVER_ADDR, TransportClosed) == [TransportClosed(by_peer=True)]
    assert client.state is SessionState.CLOSED and client.next_deadline() is None


def test_close_gives_up_on_a_silent_peer_after_close_timeout():
    link = connected_link(data_channels=True, close_timeout=1.5)
    client = link.client
    link.drop = lambda src, dst, datagram, now: True  # the server is gone
    closing_at = link.now
    client.close(link.now)
    link.drain()
    assert client.next_deadline() <= closing_at + 1.5
    link.run_until(closing_at + 20.0)
    ((aborted_at, aborted),) = link.timed(CLIENT_ADDR, AssociationClosed)
    ((closed_at, closed),) = link.timed(CLIENT_ADDR, TransportClosed)
    assert aborted_at == closed_at == pytest.approx(closing_at + 1.5)
    assert "timed out" in aborted.reason and closed == TransportClosed(by_peer=False)
    assert client.state is SessionState.CLOSED and client.next_deadline() is None


def test_close_without_drain_sends_what_is_ready_then_close_notify_at_once():
    # An owner that goes away (a server dropping a participant) and will not drive the session again.
    link = connected_link(data_channels=True)
    client, server = link.client, link.server
    sid = server.sctp.open_channel("_reliable")
    link.drain()
    link.run_until(link.now + 0.5)
    assert [e.label for e in link.of(CLIENT_ADDR, ChannelOpened)] == ["_reliable"]
    assert server.sctp.send(sid, b"the last word", link.now)
    closed_at = link.now
    server.close(link.now, drain=False)
    # Closed on the spot: no SCTP shutdown to wait for, nothing left scheduled.
    assert server.state is SessionState.CLOSED and not server.is_alive and server.next_deadline() is None
    assert server.sctp.state is AssociationState.CLOSED
    link.drain()
    server_ends = [e for _, e in link.events[SERVER_ADDR] if isinstance(e, (AssociationClosed, TransportClosed))]
    assert server_ends == [AssociationClosed("DTLS transport closed"), TransportClosed(by_peer=False)]
    # On the wire: DTLS records only, the message's first, the close_notify alert last.
    sent = [d for t, src, _, d in link.sent if src == SERVER_ADDR and t == closed_at]
    assert sent and sent[-1][0] == 21 and all(d[0] == 23 for d in sent[:-1])
    link.run_until(link.now + 5.0)
    assert [e.data for e in link.of(CLIENT_ADDR, MessageReceived)] == [b"the last word"]
    # The peer's association ends with its DTLS (it never saw a SHUTDOWN).
    client_ends = [e for _, e in link.events[CLIENT_ADDR] if isinstance(e, (AssociationClosed, TransportClosed))]
    assert client_ends == [AssociationClosed("DTLS transport closed"), TransportClosed(by_peer=True)]
    assert client.state is SessionState.CLOSED
    server.close(link.now, drain=False)  # idempotent
    assert server.next_event() is None and server.datagrams_to_send(link.now) == []


def test_close_without_drain_cuts_a_drain_under_way_short():
    link = connected_link(data_channels=True, close_timeout=30.0)
    client = link.client
    link.drop = lambda src, dst, datagram, now: True  # the server stopped answering
    client.close(link.now)
    assert client.state is SessionState.CLOSING
    link.drain()
    link.run_until(link.now + 1.0)
    assert client.state is SessionState.CLOSING  # still waiting for the SHUTDOWN ACK
    client.close(link.now, drain=False)
    assert client.state is SessionState.CLOSED and client.next_deadline() is None
    link.drain()
    ((closed_at, closed),) = link.timed(CLIENT_ADDR, TransportClosed)
    assert closed_at == link.now and closed == TransportClosed(by_peer=False)
    (aborted,) = link.of(CLIENT_ADDR, AssociationClosed)
    assert aborted == AssociationClosed("DTLS transport closed")


def test_losing_the_transport_ends_the_association_first():
    link = connected_link(data_channels=True)
    link.drop = lambda src, dst, datagram, now: True  # the path dies
    cut_at = link.now
    link.run_until(cut_at + 60.0)
    for addr in (CLIENT_ADDR, SERVER_ADDR):
        ends = [type(e) for _, e in link.events[addr] if isinstance(e, (AssociationClosed, TransportFailed))]
        assert ends == [AssociationClosed, TransportFailed], addr
        assert link.ends[addr].state is SessionState.FAILED and link.ends[addr].next_deadline() is None
    ((failed_at, failed),) = link.timed(SERVER_ADDR, TransportFailed)
    assert "consent" in failed.reason and failed_at - cut_at <= 30.0 + 1e-9


# ---------------------------------------------------------------------------------- bad input


def drops(session: PeerSession) -> int:
    """Every counter of input refused, across the session's layers."""
    t = session.transport
    return (
        session.counters.data_without_association + session.counters.transport_cc_unreadable
        + t.counters.unauthenticated_source + t.counters.unknown_class + t.counters.media_before_keys
        + t.counters.srtp_auth_failed + t.counters.srtp_replayed + t.counters.malformed
        + t.counters.srtp_other_errors + t.counters.after_close
        + sum(v for k, v in attrs.asdict(t.ice_counters).items() if k not in ("accepted", "addresses_evicted"))
        + sum(v for k, v in attrs.asdict(t.dtls_counters).items()
              if k not in ("hello_verify_requests_sent", "retransmissions"))
        + (0 if session.sctp is None else session.sctp.counters.malformed_packets
           + session.sctp.counters.bad_verification_tag + session.sctp.counters.unexpected_chunks
           + session.sctp.counters.unknown_chunks + session.sctp.counters.malformed_messages
           + session.sctp.counters.invalid_stream)
    )


@settings(max_examples=examples(0.8))
@given(st.lists(st.tuples(st.sampled_from(["datagram", "sctp"]),
                          st.sampled_from([0, 1, 20, 21, 22, 23, 128, 144, 200, 255]),
                          st.binary(max_size=120)),
                min_size=1, max_size=12))
def test_any_input_from_the_peer_is_dropped_and_counted_never_raised(inputs):
    link = connected_link(data_channels=True, seed=7)
    client, server = link.client, link.server
    sid = client.sctp.open_channel("after the garbage")
    link.run_until(link.now + 0.5)
    before = drops(server)
    for how, first, rest in inputs:
        garbage = bytes([first]) + rest
        if how == "datagram":
            # From the authenticated address, so it reaches DTLS and SRTP, not just ICE.
            server.receive(garbage, CLIENT_ADDR, link.now)
        else:
            # Well-protected DTLS records that are not SCTP: the association must cope.
            assert client.transport.send_data(garbage)
            for datagram, _ in client.transport.datagrams_to_send(link.now):
                server.receive(datagram, CLIENT_ADDR, link.now)
        link.drain()
    assert drops(server) > before
    assert server.is_alive and not link.of(SERVER_ADDR, AssociationClosed)
    assert client.sctp.send(sid, "still here", link.now)
    link.drain()
    link.run_until(link.now + 2.0)
    assert [e.data for e in link.of(SERVER_ADDR, MessageReceived)] == ["still here"]
