"""One target under atheris (libFuzzer), in its own process: ``python -m fuzz.atheris_worker``.

Started by ``python -m fuzz``; not meant to be run by hand. The project's packages are
imported inside atheris's instrumentation, so libFuzzer sees their branch coverage. Every
input goes through :func:`fuzz.target.run_one`, which catches what the target raises: a crash
is recorded (first of each kind written under ``crashes/``) and fuzzing goes on, so one run
finds every kind of crash it can reach instead of stopping at the first. Counts go to
``stats.json`` in the work directory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import atheris

from fuzz.target import CrashLog, run_one

# Whose code libFuzzer measures coverage of: ours, aioice's STUN codec, protobuf's JSON parser.
INSTRUMENTED = ["rtp", "sdp", "trio_sfu", "proto", "aioice", "google.protobuf.json_format"]
STATS_EVERY = 10_000


def _dictionary_file(tokens: tuple[bytes, ...], path: str) -> str:
    with open(path, "w") as f:
        for token in tokens:
            escaped = "".join(chr(b) if 32 <= b < 127 and b not in (34, 92) else f"\\x{b:02x}" for b in token)
            f.write(f'"{escaped}"\n')
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("target")
    parser.add_argument("runs", type=int)
    parser.add_argument("workdir")
    parser.add_argument("--timeout", type=int, default=30, help="seconds one input may take")
    args = parser.parse_args()

    from fuzz.targets import load

    with atheris.instrument_imports(include=INSTRUMENTED):
        target = load(args.target)

    corpus = os.path.join(args.workdir, "corpus")
    seeds = os.path.join(args.workdir, "seeds")
    artifacts = os.path.join(args.workdir, "artifacts")
    for directory in (corpus, seeds, artifacts):
        os.makedirs(directory, exist_ok=True)
    for i, seed in enumerate(target.seeds()):
        with open(os.path.join(seeds, f"seed-{i:03d}"), "wb") as f:
            f.write(seed)
    log = CrashLog(os.path.join(args.workdir, "crashes"))
    stats_path = os.path.join(args.workdir, "stats.json")
    executed = 0

    def write_stats() -> None:
        stats = {
            "target": target.name, "executed": executed, "crashing_inputs": log.total,
            "crashes": [{"signature": c.signature, "exception": c.exception} for c in log.crashes.values()],
        }
        with open(stats_path + ".tmp", "w") as f:
            json.dump(stats, f)
        os.replace(stats_path + ".tmp", stats_path)

    def test_one_input(data: bytes) -> None:
        nonlocal executed
        executed += 1
        crash = run_one(target, data)
        if crash is not None and log.record(crash):
            print(f"\n== new crash in {target.name}: {crash.signature}\n{crash.traceback}", file=sys.stderr, flush=True)
        if executed % STATS_EVERY == 0 or executed >= args.runs:
            write_stats()

    write_stats()
    libfuzzer_args = [
        sys.argv[0], corpus, seeds, f"-runs={args.runs}", f"-max_len={target.max_len}",
        f"-timeout={args.timeout}", f"-artifact_prefix={artifacts}{os.sep}", "-print_final_stats=1",
        "-rss_limit_mb=4096",
    ]
    if target.dictionary:
        libfuzzer_args.append("-dict=" + _dictionary_file(target.dictionary, os.path.join(args.workdir, "tokens.dict")))
    atheris.Setup(libfuzzer_args, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
