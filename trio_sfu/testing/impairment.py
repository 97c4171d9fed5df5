"""User-space link impairment for tests: rate, loss, delay and jitter, reproducible from a seed.

This kernel has no netem, so tests impair links themselves. The model is sans-IO: an
`ImpairedLink` is one direction of one link; `admit(size, now)` says when a datagram sent at
`now` arrives at the far end, or None when the link loses it. Stages, in the order a datagram
meets them:

1. **loss** — independent random loss (`loss`), plus Gilbert–Elliott bursts: from the good
   state a datagram starts a burst with probability `burst_start`, and a burst loses every
   datagram until it ends (each further datagram ends it with probability 1 / `burst_length`).
2. **bottleneck** — a token bucket of `rate_bps` (bucket `burst_bytes`) fed by a FIFO queue of
   at most `queue_bytes`; a datagram that does not fit the queue is dropped at its tail (as a
   router's FIFO does). The departure time follows exactly from the bucket, so no timer runs.
3. **propagation** — `delay` plus jitter drawn uniformly from [-`jitter`, +`jitter`]. With
   `reorder` a datagram may overtake earlier ones (netem's jitter does); without, it never
   arrives before one sent earlier on the link.

Everything random comes from one `random.Random(seed)`, drawn a fixed number of times per
datagram, so the same seed and the same send times give the same trace, under `MockClock` or not.

Three adapters deliver on Trio's clock: `impairment_hook` for `MemoryNetwork` (in-memory
servers and clients), `ImpairedDatagramSocket` (any `DatagramSocket`, a kernel UDP socket
included, impaired both ways), and `trio_sfu.testing.impair_proxy` (a UDP proxy for real
clients in a network namespace).
"""

from __future__ import annotations

import collections
import heapq
import itertools
import math
import random
from typing import Callable, Generic, Optional, TypeVar

import attrs
import trio

from trio_sfu.datagram import DatagramSocket

Address = tuple[str, int]
T = TypeVar("T")


def _probability(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be a probability in [0, 1], got {value}")


def _non_negative(instance: object, attribute: attrs.Attribute, value: Optional[float]) -> None:
    if value is not None and value < 0:
        raise ValueError(f"{attribute.name} must not be negative, got {value}")


@attrs.frozen
class Impairment:
    """What one direction of a link does to datagrams (see the module doc for the stages)."""

    delay: float = attrs.field(default=0.0, validator=_non_negative)  # seconds
    jitter: float = attrs.field(default=0.0, validator=_non_negative)  # ± seconds, uniform
    reorder: bool = True  # jitter may reorder (netem's default); False keeps FIFO order
    loss: float = attrs.field(default=0.0, validator=_probability)
    burst_start: float = attrs.field(default=0.0, validator=_probability)
    burst_length: float = attrs.field(default=1.0, validator=_non_negative)  # mean datagrams per burst
    rate_bps: Optional[float] = attrs.field(default=None, validator=_non_negative)  # None: unlimited
    queue_bytes: int = attrs.field(default=64_000, validator=_non_negative)
    burst_bytes: int = attrs.field(default=1_500, validator=_non_negative)

    def __attrs_post_init__(self) -> None:
        if self.jitter > self.delay:
            raise ValueError(f"jitter {self.jitter} s exceeds delay {self.delay} s (arrivals before sending)")
        if self.rate_bps is not None and self.rate_bps <= 0:
            raise ValueError("rate_bps must be positive (None: unlimited)")
        if self.burst_start and self.burst_length < 1:
            raise ValueError("burst_length is a mean number of datagrams, at least 1")

    @classmethod
    def parse(cls, text: str) -> "Impairment":
        """From `key=value,...` (the proxy's command line): delay=0.02,jitter=0.005,loss=0.05,
        rate_bps=600000,queue_bytes=30000,reorder=0. Empty text: no impairment."""
        fields = {f.name: f for f in attrs.fields(cls)}
        values: dict[str, object] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, sep, raw = item.partition("=")
            key = key.strip()
            if not sep or key not in fields:
                raise ValueError(f"bad impairment item {item!r}; keys: {', '.join(fields)}")
            if key == "reorder":
                values[key] = raw.strip().lower() in ("1", "true", "yes", "on")
            elif key in ("queue_bytes", "burst_bytes"):
                values[key] = int(raw)
            else:
                values[key] = float(raw)
        return cls(**values)  # type: ignore[arg-type]


@attrs.define
class LinkCounters:
    sent: int = 0
    delivered: int = 0  # admitted: will arrive
    dropped_loss: int = 0  # random loss
    dropped_burst: int = 0  # Gilbert–Elliott bursts
    dropped_queue: int = 0  # tail drop at the bottleneck
    reordered: int = 0  # arrives before a datagram sent earlier
    queue_delay_total: float = 0.0  # seconds spent waiting at the bottleneck, summed
    queue_delay_max: float = 0.0
    queue_bytes_max: int = 0

    @property
    def mean_queue_delay(self) -> float:
        return self.queue_delay_total / self.delivered if self.delivered else 0.0


class ImpairedLink:
    """One direction of one link; see the module doc."""

    def __init__(self, impairment: Impairment, seed: int = 0) -> None:
        self.impairment = impairment
        self.counters = LinkCounters()
        self._random = random.Random(seed)
        self._in_burst = False
        # Bottleneck: tokens (bytes) as of the last departure, and (departure, size) queued.
        self._tokens = float(impairment.burst_bytes)
        self._last_departure = -math.inf
        self._queued: collections.deque[tuple[float, int]] = collections.deque()
        self._queued_bytes = 0
        self._last_arrival = -math.inf

    def admit(self, size: int, now: float) -> Optional[float]:
        """When a datagram of `size` bytes sent at `now` arrives, or None when it is lost."""
        spec = self.impairment
        counters = self.counters
        counters.sent += 1
        # Fixed draws per datagram, whatever the outcome: a trace depends on the seed only.
        lost_draw, burst_draw, jitter_draw = self._random.random(), self._random.random(), self._random.random()
        if self._in_burst:
            if burst_draw < 1.0 / spec.burst_length:
                self._in_burst = False
            counters.dropped_burst += 1
            return None
        if spec.burst_start and burst_draw < spec.burst_start:
            self._in_burst = spec.burst_length > 1
            counters.dropped_burst += 1
            return None
        if lost_draw < spec.loss:
            counters.dropped_loss += 1
            return None
        departure = now if spec.rate_bps is None else self._bottleneck(size, now)
        if departure is None:
            counters.dropped_queue += 1
            return None
        arrival = departure + spec.delay + spec.jitter * (2.0 * jitter_draw - 1.0)
        if arrival < self._last_arrival:
            if spec.reorder:
                counters.reordered += 1
            else:
                arrival = self._last_arrival
        self._last_arrival = max(self._last_arrival, arrival)
        counters.delivered += 1
        return arrival

    def _bottleneck(self, size: int, now: float) -> Optional[float]:
        spec = self.impairment
        rate = spec.rate_bps / 8.0  # type: ignore[operator]
        queued = self._queued
        while queued and queued[0][0] <= now:
            self._queued_bytes -= queued.popleft()[1]
        if self._queued_bytes + size > spec.queue_bytes:
            return None
        start = max(now, self._last_departure)
        # The bucket refills at `rate` since the last departure (full at the first datagram).
        tokens = min(float(max(spec.burst_bytes, size)), self._tokens + (start - self._last_departure) * rate)
        if tokens >= size:
            departure, self._tokens = start, tokens - size
        else:
            departure, self._tokens = start + (size - tokens) / rate, 0.0
        self._last_departure = departure
        if departure > now:
            queued.append((departure, size))
            self._queued_bytes += size
        counters = self.counters
        waited = departure - now
        counters.queue_delay_total += waited
        counters.queue_delay_max = max(counters.queue_delay_max, waited)
        counters.queue_bytes_max = max(counters.queue_bytes_max, self._queued_bytes)
        return departure


class DelayLine(Generic[T]):
    """Items held until their due time (sans-IO): `push`, `pop_due(now)`, `next_deadline()`."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, T]] = []
        self._order = itertools.count()

    def push(self, due: float, item: T) -> None:
        heapq.heappush(self._heap, (due, next(self._order), item))

    def pop_due(self, now: float) -> list[T]:
        out = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            out.append(heapq.heappop(heap)[2])
        return out

    def next_deadline(self) -> float:
        return self._heap[0][0] if self._heap else math.inf

    def __len__(self) -> int:
        return len(self._heap)


def impairment_hook(link_for: Callable[[Address, Address], Optional[ImpairedLink]]
                    ) -> Callable[[Address, Address, bytes], Optional[float]]:
    """A `MemoryNetwork` link_delay hook: `link_for(source, destination)` names the impaired
    link a datagram takes (None: unimpaired). Reordering needs `MemoryNetwork(reorder=True)`."""

    def hook(source: Address, destination: Address, data: bytes) -> Optional[float]:
        link = link_for(source, destination)
        if link is None:
            return 0.0
        now = trio.current_time()
        arrival = link.admit(len(data), now)
        return None if arrival is None else max(0.0, arrival - now)

    return hook


class ImpairedDatagramSocket:
    """A `DatagramSocket` that impairs what `inner` sends (`outgoing`) and what it receives
    (`incoming`), each direction on its own link. Its `run` task (in the nursery that owns the
    socket) moves datagrams when they are due; nothing is delivered while it is not running."""

    def __init__(self, inner: DatagramSocket, outgoing: Optional[ImpairedLink] = None,
                 incoming: Optional[ImpairedLink] = None, receive_queue: int = 4096) -> None:
        self.inner = inner
        self.outgoing = outgoing
        self.incoming = incoming
        self.receive_queue = receive_queue
        self.dropped_receive_queue = 0
        self._to_send: DelayLine[tuple[bytes, Address]] = DelayLine()
        self._to_receive: DelayLine[tuple[bytes, Address]] = DelayLine()
        self._ready: collections.deque[tuple[bytes, Address]] = collections.deque()
        self._readable = trio.Event()
        self._held_changed = trio.Event()
        self.closed = False

    # ---- the DatagramSocket surface ----------------------------------------------------------

    def sendto(self, data: bytes, addr: Address) -> int:
        if self.closed:
            raise OSError(9, "socket closed")
        if self.outgoing is None:
            return self.inner.sendto(data, addr)
        now = trio.current_time()
        arrival = self.outgoing.admit(len(data), now)
        if arrival is not None:
            self._to_send.push(arrival, (bytes(data), addr))
            self._held_changed.set()
        return len(data)

    def _next(self) -> tuple[bytes, Address]:
        if self.closed:
            raise OSError(9, "socket closed")
        if not self._ready:
            if self._readable.is_set():
                self._readable = trio.Event()
            raise BlockingIOError(11, "no datagram queued")
        return self._ready.popleft()

    def recvfrom(self, bufsize: int) -> tuple[bytes, Address]:
        data, source = self._next()
        return data[:bufsize], source

    def recvfrom_into(self, buffer: bytearray) -> tuple[int, Address]:
        data, source = self._next()
        size = min(len(data), len(buffer))
        buffer[:size] = data[:size]
        return size, source

    def getsockname(self) -> Address:
        return self.inner.getsockname()

    async def wait_readable(self) -> None:
        if self._ready or self.closed:
            await trio.lowlevel.checkpoint()
        else:
            await self._readable.wait()
        if self.closed:
            raise trio.ClosedResourceError("socket closed")

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.inner.close()
            self._readable.set()
            self._held_changed.set()

    # ---- delivery ------------------------------------------------------------------------------

    def _enqueue(self, item: tuple[bytes, Address]) -> None:
        if len(self._ready) >= self.receive_queue:
            self.dropped_receive_queue += 1
            return
        self._ready.append(item)
        self._readable.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read_inner)
            task_status.started()
            await self._release()
            nursery.cancel_scope.cancel()

    async def _read_inner(self) -> None:
        while not self.closed:
            try:
                await self.inner.wait_readable()
            except (trio.ClosedResourceError, OSError):
                return
            while True:
                try:
                    data, source = self.inner.recvfrom(65536)
                except BlockingIOError:
                    break
                except OSError:
                    return
                if self.incoming is None:
                    self._enqueue((data, source))
                    continue
                arrival = self.incoming.admit(len(data), trio.current_time())
                if arrival is not None:
                    self._to_receive.push(arrival, (data, source))
                    self._held_changed.set()

    async def _release(self) -> None:
        while not self.closed:
            self._held_changed = trio.Event()
            with trio.move_on_at(min(self._to_send.next_deadline(), self._to_receive.next_deadline())):
                await self._held_changed.wait()
            now = trio.current_time()
            for data, addr in self._to_send.pop_due(now):
                try:
                    self.inner.sendto(data, addr)
                except BlockingIOError:
                    pass  # a full kernel buffer drops, as it would have without us
                except OSError:
                    return
            for item in self._to_receive.pop_due(now):
                self._enqueue(item)


__all__ = ["DelayLine", "ImpairedDatagramSocket", "ImpairedLink", "Impairment", "LinkCounters", "impairment_hook"]
