"""Agent workers on the in-process server: the /agent protocol, dispatch and job lifetimes.

Workers here are protocol peers written in the test (trio-websocket + livekit-protocol's agent
messages), so each test decides exactly what a worker answers; participants are signal clients;
the Server API is livekit-api's own client. tests/e2e/test_e2e_agents.py runs the real
`livekit-agents` framework and SDK against the same code.
"""

from __future__ import annotations

import contextlib
from typing import AsyncIterator

import attrs
import jwt
import pytest
import trio
import trio.testing
import trio_websocket
from livekit import api
from livekit.protocol import agent as agent_pb, agent_dispatch as dispatch_pb, models

from server_fixtures import API_KEY, API_SECRET, http, join, mint_token, running_server, signal_client
from test_api_room_service import call
from trio_sfu import metrics as m
from trio_sfu.agents.limits import AgentLimits
from trio_sfu.agents.workers import AgentWorker, Answer, WorkerClosed, WorkerKey, WorkerRegistry
from trio_sfu.server import Server

Status = agent_pb.JobStatus


def agent_token(**grants: object) -> str:
    grants.setdefault("agent", True)
    return api.AccessToken(API_KEY, API_SECRET).with_grants(api.VideoGrants(**grants)).to_jwt()  # type: ignore[arg-type]


def set_limits(server: Server, **changes: object) -> AgentLimits:
    """Tighter bounds for a test, before any worker connects."""
    limits = attrs.evolve(server.agent_workers.limits, **changes)
    server.agent_workers.limits = server.agents.limits = limits
    assert server.front.agents is not None
    server.front.agents.limits = limits
    return limits


class Worker:
    """A worker speaking the protocol over a real WebSocket; the test answers for it."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws
        self.worker_id = ""

    async def send(self, **message: object) -> None:
        await self.ws.send_message(agent_pb.WorkerMessage(**message).SerializeToString())

    async def recv(self, kind: str | None = None, timeout: float = 5.0) -> agent_pb.ServerMessage:
        with trio.fail_after(timeout):
            while True:
                message = agent_pb.ServerMessage.FromString(await self.ws.get_message())
                if kind is None or message.WhichOneof("message") == kind:
                    return message

    async def register(self, agent_name: str = "", job_type: int = agent_pb.JobType.JT_ROOM,
                       permissions: models.ParticipantPermission | None = None) -> agent_pb.RegisterWorkerResponse:
        register = agent_pb.RegisterWorkerRequest(type=job_type, agent_name=agent_name, version="test")
        if permissions is not None:
            register.allowed_permissions.CopyFrom(permissions)
        await self.send(register=register)
        response = (await self.recv("register")).register
        self.worker_id = response.worker_id
        return response

    async def accept(self, request: agent_pb.AvailabilityRequest, identity: str = "",
                     attributes: dict[str, str] | None = None) -> agent_pb.JobAssignment:
        await self.send(availability=agent_pb.AvailabilityResponse(
            job_id=request.job.id, available=True, participant_identity=identity, participant_name="Agent",
            participant_attributes=attributes or {}))
        return (await self.recv("assignment")).assignment

    async def expect_closed(self, timeout: float = 5.0) -> trio_websocket.CloseReason:
        with trio.fail_after(timeout):
            with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                while True:
                    await self.ws.get_message()
        return closed.value.reason


@contextlib.asynccontextmanager
async def worker_connection(server: Server, token: str | None = None) -> AsyncIterator[Worker]:
    headers = [(b"authorization", f"Bearer {token or agent_token()}".encode())]
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{server.port}/agent", extra_headers=headers,
                                                 connect_timeout=5, disconnect_timeout=2) as ws:
        yield Worker(ws)


@contextlib.asynccontextmanager
async def registered(server: Server, agent_name: str = "", job_type: int = agent_pb.JobType.JT_ROOM) -> AsyncIterator[Worker]:
    async with worker_connection(server) as worker:
        await worker.register(agent_name, job_type)
        yield worker


async def until(predicate, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


async def list_jobs(server: Server, room: str) -> list[agent_pb.Job]:
    dispatches = await call(server, lambda lk: lk.agent_dispatch.list_dispatch(room_name=room))
    return [job for d in dispatches for job in d.state.jobs]


# ---- the protocol ----------------------------------------------------------------------------


async def test_worker_registers_pings_and_reports_load():
    async with running_server() as server, worker_connection(server) as worker:
        # A ping before registering is answered (LiveKit's registerer answers pings too).
        await worker.send(ping=agent_pb.WorkerPing(timestamp=1234))
        assert (await worker.recv("pong")).pong.last_timestamp == 1234
        response = await worker.register("concierge")
        assert response.worker_id.startswith("AW_") and response.server_info.agent_protocol == 1
        await worker.send(ping=agent_pb.WorkerPing(timestamp=5678))
        pong = (await worker.recv("pong")).pong
        assert pong.last_timestamp == 5678 and pong.timestamp > 0
        await worker.send(update_worker=agent_pb.UpdateWorkerStatus(status=agent_pb.WorkerStatus.WS_FULL, load=0.5))
        registered_worker = server.agent_workers.workers[response.worker_id]
        await until(lambda: registered_worker.load == 0.5)
        assert registered_worker.agent_name == "concierge" and not registered_worker.available
        status, _, body, _ = await http(server.port, "GET", "/metrics",
                                        [("authorization", f"Bearer {mint_token('m', room_list=True)}")])
        text = body.decode()
        assert status == 200 and "trio_sfu_agent_workers 1.0" in text and "trio_sfu_agent_workers_available 0.0" in text
    assert server.metrics.get(m.AGENT_WORKERS_DEREGISTERED) == 1 and not server.agent_workers.workers


async def test_room_job_is_assigned_with_a_token_for_an_agent_participant():
    async with running_server() as server, registered(server) as worker:
        async with signal_client(server, mint_token("human")) as human:
            await join(human)
            request = (await worker.recv("availability")).availability
            job = request.job
            assert job.id.startswith("AJ_") and job.type == agent_pb.JobType.JT_ROOM and job.room.name == "room1"
            assert job.dispatch_id.startswith("AD_") and not request.resuming
            assignment = await worker.accept(request, identity="bot", attributes={"mood": "calm"})
            assert assignment.job.id == job.id and assignment.job.state.status == Status.JS_RUNNING
            assert assignment.job.state.worker_id == worker.worker_id and assignment.url == ""
            claims = jwt.decode(assignment.token, API_SECRET, algorithms=["HS256"])
            assert claims["iss"] == API_KEY and claims["sub"] == "bot" and claims["kind"] == "agent"
            assert claims["attributes"] == {"mood": "calm", "lk.agent_name": ""}
            assert claims["video"]["roomJoin"] and claims["video"]["agent"] and claims["video"]["room"] == "room1"
            # The agent joins with it as a participant of kind AGENT.
            async with signal_client(server, assignment.token) as agent:
                joined = await join(agent)
                assert joined.participant.kind == models.ParticipantInfo.Kind.AGENT
                assert joined.participant.attributes["lk.agent_name"] == ""
                # Agents get no jobs of their own (the worker is offered nothing more).
                await worker.send(update_job=agent_pb.UpdateJobStatus(job_id=job.id, status=Status.JS_SUCCESS))
                await until(lambda: server.metrics.get(m.AGENT_JOBS_SUCCEEDED) == 1)
                jobs = await list_jobs(server, "room1")
                assert [(j.id, j.state.status) for j in jobs] == [(job.id, Status.JS_SUCCESS)]
            assert server.metrics.get(m.AGENT_JOBS_ASSIGNED) == 1


async def test_a_declined_or_unanswered_job_goes_to_another_worker_and_fails_when_none_is_left():
    async with running_server() as server:
        set_limits(server, availability_timeout=0.5)
        async with registered(server) as first, registered(server) as second:
            async with signal_client(server, mint_token("human")) as human:
                await join(human)
                # Whichever worker is asked first declines; the other must be asked next.
                async with trio.open_nursery() as nursery:
                    offers: list[tuple[Worker, agent_pb.AvailabilityRequest]] = []

                    async def watch(worker: Worker) -> None:
                        offers.append((worker, (await worker.recv("availability")).availability))
                        nursery.cancel_scope.cancel()

                    nursery.start_soon(watch, first)
                    nursery.start_soon(watch, second)
                asked, request = offers[0]
                other = second if asked is first else first
                await asked.send(availability=agent_pb.AvailabilityResponse(job_id=request.job.id, available=False))
                retried = (await other.recv("availability")).availability
                assert retried.job.id == request.job.id
                # The second one never answers: after the timeout no worker is left, and the job fails.
                await until(lambda: server.metrics.get(m.AGENT_JOBS_FAILED) == 1)
                (job,) = await list_jobs(server, "room1")
                assert job.state.status == Status.JS_FAILED and job.state.reason == agent_pb.JobStateReason.JSR_NO_CAPACITY
                assert server.metrics.get(m.AGENT_JOB_OFFERS_RETRIED) == 2


async def test_a_fully_loaded_worker_is_never_chosen():
    async with running_server() as server, registered(server) as busy, registered(server) as idle:
        await busy.send(update_worker=agent_pb.UpdateWorkerStatus(status=agent_pb.WorkerStatus.WS_AVAILABLE, load=1.0))
        await until(lambda: server.agent_workers.workers[busy.worker_id].load == 1.0)
        for room in ("r1", "r2", "r3"):
            async with signal_client(server, mint_token("human", room)) as human:
                await join(human)
                request = (await idle.recv("availability")).availability
                assert request.job.room.name == room
                await idle.send(availability=agent_pb.AvailabilityResponse(job_id=request.job.id, terminate=True))
        with trio.move_on_after(0.2):
            await busy.recv("availability")
            pytest.fail("a worker at load 1.0 was offered a job")


async def test_a_gone_workers_job_is_offered_again_as_resuming_unless_its_policy_says_never():
    async with running_server() as server, registered(server, "concierge") as survivor:
        async with worker_connection(server) as doomed:
            await doomed.register("concierge")
            # Make sure the doomed worker is the one chosen: the survivor says it is full.
            await survivor.send(update_worker=agent_pb.UpdateWorkerStatus(status=agent_pb.WorkerStatus.WS_FULL))
            await until(lambda: not server.agent_workers.workers[survivor.worker_id].available)
            await call(server, lambda lk: lk.agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(agent_name="concierge", room="room1")))
            request = (await doomed.recv("availability")).availability
            await doomed.accept(request)
            await survivor.send(update_worker=agent_pb.UpdateWorkerStatus(status=agent_pb.WorkerStatus.WS_AVAILABLE))
            await until(lambda: server.agent_workers.workers[survivor.worker_id].available)
        again = (await survivor.recv("availability")).availability
        assert again.resuming and again.job.id == request.job.id
        assert again.job.state.reason == agent_pb.JobStateReason.JSR_RETRYING
        await survivor.accept(again)
        assert server.metrics.get(m.AGENT_JOBS_REDISPATCHED) == 1

        # With JRP_NEVER the job ends with the worker instead.
        async with worker_connection(server) as doomed:
            await doomed.register("concierge")
            await survivor.send(update_worker=agent_pb.UpdateWorkerStatus(status=agent_pb.WorkerStatus.WS_FULL))
            await until(lambda: not server.agent_workers.workers[survivor.worker_id].available)
            dispatch = await call(server, lambda lk: lk.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(
                agent_name="concierge", room="room1", restart_policy=dispatch_pb.JobRestartPolicy.JRP_NEVER)))
            request = (await doomed.recv("availability")).availability
            await doomed.accept(request)
            await survivor.send(update_worker=agent_pb.UpdateWorkerStatus(status=agent_pb.WorkerStatus.WS_AVAILABLE))
            await until(lambda: server.agent_workers.workers[survivor.worker_id].available)
        jobs = {j.id: j for j in await list_jobs(server, "room1")}
        assert jobs[request.job.id].state.status == Status.JS_FAILED and jobs[request.job.id].state.error == "worker closed"
        assert jobs[request.job.id].dispatch_id == dispatch.id
        assert server.metrics.get(m.AGENT_JOBS_REDISPATCHED) == 1


async def test_jobs_are_terminated_when_the_agent_leaves_the_dispatch_is_deleted_or_the_room_closes():
    async with running_server() as server, registered(server, "concierge") as worker:
        dispatch = await call(server, lambda lk: lk.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name="concierge", room="room1", metadata="m")))
        request = (await worker.recv("availability")).availability
        assert request.job.metadata == "m" and request.job.agent_name == "concierge"
        assignment = await worker.accept(request)
        # The agent joins, then leaves while its worker stays: LiveKit fails the job.
        async with signal_client(server, assignment.token) as agent:
            await join(agent)
        assert (await worker.recv("termination", timeout=10)).termination.job_id == request.job.id
        jobs = await list_jobs(server, "room1")
        assert jobs[0].state.status == Status.JS_FAILED and jobs[0].state.error == "agent worker left the room"

        # Deleting the dispatch terminates its job.
        dispatch = await call(server, lambda lk: lk.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name="concierge", room="room1")))
        request = (await worker.recv("availability")).availability
        await worker.accept(request)
        deleted = await call(server, lambda lk: lk.agent_dispatch.delete_dispatch(dispatch.id, "room1"))
        assert deleted.id == dispatch.id and deleted.state.deleted_at > 0
        assert deleted.state.jobs[0].state.reason == agent_pb.JobStateReason.JSR_DISPATCH_DELETED
        assert (await worker.recv("termination")).termination.job_id == request.job.id

        # Closing the room terminates the rest.
        await call(server, lambda lk: lk.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name="concierge", room="room1")))
        request = (await worker.recv("availability")).availability
        await worker.accept(request)
        await call(server, lambda lk: lk.room.delete_room(api.DeleteRoomRequest(room="room1")))
        assert (await worker.recv("termination")).termination.job_id == request.job.id
        # The dispatcher keeps nothing of a closed room.
        await until(lambda: not server.agents._rooms)


async def test_the_tokens_room_configuration_dispatches_named_agents_instead_of_the_automatic_one():
    async with running_server() as server, registered(server, "concierge") as named, registered(server) as unnamed:
        token = (api.AccessToken(API_KEY, API_SECRET).with_identity("human")
                 .with_grants(api.VideoGrants(room_join=True, room="room1"))
                 .with_room_config(api.RoomConfiguration(agents=[api.RoomAgentDispatch(
                     agent_name="concierge", metadata="from-token")]))).to_jwt()
        async with signal_client(server, token) as human:
            await join(human)
            request = (await named.recv("availability")).availability
            assert request.job.agent_name == "concierge" and request.job.metadata == "from-token"
            # A room that names its agents has no automatic dispatch.
            with trio.move_on_after(0.2):
                await unnamed.recv("availability")
                pytest.fail("the automatic dispatch ran in a room that named its agents")
        # A room created without a room configuration gets the automatic dispatch.
        async with signal_client(server, mint_token("human", "room2")) as human:
            await join(human)
            assert (await unnamed.recv("availability")).availability.job.room.name == "room2"


async def test_participant_and_publisher_jobs_follow_participants_but_never_agents():
    async with running_server() as server, registered(server, job_type=agent_pb.JobType.JT_PARTICIPANT) as worker:
        async with signal_client(server, mint_token("alice")) as alice:
            await join(alice)
            request = (await worker.recv("availability")).availability
            assert request.job.type == agent_pb.JobType.JT_PARTICIPANT and request.job.participant.identity == "alice"
            assignment = await worker.accept(request)
            async with signal_client(server, assignment.token) as agent:
                await join(agent)
                async with signal_client(server, mint_token("bob")) as bob:
                    await join(bob)
                    # The next offer is for bob: the agent's join launched nothing.
                    request = (await worker.recv("availability")).availability
                    assert request.job.participant.identity == "bob"


# ---- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "not-a-jwt", "room-join-only"])
async def test_connections_without_the_agent_grant_are_refused(token):
    async with running_server() as server:
        headers = []
        if token == "room-join-only":
            headers = [("authorization", f"Bearer {mint_token('intruder')}")]
        elif token is not None:
            headers = [("authorization", f"Bearer {token}")]
        with pytest.raises(trio_websocket.HandshakeError) as refused:
            async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{server.port}/agent",
                                                         extra_headers=[(k.encode(), v.encode()) for k, v in headers]):
                pass
        assert refused.value.status_code == 401  # type: ignore[attr-defined]
        assert server.metrics.get(m.AGENT_AUTH_REFUSED) == 1 and not server.agent_workers.workers
        # A plain GET is not a worker: 404, as LiveKit answers.
        status, _, _, _ = await http(server.port, "GET", "/agent", [("authorization", f"Bearer {agent_token()}")])
        assert status == 404


async def send_raw(worker: Worker, data: bytes | str) -> None:
    await worker.ws.send_message(data)


@pytest.mark.parametrize("case, code", [
    ("garbage", 1007),
    ("text", 1003),
    ("empty", 1007),
    ("before_register", 1008),
    ("register_twice", 1008),
    ("unknown_job_type", 1007),
    ("oversize", 1009),
    ("flood", 1008),
])
async def test_a_misbehaving_worker_is_closed_alone(case, code):
    async with running_server() as server:
        set_limits(server, message_rate=attrs.evolve(server.agent_workers.limits.message_rate, burst=20, per_second=1))
        async with registered(server) as good, worker_connection(server) as bad:
            if case == "garbage":
                await bad.register()
                await send_raw(bad, b"\xff\xff\xff\xff garbage")
            elif case == "text":
                await bad.register()
                await send_raw(bad, "hello")
            elif case == "empty":
                await send_raw(bad, b"")
            elif case == "before_register":
                await bad.send(update_worker=agent_pb.UpdateWorkerStatus(load=0.1))
            elif case == "register_twice":
                await bad.register()
                await bad.send(register=agent_pb.RegisterWorkerRequest())
            elif case == "unknown_job_type":
                await bad.send(register=agent_pb.RegisterWorkerRequest(type=99))
            elif case == "oversize":
                await bad.register()
                await send_raw(bad, b"\x00" * (server.agent_workers.limits.max_message_size + 1))
            elif case == "flood":
                await bad.register()
                for _ in range(40):
                    await bad.send(ping=agent_pb.WorkerPing(timestamp=1))
            reason = await bad.expect_closed()
            assert reason.code == code, reason
            # The other worker still works: it gets the next room's job.
            async with signal_client(server, mint_token("human")) as human:
                await join(human)
                request = (await good.recv("availability")).availability
                await good.accept(request)
            assert list(server.agent_workers.workers) == [good.worker_id]


async def test_registration_is_bounded_in_time_and_in_number():
    async with running_server() as server:
        set_limits(server, register_timeout=0.3, max_workers=1)
        async with worker_connection(server) as slow:
            assert (await slow.expect_closed()).code == 1008
        async with registered(server), worker_connection(server) as extra:
            await extra.send(register=agent_pb.RegisterWorkerRequest())
            assert (await extra.expect_closed()).code == 1013
        assert server.metrics.get(m.AGENT_WORKERS_REFUSED) == 1


async def test_dispatch_service_needs_room_admin_and_a_known_dispatch():
    async with running_server() as server:
        # A token without roomAdmin for the room: LiveKit's answer is unauthenticated.
        for token in (mint_token("x", "room1"), mint_token("x", "other", room_admin=True)):
            status, _, body, _ = await http(
                server.port, "POST", "/twirp/livekit.AgentDispatchService/CreateDispatch",
                [("authorization", f"Bearer {token}"), ("content-type", "application/json")],
                b'{"agentName": "a", "room": "room1"}')
            assert status == 401 and b"unauthenticated" in body, body
        assert "room1" not in server.registry.rooms
        await call(server, lambda lk: lk.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name="a", room="room1")))
        with pytest.raises(api.TwirpError) as missing:
            await call(server, lambda lk: lk.agent_dispatch.delete_dispatch("AD_nope", "room1"))
        assert missing.value.code == "not_found"
        with pytest.raises(api.TwirpError) as no_room:
            await call(server, lambda lk: lk.agent_dispatch.list_dispatch(room_name="nowhere"))
        assert no_room.value.code == "not_found"


async def test_a_room_holds_a_bounded_number_of_dispatches(monkeypatch):
    from trio_sfu.agents import dispatcher

    monkeypatch.setattr(dispatcher, "MAX_DISPATCHES_PER_ROOM", 3)
    async with running_server() as server:
        # The room's automatic dispatch and two more fill it.
        for name in ("a", "b"):
            await call(server, lambda lk: lk.agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(agent_name=name, room="room1")))
        with pytest.raises(api.TwirpError) as full:
            await call(server, lambda lk: lk.agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(agent_name="c", room="room1")))
        assert full.value.code == "resource_exhausted"
        assert len(await call(server, lambda lk: lk.agent_dispatch.list_dispatch(room_name="room1"))) == 3


async def test_job_outcomes_are_webhooks():
    from test_webhooks import receiver, validate, webhook_config

    async with receiver() as rec:
        async with running_server(webhook_config(rec.url)) as server, registered(server) as worker:
            async with signal_client(server, mint_token("human")) as human:
                await join(human)
                request = (await worker.recv("availability")).availability
                await worker.accept(request)
                await worker.send(update_job=agent_pb.UpdateJobStatus(job_id=request.job.id, status=Status.JS_FAILED,
                                                                      error="the agent crashed"))
                await rec.wait_for(4)  # room_started, participant_joined, and the job's two
        events = [validate(r) for r in rec.received]
    jobs = [e for e in events if e.event.startswith("agent_job_")]
    assert [e.event for e in jobs] == ["agent_job_started", "agent_job_ended"], [e.event for e in events]
    assert all(e.job.id == request.job.id and e.room.name == "room1" for e in jobs)
    assert jobs[0].job.state.status == Status.JS_RUNNING and jobs[0].job.state.worker_id == worker.worker_id
    assert jobs[1].job.state.status == Status.JS_FAILED and jobs[1].job.state.error == "the agent crashed"


async def test_create_room_with_agents_dispatches_them():
    async with running_server() as server, registered(server, "concierge") as worker:
        await call(server, lambda lk: lk.room.create_room(api.CreateRoomRequest(
            name="booked", agents=[api.RoomAgentDispatch(agent_name="concierge", metadata="booked")])))
        request = (await worker.recv("availability")).availability
        assert request.job.room.name == "booked" and request.job.metadata == "booked"


@pytest.mark.parametrize("room_config", [
    {"agents": "concierge"},
    {"agents": [{"agentName": 5}]},
    {"agents": [{"agentName": "a", "restartPolicy": []}]},
    {"agents": [[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]},
])
def test_a_room_configuration_that_does_not_parse_asks_for_no_agents(room_config):
    from trio_sfu.signal.grants import requested_agents

    assert requested_agents(room_config) == ()
    assert [a.agent_name for a in requested_agents({"agents": [{"agentName": "a"}, {"agent_name": "b"}]})] == ["a", "b"]


async def test_a_worker_in_a_namespace_gets_the_rooms_jobs_in_its_namespace():
    async with running_server() as server, worker_connection(server) as worker:
        await worker.send(register=agent_pb.RegisterWorkerRequest(type=agent_pb.JobType.JT_ROOM, namespace="ns"))
        await worker.recv("register")
        async with signal_client(server, mint_token("human")) as human:
            await join(human)
            request = (await worker.recv("availability")).availability
            assert request.job.namespace == "ns"


# ---- the worker record's own bounds ------------------------------------------------------------


def _worker(limits: AgentLimits, name: str = "") -> AgentWorker:
    return AgentWorker(f"AW_{name or 'x'}", API_KEY, agent_pb.RegisterWorkerRequest(agent_name=name), limits)


async def test_a_worker_that_does_not_read_is_closed_not_waited_on():
    worker = _worker(AgentLimits(outbox_size=2))
    worker.send(agent_pb.ServerMessage(pong=agent_pb.WorkerPong()))
    worker.send(agent_pb.ServerMessage(pong=agent_pb.WorkerPong()))
    with pytest.raises(WorkerClosed):
        worker.send(agent_pb.ServerMessage(pong=agent_pb.WorkerPong()))
    assert worker.closed.is_set() and "outbox full" in worker.close_reason


async def test_open_questions_to_one_worker_are_bounded():
    worker = _worker(AgentLimits(max_pending_per_worker=1))
    answers: list[Answer] = []

    async def offer(job_id: str) -> None:
        answer, _ = await worker.offer(agent_pb.Job(id=job_id), resuming=False, timeout=5)
        answers.append(answer)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(offer, "AJ_1")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(offer, "AJ_2")
        await trio.testing.wait_all_tasks_blocked()
        assert answers == [Answer.BUSY]
        assert worker.availability_answered(agent_pb.AvailabilityResponse(job_id="AJ_1", available=True))
        assert not worker.availability_answered(agent_pb.AvailabilityResponse(job_id="AJ_9", available=True))
    assert answers == [Answer.BUSY, Answer.ACCEPTED]


def test_the_choice_of_worker_is_weighted_by_spare_capacity():
    import random

    registry = WorkerRegistry(AgentLimits(), m.Metrics(), rng=random.Random(7))
    idle, loaded, full = (_worker(registry.limits, n) for n in ("idle", "loaded", "full"))
    for worker, load in ((idle, 0.0), (loaded, 0.75), (full, 1.0)):
        worker.agent_name = ""
        worker.update_status(agent_pb.UpdateWorkerStatus(load=load))
        registry.add(worker)
    picks = [registry.choose(WorkerKey("", "", agent_pb.JobType.JT_ROOM)) for _ in range(2000)]
    share = picks.count(idle) / len(picks)
    assert 0.75 < share < 0.85, share  # spare 1.0 against 0.25: 80 %
    assert full not in picks
    assert registry.choose(WorkerKey("", "", agent_pb.JobType.JT_ROOM), tried=[idle, loaded]) is None


async def test_a_room_keeps_a_bounded_number_of_ended_jobs(monkeypatch):
    from trio_sfu.agents import dispatcher

    monkeypatch.setattr(dispatcher, "MAX_ENDED_JOBS_PER_ROOM", 2)
    async with running_server() as server, registered(server, job_type=agent_pb.JobType.JT_PARTICIPANT) as worker:
        async with contextlib.AsyncExitStack() as stack:
            seen = []
            for i in range(4):
                participant = await stack.enter_async_context(signal_client(server, mint_token(f"p{i}")))
                await join(participant)
                request = (await worker.recv("availability")).availability
                seen.append(request.job.id)
                # The worker handles it without an agent: the job ends at once, as a success.
                await worker.send(availability=agent_pb.AvailabilityResponse(job_id=request.job.id, terminate=True))
                await until(lambda: server.metrics.get(m.AGENT_JOBS_SUCCEEDED) == i + 1)
            jobs = await list_jobs(server, "room1")
            assert [j.id for j in jobs] == seen[-2:]
