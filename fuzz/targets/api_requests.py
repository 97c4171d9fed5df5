"""The server API: a Twirp request body, JSON or protobuf, for every RoomService method."""

from __future__ import annotations

import json

from google.protobuf import json_format

from fuzz.target import FuzzTarget
from fuzz.targets.proto_fill import fill
from trio_sfu.api.room_service import RoomService
from trio_sfu.api.twirp import Encoding, TwirpError, decode_request

# The methods' request types, from the service's own table (no registry is needed to list them).
_REQUEST_TYPES = [method.request_type for _, method in sorted(RoomService(None).methods().items())]  # type: ignore[arg-type]
# First input byte: the low bits pick the method, the top bit the protobuf encoding (else JSON).
PROTOBUF = 0x80


def run(data: bytes) -> None:
    if not data:
        return
    message_type = _REQUEST_TYPES[(data[0] & 0x7F) % len(_REQUEST_TYPES)]
    encoding = Encoding.PROTOBUF if data[0] & PROTOBUF else Encoding.JSON
    decode_request(encoding, data[1:], message_type)


def seeds() -> list[bytes]:
    out = []
    for index, message_type in enumerate(_REQUEST_TYPES):
        sample = fill(message_type())
        out.append(bytes([index]) + json_format.MessageToJson(sample, indent=None).encode())
        out.append(bytes([index]) + json.dumps(json_format.MessageToDict(sample, preserving_proto_field_name=True)).encode())
        out.append(bytes([index | PROTOBUF]) + sample.SerializeToString())
    return out


TARGET = FuzzTarget(
    "twirp", "trio_sfu.api.twirp.decode_request, JSON and protobuf, each RoomService request type",
    run, (TwirpError,), seeds, max_len=8192,
    dictionary=tuple(t.encode() for t in ('"room"', '"identity"', '"metadata"', '"tracks"', '"name"', "{", "}",
                                          "[", "]", ":", ",", "null", "true", '"1e99"', "-0", '"\\ud800"')),
)
