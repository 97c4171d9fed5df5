"""RTCP builders checked with aiortc's independent RTCP parser; layer selection against
LiveKit's own VideoQuality enum and the resolutions the JS SDK publishes."""

import pytest

from rtp.rtcp import ReportBlock
from trio_sfu.forwarding.rtcp_feedback import (
    FirSequencer,
    build_nack,
    build_pli,
    build_receiver_report,
    build_remb,
    build_sender_report,
    ntp_from_unix,
)
from trio_sfu.forwarding.simulcast import (
    PublishedLayer,
    VideoQuality,
    layer_for_rid,
    select_target_layer,
)

aiortc_rtp = pytest.importorskip("aiortc.rtp", reason="aiortc's RTCP parser is the reference")


def test_rr_sdes_compound_parsed_by_aiortc():
    blocks = [ReportBlock(ssrc=1000 + i, fraction_lost=i, packets_lost=i, highest_sequence=70000 + i) for i in range(33)]
    data = build_receiver_report(0xABC, blocks, "sfu")
    parsed = aiortc_rtp.RtcpPacket.parse(data)
    rrs = [p for p in parsed if isinstance(p, aiortc_rtp.RtcpRrPacket)]
    assert [len(r.reports) for r in rrs] == [31, 2]
    assert [r.ssrc for rr in rrs for r in rr.reports] == [b.ssrc for b in blocks]
    sdes = [p for p in parsed if isinstance(p, aiortc_rtp.RtcpSdesPacket)]
    assert sdes[0].chunks[0].items[0] == (1, b"sfu")


def test_sr_parsed_by_aiortc():
    ntp = ntp_from_unix(1_700_000_000.5)
    data = build_sender_report(7, ntp, 2**32 + 5, 10, 2**32 + 3, "x")
    sr = aiortc_rtp.RtcpPacket.parse(data)[0]
    assert isinstance(sr, aiortc_rtp.RtcpSrPacket)
    assert sr.sender_info.ntp_timestamp == ntp
    assert (sr.sender_info.rtp_timestamp, sr.sender_info.packet_count, sr.sender_info.octet_count) == (5, 10, 3)
    # NTP seconds since 1900 and the half second in the fraction
    assert ntp >> 32 == 1_700_000_000 + 2_208_988_800 and ntp & 0xFFFFFFFF == 1 << 31


def test_feedback_parsed_by_aiortc():
    nack = aiortc_rtp.RtcpPacket.parse(build_nack(1, 2, [65534, 65535, 0, 40]))[0]
    assert isinstance(nack, aiortc_rtp.RtcpRtpfbPacket) and nack.media_ssrc == 2
    assert sorted(s & 0xFFFF for s in nack.lost) == [0, 40, 65534, 65535]  # aiortc does not wrap
    pli = aiortc_rtp.RtcpPacket.parse(build_pli(1, 2))[0]
    assert isinstance(pli, aiortc_rtp.RtcpPsfbPacket) and pli.fmt == 1 and pli.media_ssrc == 2
    remb = aiortc_rtp.RtcpPacket.parse(build_remb(1, 1_500_000, [2, 3]))[0]
    assert aiortc_rtp.unpack_remb_fci(remb.fci) == (1_500_000, [2, 3])


def test_fir_sequence_numbers_per_target():
    from rtp.rtcp import parse_rtcp

    fir = FirSequencer(9)
    seqs = [parse_rtcp(fir.build(s))[0].entries[0] for s in (5, 5, 6, 5)]
    assert [(e.ssrc, e.sequence_number) for e in seqs] == [(5, 0), (5, 1), (6, 0), (5, 2)]
    for _ in range(300):
        last = parse_rtcp(fir.build(6))[0].entries[0].sequence_number
    assert last == 300 % 256


def test_video_quality_matches_livekit_protocol():
    models = pytest.importorskip("livekit.protocol.models", reason="livekit-protocol defines VideoQuality")
    for q in VideoQuality:
        assert models.VideoQuality.Value(q.name) == q.value


# What livekit-client publishes for a 1280x720 camera: q 320x180, h 640x360, f 1280x720.
LAYERS = [PublishedLayer(0, 320, 180), PublishedLayer(1, 640, 360), PublishedLayer(2, 1280, 720)]


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        (dict(width=300, height=170), 0),
        (dict(width=320, height=180), 0),
        (dict(width=321, height=180), 1),
        (dict(width=360, height=640), 1),  # portrait element, rotation-agnostic
        (dict(width=1920, height=1080), 2),
        (dict(quality=VideoQuality.MEDIUM), 1),
        (dict(quality=VideoQuality.HIGH), 2),
        (dict(quality=VideoQuality.OFF), None),
        (dict(disabled=True, quality=VideoQuality.HIGH), None),
        (dict(), 2),
    ],
)
def test_select_target_layer(kwargs, expected):
    assert select_target_layer(LAYERS, **kwargs) == expected


def test_select_with_missing_layers_and_non_simulcast():
    two = LAYERS[:2]
    assert select_target_layer(two, quality=VideoQuality.HIGH) == 1
    assert select_target_layer([LAYERS[2]], quality=VideoQuality.LOW) == 2
    assert select_target_layer([], quality=VideoQuality.LOW) == 0
    assert select_target_layer([], disabled=True) is None


def test_layer_for_rid():
    assert [layer_for_rid(r) for r in "qhf"] == [0, 1, 2]
    assert layer_for_rid("lo", ("lo", "mid", "hi")) == 0 and layer_for_rid("hi", ["lo", "hi"]) == 1
    assert layer_for_rid("zz", ("a",)) is None
