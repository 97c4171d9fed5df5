"""Builders for the RTCP the forwarder sends: compound RR/SR+SDES, NACK, PLI, FIR, REMB.

WebRTC negotiates reduced-size RTCP (RFC 5506, ``a=rtcp-rsize``), so feedback
messages go out alone; reports always carry an SDES CNAME (RFC 3550 §6.1).
"""

from __future__ import annotations

import functools
from typing import Iterable, Sequence

import attrs

from rtp.rtcp import (
    Fir,
    FirEntry,
    Nack,
    Pli,
    ReceiverReport,
    Remb,
    ReportBlock,
    Sdes,
    SdesChunk,
    SdesItemType,
    SenderReport,
    serialize_rtcp,
)

#: Seconds from the NTP epoch (1900) to the Unix epoch (1970).
NTP_UNIX_OFFSET = 2_208_988_800
_MAX_BLOCKS = 31  # the 5-bit report count


@attrs.frozen
class PublisherSenderReport:
    """The newest SR of a layer's SSRC with our arrival time, for mapping RTP time to NTP."""

    ssrc: int
    ntp_timestamp: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    arrival: float


def ntp_from_unix(seconds: float) -> int:
    """64-bit NTP timestamp (32.32 fixed point) for Unix time ``seconds``."""
    return int((seconds + NTP_UNIX_OFFSET) * (1 << 32)) & 0xFFFFFFFFFFFFFFFF


def _sdes(ssrc: int, cname: str) -> Sdes:
    return Sdes([SdesChunk(ssrc, [(SdesItemType.CNAME, cname.encode()[:255])])])


@functools.lru_cache(maxsize=4096)
def _sdes_octets(ssrc: int, cname: str) -> bytes:
    """The SDES packet every report of `ssrc` ends with (the same each time: made once; every
    subscriber's down track sends a sender report a second)."""
    return _sdes(ssrc, cname).serialize()


def build_receiver_report(sender_ssrc: int, blocks: Sequence[ReportBlock], cname: str) -> bytes:
    """RR(s)+SDES; more than 31 blocks spill into further RRs of the same compound."""
    reports = [
        ReceiverReport(sender_ssrc, list(blocks[i : i + _MAX_BLOCKS]))
        for i in range(0, max(len(blocks), 1), _MAX_BLOCKS)
    ]
    return serialize_rtcp([*reports, _sdes(sender_ssrc, cname)])


def build_sender_report(
    ssrc: int,
    ntp_timestamp: int,
    rtp_timestamp: int,
    packet_count: int,
    octet_count: int,
    cname: str,
    blocks: Sequence[ReportBlock] = (),
) -> bytes:
    """SR+SDES, counts masked to their 32-bit fields (they wrap per RFC 3550)."""
    sr = SenderReport(
        ssrc,
        ntp_timestamp & 0xFFFFFFFFFFFFFFFF,
        rtp_timestamp & 0xFFFFFFFF,
        packet_count & 0xFFFFFFFF,
        octet_count & 0xFFFFFFFF,
        list(blocks[:_MAX_BLOCKS]),
    )
    return sr.serialize() + _sdes_octets(ssrc, cname)


def build_nack(sender_ssrc: int, media_ssrc: int, lost: Iterable[int]) -> bytes:
    return Nack.from_lost(sender_ssrc, media_ssrc, lost).serialize()


def build_pli(sender_ssrc: int, media_ssrc: int) -> bytes:
    return Pli(sender_ssrc, media_ssrc).serialize()


def build_remb(sender_ssrc: int, bitrate: int, ssrcs: Sequence[int]) -> bytes:
    return Remb(sender_ssrc, bitrate, list(ssrcs)).serialize()


class FirSequencer:
    """FIR requests with the per-target command sequence number RFC 5104 §4.3.1.1 requires:
    it advances once per new request, so a repeated number means "the same request again"."""

    __slots__ = ("sender_ssrc", "_next")

    def __init__(self, sender_ssrc: int) -> None:
        self.sender_ssrc = sender_ssrc
        self._next: dict[int, int] = {}

    def build(self, media_ssrc: int) -> bytes:
        seq = self._next.get(media_ssrc, 0)
        self._next[media_ssrc] = (seq + 1) & 0xFF
        return Fir(self.sender_ssrc, [FirEntry(media_ssrc, seq)]).serialize()
