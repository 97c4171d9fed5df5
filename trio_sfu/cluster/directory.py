"""The node directory: which nodes of the cluster are alive, and which rooms and participants each
one serves, kept in Redis so that every node (and the Twirp API on any node) sees the same.

One `NodeDirectory` per node. Its `run` registers the node and then heartbeats: every
`heartbeat_interval` it rewrites its own record with fresh stats and reads everyone else's.
A record older than `expiry` belongs to a dead node; the first survivor to notice removes it
and everything it registered, in one atomic script. Room membership is written as it changes
(`participant_joined`, `participant_left`, `room_opened`, `room_closed`) and kept in a local
mirror too: the mirror is this node's truth, and whenever Redis has lost it (Redis restarted
empty, a write failed during an outage, a survivor wrongly expired this node after a stall)
the next heartbeat writes it back whole.

Keys (all readable with `redis-cli`; node ids, room names and identities are used verbatim):

    nodes                      hash   node id -> proto.cluster_pb2.Node (protobuf bytes),
                                      rewritten every heartbeat (stats.updated_at_ms)
    rooms                      set    names of rooms some node serves (for ListRooms)
    room_nodes:<room>          hash   node id -> number of the room's participants on that
                                      node (0: the node holds the room open, nobody in it yet)
    room_participants:<room>   hash   identity -> {"node_id": ..., "sid": ...} (JSON)
    node_rooms:<node id>       set    the rooms a node has entries in (what to clean if it dies)

    redis-cli hgetall room_participants:standup
    redis-cli --no-raw hgetall nodes          # the protobuf bytes, escaped

Readers trust no entry: a `nodes` record that does not parse, whose id differs from its field
name, or whose updated_at_ms lies in the future beyond `max_clock_skew` is ignored, logged
and counted; memberships of nodes not alive in `nodes` are ignored. Timestamps are wall-clock
milliseconds, because they are compared across machines (the nodes' clocks are assumed to be
NTP-synchronised well within `max_clock_skew`); the heartbeat's pace is Trio's clock.

Failure model: every call that needs Redis is bounded (the config's dial + read + write
timeouts) and fails with `DirectoryUnavailable` — nothing else — when Redis cannot answer.
While the heartbeat is failing (an outage) calls fail at once instead of waiting out the
timeout. `run` never raises for Redis errors: it keeps retrying each interval, counts each
failed attempt, logs the outage once when it starts and once when it ends.

The scripts touch keys they compute (`room_nodes:<room>` ...), which a standalone Redis allows
and Redis Cluster does not — one reason the config refuses Cluster for now.
"""

from __future__ import annotations

import enum
import json
import time
from typing import Any, Awaitable, Callable, Mapping, TypeVar

import attrs
import coredis
import coredis.exceptions
import trio
from google.protobuf.message import DecodeError

from proto import cluster_pb2
from trio_sfu.cluster.errors import DirectoryUnavailable
from trio_sfu.config import RedisConfig
from trio_sfu.log import get_logger
from trio_sfu.metrics import Metrics

_log = get_logger("trio_sfu.cluster.directory")

T = TypeVar("T")

NODES_KEY = "nodes"
ROOMS_KEY = "rooms"


def room_nodes_key(room: str) -> str:
    return f"room_nodes:{room}"


def room_participants_key(room: str) -> str:
    return f"room_participants:{room}"


def node_rooms_key(node_id: str) -> str:
    return f"node_rooms:{node_id}"


DEFAULT_HEARTBEAT_INTERVAL = 2.0
# A node is dead after this many missed heartbeats.
DEFAULT_EXPIRY_INTERVALS = 3
DEFAULT_MAX_CLOCK_SKEW = 5.0

# Counters (trio_sfu.metrics.Metrics), named here as the media layer names its own.
REDIS_ERRORS = "cluster_directory_redis_errors_total"  # each failed heartbeat attempt
OUTAGES = "cluster_directory_outages_total"
CALLS_UNAVAILABLE = "cluster_directory_calls_unavailable_total"
RESYNCS = "cluster_directory_resyncs_total"  # this node's entries written back whole
NODES_EXPIRED = "cluster_directory_nodes_expired_total"  # dead nodes this node cleaned up
ENTRY_MALFORMED = "cluster_directory_entry_malformed_total"
ENTRY_ID_MISMATCH = "cluster_directory_entry_id_mismatch_total"
ENTRY_FROM_FUTURE = "cluster_directory_entry_from_future_total"


class NodeState(enum.IntEnum):
    """`proto.cluster_pb2.NodeState`, as an enum of ours."""

    STARTING_UP = cluster_pb2.STARTING_UP
    SERVING = cluster_pb2.SERVING
    SHUTTING_DOWN = cluster_pb2.SHUTTING_DOWN


@attrs.frozen
class NodeStats:
    """The load a node reports with each heartbeat."""

    num_rooms: int = 0
    num_clients: int = 0
    num_tracks_in: int = 0
    num_tracks_out: int = 0
    cpu_load: float = 0.0
    num_cpus: int = 0


@attrs.frozen
class NodeAddress:
    """What does not change while a node runs: who it is and where it is reached."""

    node_id: str
    ip: str = ""
    region: str = ""
    signal_url: str = ""
    relay_host: str = ""
    relay_port: int = 0


@attrs.frozen
class ParticipantLocation:
    """Where a participant of a room is served."""

    node_id: str
    sid: str

    def encode(self) -> str:
        # Deterministic bytes: a compare-and-delete matches exactly what was written.
        return json.dumps({"node_id": self.node_id, "sid": self.sid}, separators=(",", ":"))

    @classmethod
    def decode(cls, raw: bytes) -> ParticipantLocation | None:
        try:
            value = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(value, dict):
            return None
        node_id, sid = value.get("node_id"), value.get("sid")
        if not isinstance(node_id, str) or not isinstance(sid, str) or not node_id:
            return None
        return cls(node_id, sid)


class EntryProblem(enum.Enum):
    MALFORMED = ENTRY_MALFORMED
    ID_MISMATCH = ENTRY_ID_MISMATCH
    FROM_FUTURE = ENTRY_FROM_FUTURE


@attrs.frozen
class NodesView:
    """One reading of the `nodes` hash, judged at `read_at_ms`."""

    live: dict[str, cluster_pb2.Node]
    expired: dict[str, bytes]  # node id -> the exact record judged expired
    rejected: dict[tuple[bytes, bytes], EntryProblem]  # (field, value) -> why it was ignored


def judge_nodes(raw: Mapping[bytes, bytes], now_ms: int, expiry_ms: int, max_skew_ms: int) -> NodesView:
    """Sort the raw `nodes` hash into live records, expired ones and entries to ignore."""
    live: dict[str, cluster_pb2.Node] = {}
    expired: dict[str, bytes] = {}
    rejected: dict[tuple[bytes, bytes], EntryProblem] = {}
    for field, value in raw.items():
        try:
            node_id = field.decode()
            node = cluster_pb2.Node.FromString(value)
        except (DecodeError, UnicodeDecodeError):
            rejected[(field, value)] = EntryProblem.MALFORMED
            continue
        if node.id != node_id or not node_id:
            rejected[(field, value)] = EntryProblem.ID_MISMATCH
            continue
        updated = node.stats.updated_at_ms
        if updated > now_ms + max_skew_ms:
            rejected[(field, value)] = EntryProblem.FROM_FUTURE
        elif now_ms - updated > expiry_ms:
            expired[node_id] = value
        else:
            live[node_id] = node
    return NodesView(live, expired, rejected)


# Delete a hash field only if it still holds the value the caller wrote (a participant who
# rejoined elsewhere has been overwritten by that node, and stays).
_COMPARE_HDEL = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""

# Lua: `node` no longer serves `room` -- its count, its participants' entries and the room in its
# own set go; the room itself goes when no node serves it. Shared by the two scripts below.
_FORGET_NODE_IN_ROOM = """
local function forget_node_in_room(node, room)
  redis.call('HDEL', 'room_nodes:' .. room, node)
  redis.call('SREM', 'node_rooms:' .. node, room)
  local entries = redis.call('HGETALL', 'room_participants:' .. room)
  for i = 1, #entries, 2 do
    local ok, where = pcall(cjson.decode, entries[i + 1])
    if ok and type(where) == 'table' and where.node_id == node then
      redis.call('HDEL', 'room_participants:' .. room, entries[i])
    end
  end
  if redis.call('HLEN', 'room_nodes:' .. room) == 0 then
    redis.call('SREM', 'rooms', room)
    redis.call('DEL', 'room_participants:' .. room)
  end
end
"""

# ARGV: node id, room. This node no longer serves the room; the room goes when nobody does.
_LEAVE_ROOM = _FORGET_NODE_IN_ROOM + """
forget_node_in_room(ARGV[1], ARGV[2])
return 1
"""

# ARGV: node id, and the record the caller judged expired ('' = remove unconditionally, for a
# node purging its own entries before writing them back). With a record, nothing happens
# unless `nodes` still holds exactly it: a node that heartbeated since is alive.
_PURGE_NODE = _FORGET_NODE_IN_ROOM + """
local node, expected = ARGV[1], ARGV[2]
if expected ~= '' then
  if redis.call('HGET', 'nodes', node) ~= expected then return -1 end
  redis.call('HDEL', 'nodes', node)
end
local rooms = redis.call('SMEMBERS', 'node_rooms:' .. node)
for _, room in ipairs(rooms) do
  forget_node_in_room(node, room)
end
redis.call('DEL', 'node_rooms:' .. node)
return #rooms
"""


def _is_redis_failure(exc: BaseException) -> bool:
    """An error that means "Redis did not answer properly" (as opposed to a bug of ours)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_redis_failure(inner) for inner in exc.exceptions)
    return isinstance(exc, (coredis.exceptions.RedisError, OSError, TimeoutError, trio.TooSlowError, EOFError))


class NodeDirectory:
    """This node's entry in the cluster's Redis, the live view of the others, and room
    membership. See the module docstring for keys, trust and failures."""

    def __init__(
        self,
        config: RedisConfig,
        node: NodeAddress,
        stats: Callable[[], NodeStats],
        *,
        metrics: Metrics | None = None,
        heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
        expiry: float | None = None,
        max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not config.address:
            raise ValueError("the node directory needs redis.address")
        if not node.node_id:
            raise ValueError("a node needs an id")
        self.config = config
        self.node = node
        self.metrics = metrics if metrics is not None else Metrics()
        self.heartbeat_interval = heartbeat_interval
        self.expiry = expiry if expiry is not None else DEFAULT_EXPIRY_INTERVALS * heartbeat_interval
        self.max_clock_skew = max_clock_skew
        self._stats = stats
        self._wall_clock = wall_clock
        self._host, self._port = config.host_port()
        # Worst case of one call: connect, send, receive.
        self.call_timeout = (config.dial_timeout + config.read_timeout + config.write_timeout) / 1000
        self._state = NodeState.STARTING_UP
        self._started_at_ms = 0
        self._client: coredis.Redis[bytes] | None = None
        # The local mirror: room -> identity -> sid for this node's participants; a room is a
        # key while this node holds it open. What resyncs write back.
        self._mirror: dict[str, dict[str, str]] = {}
        # Set when Redis may differ from the mirror (a membership write failed).
        self._dirty = False
        # One writer at a time, so a write always carries the mirror as it is when sent.
        self._write_lock = trio.Lock()
        self._view: dict[str, cluster_pb2.Node] = {}
        self._rebuilding_until_ms = 0  # see _heartbeat: Redis came back empty
        self._synced = False
        self._outage_since: float | None = None
        self._outage_attempts = 0
        self._stopped = False
        self._reported: set[tuple[bytes, bytes]] = set()
        self._heartbeat_done = trio.Event()
        self._in_heartbeat = False
        self.heartbeats = 0  # successful ones

    # -- lifetime -------------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        return self.node.node_id

    @property
    def state(self) -> NodeState:
        return self._state

    @property
    def available(self) -> bool:
        """The last heartbeat reached Redis."""
        return self._synced and self._outage_since is None

    def _new_client(self) -> coredis.Redis[bytes]:
        c = self.config
        return coredis.Redis(
            self._host,
            self._port,
            c.db,
            username=c.username or None,
            password=c.password or None,
            ssl=c.use_tls,
            connect_timeout=c.dial_timeout / 1000,
            stream_timeout=max(c.read_timeout, c.write_timeout) / 1000,
            max_connections=c.pool_size or None,
            client_name=f"trio-sfu:{self.node_id}",
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Register and heartbeat until cancelled (or `deregister`). Reports started at once,
        whether or not Redis answers: a node serves locally while Redis is away."""
        self._started_at_ms = self._now_ms()
        if self._state is NodeState.STARTING_UP:
            self._state = NodeState.SERVING
        started = False
        try:
            while True:
                try:
                    async with self._new_client() as client:
                        self._client = client
                        if not started:
                            task_status.started()
                            started = True
                        await self._heartbeat_loop()
                except Exception as exc:
                    # The client's own lifetime ended in a Redis error (its connection tasks
                    # live in its task group): count it as a failed attempt, build a new one.
                    if not _is_redis_failure(exc):
                        raise
                    self._client = None
                    self._note_failure(exc)
                    if not started:
                        task_status.started()
                        started = True
                    await trio.sleep(self.heartbeat_interval)
        finally:
            self._client = None

    async def _heartbeat_loop(self) -> None:
        while True:
            if not self._stopped:
                try:
                    with trio.fail_after(self.call_timeout * 3):
                        await self._heartbeat()
                except Exception as exc:
                    if not _is_redis_failure(exc):
                        raise
                    self._note_failure(exc)
                else:
                    self._note_success()
            await trio.sleep(self.heartbeat_interval)

    async def next_heartbeat(self) -> None:
        """Wait until a heartbeat that starts after this call has reached Redis (during an
        outage, until Redis is back; after `deregister`, forever: bound it)."""
        # One already under way may have read the cluster before the caller's change.
        target = self.heartbeats + 1 + (1 if self._in_heartbeat else 0)
        while self.heartbeats < target:
            await self._heartbeat_done.wait()

    def _now_ms(self) -> int:
        return int(self._wall_clock() * 1000)

    def _record(self) -> bytes:
        stats = self._stats()
        node = cluster_pb2.Node(
            id=self.node.node_id,
            ip=self.node.ip,
            region=self.node.region,
            state=int(self._state),
            signal_url=self.node.signal_url,
            relay_host=self.node.relay_host,
            relay_port=self.node.relay_port,
            stats=cluster_pb2.NodeStats(
                started_at_ms=self._started_at_ms,
                updated_at_ms=self._now_ms(),
                num_rooms=stats.num_rooms,
                num_clients=stats.num_clients,
                num_tracks_in=stats.num_tracks_in,
                num_tracks_out=stats.num_tracks_out,
                cpu_load=stats.cpu_load,
                num_cpus=stats.num_cpus,
            ),
        )
        return node.SerializeToString()

    async def _heartbeat(self) -> None:
        client = self._require_client()
        self._in_heartbeat = True
        try:
            async with self._write_lock:
                added = await client.hset(NODES_KEY, {self.node_id: self._record()})
                # A new field: our entry was gone (Redis restarted empty, or a survivor judged
                # us dead during a stall) and our memberships with it.
                if added or self._dirty:
                    await self._resync(client, reason="entry missing" if added else "writes failed")
                if added and self.heartbeats:
                    # Redis lost everything (or judged us dead): the others will write their
                    # records back within a heartbeat. Until then a node missing from the hash
                    # is not gone; dropping it would tear down live relay links.
                    self._rebuilding_until_ms = self._now_ms() + int(self.expiry * 1000)
            raw = await client.hgetall(NODES_KEY)
            now_ms = self._now_ms()
            view = judge_nodes(raw, now_ms, int(self.expiry * 1000), int(self.max_clock_skew * 1000))
            self._report_rejected(view.rejected)
            for node_id, record in view.expired.items():
                if node_id != self.node_id:
                    await self._expire(client, node_id, record)
            live = view.live
            if now_ms < self._rebuilding_until_ms:
                # Carried records still age out in `live_nodes` by their own timestamps.
                present = set(raw)
                for node_id, node in self._view.items():
                    if node_id.encode() not in present:
                        live.setdefault(node_id, node)
            self._view = live
            self._synced = True
        finally:
            self._in_heartbeat = False

    async def _resync(self, client: coredis.Redis[bytes], *, reason: str) -> None:
        """Write this node's record and the whole mirror back, removing whatever else Redis
        holds for this node, atomically (the caller holds the write lock)."""
        async with client.pipeline(transaction=True) as pipe:
            pipe.eval(_PURGE_NODE, [], [self.node_id, ""])
            pipe.hset(NODES_KEY, {self.node_id: self._record()})
            for room, participants in self._mirror.items():
                pipe.hset(room_nodes_key(room), {self.node_id: str(len(participants))})
                if participants:
                    pipe.hset(room_participants_key(room), {
                        identity: ParticipantLocation(self.node_id, sid).encode()
                        for identity, sid in participants.items()})
                pipe.sadd(ROOMS_KEY, [room])
                pipe.sadd(node_rooms_key(self.node_id), [room])
        self._dirty = False
        self.metrics.inc(RESYNCS)
        _log.info("node directory: registered this node and its rooms again",
                  kv={"node": self.node_id, "reason": reason, "rooms": len(self._mirror)})

    async def _expire(self, client: coredis.Redis[bytes], node_id: str, record: bytes) -> None:
        cleaned = await client.eval(_PURGE_NODE, [], [node_id, record])
        if isinstance(cleaned, int) and cleaned >= 0:
            self.metrics.inc(NODES_EXPIRED)
            _log.info("node directory: removed a node that stopped heartbeating",
                      kv={"node": self.node_id, "dead_node": node_id, "rooms": cleaned})

    def _report_rejected(self, rejected: Mapping[tuple[bytes, bytes], EntryProblem]) -> None:
        # Each bad entry is logged and counted once while it stays as it is, not per heartbeat.
        for entry, problem in rejected.items():
            if entry not in self._reported:
                self.metrics.inc(problem.value)
                _log.warning("node directory: ignored an entry of 'nodes'",
                             kv={"node": self.node_id, "field": entry[0][:64].decode(errors="replace"),
                                 "problem": problem.name.lower()})
        self._reported = set(rejected)

    def _note_failure(self, exc: BaseException) -> None:
        self.metrics.inc(REDIS_ERRORS)
        self._outage_attempts += 1
        if self._outage_since is None:
            self._outage_since = trio.current_time()
            self.metrics.inc(OUTAGES)
            _log.warning("node directory: Redis unreachable, retrying every heartbeat",
                         kv={"node": self.node_id, "redis": self.config.address, "error": _describe(exc),
                             "interval": self.heartbeat_interval})

    def _note_success(self) -> None:
        if self._outage_since is not None:
            _log.info("node directory: Redis reachable again",
                      kv={"node": self.node_id, "outage_s": round(trio.current_time() - self._outage_since, 3),
                          "failed_attempts": self._outage_attempts})
            self._outage_since = None
            self._outage_attempts = 0
        self.heartbeats += 1
        self._heartbeat_done.set()
        self._heartbeat_done = trio.Event()

    # -- calls ------------------------------------------------------------------------------

    def _require_client(self) -> coredis.Redis[bytes]:
        if self._client is None:
            raise DirectoryUnavailable("the node directory is not connected (not running, or reconnecting)")
        return self._client

    def _unavailable(self, message: str) -> DirectoryUnavailable:
        self.metrics.inc(CALLS_UNAVAILABLE)
        return DirectoryUnavailable(message)

    async def _call(self, operation: Callable[[coredis.Redis[bytes]], Awaitable[T]], *, write: bool = False) -> T:
        """Run one operation against Redis within the call timeout; every failure becomes
        DirectoryUnavailable. During an outage the call fails at once."""
        if self._outage_since is not None:
            raise self._unavailable(f"Redis at {self.config.address} is unreachable (since "
                                    f"{trio.current_time() - self._outage_since:.1f}s)")
        try:
            client = self._require_client()
        except DirectoryUnavailable:
            self.metrics.inc(CALLS_UNAVAILABLE)
            raise
        try:
            with trio.fail_after(self.call_timeout):
                if write:
                    async with self._write_lock:
                        return await operation(client)
                return await operation(client)
        except trio.TooSlowError:
            raise self._unavailable(f"Redis at {self.config.address} did not answer within {self.call_timeout:g}s") from None
        except Exception as exc:
            if not _is_redis_failure(exc):
                raise
            raise self._unavailable(f"Redis at {self.config.address}: {_describe(exc)}") from exc

    async def _write(self, operation: Callable[[coredis.Redis[bytes]], Awaitable[Any]]) -> None:
        """A membership write: the mirror has changed already; if Redis cannot take it now,
        the next successful heartbeat writes the whole mirror back."""
        if self._stopped:
            raise self._unavailable("the node directory has deregistered this node")
        try:
            await self._call(operation, write=True)
        except DirectoryUnavailable:
            self._dirty = True
            raise

    async def set_state(self, state: NodeState) -> None:
        """Change this node's state (SHUTTING_DOWN: no new participants here) and write it now.
        DirectoryUnavailable if Redis cannot take it; the state is kept, and the next heartbeat
        that reaches Redis carries it."""
        self._state = state

        async def write(client: coredis.Redis[bytes]) -> None:
            await client.hset(NODES_KEY, {self.node_id: self._record()})

        await self._call(write, write=True)

    async def deregister(self) -> None:
        """A graceful stop: stop heartbeating and remove this node and all it registered now
        (other nodes need not wait for the expiry). Cancel `run` afterwards."""
        self._stopped = True
        self._mirror.clear()

        async def purge(client: coredis.Redis[bytes]) -> None:
            async with client.pipeline(transaction=True) as pipe:
                pipe.eval(_PURGE_NODE, [], [self.node_id, ""])
                pipe.hdel(NODES_KEY, [self.node_id])

        await self._call(purge, write=True)

    async def room_opened(self, room: str) -> None:
        """This node serves `room` (perhaps nobody in it yet)."""
        self._mirror.setdefault(room, {})
        await self._write(lambda client: self._write_room(client, room))

    async def room_closed(self, room: str) -> None:
        """This node no longer serves `room` (its participants here are gone with it)."""
        self._mirror.pop(room, None)
        await self._write(lambda client: self._write_room(client, room))

    def replace_membership(self, membership: Mapping[str, Mapping[str, str]]) -> None:
        """This node's whole membership (room -> identity -> sid), as its registry knows it now,
        replaces the mirror; the next heartbeat writes it back whole. For a caller that lost
        track of some of its updates (its queue of them overflowed)."""
        self._mirror = {room: dict(participants) for room, participants in membership.items()}
        self._dirty = True

    async def participant_joined(self, room: str, identity: str, sid: str) -> None:
        """`identity` (session `sid`) is in `room` on this node. Kept locally even when Redis
        cannot take it (DirectoryUnavailable: other nodes do not see it yet)."""
        self._mirror.setdefault(room, {})[identity] = sid
        await self._write(lambda client: self._write_room(client, room, identity, sid))

    async def participant_left(self, room: str, identity: str, sid: str) -> None:
        """The session `sid` of `identity` left `room` on this node (a newer session of the same
        identity, here or elsewhere, is left alone). The room stays open here."""
        participants = self._mirror.get(room)
        if participants is not None and participants.get(identity) == sid:
            del participants[identity]
        await self._write(lambda client: self._write_room(client, room, identity, sid))

    async def _write_room(self, client: coredis.Redis[bytes], room: str, identity: str | None = None,
                          sid: str | None = None) -> None:
        """Make Redis say what the mirror says now about `room` (and `identity`), whatever
        happened between the mirror's change and this write (the write lock is held)."""
        participants = self._mirror.get(room)
        if participants is None:
            await client.eval(_LEAVE_ROOM, [], [self.node_id, room])
            return
        async with client.pipeline(transaction=True) as pipe:
            if identity is not None:
                current = participants.get(identity)
                if current is not None:
                    pipe.hset(room_participants_key(room),
                              {identity: ParticipantLocation(self.node_id, current).encode()})
                if sid is not None and current != sid:
                    # The session we were told about is gone here: remove its entry if it is
                    # still ours (not if the identity has joined elsewhere since).
                    pipe.eval(_COMPARE_HDEL, [room_participants_key(room)],
                              [identity, ParticipantLocation(self.node_id, sid).encode()])
            pipe.hset(room_nodes_key(room), {self.node_id: str(len(participants))})
            pipe.sadd(ROOMS_KEY, [room])
            pipe.sadd(node_rooms_key(self.node_id), [room])

    # -- reads --------------------------------------------------------------------------------

    def live_nodes(self, *, include_self: bool = True) -> dict[str, cluster_pb2.Node]:
        """The nodes alive as of the last heartbeat (their records younger than the expiry now).
        DirectoryUnavailable before the first heartbeat reached Redis and during an outage."""
        if not self._synced or self._outage_since is not None:
            raise self._unavailable("the node directory has no current view of the cluster")
        oldest = self._now_ms() - int(self.expiry * 1000)
        return {node_id: node for node_id, node in self._view.items()
                if node.stats.updated_at_ms >= oldest and (include_self or node_id != self.node_id)}

    async def _live_ids(self, client: coredis.Redis[bytes]) -> set[str]:
        raw = await client.hgetall(NODES_KEY)
        view = judge_nodes(raw, self._now_ms(), int(self.expiry * 1000), int(self.max_clock_skew * 1000))
        return set(view.live)

    async def room_nodes(self, room: str) -> dict[str, int]:
        """Node id -> participants of `room` there, for the live nodes serving it."""

        async def read(client: coredis.Redis[bytes]) -> dict[str, int]:
            raw = await client.hgetall(room_nodes_key(room))
            live = await self._live_ids(client)
            result = {}
            for field, value in raw.items():
                node_id, count = _text(field), _count(value)
                if node_id in live and count is not None:
                    result[node_id] = count
            return result

        return await self._call(read)

    async def room_participants(self, room: str) -> dict[str, ParticipantLocation]:
        """Identity -> where it is served, for the participants of `room` on live nodes."""

        async def read(client: coredis.Redis[bytes]) -> dict[str, ParticipantLocation]:
            raw = await client.hgetall(room_participants_key(room))
            live = await self._live_ids(client)
            result = {}
            for field, value in raw.items():
                identity, where = _text(field), ParticipantLocation.decode(value)
                if identity is not None and where is not None and where.node_id in live:
                    result[identity] = where
            return result

        return await self._call(read)

    async def participant_node(self, room: str, identity: str) -> ParticipantLocation | None:
        """Where `identity` is in `room`, or None (not there, or its node is not alive)."""

        async def read(client: coredis.Redis[bytes]) -> ParticipantLocation | None:
            raw = await client.hget(room_participants_key(room), identity)
            where = ParticipantLocation.decode(raw) if raw is not None else None
            if where is None or where.node_id not in await self._live_ids(client):
                return None
            return where

        return await self._call(read)

    async def rooms(self) -> set[str]:
        """The rooms some live node serves."""

        async def read(client: coredis.Redis[bytes]) -> set[str]:
            names = [name for name in map(_text, await client.smembers(ROOMS_KEY)) if name is not None]
            live = await self._live_ids(client)
            if not names:
                return set()
            async with client.pipeline(transaction=False) as pipe:
                requests = [pipe.hgetall(room_nodes_key(name)) for name in names]
            found = set()
            for name, request in zip(names, requests):
                served = await request
                if any(_text(node_id) in live and _count(count) is not None for node_id, count in served.items()):
                    found.add(name)
            return found

        return await self._call(read)


def _text(raw: bytes) -> str | None:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return None


def _count(raw: bytes) -> int | None:
    try:
        value = int(raw)
    except ValueError:
        return None
    return value if value >= 0 else None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        return _describe(exc.exceptions[0])
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
