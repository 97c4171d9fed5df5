"""``python -m bench <scenario> [--json]``: a load scenario against the server, and the floor.

Scenarios (see ``bench/scenarios.py``): ``audio-room``, ``meeting``, ``livestream``, ``smoke``;
``floor`` runs only the minimal forwarder (``bench/floor.py``) on a scenario's traffic shape
(``--shape``, default livestream); ``all`` runs the three load scenarios. Each load scenario
is followed by the floor on the same shape and reported as a ratio to it, unless ``--no-floor``.

``--server janus`` runs the same traffic through Janus (``bench/janus/``; install it with
``bench/janus/setup.sh``); ``--server both`` runs trio-sfu, then Janus, and ends with one table of
both servers' CPU per forwarded packet; ``--server all`` runs trio-sfu with the compiled fan-out,
trio-sfu with the pure-Python one (``TRIO_SFU_FASTPATH=1`` / ``=0`` in the server's environment),
then Janus, one floor shared by the three, one table. ``--tester-workers N`` spreads the load tester over N
processes (``trio-sfu load-test --workers``) so a large scenario keeps the server the busy side.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from trio_sfu import native

from . import procstat
from .floor import run_floor
from .scenarios import SCENARIOS, SERVERS, BenchError, run_scenario

MAIN_SCENARIOS = ("audio-room", "meeting", "livestream")


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_result(r: dict[str, Any]) -> str:
    floor = r.get("floor") or {}
    probe = r.get("join_to_first_media") or {}
    return "\n".join([
        f"{r['scenario']} on {r.get('server', 'trio-sfu')}{' --workers ' + str(r['workers']) if r.get('workers') else ''}: {r['description']} (subscribers {r['subscribers']}; joined {r['joined']}/{r['participants']}, "
        f"tracks {r['tracks_subscribed']}/{r['tracks_expected']})",
        f"  forwarded {r['forwarded_pps']:.0f} pps, server {r['server_cpu_cores']:.2f} cores -> "
        f"{_fmt(r['pps_per_core'], ',.0f')} pps/core, {_fmt(r['cpu_us_per_packet'], '.1f')} us/packet",
        f"  floor {_fmt(floor.get('cpu_us_per_packet'), '.1f')} us/packet "
        f"({_fmt(floor.get('pps_per_core'), ',.0f')} pps/core); server at {_fmt(r.get('ratio_to_floor'), '.0%')} of the floor",
        f"  latency p50 {_fmt(r['latency_ms_p50'], '.1f')} ms p99 {_fmt(r['latency_ms_p99'], '.1f')} ms, "
        f"loss {_fmt(r['loss_total'], '.3%')}, errors {r['errors_total']}",
        f"  RSS {r['rss_idle_mb']:.0f} -> {r['rss_loaded_mb']:.0f} MB = {r['rss_per_participant_kb']:.0f} KB/participant; "
        f"tester {r['tester_cpu_cores']:.2f} cores, everything else {r['other_cpu_cores']:.2f} cores",
        f"  join -> first media (probe): joined {_fmt(probe.get('joined_s'), '.2f')} s, first packet "
        f"{_fmt(probe.get('first_packet_s'), '.2f')} s, all tracks {_fmt(probe.get('all_tracks_first_packet_s'), '.2f')} s",
    ])


def _runs(server: str) -> list[tuple[str, bool | None]]:
    """(server kind, fast path: True/False to set TRIO_SFU_FASTPATH for trio-sfu, None to inherit)."""
    if server == "all":
        return [("trio-sfu", True), ("trio-sfu", False), ("janus", None)]
    if server == "both":
        return [(kind, None) for kind in SERVERS]
    return [(server, None)]


def _server_label(r: dict[str, Any]) -> str:
    server = r.get("server", "trio-sfu")
    if server == "trio-sfu" and r.get("fast_path") is not None:
        return f"{server}/{'c' if r['fast_path'] else 'py'}"
    return server


def format_side_by_side(results: list[dict[str, Any]]) -> str:
    """One row per (scenario, server): what each server's CPU paid per forwarded packet."""
    lines = [f"{'scenario':<12} {'server':<11} {'subs':>5} {'fwd pps':>9} {'cores':>6} {'pps/core':>9} "
             f"{'us/pkt':>7} {'floor us':>8} {'RSS KB/part':>11} {'p50 ms':>7} {'p99 ms':>7} {'loss':>7} {'tester':>7} {'other':>6}"]
    for r in results:
        if r.get("scenario") == "floor":
            continue
        floor = r.get("floor") or {}
        lines.append(
            f"{r['scenario']:<12} {_server_label(r):<11} {r['subscribers']:>5} {r['forwarded_pps']:>9,.0f} "
            f"{r['server_cpu_cores']:>6.2f} {_fmt(r['pps_per_core'], ',.0f'):>9} {_fmt(r['cpu_us_per_packet'], '.1f'):>7} "
            f"{_fmt(floor.get('cpu_us_per_packet'), '.1f'):>8} {r['rss_per_participant_kb']:>11.0f} "
            f"{_fmt(r['latency_ms_p50'], '.1f'):>7} {_fmt(r['latency_ms_p99'], '.1f'):>7} "
            f"{_fmt(r['loss_total'], '.3%'):>7} {r['tester_cpu_cores']:>7.2f} {r['other_cpu_cores']:>6.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", choices=sorted(SCENARIOS) + ["floor", "all"])
    parser.add_argument("--json", action="store_true", help="print machine-readable results on stdout")
    parser.add_argument("--subscribers", type=int, help="scale the subscriber count (stated in the results)")
    parser.add_argument("--warmup", type=float, default=3.0, metavar="SECONDS")
    parser.add_argument("--window", type=float, default=10.0, metavar="SECONDS")
    parser.add_argument("--no-floor", action="store_true", help="skip the floor run")
    parser.add_argument("--no-probe", action="store_true", help="skip the join-to-first-media probe")
    parser.add_argument("--workers", type=int, default=0, metavar="N",
                        help="run the server as --workers N (nodes of a cluster on a throwaway redis-server); 0: the lone server")
    parser.add_argument("--server", choices=SERVERS + ("both", "all"), default="trio-sfu",
                        help="the SFU under load: trio-sfu, janus, both one after the other, or all (trio-sfu compiled, "
                             "trio-sfu pure, janus); several end with one table")
    parser.add_argument("--tester-workers", type=int, default=0, metavar="N",
                        help="spread the load tester over N processes (0: one process)")
    parser.add_argument("--shape", choices=sorted(SCENARIOS), default="livestream",
                        help="traffic shape for the 'floor' scenario")
    args = parser.parse_args(argv)

    results: dict[str, Any] = {"machine": procstat.machine(), "results": []}
    names = MAIN_SCENARIOS if args.scenario == "all" else (args.scenario,)
    try:
        for name in names:
            if name == "floor":
                shape = SCENARIOS[args.shape]
                if args.subscribers is not None:
                    shape = shape.scaled(args.subscribers)
                floor = run_floor(shape.floor_shape(), args.warmup, args.window)
                floor["scenario"] = "floor"
                results["results"].append(floor)
                if not args.json:
                    print(f"floor ({args.shape} shape): {floor['forwarded_pps']:.0f} pps, {floor['cpu_cores']:.2f} cores "
                          f"-> {_fmt(floor['pps_per_core'], ',.0f')} pps/core, {_fmt(floor['cpu_us_per_packet'], '.1f')} us/packet")
                continue
            scenario = SCENARIOS[name]
            if args.subscribers is not None:
                scenario = scenario.scaled(args.subscribers)
            floor = None
            for server, fast_path in _runs(args.server):
                env = None if fast_path is None else {**os.environ, native.ENV: "1" if fast_path else "0"}
                result = run_scenario(scenario, warmup=args.warmup, window=args.window, probe=not args.no_probe,
                                      workers=args.workers if server == "trio-sfu" else 0, server_kind=server,
                                      tester_workers=args.tester_workers, server_env=env)
                # Without an override the server runs with this process's environment and tree.
                if server == "trio-sfu":
                    result["fast_path"] = native.FAST_PATH if fast_path is None else fast_path
                else:
                    result["fast_path"] = None
                if not args.no_floor:
                    if floor is None:  # one floor per scenario, shared by the servers compared
                        floor = run_floor(scenario.floor_shape(), min(args.warmup, 2.0), min(args.window, 6.0))
                    result["floor"] = floor
                    if floor["cpu_us_per_packet"] and result["cpu_us_per_packet"]:
                        # The fraction of the floor's efficiency the server reaches (1.0 = as cheap as the floor).
                        result["ratio_to_floor"] = floor["cpu_us_per_packet"] / result["cpu_us_per_packet"]
                results["results"].append(result)
                if not args.json:
                    print(format_result(result), flush=True)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        print()
    elif args.server in ("both", "all"):
        print(format_side_by_side(results["results"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
