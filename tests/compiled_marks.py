"""`@pytest.mark.compiled("_fanout")`: a test of a compiled helper of trio_sfu/native itself.

Such a test skips, naming the module and why it is not loaded, where that helper is not in use
(not built, built for another Python, TRIO_SFU_FASTPATH=0 for the fan-out, or hidden by
TRIO_SFU_NATIVE_ABSENT=1). Under TRIO_SFU_REQUIRE_E2E=1 a skip is a failure (must_run.py)
except these skips in the run that hides the helpers on purpose (`make test-pure`): there they
are expected, anywhere else a missing build fails CI.

tests/conftest.py imports the hook below.
"""

from __future__ import annotations

from typing import Optional

import pytest

from trio_sfu import native
from trio_sfu.native import batch_recv

MARK = "compiled"


def not_in_use(name: str) -> Optional[str]:
    """Why the compiled trio_sfu.native.<name> is not what this process runs; None when it is."""
    if name == "_fanout":
        return None if native.FAST_PATH else native.DESCRIPTION
    if name == "_recv":
        return None if batch_recv.compiled_available() else batch_recv.MISSING
    raise ValueError(f"no compiled helper trio_sfu.native.{name}")


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers(MARK):
        name = mark.args[0]
        why = not_in_use(name)
        if why is not None:
            pytest.skip(f"needs the compiled trio_sfu.native.{name}: {why}")
