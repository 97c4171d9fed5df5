"""RTP: the full decode, the forwarder's byte-level readers, and header extension values."""

from __future__ import annotations

from fuzz.target import FuzzTarget
from rtp import header_extensions as hx
from rtp.packet import (
    GenericExtension, RtpPacket, RtpParseError, find_extension, find_extension_span, parse, payload_offset,
    read_marker, read_payload_type, read_sequence_number, read_ssrc, read_timestamp, rewrite_header,
)

_VALUE_DECODERS = (
    hx.decode_mid, hx.decode_rid, hx.decode_audio_level, hx.decode_abs_send_time,
    hx.decode_transport_cc_seq, hx.decode_dependency_descriptor,
)


def run(data: bytes) -> None:
    for read in (read_ssrc, read_sequence_number, read_timestamp, read_marker, read_payload_type, payload_offset):
        try:
            read(data)
        except RtpParseError:
            pass
    for ext_id in (1, 2, 3, 14, 15, 255):
        try:
            find_extension_span(data, ext_id)
            find_extension(data, ext_id)
            level = hx.audio_level_in(data, ext_id)  # the audio receive path's read
            if level is not None and not 0 <= level <= 127:
                raise AssertionError(f"audio level {level} outside 0..127")
        except RtpParseError:
            pass
    try:
        rewrite_header(bytearray(data), 0x12345678, 7, 90000, 96)
    except RtpParseError:
        pass
    packet = parse(data)
    for value in packet.extensions.values():
        for decode in _VALUE_DECODERS:
            try:
                decode(value)
            except hx.HeaderExtensionParseError:
                pass
    # What we parsed we can write again, and it reads back the same.
    again = parse(packet.serialize())
    if again != packet:
        raise AssertionError(f"RTP round trip changed the packet: {packet!r} -> {again!r}")


def seeds() -> list[bytes]:
    packets = [
        RtpPacket(111, 1, 960, 0x1111, payload=b"\xf8\xff\xfe"),
        RtpPacket(96, 65535, 0xFFFFFFFF, 0x2222, marker=True, csrcs=[1, 2, 3],
                  extensions={1: b"0", 2: b"\x80", 3: b"\x01\x02\x03", 4: b"\x00\x05", 10: b"q"},
                  payload=b"\x90\x80\x00" + bytes(20), padding_size=4),
        RtpPacket(97, 5, 6, 7, extensions={1: b"mid-with-a-long-value-over-16-bytes", 200: b""}, payload=b"\x00\x01"),
        RtpPacket(100, 9, 9, 9, extensions={12: b"\x80\x01\x02\x03\x04"}, payload=bytes(40)),
        RtpPacket(0, 0, 0, 0, generic_extension=GenericExtension(0x1234, bytes(8)), payload=b"x"),
    ]
    return [p.serialize() for p in packets]


TARGET = FuzzTarget(
    "rtp", "rtp.packet parse / readers / rewrite and rtp.header_extensions decoders; parse(serialize(p)) == p",
    run, (RtpParseError,), seeds, max_len=1500,
)
