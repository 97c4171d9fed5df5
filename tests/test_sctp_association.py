"""State-machine behaviour of SctpAssociation, our side against our side, on a hand-driven clock."""

from __future__ import annotations

import pytest

from rtp.sctp import chunks as c
from rtp.sctp.association import (
    MAX_CHANNELS,
    MAX_LABEL_BYTES,
    RTO_INITIAL,
    AssociationState,
    ChannelState,
    SctpAssociation,
)
from rtp.sctp.errors import SctpProtocolError
from rtp.sctp.events import (
    AssociationClosed,
    AssociationEstablished,
    ChannelClosed,
    ChannelOpened,
    MessageReceived,
    Reliability,
)


def drain(assoc):
    out = []
    while (event := assoc.next_event()) is not None:
        out.append(event)
    return out


def pump(a, b, now, drop=lambda packet: False):
    for _ in range(500):
        moved = False
        for x, y in ((a, b), (b, a)):
            for packet in x.packets_to_send(now):
                moved = True
                if not drop(packet):
                    y.receive_packet(packet, now)
        if not moved:
            return
    raise AssertionError("endpoints never went quiet")


def chunk_types(packet):
    return [type(ch).__name__ for ch in c.parse_packet(packet).chunks]


def connect():
    a, b = SctpAssociation(True), SctpAssociation(False)
    a.start(0.0)
    pump(a, b, 0.0)
    assert drain(a) == [AssociationEstablished()] and drain(b) == [AssociationEstablished()]
    return a, b


def test_handshake_is_init_initack_cookieecho_cookieack():
    a, b = SctpAssociation(True), SctpAssociation(False)
    b.start(0.0)  # the DTLS server waits for the peer's INIT
    assert b.packets_to_send(0.0) == []
    a.start(0.0)
    seen = []
    for x, y in ((a, b), (b, a), (a, b), (b, a)):
        (packet,) = x.packets_to_send(0.0)
        seen += chunk_types(packet)
        y.receive_packet(packet, 0.0)
    assert seen == ["InitChunk", "InitAckChunk", "CookieEchoChunk", "CookieAckChunk"]
    assert a.state is b.state is AssociationState.ESTABLISHED


def test_lost_init_is_retransmitted_on_t1_with_backoff():
    a, b = SctpAssociation(True), SctpAssociation(False)
    a.start(0.0)
    assert a.next_deadline() == pytest.approx(RTO_INITIAL)
    a.packets_to_send(0.0)  # lost
    a.handle_timeout(RTO_INITIAL)
    assert a.next_deadline() == pytest.approx(RTO_INITIAL + 2 * RTO_INITIAL)
    pump(a, b, RTO_INITIAL)
    assert a.state is AssociationState.ESTABLISHED


def test_init_gives_up_after_max_retransmits():
    a = SctpAssociation(True)
    a.start(0.0)
    for _ in range(20):
        timer = a.next_deadline()
        if timer is None:
            break
        a.handle_timeout(timer)
        a.packets_to_send(timer)
    assert a.state is AssociationState.CLOSED
    assert drain(a) == [AssociationClosed("association setup timed out")]


def test_tampered_or_stale_cookie_is_refused():
    a, b = SctpAssociation(True), SctpAssociation(False)
    a.start(0.0)
    b.receive_packet(a.packets_to_send(0.0)[0], 0.0)
    a.receive_packet(b.packets_to_send(0.0)[0], 0.0)
    (echo_packet,) = a.packets_to_send(0.0)
    packet = c.parse_packet(echo_packet)
    cookie = bytearray(packet.chunks[0].cookie)
    cookie[5] ^= 1
    forged = c.serialize_packet(c.Packet(5000, 5000, packet.verification_tag, [c.CookieEchoChunk(bytes(cookie))]))
    b.receive_packet(forged, 0.0)
    assert b.state is AssociationState.CLOSED and b.packets_to_send(0.0) == []
    b.receive_packet(echo_packet, 61.0)  # past the 60 s cookie lifetime
    assert b.state is AssociationState.CLOSED
    b.receive_packet(echo_packet, 1.0)
    assert b.state is AssociationState.ESTABLISHED


def test_heartbeat_is_answered_with_the_same_info():
    a, b = connect()
    info = [(c.ParamType.HEARTBEAT_INFO, b"opaque-sender-state")]
    b.receive_packet(c.serialize_packet(c.Packet(5000, 5000, b._local_tag, [c.HeartbeatChunk(info)])), 1.0)
    (reply,) = b.packets_to_send(1.0)
    parsed = c.parse_packet(reply)
    assert parsed.verification_tag == a._local_tag
    assert parsed.chunks == [c.HeartbeatAckChunk(info)]


def test_channels_from_both_sides_use_their_parity_and_carry_parameters():
    a, b = connect()
    a_sid = a.open_channel("a-timed", protocol="p", ordered=False, max_packet_lifetime=500, priority=512)
    b_sid = b.open_channel("b-rexmit", max_retransmits=2)
    assert a_sid % 2 == 0 and b_sid % 2 == 1
    pump(a, b, 0.0)
    assert drain(b) == [
        ChannelOpened(a_sid, "a-timed", "p", False, Reliability(max_packet_lifetime=500)),
        ChannelOpened(b_sid, "b-rexmit", "", True, Reliability(max_retransmits=2), locally_initiated=True),
    ]
    assert drain(a) == [
        ChannelOpened(b_sid, "b-rexmit", "", True, Reliability(max_retransmits=2)),
        ChannelOpened(a_sid, "a-timed", "p", False, Reliability(max_packet_lifetime=500), locally_initiated=True),
    ]


def test_delayed_sack_fires_after_200ms_for_a_lone_packet():
    a, b = connect()
    sid = a.open_channel("x")
    pump(a, b, 0.0)
    drain(b)
    a.send(sid, "one")
    (packet,) = a.packets_to_send(1.0)
    b.receive_packet(packet, 1.0)
    assert b.packets_to_send(1.0) == []  # no SACK yet for one in-order packet
    assert b.next_deadline() == pytest.approx(1.2)
    b.handle_timeout(1.2)
    (sack,) = b.packets_to_send(1.2)
    assert chunk_types(sack) == ["SackChunk"]


def test_stream_reset_closes_both_directions_and_restarts_ssn():
    a, b = connect()
    sid = a.open_channel("x")
    pump(a, b, 0.0)
    for i in range(3):
        a.send(sid, f"before {i}")
    a.close_channel(sid)
    # Refused and counted, never raised: nothing is queued on a closing channel.
    assert a.send(sid, "after close") is False and a.counters.send_no_channel == 1
    # The request waits for the queued messages: they still arrive, then both sides report closed.
    pump(a, b, 0.0)
    b_events = drain(b)
    assert [e.data for e in b_events if isinstance(e, MessageReceived)] == [f"before {i}" for i in range(3)]
    assert ChannelClosed(sid) in b_events and ChannelClosed(sid) in drain(a)
    assert a.channels == {} and b.channels == {}
    # Both directions of the stream start again from SSN 0 (RFC 6525 §5.2.2 E4).
    assert sid not in a._stream_ssn and b._reassembler.next_ssn(sid) is None
    other = a.open_channel("y")
    pump(a, b, 0.0)
    a.send(other, "fresh")
    pump(a, b, 0.0)
    assert MessageReceived(other, "fresh", 51) in drain(b)


def test_refused_sends_return_false_and_are_counted():
    a = SctpAssociation(True, remote_max_message_size=100)
    b = SctpAssociation(False)
    a.start(0.0)
    pump(a, b, 0.0)
    sid = a.open_channel("x")
    pump(a, b, 0.0)
    drain(b)
    assert a.send(sid + 2, "no such channel") is False
    assert a.send(sid, b"x" * 101) is False  # over the peer's a=max-message-size
    assert (a.counters.send_no_channel, a.counters.send_too_large) == (1, 1)
    assert a.buffered_amount == 0 and a.packets_to_send(0.0) == []
    assert a.send(sid, b"x" * 100) is True
    pump(a, b, 0.0)
    assert drain(b) == [MessageReceived(sid, b"x" * 100, 53)]


def test_peer_channel_opens_past_the_caps_are_refused_and_counted():
    """A peer opening channel after channel (or with 64 KiB labels) must not grow our channel
    table: past MAX_CHANNELS, or with a label/protocol over MAX_LABEL_BYTES, the OPEN is refused
    (no ACK, counted) and the association carries on."""
    a, b = connect()
    long_label = a.open_channel("x" * (MAX_LABEL_BYTES + 1))
    long_protocol = a.open_channel("_reliable", protocol="p" * (MAX_LABEL_BYTES + 1))
    fits = a.open_channel("é" * (MAX_LABEL_BYTES // 2), protocol="q" * MAX_LABEL_BYTES)  # exactly the cap in bytes
    extra = 10
    sids = [a.open_channel(f"c{i}") for i in range(MAX_CHANNELS - 1 + extra)]
    pump(a, b, 0.0)
    opened = [e.stream_id for e in drain(b) if isinstance(e, ChannelOpened)]
    assert opened == [fits] + sids[: MAX_CHANNELS - 1]
    assert len(b.channels) == MAX_CHANNELS
    assert b.counters.channel_opens_refused == 2 + extra
    # The refused channels never open on the opener's side; messages on them are dropped.
    assert a.channel_state(long_label) is ChannelState.CONNECTING
    assert a.channel_state(sids[-1]) is ChannelState.CONNECTING
    dropped = b.counters.malformed_messages
    assert a.send(long_protocol, b"hello")
    assert a.send(sids[0], b"still here")
    pump(a, b, 0.0)
    assert drain(b) == [MessageReceived(sids[0], b"still here", 53)]
    assert b.counters.malformed_messages == dropped + 1
    assert b.state is AssociationState.ESTABLISHED


def test_peer_close_is_followed_by_our_reset():
    a, b = connect()
    sid = a.open_channel("x")
    pump(a, b, 0.0)
    drain(a), drain(b)
    b.close_channel(sid)
    assert b.channel_state(sid) is ChannelState.CLOSING
    pump(a, b, 0.0)
    assert drain(a) == [ChannelClosed(sid)] and drain(b) == [ChannelClosed(sid)]


def test_reset_request_waits_for_missing_data_with_in_progress():
    a, b = connect()
    sid = a.open_channel("x")
    pump(a, b, 0.0)
    drain(b)
    a.send(sid, "in flight")
    a.close_channel(sid)
    lost = a.packets_to_send(1.0)  # the DATA is lost
    ((*_, last),) = [chunk_types(p) for p in lost]
    assert last == "DataChunk" and "ReconfigChunk" not in chunk_types(lost[0])
    request = a.packets_to_send(1.0)
    for packet in request:
        b.receive_packet(packet, 1.0)
    # The request only leaves once the DATA has its TSN, so it arrives alone here:
    # the peer must not reset before that data is in.
    replies = [ch for p in b.packets_to_send(1.0) for ch in c.parse_packet(p).chunks if isinstance(ch, c.ReconfigChunk)]
    ((ptype, value),) = replies[0].params
    assert c.ReconfigResponse.parse(value).result == c.ReconfigResult.IN_PROGRESS
    assert drain(b) == []
    # Retransmissions complete the data and then the reset.
    for t in (3.0, 6.0, 12.0):
        a.handle_timeout(t)
        b.handle_timeout(t)
        pump(a, b, t)
    events = drain(b)
    assert MessageReceived(sid, "in flight", 51) in events and ChannelClosed(sid) in events
    assert events.index(MessageReceived(sid, "in flight", 51)) < events.index(ChannelClosed(sid))


def test_timed_channel_drops_expired_messages_without_retransmitting():
    a, b = connect()
    sid = a.open_channel("t", ordered=False, max_packet_lifetime=100)
    pump(a, b, 0.0)
    drain(b)
    before = a.counters.chunks_retransmitted
    a.send(sid, "expires", now=1.0)
    a.packets_to_send(1.0)  # lost
    a.send(sid, "arrives", now=1.0)
    pump(a, b, 1.0)
    for t in (2.0, 4.0, 8.0):
        a.handle_timeout(t)
        b.handle_timeout(t)
        pump(a, b, t)
    assert [e.data for e in drain(b) if isinstance(e, MessageReceived)] == ["arrives"]
    assert a.counters.chunks_retransmitted == before
    assert a.counters.forward_tsn_sent >= 1 and a.unacked_chunks == 0


def test_graceful_shutdown_between_our_endpoints_delivers_queued_data_first():
    a, b = connect()
    sid = a.open_channel("x")
    a.send(sid, b"z" * 20000)
    a.shutdown()
    pump(a, b, 0.0)
    b.handle_timeout(0.2)
    pump(a, b, 0.2)
    b_events = drain(b)
    assert MessageReceived(sid, b"z" * 20000, 53) in b_events
    assert b_events[-1] == AssociationClosed("shutdown")
    assert drain(a)[-1] == AssociationClosed("shutdown")
    assert a.state is b.state is AssociationState.CLOSED


def test_abort_is_sent_and_handled():
    a, b = connect()
    sid = a.open_channel("x")
    pump(a, b, 0.0)
    drain(a), drain(b)
    a.abort("going away")
    assert drain(a) == [ChannelClosed(sid), AssociationClosed("going away")]
    pump(a, b, 0.0)
    assert drain(b) == [ChannelClosed(sid), AssociationClosed("aborted by peer")]
    assert b.next_deadline() is None


def test_negotiated_stream_counts_bound_channel_ids_and_inbound_streams():
    # A hand-driven peer announcing 2 outbound and 3 inbound streams (RFC 9260 §5.1.1).
    b = SctpAssociation(False)
    peer_tag, peer_tsn = 0xABCDEF01, 1000
    init = c.InitChunk(peer_tag, 65536, 2, 3, peer_tsn, [(c.ParamType.FORWARD_TSN_SUPPORTED, b"")])
    b.receive_packet(c.serialize_packet(c.Packet(5000, 5000, 0, [init])), 0.0)
    (reply,) = b.packets_to_send(0.0)
    init_ack = c.parse_packet(reply)
    assert init_ack.verification_tag == peer_tag
    (ack_chunk,) = init_ack.chunks
    cookie = dict(ack_chunk.params)[c.ParamType.STATE_COOKIE]
    b.receive_packet(
        c.serialize_packet(c.Packet(5000, 5000, ack_chunk.initiate_tag, [c.CookieEchoChunk(cookie)])), 0.0
    )
    (cookie_ack,) = b.packets_to_send(0.0)
    assert c.parse_packet(cookie_ack).chunks == [c.CookieAckChunk()]
    assert drain(b) == [AssociationEstablished()]

    assert b.open_channel("ok") == 1
    with pytest.raises(SctpProtocolError):
        b.open_channel("beyond the peer's 3 inbound streams")

    # DATA on stream 2 is outside the peer's 2 outbound streams: dropped, counted, still acknowledged.
    bad = c.DataChunk(c.FLAG_BEGIN | c.FLAG_END, peer_tsn, 2, 0, 53, b"nope")
    b.receive_packet(c.serialize_packet(c.Packet(5000, 5000, ack_chunk.initiate_tag, [bad])), 0.1)
    b.handle_timeout(0.3)
    sacks = [ch for p in b.packets_to_send(0.3) for ch in c.parse_packet(p).chunks if isinstance(ch, c.SackChunk)]
    assert sacks and sacks[-1].cumulative_tsn == peer_tsn
    assert b.counters.invalid_stream == 1
    assert not [e for e in drain(b) if isinstance(e, MessageReceived)]


def _open(a, b):
    sid = a.open_channel("x")
    pump(a, b, 0.0)
    drain(a), drain(b)
    return sid


def test_rto_follows_rfc_9260_formulas_and_t3_backs_off():
    a, b = connect()
    assert a.rto == RTO_INITIAL
    # First measurement R = 0.4 s on the DCEP OPEN, whose ACK carries the SACK
    # (RFC 9260 §6.3.1 C2): SRTT = R, RTTVAR = R/2, RTO = SRTT + 4 RTTVAR = 3R.
    sid = a.open_channel("x")
    for packet in a.packets_to_send(10.0):
        b.receive_packet(packet, 10.2)
    for packet in b.packets_to_send(10.2):
        a.receive_packet(packet, 10.4)
    assert a.rto == pytest.approx(3 * 0.4)
    pump(a, b, 10.4)
    # T3 (§6.3.3): oldest outstanding chunk again, RTO doubled, cwnd down to one MTU.
    a.send(sid, b"y" * 3000)
    sent = a.packets_to_send(11.0)
    first_tsn = next(ch.tsn for p in sent for ch in c.parse_packet(p).chunks if isinstance(ch, c.DataChunk))
    rto_before = a.rto
    a.handle_timeout(a.next_deadline())
    assert a.rto == pytest.approx(min(10.0, 2 * rto_before))
    assert a.cwnd == 1200 and a.counters.t3_expirations == 1
    (again,) = a.packets_to_send(13.0)
    assert [ch.tsn for ch in c.parse_packet(again).chunks if isinstance(ch, c.DataChunk)] == [first_tsn]


def test_three_miss_reports_trigger_fast_retransmit_before_t3():
    a, b = connect()
    sid = _open(a, b)
    for i in range(8):
        a.send(sid, bytes([i]) * 1000)
    cwnd_before = a.cwnd
    packets = a.packets_to_send(1.0)
    data_packets = [p for p in packets if "DataChunk" in chunk_types(p)]
    assert len(data_packets) == 4  # the initial cwnd of 4 MTU
    lost_tsn = [ch.tsn for ch in c.parse_packet(data_packets[0]).chunks if isinstance(ch, c.DataChunk)][0]
    for packet in data_packets[1:]:  # the first is lost; each later arrival reports the hole
        b.receive_packet(packet, 1.01)
        for sack in b.packets_to_send(1.01):
            a.receive_packet(sack, 1.02)
    assert a.counters.fast_retransmits == 1 and a.counters.t3_expirations == 0
    resent = [ch.tsn for p in a.packets_to_send(1.02) for ch in c.parse_packet(p).chunks if isinstance(ch, c.DataChunk)]
    assert resent[0] == lost_tsn
    # §7.2.3: ssthresh = max(cwnd / 2, 4 MTU) and cwnd = ssthresh.
    assert a.cwnd == max(cwnd_before // 2, 4 * 1200)
