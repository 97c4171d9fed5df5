"""The playout-delay floor (issue 15): the header extension's value, the element put into every
numbered packet of a down track, the policy that raises the floor for a subscriber whose
feedback reports loss and lifts it once the loss went away, SubscriberBandwidth driving a
real down track from real transport-wide feedback, and a publisher's repairs raising the floor
of its track's subscribers (whose own feedback shows no loss). (The compiled fan-out against the pure path
with floors changing: test_forwarding_fast_path.py; real clients decoding more frames with it:
tests/e2e/test_e2e_simulcast_impaired*.py.)"""

from __future__ import annotations

import pytest

from rtp import rtcp
from rtp.header_extensions import decode_playout_delay, encode_playout_delay, encode_rid
from rtp.packet import RtpPacket, append_extension_element
from rtp.twcc import TransportFeedbackRecorder
from rtp.twcc_sender import TransportSequencer
from trio_sfu.forwarding import DownTrack, TrackReceiver
from trio_sfu.forwarding.downtrack import _ExtensionRewriter
from trio_sfu.forwarding.playout_delay import INTERVAL, LIFT_AFTER, PlayoutDelayPolicy
from trio_sfu.forwarding.receiver import RESEND_AT_LEAST, NackTracker
from trio_sfu.media.bandwidth import SubscriberBandwidth
from trio_sfu.metrics import MEDIA_PLAYOUT_DELAY_LIFTED, MEDIA_PLAYOUT_DELAY_RAISED, Metrics

from forwarding_streams import RID_EXT, RRID_EXT, SUB_VP8_PT, VP8_PT, vp8_payload

SUB_TWCC = 3
SUB_PLAYOUT = 6
SUB_RID = 9


# ---- the element ----------------------------------------------------------------------------

@pytest.mark.parametrize(("low", "high"), [(0, 0), (120, 10_000), (10, 10), (40_950, 40_950), (0, 40_950)])
def test_the_value_round_trips_in_ten_millisecond_units(low, high):
    value = encode_playout_delay(low, high)
    assert len(value) == 3 and decode_playout_delay(value) == (low, high)


def test_the_value_is_twelve_bits_each_min_first():
    assert encode_playout_delay(120, 10_000) == bytes((0x00, 0xC3, 0xE8))  # 12 << 12 | 1000
    with pytest.raises(ValueError):
        encode_playout_delay(200, 100)  # min above max
    with pytest.raises(ValueError):
        encode_playout_delay(0, 40_960)  # beyond 12 bits


@pytest.mark.parametrize("two_byte", [False, True])
def test_the_element_goes_after_the_others_and_the_block_stays_well_formed(two_byte):
    extensions = {SUB_RID: b"h", SUB_TWCC: b"\x00\x07"}
    if two_byte:
        extensions[200] = b"long"  # forces the two-byte form
    packet = RtpPacket(96, 1, 2, 3, extensions=extensions, payload=b"xyz").serialize()
    start = 12
    end = start + 4 + 4 * int.from_bytes(packet[start + 2:start + 4], "big")
    block = append_extension_element(packet[start:end], SUB_PLAYOUT, encode_playout_delay(120, 10_000))
    assert block is not None and len(block) % 4 == 0
    parsed = RtpPacket.parse(packet[:start] + block + packet[end:])
    assert decode_playout_delay(parsed.extensions[SUB_PLAYOUT]) == (120, 10_000)
    assert {k: v for k, v in parsed.extensions.items() if k != SUB_PLAYOUT} == extensions
    assert parsed.payload == b"xyz"


def test_a_one_byte_block_cannot_carry_an_id_above_14():
    block = bytes((0xBE, 0xDE, 0, 1, 0x31, 0, 7, 0))
    assert append_extension_element(block, 15, b"\x00\x00\x00") is None


def test_the_layout_puts_the_element_in_and_the_number_where_it_says():
    packet = RtpPacket(96, 1, 2, 3, extensions={RID_EXT: encode_rid("h")}, payload=b"xyz").serialize()
    rewriter = _ExtensionRewriter({RID_EXT: SUB_RID}, (SUB_PLAYOUT, encode_playout_delay(120, 10_000)))
    layout = rewriter.stamping(packet, SUB_TWCC)
    assert layout is not None and layout.added
    out = bytearray(packet)
    out[layout.start:layout.end] = layout.region
    out[layout.at:layout.at + 2] = (513).to_bytes(2, "big")
    parsed = RtpPacket.parse(bytes(out))
    assert parsed.extensions == {SUB_RID: b"h", SUB_TWCC: (513).to_bytes(2, "big"),
                                 SUB_PLAYOUT: encode_playout_delay(120, 10_000)}


# ---- a down track ---------------------------------------------------------------------------

class NumberedWire:
    """A NumberedDownlink (forwarding.downtrack) that keeps what it is handed."""

    def __init__(self, with_sequencer: bool = True) -> None:
        self.transport_sequencer = TransportSequencer(SUB_TWCC) if with_sequencer else None
        self.sent: list[bytes] = []

    def native_send_target(self):
        return None

    def send_numbered_rtp(self, packet: bytes) -> bool:
        self.sent.append(packet)
        return True

    def send_rtp(self, packet: bytes) -> bool:
        self.sent.append(packet)
        return True


def _video(wire: NumberedWire, playout_delay_id: int | None = SUB_PLAYOUT,
           numbered: bool = True) -> tuple[TrackReceiver, DownTrack]:
    receiver = TrackReceiver("TR_v", "video/VP8", 90000, send_rtcp=lambda b: True, local_ssrc=0x5F0,
                             rids=("q",), rid_extension_id=RID_EXT, repaired_rid_extension_id=RRID_EXT)
    down = DownTrack(receiver, ssrc=0xD0D0, payload_types={VP8_PT: SUB_VP8_PT}, clock_rate=90000,
                     mime_type="video/VP8", send_rtp=wire.send_rtp, send_rtcp=lambda b: True, target_layer=0,
                     extension_ids={RID_EXT: SUB_RID}, numbered=wire if numbered else None,
                     playout_delay_id=playout_delay_id)
    receiver.add_down_track(down)
    return receiver, down


def _frames(receiver: TrackReceiver, first: int, count: int) -> None:
    for seq in range(first, first + count):
        packet = RtpPacket(VP8_PT, seq, 3000 * seq, 0x1111, marker=True, extensions={RID_EXT: encode_rid("q")},
                           payload=vp8_payload(seq, 0, keyframe=seq == 0)).serialize()
        receiver.receive_rtp(packet, seq * 0.033)


def _floors(wire: NumberedWire) -> list[tuple[int, int] | None]:
    out = []
    for packet in wire.sent:
        value = RtpPacket.parse(packet).extensions.get(SUB_PLAYOUT)
        out.append(None if value is None else decode_playout_delay(value))
    return out


def test_a_down_track_carries_its_floor_on_every_packet_once_given_one():
    wire = NumberedWire()
    receiver, down = _video(wire)
    _frames(receiver, 0, 3)
    assert down.playout_delay is None
    assert down.set_playout_delay(120, 10_000) and down.playout_delay == (120, 10_000)
    _frames(receiver, 3, 3)
    assert down.set_playout_delay(0, 10_000)  # lifted: the receiver is told 0, not left as it was
    _frames(receiver, 6, 2)
    assert _floors(wire) == [None] * 3 + [(120, 10_000)] * 3 + [(0, 10_000)] * 2
    # The transport-wide numbers are untouched by it: one per packet, in order.
    assert [int.from_bytes(RtpPacket.parse(p).extensions[SUB_TWCC], "big") for p in wire.sent] == list(range(8))


@pytest.mark.parametrize("why", ["not negotiated", "an id the one-byte form cannot carry", "not numbered here",
                                 "no transport-wide numbers"])
def test_a_subscriber_that_cannot_be_told_is_left_as_it_is(why):
    wire = NumberedWire(with_sequencer=why != "no transport-wide numbers")
    ext_id = {"not negotiated": None, "an id the one-byte form cannot carry": 15}.get(why, SUB_PLAYOUT)
    receiver, down = _video(wire, playout_delay_id=ext_id, numbered=why != "not numbered here")
    assert not down.set_playout_delay(120, 10_000) and down.playout_delay is None
    _frames(receiver, 0, 2)
    assert _floors(wire) == [None, None]


# ---- the policy -----------------------------------------------------------------------------

def _steps(policy: PlayoutDelayPolicy, shares: list[float], start: float = 0.0, packets: int = 500,
           totals: list[int] | None = None) -> list[int]:
    """Feed one INTERVAL step per share (that share of `packets` lost); the floor after each."""
    acked, lost = totals if totals is not None else [0, 0]
    policy.update(acked, lost, start)  # the first look only starts a step
    floors = []
    for i, share in enumerate(shares, 1):
        missed = round(packets * share)
        acked, lost = acked + packets - missed, lost + missed
        policy.update(acked, lost, start + i * INTERVAL)
        floors.append(policy.min_ms)
    if totals is not None:
        totals[:] = [acked, lost]
    return floors


def test_a_clean_or_nearly_clean_link_gets_no_floor():
    policy = PlayoutDelayPolicy()
    assert _steps(policy, [0.0, 0.004, 0.01, 0.015, 0.0]) == [0] * 5
    assert policy.raised == 0


def test_loss_raises_the_floor_in_one_step_and_it_holds_while_loss_goes_on():
    policy = PlayoutDelayPolicy(repair_ms=120)
    assert _steps(policy, [0.0, 0.05, 0.01, 0.06, 0.03]) == [0, 120, 120, 120, 120]
    assert (policy.raised, policy.lifted) == (1, 0)


def test_the_floor_is_lifted_only_after_the_loss_stayed_away_long_enough():
    policy = PlayoutDelayPolicy()
    totals = [0, 0]
    quiet_steps = int(LIFT_AFTER / INTERVAL)
    floors = _steps(policy, [0.05] + [0.0] * (quiet_steps - 1) + [0.01] + [0.0] * quiet_steps, totals=totals)
    # A step of 1 % (below the raise, above the lift) starts the quiet time again.
    assert floors[:-1] == [policy.repair_ms] * (2 * quiet_steps) and floors[-1] == 0
    assert (policy.raised, policy.lifted) == (1, 1)


def test_too_few_packets_judge_nothing():
    policy = PlayoutDelayPolicy()
    assert _steps(policy, [0.5, 0.5], packets=40) == [0, 0]


def test_a_floor_must_be_positive_and_within_the_maximum():
    with pytest.raises(ValueError):
        PlayoutDelayPolicy(repair_ms=0)
    with pytest.raises(ValueError):
        PlayoutDelayPolicy(repair_ms=500, max_ms=400)


# ---- SubscriberBandwidth, from the subscriber's own feedback --------------------------------

def test_the_subscribers_feedback_of_loss_raises_the_floor_of_its_video_down_tracks():
    wire = NumberedWire()
    receiver, down = _video(wire)
    metrics = Metrics()
    bandwidth = SubscriberBandwidth(SUB_TWCC, lambda: [down], metrics=metrics, wake_by=lambda at: None)
    changes: list[int] = []
    bandwidth.on_playout_delay_changed = lambda ms, now: changes.append(ms)
    recorder = TransportFeedbackRecorder(sender_ssrc=5, interval=0.05)
    now, seq = 0.0, 0

    def second(loss_every: int | None) -> None:
        """A second of 200 packets stamped by the subscriber's sequencer; the subscriber
        receives all but every `loss_every`-th and reports it."""
        nonlocal now, seq
        for i in range(200):
            packet = RtpPacket(96, seq & 0xFFFF, 3000 * seq, 0x1234, payload=b"\x10" + bytes(200),
                               extensions={SUB_TWCC: b"\x00\x00"}).serialize()
            seq += 1
            stamped = bandwidth.stamp(packet, now)
            if loss_every is None or i % loss_every:
                recorder.record(int.from_bytes(RtpPacket.parse(stamped).extensions[SUB_TWCC], "big"), 0x1234,
                                now + 0.02)
            now += 0.005
            for feedback in recorder.packets_to_send(now):
                bandwidth.on_rtcp(rtcp.parse_rtcp(feedback), now)
        bandwidth.handle_timeout(now)

    for _ in range(5):
        second(None)
    assert down.playout_delay is None and changes == []
    for _ in range(3):
        second(20)  # 5 % lost
    assert changes == [bandwidth.playout.repair_ms]
    assert down.playout_delay == (bandwidth.playout.repair_ms, bandwidth.playout.max_ms)
    assert metrics.get(MEDIA_PLAYOUT_DELAY_RAISED) == 1
    for _ in range(int(LIFT_AFTER) + 4):
        second(None)
    assert changes == [bandwidth.playout.repair_ms, 0] and down.playout_delay == (0, bandwidth.playout.max_ms)
    assert metrics.get(MEDIA_PLAYOUT_DELAY_LIFTED) == 1


# ---- the publisher's repairs ----------------------------------------------------------------

def test_a_resend_counts_as_a_repair_and_an_overtaken_packet_does_not():
    nack = NackTracker()
    nack.on_packet(1, 0.0)
    nack.on_packet(3, 0.01)  # 2 missing
    nack.on_packet(2, 0.012)  # overtaken, before any NACK: reordering
    nack.on_packet(5, 0.02)  # 4 missing
    assert nack.due(0.03, 0.1) == [4]  # (after the reordering wait the overtaken packet set)
    nack.on_packet(4, 0.03 + RESEND_AT_LEAST + 0.03)  # the resend, a round trip after the NACK
    assert (nack.repaired, nack.reordered) == (1, 1)


def _publish(receiver: TrackReceiver, seconds: float, lose_every: int | None, start: float = 0.0,
             seq0: int = 0) -> int:
    """100 packets a second, each its own frame; every `lose_every`-th is lost on the way in and
    comes again 60 ms later (the publisher answering the NACK the receiver sent meanwhile)."""
    pending: list[tuple[float, bytes]] = []
    seq = seq0
    for step in range(int(seconds * 100)):
        now = start + step * 0.01
        packet = RtpPacket(VP8_PT, seq & 0xFFFF, 900 * seq, 0x1111, marker=True,
                           extensions={RID_EXT: encode_rid("q")},
                           payload=vp8_payload(seq & 0x7FFF, 0, keyframe=seq == 0)).serialize()
        if lose_every and seq % lose_every == 7:
            pending.append((now + 0.06, packet))
        else:
            receiver.receive_rtp(packet, now)
        while pending and pending[0][0] <= now:
            receiver.receive_rtp(pending.pop(0)[1], now)
        receiver.poll_rtcp(now)
        seq += 1
    return seq


def test_a_publishers_repairs_raise_the_floor_of_every_subscriber_of_its_track():
    wire = NumberedWire()
    receiver, down = _video(wire)
    # The subscriber's own feedback reports no loss: its policy alone would never raise a floor.
    bandwidth = SubscriberBandwidth(SUB_TWCC, lambda: [down], metrics=Metrics(), wake_by=lambda at: None)
    seq = _publish(receiver, 3.0, None)
    bandwidth.handle_timeout(3.0)
    assert receiver.playout_floor_ms == 0 and down.playout_delay is None
    seq = _publish(receiver, 5.0, 20, start=3.0, seq0=seq)  # 5 % of the publisher's packets repaired
    assert receiver.counters.nack_repaired >= 15 and receiver.counters.playout_floor_raised == 1
    assert receiver.playout_floor_ms == receiver.playout.repair_ms
    bandwidth.handle_timeout(8.0)
    assert down.playout_delay == (receiver.playout.repair_ms, bandwidth.playout.max_ms)
    assert bandwidth.playout.min_ms == 0  # the subscriber's own floor: none
    sent = len(wire.sent)
    seq = _publish(receiver, 1.0, None, start=8.0, seq0=seq)
    assert _floors(wire)[sent:] and set(_floors(wire)[sent:]) == {(receiver.playout.repair_ms, 10_000)}
    # The publisher's link clean again: lifted after the quiet time, the subscriber told 0.
    _publish(receiver, LIFT_AFTER + 2 * INTERVAL + 1, None, start=9.0, seq0=seq)
    assert receiver.playout_floor_ms == 0 and receiver.counters.playout_floor_lifted == 1
    bandwidth.handle_timeout(9.0 + LIFT_AFTER + 2 * INTERVAL + 2)
    assert down.playout_delay == (0, bandwidth.playout.max_ms)
