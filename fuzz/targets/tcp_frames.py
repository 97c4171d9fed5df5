"""RFC 4571 framing as an ICE-TCP peer feeds it: rtp.tcp_framing.FrameDecoder over any split of
the stream, its frames handed to an ICE-lite agent on a TCP path as the server hands them."""

from __future__ import annotations

from aioice.stun import Class, Message, Method

from fuzz.target import FuzzTarget
from rtp.ice.lite import IceLiteAgent
from rtp.peer_transport_events import TcpAddress
from rtp.stun import serialize
from rtp.tcp_framing import FrameDecoder, encode_frame

LOCAL_UFRAG, LOCAL_PWD = "SfuU", "sfu-password-0123456789ab"
PATH = TcpAddress("192.0.2.7", 40000)
MAX_FRAME = 2048


def run(data: bytes) -> None:
    if not data:
        return
    # First byte: the size of the pieces the stream arrives in (1-256 bytes).
    piece = data[0] + 1
    stream = data[1:]
    decoder = FrameDecoder(MAX_FRAME)
    agent = IceLiteAgent(LOCAL_UFRAG, LOCAL_PWD)
    for start in range(0, len(stream), piece):
        for frame in decoder.receive_data(stream[start:start + piece]):
            # What the decoder promises: whole, non-empty frames within the cap, a bounded buffer.
            assert 0 < len(frame) <= MAX_FRAME
            if frame[0] < 4:
                agent.receive_stun(frame, PATH, 1.0)
        assert decoder.buffered < 2 + MAX_FRAME
    agent.datagrams_to_send(1.0)


def seeds() -> list[bytes]:
    request = Message(Method.BINDING, Class.REQUEST, transaction_id=bytes(range(12)))
    request.attributes["USERNAME"] = f"{LOCAL_UFRAG}:peer"
    request.attributes["PRIORITY"] = 1853824767
    request.attributes["ICE-CONTROLLING"] = 1
    request.attributes["USE-CANDIDATE"] = None
    check = serialize(request, LOCAL_PWD.encode())
    stream = encode_frame(check) + encode_frame(b"\x16\xfe\xfd" + bytes(40)) + b"\x00\x00" + encode_frame(b"\x80" * 60)
    return [bytes([255]) + stream, bytes([0]) + stream, bytes([6]) + stream + b"\x08\x01"]


TARGET = FuzzTarget(
    "tcp-framing", "rtp.tcp_framing.FrameDecoder (any split) and IceLiteAgent.receive_stun on a TCP path",
    run, (), seeds, max_len=4096,
)
