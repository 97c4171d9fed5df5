"""Profile the server process under a load scenario, and compare two profiles by their counts.

    python -m bench.server_profile run livestream --out /tmp/after [--tree DIR] [--subscribers N]
                                       [--window S] [--no-cprofile]
    python -m bench.server_profile compare /tmp/base /tmp/after [--per send_rtp] [--top 40]

``run`` is ``python -m bench <scenario>`` with the server started as ``bench/profiled_server.py``
(from the tree ``--tree`` names, this one by default; the load tester is always this tree's, so
two trees see the same load) and profiled over the measuring window only: task steps per task,
scheduler passes, GC runs, live objects by type, and a cProfile. ``compare`` lines up two such
runs function by function (by file tail and name): calls and own time per unit, where the unit
is one call of ``--per`` (e.g. ``send_rtp``: per forwarded packet) or, without it, one second.

Why counts: on a shared machine a run's CPU time moves by a third with the neighbours' load,
while how many times each function ran per forwarded packet does not.
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import signal
import sys
import time
from typing import Any, Optional

from .scenarios import SCENARIOS, run_scenario

_WRAPPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "profiled_server.py")


def profile_scenario(name: str, out: str, *, tree: Optional[str] = None, subscribers: Optional[int] = None,
                     warmup: float = 3.0, window: float = 5.0, use_cprofile: bool = True,
                     cluster: bool = False) -> dict[str, Any]:
    """Run scenario `name` with a profiled server; its files are written to the prefix `out`.
    `cluster`: the server as one node of a cluster (`--workers 1` on a throwaway redis-server)."""
    scenario = SCENARIOS[name] if subscribers is None else SCENARIOS[name].scaled(subscribers)
    env = dict(os.environ, BENCH_PROFILE_OUT=out, BENCH_PROFILE_CPROFILE="1" if use_cprofile else "0")
    if tree is not None:
        env["PYTHONPATH"] = os.path.abspath(tree)
    steps_file = out + ".steps.json"
    if os.path.exists(steps_file):
        os.unlink(steps_file)

    def on_window(pid: int, started: bool) -> None:
        os.kill(pid, signal.SIGUSR1 if started else signal.SIGUSR2)

    result = run_scenario(scenario, warmup=warmup, window=window, probe=False, server_command=[sys.executable, _WRAPPER],
                          server_env=env, on_window=on_window, workers=1 if cluster else 0)
    # The server wrote its files on SIGUSR2, before the scenario stopped it.
    deadline = time.monotonic() + 10
    while not os.path.exists(steps_file) and time.monotonic() < deadline:
        time.sleep(0.1)
    return result


def _short(path: str) -> str:
    """A file as both trees name it: from the package on, without the checkout's directory."""
    for marker in ("site-packages/", "/trio_sfu/", "/rtp/", "/sdp/", "/bench/"):
        if marker in path:
            tail = path.split(marker, 1)[1]
            return tail if marker == "site-packages/" else marker.strip("/") + "/" + tail
    return path


def load_counts(prefix: str) -> dict[tuple[str, str], tuple[int, float]]:
    """(file, function) -> (calls, own seconds) of a run's cProfile."""
    counts: dict[tuple[str, str], tuple[int, float]] = {}
    for (path, _line, function), (_primitive, calls, own, _cumulative, _callers) in pstats.Stats(prefix + ".prof").stats.items():
        key = (_short(path), function)
        old_calls, old_own = counts.get(key, (0, 0.0))
        counts[key] = (old_calls + calls, old_own + own)
    return counts


def compare(base: str, after: str, per: Optional[str], top: int) -> str:
    runs = []
    for prefix in (base, after):
        counts = load_counts(prefix)
        with open(prefix + ".steps.json", encoding="utf-8") as handle:
            steps = json.load(handle)
        units = sum(calls for (_f, function), (calls, _own) in counts.items() if function == per) if per else steps["seconds"]
        if not units:
            raise SystemExit(f"{prefix}: no calls of {per!r}")
        runs.append((counts, steps, units))
    unit = f"call of {per}" if per else "second"
    lines = [f"units: {runs[0][2]:,.0f} vs {runs[1][2]:,.0f} ({unit})"]
    for label, (counts, steps, units) in zip(("base", "after"), runs):
        calls = sum(c for c, _ in counts.values())
        own = sum(t for _, t in counts.values())
        lines.append(f"{label}: {calls / units:.2f} calls and {own / units * 1e6:.2f} us of profiled time per {unit}; "
                     f"{steps['io_waits'] / steps['seconds']:.0f} scheduler passes/s, "
                     f"{sum(steps['steps'].values()) / steps['seconds']:.0f} task steps/s, "
                     f"{sum(steps['objects'].values())} live objects, GC {sum(steps['gc_seconds']):.3f} s")
    lines.append(f"task steps per second: {'base':>8} {'after':>8}  task")
    names = sorted(set(runs[0][1]["steps"]) | set(runs[1][1]["steps"]),
                   key=lambda n: -max(r[1]["steps"].get(n, 0) / r[1]["seconds"] for r in runs))
    for name in names[:top]:
        base_rate, after_rate = (r[1]["steps"].get(name, 0) / r[1]["seconds"] for r in runs)
        lines.append(f"                       {base_rate:8.1f} {after_rate:8.1f}  {name}")
    lines.append(f"largest differences in calls per {unit} (base -> after; own us per {unit})")
    rows = []
    for key in set(runs[0][0]) | set(runs[1][0]):
        (bc, bt), (ac, at) = (r[0].get(key, (0, 0.0)) for r in runs)
        b_units, a_units = runs[0][2], runs[1][2]
        rows.append((ac / a_units - bc / b_units, bc / b_units, ac / a_units, bt / b_units * 1e6, at / a_units * 1e6, key))
    for diff, b, a, bt, at, (path, function) in sorted(rows, key=lambda r: -abs(r[0]))[:top]:
        lines.append(f"  {diff:+10.4f}  {b:10.4f} -> {a:10.4f}  ({bt:8.3f} -> {at:8.3f} us)  {path}:{function}")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.server_profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="profile the server under a scenario")
    run.add_argument("scenario", choices=sorted(SCENARIOS))
    run.add_argument("--out", required=True, help="prefix of the files written (.prof, .steps.json)")
    run.add_argument("--tree", help="checkout whose server to profile (default: this one)")
    run.add_argument("--subscribers", type=int)
    run.add_argument("--warmup", type=float, default=3.0)
    run.add_argument("--window", type=float, default=5.0)
    run.add_argument("--no-cprofile", action="store_true", help="task steps and objects only (no profiler slowdown)")
    run.add_argument("--cluster", action="store_true", help="the server as a node of a cluster (--workers 1 on Redis)")
    cmp = commands.add_parser("compare", help="line up two runs' counts")
    cmp.add_argument("base")
    cmp.add_argument("after")
    cmp.add_argument("--per", help="normalise by the calls of this function (default: per second)")
    cmp.add_argument("--top", type=int, default=40)
    args = parser.parse_args(argv)
    if args.command == "run":
        result = profile_scenario(args.scenario, args.out, tree=args.tree, subscribers=args.subscribers,
                                  warmup=args.warmup, window=args.window, use_cprofile=not args.no_cprofile, cluster=args.cluster)
        print(json.dumps({k: result[k] for k in ("joined", "forwarded_pps", "server_cpu_cores", "cpu_us_per_packet")}))
    else:
        print(compare(args.base, args.after, args.per, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
