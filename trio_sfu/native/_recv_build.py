"""Builds `trio_sfu.native._recv` (recv_batch.c) in place with cffi's API mode:
`python -m trio_sfu.native._recv_build` (what `make native` runs). Needs a C compiler and the
Python headers; without them the build fails and the mux uses its pure-Python reader."""

from __future__ import annotations

import pathlib
import shutil
import tempfile

import cffi

HERE = pathlib.Path(__file__).resolve().parent

CDEF = """
struct sockaddr_storage { unsigned short ss_family; ...; };
#define TRIO_SFU_RECV_MAX_BATCH ...
int trio_sfu_recv_batch(int fd, char *ring, int slot_size, int max, int *lengths,
                        uint64_t *keys, struct sockaddr_storage *addrs, int *addrlens);
"""


def builder() -> cffi.FFI:
    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    ffi.set_source("trio_sfu.native._recv", (HERE / "recv_batch.c").read_text(),
                   extra_compile_args=["-O2"])
    return ffi


def build() -> pathlib.Path:
    """Compile the extension next to this file; returns its path."""
    with tempfile.TemporaryDirectory(prefix="trio-sfu-recv-") as tmp:
        # cffi writes the generated C and objects in tmp and the module below it by its dotted name.
        built = pathlib.Path(builder().compile(tmpdir=tmp, verbose=False))
        target = HERE / built.name
        shutil.copyfile(built, target)
    return target


if __name__ == "__main__":
    print(build())
