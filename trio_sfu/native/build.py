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
import shutil
import sys

HERE = pathlib.Path(__file__).resolve().parent

CDEF = """
#define FP_MAX_BATCH ...
#define FP_MAX_PACKET ...
#define FP_SLOT ...
#define FP_SENT ...
#define FP_PYTHON ...
#define FP_FAILED ...
typedef int (*fp_protect_fn)(void *ctx, void *rtp, int *len);
typedef struct {
    int armed;
    int layer;
    uint32_t src_ssrc;
    uint32_t out_ssrc;
    int16_t pt_map[128];
    int vp8;
    int64_t source_start, offset, ts_offset, pid_offset, tl0_offset;
    int64_t unwrap_last, highest_in, last_seq, last_ts;
    double last_ts_at;
    int32_t last_pid, last_tl0;
    int64_t packets_sent, octets_sent, dropped_send_failed;
    int64_t udp_sent, udp_full, udp_error, srtp_failed;
    int64_t mask;
    int64_t *h_ext;
    int8_t *h_layer;
    uint32_t *h_src_ssrc;
    uint16_t *h_in_seq;
    uint32_t *h_ts;
    int32_t *h_pid;
    int16_t *h_tl0;
    double *h_resent;
    int64_t *tw_state;
    int64_t tw_mask;
    int64_t *tw_seq;
    double *tw_sent_at;
    uint32_t *tw_size;
    int32_t *tw_cluster;
    int8_t *tw_reported;
    int64_t pending_tw_seq;
    int64_t tw_added;
    int target_layer, effective_target;
    double effective_checked_at;
    int64_t dropped_other_layer;
    void *srtp;
    fp_protect_fn protect;
    int fd;
    ...;
} fp_track;
int fp_forward(const uint8_t *pkt, int len, int pay_start, int pay_end,
               const uint8_t *region, int region_len, int region_start, int region_end,
               int set_extension_bit, int tw_at, int tw_added,
               double now, fp_track **tracks, int n, uint8_t *scratch, int8_t *status);
int fp_drop_other_layer(int layer, double now, double period, const int8_t *effective_for, int targets,
                        fp_track **tracks, int n, int8_t *status);
int fp_set_address(fp_track *t, int family, const uint8_t *packed, int port);
"""


def ffibuilder():
    import cffi

    builder = cffi.FFI()
    builder.cdef(CDEF)
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
