"""Schedule arithmetic for the beat (SPEC section 5), as pure functions of the time.

A schedule ticks at cron times in its time zone, or every N seconds counted from the Unix
epoch (so every beat process agrees on the ticks). The occurrence of a tick has a
deterministic id, ``<event>@<tick in UTC>``: two beats that both handle a tick name the same
occurrence, and the ledger keeps only one.
"""

from __future__ import annotations

import enum
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import croniter

from backstop.config import EventBase, Schedule


def latest_tick(schedule: Schedule, default_tz: str, now: datetime) -> datetime:
    """The newest tick at or before ``now`` (UTC)."""
    if schedule.every is not None:
        step = schedule.every.total_seconds()
        return datetime.fromtimestamp(math.floor(now.timestamp() / step) * step, UTC)
    assert schedule.cron is not None
    local = now.astimezone(ZoneInfo(schedule.timezone or default_tz))
    tick: datetime = croniter(schedule.cron, local + timedelta(microseconds=1)).get_prev(datetime)
    return tick.astimezone(UTC)


def next_tick(schedule: Schedule, default_tz: str, after: datetime) -> datetime:
    """The first tick strictly after ``after`` (UTC)."""
    if schedule.every is not None:
        step = schedule.every.total_seconds()
        return datetime.fromtimestamp((math.floor(after.timestamp() / step) + 1) * step, UTC)
    assert schedule.cron is not None
    local = after.astimezone(ZoneInfo(schedule.timezone or default_tz))
    tick: datetime = croniter(schedule.cron, local).get_next(datetime)
    return tick.astimezone(UTC)


def longest_gap(schedule: Schedule, default_tz: str, now: datetime,
                ticks: int = 400) -> timedelta:
    """The longest time between two ticks among the next ``ticks`` (a cron of weekdays at
    22:00 has a gap of three days over the weekend)."""
    if schedule.every is not None:
        return schedule.every
    tick, gap = next_tick(schedule, default_tz, now), timedelta(0)
    for _ in range(ticks):
        following = next_tick(schedule, default_tz, tick)
        gap, tick = max(gap, following - tick), following
    return gap


class TickAction(enum.Enum):
    RUN = enum.auto()
    MISSED = enum.auto()  # recorded as an occurrence in state missed


def tick_action(last_handled: datetime | None, tick: datetime, now: datetime,
                catch_up: timedelta) -> TickAction | None:
    """What to do with the newest tick, given the newest one already handled.

    A tick is handled once. Of the ticks missed while no beat ran, only the newest is looked
    at: run if it is at most ``catch_up`` old, else recorded as missed. A schedule seen for
    the first time starts with its next tick.
    """
    if last_handled is None or tick <= last_handled:
        return None
    return TickAction.RUN if now - tick <= catch_up else TickAction.MISSED


def occurrence_id(event: str, tick: datetime) -> str:
    return f"{event}@{tick.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}"


@dataclass(frozen=True)
class Due:
    event: str
    tick: datetime
    suppressed: bool = False


def suppress(due: Iterable[tuple[EventBase, datetime]], task_of: dict[str, str | None]
             ) -> list[Due]:
    """Of equal events (same task) due at the same tick, only the highest priority runs.

    Ties go to the event written first in the config. Events without a task (command) are
    never equal to another.
    """
    groups: dict[tuple[object, datetime], list[EventBase]] = defaultdict(list)
    for event, tick in due:
        key = task_of.get(event.name) or ("event", event.name)
        groups[(key, tick)].append(event)
    result = []
    for (_, tick), events in groups.items():
        winner = max(events, key=lambda e: e.priority)  # max keeps the first of equals
        result += [Due(e.name, tick, suppressed=e is not winner) for e in events]
    return result
