"""The e2e harness's check on a server's end (e2e_harness.assert_clean_exit) fails when it should:
on a non-zero exit, a missing last line, or a traceback anywhere in the log — also one the
server caught and logged and then went on from."""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e_harness import assert_clean_exit

CLEAN = "trio-sfu ready url=ws://127.0.0.1:7880\nINFO trio_sfu.cli: signal received\ntrio-sfu stopped\n"
CAUGHT = """2026-12-04 12:00:00 ERROR trio_sfu.media.udp_mux: datagram handler crashed ufrag=abcd
Traceback (most recent call last):
  File "trio_sfu/media/udp_mux.py", line 120, in _handle
ValueError: boom
trio-sfu stopped
"""


def write(tmp_path: Path, text: str) -> Path:
    log = tmp_path / "server.log"
    log.write_text(text)
    return log


def test_a_clean_end_passes(tmp_path: Path) -> None:
    assert_clean_exit("trio-sfu", 0, write(tmp_path, CLEAN), stopped_line="trio-sfu stopped")


@pytest.mark.parametrize("returncode, text, complaint", [
    (1, CLEAN, "exited with 1"),
    (-9, CLEAN, "exited with -9"),
    (0, CLEAN.replace("trio-sfu stopped\n", ""), "did not print"),
    (0, CAUGHT, "logged a traceback"),
])
def test_a_bad_end_fails(tmp_path: Path, returncode: int, text: str, complaint: str) -> None:
    with pytest.raises(AssertionError, match=complaint):
        assert_clean_exit("trio-sfu", returncode, write(tmp_path, text), stopped_line="trio-sfu stopped")
