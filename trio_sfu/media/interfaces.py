"""The machine's interface addresses, and which of them the media port offers as ICE candidates.

`interface_addresses()` asks the OS for every address of every interface with getifaddrs(3),
called through ctypes: no new dependency (psutil is not one), no subprocess (`ip addr` is not
a server's business), the same call on Linux and macOS, and one call gives name, flags and
address together (Python's `socket.if_nameindex` has names only, and SIOCGIFADDR one IPv4
address per interface).

`usable_addresses()` is the policy, LiveKit's (pion's multi-address UDP mux, which LiveKit
builds from `rtc.udp_port`): interfaces that are up, filtered by `rtc.interfaces.includes` /
`excludes` (exact names; includes win, as LiveKit's filter), no link-local or unspecified
address, loopback only when a loopback candidate is enabled — or when it is all there is, so
a machine with no network still serves itself, as LiveKit's local-address discovery falls back.
Order is priority: the default route's address first (the one a LAN peer most likely reaches),
then the OS's order, loopback last.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
import sys
from typing import Iterable, Optional, Sequence

import attrs

# <net/if.h>; the same values on Linux and the BSDs.
IFF_UP = 0x1
IFF_LOOPBACK = 0x8

# Where the address sits in a sockaddr_in / sockaddr_in6 (both layouts: Linux's u16 family,
# the BSDs' u8 length + u8 family, take the same two bytes before the port).
_IPV4_OFFSET, _IPV4_SIZE = 4, 4
_IPV6_OFFSET, _IPV6_SIZE = 8, 16
_BSD_SOCKADDR = sys.platform == "darwin" or "bsd" in sys.platform


class _Ifaddrs(ctypes.Structure):
    pass


_Ifaddrs._fields_ = [
    ("ifa_next", ctypes.POINTER(_Ifaddrs)),
    ("ifa_name", ctypes.c_char_p),
    ("ifa_flags", ctypes.c_uint),
    ("ifa_addr", ctypes.c_void_p),
    ("ifa_netmask", ctypes.c_void_p),
    ("ifa_ifu", ctypes.c_void_p),  # broadcast or point-to-point peer address
    ("ifa_data", ctypes.c_void_p),
]


@attrs.frozen
class InterfaceAddress:
    """One address of one interface, as the OS lists it."""

    interface: str
    address: str
    family: socket.AddressFamily
    up: bool
    loopback: bool

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return ipaddress.ip_address(self.address.split("%", 1)[0])


def _family_of(sockaddr: int) -> int:
    head = ctypes.string_at(sockaddr, 2)
    if _BSD_SOCKADDR:
        return head[1]
    return int.from_bytes(head, sys.byteorder)


def interface_addresses() -> list[InterfaceAddress]:
    """Every IPv4 and IPv6 address of every interface, in the OS's order (getifaddrs(3)).
    Raises OSError when the OS cannot list them."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        getifaddrs, freeifaddrs = libc.getifaddrs, libc.freeifaddrs
    except (OSError, AttributeError) as exc:
        raise OSError(f"getifaddrs is not available here: {exc}") from None
    getifaddrs.argtypes = [ctypes.POINTER(ctypes.POINTER(_Ifaddrs))]
    getifaddrs.restype = ctypes.c_int
    freeifaddrs.argtypes = [ctypes.POINTER(_Ifaddrs)]
    freeifaddrs.restype = None
    head = ctypes.POINTER(_Ifaddrs)()
    if getifaddrs(ctypes.byref(head)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"getifaddrs failed: {os.strerror(err)}")
    found: list[InterfaceAddress] = []
    try:
        entry = head
        while entry:
            item = entry.contents
            entry = item.ifa_next
            if not item.ifa_addr or item.ifa_name is None:
                continue  # an interface without an address (or a name) lists no address
            family = _family_of(item.ifa_addr)
            if family == socket.AF_INET:
                raw = ctypes.string_at(item.ifa_addr + _IPV4_OFFSET, _IPV4_SIZE)
            elif family == socket.AF_INET6:
                raw = ctypes.string_at(item.ifa_addr + _IPV6_OFFSET, _IPV6_SIZE)
            else:
                continue  # AF_PACKET / AF_LINK: a hardware address, not ours to offer
            # Linux names an IPv4 alias by its label ("eth0:1"); an interface name never holds
            # a colon, and the interface is what `rtc.interfaces` names.
            name = item.ifa_name.decode("utf-8", "replace").split(":", 1)[0]
            found.append(InterfaceAddress(
                interface=name,
                address=socket.inet_ntop(family, raw),
                family=socket.AddressFamily(family),
                up=bool(item.ifa_flags & IFF_UP),
                loopback=bool(item.ifa_flags & IFF_LOOPBACK),
            ))
    finally:
        freeifaddrs(head)
    return found


def interface_allowed(name: str, includes: Sequence[str], excludes: Sequence[str]) -> bool:
    """LiveKit's `rtc.interfaces` filter: with includes, only those names; else not the excludes."""
    if includes:
        return name in includes
    return name not in excludes


def usable_addresses(found: Iterable[InterfaceAddress], *, include_loopback: bool,
                     includes: Sequence[str] = (), excludes: Sequence[str] = (),
                     families: Sequence[int] = (socket.AF_INET,),
                     preferred: Optional[str] = None) -> list[InterfaceAddress]:
    """The addresses worth a host candidate, highest priority first (see the module's doc)."""
    real: list[InterfaceAddress] = []
    loopback: list[InterfaceAddress] = []
    seen: set[str] = set()
    for entry in found:
        if not entry.up or entry.family not in families or entry.address in seen:
            continue
        if not interface_allowed(entry.interface, includes, excludes):
            continue
        ip = entry.ip
        if ip.is_link_local or ip.is_unspecified or ip.is_multicast:
            continue
        seen.add(entry.address)
        # The interface's flag decides, as pion's does (127/8 lives on the loopback interface).
        (loopback if entry.loopback else real).append(entry)
    if preferred is not None:
        # Stable: the preferred address first, the rest in the OS's order.
        real.sort(key=lambda entry: entry.address != preferred)
    if include_loopback or not real:
        return real + loopback
    return real


__all__ = ["IFF_LOOPBACK", "IFF_UP", "InterfaceAddress", "interface_addresses", "interface_allowed",
           "usable_addresses"]
