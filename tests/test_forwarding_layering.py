"""The forwarding primitives are the hot path and must stay deterministic: no trio,
sockets or clocks (time arrives as ``now``)."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
FORBIDDEN = {"trio", "socket", "asyncio", "selectors", "time", "random"}


@pytest.mark.parametrize("path", sorted((ROOT / "trio_sfu" / "forwarding").glob("*.py")), ids=lambda p: p.name)
def test_forwarding_module_imports_no_io(path):
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = {(node.module or "").split(".")[0]}
        else:
            continue
        assert not FORBIDDEN & names, f"{path.name}:{node.lineno} imports {FORBIDDEN & names}"


def test_package_exports_import():
    import trio_sfu.forwarding as fw

    assert all(hasattr(fw, name) for name in fw.__all__) and len(fw.__all__) == 12
    assert {"DownTrack", "TrackReceiver", "PacketSink", "PublisherSenderReport"} <= set(fw.__all__)
