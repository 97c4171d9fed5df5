"""PeerTransport.protect_rtp_datagram and UdpMux.send_one, the fan-out's direct send path:
the datagram must be exactly what send_rtp would have queued (the peer decrypts it to the
same packet), refused in the same states, and a real socket must carry it."""

from __future__ import annotations

import socket

from test_peer_transport import CLIENT_ADDR, SERVER_ADDR, connected_wire, make_pair, rtp_bytes

from rtp.peer_transport import TransportState
from rtp.peer_transport_events import RtpReceived
from trio_sfu import metrics as m
from trio_sfu.media.udp_mux import UDP_SENT, UdpMux


def test_returned_datagram_decrypts_at_the_peer_to_the_packet_sent():
    wire = connected_wire()
    packets = [rtp_bytes(seq) for seq in range(40, 50)]
    before = wire.server.counters.rtp_sent
    for packet in packets:
        datagram, addr = wire.server.protect_rtp_datagram(packet)
        assert addr == CLIENT_ADDR and datagram != packet
        wire.inject(CLIENT_ADDR, datagram, SERVER_ADDR)
    assert [e.packet for e in wire.of(CLIENT_ADDR, RtpReceived)] == packets
    assert wire.server.counters.rtp_sent == before + len(packets)
    # Nothing was queued behind the caller's back.
    assert wire.server.datagrams_to_send(wire.now) == []


def test_refused_before_connecting_after_consent_loss_and_for_unprotectable_bytes():
    client, server = make_pair()
    assert server.protect_rtp_datagram(rtp_bytes(1)) is None
    assert server.counters.send_not_ready == 1

    wire = connected_wire()
    assert wire.server.protect_rtp_datagram(b"\x80\x60") is None
    assert wire.server.counters.send_invalid == 1

    start = wire.now
    wire.cut = True
    wire.run(lambda: wire.server.state is TransportState.FAILED, limit=start + 60)
    assert wire.server.protect_rtp_datagram(rtp_bytes(2)) is None


def test_send_one_puts_the_datagram_on_the_wire_and_counts_it():
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(5)
    metrics = m.Metrics()
    mux = UdpMux.bind("127.0.0.1", 0, metrics)
    try:
        assert mux.send_one(b"\x80hello", receiver.getsockname())
        data, addr = receiver.recvfrom(2048)
        assert data == b"\x80hello" and addr[1] == mux.local_address[1]
        assert metrics.get(UDP_SENT) == 1
        mux.sock.close()
        assert not mux.send_one(b"\x80late", receiver.getsockname())  # closed at shutdown: no raise
    finally:
        receiver.close()
        mux.sock.close()
