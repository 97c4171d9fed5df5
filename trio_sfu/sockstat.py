"""Datagrams the kernel dropped on UDP sockets because their receive buffers were full.

Loss between two of our processes on one machine has two causes: a receive buffer that
overflowed while its reader was starved of CPU, or a bug of ours. Linux counts the first per
socket (the ``drops`` column of ``/proc/net/udp`` and ``udp6``, the same counter as
``SO_RXQ_OVFL``), so a load test can tell them apart: loss the kernel did not count is ours.
Elsewhere (or without /proc) the count is unknown: None.
"""

from __future__ import annotations

import os
import socket

_TABLES = ("udp", "udp6")
_INODE, _DROPS = 9, 12  # columns of a /proc/net/udp line split on whitespace


def drops_by_inode(pid: int | str = "self") -> dict[int, int] | None:
    """Receive-buffer drops of every UDP socket in ``pid``'s network namespace, by socket inode."""
    found: dict[int, int] = {}
    read_any = False
    for table in _TABLES:
        try:
            with open(f"/proc/{pid}/net/{table}", encoding="ascii") as handle:
                lines = handle.read().splitlines()[1:]
        except OSError:
            continue
        read_any = True
        for line in lines:
            fields = line.split()
            if len(fields) > _DROPS:
                found[int(fields[_INODE])] = int(fields[_DROPS])
    return found if read_any else None


def socket_drops(sock: socket.socket) -> int | None:
    """Datagrams the kernel dropped on this (open) UDP socket since it was made; None if unknown."""
    try:
        inode = os.fstat(sock.fileno()).st_ino
    except (OSError, ValueError):  # closed
        return None
    table = drops_by_inode()
    if table is None:
        return None
    return table.get(inode)


def process_drops(pid: int) -> int | None:
    """Receive-buffer drops summed over the UDP sockets process ``pid`` has open; None if unknown."""
    table = drops_by_inode(pid)
    if table is None:
        return None
    try:
        entries = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    total = 0
    for entry in entries:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{entry}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            total += table.get(int(target[len("socket:["):-1]), 0)
    return total
