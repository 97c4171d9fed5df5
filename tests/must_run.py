"""With TRIO_SFU_REQUIRE_E2E=1 every test must run: a skip is reported as a failure.

The end-to-end tests need what pip cannot install (Chromium, npm packages, root for network
namespaces; scripts/test-deps.sh installs them) and skip, naming what is missing, where they
cannot run — right on a laptop, wrong in CI, where a failed install step would otherwise leave CI
green with the browser, SDK and namespace tests skipped. `.ci/run` sets the switch; then a test
that cannot run fails with its skip reason, and so does a module that skips at import. An
expected failure (xfail) is not a skip and is left as it is. One skip is expected: a test marked
`compiled` (tests/compiled_marks.py) in the run that hides the compiled helpers on purpose
(TRIO_SFU_NATIVE_ABSENT=1, `make test-pure`); without that switch it fails like any other.

tests/conftest.py imports the hooks below; tests/test_must_run.py loads this module as a plugin.
"""

from __future__ import annotations

import os

import pytest

REQUIRE_ENV = "TRIO_SFU_REQUIRE_E2E"
#: trio_sfu.native.absent.ENV, spelled out so this plugin loads without the server's packages.
NATIVE_ABSENT_ENV = "TRIO_SFU_NATIVE_ABSENT"


def required() -> bool:
    return os.environ.get(REQUIRE_ENV) == "1"


def header() -> str:
    if required():
        line = f"{REQUIRE_ENV}=1: every test must run; a test that would skip fails"
    else:
        line = f"{REQUIRE_ENV} unset: tests that cannot run here skip, naming what is missing"
    if _native_absent():
        line += f"; {NATIVE_ABSENT_ENV}=1: the compiled helpers are hidden, the tests marked `compiled` skip"
    return line


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (path, line, "Skipped: why")
        return f"{longrepr[2]} ({longrepr[0]}:{longrepr[1]})"
    return str(longrepr)


def _native_absent() -> bool:
    return os.environ.get(NATIVE_ABSENT_ENV, "").strip() == "1"


def _expected_skip(item: pytest.Item) -> bool:
    return _native_absent() and item.get_closest_marker("compiled") is not None


def _fail_instead(report: pytest.TestReport | pytest.CollectReport) -> None:
    reason = _skip_reason(report)
    report.outcome = "failed"
    report.longrepr = f"{REQUIRE_ENV}=1 and this test cannot run here: {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    report = yield
    if required() and report.skipped and not hasattr(report, "wasxfail") and not _expected_skip(item):
        _fail_instead(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> pytest.CollectReport:
    report = yield
    if required() and report.skipped:
        _fail_instead(report)
    return report
