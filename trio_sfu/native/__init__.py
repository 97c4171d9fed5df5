"""Compiled helpers for the media hot path, each built in place by a cffi (API mode) build
script (`make native`), each with a pure-Python twin used when the extension is missing or
`TRIO_SFU_FASTPATH=0`: the batch UDP reader (`batch_recv`, `_recv`) and the fan-out. A
foundation: no trio, no server layer.

The fan-out, when it is built: which forwarding path this process uses.

`trio_sfu.forwarding.fanout` forwards a packet to all the steady down tracks of a layer in one
call into `_fanout` (fanout.c, built by `python -m trio_sfu.native.build`, the Makefile's
`native` step); without it every down track takes the pure Python path, which produces the
same datagrams. `TRIO_SFU_FASTPATH`: `0` forces the pure path, `1` requires the compiled one
(an import failure is then an error, not a fall-back); unset: compiled when built.
`TRIO_SFU_NATIVE_ABSENT=1` makes the compiled modules unimportable, as if never built (absent.py).
"""

from __future__ import annotations

import importlib.util
import os
import socket
from types import ModuleType
from typing import Callable, Optional

import attrs

from trio_sfu.native import absent

ENV = "TRIO_SFU_FASTPATH"

absent.install()


def load_compiled(name: str) -> tuple[Optional[ModuleType], str]:
    """The compiled module trio_sfu.native.<name>, or None and why it could not be loaded (not
    built, built for another Python, or hidden by TRIO_SFU_NATIVE_ABSENT=1)."""
    qualified = f"trio_sfu.native.{name}"
    try:
        if importlib.util.find_spec(qualified) is None:
            raise ImportError(f"no trio_sfu/native/{name} module: `make native` builds it")
        return importlib.import_module(qualified), ""
    except ImportError as exc:
        return None, str(exc)


def _load() -> tuple[Optional[ModuleType], str]:
    setting = os.environ.get(ENV, "").strip()
    if setting == "0":
        return None, f"pure Python ({ENV}=0)"
    module, missing = load_compiled("_fanout")
    if module is None:
        if setting == "1":
            raise RuntimeError(f"{ENV}=1 but the compiled fan-out cannot be loaded: {missing}")
        return None, f"pure Python (compiled fan-out not loaded: {missing})"
    return module, "compiled (cffi)"


@attrs.frozen
class NativeSendTarget:
    """How the compiled path sends for one downlink: the libsrtp context to protect with
    (rtp.srtp.SrtpContext.outbound_handle), the UDP socket's descriptor and the peer's
    address, and where the counts of what it did go (sent, dropped for a full socket buffer,
    other send errors, SRTP failures)."""

    srtp_handle: int
    fd: int
    address: tuple[str, int]
    account: Callable[[int, int, int, int], None]
    #: What must outlive the compiled path's use of the handle and descriptor (the SRTP
    #: context owning the libsrtp session, the socket): held as long as the target is.
    owners: tuple = ()


def packed_address(host: str) -> Optional[tuple[int, bytes]]:
    """(address family, packed address) of a numeric IPv4/IPv6 host for fp_set_address;
    None for anything else."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return family, socket.inet_pton(family, host)
    except OSError:
        return None


compiled, DESCRIPTION = _load()
#: Whether the compiled fan-out is in use in this process.
FAST_PATH: bool = compiled is not None

__all__ = ["DESCRIPTION", "ENV", "FAST_PATH", "NativeSendTarget", "compiled", "load_compiled", "packed_address"]
