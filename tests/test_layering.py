"""The layers' direction: imports point down only, and the sans-IO layers reach for no I/O.

    composition root   trio_sfu.server, trio_sfu.cli, trio_sfu.workers (the --workers supervisor)
    api                trio_sfu.api        HTTP front, Twirp, room service, webhooks, token checks
    cluster            trio_sfu.cluster    node-to-node link, relay, directory, placement, drain
    agents             trio_sfu.agents     agent workers (/agent), their registry, job dispatch
    media              trio_sfu.media      media service, room media, participant media
    signal             trio_sfu.signal     rooms, participants, the seams the layers above implement
    tracks             trio_sfu.tracks     track sources, FIFO track manager, subscriptions
    forwarding         trio_sfu.forwarding receivers, down tracks, simulcast, keyframes
    foundations        trio_sfu.config, .log, .metrics, .native (the compiled media helpers; usable
                       from every layer of the server)
    protocols          sdp/ above rtp/, and proto/ (sans-IO; no trio, sockets or clocks)

`trio_sfu.client` (our LiveKit client and the load tester) stands beside the server: it may use
the protocols and foundations, never the server's layers, and no server layer uses it.
`trio_sfu.testing` (network namespaces, in-memory networks) serves tests and may use anything
but the composition root; nothing that ships imports it.

Every import counts, type-only and function-level ones included: a type-only import upwards is
still a lower layer knowing about a higher one (it belongs in a Protocol the lower layer owns).
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
FORBIDDEN_MODULES = {"trio", "socket", "asyncio", "selectors", "time"}

# Higher rank = higher layer. A module may import a module of a lower rank, or of its own layer.
RANKS: dict[str, int] = {
    "rtp": 0,
    "proto": 0,
    "sdp": 1,
    "trio_sfu": 2,  # foundations: trio_sfu/__init__, config, log, metrics, datagram
    "trio_sfu.native": 2,  # the compiled fan-out and its loader: a foundation, it imports no layer
    "trio_sfu.forwarding": 3,
    "trio_sfu.tracks": 4,
    "trio_sfu.signal": 5,
    "trio_sfu.media": 6,
    "trio_sfu.cluster": 7,
    "trio_sfu.agents": 8,
    "trio_sfu.api": 9,
    "trio_sfu.server": 10,
    "trio_sfu.cli": 11,
    "trio_sfu.workers": 11,
    "trio_sfu.testing": 10,
    "trio_sfu.client": 3,
}
CLIENT = "trio_sfu.client"
# The layers that may use the client: the command line (load tester) and test helpers.
CLIENT_USERS = {"trio_sfu.cli", "trio_sfu.testing"}


def layer_of(module: str) -> str | None:
    """The layer a dotted module name belongs to (the longest matching prefix), or None for
    modules that are not ours."""
    best = None
    for name in RANKS:
        if module == name or module.startswith(name + "."):
            if best is None or len(name) > len(best):
                best = name
    return best


def module_name(path: pathlib.Path, root: pathlib.Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: pathlib.Path, root: pathlib.Path = ROOT) -> list[tuple[int, str]]:
    """(line, dotted name) of every import in the file, relative ones resolved; for
    `from package import name` both the package and `package.name` are reported (the name may
    be a submodule), so `from trio_sfu import media` counts as importing trio_sfu.media."""
    tree = ast.parse(path.read_text(), filename=str(path))
    own = module_name(path, root)
    package = own.split(".") if path.name == "__init__.py" else own.split(".")[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def violations(path: pathlib.Path, root: pathlib.Path = ROOT) -> list[str]:
    """Every import in `path` that points up, or across to a layer it stands beside."""
    own = module_name(path, root)
    own_layer = layer_of(own)
    assert own_layer is not None, f"{own} is in no layer: add it to RANKS"
    where = path.relative_to(root)
    problems = []
    reported: set[int] = set()
    for line, target in sorted(imported_modules(path, root)):
        if line in reported:
            continue  # one problem per import statement
        target_layer = layer_of(target)
        if target_layer is None or target_layer == own_layer:
            continue
        if target_layer == "trio_sfu.testing":
            problems.append(f"{where}:{line} imports {target} (nothing that ships uses trio_sfu.testing)")
            reported.add(line)
        elif CLIENT in (own_layer, target_layer) and target_layer.startswith("trio_sfu.") and own_layer not in CLIENT_USERS:
            problems.append(f"{where}:{line} imports {target} (the client and the server's layers stand side by side)")
            reported.add(line)
        elif RANKS[target_layer] > RANKS[own_layer]:
            problems.append(f"{where}:{line} imports {target} ({own_layer} is below {target_layer})")
            reported.add(line)
    return problems


def _layered_files() -> list[pathlib.Path]:
    files = []
    for pkg in ("rtp", "sdp", "proto", "trio_sfu"):
        files += [p for p in sorted((ROOT / pkg).rglob("*.py")) if not p.name.endswith("_pb2.py")]
    return files


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


@pytest.mark.parametrize("path", _layered_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down_only(path):
    assert violations(path) == []


def test_the_check_catches_an_inverted_import(tmp_path):
    """A lower layer importing a higher one -- at run time, for types only, relatively, or inside
    a function -- is reported; the same imports the other way round are not."""
    (tmp_path / "trio_sfu" / "tracks").mkdir(parents=True)
    (tmp_path / "trio_sfu" / "media").mkdir(parents=True)
    (tmp_path / "trio_sfu" / "client").mkdir(parents=True)
    low = tmp_path / "trio_sfu" / "tracks" / "low.py"
    low.write_text(
        "from typing import TYPE_CHECKING\n"
        "from trio_sfu.forwarding import DownTrack\n"  # down: fine
        "from trio_sfu import metrics\n"  # foundations: fine
        "if TYPE_CHECKING:\n"
        "    from trio_sfu.media.participant_media import ParticipantMedia\n"  # up, type-only
        "from ..cluster import node_relay\n"  # up, relative
        "def f():\n"
        "    import trio_sfu.api.twirp\n"  # up, in a function
        "from trio_sfu import signal\n"  # up, a package named from its parent
    )
    problems = violations(low, tmp_path)
    assert [p.split(":")[1].split(" ")[0] for p in problems] == ["5", "6", "8", "9"], problems
    high = tmp_path / "trio_sfu" / "media" / "high.py"
    high.write_text("from trio_sfu.tracks import TrackManager\nfrom trio_sfu.signal.rooms import Room\n")
    assert violations(high, tmp_path) == []
    client = tmp_path / "trio_sfu" / "client" / "c.py"
    client.write_text("from trio_sfu.signal.codec import encode_response\nfrom rtp import rtcp\n")
    assert len(violations(client, tmp_path)) == 1
