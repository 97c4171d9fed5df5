"""key=value log formatting and the counter registry."""

from __future__ import annotations

import logging

import pytest

from trio_sfu.log import format_kv, get_logger
from trio_sfu.metrics import Metrics


def test_format_kv_quotes_what_a_splitter_would_misread() -> None:
    assert format_kv({"room": "r1", "participant": "PA_x"}) == "room=r1 participant=PA_x"
    assert format_kv({"name": "Ann Lee", "q": 'say "hi"', "empty": ""}) == 'name="Ann Lee" q="say \\"hi\\"" empty=""'
    assert format_kv({"eq": "a=b"}) == 'eq="a=b"'


def test_bound_context_and_per_call_fields(caplog: pytest.LogCaptureFixture) -> None:
    log = get_logger("trio_sfu.test", room="r1").bind(participant="PA_1")
    with caplog.at_level(logging.INFO, logger="trio_sfu.test"):
        log.info("joined", kv={"reason": "x"})
    assert caplog.records[-1].getMessage() == "joined room=r1 participant=PA_1 reason=x"


def test_metrics_count_and_snapshot() -> None:
    metrics = Metrics()
    metrics.inc("a_total")
    metrics.inc("a_total", 2)
    assert metrics.get("a_total") == 3 and metrics.get("never_total") == 0
    snapshot = metrics.snapshot()
    metrics.inc("a_total")
    assert snapshot == {"a_total": 3}  # a snapshot is a copy
    with pytest.raises(ValueError):
        metrics.inc("a_total", -1)
