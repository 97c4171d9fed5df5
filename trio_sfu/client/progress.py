"""The load tester's progress line: one per phase, rewritten in place on a terminal.

`trio-sfu load-test` reports once a second on stderr. On a terminal the line of the current
phase is rewritten in place (carriage return, erase to the end of the line), and a new phase
starts a new line, so the screen keeps one line per phase: how joining went, then the steady
state. Anywhere else (a pipe, a file, a CI log) every report is a line of its own, which is what
`bench/scenarios.py` reads: its `_PROGRESS` regex parses `format_progress`'s text, and
tests/test_loadtest.py holds the two together.
"""

from __future__ import annotations

import enum
import os
import shutil
from typing import TextIO

import attrs

#: Erase from the cursor to the end of the line (ECMA-48 EL): what a shorter rewrite leaves.
_ERASE_TO_END = "\x1b[K"


class Phase(enum.Enum):
    JOINING = "joining"  # participants still connecting or publishing
    STEADY = "steady"  # everyone ready (or failed): media flows for the duration


@attrs.frozen
class Progress:
    """One report: where the run is and what flowed in the last interval."""

    phase: Phase
    elapsed: float  # seconds since the run started
    joined: int
    participants: int
    tracks: int  # subscriptions the subscribers hold
    tracks_expected: int
    out_pps: int  # packets the publishers sent in the interval
    in_pps: int  # packets the subscribers received in the interval
    loss_percent: float  # of everything the subscribers expected so far
    errors: int


def format_progress(progress: Progress) -> str:
    p = progress
    # Single spaces: a typical run's line fits an 80-column terminal.
    return (f"{p.phase.value} [{p.elapsed:.1f}s] joined {p.joined}/{p.participants} "
            f"tracks {p.tracks}/{p.tracks_expected} out {p.out_pps} pps in {p.in_pps} pps "
            f"loss {p.loss_percent:.2f}% errors {p.errors}")


class ProgressWriter:
    """Writes progress to `stream`: in place per phase when `live` (default: when the stream is
    a terminal), else one line per report."""

    def __init__(self, stream: TextIO, live: bool | None = None) -> None:
        self.stream = stream
        self.live = _is_terminal(stream) if live is None else live
        self._phase: Phase | None = None
        self._open = False  # a live line is on screen without its newline yet

    def show(self, progress: Progress) -> None:
        text = format_progress(progress)
        if not self.live:
            print(text, file=self.stream, flush=True)
            return
        if self._open and progress.phase is not self._phase:
            self.stream.write("\n")  # the finished phase keeps its last line
        # A line wider than the terminal would wrap, and the carriage return would rewrite only
        # its last row.
        width = _columns(self.stream) - 1
        self.stream.write("\r" + text[:max(width, 20)] + _ERASE_TO_END)
        self.stream.flush()
        self._open = True
        self._phase = progress.phase

    def finish(self) -> None:
        """End the live line, so what is printed next starts on a line of its own."""
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False

    def note(self, text: str) -> None:
        """A message of its own (e.g. that the run is stopping), between progress lines."""
        self.finish()
        print(text, file=self.stream, flush=True)


def _columns(stream: TextIO) -> int:
    """The width of the terminal `stream` writes to: `COLUMNS` if set (as shutil reads it), else
    the terminal's own, else 80."""
    fallback = shutil.get_terminal_size()  # COLUMNS, else stdout's terminal, else 80
    if "COLUMNS" in os.environ:
        return fallback.columns
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):
        return fallback.columns
    return columns if columns > 0 else fallback.columns  # a pseudo-terminal nobody sized says 0


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no such method, or a closed stream
        return False


__all__ = ["Phase", "Progress", "ProgressWriter", "format_progress"]
