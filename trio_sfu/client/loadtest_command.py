"""``trio-sfu load-test``: the load test in this process, or spread over worker processes
(``--workers``). Above both `trio_sfu.client.loadtest` and `trio_sfu.client.loadtest_workers`,
which import nothing from here."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

import trio

from trio_sfu.client.loadtest import (LoadTest, add_arguments, format_summary, params_from_args,
                                      run_until_signalled)
from trio_sfu.client.loadtest_workers import run_workers, split_params


def run_command(args: argparse.Namespace) -> int:
    try:
        params = params_from_args(args)
    except ValueError as exc:
        print(f"trio-sfu load-test: error: {exc}", file=sys.stderr)
        return 2
    workers = getattr(args, "workers", 0)
    if workers < 0:
        print("trio-sfu load-test: error: --workers must not be negative", file=sys.stderr)
        return 2
    if workers:
        try:
            split_params(params, workers)
        except ValueError as exc:
            print(f"trio-sfu load-test: error: {exc}", file=sys.stderr)
            return 2
        summary = run_workers(params, workers)
    else:
        summary = trio.run(run_until_signalled, LoadTest(params))
    print(format_summary(summary))
    if params.json_path:
        with open(params.json_path, "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=2)
    failed = summary["totals"]["errors"] or summary["joined"] < summary["participants"]
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trio-sfu load-test", description="LiveKit-style load test")
    add_arguments(parser)
    return run_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
