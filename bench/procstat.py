"""A process's own CPU time and memory from /proc, for the benchmarks (Linux only, no psutil).

CPU is user+sys of the whole process (all threads) from ``/proc/<pid>/stat`` fields 14 and 15
in clock ticks; memory is ``VmRSS`` from ``/proc/<pid>/status``. A benchmark samples both at the
start and end of its measured window and reports the differences.
"""

from __future__ import annotations

import os
import time

import attrs

_TICKS = os.sysconf("SC_CLK_TCK")


@attrs.frozen
class ProcSample:
    wall: float  # time.monotonic()
    cpu_seconds: float  # user + sys since the process started
    rss_bytes: int


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as handle:
        text = handle.read()
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = text[text.rindex(b")") + 2:].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / _TICKS


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status", "rb") as handle:
        for line in handle:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1]) * 1024  # reported in kB
    return 0


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (``/proc/stat`` line ``cpu``: user, nice,
    system, irq, softirq, steal), to see how much else ran during a window."""
    with open("/proc/stat", "rb") as handle:
        fields = handle.readline().split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / _TICKS


def sample(pid: int) -> ProcSample:
    return ProcSample(time.monotonic(), cpu_seconds(pid), rss_bytes(pid))


def sample_many(pids: list[int]) -> ProcSample:
    """One sample of several processes together (the workers of one server): CPU and RSS summed."""
    return ProcSample(time.monotonic(), sum(cpu_seconds(p) for p in pids), sum(rss_bytes(p) for p in pids))


def cpu_share(start: ProcSample, end: ProcSample) -> float:
    """Cores busy on average between two samples (1.0 = one core fully used)."""
    wall = end.wall - start.wall
    return (end.cpu_seconds - start.cpu_seconds) / wall if wall > 0 else 0.0


def machine() -> dict[str, object]:
    """What the numbers were measured on."""
    import platform

    model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "kernel": platform.release(),
        "clock_ticks_per_second": _TICKS,
    }
