"""TRIO_SFU_NATIVE_ABSENT=1 (trio_sfu/native/absent.py, what `make test-pure` sets): a process
behaves as if the compiled helpers had never been built, checked in fresh interpreters (the switch
acts at import): the modules cannot be imported, both loaders fall back to the pure twins and say
why, and TRIO_SFU_FASTPATH=1, which requires the compiled fan-out, is then an error. Without the
switch the loaders find exactly what is on disk."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from importlib.machinery import EXTENSION_SUFFIXES

from trio_sfu.native.absent import COMPILED_MODULES, ENV

NATIVE_DIR = pathlib.Path(__file__).resolve().parent.parent / "trio_sfu" / "native"

PROBE = """
import importlib, json
from trio_sfu import native
from trio_sfu.native import batch_recv
imports = {}
for name in %r:
    try:
        importlib.import_module(name)
        imports[name] = "imported"
    except ModuleNotFoundError as exc:
        imports[name] = "not found: " + str(exc)
print(json.dumps({"fast_path": native.FAST_PATH, "description": native.DESCRIPTION,
                  "recv": batch_recv.compiled_available(), "recv_missing": batch_recv.MISSING,
                  "imports": imports}))
""" % (COMPILED_MODULES,)


def probe(**env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k not in (ENV, "TRIO_SFU_FASTPATH")}
    environment.update(env)
    return subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=environment, timeout=60)


def built(module: str) -> bool:
    """Whether the module is on disk, built for this interpreter."""
    name = module.rsplit(".", 1)[1]
    return any((NATIVE_DIR / (name + suffix)).exists() for suffix in EXTENSION_SUFFIXES)


def test_hidden_helpers_cannot_be_imported_and_the_pure_twins_run():
    done = probe(**{ENV: "1"})
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["fast_path"] is False and seen["recv"] is False
    for name in COMPILED_MODULES:
        assert seen["imports"][name].startswith(f"not found: No module named '{name}'"), seen
    assert f"{ENV}=1" in seen["description"] and f"{ENV}=1" in seen["recv_missing"], seen


def test_hidden_helpers_and_a_required_fast_path_is_an_error():
    done = probe(**{ENV: "1", "TRIO_SFU_FASTPATH": "1"})
    assert done.returncode != 0
    assert "TRIO_SFU_FASTPATH=1 but the compiled fan-out cannot be loaded" in done.stderr, done.stderr


def test_without_the_switch_the_loaders_find_what_is_built():
    for value in ("", "0"):
        done = probe(**{ENV: value})
        assert done.returncode == 0, done.stderr
        seen = json.loads(done.stdout)
        assert seen["fast_path"] is built("trio_sfu.native._fanout"), seen
        assert seen["recv"] is built("trio_sfu.native._recv"), seen
