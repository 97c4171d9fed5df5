"""PeerTransport in memory: our controlling client (DTLS client) against our lite server (DTLS server).

Two harnesses:

* ``Wire`` — a synchronous, lossless link on a virtual clock, for exact unit checks
  (what is dropped and counted, what is sent where, state transitions);
* a Trio network under ``MockClock`` (autojump) that loses, duplicates and reorders
  datagrams, for the handshake and media over a bad link.

The end-to-end test against aiortc, an independent WebRTC stack, is in
``test_peer_transport_aiortc.py``.
"""

from __future__ import annotations

import math
import random

import pytest
import trio
from aioice.candidate import Candidate
from budgets import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from dtls_helpers import make_certificate
from rtp import rtcp
from rtp.dtls import DtlsRole
from rtp.packet import RtpPacket, parse as parse_rtp
from rtp.peer_transport import IceMode, PeerTransport, TransportState
from rtp.peer_transport_events import (
    DataReceived,
    IceRestarted,
    RtcpReceived,
    RtpReceived,
    SelectedAddressChanged,
    TransportClosed,
    TransportConnected,
    TransportFailed,
)
from rtp.srtp_profiles import SrtpProfile
from rtp.stun import Class, Message, Method, serialize

CLIENT_ADDR = ("10.0.0.1", 50000)
SERVER_ADDR = ("10.0.0.2", 7882)
STRANGER = ("203.0.113.7", 40000)
S_UFRAG, S_PWD = "srvU", "server-password-0123456789"
C_UFRAG, C_PWD = "cliU", "client-password-0123456789"

CLIENT_CERT = make_certificate()
SERVER_CERT = make_certificate()
OTHER_CERT = make_certificate()

#: Tag bytes SRTP adds to an RTP packet (RFC 5764 §4.1.2, RFC 7714 §14.2).
SRTP_TAG = {SrtpProfile.AES128_CM_HMAC_SHA1_80: 10, SrtpProfile.AEAD_AES_128_GCM: 16}


def make_pair(
    *,
    server_sees=None,
    client_sees=None,
    server_profiles=(SrtpProfile.AEAD_AES_128_GCM, SrtpProfile.AES128_CM_HMAC_SHA1_80),
    client_profiles=(SrtpProfile.AEAD_AES_128_GCM, SrtpProfile.AES128_CM_HMAC_SHA1_80),
    seed: int = 0,
    client_dtls_role: DtlsRole = DtlsRole.CLIENT,
) -> tuple[PeerTransport, PeerTransport]:
    """(client, server) as built from a negotiated offer/answer: fingerprints cross over."""
    server = PeerTransport(
        IceMode.LITE,
        DtlsRole.SERVER if client_dtls_role is DtlsRole.CLIENT else DtlsRole.CLIENT,
        local_ufrag=S_UFRAG,
        local_pwd=S_PWD,
        certificate=SERVER_CERT,
        remote_ufrag=C_UFRAG,
        remote_pwd=C_PWD,
        remote_fingerprints=[("sha-256", (server_sees or CLIENT_CERT).fingerprint())],
        srtp_profiles=server_profiles,
    )
    client = PeerTransport(
        IceMode.CONTROLLING,
        client_dtls_role,
        local_ufrag=C_UFRAG,
        local_pwd=C_PWD,
        certificate=CLIENT_CERT,
        remote_ufrag=S_UFRAG,
        remote_pwd=S_PWD,
        remote_fingerprints=[("sha-256", (client_sees or SERVER_CERT).fingerprint())],
        remote_candidates=[Candidate("1", 1, "udp", 2130706431, SERVER_ADDR[0], SERVER_ADDR[1], "host")],
        srtp_profiles=client_profiles,
        rng=random.Random(seed),
    )
    client.add_remote_candidate(None)
    return client, server


def rtp_bytes(seq: int, ssrc: int = 0x11223344, payload: bytes = b"\xf8\xff\xfe" * 20) -> bytes:
    return RtpPacket(payload_type=111, sequence_number=seq, timestamp=960 * seq, ssrc=ssrc, payload=payload).serialize()


def rr_bytes(sender: int, media: int, highest: int) -> bytes:
    return rtcp.serialize_rtcp(
        [
            rtcp.ReceiverReport(sender, [rtcp.ReportBlock(media, highest_sequence=highest)]),
            rtcp.Pli(sender, media),
        ]
    )


class Wire:
    """A lossless link between the two transports, driven on a virtual clock."""

    def __init__(self, client: PeerTransport, server: PeerTransport) -> None:
        self.ends = {CLIENT_ADDR: client, SERVER_ADDR: server}
        self.events: dict[tuple, list] = {CLIENT_ADDR: [], SERVER_ADDR: []}
        self.log: list[tuple[tuple, tuple, bytes]] = []  # (src, dst, datagram)
        self.now = 0.0
        self.cut = False  # when True, everything sent is lost
        self.drop = lambda datagram: False  # selective loss

    @property
    def client(self) -> PeerTransport:
        return self.ends[CLIENT_ADDR]

    @property
    def server(self) -> PeerTransport:
        return self.ends[SERVER_ADDR]

    def start(self) -> None:
        for t in self.ends.values():
            t.start(self.now)

    def flush(self) -> None:
        moved = True
        while moved:
            moved = False
            for addr, t in self.ends.items():
                for data, dst in t.datagrams_to_send(self.now):
                    moved = True
                    self.log.append((addr, dst, data))
                    if not self.cut and dst in self.ends and not self.drop(data):
                        self.ends[dst].receive_datagram(data, addr, self.now)
            self.collect()

    def collect(self) -> None:
        for addr, t in self.ends.items():
            while (event := t.next_event()) is not None:
                self.events[addr].append(event)

    def run(self, until, limit: float = 120.0) -> None:
        while True:
            self.flush()
            if until():
                return
            timers = [t.next_deadline() for t in self.ends.values()]
            due = min((x for x in timers if x is not None), default=None)
            assert due is not None and due <= limit, f"stuck at t={self.now}: {self.events}"
            self.now = max(self.now, due)
            for t in self.ends.values():
                timer = t.next_deadline()
                if timer is not None and timer <= self.now:
                    t.handle_timeout(self.now)
            self.collect()

    def inject(self, dst: tuple, data: bytes, src: tuple) -> None:
        self.ends[dst].receive_datagram(data, src, self.now)
        self.collect()

    def of(self, addr: tuple, kind) -> list:
        return [e for e in self.events[addr] if isinstance(e, kind)]

    def connect(self) -> None:
        self.start()
        self.run(lambda: self.client.state is TransportState.CONNECTED and self.server.state is TransportState.CONNECTED)


def connected_wire(**kw) -> Wire:
    wire = Wire(*make_pair(**kw))
    wire.connect()
    return wire


# --- connecting ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "profiles, expected",
    [
        ((SrtpProfile.AEAD_AES_128_GCM, SrtpProfile.AES128_CM_HMAC_SHA1_80), SrtpProfile.AEAD_AES_128_GCM),
        ((SrtpProfile.AES128_CM_HMAC_SHA1_80,), SrtpProfile.AES128_CM_HMAC_SHA1_80),
        ((SrtpProfile.AEAD_AES_128_GCM,), SrtpProfile.AEAD_AES_128_GCM),
    ],
    ids=["both-prefer-gcm", "cm-only", "gcm-only"],
)
def test_connects_and_media_flows_both_ways(profiles, expected):
    wire = connected_wire(server_profiles=profiles)
    client, server = wire.client, wire.server
    assert server.srtp_profile is client.srtp_profile is expected

    # Each side saw the other's certificate, and it is the one the SDP promised.
    (c_conn,) = wire.of(CLIENT_ADDR, TransportConnected)
    (s_conn,) = wire.of(SERVER_ADDR, TransportConnected)
    assert c_conn.addr == SERVER_ADDR and s_conn.addr == CLIENT_ADDR
    assert c_conn.peer_fingerprint == SERVER_CERT.fingerprint()
    assert s_conn.peer_fingerprint == CLIENT_CERT.fingerprint()
    assert wire.of(CLIENT_ADDR, SelectedAddressChanged) == [SelectedAddressChanged(SERVER_ADDR)]
    assert wire.of(SERVER_ADDR, SelectedAddressChanged) == [SelectedAddressChanged(CLIENT_ADDR)]

    sent_up = [rtp_bytes(seq) for seq in range(100, 110)]
    sent_down = [rtp_bytes(seq, ssrc=0x55667788) for seq in range(7, 12)]
    mark = len(wire.log)
    for p in sent_up:
        assert client.send_rtp(p)
    for p in sent_down:
        assert server.send_rtp(p)
    assert client.send_rtcp(rr_bytes(1, 0x55667788, 11))
    assert server.send_rtcp(rr_bytes(2, 0x11223344, 109))
    wire.flush()

    # On the wire: encrypted and tagged, never the plain bytes, and only to the selected address.
    media = wire.log[mark:]
    assert {(src, dst) for src, dst, _ in media} == {(CLIENT_ADDR, SERVER_ADDR), (SERVER_ADDR, CLIENT_ADDR)}
    up_wire = [d for src, _, d in media if src == CLIENT_ADDR and not 191 < d[1] < 224]
    assert [len(d) for d in up_wire] == [len(p) + SRTP_TAG[expected] for p in sent_up]
    assert all(d[12:] != p[12:] for d, p in zip(up_wire, sent_up))

    assert [e.packet for e in wire.of(SERVER_ADDR, RtpReceived)] == sent_up
    assert [e.packet for e in wire.of(CLIENT_ADDR, RtpReceived)] == sent_down
    (up_rtcp,) = wire.of(SERVER_ADDR, RtcpReceived)
    (down_rtcp,) = wire.of(CLIENT_ADDR, RtcpReceived)
    assert up_rtcp.packet == rr_bytes(1, 0x55667788, 11)
    assert rtcp.parse_rtcp(down_rtcp.packet)[0].reports[0].highest_sequence == 109
    assert server.counters.rtp_received == 10 and server.counters.rtcp_received == 1
    assert client.counters.rtp_sent == 10 and client.counters.rtcp_sent == 1


def test_dtls_roles_follow_sdp_setup_not_ice_roles():
    """a=setup:active on the lite side: the lite server runs the DTLS client once ICE nominates."""
    wire = connected_wire(client_dtls_role=DtlsRole.SERVER)
    assert wire.server.dtls_role is DtlsRole.CLIENT and wire.client.dtls_role is DtlsRole.SERVER
    assert wire.client.send_rtp(rtp_bytes(1)) and wire.server.send_rtp(rtp_bytes(2, ssrc=9))
    wire.flush()
    assert wire.of(SERVER_ADDR, RtpReceived) == [RtpReceived(rtp_bytes(1))]
    assert wire.of(CLIENT_ADDR, RtpReceived) == [RtpReceived(rtp_bytes(2, ssrc=9))]


def check(use_candidate: bool) -> bytes:
    """A Binding request as the client's ICE agent would send it (RFC 8445 §7.1.2)."""
    msg = Message(Method.BINDING, Class.REQUEST)
    msg.attributes["USERNAME"] = f"{S_UFRAG}:{C_UFRAG}"
    msg.attributes["PRIORITY"] = 1862270975
    msg.attributes["ICE-CONTROLLING"] = 0x1234
    if use_candidate:
        msg.attributes["USE-CANDIDATE"] = None
    return serialize(msg, S_PWD.encode())


def test_renomination_moves_media_to_the_new_address():
    """A client whose network changed nominates a new address: media follows it, DTLS stays up."""
    wire = connected_wire()
    server = wire.server
    moved = ("10.0.0.99", 50001)
    server.receive_datagram(check(use_candidate=False), moved, wire.now)
    wire.collect()
    # Validated but not nominated: media from it is accepted, media to the peer still goes to the old one.
    assert server.accepts(rtp_bytes(1), moved)
    server.send_rtp(rtp_bytes(1))
    assert [dst for _, dst in server.datagrams_to_send(wire.now)] == [moved, CLIENT_ADDR]  # STUN answer, media
    server.receive_datagram(check(use_candidate=True), moved, wire.now)
    wire.collect()
    assert wire.of(SERVER_ADDR, SelectedAddressChanged)[-1] == SelectedAddressChanged(moved)
    server.send_rtp(rtp_bytes(2))
    assert [dst for _, dst in server.datagrams_to_send(wire.now)] == [moved, moved]
    assert server.state is TransportState.CONNECTED and len(wire.of(SERVER_ADDR, TransportConnected)) == 1


def check_as(local: str, remote: str, pwd: str, use_candidate: bool) -> bytes:
    """A Binding request to the server under the given credentials."""
    msg = Message(Method.BINDING, Class.REQUEST)
    msg.attributes["USERNAME"] = f"{local}:{remote}"
    msg.attributes["PRIORITY"] = 1862270975
    msg.attributes["ICE-CONTROLLING"] = 0x1234
    if use_candidate:
        msg.attributes["USE-CANDIDATE"] = None
    return serialize(msg, pwd.encode())


def test_ice_restart_keeps_dtls_and_media_and_takes_the_new_credentials():
    """A resume's ICE restart on the lite side: new credentials on both sides; the DTLS
    association and SRTP keys stay (no handshake, no second TransportConnected), media keeps
    flowing over the selected address meanwhile, checks under the old credentials are refused,
    and the peer's nomination under the new ones moves media."""
    from rtp.stun import parse_stun

    wire = connected_wire()
    server = wire.server
    assert server.restart_ice("newU", "new-server-password-0123", "cli2", "client2-password-0123456789")
    assert server.local_ufrag == "newU"
    wire.client.send_rtp(rtp_bytes(7))
    server.send_rtp(rtp_bytes(8))
    wire.flush()
    assert [e.packet for e in wire.of(SERVER_ADDR, RtpReceived)][-1] == rtp_bytes(7)
    assert [e.packet for e in wire.of(CLIENT_ADDR, RtpReceived)][-1] == rtp_bytes(8)

    old = check_as(S_UFRAG, C_UFRAG, S_PWD, use_candidate=True)
    new = check_as("newU", "cli2", "new-server-password-0123", use_candidate=True)
    assert not server.accepts(old, STRANGER) and server.accepts(new, STRANGER)  # a mux finds it by the new ufrag
    server.receive_datagram(old, CLIENT_ADDR, wire.now)
    [(answer, _)] = server.datagrams_to_send(wire.now)
    assert parse_stun(answer).error_code == 401

    moved = ("10.0.0.99", 50001)
    server.receive_datagram(new, moved, wire.now)
    wire.collect()
    [(answer, _)] = server.datagrams_to_send(wire.now)
    assert parse_stun(answer).message_class is Class.RESPONSE and parse_stun(answer).error_code is None
    assert wire.of(SERVER_ADDR, SelectedAddressChanged)[-1] == SelectedAddressChanged(moved)
    assert wire.of(SERVER_ADDR, IceRestarted) == [IceRestarted(moved)]  # completed once, by the new check
    server.send_rtp(rtp_bytes(9))
    assert [dst for _, dst in server.datagrams_to_send(wire.now)] == [moved]
    assert server.state is TransportState.CONNECTED and len(wire.of(SERVER_ADDR, TransportConnected)) == 1


def test_ice_restart_of_a_closed_transport_changes_nothing():
    wire = connected_wire()
    server = wire.server
    server.close()
    assert not server.restart_ice("newU", "new-server-password-0123")
    assert server.local_ufrag == S_UFRAG
    with pytest.raises(ValueError):
        wire.client.restart_ice("x", "y")  # the controlling side has no restart


def test_data_channel_bytes_ride_dtls_application_data():
    wire = connected_wire()
    assert wire.client.send_data(b"sctp packet up")
    assert wire.server.send_data(b"sctp packet down")
    wire.flush()
    assert wire.of(SERVER_ADDR, DataReceived) == [DataReceived(b"sctp packet up")]
    assert wire.of(CLIENT_ADDR, DataReceived) == [DataReceived(b"sctp packet down")]


def test_nothing_but_stun_before_ice_and_sending_before_keys_is_refused():
    client, server = make_pair()
    wire = Wire(client, server)
    # Before any check: media and DTLS from the client's (future) address are strangers.
    wire.inject(SERVER_ADDR, rtp_bytes(1), CLIENT_ADDR)
    wire.inject(SERVER_ADDR, b"\x16\xfe\xfd" + bytes(20), CLIENT_ADDR)
    assert server.counters.unauthenticated_source == 2
    assert not server.send_rtp(rtp_bytes(1)) and not server.send_rtcp(rr_bytes(1, 2, 3))
    assert not server.send_data(b"x")
    assert server.counters.send_not_ready == 3
    assert wire.events[SERVER_ADDR] == []

    # Once ICE validated the client's address but DTLS has not finished, media is
    # "before keys", not unauthenticated.
    wire.drop = lambda datagram: 19 < datagram[0] < 64  # DTLS is lost, STUN goes through
    wire.start()
    wire.run(lambda: server.selected_address == CLIENT_ADDR)
    assert server.state is TransportState.CONNECTING
    wire.inject(SERVER_ADDR, rtp_bytes(2), CLIENT_ADDR)
    assert server.counters.media_before_keys == 1
    assert server.counters.unauthenticated_source == 2


def test_the_media_path_drops_and_counts_as_receive_datagram_does():
    """`receive_rtp` (what the server's media path calls for SRTP datagrams) against
    `receive_datagram` on two connections fed the same kinds of bytes: the same packets come
    out (returned there, as events here) and every drop lands on the same counter."""

    def inputs(wire: Wire) -> list[tuple[bytes, tuple]]:
        wire.client.send_rtp(rtp_bytes(500))
        wire.client.send_rtp(rtp_bytes(501))
        ((first, _), (second, _)) = wire.client.datagrams_to_send(wire.now)
        wire.server.receive_datagram(first, CLIENT_ADDR, wire.now)  # arrived once already
        wire.server.receive_datagram(second, CLIENT_ADDR, wire.now)
        wire.collect()
        wire.client.send_rtp(rtp_bytes(502))
        ((fresh, _),) = wire.client.datagrams_to_send(wire.now)
        tampered = fresh[:-1] + bytes([fresh[-1] ^ 1])
        return [(first, STRANGER), (first, CLIENT_ADDR), (second, CLIENT_ADDR), (tampered, CLIENT_ADDR),
                (b"\x80\x6f" + bytes(40), CLIENT_ADDR), (b"\x80\x6f\x00\x01", CLIENT_ADDR), (fresh, CLIENT_ADDR)]

    fast_wire, slow_wire = connected_wire(), connected_wire()
    fast, slow = fast_wire.server, slow_wire.server
    fast_in, slow_in = inputs(fast_wire), inputs(slow_wire)
    out = [fast.receive_rtp(data, addr, 1.0) for data, addr in fast_in]
    before = len(slow_wire.events[SERVER_ADDR])
    for data, addr in slow_in:
        slow_wire.inject(SERVER_ADDR, data, addr)
    events = slow_wire.events[SERVER_ADDR][before:]
    assert [p for p in out if p is not None] == [e.packet for e in events] == [rtp_bytes(502)]
    assert fast.next_event() is None  # nothing queued on the media path
    assert fast.counters == slow.counters
    assert (fast.counters.unauthenticated_source, fast.counters.srtp_replayed, fast.counters.srtp_auth_failed,
            fast.counters.malformed, fast.counters.rtp_received) == (1, 2, 2, 1, 3)


def test_the_media_path_before_the_keys_is_receive_datagrams():
    client, server = make_pair()
    wire = Wire(client, server)
    assert server.receive_rtp(rtp_bytes(1), CLIENT_ADDR, 0.0) is None
    assert server.counters.unauthenticated_source == 1  # a NEW transport: started, then refused
    wire.drop = lambda datagram: 19 < datagram[0] < 64  # DTLS lost: ICE up, no keys
    wire.start()
    wire.run(lambda: server.selected_address == CLIENT_ADDR)
    assert server.receive_rtp(rtp_bytes(2), CLIENT_ADDR, wire.now) is None
    assert server.counters.media_before_keys == 1


def test_accepts_routes_by_ufrag_then_by_validated_address():
    client, server = make_pair()
    request = Message(Method.BINDING, Class.REQUEST)
    request.attributes["USERNAME"] = f"{S_UFRAG}:{C_UFRAG}"
    ours = serialize(request, S_PWD.encode())
    request.attributes["USERNAME"] = f"someoneelse:{C_UFRAG}"
    theirs = serialize(request, S_PWD.encode())
    assert server.accepts(ours, STRANGER)  # a new peer is found by ufrag, from anywhere
    assert not server.accepts(theirs, CLIENT_ADDR)
    assert not server.accepts(rtp_bytes(1), CLIENT_ADDR)  # not validated yet
    wire = Wire(client, server)
    wire.connect()
    assert server.accepts(rtp_bytes(1), CLIENT_ADDR)
    assert server.accepts(b"\x17\xfe\xfd", CLIENT_ADDR)
    assert not server.accepts(rtp_bytes(1), STRANGER)
    # The client accepts STUN responses from the address it checks, not from elsewhere.
    response = Message(Method.BINDING, Class.RESPONSE)
    assert client.accepts(serialize(response), SERVER_ADDR)
    assert not client.accepts(serialize(response), STRANGER)
    assert client.accepts(rtp_bytes(1), SERVER_ADDR) and not client.accepts(rtp_bytes(1), STRANGER)


# --- drops and counters -----------------------------------------------------------------------------


def test_every_kind_of_bad_datagram_is_dropped_and_counted():
    wire = connected_wire()
    client, server = wire.client, wire.server
    client.send_rtp(rtp_bytes(500))
    client.send_rtcp(rr_bytes(1, 2, 3))
    wire.flush()
    (_, _, genuine_rtp), (_, _, genuine_rtcp) = wire.log[-2:]
    before = len(wire.events[SERVER_ADDR])

    wire.inject(SERVER_ADDR, genuine_rtp, STRANGER)  # a valid packet from elsewhere
    wire.inject(SERVER_ADDR, genuine_rtcp, STRANGER)
    assert server.counters.unauthenticated_source == 2

    wire.inject(SERVER_ADDR, genuine_rtp, CLIENT_ADDR)  # replayed
    wire.inject(SERVER_ADDR, genuine_rtcp, CLIENT_ADDR)
    assert server.counters.srtp_replayed == 2

    # A fresh packet (replay is checked before authentication) with one bit flipped in its tag.
    client.send_rtp(rtp_bytes(502))
    ((fresh, _),) = client.datagrams_to_send(wire.now)
    tampered = bytearray(fresh)
    tampered[-1] ^= 1
    wire.inject(SERVER_ADDR, bytes(tampered), CLIENT_ADDR)
    wire.inject(SERVER_ADDR, b"\x80\x6f" + bytes(40), CLIENT_ADDR)  # RTP-looking, never protected
    assert server.counters.srtp_auth_failed == 2

    wire.inject(SERVER_ADDR, b"\x80\x6f\x00\x01", CLIENT_ADDR)  # shorter than a header
    wire.inject(SERVER_ADDR, b"\x80", CLIENT_ADDR)
    assert server.counters.malformed == 2

    for junk in (b"", b"\x05junk", b"\x10zrtp", b"\x40turn", b"\xffnope"):
        wire.inject(SERVER_ADDR, junk, CLIENT_ADDR)
    assert server.counters.unknown_class == 5

    wire.inject(SERVER_ADDR, b"\x00\x01\x00\x00garbage-stun", CLIENT_ADDR)
    assert server.ice_counters.malformed == 1
    wire.inject(SERVER_ADDR, b"\x17\xfe\xfd" + bytes(30), CLIENT_ADDR)  # a forged DTLS record
    # A spoofed plaintext fatal alert (epoch 0, handshake_failure) cannot end a keyed session.
    alert = bytes([21, 0xFE, 0xFD, 0, 0]) + (99).to_bytes(6, "big") + (2).to_bytes(2, "big") + bytes([2, 40])
    wire.inject(SERVER_ADDR, alert, CLIENT_ADDR)
    assert server.state is TransportState.CONNECTED

    # None of it produced an event, and genuine media still flows afterwards.
    assert len(wire.events[SERVER_ADDR]) == before
    client.send_rtp(rtp_bytes(501))
    wire.flush()
    assert wire.events[SERVER_ADDR][-1] == RtpReceived(rtp_bytes(501))


def test_send_refuses_what_srtp_cannot_protect():
    wire = connected_wire()
    assert not wire.client.send_rtp(b"\x80\x6f\x00")
    assert not wire.client.send_rtcp(b"\x81\xc9")
    assert wire.client.counters.send_invalid == 2


@settings(max_examples=examples(3), deadline=None)
@given(
    data=st.binary(max_size=200),
    first=st.integers(0, 255),
    from_client=st.booleans(),
)
def test_arbitrary_datagrams_never_raise_nor_make_media(data, first, from_client):
    wire = CONNECTED_FOR_FUZZ
    server = wire.server
    datagram = bytes([first]) + data
    before = len(wire.events[SERVER_ADDR])
    server.receive_datagram(datagram, CLIENT_ADDR if from_client else STRANGER, wire.now)
    server.datagrams_to_send(wire.now)
    wire.collect()
    new = wire.events[SERVER_ADDR][before:]
    assert not any(isinstance(e, (RtpReceived, RtcpReceived, DataReceived, TransportConnected)) for e in new)
    assert server.state is TransportState.CONNECTED


CONNECTED_FOR_FUZZ = connected_wire()


@settings(max_examples=examples(2), deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=120), st.sampled_from([CLIENT_ADDR, STRANGER])), max_size=8))
def test_arbitrary_datagrams_to_a_new_lite_transport_change_nothing(datagrams):
    _, server = make_pair()
    for data, addr in datagrams:
        server.receive_datagram(data, addr, 0.0)
    assert server.next_event() is None
    assert server.selected_address is None
    # Only small STUN error answers may go out, and only to where requests came from.
    for out, addr in server.datagrams_to_send(0.0):
        assert out[0] < 4


# --- failures and closing ---------------------------------------------------------------------------


@pytest.mark.parametrize("who_is_deceived", ["server", "client"])
def test_wrong_fingerprint_fails_both_sides_with_a_clear_reason(who_is_deceived):
    kw = {"server_sees": OTHER_CERT} if who_is_deceived == "server" else {"client_sees": OTHER_CERT}
    client, server = make_pair(**kw)
    wire = Wire(client, server)
    wire.start()
    wire.run(lambda: client.state is TransportState.FAILED and server.state is TransportState.FAILED)
    deceived, other = (SERVER_ADDR, CLIENT_ADDR) if who_is_deceived == "server" else (CLIENT_ADDR, SERVER_ADDR)
    (failed,) = wire.of(deceived, TransportFailed)
    assert "fingerprint" in failed.reason and "bad_certificate" in failed.reason.lower()
    (peer_failed,) = wire.of(other, TransportFailed)
    assert "bad_certificate" in peer_failed.reason.lower()  # the alert we sent reached the peer
    assert not wire.of(deceived, TransportConnected) and not wire.of(other, TransportConnected)
    assert not client.send_rtp(rtp_bytes(1))


def test_no_common_srtp_profile_fails_the_transport():
    client, server = make_pair(
        server_profiles=(SrtpProfile.AEAD_AES_128_GCM,), client_profiles=(SrtpProfile.AES128_CM_HMAC_SHA1_80,)
    )
    wire = Wire(client, server)
    wire.start()
    wire.run(lambda: client.state is not TransportState.CONNECTING and server.state is not TransportState.CONNECTING)
    for addr in (CLIENT_ADDR, SERVER_ADDR):
        assert wire.of(addr, TransportFailed), wire.events[addr]
        assert not wire.of(addr, TransportConnected)


def test_close_sends_close_notify_and_the_peer_sees_an_orderly_close():
    wire = connected_wire()
    wire.client.close()
    wire.flush()
    assert wire.of(CLIENT_ADDR, TransportClosed) == [TransportClosed(by_peer=False)]
    assert wire.of(SERVER_ADDR, TransportClosed) == [TransportClosed(by_peer=True)]
    assert wire.server.state is TransportState.CLOSED
    assert not wire.server.send_rtp(rtp_bytes(1))
    wire.inject(SERVER_ADDR, rtp_bytes(1), CLIENT_ADDR)
    assert wire.server.counters.after_close == 1
    assert wire.client.next_deadline() is None and wire.server.next_deadline() is None


def test_consent_loss_fails_the_lite_side_and_silences_it():
    wire = connected_wire()
    server = wire.server
    start = wire.now
    wire.cut = True  # the path dies
    wire.run(lambda: server.state is TransportState.FAILED, limit=start + 60)
    (failed,) = wire.of(SERVER_ADDR, TransportFailed)
    assert "consent" in failed.reason
    # RFC 7675: 30 s after the last authenticated check (which came within ~6 s of start).
    assert start + 30 - 0.1 <= wire.now <= start + 30 + 6.5
    assert not server.send_rtp(rtp_bytes(9))
    assert server.datagrams_to_send(wire.now) == []


def test_lite_side_that_hears_nothing_times_out():
    _, server = make_pair()
    server.start(100.0)
    assert server.next_deadline() == 130.0
    server.handle_timeout(130.0)
    event = server.next_event()
    assert isinstance(event, TransportFailed)
    assert event.reason.startswith("not connected within 30 s")
    assert server.next_deadline() is None


# --- a lossy, duplicating, reordering network under MockClock ------------------------------------------

LOSS, DUPLICATION, DELAY = 0.2, 0.1, (0.005, 0.060)


class LossyNetwork:
    def __init__(self, nursery: trio.Nursery, seed: int) -> None:
        self.nursery = nursery
        self.rng = random.Random(seed)
        self.inboxes: dict[tuple, trio.MemorySendChannel] = {}
        self.dropped = self.duplicated = 0

    def send(self, src: tuple, dst: tuple, datagram: bytes) -> None:
        inbox = self.inboxes.get(dst)
        if inbox is None or self.rng.random() < LOSS:
            self.dropped += 1
            return
        copies = 2 if self.rng.random() < DUPLICATION else 1
        self.duplicated += copies - 1
        for _ in range(copies):
            self.nursery.start_soon(self._later, self.rng.uniform(*DELAY), inbox, (datagram, src))

    @staticmethod
    async def _later(delay: float, inbox: trio.MemorySendChannel, item) -> None:
        await trio.sleep(delay)
        inbox.send_nowait(item)


class Endpoint:
    """The canonical sans-IO driver for one transport: drain outputs, wait for a datagram or the deadline."""

    def __init__(self, transport: PeerTransport, addr: tuple, network: LossyNetwork) -> None:
        self.transport = transport
        self.addr = addr
        self.network = network
        self.events: list = []
        self.send_inbox, self.inbox = trio.open_memory_channel(math.inf)
        network.inboxes[addr] = self.send_inbox
        self.wakeup = trio.Event()

    def flush(self) -> None:
        for datagram, dst in self.transport.datagrams_to_send(trio.current_time()):
            self.network.send(self.addr, dst, datagram)
        while (event := self.transport.next_event()) is not None:
            self.events.append(event)

    async def run(self) -> None:
        self.transport.start(trio.current_time())
        while True:
            self.flush()
            deadline = self.transport.next_deadline()
            with trio.move_on_at(math.inf if deadline is None else deadline):
                datagram, src = await self.inbox.receive()
                self.transport.receive_datagram(datagram, src, trio.current_time())
                continue
            self.transport.handle_timeout(trio.current_time())

    def of(self, kind) -> list:
        return [e for e in self.events if isinstance(e, kind)]


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
async def test_lossy_link_connects_and_carries_media_both_ways(autojump_clock, seed):
    client, server = make_pair(seed=seed)
    async with trio.open_nursery() as nursery:
        network = LossyNetwork(nursery, seed)
        a, b = Endpoint(client, CLIENT_ADDR, network), Endpoint(server, SERVER_ADDR, network)
        nursery.start_soon(a.run)
        nursery.start_soon(b.run)
        with trio.fail_after(60):
            while not (a.of(TransportConnected) and b.of(TransportConnected)):
                await trio.sleep(0.01)
        assert trio.current_time() < 30  # well inside the connect timeout despite losses

        # Garbage and strangers arriving at the server between media: dropped and counted, never events.
        now = trio.current_time()
        server.receive_datagram(b"\x80\x6f" + bytes(30), STRANGER, now)
        server.receive_datagram(b"\x17\xfe\xfd" + bytes(30), STRANGER, now)
        server.receive_datagram(b"\xffgarbage", CLIENT_ADDR, now)
        server.receive_datagram(b"\x80\x6f" + bytes(30), CLIENT_ADDR, now)
        assert server.counters.unauthenticated_source == 2
        assert server.counters.unknown_class == 1
        assert server.counters.srtp_auth_failed == 1

        up = {seq: rtp_bytes(seq) for seq in range(1000, 1200)}
        down = {seq: rtp_bytes(seq, ssrc=0xABCDEF01) for seq in range(50, 250)}
        for seq in range(1000, 1200):
            client.send_rtp(up[seq])
            server.send_rtp(down[50 + seq - 1000])
            if seq % 20 == 0:
                client.send_rtcp(rr_bytes(1, 0xABCDEF01, seq))
                server.send_rtcp(rr_bytes(2, 0x11223344, seq))
            a.flush()
            b.flush()
            await trio.sleep(0.02)
        await trio.sleep(1.0)
        nursery.cancel_scope.cancel()

    for endpoint, sent, peer in ((b, up, client), (a, down, server)):
        got = [parse_rtp(e.packet) for e in endpoint.of(RtpReceived)]
        seqs = [p.sequence_number for p in got]
        assert len(seqs) == len(set(seqs)), "a duplicated datagram was delivered twice"
        for p in got:
            assert p.serialize() == sent[p.sequence_number]
        # ~20% loss: most of 200 arrive, not all.
        assert 120 <= len(seqs) < 200
        assert endpoint.of(RtcpReceived)
        assert not endpoint.of(TransportFailed)
    assert server.counters.srtp_auth_failed == 1 and client.counters.srtp_auth_failed == 0
    assert network.dropped > 0 and network.duplicated > 0
    # Duplicates of media that arrived are caught by the SRTP replay window.
    assert client.counters.srtp_replayed + server.counters.srtp_replayed > 0


@pytest.mark.parametrize("seed", [1, 2])
async def test_lossy_link_wrong_fingerprint_fails_clearly(autojump_clock, seed):
    client, server = make_pair(server_sees=OTHER_CERT, seed=seed)
    async with trio.open_nursery() as nursery:
        network = LossyNetwork(nursery, seed)
        a, b = Endpoint(client, CLIENT_ADDR, network), Endpoint(server, SERVER_ADDR, network)
        nursery.start_soon(a.run)
        nursery.start_soon(b.run)
        with trio.fail_after(90):
            while not b.of(TransportFailed):
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    (failed,) = b.of(TransportFailed)
    assert "does not match the signalled fingerprint" in failed.reason
    assert not b.of(TransportConnected) and not a.of(TransportConnected)
