"""Work done by one module, measured as Python lines executed in its frames.

A cost bound asserted on a clock flakes on a shared machine; a bound on lines executed does
not, and it still tells linear from quadratic. Frames of other modules (callers, callees,
the codec) are not counted; comprehensions and generator expressions of the module are, one
line event per iteration, so a loop over buffered state shows up in the count.
"""

from __future__ import annotations

import sys
import types
from typing import Any, Optional


class LinesExecuted:
    """``with LinesExecuted(module) as meter: ...`` then ``meter.lines``; reusable, resets on entry."""

    def __init__(self, module: types.ModuleType) -> None:
        self.filename = module.__file__
        self.lines = 0
        self._previous: Optional[Any] = None

    def _on_call(self, frame: types.FrameType, event: str, arg: Any) -> Optional[Any]:
        if frame.f_code.co_filename == self.filename:
            return self._on_line
        return None

    def _on_line(self, frame: types.FrameType, event: str, arg: Any) -> Any:
        if event == "line":
            self.lines += 1
        return self._on_line

    def __enter__(self) -> LinesExecuted:
        self.lines = 0
        self._previous = sys.gettrace()
        sys.settrace(self._on_call)
        return self

    def __exit__(self, *exc_info: object) -> None:
        sys.settrace(self._previous)
