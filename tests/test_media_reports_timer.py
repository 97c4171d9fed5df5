"""The room's reports wake one member's timer loop, not every member's (room_reports.ReportsTimer)."""

from __future__ import annotations

import pytest

from trio_sfu import metrics as m
from trio_sfu.media.room_reports import RoomReports


def test_only_the_timekeepers_loop_is_woken_for_the_reports_and_the_next_takes_over():
    reports = RoomReports({}, m.Metrics())
    # A speaker relayed from another node: the speaker reports have something to look at.
    reports.meter_remote_track("relayed", "PA_remote", 48000, lambda: False)
    woken: dict[str, list] = {"a": [], "b": [], "c": []}
    a, b, c = (reports.timer(woken[name].append) for name in "abc")
    a.handle_timeout(0.0)  # the first wake-up starts the schedules
    b.handle_timeout(0.4)  # the first speaker report: the meter is seen
    assert a.next_deadline() == pytest.approx(0.8)
    assert b.next_deadline() is None and c.next_deadline() is None  # they sleep on their own times
    c.handle_timeout(0.85)  # any member's wake-up past the time makes the report
    assert a.next_deadline() == pytest.approx(1.25)
    b.close()  # not the timekeeper: nobody is woken
    assert woken == {"a": [], "b": [], "c": []}
    a.close()  # the timekeeper's loop ends: the next one is woken for the reports' time
    assert woken["c"] == [pytest.approx(1.25)] and c.next_deadline() == pytest.approx(1.25)
    assert reports.timekeeper is c
    c.close()
    assert reports.timekeeper is None
