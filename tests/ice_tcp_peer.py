"""Our client over ICE-TCP, for tests: a `DatagramSocket` whose datagrams travel one TCP connection.

`TcpTunnel` is what a client with UDP blocked has left: whatever the client's PeerSession sends
to the server's UDP candidate goes, RFC 4571-framed, over a TCP connection to the server's
ICE/TCP port, and what comes back on it is handed to the session as if from that candidate.
Datagrams to anywhere else are lost, as blocked UDP is. The server sees a real ICE-TCP client:
a TCP connection whose first frame is an ICE check, then DTLS, SRTP and SCTP, all framed.

`paused` stops reading the connection (a slow reader): the server's queue for it fills.
"""

from __future__ import annotations

import collections
import socket

import trio

from rtp.peer_transport_events import Address
from rtp.tcp_framing import FrameDecoder, encode_frame


class TcpTunnel:
    """A DatagramSocket for `trio_sfu.client` PCs: ICE-TCP to `server_tcp`, standing for `server_udp`."""

    def __init__(self, server_udp: Address, server_tcp: Address) -> None:
        self.server_udp = server_udp
        # A blocking connect to a local port is immediate; the client's bind hook is synchronous.
        self.sock = socket.create_connection(server_tcp, timeout=5)
        self.sock.setblocking(False)
        self.fileno = self.sock.fileno
        self.decoder = FrameDecoder()
        self.frames: collections.deque[bytes] = collections.deque()
        self.unsent = bytearray()
        self.sent_elsewhere = 0
        self.paused = False
        self.closed_by_server = False

    @classmethod
    def binder(cls, server_udp: Address, server_tcp: Address, made: list["TcpTunnel"] | None = None):
        """A `BindDatagram` for LiveKitClient.connect(bind_datagram=...): one tunnel per PC."""
        def bind(host: str, port: int) -> "TcpTunnel":
            tunnel = cls(server_udp, server_tcp)
            if made is not None:
                made.append(tunnel)
            return tunnel
        return bind

    # ---- DatagramSocket -----------------------------------------------------------------------

    def sendto(self, data: bytes, addr: Address) -> int:
        if tuple(addr) != tuple(self.server_udp):
            self.sent_elsewhere += 1  # UDP is blocked: nothing but the tunnel reaches anyone
            return len(data)
        self.unsent += encode_frame(data)
        self._push()
        return len(data)

    def recvfrom_into(self, buffer: bytearray) -> tuple[int, Address]:
        frame = self._next_frame()
        buffer[:len(frame)] = frame
        return len(frame), self.server_udp

    def recvfrom(self, bufsize: int) -> tuple[bytes, Address]:
        return self._next_frame(), self.server_udp

    def getsockname(self) -> Address:
        host, port = self.sock.getsockname()[:2]
        return host, port

    async def wait_readable(self) -> None:
        while True:
            if self.frames and not self.paused:
                await trio.lowlevel.checkpoint()
                return
            if self.paused or self.closed_by_server:
                await trio.sleep(0.05)
                continue
            await trio.lowlevel.wait_readable(self.sock)
            return

    def close(self) -> None:
        self.sock.close()

    # ---- internals ------------------------------------------------------------------------------

    def _push(self) -> None:
        try:
            sent = self.sock.send(self.unsent)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.unsent.clear()  # the server closed it
            return
        del self.unsent[:sent]

    def _next_frame(self) -> bytes:
        if self.paused:
            raise BlockingIOError
        self._push()
        while not self.frames:
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                data = b""
            if not data:
                self.closed_by_server = True
                raise BlockingIOError
            self.frames.extend(self.decoder.receive_data(data))
        return self.frames.popleft()
