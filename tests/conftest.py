import pathlib

import pytest
from hypothesis import settings

import budgets
from compiled_marks import pytest_runtest_setup  # noqa: F401  (hook: @pytest.mark.compiled skips)
from local_peers import forbid_ice_servers
from must_run import header as must_run_header
from must_run import pytest_make_collect_report, pytest_runtest_makereport  # noqa: F401  (hooks)

FIXTURES = pathlib.Path(__file__).parent / "fixtures"

budgets.register_profiles()
PROFILE = budgets.load_profile()

# No in-process test peer may gather against a STUN or TURN server (see local_peers.py).
forbid_ice_servers()


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [budgets.header(PROFILE), must_run_header()]


def _max_examples(item: pytest.Item) -> int | None:
    """The examples a collected test asks for: @given functions, and rule-based state machines
    (their TestCase carries the settings)."""
    function = getattr(item, "obj", None)
    if getattr(function, "is_hypothesis_test", False):
        # No @settings of its own: the profile's budget.
        return getattr(function, "_hypothesis_internal_use_settings", settings.default).max_examples
    wanted = getattr(getattr(item, "cls", None), "settings", None)
    return wanted.max_examples if isinstance(wanted, settings) else None


def pytest_report_collectionfinish(config: pytest.Config, start_path: pathlib.Path,
                                   items: list[pytest.Item]) -> list[str]:
    """What the property tests collected in this run will try, in the profile in force."""
    counts = [n for n in map(_max_examples, items) if n is not None]
    if not counts:
        return []
    return [f"property tests: {len(counts)} collected, {sum(counts):,} examples in all "
            f"(fewest {min(counts):,}, most {max(counts):,}; profile {PROFILE!r})"]
