"""Registered agent workers and the choice of one for a job.

An `AgentWorker` is one registered connection: what it registered (agent name, namespace, job
type, permissions), what it last reported (status, load), the jobs it runs, and the questions
it has not answered yet. Messages to it go through a bounded outbox that the connection's
writer task drains (`trio_sfu.agents.endpoint`); a worker that lets its outbox fill is closed,
never waited on. `WorkerRegistry` holds the workers of this server and picks one for a job the
way LiveKit does: at random, weighted by spare capacity (1 - load), among the available workers
registered for the job's agent name, namespace and type that were not tried yet.
"""

from __future__ import annotations

import enum
import random
import secrets
import string
from typing import Iterable

import attrs
import trio
from livekit.protocol import agent as agent_pb, models

from trio_sfu import metrics as m
from trio_sfu.agents.limits import AgentLimits
from trio_sfu.log import get_logger

_ALPHABET = string.ascii_letters + string.digits
_log = get_logger("trio_sfu.agents.workers")


def new_id(prefix: str) -> str:
    """An id in LiveKit's shape: a prefix (AW_, AJ_, AD_) and 12 random characters."""
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(12))


class Answer(enum.Enum):
    """How a worker answered an AvailabilityRequest."""

    ACCEPTED = "accepted"
    DECLINED = "declined"
    #: The worker handled the job without joining (LiveKit: the job ends as a success).
    TERMINATED = "terminated"
    TIMED_OUT = "timed_out"
    WORKER_CLOSED = "worker_closed"
    #: Too many questions to this worker are already open: ask another.
    BUSY = "busy"


@attrs.frozen
class WorkerKey:
    """What a job must match: LiveKit's workerKey (agent name, namespace, job type)."""

    agent_name: str
    namespace: str
    job_type: int


@attrs.define(eq=False)
class _Pending:
    answered: trio.Event = attrs.field(factory=trio.Event)
    response: agent_pb.AvailabilityResponse | None = None


class WorkerClosed(Exception):
    """The worker is gone (its connection closed or it was closed for misbehaving)."""


class AgentWorker:
    def __init__(self, worker_id: str, api_key: str, register: agent_pb.RegisterWorkerRequest,
                 limits: AgentLimits) -> None:
        self.id = worker_id
        self.api_key = api_key
        self.agent_name = register.agent_name
        self.namespace = register.namespace
        self.job_type = register.type
        self.version = register.version
        if register.HasField("allowed_permissions"):
            self.permissions = models.ParticipantPermission()
            self.permissions.CopyFrom(register.allowed_permissions)
        else:
            # LiveKit's default for a worker that names none.
            self.permissions = models.ParticipantPermission(
                can_subscribe=True, can_publish=True, can_publish_data=True, can_update_metadata=True)
        self.limits = limits
        self.status = agent_pb.WorkerStatus.WS_AVAILABLE
        self.load = 0.0
        #: job id -> the job as assigned (its state kept current by UpdateJobStatus).
        self.jobs: dict[str, agent_pb.Job] = {}
        self._pending: dict[str, _Pending] = {}
        self._outbox_send, self.outbox = trio.open_memory_channel[agent_pb.ServerMessage](limits.outbox_size)
        self.closed = trio.Event()
        self.close_reason = ""
        self.log = _log.bind(worker=worker_id, agent_name=self.agent_name)

    @property
    def key(self) -> WorkerKey:
        return WorkerKey(self.agent_name, self.namespace, self.job_type)

    @property
    def available(self) -> bool:
        return (not self.closed.is_set() and self.status == agent_pb.WorkerStatus.WS_AVAILABLE
                and len(self.jobs) + len(self._pending) < self.limits.max_jobs_per_worker)

    def close(self, reason: str) -> None:
        """Stop using this worker: its connection ends (the endpoint watches `closed`)."""
        if self.closed.is_set():
            return
        self.close_reason = reason
        self.closed.set()
        self._outbox_send.close()
        for pending in self._pending.values():
            pending.answered.set()

    def send(self, message: agent_pb.ServerMessage) -> None:
        """Queue a message to the worker; a worker that does not read its messages is closed."""
        if self.closed.is_set():
            raise WorkerClosed(self.close_reason)
        try:
            self._outbox_send.send_nowait(message)
        except trio.WouldBlock:
            self.close("outbox full: the worker does not read its messages")
            raise WorkerClosed(self.close_reason) from None

    def update_status(self, update: agent_pb.UpdateWorkerStatus) -> None:
        if update.HasField("status"):
            self.status = update.status
        # A load outside [0, 1] (or NaN) is the worker's mistake; keep the choice well defined.
        load = update.load
        self.load = min(max(load, 0.0), 1.0) if load == load else 1.0

    async def offer(self, job: agent_pb.Job, *, resuming: bool,
                    timeout: float) -> tuple[Answer, agent_pb.AvailabilityResponse | None]:
        """Ask the worker whether it takes `job`; wait (bounded) for its answer."""
        if job.id in self._pending or len(self._pending) >= self.limits.max_pending_per_worker:
            return Answer.BUSY, None
        pending = _Pending()
        self._pending[job.id] = pending
        try:
            try:
                self.send(agent_pb.ServerMessage(availability=agent_pb.AvailabilityRequest(job=job, resuming=resuming)))
            except WorkerClosed:
                return Answer.WORKER_CLOSED, None
            with trio.move_on_after(timeout):
                await pending.answered.wait()
        finally:
            del self._pending[job.id]
        response = pending.response
        if response is None:
            return (Answer.WORKER_CLOSED if self.closed.is_set() else Answer.TIMED_OUT), None
        if response.terminate:
            return Answer.TERMINATED, response
        if not response.available:
            return Answer.DECLINED, response
        return Answer.ACCEPTED, response

    def availability_answered(self, response: agent_pb.AvailabilityResponse) -> bool:
        """The worker's answer to an open question; False if no question is open for that job."""
        pending = self._pending.get(response.job_id)
        if pending is None or pending.answered.is_set():
            return False
        pending.response = response
        pending.answered.set()
        return True


class WorkerRegistry:
    """The workers registered on this server."""

    def __init__(self, limits: AgentLimits, metrics: m.Metrics, rng: random.Random | None = None) -> None:
        self.limits = limits
        self.metrics = metrics
        self.workers: dict[str, AgentWorker] = {}
        self._rng = rng or random.Random()

    @property
    def full(self) -> bool:
        return len(self.workers) >= self.limits.max_workers

    def add(self, worker: AgentWorker) -> None:
        if self.full:
            raise ValueError("too many workers")
        self.workers[worker.id] = worker
        self.metrics.inc(m.AGENT_WORKERS_REGISTERED)
        worker.log.info("worker registered", kv={"namespace": worker.namespace,
                                                  "job_type": agent_pb.JobType.Name(worker.job_type),
                                                  "version": worker.version[:32]})

    def remove(self, worker: AgentWorker) -> None:
        if self.workers.get(worker.id) is worker:
            del self.workers[worker.id]
            self.metrics.inc(m.AGENT_WORKERS_DEREGISTERED)
            worker.log.info("worker deregistered", kv={"reason": worker.close_reason or "connection closed",
                                                        "jobs": len(worker.jobs)})

    def matching(self, key: WorkerKey) -> list[AgentWorker]:
        return [w for w in self.workers.values() if w.key == key and not w.closed.is_set()]

    def namespaces(self, agent_name: str, job_type: int) -> list[str]:
        """The namespaces workers for this agent name and job type registered in (LiveKit
        launches a job per namespace; namespaces are deprecated, nearly always just "")."""
        return sorted({w.namespace for w in self.workers.values()
                       if w.agent_name == agent_name and w.job_type == job_type and not w.closed.is_set()})

    def choose(self, key: WorkerKey, tried: Iterable[AgentWorker] = ()) -> AgentWorker | None:
        """A worker for a job of `key`, at random weighted by spare capacity; None if none can."""
        skip = set(map(id, tried))
        candidates = [(w, 1.0 - w.load) for w in self.matching(key) if id(w) not in skip and w.available]
        candidates = [(w, spare) for w, spare in candidates if spare > 0]
        if not candidates:
            return None
        point = self._rng.random() * sum(spare for _, spare in candidates)
        for worker, spare in candidates:
            point -= spare
            if point <= 0:
                return worker
        return candidates[-1][0]

    def job_count(self) -> int:
        return sum(len(w.jobs) for w in self.workers.values())
