"""What a fuzz target is, and what counts as a crash."""

from __future__ import annotations

import hashlib
import os
import traceback
from typing import Callable, Optional

import attrs

# Frames in these directories are ours: a crash is located by the innermost of them.
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_OWN_CODE = tuple(os.path.join(_REPO, d) + os.sep for d in ("rtp", "sdp", "trio_sfu", "proto"))


@attrs.frozen
class FuzzTarget:
    """One parser under fuzzing.

    ``run`` feeds one input to the real code. ``expected`` are the error types that code
    documents for malformed input; any other exception is a crash. ``seeds`` builds valid
    inputs with the project's own encoders or real captures, so mutations start from
    something that gets deep into the parser. ``max_len`` bounds the inputs atheris tries.
    """

    name: str
    description: str
    run: Callable[[bytes], None]
    expected: tuple[type[BaseException], ...]
    seeds: Callable[[], list[bytes]]
    max_len: int = 4096
    # libFuzzer dictionary entries (tokens worth splicing in), for text formats.
    dictionary: tuple[bytes, ...] = ()


@attrs.frozen
class Crash:
    """An unexpected exception: where it came from, and the input that raised it."""

    target: str
    signature: str  # exception type and the innermost frame of our code; one per distinct bug
    exception: str
    traceback: str
    data: bytes

    @property
    def digest(self) -> str:
        return hashlib.sha1(self.signature.encode()).hexdigest()[:12]


def _signature(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    own = [f for f in frames if f.filename.startswith(_OWN_CODE)]
    where = own[-1] if own else (frames[-1] if frames else None)
    location = f"{os.path.relpath(where.filename, _REPO)}:{where.lineno}" if where else "?"
    return f"{type(exc).__name__} at {location}"


def run_one(target: FuzzTarget, data: bytes) -> Optional[Crash]:
    """Feed one input; the crash it caused, or None if it parsed or was refused as documented."""
    try:
        target.run(data)
    except target.expected:
        return None
    except Exception as exc:  # noqa: BLE001 - any other exception is exactly what we look for
        return Crash(
            target.name, _signature(exc), f"{type(exc).__name__}: {exc}"[:500],
            "".join(traceback.format_exception(exc)), data,
        )
    return None


class CrashLog:
    """Distinct crashes of one target, each written once to ``directory`` (if given)."""

    def __init__(self, directory: Optional[str] = None) -> None:
        self.directory = directory
        self.crashes: dict[str, Crash] = {}
        self.total = 0  # every crashing input, not only the first of each kind

    def record(self, crash: Crash) -> bool:
        """Note a crash; True if it is a new kind."""
        self.total += 1
        if crash.signature in self.crashes:
            return False
        self.crashes[crash.signature] = crash
        if self.directory is not None:
            os.makedirs(self.directory, exist_ok=True)
            base = os.path.join(self.directory, f"crash-{crash.digest}")
            with open(base + ".bin", "wb") as f:
                f.write(crash.data)
            with open(base + ".txt", "w") as f:
                f.write(f"{crash.signature}\n{crash.exception}\n\n{crash.traceback}")
        return True
