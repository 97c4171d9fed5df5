"""The `/agent` WebSocket: one registered worker per connection, LiveKit's worker protocol.

The HTTP front checks the token (an API-key token with the `agent` grant) before the upgrade;
here the connection must register within `register_timeout` (pings are answered meanwhile),
then its messages are handled until it closes: status updates, availability answers, job
updates, pings. Every message is bounded in size (a larger frame closes with 1009) and in
rate (a token bucket; past it the worker is closed with 1008). A message that is not a
binary protobuf `WorkerMessage`, or not one this point of the protocol allows (a second
register, an empty message), closes that worker alone, with 1003 or 1007 and the reason, and
is counted. When the connection ends, its jobs go back to the dispatcher (`worker_gone`).

Tasks, per connection: trio-websocket's reader, the writer (the only sender: it drains the
worker's bounded outbox), and the reader loop in `serve`'s own task; closing the worker ends
all three.
"""

from __future__ import annotations

import time

import trio
import trio_websocket
from google.protobuf.message import DecodeError
from livekit.protocol import agent as agent_pb, models

from trio_sfu import metrics as m
from trio_sfu.agents.dispatcher import AgentDispatcher
from trio_sfu.agents.limits import AgentLimits
from trio_sfu.agents.workers import AgentWorker, WorkerClosed, WorkerRegistry, new_id
from trio_sfu.log import get_logger
from trio_sfu.signal.rate_limit import TokenBucket
from trio_sfu.signal.server_info import server_info

#: LiveKit's agent protocol version (ServerInfo.agent_protocol).
AGENT_PROTOCOL = 1
CLOSE_GRACE = 1.0
_JOB_TYPES = set(agent_pb.JobType.values())

_log = get_logger("trio_sfu.agents.endpoint")


class ProtocolViolation(Exception):
    """The worker broke the protocol: it is closed with `code` and the message as reason."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class AgentEndpoint:
    """Serves `/agent` connections for one server."""

    def __init__(self, workers: WorkerRegistry, dispatcher: AgentDispatcher, metrics: m.Metrics,
                 limits: AgentLimits | None = None) -> None:
        self.workers = workers
        self.dispatcher = dispatcher
        self.metrics = metrics
        self.limits = limits or workers.limits

    async def serve(self, stream: trio.abc.Stream, api_key: str, client_ip: str | None = None) -> None:
        """Run one worker connection; `stream` holds the upgrade request, its token checked."""
        async with trio.open_nursery() as nursery:
            try:
                request = await trio_websocket.wrap_server_stream(
                    nursery, stream, message_queue_size=4, max_message_size=self.limits.max_message_size)
                ws = await request.accept()
            except (trio_websocket.ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
                self.metrics.inc(m.AGENT_HANDSHAKE_FAILED)
                nursery.cancel_scope.cancel()
                return
            log = _log.bind(client=client_ip or "")
            bucket = TokenBucket.full(self.limits.message_rate, trio.current_time())
            worker: AgentWorker | None = None
            code, reason = 1000, "worker closed"
            try:
                worker = await self._register(ws, bucket, api_key)
                if worker is None:
                    code, reason = 1008, "no registration in time"
                    return
                self.workers.add(worker)
                worker.send(agent_pb.ServerMessage(register=agent_pb.RegisterWorkerResponse(
                    worker_id=worker.id, server_info=_server_info())))
                nursery.start_soon(self._writer, ws, worker, nursery.cancel_scope)
                await self._read(ws, worker, bucket)
            except ProtocolViolation as exc:
                self.metrics.inc(m.AGENT_PROTOCOL_VIOLATIONS)
                log.warning("worker broke the protocol, closing it", kv={
                    "worker": worker.id if worker else "", "error": str(exc)})
                code, reason = exc.code, str(exc)
            except _TooLarge:
                self.metrics.inc(m.AGENT_MESSAGE_TOO_LARGE)
                log.warning("worker message too large, closed", kv={"worker": worker.id if worker else "",
                                                                    "limit": self.limits.max_message_size})
                code, reason = 1009, "message too large"
            except (trio_websocket.ConnectionClosed, WorkerClosed):
                pass
            finally:
                if worker is not None and worker.closed.is_set() and code == 1000:
                    # Closed by the server (too slow to read, its key gone): say why.
                    code, reason = 1008, worker.close_reason
                if worker is not None:
                    worker.close(worker.close_reason or "connection closed")
                    self.workers.remove(worker)
                    self.dispatcher.worker_gone(worker)
                with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_GRACE):
                    try:
                        await ws.aclose(code, reason[:120])
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
                nursery.cancel_scope.cancel()

    async def _next(self, ws: trio_websocket.WebSocketConnection, bucket: TokenBucket) -> agent_pb.WorkerMessage:
        try:
            data = await ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            if exc.reason is not None and exc.reason.code == 1009:
                raise _TooLarge() from None
            raise
        if not bucket.take(trio.current_time()):
            self.metrics.inc(m.AGENT_RATE_LIMITED)
            raise ProtocolViolation(1008, "too many messages")
        if isinstance(data, str):
            raise ProtocolViolation(1003, "text frames not supported: send binary protobuf WorkerMessage")
        message = agent_pb.WorkerMessage()
        try:
            message.ParseFromString(data)
        except (DecodeError, RuntimeError, ValueError) as exc:
            raise ProtocolViolation(1007, f"malformed WorkerMessage: {exc.__class__.__name__}") from None
        if message.WhichOneof("message") is None:
            raise ProtocolViolation(1007, "empty or unknown WorkerMessage")
        return message

    async def _register(self, ws: trio_websocket.WebSocketConnection, bucket: TokenBucket,
                        api_key: str) -> AgentWorker | None:
        with trio.move_on_after(self.limits.register_timeout):
            while True:
                message = await self._next(ws, bucket)
                kind = message.WhichOneof("message")
                if kind == "ping":
                    await ws.send_message(_pong(message.ping).SerializeToString())
                    continue
                if kind != "register":
                    raise ProtocolViolation(1008, f"{kind} before register")
                register = message.register
                if register.type not in _JOB_TYPES:
                    raise ProtocolViolation(1007, "unknown job type")
                if len(register.agent_name) > 256 or len(register.namespace) > 256 or len(register.version) > 128:
                    raise ProtocolViolation(1007, "register fields too long")
                if self.workers.full:
                    self.metrics.inc(m.AGENT_WORKERS_REFUSED)
                    raise ProtocolViolation(1013, "too many workers on this server")
                return AgentWorker(new_id("AW_"), api_key, register, self.limits)
        return None

    async def _read(self, ws: trio_websocket.WebSocketConnection, worker: AgentWorker, bucket: TokenBucket) -> None:
        while not worker.closed.is_set():
            message = await self._next(ws, bucket)
            kind = message.WhichOneof("message")
            if kind == "ping":
                worker.send(_pong(message.ping))
            elif kind == "update_worker":
                worker.update_status(message.update_worker)
            elif kind == "availability":
                if not worker.availability_answered(message.availability):
                    # LiveKit logs an answer to no open question and carries on.
                    self.metrics.inc(m.AGENT_UNKNOWN_AVAILABILITY)
            elif kind == "update_job":
                self.dispatcher.job_updated(worker, message.update_job)
            elif kind in ("migrate_job", "simulate_job"):
                # LiveKit's open-source server does nothing with either.
                self.metrics.inc(m.AGENT_IGNORED_MESSAGES)
            elif kind == "register":
                raise ProtocolViolation(1008, "already registered")
            else:
                raise ProtocolViolation(1007, f"unexpected {kind}")

    async def _writer(self, ws: trio_websocket.WebSocketConnection, worker: AgentWorker,
                      scope: trio.CancelScope) -> None:
        try:
            async for message in worker.outbox:
                await ws.send_message(message.SerializeToString())
        except (trio_websocket.ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            # The outbox closes when the worker is closed (misbehaving or too slow): end the connection.
            if not worker.closed.is_set():
                worker.close("connection lost")
            scope.cancel()


class _TooLarge(Exception):
    pass


def _pong(ping: agent_pb.WorkerPing) -> agent_pb.ServerMessage:
    return agent_pb.ServerMessage(pong=agent_pb.WorkerPong(last_timestamp=ping.timestamp,
                                                           timestamp=int(time.time() * 1000)))


def _server_info() -> models.ServerInfo:
    info = server_info()
    info.agent_protocol = AGENT_PROTOCOL
    return info
