"""The sans-IO layers must not reach for trio, sockets or clocks."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
FORBIDDEN_MODULES = {"trio", "socket", "asyncio", "selectors", "time"}


def _sans_io_files():
    for pkg in ("rtp", "sdp"):
        yield from sorted((ROOT / pkg).rglob("*.py"))


@pytest.mark.parametrize("path", list(_sans_io_files()), ids=lambda p: str(p.relative_to(ROOT)))
def test_sans_io_module_imports_no_io(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [(node.module or "").split(".")[0]] if node.level == 0 else []
        else:
            continue
        bad = FORBIDDEN_MODULES.intersection(names)
        assert not bad, f"{path.name}:{node.lineno} imports {bad}; rtp/ and sdp/ are sans-IO"
