"""RFC 7983 first-octet demultiplexing, checked against real packets of each protocol."""

from __future__ import annotations

import aiortc.rtp as aiortc_rtp
import pytest
from aioice import stun
from budgets import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from rtp.demux import PacketKind, classify
from rtp.packet import RtpPacket
from rtp.rtcp import Nack, Pli, ReceiverReport


def test_stun_from_aioice():
    msg = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    assert classify(bytes(msg)) is PacketKind.STUN


def test_dtls_records_from_openssl():
    from OpenSSL import SSL

    ctx = SSL.Context(SSL.DTLS_METHOD)
    conn = SSL.Connection(ctx, None)
    conn.set_connect_state()
    try:
        conn.do_handshake()
    except SSL.WantReadError:
        pass
    hello = conn.bio_read(4096)
    assert hello[0] == 22  # handshake record
    assert classify(hello) is PacketKind.DTLS


def test_rtp_and_rtcp():
    for pt in (0, 96, 111, 127):
        for marker in (False, True):
            data = RtpPacket(payload_type=pt, marker=marker, ssrc=1).serialize()
            # RFC 5761 §4: payload types 64-95 would collide with RTCP 192-223 when
            # the marker bit is set; the ones used here never do.
            assert classify(data) is PacketKind.RTP
    for pkt in (ReceiverReport(1), Pli(1, 2), Nack.from_lost(1, 2, [5])):
        assert classify(pkt.serialize()) is PacketKind.RTCP
    sr = bytes(aiortc_rtp.RtcpSrPacket(ssrc=1, sender_info=aiortc_rtp.RtcpSenderInfo(0, 0, 0, 0)))
    assert classify(sr) is PacketKind.RTCP


@pytest.mark.parametrize(
    "first,kind",
    [
        (0, PacketKind.STUN),
        (3, PacketKind.STUN),
        (4, PacketKind.UNKNOWN),
        (15, PacketKind.UNKNOWN),
        (16, PacketKind.ZRTP),
        (19, PacketKind.ZRTP),
        (20, PacketKind.DTLS),
        (63, PacketKind.DTLS),
        (64, PacketKind.TURN_CHANNEL),
        (79, PacketKind.TURN_CHANNEL),
        (80, PacketKind.UNKNOWN),
        (127, PacketKind.UNKNOWN),
        (192, PacketKind.UNKNOWN),
        (255, PacketKind.UNKNOWN),
    ],
)
def test_boundaries(first, kind):
    assert classify(bytes((first, 0, 0, 0))) is kind


def test_rtcp_second_octet_range():
    assert classify(b"\x80\xbf") is PacketKind.RTP
    assert classify(b"\x80\xc0") is PacketKind.RTCP
    assert classify(b"\x80\xdf") is PacketKind.RTCP
    assert classify(b"\x80\xe0") is PacketKind.RTP


def test_too_short():
    assert classify(b"") is PacketKind.UNKNOWN
    assert classify(b"\x80") is PacketKind.UNKNOWN
    assert classify(b"\x00") is PacketKind.STUN


@settings(max_examples=examples(3), deadline=None)
@given(st.binary(max_size=4))
def test_total(data):
    assert isinstance(classify(data), PacketKind)
    assert classify(bytearray(data)) is classify(memoryview(data))
