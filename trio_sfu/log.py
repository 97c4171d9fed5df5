"""Structured logging: every line carries key=value context (room, participant, ...).

The standard library does the output; this module only formats the context so that
`grep participant=PA_xyz` finds everything about one participant.
"""

from __future__ import annotations

import logging
from typing import Any, MutableMapping


def format_kv(context: MutableMapping[str, Any] | dict[str, Any]) -> str:
    parts = []
    for key, value in context.items():
        text = str(value)
        # Quote values a naive `key=value` splitter would misread.
        if not text or any(c.isspace() or c in '"=' for c in text):
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


class ContextLogger(logging.LoggerAdapter):
    """A logger adapter that appends its bound context and per-call `kv=` fields."""

    def __init__(self, logger: logging.Logger, **context: Any) -> None:
        super().__init__(logger, context)

    def bind(self, **more: Any) -> "ContextLogger":
        merged = dict(self.extra or {})
        merged.update(more)
        return ContextLogger(self.logger, **merged)

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        context = dict(self.extra or {})
        context.update(kwargs.pop("kv", {}) or {})
        if context:
            msg = f"{msg} {format_kv(context)}"
        return msg, kwargs


def get_logger(name: str, **context: Any) -> ContextLogger:
    return ContextLogger(logging.getLogger(name), **context)


def configure(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
