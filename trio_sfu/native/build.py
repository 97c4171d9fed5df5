"""Builds the compiled fan-out (`trio_sfu.native._fanout`) in place with cffi's API mode,
out of line: `python -m trio_sfu.native.build` (the Makefile's `native` step). Needs a C
compiler and Python's headers, nothing from the network. A failed build leaves the pure
Python path (trio_sfu.native.FAST_PATH stays False), never a broken install.

SRTP needs no library of its own here: the fan-out calls the `srtp_protect` of the
pylibsrtp build that created the subscriber's context (its address is handed over at run
time), so both paths protect with one libsrtp and one context.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import sys

HERE = pathlib.Path(__file__).resolve().parent

HEADER = HERE / "fanout.h"
_CDEF_BEGIN, _CDEF_END = "/* cffi cdef: begin */", "/* cffi cdef: end */"
_PRIVATE_FIELDS = re.compile(r"/\* cffi: private[^*]*\*/[^}]*")
_DEFINE_VALUE = re.compile(r"^(#define\s+\w+)\s.*$", re.MULTILINE)


def cdef_from_header(header: str) -> str:
    """cffi's declarations, out of fanout.h's marked region: constants' values become `...`
    (the compiler supplies them) and the struct's private fields a `...;` (cffi then asks the
    compiler for the layout instead of trusting a copy of it)."""
    try:
        region = header[header.index(_CDEF_BEGIN) + len(_CDEF_BEGIN):header.index(_CDEF_END)]
    except ValueError:
        raise ValueError(f"fanout.h has no {_CDEF_BEGIN} ... {_CDEF_END} region") from None
    region = _PRIVATE_FIELDS.sub("...;\n", region)
    return _DEFINE_VALUE.sub(r"\1 ...", region)




def ffibuilder():
    import cffi

    builder = cffi.FFI()
    builder.cdef(cdef_from_header(HEADER.read_text()))
    builder.set_source("trio_sfu.native._fanout", '#include "fanout.h"',
                       sources=[str(HERE / "fanout.c")], include_dirs=[str(HERE)],
                       extra_compile_args=["-O2", "-std=gnu11", "-Wall"])
    return builder


def build() -> pathlib.Path:
    """Compile (intermediates under the checkout's build/, which git ignores) and put the
    module next to this file; its path."""
    scratch = HERE.parent.parent / "build" / "native"
    scratch.mkdir(parents=True, exist_ok=True)
    built = pathlib.Path(ffibuilder().compile(tmpdir=str(scratch), verbose=False))
    target = HERE / built.name
    # A new file renamed over the old one: a process that has the old one loaded (this one
    # included: importing the package loads it) keeps its mapping intact.
    staged = target.with_name(target.name + ".new")
    shutil.copyfile(built, staged)
    os.replace(staged, target)
    return target


if __name__ == "__main__":
    try:
        print(f"native: built {build()}")
    except Exception as exc:  # a missing compiler or headers: the pure path serves
        print(f"native: not built ({type(exc).__name__}: {exc}); the pure Python fan-out will be used",
              file=sys.stderr)
        sys.exit(0 if "--allow-failure" in sys.argv else 1)
