"""The control plane: occurrences become runs, failed storage becomes one failover run,
ended occurrences fire their follow-ups, and the watchdog ends runs nobody serves.

Plain functions over the ledger, the config, RDS liveness and a ``send`` callable (which
puts a task message on a queue); the Celery tasks in :mod:`backstop.orchestration.tasks` only call
these.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from backstop.config import BackupEvent, Config, FollowUpWhen, Level
from backstop.constants import (
    CLIENT_LOST_AFTER_S,
    CONTROL_QUEUE,
    NOTIFY_QUEUE,
    RESEND_QUEUED_AFTER_S,
    TASK_BACKUP,
    TASK_COMMAND,
    TASK_DISPATCH,
    TASK_FAILOVER,
    TASK_MIGRATE,
    TASK_NOTIFY,
    TASK_VERIFY,
    client_queue,
    rds_queue,
)
from backstop.errors import Reason
from backstop.orchestration.catalog import RedisCatalog
from backstop.orchestration.events import Unresolvable, failover_spec, resolve
from backstop.orchestration.heartbeat import Seen
from backstop.orchestration.ledger import Ledger
from backstop.runs import (
    ErrorKind,
    OccurrenceState,
    Run,
    RunEnd,
    RunKind,
    RunState,
    Trigger,
    utc_now,
)

log = logging.getLogger(__name__)

# send(task name, args, queue, readable description for Flower, keyword arguments)
Send = Callable[..., None]

# An occurrence whose last run ended this long ago but that is still open is settled by
# the watchdog (the process that ended the run died before it could).
SETTLE_GRACE = timedelta(seconds=30)


def new_run_id() -> str:
    return uuid.uuid4().hex[:16]


def adhoc_occurrence(event: str) -> str:
    stamp = utc_now().strftime("%Y%m%dT%H%M%SZ")
    return f"adhoc:{event}:{stamp}:{uuid.uuid4().hex[:6]}"


def start_adhoc(send: Send, event: str, level: Level | None = None,
                enforce_full: bool | None = None, drill: Reason | None = None) -> str:
    """Start an occurrence of ``event`` now, through the same path as the beat (trigger
    adhoc): `backstop run`, `backstop drill` and the ``backstop.run`` task of Flower.
    Returns its id."""
    occurrence = adhoc_occurrence(event)
    options: dict[str, Any] = {"level": level, "enforce_full": enforce_full}
    if drill is not None:
        options["drill"] = drill.value
    send(TASK_DISPATCH, [occurrence, event, Trigger.ADHOC], CONTROL_QUEUE,
         f"event={event} occurrence={occurrence}", **options)
    return occurrence


def saveset_id_for(task: str, run_id: str) -> str:
    """A run's saveset id, derived from the run: a run done again never makes a second."""
    return f"{task}-{run_id}"


@dataclass
class Control:
    config: Config
    ledger: Ledger
    send: Send
    rds_live: Callable[[str], bool]
    # finds a saveset a run wrote before its worker died (None: do not look)
    catalog: RedisCatalog | None = None
    # when a worker serving the client last beat (None: none for a day)
    client_seen: Callable[[str], Seen | None] = lambda _: None

    # occurrences and dispatch

    def occur(self, occurrence: str, event: str, trigger: Trigger, level: Level | None = None,
              enforce_full: bool | None = None, parent: str | None = None,
              parent_state: OccurrenceState | None = None,
              drill: Reason | None = None) -> str | None:
        """Start an occurrence (beat tick, ad-hoc, follow-up, drill); None if it exists
        already.

        Raises Unresolvable for an event that is not in the config, having written nothing:
        a bad message must not leave a trace in the ledger.
        """
        run = self.first_run(occurrence, event, trigger, level, enforce_full, parent,
                             parent_state)
        if drill is not None:
            if run.kind is not RunKind.BACKUP:
                raise Unresolvable(f"event {event!r} is not a backup event: nothing to drill")
            run = run.model_copy(update={"drill": True, "drill_reason": drill})
        if not self.ledger.open_occurrence(occurrence, event, trigger, run, parent):
            return None
        self.send_run(run)
        return run.run_id

    def first_run(self, occurrence: str, event: str, trigger: Trigger,
                  level: Level | None = None, enforce_full: bool | None = None,
                  parent: str | None = None,
                  parent_state: OccurrenceState | None = None) -> Run:
        found = self.config.events_by_name.get(event)
        if found is None:
            raise Unresolvable(f"unknown event {event!r}")
        if isinstance(found, BackupEvent):
            spec = resolve(self.config, event, trigger, level, enforce_full)
            return Run.for_backup(new_run_id(), occurrence, spec)
        return Run.for_job(new_run_id(), occurrence, found, trigger, parent, parent_state)

    def record_skipped(self, occurrence: str, event: str, trigger: Trigger,
                       state: OccurrenceState) -> bool:
        """An occurrence that does not run (``suppressed``, ``missed``), recorded as such."""
        run = self.first_run(occurrence, event, trigger).model_copy(
            update={"state": RunState(state.value), "finished_at": utc_now()})
        recorded = self.ledger.open_occurrence(occurrence, event, trigger, run, state=state)
        if recorded and state is OccurrenceState.MISSED:
            self.notify(occurrence)
        return recorded

    def notify(self, occurrence: str) -> None:
        """Tell the notify targets of a settled occurrence (off the backup's path)."""
        if self.config.notify:
            self.send(TASK_NOTIFY, [occurrence], NOTIFY_QUEUE, f"occurrence={occurrence}")

    def send_run(self, run: Run) -> None:
        """Send a queued run to where it runs: a backup to its RDS (or end it as
        rds_unreachable when nobody serves it); a verify to the RDS holding the saveset it
        reads; a command to the control plane."""
        if run.kind is RunKind.COMMAND:
            self.send(TASK_COMMAND, [run.run_id], CONTROL_QUEUE, run.readable)
        elif run.kind is RunKind.VERIFY:
            rds = self.saveset_rds(run.parent)
            self.send(TASK_VERIFY, [run.run_id], rds_queue(rds) if rds else CONTROL_QUEUE,
                      run.readable)
        elif run.client is not None:
            if self.client_live(run.client):
                self.send(TASK_BACKUP, [run.run_id], client_queue(run.client), run.readable)
            else:
                self.end_lost(run, RunEnd.failed(ErrorKind.CLIENT_UNREACHABLE,
                                                 f"no live worker serves client {run.client}"))
        elif run.rds is None or not self.rds_live(run.rds):
            self.end_lost(run, RunEnd.unavailable(Reason.RDS_UNREACHABLE,
                                                  f"no live worker serves RDS {run.rds}"))
        else:
            self.send(TASK_BACKUP, [run.run_id], rds_queue(run.rds), run.readable)

    def end_lost(self, run: Run, end: RunEnd) -> None:
        """End a run that no live worker can do (its RDS or client is gone); one whose
        saveset is in the catalog already succeeded (its worker died after writing it,
        before saying so)."""
        made = (self.catalog.get(saveset_id_for(run.task or "", run.run_id))
                if self.catalog is not None else None)
        if made is not None:
            log.warning("run %s: its worker is gone, but its saveset %s was written and "
                        "cataloged: the run succeeded", run.run_id, made.id)
            end = RunEnd.succeeded(made)
        if self.ledger.finish(run.run_id, end) != "done":
            return
        if end.state is RunState.STORAGE_UNAVAILABLE:
            self.send_failover(run)
        else:
            self.run_ended(run.run_id)

    def send_failover(self, run: Run) -> None:
        """Send the failover task of a run that ended storage_unavailable; its arguments, as
        Flower shows them, carry what a failover keeps and where it goes."""
        event = self.config.events_by_name.get(run.origin_event)
        target = getattr(event, "failover_event", None) or "-"
        readable = (f"run={run.run_id} origin_event={run.origin_event} "
                    f"failover_event={target} task={run.task} level={run.level} "
                    f"enforce_full={str(run.enforce_full).lower()}")
        self.send(TASK_FAILOVER, [run.run_id], CONTROL_QUEUE, readable)

    # failover

    def failover(self, run_id: str) -> str | None:
        """Start the one failover run of the occurrence of ``run_id``; None if there is none."""
        run = self.ledger.run(run_id)
        if run is None or run.state is not RunState.STORAGE_UNAVAILABLE:
            return None
        decision = failover_spec(self.config, run.spec, run_id)
        if decision.spec is None:
            log.info("run %s: no failover (%s)", run_id, decision.why)
            self.conclude(run, succeeded=False)
            return None
        failover = Run.for_backup(new_run_id(), run.occurrence, decision.spec).model_copy(
            update={"drill": run.drill})
        if not self.ledger.add_failover_run(run_id, failover):
            return None
        log.info("run %s failed over to run %s (%s)", run_id, failover.run_id, decision.why)
        self.send_run(failover)
        return failover.run_id

    # the end of a run, and of its occurrence

    def run_ended(self, run_id: str) -> None:
        """After a run reached a terminal state: fail over, or settle the occurrence."""
        run = self.ledger.run(run_id)
        if run is None:
            return
        if run.state is RunState.STORAGE_UNAVAILABLE:
            self.failover(run_id)
        elif run.state in (RunState.SUCCEEDED, RunState.FAILED):
            self.conclude(run, succeeded=run.state is RunState.SUCCEEDED)

    def conclude(self, run: Run, succeeded: bool) -> None:
        """Settle the run's occurrence once; its follow-ups and migration are those of ``run``.

        Follow-ups are started before the occurrence is settled: their occurrence ids are
        derived from this one, so starting them twice starts them once, and a process killed
        in between leaves the occurrence open for the watchdog to settle (and start the
        follow-ups) again."""
        wanted = {FollowUpWhen.ALWAYS, FollowUpWhen.SUCCESS if succeeded else FollowUpWhen.FAILURE}
        state = OccurrenceState.SUCCEEDED if succeeded else OccurrenceState.FAILED
        occurrence = run.occurrence
        follow_ups = [f for f in run.follow_ups if f.when in wanted]
        if follow_ups:
            found = self.ledger.occurrence(occurrence)
            if found is None or found.state is not OccurrenceState.OPEN:
                return
        for follow_up in follow_ups:
            self.occur(f"{occurrence}>{follow_up.event}", follow_up.event, Trigger.FOLLOW_UP,
                       parent=occurrence, parent_state=state)
        if not self.ledger.settle(occurrence, state):
            return
        self.notify(occurrence)
        if succeeded and run.migration_task and run.saveset:
            rds = self._migration_rds(run.migration_task)
            self.send(TASK_MIGRATE, [run.run_id], rds_queue(rds),
                      f"run={run.run_id} migration={run.migration_task}")

    def _migration_rds(self, name: str) -> str:
        migration = next(m for m in self.config.migration_tasks if m.name == name)
        return self.config.storage_of(migration.target_pool)[1]

    def saveset_rds(self, occurrence: str | None) -> str | None:
        """The RDS that holds the saveset made by ``occurrence``, if it made one."""
        for run in self.ledger.runs_of(occurrence) if occurrence else []:
            if run.state is RunState.SUCCEEDED and run.rds:
                return run.rds
        return None

    # cancellation

    def cancel(self, run_id: str) -> None:
        """A revoked run ends as failed/cancelled; one still running ends when its process
        has gone (its lease runs out) and is never sent again."""
        outcome = self.ledger.finish(run_id, RunEnd.failed(ErrorKind.CANCELLED, "revoked"))
        if outcome == "busy":
            self.ledger.update(run_id, cancel_requested=True)
        elif outcome == "done":
            self.run_ended(run_id)

    # the watchdog

    def watchdog(self) -> int:
        """End runs whose RDS nobody serves; send again those whose process died; settle
        occurrences whose runs all ended unsettled. Returns how many it acted on."""
        return self._watch_runs() + self._settle_stragglers()

    def _settle_stragglers(self) -> int:
        """An occurrence whose last run ended over SETTLE_GRACE ago but that was never
        settled (the process that ended the run died before it could): settle it now."""
        acted = 0
        cutoff = utc_now() - SETTLE_GRACE
        for occurrence in self.ledger.open_occurrences():
            runs = self.ledger.runs_of(occurrence)
            last = runs[-1] if runs else None
            if (last is not None and last.state.ended and last.finished_at is not None
                    and last.finished_at < cutoff):
                self.run_ended(last.run_id)
                acted += 1
        return acted

    def _watch_runs(self) -> int:
        stale = utc_now() - timedelta(seconds=RESEND_QUEUED_AFTER_S)
        return sum(self._watch(run, stale) for run in self.ledger.unfinished())

    def _watch(self, run: Run, stale: datetime) -> bool:
        """Act on one unfinished run if it needs it; True when it did."""
        queued = run.state is RunState.QUEUED
        lease_gone = not queued and self.ledger.lease_holder(run.run_id) is None
        # a queued run nobody took for long: its message may have died with a worker
        forgotten = queued and (run.sent_at or run.queued_at) < stale
        lost = self._lost(run) if queued or lease_gone else None
        if lease_gone and run.cancel_requested:
            self.cancel(run.run_id)
        elif lost is not None:
            self.end_lost(run, lost)
        elif (lease_gone or forgotten) and self._served(run):
            self._send_again(run)
        else:
            return False
        return True

    def _lost(self, run: Run) -> RunEnd | None:
        """How a run ends whose workers are gone: its RDS served by none → rds_unreachable;
        its client served by none for CLIENT_LOST_AFTER_S → client_unreachable."""
        doing = "queued" if run.state is RunState.QUEUED else "running"
        if run.client is not None:
            seen = self.client_seen(run.client)
            if seen is None or seen.age_s > CLIENT_LOST_AFTER_S:
                return RunEnd.failed(ErrorKind.CLIENT_UNREACHABLE, f"no worker has served "
                                     f"client {run.client} for {CLIENT_LOST_AFTER_S:.0f} s "
                                     f"while the run was {doing}")
            return None
        if run.rds is not None and not self.rds_live(run.rds):
            return RunEnd.unavailable(Reason.RDS_UNREACHABLE, f"RDS {run.rds} stopped being "
                                      f"served while the run was {doing}")
        return None

    def _served(self, run: Run) -> bool:
        """Some live worker can take the run (a verify or command run: the control plane)."""
        if run.client is not None:
            return self.client_live(run.client)
        return run.rds is None or self.rds_live(run.rds)

    def client_live(self, client: str) -> bool:
        seen = self.client_seen(client)
        return seen is not None and seen.live

    def _send_again(self, run: Run) -> None:
        log.warning("run %s (%s): sending it again: %s", run.run_id, run.event,
                    "its process died" if run.state is RunState.RUNNING
                    else f"queued and untaken for over {RESEND_QUEUED_AFTER_S:.0f} s")
        self.ledger.update(run.run_id, sent_at=utc_now())
        self.send_run(run)
