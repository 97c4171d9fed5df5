"""Property: over any lossy, duplicating, reordering link, a reliable ordered channel delivers
exactly what was sent, in order, and an unordered one delivers every message exactly once.

A small discrete-event simulator (heap of delivery times) drives two associations; hypothesis
picks the link's behaviour and the messages.
"""

from __future__ import annotations

import heapq
import random

from budgets import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from rtp.sctp.association import AssociationState, SctpAssociation
from rtp.sctp.events import ChannelOpened, MessageReceived


def simulate(a, b, rng, loss, duplicate, jitter, until, horizon=3000.0):
    """Run until until() is true or the simulated horizon passes; return the simulated time."""
    queue: list = []
    seq = 0
    now = 0.0
    events = {id(a): [], id(b): []}
    peers = {id(a): b, id(b): a}
    while now < horizon:
        for x in (a, b):
            for packet in x.packets_to_send(now):
                copies = 0 if rng.random() < loss else (2 if rng.random() < duplicate else 1)
                for _ in range(copies):
                    seq += 1
                    heapq.heappush(queue, (now + 0.01 + rng.random() * jitter, seq, peers[id(x)], packet))
            while (event := x.next_event()) is not None:
                events[id(x)].append(event)
        if until(events[id(a)], events[id(b)]):
            return now, events[id(a)], events[id(b)]
        timers = [t for t in (a.next_deadline(), b.next_deadline()) if t is not None]
        next_time = min([queue[0][0]] + timers if queue else timers or [now + 1.0])
        now = max(now, next_time)
        while queue and queue[0][0] <= now:
            _, _, dest, packet = heapq.heappop(queue)
            dest.receive_packet(packet, now)
        for x in (a, b):
            timer = x.next_deadline()
            if timer is not None and timer <= now:
                x.handle_timeout(now)
    raise AssertionError(f"not done after {horizon} simulated seconds")


@settings(max_examples=examples(1.5))
@given(
    seed=st.integers(0, 2**32 - 1),
    loss=st.floats(0.0, 0.25),
    duplicate=st.floats(0.0, 0.2),
    jitter=st.floats(0.0, 0.05),
    sizes=st.lists(st.integers(1, 5000), min_size=1, max_size=40),
)
def test_reliable_and_unordered_channels_survive_any_link(seed, loss, duplicate, jitter, sizes):
    rng = random.Random(seed)
    a, b = SctpAssociation(True), SctpAssociation(False)
    a.start(0.0)
    ordered = a.open_channel("ordered")
    unordered = a.open_channel("unordered", ordered=False)
    messages = [bytes([i % 256]) * size for i, size in enumerate(sizes)]
    for msg in messages:
        a.send(ordered, msg)
        a.send(unordered, msg[::-1])

    def done(a_events, b_events):
        got = [e for e in b_events if isinstance(e, MessageReceived)]
        opened = [e for e in a_events if isinstance(e, ChannelOpened)]
        return len(got) == 2 * len(messages) and len(opened) == 2

    _, _, b_events = simulate(a, b, rng, loss, duplicate, jitter, done)
    got_ordered = [e.data for e in b_events if isinstance(e, MessageReceived) and e.stream_id == ordered]
    got_unordered = [e.data for e in b_events if isinstance(e, MessageReceived) and e.stream_id == unordered]
    assert got_ordered == messages
    assert sorted(got_unordered) == sorted(m[::-1] for m in messages)
    assert a.state is b.state is AssociationState.ESTABLISHED


@settings(max_examples=examples(1))
@given(
    seed=st.integers(0, 2**32 - 1),
    loss=st.floats(0.0, 0.3),
    duplicate=st.floats(0.0, 0.2),
    jitter=st.floats(0.0, 0.05),
    count=st.integers(1, 80),
    rexmit=st.integers(0, 2),
)
def test_partially_reliable_channel_never_duplicates_and_never_stalls(seed, loss, duplicate, jitter, count, rexmit):
    rng = random.Random(seed)
    a, b = SctpAssociation(True), SctpAssociation(False)
    a.start(0.0)
    lossy = a.open_channel("_lossy", ordered=False, max_retransmits=rexmit)
    reliable = a.open_channel("_reliable")
    sent = [f"lossy {i}".encode() * (1 + i % 40) for i in range(count)]
    for msg in sent:
        a.send(lossy, msg)
    a.send(reliable, "last")

    def done(a_events, b_events):
        return MessageReceived(reliable, "last", 51) in b_events and a.unacked_chunks == 0 and not a._outbound

    _, _, b_events = simulate(a, b, rng, loss, duplicate, jitter, done)
    got = [e.data for e in b_events if isinstance(e, MessageReceived) and e.stream_id == lossy]
    assert len(got) == len(set(got)) and set(got) <= set(sent)
    if loss == 0.0:
        assert sorted(got) == sorted(sent)
