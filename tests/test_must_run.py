"""TRIO_SFU_REQUIRE_E2E=1 (what `.ci/run` sets) turns every skip into a failure (tests/must_run.py).

Checked on a small pytest run of its own, with the plugin loaded as conftest loads it: a test
skipped in its body, one skipped by a fixture (how tests/e2e skips without a namespace), one by a
skipif mark, a module skipped at import (importorskip), and an xfail, which is not a skip. And the
one expected skip: a test of a compiled helper (marked `compiled`) in the run that hides them
(TRIO_SFU_NATIVE_ABSENT=1); without that switch its skip fails too.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from must_run import NATIVE_ABSENT_ENV, REQUIRE_ENV

TESTS = pathlib.Path(__file__).resolve().parent

SKIPPING = """
import pytest

@pytest.fixture
def browser():
    pytest.skip("no Chromium at /nowhere/chromium")

def test_in_body():
    pytest.skip("no network namespace here")

def test_by_fixture(browser):
    pass

@pytest.mark.skipif(True, reason="needs root")
def test_by_mark():
    pass

@pytest.mark.xfail(reason="a known bug", strict=True)
def test_expected_failure():
    assert False

def test_runs():
    pass
"""

COMPILED = """
import pytest

@pytest.mark.compiled("_fanout")
def test_of_a_compiled_helper():
    pytest.skip("needs the compiled trio_sfu.native._fanout: not built")
"""

SKIPPED_AT_IMPORT = """
import pytest
pytest.importorskip("no_such_sdk_module", reason="needs the SDK")

def test_never_collected():
    pass
"""


def run_pytest(tmp_path: pathlib.Path, require: bool, native_absent: bool = False) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_skipping.py").write_text(SKIPPING)
    (tmp_path / "test_skipped_at_import.py").write_text(SKIPPED_AT_IMPORT)
    (tmp_path / "test_compiled.py").write_text(COMPILED)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    compiled(name): as in pyproject.toml\n")
    env = {k: v for k, v in os.environ.items() if k not in (REQUIRE_ENV, NATIVE_ABSENT_ENV)}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    if require:
        env[REQUIRE_ENV] = "1"
    if native_absent:
        env[NATIVE_ABSENT_ENV] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "must_run", "-p", "no:cacheprovider", "-rA",
                           "--continue-on-collection-errors", "--rootdir", str(tmp_path), str(tmp_path)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)


def test_without_the_switch_tests_that_cannot_run_skip(tmp_path: pathlib.Path) -> None:
    done = run_pytest(tmp_path, require=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed, 5 skipped, 1 xfailed" in done.stdout, done.stdout


def test_with_the_switch_each_skip_fails_naming_why(tmp_path: pathlib.Path) -> None:
    done = run_pytest(tmp_path, require=True)
    assert done.returncode == 1, done.stdout + done.stderr
    # A skip in setup (fixture, mark) fails as a setup error, as any failing fixture does.
    assert "2 failed, 1 passed, 1 xfailed, 3 errors" in done.stdout, done.stdout
    for reason in ("no network namespace here", "no Chromium at /nowhere/chromium", "needs root", "needs the SDK",
                   "needs the compiled trio_sfu.native._fanout: not built"):
        assert f"{REQUIRE_ENV}=1 and this test cannot run here: Skipped: {reason}" in done.stdout, (reason, done.stdout)


def test_with_the_helpers_hidden_only_their_tests_may_skip(tmp_path: pathlib.Path) -> None:
    done = run_pytest(tmp_path, require=True, native_absent=True)
    assert done.returncode == 1, done.stdout + done.stderr
    # The compiled helper's test skips; every other skip still fails.
    assert "1 failed, 1 passed, 1 skipped, 1 xfailed, 3 errors" in done.stdout, done.stdout
    assert "SKIPPED [1] test_compiled.py" in done.stdout, done.stdout


@pytest.mark.parametrize("value, required", [("1", True), ("", False), ("0", False)])
def test_only_1_switches_it_on(monkeypatch: pytest.MonkeyPatch, value: str, required: bool) -> None:
    from must_run import required as is_required

    monkeypatch.setenv(REQUIRE_ENV, value)
    assert is_required() is required


def test_the_header_says_when_the_helpers_are_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    from must_run import header

    monkeypatch.setenv(NATIVE_ABSENT_ENV, "1")
    assert f"{NATIVE_ABSENT_ENV}=1: the compiled helpers are hidden" in header()
    monkeypatch.delenv(NATIVE_ABSENT_ENV)
    assert NATIVE_ABSENT_ENV not in header()
