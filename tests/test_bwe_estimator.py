"""The send-side bandwidth estimator (rtp.bwe) on a simulated bottleneck link (tests/bwe_link.py).

Sender and receiver are the real code (our transport-wide sequencer, the receive-side feedback
recorder, the feedback's wire format, the estimator); the link is a drop-tail queue at a rate,
a propagation delay and seeded random loss, on a virtual clock. What must hold (issue 15):
within ±20 % of a 1 Mbit/s bottleneck in at most 5 s, a back-off on a loss burst, a ramp back
up within 10 s once the bottleneck lifts, and the same trace again from the same seed.
"""

from __future__ import annotations

from bwe_link import SimulatedLink

MBIT = 1_000_000


def within(values: list[int], low: float, high: float) -> bool:
    return all(low <= v <= high for v in values)


def test_converges_to_a_1_mbit_bottleneck_within_5_s_and_stays_there() -> None:
    sim = SimulatedLink(seed=1, start_bps=300_000, demand_bps=3 * MBIT)
    sim.run_until(20.0)
    first_inside = next(s.t for s in sim.trace if 0.8 * MBIT <= s.estimate <= 1.2 * MBIT)
    print(f"\nestimate within ±20 % of 1 Mbit/s from t={first_inside:.1f} s;",
          "trace (s, kbit/s):", [(s.t, s.estimate // 1000) for s in sim.trace[::10]])
    assert first_inside <= 5.0
    assert within(sim.window(5.0, 20.0), 0.8 * MBIT, 1.2 * MBIT), sim.window(5.0, 20.0)
    # It got there on delay alone: the queue never overflowed, nothing was lost.
    assert sim.dropped == 0 and sim.estimator.counters.packets_lost == 0
    assert sim.estimator.counters.probe_results >= 1 and sim.estimator.counters.overuse_signals >= 1


def test_backs_off_on_a_loss_burst_and_ramps_back_when_it_ends() -> None:
    sim = SimulatedLink(seed=2)
    sim.run_until(10.0)
    before = sim.estimate_at(10.0)
    assert 0.8 * MBIT <= before <= 1.2 * MBIT
    sim.link.loss = 0.2
    sim.run_until(12.0)
    during = sim.estimate_at(12.0)
    print(f"\nbefore the 20 % loss burst {before // 1000} kbit/s, after 2 s of it {during // 1000} kbit/s,",
          f"loss seen {sim.estimator.loss_fraction:.2f}")
    assert during < 0.7 * before
    assert sim.estimator.loss_based_bps < sim.estimator.delay_based_bps  # it is the loss that cut it
    assert sim.estimator.loss_cuts > 0
    sim.link.loss = 0.0
    sim.run_until(25.0)
    back = next(s.t for s in sim.trace if s.t > 12.0 and s.estimate >= 0.8 * MBIT)
    print(f"back at >= 0.8 Mbit/s {back - 12.0:.1f} s after the loss ended")
    assert back - 12.0 <= 10.0
    assert within(sim.window(back, 25.0), 0.75 * MBIT, 1.2 * MBIT)


def test_ramps_up_within_10_s_when_the_bottleneck_lifts() -> None:
    sim = SimulatedLink(seed=3)
    sim.link.rate_bps = 500_000
    sim.run_until(10.0)
    assert within(sim.window(5.0, 10.0), 0.75 * 500_000, 1.2 * 500_000), sim.window(5.0, 10.0)
    sim.link.rate_bps = 2 * MBIT
    sim.run_until(25.0)
    up = next(s.t for s in sim.trace if s.t > 10.0 and s.estimate >= 1.6 * MBIT)
    after = sim.window(up, 25.0)
    print(f"\nbottleneck 0.5 -> 2 Mbit/s at t=10 s: >= 1.6 Mbit/s {up - 10.0:.1f} s later;",
          f"then {min(after) // 1000}..{max(after) // 1000} kbit/s, mean {sum(after) // len(after) // 1000}")
    assert up - 10.0 <= 10.0
    assert max(after) <= 1.2 * 2 * MBIT
    assert 0.8 * 2 * MBIT <= sum(after) / len(after) <= 1.2 * 2 * MBIT


def test_no_probe_when_nothing_needs_more_bitrate() -> None:
    sim = SimulatedLink(seed=4, start_bps=300_000, demand_bps=200_000)
    sim.run_until(5.0)
    assert sim.probe_packets == 0 and sim.estimator.counters.probe_clusters == 0


def test_the_same_seed_gives_the_same_trace() -> None:
    def trace(seed: int) -> list[tuple[float, int, int, int]]:
        sim = SimulatedLink(seed=seed)
        sim.run_until(4.0)
        sim.link.loss = 0.05
        sim.run_until(8.0)
        return [(s.t, s.estimate, s.delay_based, s.loss_based) for s in sim.trace]

    first = trace(11)
    assert trace(11) == first
    assert trace(12) != first  # the seed matters: the comparison above could have failed


def test_remb_is_the_estimate_of_a_client_without_transport_cc_and_a_cap_otherwise() -> None:
    from rtp.bwe import BandwidthEstimator

    remb_only = BandwidthEstimator(start_bps=300_000)
    remb_only.on_remb(1_500_000, now=1.0)
    assert remb_only.estimate_bps == 1_500_000
    remb_only.on_remb(700_000, now=2.0)
    assert remb_only.estimate_bps == 700_000
    assert remb_only.poll_probe(2.0) is None  # nothing would judge a probe

    sim = SimulatedLink(seed=5)
    sim.run_until(6.0)
    assert sim.estimate_at(6.0) >= 0.8 * MBIT
    # A client sending both: its REMB caps what transport-cc says, while it is fresh.
    sim.estimator.on_remb(400_000, sim.now)
    sim.run_until(7.0)
    assert sim.window(6.1, 7.0) and max(sim.window(6.1, 7.0)) <= 400_000
    sim.run_until(10.0)  # no further REMB: after FEEDBACK_STALE the cap is gone
    assert sim.estimate_at(10.0) > 400_000


def test_probe_clusters_start_at_3_and_6_times_the_start_then_twice_the_estimate_up_to_the_goal() -> None:
    from rtp.bwe import BandwidthEstimator
    from rtp.twcc_sender import PacketResult

    est = BandwidthEstimator(start_bps=300_000)
    est.request_probe(2_000_000, now=0.0)
    assert est.poll_probe(0.0) is None  # no feedback yet: nothing would judge a probe
    est.on_feedback([PacketResult(1, -0.05, 1200, -0.03, -1)], now=0.0)  # media flows, feedback comes
    first = est.poll_probe(0.0)
    assert first is not None and first.bitrate_bps == 900_000
    assert est.poll_probe(0.01) is None  # not while one is being sent
    est.probe_sent(first.cluster_id, 10, 0.03)
    second = est.poll_probe(0.03)  # the initial series goes out back to back
    assert second is not None and second.bitrate_bps == 1_800_000
    est.probe_sent(second.cluster_id, 20, 0.06)
    assert est.poll_probe(0.07) is None  # both in flight: the next waits for their results
    est.request_probe(0, now=0.5)
    assert est.poll_probe(2.0) is None  # nothing needs more now

    capped = BandwidthEstimator(start_bps=300_000)
    capped.request_probe(1_200_000, now=0.0)
    capped.on_feedback([PacketResult(1, -0.05, 1200, -0.03, -1)], now=0.0)
    cluster = capped.poll_probe(0.0)
    assert cluster is not None and cluster.bitrate_bps == 900_000
    capped.probe_sent(cluster.cluster_id, 0, 0.05)  # it could not be sent at all
    assert capped.poll_probe(0.1) is None  # the series is over, and the retry waits
    capped.on_feedback([PacketResult(2, 5.9, 1200, 5.92, -1)], now=6.0)  # feedback still flows
    later = capped.poll_probe(6.0)
    assert later is not None and later.bitrate_bps == int(min(1_200_000, 2 * capped.estimate_bps))  # twice the estimate
    assert later.bitrate_bps < 900_000  # no second initial series


def test_quick_start_the_top_layer_is_affordable_within_2_s_on_a_clean_3_mbit_link() -> None:
    """libwebrtc's initial probes (3x and 6x the start rate as media starts): a clean link is
    known in a round trip or two, not after seconds of ramping from the start guess."""
    top_layer_need = 1.15 * 1_500_000 + 48_000  # the allocator's headroom on a 1.5 Mbit/s layer, and audio
    sim = SimulatedLink(seed=6, start_bps=300_000, demand_bps=int(1.5 * 1_700_000))
    sim.link.rate_bps = 3 * MBIT
    sim.run_until(6.0)
    first = next(s.t for s in sim.trace if s.estimate >= top_layer_need)
    print(f"\nclean 3 Mbit/s link: the estimate affords the top layer from t={first:.1f} s;",
          "trace (s, kbit/s):", [(s.t, s.estimate // 1000) for s in sim.trace[:20:2]])
    assert first <= 2.0
    assert sim.estimator.settled
    # and it stays affordable (the media, below the link's rate, leaves the queue empty: nothing
    # bounds the estimate from above here, as nothing tells the sender where the link ends)
    assert min(sim.window(first, 6.0)) >= top_layer_need
    assert sim.dropped == 0 and sim.estimator.counters.overuse_signals == 0
    assert sim.estimator.counters.probe_results >= 2


def test_random_loss_of_5_percent_on_a_2_mbit_link_keeps_the_estimate_above_1_mbit() -> None:
    """A few percent of random loss is the link's nature, not congestion: the loss-based
    controller holds between 2 % and 10 %, and the estimate still ramps and stays up."""
    sim = SimulatedLink(seed=7, start_bps=300_000)
    sim.link.rate_bps = 2 * MBIT
    sim.link.loss = 0.05
    sim.run_until(20.0)
    after = sim.window(3.0, 20.0)
    print(f"\n5 % loss on 2 Mbit/s: loss seen {sim.estimator.loss_fraction:.2f}, estimate from 3 s",
          f"{min(after) // 1000}..{max(after) // 1000} kbit/s, mean {sum(after) // len(after) // 1000}")
    assert sim.estimator.counters.packets_lost > 0  # the loss was there
    assert min(after) >= 1 * MBIT
    assert max(after) <= 1.2 * 2 * MBIT


def test_the_loss_based_half_never_goes_below_its_floor() -> None:
    sim = SimulatedLink(seed=8)
    sim.estimator.loss_floor_bps = 400_000
    sim.run_until(5.0)
    sim.link.loss = 0.5  # far above the back-off threshold, for long
    sim.run_until(15.0)
    assert sim.estimator.loss_fraction > 0.3
    assert min(sim.window(5.0, 15.0)) >= 400_000 or sim.estimator.delay_based_bps < 400_000
    assert sim.estimator.loss_based_bps >= min(400_000, sim.estimator.delay_based_bps)


TOP_LAYER_NEED = 1.15 * 1_500_000 + 48_000  # the allocator's headroom on a 1.5 Mbit/s layer, and audio


def test_5_percent_loss_and_20_ms_jitter_on_an_unlimited_link_keep_the_top_layer_affordable() -> None:
    """Issue 15's impaired run: a link of no limit that loses 5 % at random and delays each
    packet by 20 ± 5 ms (reordering them). Random loss is no congestion and jitter no queue:
    the estimate must reach what the top layer needs and stay there. (Before: jitter fed the
    trendline in sequence order read as over-use ~100 times in 20 s, short probe results and
    chance 10 % loss windows held it at 0.8-1.6 Mbit/s.)"""
    for seed in (1, 2, 3, 4):
        sim = SimulatedLink(seed=seed, start_bps=300_000, demand_bps=int(1.5 * 1_700_000))
        sim.link.rate_bps = 50 * MBIT
        sim.link.loss = 0.05
        sim.link.jitter = 0.005
        sim.run_until(20.0)
        first = next(s.t for s in sim.trace if s.estimate >= TOP_LAYER_NEED)
        after = sim.window(first, 20.0)
        print(f"\nseed {seed}: top layer affordable from t={first:.1f} s, then {min(after) // 1000}..",
              f"{max(after) // 1000} kbit/s; over-use signals {sim.estimator.counters.overuse_signals},",
              f"lost {sim.estimator.counters.packets_lost}")
        assert sim.estimator.counters.packets_lost > 0
        assert first <= 2.0
        assert min(after) >= TOP_LAYER_NEED
        assert sim.estimator.counters.overuse_signals == 0


def test_jitter_does_not_hide_a_real_bottleneck() -> None:
    """The same ± 5 ms jitter in front of a 1 Mbit/s bottleneck: its queue is still seen."""
    sim = SimulatedLink(seed=1, start_bps=300_000, demand_bps=3 * MBIT)
    sim.link.jitter = 0.005
    sim.run_until(20.0)
    first_inside = next(s.t for s in sim.trace if 0.8 * MBIT <= s.estimate <= 1.2 * MBIT)
    assert first_inside <= 5.0
    assert within(sim.window(5.0, 20.0), 0.8 * MBIT, 1.2 * MBIT), sim.window(5.0, 20.0)
    assert sim.estimator.counters.overuse_signals >= 1


def test_a_probe_is_judged_on_all_its_packets_when_their_feedback_comes() -> None:
    """A probe through a 2 Mbit/s bottleneck reads no more than the link (its last packets,
    queued longest, are part of the result)."""
    sim = SimulatedLink(seed=7, start_bps=300_000)
    sim.link.rate_bps = 2 * MBIT
    sim.run_until(20.0)
    assert max(sim.window(1.0, 20.0)) <= 1.2 * 2 * MBIT


def test_a_loss_reported_again_counts_once_and_a_late_arrival_takes_it_back() -> None:
    """A receiver re-reports a range after a late packet (libwebrtc repeats a seq it reported
    missing): each loss counts once, and a packet reported lost then received is no loss."""
    from rtp.bwe import BandwidthEstimator
    from rtp.twcc_sender import PacketResult

    est = BandwidthEstimator()

    def result(seq: int, arrived: bool) -> PacketResult:
        send = seq * 0.01
        return PacketResult(seq, send, 1200, send + 0.02 if arrived else None, -1)

    lost_first = {5, 15, 25, 35, 45, 55}
    est.on_feedback([result(s, s not in lost_first) for s in range(0, 60)], 0.62)
    # the range again (rtp.twcc_sender passes on only what was not reported received: the six
    # reported lost, three of them late and now received), then 60 more
    late = {5, 15, 25}
    est.on_feedback([result(s, s in late) for s in sorted(lost_first)] + [result(s, True) for s in range(60, 120)],
                    1.22)
    assert est.counters.packets_lost == 3 and est.counters.packets_recovered == 3
    assert est.counters.packets_acked == 117
    # the loss-based half's window (the last 60 packets counted) holds no more than those 3
    assert est.loss_fraction <= 3 / 60


def test_a_startup_probe_whose_feedback_never_came_is_tried_again_soon() -> None:
    """Under 5 % loss a feedback packet is lost now and then: a startup cluster left unjudged
    is retried 0.2 s after its timeout instead of ending the probing at the start guess."""
    from rtp.bwe import BandwidthEstimator
    from rtp.twcc_sender import PacketResult

    est = BandwidthEstimator(start_bps=300_000)
    est.request_probe(2_000_000, now=0.0)
    est.on_feedback([PacketResult(1, -0.05, 1200, -0.03, -1)], now=0.0)
    first = est.poll_probe(0.0)
    assert first is not None
    est.probe_sent(first.cluster_id, 10, 0.03)
    second = est.poll_probe(0.03)
    assert second is not None
    est.probe_sent(second.cluster_id, 20, 0.06)
    assert est.poll_probe(1.1) is None  # both timed out (no feedback about them): one retry, soon
    assert not est.settled
    retry = est.poll_probe(1.35)
    assert retry is not None and retry.bitrate_bps == min(2_000_000, 2 * est.estimate_bps)
    est.probe_sent(retry.cluster_id, 10, 1.38)
    assert est.poll_probe(2.4) is None  # that one failed too: the retry waits its full interval
    assert est.poll_probe(3.0) is None


def test_loss_read_through_rewinding_feedback_is_the_link_loss() -> None:
    """The loss the estimator reads is the packets reported lost in their final state over the
    packets reported, however a receiver re-reports: libwebrtc's reports each cover from where
    the last stopped to the newest arrival, and a packet older than that start (overtaken by
    jitter, so reported lost) moves the next report's start back to it: that report names it
    received and names again everything after it, received or still lost. Through the real
    sequencer and wire format: 1 packet in 20 lost, 1 in 25 late by a report."""
    from rtp import rtcp
    from rtp.bwe import BandwidthEstimator
    from rtp.packet import RtpPacket
    from rtp.twcc_sender import TransportSequencer

    sequencer = TransportSequencer(3)
    est = BandwidthEstimator(start_bps=2_000_000)
    count, per_report = 1200, 12  # 240 packets a second, a report every 50 ms
    lost = {s for s in range(count) if s % 20 == 7}
    late = {s for s in range(count) if s % 25 == 3} - lost
    arrival = {s: s / 240 + 0.02 for s in range(count) if s not in lost}
    received: set[int] = set()
    named_lost: set[int] = set()  # named lost in some report
    readings: list[float] = []  # the loss-based half's window, after each report
    start = 0  # the receiver's next report starts here
    reports = 0
    for end in range(per_report, count + 1, per_report):
        for s in range(end - per_report, end):
            sequencer.stamp(RtpPacket(payload_type=96, ssrc=1, payload=bytes(1000)).serialize(), s / 240)
        # what arrived by now: the packets of this stretch but the late ones, and the late ones
        # of the stretch before (they come after the report that named them lost)
        newly = {s for s in range(end - per_report, end) if s in arrival and s not in late}
        newly |= {s for s in range(end - 2 * per_report, end - per_report) if s in late}
        if newly and min(newly) < start:
            start = min(newly)  # a late one: the report starts (again) from it
        received |= newly
        newest = max(received)
        packets = []
        clock = int(arrival[min(s for s in received if s >= start)] * 1e6) // 64_000 * 64_000
        reference = clock // 64_000
        for s in range(start, newest + 1):
            if s in received:
                packets.append((s, True, int(arrival[s] * 1e6) - clock))
                clock += packets[-1][2] // 250 * 250
            else:
                packets.append((s, False, None))
                named_lost.add(s)
        wire = rtcp.TransportCc.build(1, 1, reference, reports, packets).serialize()
        reports += 1
        start = newest + 1
        [report] = rtcp.parse_rtcp(wire)
        est.on_feedback(sequencer.on_feedback(report), end / 240 + 0.04)
        if end > 120:
            readings.append(est.loss_fraction)
    counters = est.counters
    reported = max(received) + 1
    assert counters.packets_lost == len(lost & set(range(reported)))  # each loss once, none taken twice
    assert named_lost & late and named_lost & lost
    assert counters.packets_recovered == len(named_lost & late)  # each late one named lost, then taken back
    assert counters.packets_acked == len(received)
    # the window reads the link's 5 % (a loss joins it once later packets are reported: a little
    # less in between); the late packets counted lost as well would read 9 %
    mean = sum(readings) / len(readings)
    print(f"\nwindow loss: mean {mean:.3f}, {min(readings):.3f}-{max(readings):.3f}")
    assert 0.04 <= mean <= 0.055 and max(readings) < 0.1
    assert est.loss_cuts == 0  # 5 % random loss is no congestion
