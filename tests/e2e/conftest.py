"""Fixtures for the end-to-end tests (defined in e2e_harness.py).

tests/e2e is a package (it has an __init__.py) so that pytest imports this file as
`e2e.conftest`: as a plain `conftest` it would shadow tests/conftest.py for the suite's
`from conftest import FIXTURES`.  The helper modules here are imported by their own names
(`from e2e_harness import Client`), so this directory goes on sys.path.
"""

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from e2e_harness import clients, netns, sfu, sfu_dev_defaults  # noqa: E402,F401  (pytest fixtures)
