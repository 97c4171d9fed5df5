"""RFC 4571 framing (rtp.tcp_framing) and a TCP path as one more ICE path (rtp.peer_transport_events.TcpAddress).

The decoder is fed real packets (STUN checks from aioice's codec, RTP from our packet writer)
split at every byte boundary and merged, and broken inputs: an oversized length prefix, bytes
after it, zero-length frames. The ICE-lite agent, fed one authenticated check over UDP and one
over TCP from the same host and port, must hold them as two paths and answer each on its own.
"""

from __future__ import annotations

import pytest
from aioice import stun as aioice_stun
from hypothesis import given
from hypothesis import strategies as st

from rtp.ice import IceLiteAgent
from rtp.peer_transport_events import TcpAddress
from rtp.tcp_framing import MAX_FRAME, FrameDecoder, encode_frame


def check(ufrag: str, pwd: str, *, nominate: bool = False) -> bytes:
    message = aioice_stun.Message(aioice_stun.Method.BINDING, aioice_stun.Class.REQUEST)
    message.attributes["USERNAME"] = f"{ufrag}:peer"
    message.attributes["PRIORITY"] = 1853824767
    message.attributes["ICE-CONTROLLING"] = 7
    if nominate:
        message.attributes["USE-CANDIDATE"] = None
    message.add_message_integrity(pwd.encode())
    message.add_fingerprint()
    return bytes(message)


PACKETS = [check("abcd", "p" * 22), b"\x80\x60" + bytes(1198), b"\x16\xfe\xfd" + bytes(97), b"\x01"]


def test_frames_come_out_whole_however_the_bytes_are_split() -> None:
    stream = b"".join(encode_frame(p) for p in PACKETS)
    for cut in range(len(stream) + 1):
        decoder = FrameDecoder(max_frame=2048)
        frames = decoder.receive_data(stream[:cut]) + decoder.receive_data(stream[cut:])
        assert frames == PACKETS, cut
        assert decoder.buffered == 0 and not decoder.broken
        assert decoder.counters.frames == len(PACKETS)
    decoder = FrameDecoder()
    assert [f for byte in stream for f in decoder.receive_data(bytes([byte]))] == PACKETS


@given(st.lists(st.binary(min_size=1, max_size=300), max_size=8), st.data())
def test_any_packets_any_split(packets: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(encode_frame(p) for p in packets)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    decoder = FrameDecoder(max_frame=300)
    frames = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)]):
        frames += decoder.receive_data(stream[start:end])
        assert decoder.buffered < 2 + 300
    assert frames == packets


def test_an_oversized_length_breaks_the_stream_for_good() -> None:
    decoder = FrameDecoder(max_frame=1500)
    good = encode_frame(b"\x00\x01ok")
    frames = decoder.receive_data(good + (1501).to_bytes(2, "big") + bytes(10))
    assert frames == [b"\x00\x01ok"]
    assert decoder.broken and decoder.counters.oversized == 1 and decoder.buffered == 0
    # Whatever follows is ignored and counted, however well-framed it looks.
    assert decoder.receive_data(good) == []
    assert decoder.counters.after_broken == 10 + len(good)
    assert decoder.counters.frames == 1


def test_an_http_request_is_an_oversized_frame() -> None:
    decoder = FrameDecoder(max_frame=8192)
    assert decoder.receive_data(b"GET / HTTP/1.1\r\n") == [] and decoder.broken


def test_zero_length_frames_are_skipped_and_counted() -> None:
    decoder = FrameDecoder()
    assert decoder.receive_data(b"\x00\x00" + encode_frame(b"\x80x") + b"\x00\x00") == [b"\x80x"]
    assert decoder.counters.empty == 2 and decoder.counters.frames == 1


def test_a_partial_frame_waits_and_is_bounded_by_the_cap() -> None:
    decoder = FrameDecoder(max_frame=100)
    assert decoder.receive_data((100).to_bytes(2, "big") + bytes(99)) == []
    assert decoder.buffered == 101
    assert decoder.receive_data(b"\x80") == [bytes(99) + b"\x80"]


def test_encode_refuses_what_the_prefix_cannot_say() -> None:
    assert encode_frame(b"\x80" * MAX_FRAME)[:2] == b"\xff\xff"
    with pytest.raises(ValueError):
        encode_frame(b"")
    with pytest.raises(ValueError):
        encode_frame(bytes(MAX_FRAME + 1))
    with pytest.raises(ValueError):
        FrameDecoder(max_frame=0)


def test_a_tcp_address_is_never_the_udp_address_of_the_same_port() -> None:
    tcp, udp = TcpAddress("192.0.2.7", 50000), ("192.0.2.7", 50000)
    assert tcp != udp and udp != tcp and not (tcp == udp)
    assert tcp == TcpAddress("192.0.2.7", 50000) and hash(tcp) == hash(TcpAddress("192.0.2.7", 50000))
    assert {tcp: "tcp", udp: "udp"} == {TcpAddress("192.0.2.7", 50000): "tcp", ("192.0.2.7", 50000): "udp"}
    assert (tcp[0], tcp[1]) == udp and f"{tcp[0]}:{tcp[1]}" == "192.0.2.7:50000"


def test_the_lite_agent_holds_a_tcp_path_beside_a_udp_one_and_nominates_it() -> None:
    agent = IceLiteAgent("abcd", "p" * 22)
    tcp, udp = TcpAddress("192.0.2.7", 50000), ("192.0.2.7", 50000)
    agent.receive_stun(check("abcd", "p" * 22), udp, 1.0)
    assert agent.is_valid_address(udp) and not agent.is_valid_address(tcp)
    agent.receive_stun(check("abcd", "p" * 22, nominate=True), tcp, 2.0)
    assert agent.is_valid_address(tcp) and agent.selected_address == tcp
    assert type(agent.selected_address) is TcpAddress
    answers = agent.datagrams_to_send(2.0)
    assert [type(addr) for _, addr in answers] == [tuple, TcpAddress]
    # Each answer reflects the address its check came from.
    for data, addr in answers:
        response = aioice_stun.parse_message(data)
        assert response.message_class == aioice_stun.Class.RESPONSE
        assert response.attributes["XOR-MAPPED-ADDRESS"] == ("192.0.2.7", 50000)
    # A check over TCP with the wrong password does not validate the TCP path.
    other = IceLiteAgent("abcd", "p" * 22)
    other.receive_stun(check("abcd", "q" * 22), tcp, 1.0)
    assert not other.is_valid_address(tcp) and other.counters.bad_integrity == 1
