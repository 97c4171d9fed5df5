"""The node-to-node relay link: an interface and its in-memory implementation.

Two nodes hosting one room exchange `proto.relay_pb2.RelayMessage`s over a `RelayLink`. The
link is an interface so a network link can stand where the in-memory pair stands today; the
pair already serializes every message to bytes and parses it back on the other side, so what
crosses the link is exactly the wire format.

Sending never blocks (media must not wait on a slow peer): a full link drops the message and
counts it. `deliver_delay` lets tests stretch delivery on Trio's clock to explore orderings.
"""

from __future__ import annotations

from typing import Awaitable, Callable, Optional, Protocol

import trio
from google.protobuf.message import DecodeError

from proto.relay_pb2 import RelayMessage

DeliverDelay = Callable[[RelayMessage], Awaitable[None]]


class RelayLink(Protocol):
    """One direction pair between this node and `peer_node_id`."""

    @property
    def peer_node_id(self) -> str: ...

    def send(self, message: RelayMessage) -> bool:
        """Queue `message` for the peer without blocking; False if it was dropped."""

    async def receive(self) -> RelayMessage:
        """The next message from the peer; raises trio.EndOfChannel once the link is closed."""

    def close(self) -> None: ...


class InMemoryRelayLink:
    def __init__(self, local_node_id: str, peer_node_id: str,
                 outgoing: trio.MemorySendChannel[bytes], incoming: trio.MemoryReceiveChannel[bytes],
                 deliver_delay: Optional[DeliverDelay] = None) -> None:
        self.local_node_id = local_node_id
        self._peer = peer_node_id
        self._out = outgoing
        self._in = incoming
        self._delay = deliver_delay
        self._in_sender: Optional[trio.MemorySendChannel[bytes]] = None
        self.sent = 0
        self.dropped = 0
        self.malformed = 0

    @property
    def peer_node_id(self) -> str:
        return self._peer

    def send(self, message: RelayMessage) -> bool:
        message.from_node = self.local_node_id
        try:
            self._out.send_nowait(message.SerializeToString())
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            self.dropped += 1
            return False
        self.sent += 1
        return True

    async def receive(self) -> RelayMessage:
        while True:
            try:
                data = await self._in.receive()
            except trio.ClosedResourceError:
                raise trio.EndOfChannel from None
            message = RelayMessage()
            try:
                message.ParseFromString(data)
            except DecodeError:
                self.malformed += 1
                continue
            if self._delay is not None:
                await self._delay(message)
            return message

    def inject_raw(self, data: bytes) -> None:
        """Tests: put arbitrary bytes on the wire towards this link's owner."""
        if self._in_sender is not None:
            self._in_sender.send_nowait(data)

    def close(self) -> None:
        self._out.close()
        self._in.close()
        if self._in_sender is not None:
            self._in_sender.close()


async def serve_link(link: RelayLink, handle: Callable[[RelayLink, RelayMessage], Awaitable[None]],
                     reject: Callable[[str], None]) -> None:
    """Hand each message from `link` to `handle`, in order, until the link closes; a message
    `handle` fails on is reported to `reject` and the loop goes on (a bad message never ends
    a node)."""
    while True:
        try:
            message = await link.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError, trio.BrokenResourceError):
            return
        try:
            await handle(link, message)
        except Exception as exc:
            reject(f"relay message failed: {type(exc).__name__}: {exc}")


def in_memory_link_pair(node_a: str, node_b: str, capacity: int = 4096,
                        delay_a: Optional[DeliverDelay] = None,
                        delay_b: Optional[DeliverDelay] = None) -> tuple[InMemoryRelayLink, InMemoryRelayLink]:
    """Links for `node_a` (towards b) and `node_b` (towards a); `delay_x` runs before node x
    gets each message."""
    a_to_b_send, a_to_b_recv = trio.open_memory_channel[bytes](capacity)
    b_to_a_send, b_to_a_recv = trio.open_memory_channel[bytes](capacity)
    link_a = InMemoryRelayLink(node_a, node_b, a_to_b_send, b_to_a_recv, delay_a)
    link_b = InMemoryRelayLink(node_b, node_a, b_to_a_send, a_to_b_recv, delay_b)
    link_a._in_sender = b_to_a_send.clone()
    link_b._in_sender = a_to_b_send.clone()
    return link_a, link_b
