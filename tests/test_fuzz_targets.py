"""The fuzz harnesses of fuzz/ on a small fixed budget: every parser, a few thousand inputs each.

The long runs are ``make fuzz`` (atheris, coverage-guided); here each target gets its seeds and
FUZZ_TEST_INPUTS deterministic mutants in-process, so a parser change that makes one crash
on something near a valid input fails the suite, reproducibly.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# fuzz/ is a top-level directory of the repository, not an installed package.
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from fuzz.runner import run_mutations  # noqa: E402
from fuzz.target import FuzzTarget, run_one  # noqa: E402
from fuzz.targets import NAMES, load  # noqa: E402
FUZZ_TEST_INPUTS = 3000


@pytest.mark.parametrize("name", NAMES)
def test_seeds_reach_the_parser(name: str) -> None:
    # Mutants are only as good as their seeds: none may crash, and at least one must go
    # through the whole target without even a documented refusal.
    target = load(name)
    seeds = target.seeds()
    assert seeds
    crashes = [c for c in (run_one(target, s) for s in seeds) if c is not None]
    assert not crashes, crashes[0].traceback
    accepted = 0
    for seed in seeds:
        try:
            target.run(seed)
            accepted += 1
        except target.expected:
            pass
    assert accepted >= 1


@pytest.mark.parametrize("name", NAMES)
def test_mutants_raise_only_documented_errors(name: str) -> None:
    result = run_mutations(load(name), FUZZ_TEST_INPUTS, seed=1)
    assert result.executed == FUZZ_TEST_INPUTS
    for crash in result.crashes.crashes.values():
        pytest.fail(f"{crash.signature}\ninput ({len(crash.data)} bytes): {crash.data[:300]!r}\n{crash.traceback}")


def test_a_crash_is_an_undocumented_exception_and_is_located():
    def run(data: bytes) -> None:
        if data.startswith(b"k"):
            raise KeyError("documented")
        data.decode("ascii")  # UnicodeDecodeError: not documented

    target = FuzzTarget("demo", "demo", run, (KeyError,), lambda: [b"ok", b"k", b"\xff"])
    result = run_mutations(target, 300, seed=2)
    assert result.executed == 300
    (crash,) = result.crashes.crashes.values()
    assert crash.signature.startswith("UnicodeDecodeError at ")
    assert result.crashes.total >= 1 and run_one(target, b"k") is None
    assert run_one(target, crash.data) is not None


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None,
                    reason="atheris wheels exist for Linux x86_64 only; the test extras install it there")
def test_make_fuzz_engine_runs_a_target_for_the_count_asked(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "fuzz", "--engine", "atheris", "--count", "3000", "--target", "rtcp",
         "--workdir", str(tmp_path), "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (result,) = json.loads(proc.stdout)
    assert result["target"] == "rtcp" and result["engine"] == "atheris"
    assert result["executed"] == result["libfuzzer_runs"] == 3000
    assert result["distinct_crashes"] == 0
    assert os.listdir(tmp_path / "rtcp" / "corpus")  # coverage feedback kept new inputs
