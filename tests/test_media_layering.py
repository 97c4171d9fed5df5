"""trio_sfu/media/ stands below the cluster and the API: it imports nothing above it — type-only
imports included (a Protocol it owns is how it talks up, e.g. room_media.RelayHooks) — and its
modules import each other without a circle."""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
MEDIA = ROOT / "trio_sfu" / "media"
PACKAGE = "trio_sfu.media"
ABOVE = ("trio_sfu.cluster", "trio_sfu.api", "trio_sfu.server", "trio_sfu.cli")


def _imported(path: pathlib.Path) -> set[str]:
    """Every module an import statement of the file names, wherever it stands (TYPE_CHECKING
    blocks and function bodies too); `from a import b` names both `a` and `a.b`."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = PACKAGE.rsplit(".", node.level - 1)[0] if node.level > 1 else PACKAGE
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def _media_modules() -> dict[str, pathlib.Path]:
    return {f"{PACKAGE}.{path.stem}": path for path in sorted(MEDIA.glob("*.py")) if path.stem != "__init__"}


@pytest.mark.parametrize("path", list(_media_modules().values()), ids=lambda p: p.name)
def test_media_imports_nothing_above_it(path: pathlib.Path) -> None:
    above = sorted(n for n in _imported(path) if any(n == a or n.startswith(a + ".") for a in ABOVE))
    assert not above, f"{path.name} imports {above}: media must not reach up (own a Protocol instead)"


def test_media_modules_import_each_other_without_a_circle() -> None:
    modules = _media_modules()
    graph = {name: sorted(n for n in _imported(path) if n in modules and n != name) for name, path in modules.items()}
    done: set[str] = set()

    def visit(name: str, trail: list[str]) -> None:
        if name in trail:
            circle = trail[trail.index(name):] + [name]
            pytest.fail("import circle in trio_sfu/media: " + " -> ".join(circle))
        if name in done:
            return
        for target in graph[name]:
            visit(target, trail + [name])
        done.add(name)

    for name in graph:
        visit(name, [])
    assert len(done) == len(modules) > 1
