"""The node-to-node relay link over one TCP connection: framing, an authenticated handshake,
and `TcpRelayLink`, the `RelayLink` two nodes exchange `proto.relay_pb2.RelayMessage`s over.

Why TCP for control and media alike. The control messages (track announcements, presence, the
steps of a migration) must arrive in order and all of them; TCP gives both without a protocol of
our own on top. Two nodes keep exactly one connection between them (trio_sfu.cluster.mesh), so
there is one thing to authenticate, to watch and to redial. Media rides the same connection: the
nodes of one cluster sit on a LAN or on one machine, where loss is rare, and a relayed packet that
is late is still repaired end to end by the subscriber's NACK/PLI. The cost is head-of-line
blocking: a segment lost between the nodes holds back every message behind it until TCP
retransmits it (a round trip on a LAN), for every track the link carries. A congested or
stalled link is handled the way media is everywhere in the server: `send` never blocks, the
outgoing queue is bounded in bytes and in messages, and what does not fit is dropped and counted.

Wire format. Every unit on the wire is a frame: a 4-byte big-endian length, then that many bytes.
A zero-length frame is a keepalive (sent after a second of silence; a link that hears nothing
for `idle_timeout` is dead and closed). Before any RelayMessage the two sides run the handshake
below in frames of at most `HANDSHAKE_MAX_FRAME` bytes; after it, each frame is one serialized
RelayMessage of at most `LinkLimits.max_frame` bytes. A frame over the cap or a frame that does
not parse is a peer we cannot trust to stay in step: the link is closed with a logged reason and
counted, and the reading task returns normally (garbage never raises out of a nursery).

The handshake (HMAC-SHA256 with the cluster's shared key, `cluster.key`):

    dialer   -> HELLO     dialer id, the id it means to reach, nonce_d (32 random bytes)
    acceptor -> CHALLENGE acceptor id, nonce_a, HMAC(key, "acceptor" | transcript)
    dialer   -> PROOF     HMAC(key, "dialer" | transcript)
    acceptor -> WELCOME

where the transcript is both node ids and both nonces. Each side proves it holds the key over a
nonce the *other* side just chose, so a recorded handshake replayed to either side fails; both
node ids are inside the MAC, so a node cannot claim another's id; the two labels keep one side's
proof from being reflected as the other's. A side that refuses (wrong key, a hello for another
node, a node id it does not expect, a link to itself, a hello too large, too slow) sends REFUSED
with the reason where it can, closes, and the caller logs and counts it.

What the key does not do: it authenticates who opens the link, nothing more. Frames after the
handshake are neither encrypted nor integrity-protected, so anyone on the path can read the media
and could inject into the TCP stream. Between nodes on an untrusted network, run the links
inside TLS or a WireGuard tunnel; this module does not provide either.
"""

from __future__ import annotations

import collections
import enum
import hashlib
import hmac
import secrets
from typing import Awaitable, Callable, Optional

import attrs
import trio
from google.protobuf.message import DecodeError

from proto.relay_pb2 import RelayMessage

from trio_sfu import metrics as m
from trio_sfu.log import get_logger

_log = get_logger("trio_sfu.cluster.tcp_link")

# Counters (trio_sfu.metrics): what links refused, dropped or closed on.
HANDSHAKE_REFUSED = "relay_link_handshake_refused_total"
LINK_ESTABLISHED = "relay_link_established_total"
LINK_SEND_DROPPED = "relay_link_send_dropped_total"
LINK_SEND_OVERSIZE = "relay_link_send_oversize_total"
LINK_FRAME_OVERSIZE = "relay_link_frame_oversize_total"
LINK_FRAME_MALFORMED = "relay_link_frame_malformed_total"
LINK_IDLE_TIMEOUT = "relay_link_idle_timeout_total"
LINK_WRITE_STALLED = "relay_link_write_stalled_total"

#: The largest handshake frame either side accepts: two node ids and a nonce or a MAC fit easily.
HANDSHAKE_MAX_FRAME = 1024
#: The longest node id, in UTF-8 bytes.
MAX_NODE_ID = 128
NONCE_SIZE = 32
MAC_SIZE = 32
#: What a handshake frame starts with: the protocol and its version.
MAGIC = b"TSFU-RELAY/1"
_LENGTH = 4
KEEPALIVE_FRAME = b"\x00\x00\x00\x00"
#: How long a handshake may take, from the connection to WELCOME.
HANDSHAKE_TIMEOUT = 5.0


class Step(enum.IntEnum):
    """The handshake's messages, in the order they are sent (REFUSED may come at any point)."""

    HELLO = 1
    CHALLENGE = 2
    PROOF = 3
    WELCOME = 4
    REFUSED = 5


class LinkState(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


@attrs.frozen
class LinkLimits:
    """The bounds of one link. Queues are bounded twice: bytes cap memory, messages cap the
    per-message overhead of many tiny ones."""

    max_frame: int = 256 * 1024
    max_queue_bytes: int = 4 * 1024 * 1024
    max_queue_messages: int = 8192
    #: How much the writer hands the kernel per `send_all` (several frames at once).
    batch_bytes: int = 256 * 1024
    #: The writer sends a keepalive after this much silence ...
    keepalive_interval: float = 1.0
    #: ... and a link that hears nothing for this long, or cannot write for this long, is dead.
    idle_timeout: float = 6.0
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    #: How long connecting to a peer may take before the attempt counts as failed.
    connect_timeout: float = 5.0


class HandshakeRefused(Exception):
    """The handshake did not complete; `reason` says why (logged and counted by the caller)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FrameTooLarge(Exception):
    def __init__(self, size: int, cap: int) -> None:
        super().__init__(f"frame of {size} bytes over the cap of {cap}")
        self.size = size


# ---- framing (sans-IO) ----------------------------------------------------------------------


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(_LENGTH, "big") + payload


class FrameDecoder:
    """Bytes in, whole frames out. The cap is checked on the length prefix, before any of the
    payload is buffered, so a peer announcing a huge frame costs nothing."""

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._start = 0

    def feed(self, data: bytes) -> None:
        self._buffer += data

    @property
    def buffered(self) -> int:
        return len(self._buffer) - self._start

    def next_frame(self) -> Optional[bytes]:
        """The next whole frame's payload, or None until more bytes arrive; raises FrameTooLarge."""
        buffer, start = self._buffer, self._start
        if len(buffer) - start < _LENGTH:
            self._compact()
            return None
        size = int.from_bytes(buffer[start:start + _LENGTH], "big")
        if size > self.max_frame:
            raise FrameTooLarge(size, self.max_frame)
        end = start + _LENGTH + size
        if len(buffer) < end:
            self._compact()
            return None
        payload = bytes(buffer[start + _LENGTH:end])
        self._start = end
        return payload

    def _compact(self) -> None:
        if self._start:
            del self._buffer[:self._start]
            self._start = 0


# ---- handshake messages (sans-IO) -----------------------------------------------------------


def _fields(*values: bytes) -> bytes:
    return b"".join(len(v).to_bytes(2, "big") + v for v in values)


def encode_step(step: Step, *values: bytes) -> bytes:
    """One handshake message: magic, its step, then each field with a 2-byte length."""
    return MAGIC + bytes([step]) + _fields(*values)


def decode_step(payload: bytes) -> tuple[Step, list[bytes]]:
    """(step, fields) of a handshake message; raises HandshakeRefused for anything else."""
    if not payload.startswith(MAGIC) or len(payload) <= len(MAGIC):
        raise HandshakeRefused("not a relay handshake (bad magic)")
    try:
        step = Step(payload[len(MAGIC)])
    except ValueError:
        raise HandshakeRefused(f"unknown handshake step {payload[len(MAGIC)]}") from None
    values: list[bytes] = []
    at = len(MAGIC) + 1
    while at < len(payload):
        if at + 2 > len(payload):
            raise HandshakeRefused("truncated handshake field")
        size = int.from_bytes(payload[at:at + 2], "big")
        if at + 2 + size > len(payload):
            raise HandshakeRefused("truncated handshake field")
        values.append(payload[at + 2:at + 2 + size])
        at += 2 + size
    return step, values


def _expect(payload: bytes, step: Step, count: int) -> list[bytes]:
    got, values = decode_step(payload)
    if got is Step.REFUSED:
        reason = values[0].decode("utf-8", "replace")[:200] if values else ""
        raise HandshakeRefused(f"peer refused: {reason}")
    if got is not step:
        raise HandshakeRefused(f"expected {step.name}, got {got.name}")
    if len(values) != count:
        raise HandshakeRefused(f"{step.name} with {len(values)} fields, not {count}")
    return values


def node_id_problem(node_id: str) -> str:
    """Why `node_id` cannot name a node ("" if it can)."""
    encoded = node_id.encode("utf-8", "surrogatepass")
    if not node_id or len(encoded) > MAX_NODE_ID:
        return f"node id must be 1-{MAX_NODE_ID} bytes"
    if not node_id.isprintable() or any(c.isspace() for c in node_id):
        return "node id must be printable, without spaces"
    return ""


def _node_id(raw: bytes) -> str:
    try:
        node_id = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise HandshakeRefused("node id is not UTF-8") from None
    problem = node_id_problem(node_id)
    if problem:
        raise HandshakeRefused(problem)
    return node_id


def _transcript(dialer: str, acceptor: str, nonce_d: bytes, nonce_a: bytes) -> bytes:
    return _fields(MAGIC, dialer.encode(), acceptor.encode(), nonce_d, nonce_a)


def handshake_mac(key: bytes, role: bytes, dialer: str, acceptor: str, nonce_d: bytes, nonce_a: bytes) -> bytes:
    """HMAC-SHA256 of the transcript under `key`, labelled with the proving side's `role`."""
    return hmac.new(key, role + b"|" + _transcript(dialer, acceptor, nonce_d, nonce_a), hashlib.sha256).digest()


# ---- handshake over a stream ----------------------------------------------------------------


class _HandshakeIO:
    """The handshake's side of a stream: whole frames in and out, under the handshake's cap."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder(HANDSHAKE_MAX_FRAME)

    async def read(self) -> bytes:
        while True:
            try:
                payload = self.decoder.next_frame()
            except FrameTooLarge as exc:
                raise HandshakeRefused(f"oversize handshake frame ({exc.size} bytes)") from None
            if payload is not None:
                return payload
            try:
                data = await self.stream.receive_some(HANDSHAKE_MAX_FRAME)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise HandshakeRefused(f"connection failed during the handshake: {type(exc).__name__}") from None
            if not data:
                raise HandshakeRefused("peer closed the connection during the handshake")
            self.decoder.feed(data)

    async def write(self, step: Step, *values: bytes) -> None:
        try:
            await self.stream.send_all(frame(encode_step(step, *values)))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise HandshakeRefused(f"connection failed during the handshake: {type(exc).__name__}") from None

    async def refuse(self, reason: str) -> None:
        """Tell the peer why, if it still listens (best effort, never blocks for long)."""
        with trio.move_on_after(0.5):
            try:
                await self.stream.send_all(frame(encode_step(Step.REFUSED, reason.encode()[:200])))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass


async def _run_handshake(stream: trio.abc.Stream, timeout: float,
                         steps: Callable[[_HandshakeIO], Awaitable[str]]) -> tuple[str, FrameDecoder]:
    """Run one side's `steps` within `timeout`; on any refusal tell the peer why (best effort)
    and close the stream."""
    io = _HandshakeIO(stream)
    try:
        try:
            with trio.fail_after(timeout):
                return await steps(io), io.decoder
        except trio.TooSlowError:
            raise HandshakeRefused(f"handshake timed out after {timeout:g} s") from None
    except HandshakeRefused as exc:
        await io.refuse(exc.reason)
        await trio.aclose_forcefully(stream)
        raise
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise


async def dial_handshake(stream: trio.abc.Stream, *, local_node_id: str, peer_node_id: str, key: bytes,
                         timeout: float = HANDSHAKE_TIMEOUT) -> FrameDecoder:
    """The dialer's side: prove we hold `key`, check the peer does and is `peer_node_id`. Returns
    the decoder holding whatever the peer sent after the handshake; raises HandshakeRefused (the
    stream is closed then)."""

    async def steps(io: _HandshakeIO) -> str:
        if peer_node_id == local_node_id:
            raise HandshakeRefused("a node does not link to itself")
        nonce_d = secrets.token_bytes(NONCE_SIZE)
        await io.write(Step.HELLO, local_node_id.encode(), peer_node_id.encode(), nonce_d)
        acceptor_raw, nonce_a, mac_a = _expect(await io.read(), Step.CHALLENGE, 3)
        acceptor = _node_id(acceptor_raw)
        if acceptor != peer_node_id:
            raise HandshakeRefused(f"reached node {acceptor!r}, not {peer_node_id!r}")
        if len(nonce_a) != NONCE_SIZE or nonce_a == nonce_d:
            raise HandshakeRefused("unusable acceptor nonce")
        expected = handshake_mac(key, b"acceptor", local_node_id, acceptor, nonce_d, nonce_a)
        if not hmac.compare_digest(mac_a, expected):
            raise HandshakeRefused("peer failed authentication (another cluster key?)")
        await io.write(Step.PROOF, handshake_mac(key, b"dialer", local_node_id, acceptor, nonce_d, nonce_a))
        _expect(await io.read(), Step.WELCOME, 0)
        return acceptor

    _, decoder = await _run_handshake(stream, timeout, steps)
    return decoder


async def accept_handshake(stream: trio.abc.Stream, *, local_node_id: str, key: bytes,
                           peer_problem: Callable[[str], str] = lambda node_id: "",
                           timeout: float = HANDSHAKE_TIMEOUT) -> tuple[str, FrameDecoder]:
    """The acceptor's side. `peer_problem(node_id)` says why a (claimed) dialer id is not welcome
    ("" if it is). Returns the authenticated dialer's id and the decoder holding what it sent
    after the handshake; raises HandshakeRefused (the stream is closed then)."""

    async def steps(io: _HandshakeIO) -> str:
        dialer_raw, target_raw, nonce_d = _expect(await io.read(), Step.HELLO, 3)
        dialer = _node_id(dialer_raw)
        target = target_raw.decode("utf-8", "replace")
        if target != local_node_id:
            raise HandshakeRefused(f"hello for node {target[:MAX_NODE_ID]!r}, this is {local_node_id!r}")
        if dialer == local_node_id:
            raise HandshakeRefused("a node does not link to itself")
        problem = peer_problem(dialer)
        if problem:
            raise HandshakeRefused(f"node {dialer!r}: {problem}")
        if len(nonce_d) != NONCE_SIZE:
            raise HandshakeRefused("unusable dialer nonce")
        nonce_a = secrets.token_bytes(NONCE_SIZE)
        await io.write(Step.CHALLENGE, local_node_id.encode(), nonce_a,
                       handshake_mac(key, b"acceptor", dialer, local_node_id, nonce_d, nonce_a))
        (mac_d,) = _expect(await io.read(), Step.PROOF, 1)
        if not hmac.compare_digest(mac_d, handshake_mac(key, b"dialer", dialer, local_node_id, nonce_d, nonce_a)):
            raise HandshakeRefused("authentication failed (wrong cluster key or a replayed handshake)")
        await io.write(Step.WELCOME)
        return dialer

    return await _run_handshake(stream, timeout, steps)


# ---- the link ------------------------------------------------------------------------------


class TcpRelayLink:
    """A `RelayLink` over one TCP stream whose handshake is done.

    `send` queues a frame and returns at once; `run` (the writer, on a task the link's owner
    starts) drains the queue in batches and sends keepalives; `receive` (one reader task) reads
    and parses frames. `close` ends all three at once: pending `receive` and `run` return.
    """

    def __init__(self, stream: trio.SocketStream, local_node_id: str, peer_node_id: str, *,
                 decoder: Optional[FrameDecoder] = None, limits: LinkLimits = LinkLimits(),
                 metrics: Optional[m.Metrics] = None) -> None:
        self.local_node_id = local_node_id
        self._peer = peer_node_id
        self._stream = stream
        self.limits = limits
        self.metrics = metrics if metrics is not None else m.Metrics()
        self._decoder = decoder if decoder is not None else FrameDecoder(limits.max_frame)
        self._decoder.max_frame = limits.max_frame
        self.state = LinkState.OPEN
        self.close_reason = ""
        self.closed = trio.Event()
        # Frames waiting for the writer: length prefixes and payloads, appended in pairs.
        self._queue: collections.deque[bytes] = collections.deque()
        self.queued_bytes = 0
        self.queued_messages = 0
        self._wakeup = trio.Event()
        self.sent = 0
        self.dropped = 0
        self.received = 0
        self.malformed = 0
        self.log = _log.bind(node=local_node_id, peer=peer_node_id)

    @property
    def peer_node_id(self) -> str:
        return self._peer

    def __repr__(self) -> str:
        return f"<TcpRelayLink {self.local_node_id}->{self._peer} {self.state.value}>"

    # ---- sending ---------------------------------------------------------------------------

    def send(self, message: RelayMessage) -> bool:
        if self.state is not LinkState.OPEN:
            self._drop()
            return False
        message.from_node = self.local_node_id
        payload = message.SerializeToString()
        size = len(payload)
        if size > self.limits.max_frame:
            # Our own message the peer would refuse: a bug upstream, not the peer's problem.
            self.metrics.inc(LINK_SEND_OVERSIZE)
            self._drop()
            return False
        if (self.queued_messages >= self.limits.max_queue_messages
                or self.queued_bytes + size + _LENGTH > self.limits.max_queue_bytes):
            self._drop()
            return False
        self._queue.append(size.to_bytes(_LENGTH, "big"))
        self._queue.append(payload)
        self.queued_bytes += size + _LENGTH
        self.queued_messages += 1
        self.sent += 1
        self._wakeup.set()
        return True

    def _drop(self) -> None:
        self.dropped += 1
        self.metrics.inc(LINK_SEND_DROPPED)

    def _take_batch(self) -> bytes:
        parts: list[bytes] = []
        taken = 0
        queue = self._queue
        while queue and taken < self.limits.batch_bytes:
            header = queue.popleft()
            payload = queue.popleft()
            parts.append(header)
            parts.append(payload)
            taken += len(header) + len(payload)
            self.queued_messages -= 1
        self.queued_bytes -= taken
        return b"".join(parts)

    async def run(self) -> None:
        """The writer: until the link closes, hand queued frames to the kernel, several per
        `send_all`, and a keepalive after each quiet `keepalive_interval`. Returns (never
        raises for the peer's sake) once the link is closed, by anyone."""
        limits = self.limits
        try:
            while self.state is LinkState.OPEN:
                if not self._queue:
                    self._wakeup = trio.Event()
                    with trio.move_on_after(limits.keepalive_interval):
                        await self._wakeup.wait()
                    if self.state is not LinkState.OPEN:
                        break
                batch = self._take_batch() if self._queue else KEEPALIVE_FRAME
                with trio.move_on_after(limits.idle_timeout) as stall:
                    await self._stream.send_all(batch)
                if stall.cancelled_caught:
                    self.metrics.inc(LINK_WRITE_STALLED)
                    self.close(f"peer read nothing for {limits.idle_timeout:g} s")
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self.close(f"write failed: {type(exc).__name__}")
        finally:
            self.close("link stopped")
            await trio.aclose_forcefully(self._stream)

    # ---- receiving -------------------------------------------------------------------------

    async def receive(self) -> RelayMessage:
        """The next message; raises trio.EndOfChannel once the link is closed — also when the
        peer closed it, went silent or sent something we cannot read (then it is closed here,
        with the reason logged and counted). While whole frames are buffered it returns without
        a checkpoint: a burst costs one task switch per socket read (64 KiB), not per message."""
        decoder = self._decoder
        while True:
            if self.state is not LinkState.OPEN:
                raise trio.EndOfChannel
            try:
                payload = decoder.next_frame()
            except FrameTooLarge as exc:
                self.malformed += 1
                self.metrics.inc(LINK_FRAME_OVERSIZE)
                self.close(str(exc))
                raise trio.EndOfChannel from None
            if payload is None:
                await self._read_more()
                continue
            if not payload:
                continue  # keepalive
            message = RelayMessage()
            try:
                message.ParseFromString(payload)
            except DecodeError:
                self.malformed += 1
                self.metrics.inc(LINK_FRAME_MALFORMED)
                self.close("unparsable relay message")
                raise trio.EndOfChannel from None
            self.received += 1
            return message

    async def _read_more(self) -> None:
        with trio.move_on_after(self.limits.idle_timeout) as idle:
            try:
                data = await self._stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self.close(f"read failed: {type(exc).__name__}")
                raise trio.EndOfChannel from None
        if idle.cancelled_caught:
            self.metrics.inc(LINK_IDLE_TIMEOUT)
            self.close(f"peer silent for {self.limits.idle_timeout:g} s")
            raise trio.EndOfChannel
        if not data:
            self.close("peer closed the connection")
            raise trio.EndOfChannel
        self._decoder.feed(data)

    # ---- closing ---------------------------------------------------------------------------

    def close(self, reason: str = "closed here") -> None:
        """End the link now (idempotent): queued frames are dropped, the socket is closed, and a
        pending `receive` or `run` returns. The first reason given is the one kept and logged."""
        if self.state is LinkState.CLOSED:
            return
        self.state = LinkState.CLOSED
        self.close_reason = reason
        self.dropped += self.queued_messages
        self._queue.clear()
        self.queued_bytes = self.queued_messages = 0
        self._wakeup.set()
        self.closed.set()
        socket = getattr(self._stream, "socket", None)
        if socket is not None:
            socket.close()  # wakes a task blocked on it with ClosedResourceError
        self.log.info("relay link closed", kv={"reason": reason, "sent": self.sent, "received": self.received,
                                                "dropped": self.dropped})


async def connect_link(host: str, port: int, *, local_node_id: str, peer_node_id: str, key: bytes,
                       limits: LinkLimits = LinkLimits(), metrics: Optional[m.Metrics] = None) -> TcpRelayLink:
    """Connect to a peer node's relay port and authenticate; raises OSError (no connection) or
    HandshakeRefused (logged and counted)."""
    if not key:
        raise ValueError("relay links need a cluster key")
    if peer_node_id == local_node_id:
        _refused(metrics, local_node_id, "a node does not link to itself", address=f"{host}:{port}")
        raise HandshakeRefused("a node does not link to itself")
    with trio.move_on_after(limits.connect_timeout) as connecting:
        stream = await trio.open_tcp_stream(host, port)
    if connecting.cancelled_caught:
        raise OSError(f"connecting to {host}:{port} timed out")
    try:
        decoder = await dial_handshake(stream, local_node_id=local_node_id, peer_node_id=peer_node_id, key=key,
                                       timeout=limits.handshake_timeout)
    except HandshakeRefused as exc:
        _refused(metrics, local_node_id, exc.reason, peer=peer_node_id, address=f"{host}:{port}")
        raise
    return TcpRelayLink(stream, local_node_id, peer_node_id, decoder=decoder, limits=limits, metrics=metrics)


async def accept_link(stream: trio.SocketStream, *, local_node_id: str, key: bytes,
                      peer_problem: Callable[[str], str] = lambda node_id: "",
                      limits: LinkLimits = LinkLimits(), metrics: Optional[m.Metrics] = None) -> TcpRelayLink:
    """Authenticate an accepted connection; raises HandshakeRefused (logged and counted; the
    stream is closed)."""
    if not key:
        raise ValueError("relay links need a cluster key")
    try:
        peer, decoder = await accept_handshake(stream, local_node_id=local_node_id, key=key, peer_problem=peer_problem,
                                               timeout=limits.handshake_timeout)
    except HandshakeRefused as exc:
        _refused(metrics, local_node_id, exc.reason)
        raise
    return TcpRelayLink(stream, local_node_id, peer, decoder=decoder, limits=limits, metrics=metrics)


def _refused(metrics: Optional[m.Metrics], local_node_id: str, reason: str, **kv: object) -> None:
    if metrics is not None:
        metrics.inc(HANDSHAKE_REFUSED)
    _log.warning("relay link refused", kv={"node": local_node_id, "reason": reason, **kv})
