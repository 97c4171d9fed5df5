"""RTCP compound packets: decode, and what we decode we can serialize and read back."""

from __future__ import annotations

from fuzz.target import FuzzTarget
from rtp import rtcp


def run(data: bytes) -> None:
    packets = rtcp.parse_rtcp(data)
    for packet in packets:
        # What the down track and the bandwidth estimator read from feedback.
        if isinstance(packet, rtcp.TransportCc):
            packet.arrival_times_us()
        elif isinstance(packet, rtcp.Nack):
            packet.lost_sequence_numbers()
    again = rtcp.parse_rtcp(rtcp.serialize_rtcp(packets))
    if again != packets:
        raise AssertionError(f"RTCP round trip changed the packets: {packets!r} -> {again!r}")


def seeds() -> list[bytes]:
    block = rtcp.ReportBlock(0x2222, 3, 10, 70000, 12, 0x12345678, 655)
    compounds = [
        [rtcp.SenderReport(0x1111, 0xE1234567_89ABCDEF, 90000, 10, 12000, [block]),
         rtcp.Sdes([rtcp.SdesChunk(0x1111, [(rtcp.SdesItemType.CNAME, b"trio-sfu")])])],
        [rtcp.ReceiverReport(0x3333, [block, block]), rtcp.Bye([0x1111, 0x2222], b"bye")],
        [rtcp.Nack.from_lost(1, 2, [100, 101, 105, 130, 7000])],
        [rtcp.Pli(1, 2), rtcp.Fir(1, [rtcp.FirEntry(2, 7)]), rtcp.Remb(1, 1_500_000, [2, 3])],
        [rtcp.SenderReport(5, profile_extension=bytes(8)), rtcp.Bye([], None)],
        [rtcp.TransportCc.build(1, 2, 3, 10, [(100, True, 0), (101, False, None), (102, True, 1000),
                                              (103, True, 70_000), (104, False, None), (105, True, -500)])],
        [rtcp.RtcpUnknown(204, 1, b"name" + bytes(4))],
    ]
    return [rtcp.serialize_rtcp(c) for c in compounds]


TARGET = FuzzTarget(
    "rtcp", "rtp.rtcp.parse_rtcp (SR, RR, SDES, BYE, NACK, PLI, FIR, REMB, transport-cc); round trip",
    run, (rtcp.RtcpParseError,), seeds, max_len=1500,
)
