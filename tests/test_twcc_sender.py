"""Our transport-wide sequence numbers (rtp.twcc_sender): stamped into every packet, matched to feedback.

Packets are built and read back with rtp.packet.RtpPacket (the codec the rest of the stack uses);
feedback comes from rtp.twcc.TransportFeedbackRecorder (our receive side) through the wire format.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtp import rtcp
from rtp.packet import RtpPacket
from rtp.twcc import TransportFeedbackRecorder
from rtp.twcc_sender import TransportSequencer, write_transport_seq

TWCC = 3


def packet(extensions: dict[int, bytes] | None = None, payload: bytes = b"\x90\x80" + bytes(40)) -> RtpPacket:
    return RtpPacket(payload_type=96, sequence_number=7, timestamp=1234, ssrc=0xABCD, marker=True,
                     payload=payload, extensions=dict(extensions or {}))


def twcc_of(data: bytes) -> int:
    return int.from_bytes(RtpPacket.parse(data).extensions[TWCC], "big")


def test_the_publishers_element_is_overwritten_in_place() -> None:
    original = packet({1: b"0", TWCC: b"\x12\x34", 4: b"q"})
    seq = TransportSequencer(TWCC)
    seq.next_sequence = 0x1_0005  # the wire carries the low 16 bits
    out = seq.stamp(original.serialize(), now=1.0)
    assert len(out) == len(original.serialize())
    parsed = RtpPacket.parse(out)
    assert parsed.extensions == {1: b"0", TWCC: b"\x00\x05", 4: b"q"}
    assert (parsed.payload, parsed.sequence_number, parsed.ssrc, parsed.marker) == (
        original.payload, 7, 0xABCD, True)
    assert seq.elements_added == 0 and seq.packets_stamped == 1


@pytest.mark.parametrize(("extensions", "growth"), [
    (None, 8),  # a one-byte block of its own
    ({1: b"0"}, 4),  # the block grows by a word
    ({1: b"0", 4: b"abcdef"}, 0),  # the block's three padding octets take it
])
def test_a_missing_element_is_added(extensions, growth) -> None:
    original = packet(extensions)
    seq = TransportSequencer(TWCC)
    out = seq.stamp(original.serialize(), now=1.0)
    assert len(out) == len(original.serialize()) + growth
    parsed = RtpPacket.parse(out)
    assert twcc_of(out) == 0
    assert {k: v for k, v in parsed.extensions.items() if k != TWCC} == (extensions or {})
    assert parsed.payload == original.payload and parsed.timestamp == 1234
    assert seq.elements_added == (1 if growth else 0)


def test_zeroed_octets_left_by_the_forwarder_take_the_element_without_growing() -> None:
    # The down track zeroes elements the subscriber did not negotiate (one-byte form: padding).
    data = bytearray(packet({1: b"0", 9: b"\x01\x02\x03", 4: b"q"}).serialize())
    at = data.index(bytes(((9 << 4) | 2, 1, 2, 3)))
    data[at:at + 4] = bytes(4)
    out = write_transport_seq(bytes(data), TWCC, 0xBEEF)
    assert out is not None and len(out) == len(data)
    assert RtpPacket.parse(out).extensions == {1: b"0", TWCC: b"\xbe\xef", 4: b"q"}


def test_two_byte_blocks_and_padding_bits_survive() -> None:
    original = packet({1: bytes(20), 2: b"x"}, payload=b"abc")  # 20 octets: two-byte form
    original.padding_size = 5
    data = original.serialize()
    assert data[0] & 0x20 and data[12:14] == b"\x10\x00"
    out = write_transport_seq(data, TWCC, 9)
    assert out is not None
    parsed = RtpPacket.parse(out)
    assert parsed.extensions[TWCC] == b"\x00\x09" and parsed.payload == b"abc" and parsed.padding_size == 5


def test_what_cannot_carry_the_element_is_sent_unchanged_and_counted() -> None:
    seq = TransportSequencer(TWCC)
    truncated = packet({1: b"0"}).serialize()[:14]  # block header cut
    assert seq.stamp(truncated, 1.0) == truncated
    wrong_length = packet({TWCC: b"\x01"}).serialize()  # our id with a 1-octet value: not ours to fix
    assert seq.stamp(wrong_length, 1.0) == wrong_length
    assert seq.unstampable == 2 and seq.next_sequence == 0


def feedback_for(arrivals: dict[int, float]) -> list[rtcp.TransportCc]:
    recorder = TransportFeedbackRecorder(sender_ssrc=5, interval=0.05)
    for seq16 in arrivals:  # in arrival order, as a receiver sees them
        recorder.record(seq16, 0xABCD, arrivals[seq16])
    out = []
    for data in recorder.packets_to_send(max(arrivals.values()) + 1):
        out += [p for p in rtcp.parse_rtcp(data) if isinstance(p, rtcp.TransportCc)]
    return out


def test_feedback_is_matched_to_send_times_sizes_and_probe_clusters_across_the_wrap() -> None:
    seq = TransportSequencer(TWCC)
    seq.next_sequence = 0xFFFE  # the 16-bit seq wraps inside the burst
    sent = []
    for i in range(6):
        seq.probe_cluster = 4 if i >= 3 else -1
        out = seq.stamp(packet(payload=bytes(100 + i)).serialize(), now=10.0 + i * 0.01)
        sent.append((twcc_of(out), len(out)))
    assert [s for s, _ in sent] == [0xFFFE, 0xFFFF, 0, 1, 2, 3]
    arrivals = {s: 20.0 + i * 0.012 for i, (s, _) in enumerate(sent) if i != 2}  # the third is lost
    results = []
    for report in feedback_for(arrivals):
        results += seq.on_feedback(report)
    assert [r.sequence for r in results] == list(range(0xFFFE, 0xFFFE + 6))
    assert [r.size for r in results] == [size for _, size in sent]
    assert [r.send_time for r in results] == pytest.approx([10.0 + i * 0.01 for i in range(6)])
    assert results[2].arrival is None
    got = [r.arrival for r in results if r.arrival is not None]
    # Arrival times on the receiver's clock: only differences mean anything (and 250 µs units).
    assert [b - got[0] for b in got] == pytest.approx([0.0, 0.012, 0.036, 0.048, 0.06], abs=0.0003)
    assert [r.probe_cluster for r in results] == [-1, -1, -1, 4, 4, 4]
    # Reported again (a repeated report): received packets are not counted twice.
    assert [r.sequence for r in seq.on_feedback(feedback_for(arrivals)[0])] == [0x10000]


def test_feedback_about_seqs_we_never_sent_is_counted_not_matched() -> None:
    seq = TransportSequencer(TWCC)
    for i in range(3):
        seq.stamp(packet().serialize(), now=float(i))
    report = feedback_for({40000: 1.0, 40001: 1.01})[0]
    assert seq.on_feedback(report) == []
    assert seq.feedback_unknown == 2


def test_a_report_claiming_every_status_is_walked_only_as_far_as_the_history_goes() -> None:
    seq = TransportSequencer(TWCC, history=1024)
    for i in range(10):
        seq.stamp(packet().serialize(), now=float(i))
    report = rtcp.TransportCc.build(5, 0xABCD, 0, 0, [(0, True, 0)])
    report.status_count = 0xFFFF  # as a hostile receiver could write it
    results = seq.on_feedback(rtcp.parse_rtcp(report.serialize())[0])
    assert [r.sequence for r in results] == list(range(10)) and results[0].arrival is not None
    assert seq.feedback_unknown == 0xFFFF - 10


def test_only_the_packet_stamped_last_gives_its_number_back() -> None:
    seq = TransportSequencer(TWCC)
    first = seq.stamp(packet().serialize(), 1.0)
    unstampable = packet({TWCC: b"\x01"}).serialize()
    assert seq.stamp(unstampable, 1.1) is unstampable
    seq.unstamp(unstampable)  # its send failed: it had no number to give back
    assert seq.next_sequence == 1
    second = seq.stamp(packet().serialize(), 1.2)
    seq.unstamp(second)
    assert seq.next_sequence == 1 and twcc_of(first) == 0
    assert twcc_of(seq.stamp(packet().serialize(), 1.3)) == 1


@given(st.binary(min_size=0, max_size=80), st.integers(1, 14), st.integers(0, 0xFFFF))
def test_any_bytes_are_stamped_or_left_alone_never_a_crash(data: bytes, ext_id: int, value: int) -> None:
    out = write_transport_seq(data, ext_id, value)
    if out is None:
        return
    try:
        parsed = RtpPacket.parse(data)
    except Exception:
        return  # not a packet our parser accepts: nothing more to say than "no crash"
    assert RtpPacket.parse(out).extensions[ext_id] == value.to_bytes(2, "big")
    assert RtpPacket.parse(out).payload == parsed.payload


@given(st.dictionaries(st.integers(1, 14), st.binary(min_size=1, max_size=16), max_size=5),
       st.binary(max_size=50), st.integers(0, 0xFFFF), st.integers(0, 20))
def test_any_packet_gets_the_element_and_keeps_everything_else(extensions, payload, value, padding) -> None:
    extensions.pop(TWCC, None)
    original = RtpPacket(payload_type=96, sequence_number=9, timestamp=77, ssrc=0xABCD, payload=payload,
                         extensions=extensions, padding_size=padding)
    out = write_transport_seq(original.serialize(), TWCC, value)
    assert out is not None
    parsed = RtpPacket.parse(out)
    assert parsed.extensions.pop(TWCC) == value.to_bytes(2, "big")
    assert parsed == original
