"""The server's CLI under a profiler switched by signals (run by ``bench.server_profile``).

``python bench/profiled_server.py <trio-sfu arguments>`` runs ``trio_sfu.cli`` unchanged (from
whichever tree ``PYTHONPATH`` names: the file needs only the standard library and Trio), with a
Trio instrument added to its ``trio.run``. ``SIGUSR1`` starts a window, ``SIGUSR2`` ends it and
writes, to the prefix in ``BENCH_PROFILE_OUT``:

- ``.steps.json``: the window's length, the scheduler's passes (``before_io_wait``), the
  scheduling steps of each task by name (how often each kind of task woke), the garbage
  collector's runs and time, and the live objects by type at the window's start;
- ``.prof``: a cProfile of the window (unless ``BENCH_PROFILE_CPROFILE=0``), whose call counts
  are exact whatever else the machine was doing.

Counts are what compare between two trees on a busy machine; times are only indications.
"""

from __future__ import annotations

import collections
import cProfile
import gc
import json
import os
import runpy
import signal
import sys
import time
from typing import Any, Optional

import trio
import trio.abc


class WindowRecorder(trio.abc.Instrument):
    """Task steps, scheduler passes and GC runs between `start` and `stop`."""

    def __init__(self, out: str, use_cprofile: bool) -> None:
        self.out = out
        self.use_cprofile = use_cprofile
        self.recording = False
        self.started_at = 0.0
        self.steps: collections.Counter[str] = collections.Counter()
        self.io_waits = 0
        self.gc_runs = [0, 0, 0]
        self.gc_seconds = [0.0, 0.0, 0.0]
        self._gc_started = 0.0
        self.objects: dict[str, int] = {}
        self.profile: Optional[cProfile.Profile] = None

    # ---- trio.abc.Instrument ------------------------------------------------------------------

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if self.recording:
            self.steps[task.name] += 1

    def before_io_wait(self, timeout: float) -> None:
        if self.recording:
            self.io_waits += 1

    # ---- gc.callbacks ----------------------------------------------------------------------------

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if not self.recording:
            return
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            generation = info["generation"]
            self.gc_runs[generation] += 1
            self.gc_seconds[generation] += time.perf_counter() - self._gc_started

    # ---- the window (called from signal handlers, between two bytecodes of the main thread) -------

    def start(self) -> None:
        self.steps.clear()
        self.io_waits = 0
        self.gc_runs, self.gc_seconds = [0, 0, 0], [0.0, 0.0, 0.0]
        self.objects = dict(collections.Counter(
            f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.get_objects()).most_common())
        self.started_at = time.monotonic()
        self.recording = True
        if self.use_cprofile:
            self.profile = cProfile.Profile()
            self.profile.enable()

    def stop(self) -> None:
        if self.profile is not None:
            self.profile.disable()
            self.profile.dump_stats(self.out + ".prof")
            self.profile = None
        self.recording = False
        with open(self.out + ".steps.json", "w", encoding="utf-8") as handle:
            json.dump({"seconds": time.monotonic() - self.started_at, "io_waits": self.io_waits,
                       "gc_runs": self.gc_runs, "gc_seconds": self.gc_seconds,
                       "steps": dict(self.steps.most_common()), "objects": self.objects}, handle, indent=1)


def main() -> None:
    # Run as a file: its own directory is sys.path[0], and must not shadow the server's modules.
    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
        del sys.path[0]
    recorder = WindowRecorder(os.environ["BENCH_PROFILE_OUT"], os.environ.get("BENCH_PROFILE_CPROFILE", "1") != "0")
    gc.callbacks.append(recorder.on_gc)
    signal.signal(signal.SIGUSR1, lambda signum, frame: recorder.start())
    signal.signal(signal.SIGUSR2, lambda signum, frame: recorder.stop())
    run = trio.run

    def run_instrumented(*args: Any, **kwargs: Any) -> Any:
        kwargs["instruments"] = [*kwargs.get("instruments", ()), recorder]
        return run(*args, **kwargs)

    # The CLI calls trio.run once; it finds this one.
    trio.run = run_instrumented
    sys.argv = ["trio_sfu.cli", *sys.argv[1:]]
    runpy.run_module("trio_sfu.cli", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
