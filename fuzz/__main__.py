"""``python -m fuzz``: run every parser's fuzz target for a number of inputs, one at a time.

Prints, per target, the inputs executed and the crashes found (distinct kinds, and how many
inputs crashed), and exits non-zero if any target crashed. See :mod:`fuzz` for the engines.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from typing import Any

from fuzz.runner import run_mutations
from fuzz.targets import NAMES, load

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _atheris_available() -> bool:
    return importlib.util.find_spec("atheris") is not None


def run_atheris(name: str, count: int, workdir: str, timeout: int) -> dict[str, Any]:
    """One target in a worker process; its stats file and libFuzzer's own log give the counts."""
    os.makedirs(workdir, exist_ok=True)
    stats_path = os.path.join(workdir, "stats.json")
    if os.path.exists(stats_path):
        os.remove(stats_path)
    artifacts_before = set(glob.glob(os.path.join(workdir, "artifacts", "*")))
    log_path = os.path.join(workdir, "libfuzzer.log")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    started = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run(
            [sys.executable, "-m", "fuzz.atheris_worker", name, str(count), workdir, f"--timeout={timeout}"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    seconds = time.perf_counter() - started
    with open(stats_path) as f:
        stats = json.load(f)
    with open(log_path, errors="replace") as f:
        done = re.findall(r"^Done (\d+) runs in (\d+) second", f.read(), re.MULTILINE)
    crashes = list(stats["crashes"])
    # libFuzzer's own findings (an input too slow, out of memory, a signal) end the worker early.
    for artifact in sorted(set(glob.glob(os.path.join(workdir, "artifacts", "*"))) - artifacts_before):
        crashes.append({"signature": f"libFuzzer {os.path.basename(artifact).split('-')[0]}", "exception": artifact})
    if proc.returncode != 0 and not done and len(crashes) == len(stats["crashes"]):
        crashes.append({"signature": f"worker exited with {proc.returncode}", "exception": log_path})
    return {
        "target": name, "engine": "atheris", "executed": stats["executed"],
        "libfuzzer_runs": int(done[-1][0]) if done else None, "seconds": round(seconds, 1),
        "distinct_crashes": len(crashes), "crashing_inputs": stats["crashing_inputs"], "crashes": crashes,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100_000, help="inputs per target (default 100000)")
    parser.add_argument("--target", action="append", choices=NAMES, metavar="NAME",
                        help=f"run only this target (repeatable): {', '.join(NAMES)}")
    parser.add_argument("--engine", choices=["auto", "atheris", "mutate"], default="auto",
                        help="atheris if it is installed (auto), or the in-process mutator")
    parser.add_argument("--workdir", default=os.path.join(ROOT, ".fuzz"), help="corpus, crashes, logs")
    parser.add_argument("--timeout", type=int, default=30, help="atheris: seconds one input may take")
    parser.add_argument("--seed", type=int, default=0, help="mutate: PRNG seed")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)

    engine = args.engine
    if engine == "auto":
        engine = "atheris" if _atheris_available() else "mutate"
    elif engine == "atheris" and not _atheris_available():
        parser.error("atheris is not installed (pip install -e '.[test]' on Linux x86_64)")
    names = args.target or list(NAMES)
    results = []
    if not args.json:
        print(f"{'target':<18} {'engine':<8} {'inputs':>12} {'crashes':>8} {'inputs/s':>9} {'seconds':>8}", flush=True)
    for name in names:
        workdir = os.path.join(args.workdir, name)
        if engine == "atheris":
            result = run_atheris(name, args.count, workdir, args.timeout)
        else:
            result = run_mutations(load(name), args.count, args.seed, os.path.join(workdir, "crashes")).summary()
        results.append(result)
        if not args.json:
            rate = result["executed"] / result["seconds"] if result["seconds"] else 0.0
            print(f"{name:<18} {engine:<8} {result['executed']:>12,} {result['distinct_crashes']:>8} "
                  f"{rate:>9,.0f} {result['seconds']:>8.1f}", flush=True)
            for crash in result["crashes"]:
                print(f"    crash: {crash['signature']}: {crash['exception'][:200]}", flush=True)
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        print()
    else:
        total = sum(r["executed"] for r in results)
        crashed = sum(r["distinct_crashes"] for r in results)
        print(f"{'all':<18} {engine:<8} {total:>12,} {crashed:>8}  (crashes under {args.workdir}/<target>/crashes)")
    return 1 if any(r["distinct_crashes"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
