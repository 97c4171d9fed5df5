"""The field report's link (/work/shared/docs/field-reports.md) on the forwarding path, reproduced
deterministically: a simulcast publisher's packets cross a 20 ± 5 ms jittered link
(trio_sfu.testing.impairment, seeded) into a real TrackReceiver with a real DownTrack.

Reordering is not loss: after the first few overtaken packets the receiver stops NACKing
reordered ones (each NACK made the `livekit` SDK publisher resend, and its encoder dropped its top
layer: ~7 fps decoded instead of 30), while a real loss on the same link is still NACKed; and the
subscriber gets every packet of its layer.
"""

from __future__ import annotations

from forwarding_streams import Wire, simulcast_pair, three_layers
from rtp.packet import RtpPacket
from rtp.rtcp import Nack, parse_rtcp
from trio_sfu.testing.impairment import ImpairedLink, Impairment

FPS = 30
PACKETS_PER_FRAME = 6
SECONDS = 10


def run(link: Impairment, seed: int):
    wire = Wire()
    receiver, down = simulcast_pair(wire, target_layer=1)
    q, h, _ = three_layers()
    impaired = ImpairedLink(link, seed=seed)
    arrivals = []  # (arrival, order, packet)
    sent_h: list[int] = []
    for frame in range(SECONDS * FPS):
        at = frame / FPS
        for layer in (q, h):
            for i, packet in enumerate(layer.frame(keyframe=frame == 0, packets=PACKETS_PER_FRAME)):
                when = impaired.admit(len(packet), at + i * 0.001)  # paced 1 ms apart
                if layer is h:
                    sent_h.append(RtpPacket.parse(packet).sequence_number)
                if when is not None:
                    arrivals.append((when, len(arrivals), packet))
    arrivals.sort()
    for when, _, packet in arrivals:
        deadline = receiver.next_deadline()
        if deadline is not None and deadline <= when:
            receiver.poll_rtcp(deadline)
        receiver.receive_rtp(packet, when)
    receiver.poll_rtcp(SECONDS + 1)
    nacked = [s for data in wire.up_rtcp for p in parse_rtcp(data) if isinstance(p, Nack)
              for s in p.lost_sequence_numbers() if p.media_ssrc == h.ssrc]
    return receiver, down, impaired, nacked, sent_h, wire


def test_reordering_on_the_publishers_link_is_not_nacked_and_nothing_is_lost_downstream():
    receiver, down, link, nacked, sent_h, wire = run(Impairment(delay=0.02, jitter=0.005), seed=15)
    reordered = link.counters.reordered
    assert reordered > 1000  # the link reorders a lot (6 packets a frame, 1 ms apart, ± 5 ms)
    # Only the first overtaken packets, before the receiver has seen how late they come.
    assert len(nacked) < 0.01 * reordered, (len(nacked), reordered)
    assert receiver._layers[1].nack.reordered > 500  # gaps in h that filled by themselves
    # The subscriber got every packet of h (its layer), each once: nothing to NACK downstream.
    assert down.counters.packets_sent == len(sent_h) and down.counters.layer_switches == 0
    out = sorted(RtpPacket.parse(p).sequence_number for p in wire.rtp)
    assert len(set(out)) == len(out) == len(sent_h)


def test_a_loss_on_the_same_link_is_still_nacked():
    receiver, down, link, nacked, sent_h, wire = run(Impairment(delay=0.02, jitter=0.005, loss=0.05), seed=15)
    lost_h = set(sent_h) - {RtpPacket.parse(p).sequence_number for p in wire.rtp}
    assert len(lost_h) > 50
    # Every lost packet of h is asked for (the subscriber's own layer; q's too, not counted here),
    # and far fewer reordered ones than arrived out of order.
    first_asks = set(nacked)
    assert lost_h <= first_asks
    assert len(first_asks - lost_h) < 0.01 * link.counters.reordered
