"""The Hypothesis profile decides how many examples the property tests run (tests/budgets.py).

A ``max_examples`` written as a number overrides the profile, and ``HYPOTHESIS_PROFILE=thorough``
then changes nothing for that test; so no test may pin one, and a run under each profile must
really try the profile's count.
"""

from __future__ import annotations

import ast
import os
import pathlib
import subprocess
import sys

import pytest

import budgets

TESTS = pathlib.Path(__file__).resolve().parent
#: Files allowed to pin a count (none now). Listed by name so an exemption goes once the file
#: asks for examples(...) instead.
NOT_YET_CONVERTED: set[str] = set()


def pinned_counts(path: pathlib.Path) -> list[int]:
    """Lines where `max_examples=` is given anything but `examples(...)`."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.keyword) and node.arg == "max_examples":
            value = node.value
            if not (isinstance(value, ast.Call) and getattr(value.func, "id", None) == "examples"):
                lines.append(node.lineno)
    return lines


def test_no_property_test_pins_its_example_count() -> None:
    pinned = {}
    for path in sorted(TESTS.rglob("*.py")):
        if path.name in NOT_YET_CONVERTED or path.name == "budgets.py":  # budgets.py defines the profiles
            continue
        lines = pinned_counts(path)
        if lines:
            pinned[str(path.relative_to(TESTS))] = lines
    assert not pinned, f"max_examples given as a number (it overrides the profile): {pinned}"


def test_exemptions_are_still_needed() -> None:
    for name in NOT_YET_CONVERTED:
        path = TESTS / name
        assert path.exists() and pinned_counts(path), f"{name} no longer pins a count: drop its exemption"


def test_examples_scales_the_budget_in_force() -> None:
    assert budgets.examples(3) == 3 * budgets.budget()
    assert budgets.examples(0.0001) == 1
    with pytest.raises(ValueError, match="positive"):
        budgets.examples(0)
    with pytest.raises(ValueError, match="thorough"):
        budgets.load_profile({budgets.PROFILE_ENV: "thorogh"})


COUNTING_TEST = """
import os
from hypothesis import given, settings, strategies as st
from budgets import examples

@settings(max_examples=examples(0.04), database=None)
@given(st.integers(0, 2**64))
def test_counted(n):
    with open(os.environ["EXAMPLES_LOG"], "a") as log:
        log.write("x")
"""


@pytest.mark.parametrize("profile", [None, "thorough"])
def test_each_profile_runs_its_own_count(tmp_path: pathlib.Path, profile: str | None) -> None:
    """The suite's own conftest, loaded into a fresh pytest: the header names the profile and its
    budget, and a test asking for 4 % of the budget runs 4 % of that profile's budget."""
    (tmp_path / "test_counted.py").write_text(COUNTING_TEST)
    log = tmp_path / "examples.log"
    env = {k: v for k, v in os.environ.items() if k != budgets.PROFILE_ENV}
    env.update(EXAMPLES_LOG=str(log), PYTHONPATH=os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")]))
    if profile is not None:
        env[budgets.PROFILE_ENV] = profile
    name = profile or budgets.DEFAULT_PROFILE
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider",
                           "--rootdir", str(tmp_path), str(tmp_path / "test_counted.py")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    budget = budgets.BUDGETS[name]
    assert f"hypothesis profile {name!r}: {budget} examples per unit of weight" in done.stdout, done.stdout
    assert f"property tests: 1 collected, {round(budget * 0.04)} examples in all" in done.stdout, done.stdout
    assert len(log.read_text()) == round(budget * 0.04)
