"""trio_sfu.sockstat reads the kernel's per-socket count of datagrams dropped for a full receive
buffer — checked against the kernel itself: every datagram sent to a socket nobody reads is either
queued or counted dropped, never lost without a count."""

from __future__ import annotations

import os
import socket
import sys

import pytest

from trio_sfu.sockstat import process_drops, socket_drops

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/net/udp is Linux's")


def test_drops_of_an_overflowing_socket_are_counted_exactly() -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the kernel's minimum or so
        receiver.bind(("127.0.0.1", 0))
        receiver.setblocking(False)
        assert socket_drops(receiver) == 0
        before = process_drops(os.getpid())
        sent = 500
        for _ in range(sent):
            sender.sendto(bytes(1000), receiver.getsockname())
        queued = 0
        while True:
            try:
                receiver.recv(2048)
            except BlockingIOError:
                break
            queued += 1
        dropped = socket_drops(receiver)
        assert dropped is not None and dropped > 0 and queued + dropped == sent
        assert process_drops(os.getpid()) - before == dropped
    finally:
        sender.close()
        receiver.close()
    assert socket_drops(receiver) is None  # closed: unknown, not zero


def test_an_unknown_process_has_no_count() -> None:
    assert process_drops(2**22 + 12345) is None
