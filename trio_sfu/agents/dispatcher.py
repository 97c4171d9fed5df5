"""From rooms to jobs: agent dispatches, the jobs they launch, and each job to its end.

A room's dispatches come from the token or CreateRoom request that created it
(`roomConfig.agents`), or, when that names none, one dispatch with an empty agent name: the
automatic dispatch, which reaches every worker registered without an agent name (LiveKit's
rule). `AgentDispatchService` adds and removes dispatches on a live room. Each dispatch
launches a job of each type that has workers registered for its agent name: a room job when
the dispatch starts, a participant job per participant that joins, a publisher job per
participant that first publishes (agents and egress never get jobs of their own).

A job is offered to workers one at a time (`AgentWorker.offer`), chosen by spare capacity; a
worker that declines, times out, is busy or goes away is left out and the next is asked, until
one accepts (the job is assigned with a participant token minted here) or none is left (the
job fails with `JSR_NO_CAPACITY`; LiveKit keeps no record of such a job, we list it failed).
LiveKit retries a decline or a closed worker but gives up on a timeout; we try the next worker
after a timeout too: a worker that does not answer is no reason to leave a room without its agent.

Ends, matching LiveKit where it has a rule: the worker reports the end (UpdateJobStatus);
the agent's participant leaves the room while its worker stays (the job is terminated and
fails with "agent worker left the room"); the room closes (terminated, JSR_ROOM_CLOSED); the
dispatch is deleted (terminated, JSR_DISPATCH_DELETED). A worker that goes away mid-job is the
case the open-source LiveKit server leaves as a TODO (its jobs are dropped); LiveKit Cloud
re-dispatches them by the dispatch's restart policy, and so do we: with `JRP_ON_FAILURE` (the
default) the job, same id, is offered to the other workers with `resuming=True` (state reason
`JSR_RETRYING` meanwhile); with `JRP_NEVER` it fails with "worker closed". The agent a
re-dispatched job starts joins with the job's identity and replaces the stale one.

One node at a time: a dispatcher knows the rooms of its own node and the workers connected to
it. In a cluster each node dispatches its share of a room to its own workers; a room spanning
two nodes that both have matching workers gets an agent from each (a cluster-wide dispatch
through the directory is not built yet).

Room events arrive synchronously (`room_event`, the registry's observer interface); the
dispatcher changes its records at once and starts the offering of each job as a task in its
own nursery, bounded in number.
"""

from __future__ import annotations

import time
from typing import Mapping, Protocol, Sequence

import attrs
import trio
from livekit.protocol import agent as agent_pb, agent_dispatch as dispatch_pb, models

from trio_sfu import metrics as m
from trio_sfu.agents.limits import AgentLimits
from trio_sfu.agents.tokens import mint_agent_token
from trio_sfu.agents.workers import AgentWorker, Answer, WorkerClosed, WorkerKey, WorkerRegistry, new_id
from trio_sfu.log import ContextLogger, get_logger
from trio_sfu.signal.participant import Participant
from trio_sfu.signal.rooms import Room

#: Seconds between an agent's participant leaving and its job being terminated: if its worker
#: died (both connections drop at once) the worker's departure re-dispatches the job instead.
AGENT_LEFT_GRACE = 2.0
#: Ended jobs a room keeps for ListDispatch; older ones are forgotten (a busy room with
#: participant jobs would otherwise grow its record with every join).
MAX_ENDED_JOBS_PER_ROOM = 128
#: Dispatches one room may hold (AgentDispatchService adds them; LiveKit sets no bound).
MAX_DISPATCHES_PER_ROOM = 64
#: LiveKit's participant attribute naming the agent.
AGENT_NAME_ATTRIBUTE = "lk.agent_name"
_DEPENDENT_KINDS = {models.ParticipantInfo.Kind.AGENT, models.ParticipantInfo.Kind.EGRESS}

_log = get_logger("trio_sfu.agents.dispatch")


class JobObserver(Protocol):
    """Told about job outcomes (the webhooks). Called synchronously: must not block or raise."""

    def job_event(self, event: str, job: agent_pb.Job) -> None: ...


#: Job events, as webhooks and logs name them.
JOB_STARTED = "agent_job_started"
JOB_ENDED = "agent_job_ended"


class DispatchError(Exception):
    """A dispatch request that cannot be honoured; `code` is the Twirp error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _now_ns() -> int:
    return time.time_ns()


@attrs.define(eq=False)
class _JobRecord:
    job: agent_pb.Job
    dispatch: dispatch_pb.AgentDispatch
    worker: AgentWorker | None = None
    #: The sid of the agent participant that joined for this job (cleared on re-dispatch).
    participant_sid: str = ""

    @property
    def ended(self) -> bool:
        return self.job.state.status in (agent_pb.JobStatus.JS_SUCCESS, agent_pb.JobStatus.JS_FAILED)


@attrs.define(eq=False)
class _RoomAgents:
    room: Room
    dispatches: dict[str, dispatch_pb.AgentDispatch] = attrs.field(factory=dict)
    jobs: dict[str, _JobRecord] = attrs.field(factory=dict)
    #: Participants (by sid) that have had their publisher jobs launched.
    publishers: set[str] = attrs.field(factory=set)


class AgentDispatcher:
    def __init__(self, workers: WorkerRegistry, keys: Mapping[str, str], metrics: m.Metrics,
                 limits: AgentLimits | None = None) -> None:
        self.workers = workers
        self.keys = dict(keys)
        self.metrics = metrics
        self.limits = limits or workers.limits
        self.observers: list[JobObserver] = []
        self._rooms: dict[str, _RoomAgents] = {}
        self._nursery: trio.Nursery | None = None
        self._launching = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    # ---- room events (RoomObserver) --------------------------------------------------------

    def room_event(self, event: str, room: Room, participant: Participant | None = None,
                   track: models.TrackInfo | None = None) -> None:
        if event == "room_started":
            self._room_started(room)
        elif event == "room_finished":
            self._room_finished(room)
        elif event == "participant_joined" and participant is not None:
            self._participant_joined(room, participant)
        elif event == "participant_left" and participant is not None:
            self._participant_left(room, participant)
        elif event == "track_published" and participant is not None:
            self._track_published(room, participant)

    def _record(self, room: Room) -> _RoomAgents:
        # By sid: a room closing and a new one of the same name overlap for a moment.
        record = self._rooms.get(room.sid)
        if record is None:
            record = _RoomAgents(room)
            if not room.closed:  # a closed room's late events must not leave a record behind
                self._rooms[room.sid] = record
        return record

    def _room_started(self, room: Room) -> None:
        record = self._record(room)
        requested: Sequence[dispatch_pb.RoomAgentDispatch] = room.requested_agents or (dispatch_pb.RoomAgentDispatch(),)
        for wanted in requested:
            dispatch = dispatch_pb.AgentDispatch(
                id=new_id("AD_"), agent_name=wanted.agent_name, room=room.name, metadata=wanted.metadata,
                restart_policy=wanted.restart_policy, attributes=dict(wanted.attributes),
                state=dispatch_pb.AgentDispatchState(created_at=_now_ns()))
            record.dispatches[dispatch.id] = dispatch
            self._launch_for_dispatch(record, dispatch)

    def _launch_for_dispatch(self, record: _RoomAgents, dispatch: dispatch_pb.AgentDispatch) -> None:
        self._launch(record, dispatch, agent_pb.JobType.JT_ROOM, None)
        for participant in list(record.room.participants.values()):
            if _dependent(participant) or not participant.announced:
                continue
            self._launch(record, dispatch, agent_pb.JobType.JT_PARTICIPANT, participant)
            if participant.tracks:
                self._launch(record, dispatch, agent_pb.JobType.JT_PUBLISHER, participant)

    def _room_finished(self, room: Room) -> None:
        record = self._rooms.pop(room.sid, None)
        if record is None:
            return
        for entry in record.jobs.values():
            self._terminate(entry, agent_pb.JobStatus.JS_SUCCESS, "", agent_pb.JobStateReason.JSR_ROOM_CLOSED)

    def _participant_joined(self, room: Room, participant: Participant) -> None:
        record = self._record(room)
        if _dependent(participant):
            for entry in record.jobs.values():
                if entry.job.state.participant_identity == participant.identity and not entry.ended:
                    entry.participant_sid = participant.sid
                    entry.job.state.updated_at = _now_ns()
                    _log.info("agent joined", kv={"job": entry.job.id, "room": room.name, "participant": participant.sid,
                                                  "identity": participant.identity})
            return
        for dispatch in list(record.dispatches.values()):
            self._launch(record, dispatch, agent_pb.JobType.JT_PARTICIPANT, participant)

    def _track_published(self, room: Room, participant: Participant) -> None:
        record = self._record(room)
        if _dependent(participant) or participant.sid in record.publishers:
            return
        record.publishers.add(participant.sid)
        for dispatch in list(record.dispatches.values()):
            self._launch(record, dispatch, agent_pb.JobType.JT_PUBLISHER, participant)

    def _participant_left(self, room: Room, participant: Participant) -> None:
        record = self._rooms.get(room.sid)
        if record is None:
            return
        record.publishers.discard(participant.sid)
        for entry in record.jobs.values():
            if entry.participant_sid == participant.sid and not entry.ended and self._nursery is not None:
                self._nursery.start_soon(self._agent_left, entry, participant.sid)

    async def _agent_left(self, entry: _JobRecord, sid: str) -> None:
        worker = entry.worker
        await trio.sleep(AGENT_LEFT_GRACE)
        if entry.participant_sid == sid and entry.worker is worker and worker is not None \
                and not worker.closed.is_set() and not entry.ended:
            self._terminate(entry, agent_pb.JobStatus.JS_FAILED, "agent worker left the room",
                            agent_pb.JobStateReason.JSR_UNSPECIFIED)

    # ---- jobs ------------------------------------------------------------------------------

    def _launch(self, record: _RoomAgents, dispatch: dispatch_pb.AgentDispatch, job_type: int,
                participant: Participant | None) -> None:
        # LiveKit launches only the job types some worker registered for, one job per namespace.
        for namespace in self.workers.namespaces(dispatch.agent_name, job_type):
            job = agent_pb.Job(
                id=new_id("AJ_"), dispatch_id=dispatch.id, type=job_type, room=record.room.to_proto(),
                namespace=namespace, agent_name=dispatch.agent_name, metadata=dispatch.metadata,
                attributes=dict(dispatch.attributes),
                state=agent_pb.JobState(status=agent_pb.JobStatus.JS_PENDING, updated_at=_now_ns()))
            if participant is not None:
                job.participant.CopyFrom(participant.to_info())
            entry = _JobRecord(job, dispatch)
            _forget_old_jobs(record)
            record.jobs[job.id] = entry
            self._start_offering(record, entry, resuming=False)

    def _start_offering(self, record: _RoomAgents, entry: _JobRecord, *, resuming: bool) -> None:
        if self._nursery is None or self._launching >= self.limits.max_launching:
            self.metrics.inc(m.AGENT_JOBS_DROPPED)
            self._end(entry, agent_pb.JobStatus.JS_FAILED, "too many jobs being dispatched",
                      agent_pb.JobStateReason.JSR_NO_CAPACITY)
            return
        self._launching += 1
        self._nursery.start_soon(self._offer, record, entry, resuming)

    async def _offer(self, record: _RoomAgents, entry: _JobRecord, resuming: bool) -> None:
        job = entry.job
        log = _log.bind(job=job.id, room=record.room.name, agent_name=job.agent_name,
                        job_type=agent_pb.JobType.Name(job.type))
        key = WorkerKey(job.agent_name, job.namespace, job.type)
        tried: list[AgentWorker] = []
        try:
            while not entry.ended and not record.room.closed:
                worker = self.workers.choose(key, tried)
                if worker is None:
                    log.warning("no worker available to handle job", kv={"tried": len(tried)})
                    self._end(entry, agent_pb.JobStatus.JS_FAILED, "no worker available",
                              agent_pb.JobStateReason.JSR_NO_CAPACITY)
                    return
                tried.append(worker)
                answer, response = await worker.offer(job, resuming=resuming,
                                                      timeout=self.limits.availability_timeout)
                if entry.ended or record.room.closed:
                    return
                if answer is Answer.ACCEPTED and response is not None:
                    if self._assign(entry, worker, response, log):
                        return
                    continue
                if answer is Answer.TERMINATED:
                    # LiveKit: the worker handled the job without an agent; it ends successfully.
                    entry.job.state.worker_id = worker.id
                    self._end(entry, agent_pb.JobStatus.JS_SUCCESS, "", agent_pb.JobStateReason.JSR_UNSPECIFIED)
                    return
                self.metrics.inc(m.AGENT_JOB_OFFERS_RETRIED)
                log.info("worker did not take the job, trying another", kv={"worker": worker.id, "answer": answer.value})
        finally:
            self._launching -= 1

    def _assign(self, entry: _JobRecord, worker: AgentWorker, response: agent_pb.AvailabilityResponse,
                log: ContextLogger) -> bool:
        job = entry.job
        secret = self.keys.get(worker.api_key)
        if secret is None:
            # The key was removed since the worker registered: it cannot be given a token.
            worker.close("its API key is no longer configured")
            return False
        identity = response.participant_identity or f"agent-{job.id}"
        attributes = dict(response.participant_attributes)
        attributes[AGENT_NAME_ATTRIBUTE] = worker.agent_name
        now = _now_ns()
        job.state.worker_id = worker.id
        job.state.participant_identity = identity
        job.state.status = agent_pb.JobStatus.JS_RUNNING
        job.state.reason = agent_pb.JobStateReason.JSR_UNSPECIFIED
        job.state.error = ""
        job.state.started_at = now
        job.state.updated_at = now
        token = mint_agent_token(worker.api_key, secret, job.room.name, identity, response.participant_name,
                                 response.participant_metadata, attributes, worker.permissions,
                                 self.limits.agent_token_ttl)
        try:
            worker.send(agent_pb.ServerMessage(assignment=agent_pb.JobAssignment(job=job, token=token)))
        except WorkerClosed:
            return False
        entry.worker = worker
        worker.jobs[job.id] = job
        self.metrics.inc(m.AGENT_JOBS_ASSIGNED)
        log.info("job assigned to worker", kv={"worker": worker.id, "identity": identity})
        self._notify(JOB_STARTED, job)
        return True

    def _terminate(self, entry: _JobRecord, status: int, error: str, reason: int) -> None:
        """End a job on the server's decision, telling its worker to stop it."""
        if entry.ended:
            return
        worker = entry.worker
        if worker is not None:
            try:
                worker.send(agent_pb.ServerMessage(termination=agent_pb.JobTermination(job_id=entry.job.id)))
            except WorkerClosed:
                pass
        self._end(entry, status, error, reason)

    def _end(self, entry: _JobRecord, status: int, error: str, reason: int) -> None:
        if entry.ended:
            return
        state = entry.job.state
        state.status = status
        state.error = error
        state.reason = reason
        state.ended_at = state.updated_at = _now_ns()
        if entry.worker is not None:
            entry.worker.jobs.pop(entry.job.id, None)
        self.metrics.inc(m.AGENT_JOBS_SUCCEEDED if status == agent_pb.JobStatus.JS_SUCCESS else m.AGENT_JOBS_FAILED)
        _log.info("job ended", kv={"job": entry.job.id, "room": entry.job.room.name,
                                   "status": agent_pb.JobStatus.Name(status), "error": error,
                                   "reason": agent_pb.JobStateReason.Name(reason)})
        self._notify(JOB_ENDED, entry.job)

    def _notify(self, event: str, job: agent_pb.Job) -> None:
        for observer in list(self.observers):
            try:
                observer.job_event(event, job)
            except Exception:
                _log.exception("job observer failed", kv={"event": event})

    def _entry(self, worker: AgentWorker, job_id: str) -> _JobRecord | None:
        for record in self._rooms.values():
            entry = record.jobs.get(job_id)
            if entry is not None and entry.worker is worker:
                return entry
        return None

    # ---- worker events (the /agent endpoint) ---------------------------------------------------

    def job_updated(self, worker: AgentWorker, update: agent_pb.UpdateJobStatus) -> None:
        """The worker's UpdateJobStatus; an update for a job it does not run is ignored (LiveKit)."""
        entry = self._entry(worker, update.job_id)
        if entry is None or entry.ended:
            self.metrics.inc(m.AGENT_UNKNOWN_JOB_UPDATES)
            return
        if update.status in (agent_pb.JobStatus.JS_SUCCESS, agent_pb.JobStatus.JS_FAILED):
            self._end(entry, update.status, update.error[:1024], agent_pb.JobStateReason.JSR_UNSPECIFIED)
            return
        entry.job.state.status = update.status
        entry.job.state.error = update.error[:1024]
        entry.job.state.updated_at = _now_ns()

    def worker_gone(self, worker: AgentWorker) -> None:
        """The worker's connection ended: its running jobs go to other workers or end."""
        for record in list(self._rooms.values()):
            for entry in list(record.jobs.values()):
                if entry.worker is not worker or entry.ended:
                    continue
                worker.jobs.pop(entry.job.id, None)
                if record.room.closed:
                    continue
                if entry.dispatch.restart_policy == dispatch_pb.JobRestartPolicy.JRP_NEVER:
                    self._end(entry, agent_pb.JobStatus.JS_FAILED, "worker closed",
                              agent_pb.JobStateReason.JSR_UNSPECIFIED)
                    continue
                self.metrics.inc(m.AGENT_JOBS_REDISPATCHED)
                _log.info("worker gone mid-job, re-dispatching", kv={"job": entry.job.id, "room": record.room.name,
                                                                      "worker": worker.id})
                entry.worker = None
                entry.participant_sid = ""
                state = entry.job.state
                state.status = agent_pb.JobStatus.JS_PENDING
                state.reason = agent_pb.JobStateReason.JSR_RETRYING
                state.updated_at = _now_ns()
                self._start_offering(record, entry, resuming=True)

    # ---- AgentDispatchService --------------------------------------------------------------

    def create_dispatch(self, room: Room, request: dispatch_pb.CreateAgentDispatchRequest) -> dispatch_pb.AgentDispatch:
        record = self._record(room)
        if len(record.dispatches) >= MAX_DISPATCHES_PER_ROOM:
            raise DispatchError("resource_exhausted", f"a room holds at most {MAX_DISPATCHES_PER_ROOM} dispatches")
        dispatch = dispatch_pb.AgentDispatch(
            id=new_id("AD_"), agent_name=request.agent_name, room=room.name, metadata=request.metadata,
            restart_policy=request.restart_policy, attributes=dict(request.attributes),
            state=dispatch_pb.AgentDispatchState(created_at=_now_ns()))
        record.dispatches[dispatch.id] = dispatch
        _log.info("dispatch created", kv={"room": room.name, "dispatch": dispatch.id, "agent_name": request.agent_name})
        self._launch_for_dispatch(record, dispatch)
        return self._snapshot(record, dispatch)

    def delete_dispatch(self, room: Room, dispatch_id: str) -> dispatch_pb.AgentDispatch:
        record = self._record(room)
        dispatch = record.dispatches.pop(dispatch_id, None)
        if dispatch is None:
            raise DispatchError("not_found", "dispatch ID not found")
        dispatch.state.deleted_at = _now_ns()
        for entry in list(record.jobs.values()):
            if entry.job.dispatch_id == dispatch_id:
                self._terminate(entry, agent_pb.JobStatus.JS_SUCCESS, "",
                                agent_pb.JobStateReason.JSR_DISPATCH_DELETED)
        _log.info("dispatch deleted", kv={"room": room.name, "dispatch": dispatch_id})
        return self._snapshot(record, dispatch)

    def list_dispatches(self, room: Room, dispatch_id: str = "") -> list[dispatch_pb.AgentDispatch]:
        record = self._record(room)
        return [self._snapshot(record, d) for d in record.dispatches.values() if not dispatch_id or d.id == dispatch_id]

    @staticmethod
    def _snapshot(record: _RoomAgents, dispatch: dispatch_pb.AgentDispatch) -> dispatch_pb.AgentDispatch:
        copy = dispatch_pb.AgentDispatch()
        copy.CopyFrom(dispatch)
        del copy.state.jobs[:]
        copy.state.jobs.extend(e.job for e in record.jobs.values() if e.job.dispatch_id == dispatch.id)
        return copy

    def jobs_running(self) -> int:
        return sum(1 for r in self._rooms.values() for e in r.jobs.values()
                   if e.job.state.status == agent_pb.JobStatus.JS_RUNNING)


def _forget_old_jobs(record: _RoomAgents) -> None:
    ended = [job_id for job_id, entry in record.jobs.items() if entry.ended]
    for job_id in ended[:max(len(ended) - MAX_ENDED_JOBS_PER_ROOM + 1, 0)]:
        del record.jobs[job_id]


def _dependent(participant: Participant) -> bool:
    return participant.grants.participant_kind in _DEPENDENT_KINDS
