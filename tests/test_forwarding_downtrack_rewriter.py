"""The memoised extension-id rewrite of the fan-out (downtrack._ExtensionRewriter) must give
byte-for-byte what the plain rewrite_extension_ids gives, whatever order packets, maps and
buffers come in — the memo is only a speed-up."""

from __future__ import annotations

from budgets import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from rtp.packet import RtpPacket
from trio_sfu.forwarding.downtrack import _ExtensionRewriter, _shared_rewriter, rewrite_extension_ids

_packets = st.builds(
    lambda exts, two_byte, seq: RtpPacket(96, seq, 2, 3, extensions={**exts, **({200: b"long"} if two_byte and exts else {})},
                                          payload=b"xyz"),
    st.dictionaries(st.integers(1, 14), st.binary(min_size=1, max_size=16), max_size=4),
    st.booleans(),
    st.integers(0, 0xFFFF),
)
_maps = st.dictionaries(st.integers(1, 14), st.integers(1, 14), max_size=6)


def _plain(packet: bytes, id_map) -> bytes:
    buf = bytearray(packet)
    rewrite_extension_ids(buf, id_map)
    return bytes(buf)


@settings(max_examples=examples(2), deadline=None)
@given(st.lists(_packets, min_size=1, max_size=8), st.lists(_maps, min_size=1, max_size=3),
       st.lists(st.integers(0, 1000), min_size=1, max_size=30))
def test_memoised_rewrite_equals_plain_rewrite(packets, maps, order):
    wires = [p.serialize() for p in packets]
    # Fresh rewriters (not the shared registry) so each example starts cold.
    rewriters = [_ExtensionRewriter(m) for m in maps]
    for index in order:
        wire = wires[index % len(wires)]
        for rewriter, id_map in zip(rewriters, maps):
            for _ in range(2):  # the same packet object twice in a row: the fan-out case
                out = bytearray(wire)
                rewriter.rewrite(out, wire)
                assert bytes(out) == _plain(wire, id_map)


def test_a_reused_mutable_buffer_is_not_served_from_the_identity_memo():
    rewriter = _ExtensionRewriter({1: 3})
    buf = bytearray(RtpPacket(96, 1, 2, 3, extensions={1: b"\x10"}, payload=b"p").serialize())
    out = bytearray(buf)
    rewriter.rewrite(out, buf)
    assert RtpPacket.parse(bytes(out)).extensions == {3: b"\x10"}
    buf[:] = RtpPacket(96, 2, 2, 3, extensions={1: b"\x20", 2: b"zz"}, payload=b"p").serialize()
    out = bytearray(buf)
    rewriter.rewrite(out, buf)
    assert RtpPacket.parse(bytes(out)).extensions == {3: b"\x20"}


def test_equal_maps_share_one_rewriter_and_different_maps_do_not():
    assert _shared_rewriter({1: 3, 4: 5}) is _shared_rewriter({4: 5, 1: 3})
    assert _shared_rewriter({1: 3}) is not _shared_rewriter({1: 4})
