"""The beat scheduler: Celery beat, with one active scheduler among any number of processes.

Every ``backstop beat`` process runs this scheduler. Only the holder of the leader lease
(:mod:`backstop.orchestration.leader`) schedules; the others poll for the lease every
``BEAT_STANDBY_POLL_S`` seconds and take over within ``BEAT_LOCK_TTL_S`` + that poll after
the leader dies (well inside the 60 s of SPEC section 5). The schedule is the config file:
the planner turns due ticks into occurrences, and runs the watchdog's passes
(:mod:`backstop.orchestration.watchdog`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from celery.beat import Scheduler

from backstop.config import Config, Schedule
from backstop.constants import (
    BEAT_LAST_TICK_KEY,
    BEAT_LEADER_KEY,
    BEAT_LOCK_TTL_S,
    BEAT_STANDBY_POLL_S,
    BEATS_KEY,
    CONTROL_QUEUE,
    TASK_DISPATCH,
    WATCHDOG_INTERVAL_S,
)
from backstop.orchestration.broker import BROKER_ERRORS, redis_client
from backstop.orchestration.control import Control
from backstop.orchestration.heartbeat import write_beat_heartbeat
from backstop.orchestration.leader import LeaderLease
from backstop.orchestration.schedules import (
    TickAction,
    latest_tick,
    next_tick,
    occurrence_id,
    suppress,
    tick_action,
)
from backstop.orchestration.tasks import control_for
from backstop.orchestration.watchdog import watchdog_pass
from backstop.runs import OccurrenceState, Trigger

log = logging.getLogger(__name__)

NEVER = datetime.min.replace(tzinfo=UTC)
# The leader ticks at least this often, so its lease is renewed long before it runs out.
LEADER_MAX_INTERVAL_S = BEAT_LOCK_TTL_S / 6


def beat_name() -> str:
    return f"beat.{os.getpid()}@{socket.gethostname()}"


@dataclass
class ScheduleState:
    schedule: Schedule
    events: list[str]
    last: datetime | None = None
    next_due: datetime = NEVER


class Planner:
    """Turns the config's schedules into occurrences; keeps its place in Redis."""

    def __init__(self, config: Config, client: redis.Redis, control: Control,
                 watchdog: Callable[[], int] | None = None) -> None:
        self.config, self.client, self.control = config, client, control
        self.watchdog = watchdog
        self.task_of = {e.name: getattr(e, "task", None) for e in config.events}
        by_name = {e.name: e for e in config.events}
        self.by_name = by_name
        self.states = {s.name: ScheduleState(s, [e.name for e in config.events
                                                 if e.schedule == s.name])
                       for s in config.schedules}
        self.next_watchdog = NEVER

    def load(self) -> None:
        """On becoming the leader: where the previous leader left off."""
        stored = {k.decode(): datetime.fromisoformat(v.decode())
                  for k, v in self.client.hgetall(BEAT_LAST_TICK_KEY).items()}
        for name, state in self.states.items():
            state.last = stored.get(name)
            state.next_due = NEVER

    def tick(self, now: datetime) -> float:
        """Handle what is due at ``now``; return the seconds until something is due next.

        A tick counts as handled only once its occurrences were sent: when the broker fails
        midway, the planner forgets what it had not recorded and the next tick sends it
        again (an occurrence's id is its event and tick, so it still happens once)."""
        handled: dict[str, str] = {}
        try:
            due: list[tuple[Any, datetime]] = []
            for state in self.states.values():
                if now >= state.next_due:
                    due += self._due(state, now, handled)
            for item in suppress(due, self.task_of):
                self._occur(item.event, item.tick,
                            OccurrenceState.SUPPRESSED if item.suppressed else None)
            if handled:
                self.client.hset(BEAT_LAST_TICK_KEY, mapping=handled)
        except BROKER_ERRORS:
            self.load()
            raise
        if self.watchdog is not None and now >= self.next_watchdog:
            self.next_watchdog = now + timedelta(seconds=WATCHDOG_INTERVAL_S)
            try:
                self.watchdog()
            except Exception as exc:  # a pass that failed never stops the schedules
                log.warning("watchdog pass failed: %s", exc)
        soonest = min([s.next_due for s in self.states.values()] + [self.next_watchdog])
        return max(0.0, (soonest - now).total_seconds())

    def _due(self, state: ScheduleState, now: datetime,
             handled: dict[str, str]) -> list[tuple[Any, datetime]]:
        schedule, tz = state.schedule, self.config.timezone
        tick = latest_tick(schedule, tz, now)
        action = tick_action(state.last, tick, now, schedule.catch_up)
        state.next_due = next_tick(schedule, tz, now)
        if state.last is not None and tick <= state.last:
            return []
        state.last = tick
        handled[schedule.name] = tick.isoformat()
        if action is TickAction.MISSED:
            for event in state.events:
                self._occur(event, tick, OccurrenceState.MISSED)
            log.warning("schedule %s: tick %s is older than catch_up; recorded as missed",
                        schedule.name, tick.isoformat())
            return []
        return [(self.by_name[e], tick) for e in state.events] if action else []

    def _occur(self, event: str, tick: datetime, skipped: OccurrenceState | None) -> None:
        occurrence = occurrence_id(event, tick)
        if skipped:
            self.control.record_skipped(occurrence, event, Trigger.SCHEDULE, skipped)
        else:
            self.control.send(TASK_DISPATCH, [occurrence, event, Trigger.SCHEDULE],
                              CONTROL_QUEUE, f"event={event} occurrence={occurrence}")


class LeaderScheduler(Scheduler):
    """A Celery beat scheduler that schedules only while it holds the leader lease."""

    def __init__(self, app: Any, *args: Any, **kwargs: Any) -> None:
        self.client = redis_client(app.settings, app.conf.broker_url, socket_timeout=5,
                                   socket_connect_timeout=5)
        self.lease = LeaderLease(self.client, BEAT_LEADER_KEY, beat_name(), BEAT_LOCK_TTL_S)
        self.leading = False
        self.config_hash: str = app.settings.config_hash
        control = control_for(app, self.client)
        self.planner = Planner(app.settings.config, self.client, control,
                               lambda: watchdog_pass(app, control, self.client))
        kwargs["max_interval"] = LEADER_MAX_INTERVAL_S
        super().__init__(app, *args, **kwargs)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        try:
            leading = self.lease.hold()
            if leading and not self.leading:
                self.planner.load()
            write_beat_heartbeat(self.client, self.lease.holder, leading, self.config_hash)
        except BROKER_ERRORS as exc:
            log.warning("beat: broker unreachable, not scheduling: %s", exc)
            leading = False
        if leading != self.leading:
            log.info("beat %s %s", self.lease.holder,
                     "is now the leader" if leading else "is standing by")
            self.leading = leading
        if not leading:
            return BEAT_STANDBY_POLL_S
        try:
            wait = self.planner.tick(datetime.now(UTC))
        except BROKER_ERRORS as exc:  # a send that found no master, a lost connection
            log.warning("beat: tick not handled, tried again shortly: %s", exc)
            wait = BEAT_STANDBY_POLL_S
        return min(wait, LEADER_MAX_INTERVAL_S)

    def close(self) -> None:
        with contextlib.suppress(redis.RedisError):
            self.client.hdel(BEATS_KEY, self.lease.holder)
        if self.leading:
            try:
                self.lease.release()
            except redis.RedisError as exc:
                log.warning("beat: lease not released: %s", exc)
        self.client.close()
        super().close()


__all__ = ["LeaderScheduler", "Planner"]
