"""The datagram socket seam shared by the server's UDP mux and our client's peer connections.

`DatagramSocket` is the small part of a non-blocking UDP socket they use; `UdpSocket` is the
kernel's (its methods are the socket's own bound methods, so the media path pays nothing for the
seam), and `trio_sfu.testing.memory_network` provides one in memory, delivered on Trio's clock,
so whole servers and clients run under `MockClock`.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Callable, Protocol

import trio

from rtp.peer_transport_events import Address

#: Send and receive buffers asked of the kernel (capped by net.core.*mem_max; the default still works).
SOCKET_BUFFER = 4 * 1024 * 1024


class DatagramSocket(Protocol):
    """A bound, non-blocking datagram socket: the subset of `socket.socket` the mux and our
    client use, plus an awaitable `wait_readable`."""

    def recvfrom_into(self, buffer: bytearray) -> tuple[int, Address]:
        """One queued datagram into `buffer`; raises BlockingIOError when none is queued."""

    def recvfrom(self, bufsize: int) -> tuple[bytes, Address]:
        """One queued datagram; raises BlockingIOError when none is queued."""

    def sendto(self, data: bytes, addr: Address) -> int:
        """Send without blocking; raises BlockingIOError when the send buffer is full and
        OSError (EBADF) once closed."""

    def getsockname(self) -> Address: ...

    async def wait_readable(self) -> None:
        """Until a datagram is queued (a checkpoint even when one already is)."""

    def close(self) -> None: ...


#: Binds a DatagramSocket at (host, port); port 0 picks a free one.
BindDatagram = Callable[[str, int], DatagramSocket]


class UdpSocket:
    """A DatagramSocket on the kernel's UDP."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock
        # The socket's own bound methods, not wrappers: the media path pays no extra call.
        self.recvfrom_into = sock.recvfrom_into
        self.recvfrom = sock.recvfrom
        self.sendto = sock.sendto
        self.getsockname = sock.getsockname
        self.fileno = sock.fileno

    @classmethod
    def bind(cls, host: str, port: int) -> "UdpSocket":
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                # Capped by net.core.*mem_max; the default still works.
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
            sock.bind((host, port))
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    async def wait_readable(self) -> None:
        await trio.lowlevel.wait_readable(self._sock)

    def close(self) -> None:
        self._sock.close()
