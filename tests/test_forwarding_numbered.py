"""A down track on a numbered downlink (forwarding.NumberedDownlink) writes the transport-wide
seq itself, in place, where its shared extension rewriter found the element once per fan-out.
That must give byte for byte what the transport's own stamping (TransportSequencer.stamp on
the finished packet) gives, with the same send history; and a packet whose send failed gives
its number back."""

from __future__ import annotations

from budgets import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from rtp.header_extensions import encode_rid
from rtp.packet import RtpPacket
from rtp.twcc_sender import TransportSequencer, write_transport_seq
from trio_sfu.forwarding import DownTrack, TrackReceiver
from trio_sfu.forwarding.downtrack import _ExtensionRewriter

from forwarding_streams import RID_EXT, RRID_EXT, RTX_PT, SUB_VP8_PT, VP8_PT, vp8_payload

PUB_TWCC = 3
SUB_TWCC = 5
SUB_RID = 9
EXT_MAP = {RID_EXT: SUB_RID, PUB_TWCC: SUB_TWCC}


class Clock:
    now = 0.0


class PlainDownlink:
    """The transport as it numbers what it is handed (TransportEndpoint.send_rtp)."""

    def __init__(self, clock: Clock) -> None:
        self.sequencer = TransportSequencer(SUB_TWCC)
        self.clock = clock
        self.sent: list[bytes] = []

    def send_rtp(self, packet: bytes) -> bool:
        self.sent.append(self.sequencer.stamp(packet, self.clock.now))
        return True


class NumberedWire(PlainDownlink):
    """A NumberedDownlink: the down track numbers; `fail` makes the next numbered sends fail."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.numbered = 0
        self.fail = 0

    @property
    def transport_sequencer(self) -> TransportSequencer:
        return self.sequencer

    def native_send_target(self):
        return None  # the compiled path has its own tests (test_forwarding_fast_path.py)

    def send_numbered_rtp(self, packet: bytes) -> bool:
        assert type(packet) is bytes
        if self.fail:
            self.fail -= 1
            return False
        self.numbered += 1
        self.sent.append(packet)
        return True


def _pair(send_rtp, numbered=None) -> tuple[TrackReceiver, DownTrack]:
    receiver = TrackReceiver("TR_v", "video/VP8", 90000, send_rtcp=lambda b: True, local_ssrc=0x5F0,
                             rids=("q", "h", "f"), rid_extension_id=RID_EXT, repaired_rid_extension_id=RRID_EXT,
                             rtx_payload_types={RTX_PT: VP8_PT})
    down = DownTrack(receiver, ssrc=0xD0D0, payload_types={VP8_PT: SUB_VP8_PT}, clock_rate=90000,
                     mime_type="video/VP8", send_rtp=send_rtp, send_rtcp=lambda b: True, target_layer=0,
                     extension_ids=EXT_MAP, numbered=numbered)
    receiver.add_down_track(down)
    return receiver, down


def _stream(ops) -> list[tuple[float, bytes | str]]:
    """(now, packet) or (now, "layer:<n>") from hypothesis' ops: three layers, some packets
    without the publisher's element (the fall-back), some with a second element after it."""
    seqs = [100, 65_530, 7_000]
    pids = [300, 32_700, 9]
    out: list[tuple[float, bytes | str]] = []
    now = 0.0
    for kind, layer, keyframe, with_twcc in ops:
        now += 0.01
        if kind == "switch":
            out.append((now, f"layer:{layer}"))
            continue
        extensions = {RID_EXT: encode_rid("qhf"[layer])}
        if with_twcc:
            extensions[PUB_TWCC] = (seqs[layer] & 0xFFFF).to_bytes(2, "big")
        if kind == "pad":
            payload, padding = b"", 100
        else:
            payload, padding = vp8_payload(pids[layer], 1, keyframe), 0
            pids[layer] = (pids[layer] + 1) & 0x7FFF
        packet = RtpPacket(payload_type=VP8_PT, sequence_number=seqs[layer] & 0xFFFF, timestamp=(1000 * seqs[layer]) & 0xFFFFFFFF,
                           ssrc=0x1111 * (layer + 1), extensions=extensions, payload=payload, padding_size=padding)
        seqs[layer] += 1
        out.append((now, packet.serialize()))
    return out


_ops = st.lists(st.tuples(st.sampled_from(["media", "media", "media", "pad", "switch"]), st.integers(0, 2),
                          st.booleans(), st.booleans()), min_size=1, max_size=80)


@settings(max_examples=examples(1), deadline=None)
@given(_ops)
def test_numbering_in_place_equals_the_transports_stamping(ops):
    clock_a, clock_b = Clock(), Clock()
    plain = PlainDownlink(clock_a)
    wire = NumberedWire(clock_b)
    recv_a, down_a = _pair(plain.send_rtp)
    recv_b, down_b = _pair(wire.send_rtp, numbered=wire)
    for now, item in _stream(ops):
        clock_a.now = clock_b.now = now
        for receiver, down in ((recv_a, down_a), (recv_b, down_b)):
            if isinstance(item, str):
                down.set_target_layer(int(item.split(":")[1]), now)
            else:
                receiver.receive_rtp(item, now)
    assert wire.sent == plain.sent
    a, b = plain.sequencer, wire.sequencer
    assert (a.next_sequence, a.packets_stamped, a.bytes_stamped, a.elements_added) == (
        b.next_sequence, b.packets_stamped, b.bytes_stamped, b.elements_added)
    assert (list(a._seq), list(a._sent_at), list(a._size)) == (list(b._seq), list(b._sent_at), list(b._size))


def test_packets_with_and_without_the_element_are_numbered_in_place():
    wire = NumberedWire(Clock())
    receiver, down = _pair(wire.send_rtp, numbered=wire)
    ops = [("media", 0, True, True), ("media", 0, False, False), ("media", 0, False, True)]
    for now, packet in _stream(ops):
        receiver.receive_rtp(packet, now)
    assert wire.numbered == 3 and len(wire.sent) == 3 and wire.sequencer.elements_added == 1
    assert [int.from_bytes(RtpPacket.parse(p).extensions[SUB_TWCC], "big") for p in wire.sent] == [0, 1, 2]


def test_a_failed_send_gives_its_number_back():
    wire = NumberedWire(Clock())
    receiver, down = _pair(wire.send_rtp, numbered=wire)
    stream = _stream([("media", 0, True, True)] + [("media", 0, False, True)] * 3)
    receiver.receive_rtp(stream[0][1], 0.0)
    wire.fail = 1
    receiver.receive_rtp(stream[1][1], 0.01)
    assert down.counters.dropped_send_failed == 1 and wire.sequencer.next_sequence == 1
    receiver.receive_rtp(stream[2][1], 0.02)
    receiver.receive_rtp(stream[3][1], 0.03)
    assert [int.from_bytes(RtpPacket.parse(p).extensions[SUB_TWCC], "big") for p in wire.sent] == [0, 1, 2]
    assert wire.sequencer.packets_stamped == 3


@settings(max_examples=examples(2), deadline=None)
@given(st.dictionaries(st.integers(1, 14), st.binary(min_size=1, max_size=4), max_size=5), st.booleans(),
       st.dictionaries(st.integers(1, 14), st.integers(1, 14), max_size=6), st.integers(1, 14),
       st.integers(0, 0xFFFF), st.integers(0, 2))
def test_the_fan_out_layout_equals_the_transports_stamping(exts, two_byte, id_map, ext_id, seq, csrcs):
    extensions = {**exts, **({200: b"long"} if two_byte and exts else {})}
    wire = bytearray(RtpPacket(96, 1, 2, 3, extensions=extensions, payload=b"xyz").serialize())
    if csrcs:  # CSRCs move the block: the layout must follow
        wire[0] |= csrcs
        wire[12:12] = bytes(range(4 * csrcs))
    wire = bytes(wire)
    rewriter = _ExtensionRewriter(id_map)
    plain = bytearray(wire)
    rewriter.rewrite(plain, wire)
    expected = write_transport_seq(bytes(plain), ext_id, seq)
    layout = rewriter.stamping(wire, ext_id)
    if layout is None:
        assert expected is None
        return
    out = bytearray(wire)
    out[layout.start:layout.end] = layout.region
    if layout.set_extension_bit:
        out[0] |= 0x10
    out[layout.at:layout.at + 2] = seq.to_bytes(2, "big")
    assert bytes(out) == expected
    assert layout.added == (len(expected) != len(wire))
    assert rewriter.stamping(wire, ext_id) is layout  # once per fan-out packet
