"""Bounds on what agent workers may hold and send: a worker is a remote peer like any other."""

from __future__ import annotations

import attrs

from trio_sfu.signal.rate_limit import Rate


@attrs.frozen
class AgentLimits:
    #: Registered workers on this server; one more is refused at registration.
    max_workers: int = 256
    #: Jobs running on one worker; a worker at the cap is not offered more.
    max_jobs_per_worker: int = 64
    #: AvailabilityRequests awaiting one worker's answer at once.
    max_pending_per_worker: int = 16
    #: One WorkerMessage, in bytes (the largest real one, an availability answer with
    #: attributes, is a few KiB).
    max_message_size: int = 128 * 1024
    #: WorkerMessages per worker: a worker sends a status every 2.5 s and one message per
    #: job event, so this is far above any real worker; past it the worker is closed.
    message_rate: Rate = Rate(burst=200, per_second=50)
    #: Messages queued to one worker; a worker that does not read them is closed.
    outbox_size: int = 256
    #: Room events queued for the dispatcher; past it an event is dropped and counted.
    event_queue: int = 1024
    #: Jobs being offered at once, server-wide.
    max_launching: int = 1024
    #: Seconds a new connection has to register (LiveKit: 10 s).
    register_timeout: float = 10.0
    #: Seconds a worker has to answer an AvailabilityRequest (LiveKit: 10 s).
    availability_timeout: float = 10.0
    #: Lifetime of the participant token minted for a job's agent (LiveKit: 1 h).
    agent_token_ttl: float = 3600.0
