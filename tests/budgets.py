"""How many examples the property tests run: the Hypothesis profile sets one budget, and each test
asks for a share of it.

    @settings(max_examples=examples(3))   # three times the profile's budget

``HYPOTHESIS_PROFILE`` picks the profile (``default`` when unset, which `make test` uses;
``thorough`` for long runs). A literal ``max_examples`` would override the profile and pin the
count whatever the profile says, so tests/test_budgets.py refuses one.

tests/conftest.py registers and loads the profiles before any test module is imported, so
``examples`` reads the budget of the profile in force.
"""

from __future__ import annotations

import os
from typing import Mapping

from hypothesis import HealthCheck, settings

PROFILE_ENV = "HYPOTHESIS_PROFILE"
DEFAULT_PROFILE = "default"
#: Examples per unit of weight. Shared machines are slow and noisy: no per-example deadline.
BUDGETS = {DEFAULT_PROFILE: 100, "thorough": 1000}


def register_profiles() -> None:
    for name, budget in BUDGETS.items():
        settings.register_profile(name, max_examples=budget, deadline=None,
                                  suppress_health_check=[HealthCheck.too_slow])


def load_profile(environ: Mapping[str, str] = os.environ) -> str:
    """Load the profile named by HYPOTHESIS_PROFILE; an unknown name is an error, not the default."""
    name = environ.get(PROFILE_ENV) or DEFAULT_PROFILE
    if name not in BUDGETS:
        raise ValueError(f"{PROFILE_ENV}={name!r}: the profiles are {', '.join(sorted(BUDGETS))}")
    settings.load_profile(name)
    return name


def budget() -> int:
    """Examples per unit of weight in the profile in force."""
    return settings.default.max_examples


def examples(weight: float) -> int:
    """``max_examples`` for a test that wants ``weight`` times the profile's budget (at least 1)."""
    if weight <= 0:
        raise ValueError(f"an example weight must be positive, got {weight}")
    return max(1, round(budget() * weight))


def header(profile: str) -> str:
    others = ", ".join(f"{name} {count}" for name, count in BUDGETS.items() if name != profile)
    return (f"hypothesis profile {profile!r}: {budget()} examples per unit of weight "
            f"(max_examples=examples(weight)); {PROFILE_ENV} picks another: {others}")
