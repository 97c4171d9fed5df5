"""Batch receive for the UDP mux: one call drains up to `batch` queued datagrams of a
non-blocking socket, in arrival order, as (bytes, (host, port)) pairs.

Two readers that behave the same (tests/test_batch_recv.py holds them to it on real sockets):
`MmsgReader`, one `recvmmsg` system call per batch into a reused ring of slots (the compiled
`trio_sfu.native._recv`, recv_batch.c), and `LoopReader`, its pure-Python twin, a loop of
non-blocking `recvfrom_into` into one reused buffer until the socket is empty or the batch full.
`batch_reader` picks: the compiled one for a kernel socket when the extension is built and
`TRIO_SFU_FASTPATH` is not "0"; the twin otherwise (an in-memory network's socket, no compiler).

Both stop at `batch` datagrams read, so one busy socket cannot keep its reader from yielding
(the caller checkpoints between batches); a batch returns short when the socket ran empty (or
when it read an oversized datagram), so the caller can wait for readability instead of asking
again (a socket that still holds datagrams is readable at once). A datagram larger than
`slot_size` is dropped (never truncated and handed on) and counted by `on_oversized`; an
ICMP error the kernel reports on a read is skipped, as it concerns an earlier send.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Callable, Optional, Protocol

from rtp.peer_transport_events import Address

from trio_sfu.datagram import UdpSocket
from trio_sfu.log import get_logger

#: Datagrams per batch: the most one socket hands on before its reader yields to the others.
DEFAULT_BATCH = 32
#: Largest datagram accepted. WebRTC keeps datagrams under the path MTU (ICE, DTLS, SRTP, SCTP
#: all size for ~1200-1500 bytes); anything past this is not a peer's and is dropped, counted.
DEFAULT_SLOT_SIZE = 8192
#: Address tuples remembered per reader (sources are few: one or two per peer connection);
#: past it the cache starts again, it is only a cache.
ADDRESS_CACHE_SIZE = 4096

Datagram = tuple[bytes, Address]
_WOULD_BLOCK = (BlockingIOError, InterruptedError)
# What a read may report about an earlier send to a peer that is gone (ICMP): skip, read on.
_SEND_ERRORS = (errno.ECONNREFUSED, errno.ECONNRESET, errno.EHOSTUNREACH, errno.ENETUNREACH)

from trio_sfu.native import load_compiled

#: The compiled reader's module, or None and why (not built: `make native`; or hidden).
_recv, MISSING = load_compiled("_recv")


def fast_path_enabled() -> bool:
    """False when the environment asks for the pure-Python paths (`TRIO_SFU_FASTPATH=0`)."""
    return os.environ.get("TRIO_SFU_FASTPATH", "1") != "0"


def compiled_available() -> bool:
    return _recv is not None


class ReadableSocket(Protocol):
    def recvfrom_into(self, buffer: bytearray) -> tuple[int, Address]: ...


class BatchReader(Protocol):
    batch: int
    slot_size: int

    def receive(self) -> list[Datagram]:
        """Up to `batch` queued datagrams, oldest first; [] when none is queued."""


def _ignore() -> None:
    pass


class LoopReader:
    """The pure-Python batch reader: `recvfrom_into` until EAGAIN or `batch` datagrams."""

    def __init__(self, sock: ReadableSocket, *, batch: int = DEFAULT_BATCH, slot_size: int = DEFAULT_SLOT_SIZE,
                 on_oversized: Callable[[], None] = _ignore) -> None:
        if batch < 1 or slot_size < 1:
            raise ValueError("batch and slot_size must be positive")
        self.batch = batch
        self.slot_size = slot_size
        self._recv_into = sock.recvfrom_into
        # One byte more than a slot: a datagram that fills it did not fit one.
        self._buffer = bytearray(slot_size + 1)
        self._view = memoryview(self._buffer)
        self._on_oversized = on_oversized

    def receive(self) -> list[Datagram]:
        out: list[Datagram] = []
        recv_into, view, slot, batch = self._recv_into, self._view, self.slot_size, self.batch
        while len(out) < batch:
            try:
                size, addr = recv_into(self._buffer)
            except _WOULD_BLOCK:
                break
            except (ConnectionResetError, ConnectionRefusedError):
                continue
            except OSError as exc:
                if exc.errno in _SEND_ERRORS:
                    continue
                raise
            if size > slot:
                self._on_oversized()
                continue
            out.append((bytes(view[:size]), (addr[0], addr[1])))
        return out


class MmsgReader:
    """The compiled batch reader: one `recvmmsg` per batch into a ring of `batch` slots."""

    def __init__(self, fd: int, *, batch: int = DEFAULT_BATCH, slot_size: int = DEFAULT_SLOT_SIZE,
                 on_oversized: Callable[[], None] = _ignore) -> None:
        if _recv is None:
            raise RuntimeError("trio_sfu.native._recv is not built (make native)")
        if batch < 1 or slot_size < 1:
            raise ValueError("batch and slot_size must be positive")
        ffi, lib = _recv.ffi, _recv.lib
        self.batch = batch = min(batch, lib.TRIO_SFU_RECV_MAX_BATCH)
        self.slot_size = slot_size
        self._fd = fd
        self._ring = ffi.new("char[]", batch * slot_size)
        self._ring_bytes = ffi.buffer(self._ring)  # slicing it makes bytes: the one copy out
        self._lengths = ffi.new("int[]", batch)
        self._keys = ffi.new("uint64_t[]", batch)
        self._addrs = ffi.new("struct sockaddr_storage[]", batch)
        self._addrlens = ffi.new("int[]", batch)
        self._recv_batch = lib.trio_sfu_recv_batch
        self._ffi = ffi
        self._on_oversized = on_oversized
        self._by_key: dict[int, Address] = {}
        self._by_raw: dict[bytes, Address] = {}

    def receive(self) -> list[Datagram]:
        while True:
            n = self._recv_batch(self._fd, self._ring, self.slot_size, self.batch, self._lengths, self._keys,
                                 self._addrs, self._addrlens)
            if n >= 0:
                break
            if -n not in _SEND_ERRORS:
                raise OSError(-n, os.strerror(-n))
        out: list[Datagram] = []
        lengths, keys, ring, slot, by_key = self._lengths, self._keys, self._ring_bytes, self.slot_size, self._by_key
        for i in range(n):
            size = lengths[i]
            if size < 0:
                self._on_oversized()
                continue
            key = keys[i]
            addr = by_key.get(key) if key else self._other_address(i)
            if addr is None:
                addr = self._ipv4_address(key)
            start = i * slot
            out.append((ring[start:start + size], addr))
        return out

    def _ipv4_address(self, key: int) -> Address:
        by_key = self._by_key
        if len(by_key) >= ADDRESS_CACHE_SIZE:
            by_key.clear()
        addr = by_key[key] = (socket.inet_ntoa(((key >> 16) & 0xFFFFFFFF).to_bytes(4, "big")), key & 0xFFFF)
        return addr

    def _other_address(self, i: int) -> Address:
        """An IPv6 source, named as Python's own socket module names it (scope included)."""
        raw = self._ffi.buffer(self._addrs + i, self._addrlens[i])[:]
        addr = self._by_raw.get(raw)
        if addr is None:
            if len(self._by_raw) >= ADDRESS_CACHE_SIZE:
                self._by_raw.clear()
            family = int.from_bytes(raw[:2], "little")
            if family != socket.AF_INET6 or len(raw) < 28:
                raise OSError(errno.EAFNOSUPPORT, f"datagram from address family {family}")
            port = int.from_bytes(raw[2:4], "big")
            flowinfo = int.from_bytes(raw[4:8], "big")
            scope_id = int.from_bytes(raw[24:28], "little")
            host = socket.inet_ntop(socket.AF_INET6, raw[8:24])
            if scope_id:
                host = socket.getnameinfo((host, port, flowinfo, scope_id),
                                          socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)[0]
            addr = self._by_raw[raw] = (host, port)
        return addr


def batch_reader(sock: ReadableSocket, *, batch: int = DEFAULT_BATCH, slot_size: int = DEFAULT_SLOT_SIZE,
                 on_oversized: Callable[[], None] = _ignore, fast: Optional[bool] = None) -> BatchReader:
    """The compiled reader for a kernel socket when built and allowed (`fast`: None asks the
    environment), else the pure-Python one."""
    if fast is None:
        fast = fast_path_enabled()
    kernel = isinstance(sock, (UdpSocket, socket.socket))
    if fast and kernel and _recv is not None:
        return MmsgReader(sock.fileno(), batch=batch, slot_size=slot_size, on_oversized=on_oversized)  # type: ignore[union-attr]
    if fast and kernel and not _warned[0]:
        _warned[0] = True
        _log.warning("trio_sfu.native._recv is not loaded: UDP is read one datagram per call", kv={"why": MISSING})
    return LoopReader(sock, batch=batch, slot_size=slot_size, on_oversized=on_oversized)


_warned = [False]
_log = get_logger("trio_sfu.native.batch_recv")
