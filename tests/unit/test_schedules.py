"""Schedule arithmetic of the beat: ticks in time zones, catch-up, suppression."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from backstop.config import BackupEvent, Schedule
from backstop.orchestration.schedules import (
    TickAction,
    latest_tick,
    next_tick,
    occurrence_id,
    suppress,
    tick_action,
)

NIGHTLY_BERLIN = Schedule(name="nightly", cron="0 22 * * 1-5", timezone="Europe/Berlin")
EVERY_30S = Schedule(name="often", every=timedelta(seconds=30))


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(("schedule", "now", "latest", "following"), [
    # 22:00 in Berlin is 21:00 UTC in winter ...
    (NIGHTLY_BERLIN, utc(2026, 11, 24, 21, 30), utc(2026, 11, 24, 21, 0), utc(2026, 11, 25, 21)),
    # ... and 20:00 UTC in summer
    (NIGHTLY_BERLIN, utc(2026, 7, 1, 20, 5), utc(2026, 7, 1, 20, 0), utc(2026, 7, 2, 20, 0)),
    # weekdays only: Saturday evening's latest tick is Friday's
    (NIGHTLY_BERLIN, utc(2026, 11, 28, 22), utc(2026, 11, 27, 21), utc(2026, 11, 30, 21)),
    # every 30 s, counted from the epoch
    (EVERY_30S, utc(2026, 11, 24, 12, 0, 44), utc(2026, 11, 24, 12, 0, 30),
     utc(2026, 11, 24, 12, 1, 0)),
    (EVERY_30S, utc(2026, 11, 24, 12, 0, 30), utc(2026, 11, 24, 12, 0, 30),
     utc(2026, 11, 24, 12, 1, 0)),
])
def test_ticks(schedule: Schedule, now: datetime, latest: datetime, following: datetime) -> None:
    assert latest_tick(schedule, "UTC", now) == latest
    assert next_tick(schedule, "UTC", now) == following


def test_a_cron_schedule_without_time_zone_uses_the_config_time_zone() -> None:
    schedule = Schedule(name="s", cron="0 6 * * *")
    assert latest_tick(schedule, "Asia/Tokyo", utc(2026, 11, 24, 0, 0)) == utc(2026, 11, 23, 21)


TICK = utc(2026, 11, 24, 21, 0)
HOUR = timedelta(hours=1)


@pytest.mark.parametrize(("last", "now", "expected"), [
    (TICK - timedelta(days=1), TICK + timedelta(seconds=3), TickAction.RUN),   # on time
    (TICK, TICK + timedelta(minutes=5), None),                                  # handled
    (TICK - timedelta(days=3), TICK + timedelta(minutes=50), TickAction.RUN),   # caught up
    (TICK - timedelta(days=3), TICK + timedelta(minutes=70), TickAction.MISSED),  # too old
    (None, TICK + timedelta(seconds=1), None),                  # a schedule seen first
])
def test_tick_actions(last: datetime | None, now: datetime, expected: TickAction | None) -> None:
    assert tick_action(last, TICK, now, HOUR) is expected


def test_occurrence_ids_are_the_same_for_every_beat() -> None:
    berlin = TICK.astimezone(ZoneInfo("Europe/Berlin"))
    assert occurrence_id("docs", TICK) == occurrence_id("docs", berlin) == \
        "docs@2026-11-24T21:00:00Z"





def event(name: str, task: str, priority: int) -> BackupEvent:
    return BackupEvent(name=name, task=task, media_pool="p", priority=priority)


def test_only_the_highest_priority_of_equal_events_runs() -> None:
    a, b, c = event("a", "docs", 1), event("b", "docs", 5), event("c", "mail", 1)
    result = {d.event: d.suppressed for d in suppress(
        [(a, TICK), (b, TICK), (c, TICK)], {"a": "docs", "b": "docs", "c": "mail"})}
    assert result == {"a": True, "b": False, "c": False}


def test_a_tie_goes_to_the_event_written_first_and_other_ticks_do_not_compete() -> None:
    a, b = event("a", "docs", 1), event("b", "docs", 1)
    tasks = {"a": "docs", "b": "docs"}
    assert [(d.event, d.suppressed) for d in suppress([(a, TICK), (b, TICK)], tasks)] == [
        ("a", False), ("b", True)]
    later = TICK + timedelta(days=1)
    assert not any(d.suppressed for d in suppress([(a, TICK), (b, later)], tasks))
