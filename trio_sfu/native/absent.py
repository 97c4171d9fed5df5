"""`TRIO_SFU_NATIVE_ABSENT=1`: this process behaves as if the compiled helpers were not built.

The pure-Python twins are what a machine without a compiler runs; `TRIO_SFU_FASTPATH=0` selects
them too, but only where the code asks the flag, and with the modules still importable. To run
the suite the way such a machine would, this switch hides the built modules from the import
system itself: importing `trio_sfu.native._fanout` or `trio_sfu.native._recv` raises
ModuleNotFoundError, as it does when the .so files are not there, so every loader (and any test
that probes for them) takes its not-built branch. `make test-pure` runs the tests this way.

Installed by trio_sfu/native/__init__.py before anything can import a compiled module (they are
submodules of that package); inherited by subprocesses through the environment.
"""

from __future__ import annotations

import importlib.abc
import os
import sys
from importlib.machinery import ModuleSpec
from typing import Optional, Sequence

ENV = "TRIO_SFU_NATIVE_ABSENT"
#: The modules the cffi build scripts produce (build.py, _recv_build.py).
COMPILED_MODULES = ("trio_sfu.native._fanout", "trio_sfu.native._recv")


def requested() -> bool:
    return os.environ.get(ENV, "").strip() == "1"


class HideCompiled(importlib.abc.MetaPathFinder):
    """First on sys.meta_path: the compiled modules are not found, whatever is on disk."""

    def find_spec(self, fullname: str, path: Optional[Sequence[str]], target: object = None) -> Optional[ModuleSpec]:
        if fullname in COMPILED_MODULES:
            raise ModuleNotFoundError(f"No module named {fullname!r} ({ENV}=1: treated as not built)", name=fullname)
        return None  # not ours: the other finders decide


def install() -> None:
    """Hide the compiled modules from this process when the environment asks (idempotent)."""
    if requested() and not any(isinstance(f, HideCompiled) for f in sys.meta_path):
        sys.meta_path.insert(0, HideCompiled())
