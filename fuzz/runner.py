"""Run a target in this process with the mutation engine, counting inputs and crashes."""

from __future__ import annotations

import random
import time
from typing import Optional

import attrs

from fuzz.mutator import Mutator
from fuzz.target import CrashLog, FuzzTarget, run_one


@attrs.define
class RunResult:
    target: str
    engine: str
    executed: int
    seconds: float
    crashes: CrashLog

    def summary(self) -> dict[str, object]:
        return {
            "target": self.target, "engine": self.engine, "executed": self.executed,
            "seconds": round(self.seconds, 2), "distinct_crashes": len(self.crashes.crashes),
            "crashing_inputs": self.crashes.total,
            "crashes": [{"signature": c.signature, "exception": c.exception} for c in self.crashes.crashes.values()],
        }


def run_mutations(target: FuzzTarget, count: int, seed: int = 0, crash_dir: Optional[str] = None) -> RunResult:
    """``count`` inputs: the target's seeds, then mutants of them from a PRNG seeded with ``seed``."""
    mutator = Mutator(target.seeds(), target.max_len, random.Random(seed), target.dictionary)
    log = CrashLog(crash_dir)
    started = time.perf_counter()
    executed = 0
    for data in mutator.inputs(count):
        executed += 1
        crash = run_one(target, data)
        if crash is not None:
            log.record(crash)
    return RunResult(target.name, "mutate", executed, time.perf_counter() - started, log)
