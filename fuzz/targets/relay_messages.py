"""The node-to-node relay: one RelayMessage off the link, parsed as the link does."""

from __future__ import annotations

from google.protobuf.message import DecodeError

from fuzz.target import FuzzTarget
from fuzz.targets.proto_fill import each_oneof_member
from proto.relay_pb2 import RelayMessage


def run(data: bytes) -> None:
    # What trio_sfu.cluster.link reads off the wire: parse, and a DecodeError is a counted drop.
    message = RelayMessage()
    message.ParseFromString(data)
    message.WhichOneof("message")
    RelayMessage.FromString(message.SerializeToString())


def seeds() -> list[bytes]:
    samples = each_oneof_member(RelayMessage, "message")
    for sample in samples:
        sample.from_node = "node-a"
    return [s.SerializeToString() for s in samples]


TARGET = FuzzTarget(
    "relay", "proto.relay_pb2.RelayMessage.ParseFromString, as trio_sfu.cluster.link receives it",
    run, (DecodeError,), seeds, max_len=8192,
)
