"""The control plane: occurrences become runs, failed storage becomes one failover run,
ended occurrences fire their follow-ups, and the watchdog ends runs nobody serves.

Plain functions over the ledger, the config, RDS liveness and a ``send`` callable (which
puts a task message on a queue); the Celery tasks in :mod:`workers.tasks` only call these.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from orchestration.config import (
    BackupEvent,
    CommandEvent,
    Config,
    FollowUp,
    FollowUpWhen,
    Level,
    VerifyEvent,
)
from orchestration.events import RunSpec, Trigger, Unresolvable, failover_spec, resolve
from orchestration.ledger import Ledger, now_iso
from workers.catalog import Catalog
from workers.constants import CONTROL_QUEUE, RESEND_QUEUED_AFTER_S, rds_queue
from workers.model import Saveset

log = logging.getLogger(__name__)

# send(task name, args, queue, readable description for Flower)
Send = Callable[[str, list[Any], str, str], None]


def new_run_id() -> str:
    return uuid.uuid4().hex[:16]


def run_record(run_id: str, occurrence: str, spec: RunSpec) -> dict[str, Any]:
    """A queued run, in the shape of SPEC section 7 (plus ``rds``, ``spec`` and bookkeeping)."""
    return {
        "run_id": run_id, "occurrence": occurrence, "event": spec.event,
        "origin_event": spec.origin_event, "trigger": spec.trigger.value,
        "failover_of": spec.failover_of, "failover_run": None, "task": spec.task,
        "level": spec.level.value, "effective_level": None, "enforce_full": spec.enforce_full,
        "media_pool": spec.media_pool, "data_store": spec.data_store, "drive": spec.drive,
        "interface": spec.interface,
        "follow_ups": [{"event": f.event, "when": f.when.value} for f in spec.follow_ups],
        "migration_task": spec.migration_task, "state": "queued", "error": None,
        "saveset": None, "files": None, "bytes": None, "queued_at": now_iso(),
        "started_at": None, "finished_at": None, "rds": spec.rds, "attempts": 0,
        "progress": None, "spec": spec.to_json(),
    }


def storage_error(reason: str, message: str) -> dict[str, Any]:
    return {"kind": "storage_unavailable", "reason": reason, "message": message}


def saveset_id_for(task: str, run_id: str) -> str:
    """A run's saveset id, derived from the run: a run done again never makes a second."""
    return f"{task}-{run_id}"


def succeeded_fields(saveset: Saveset) -> dict[str, Any]:
    return {"state": "succeeded", "saveset": saveset.id, "effective_level": saveset.level.value,
            "files": saveset.files, "bytes": saveset.bytes}


def describe(spec: RunSpec, occurrence: str, run_id: str) -> str:
    """What Flower shows as a task's arguments."""
    return (f"event={spec.event} occurrence={occurrence} run={run_id} "
            f"level={spec.level.value} pool={spec.media_pool}")


@dataclass
class Control:
    config: Config
    ledger: Ledger
    send: Send
    rds_live: Callable[[str], bool]
    # finds a saveset a run wrote before its worker died (None: do not look)
    catalog: Catalog | None = None

    # occurrences and dispatch

    def occur(self, occurrence: str, event: str, trigger: Trigger, level: Level | None = None,
              enforce_full: bool | None = None, parent: str | None = None,
              parent_state: str | None = None) -> str | None:
        """Start an occurrence (beat tick, ad-hoc, follow-up); None if it exists already.

        Raises Unresolvable for an event that is not in the config, having written nothing:
        a bad message must not leave a trace in the ledger.
        """
        found = self.config.events_by_name.get(event)
        if found is None:
            raise Unresolvable(f"unknown event {event!r}")
        spec = None
        if isinstance(found, BackupEvent):
            spec = resolve(self.config, event, trigger, level, enforce_full)
            record = run_record(new_run_id(), occurrence, spec)
        else:
            record = job_record(new_run_id(), occurrence, found, trigger, parent, parent_state)
        if not self.ledger.open_occurrence(occurrence, event, trigger.value, record, parent):
            return None
        if spec is None:  # a verify or command event
            self._send_job(record)
        else:
            self.dispatch(record["run_id"], spec, occurrence)
        return str(record["run_id"])

    def record_skipped(self, occurrence: str, event: str, trigger: Trigger, state: str) -> bool:
        """An occurrence that does not run (``suppressed``, ``missed``), recorded as such."""
        definition = self.config.event_named(event)
        if isinstance(definition, BackupEvent):
            record = run_record(new_run_id(), occurrence, resolve(self.config, event, trigger))
        else:
            record = job_record(new_run_id(), occurrence, definition, trigger, parent=None)
        record.update(state=state, finished_at=now_iso())
        return self.ledger.open_occurrence(occurrence, event, trigger.value, record, state=state)

    def dispatch(self, run_id: str, spec: RunSpec, occurrence: str) -> None:
        """Send a queued run to its RDS, or end it as rds_unreachable when nobody serves it."""
        if not self.rds_live(spec.rds):
            self.end_unreachable(run_id, spec.task, f"no live worker serves RDS {spec.rds}")
            return
        self.send("backstop.backup", [run_id], rds_queue(spec.rds),
                  describe(spec, occurrence, run_id))

    def end_unreachable(self, run_id: str, task: str, message: str) -> None:
        """End a run whose RDS nobody serves; one whose saveset is in the catalog already
        succeeded (its worker died after writing it, before saying so)."""
        made = (self.catalog.get(saveset_id_for(task, run_id))
                if self.catalog is not None else None)
        if made is not None:
            log.warning("run %s: its worker is gone, but its saveset %s was written and "
                        "cataloged: the run succeeded", run_id, made.id)
            if self.ledger.finish(run_id, succeeded_fields(made)) == "done":
                self.run_ended(run_id)
            return
        fields = {"state": "storage_unavailable",
                  "error": storage_error("rds_unreachable", message)}
        if self.ledger.finish(run_id, fields) == "done":
            self.send("backstop.failover", [run_id], CONTROL_QUEUE, f"run={run_id}")

    # failover

    def failover(self, run_id: str) -> str | None:
        """Start the one failover run of the occurrence of ``run_id``; None if there is none."""
        run = self.ledger.run(run_id)
        if run is None or run["state"] != "storage_unavailable":
            return None
        occurrence = run["occurrence"]
        spec = RunSpec.from_json(run["spec"])
        decision = failover_spec(self.config, spec, run_id)
        if decision.spec is None:
            log.info("run %s: no failover (%s)", run_id, decision.why)
            self.conclude(occurrence, run, succeeded=False)
            return None
        failover_id = new_run_id()
        if not self.ledger.add_failover_run(run_id, run_record(failover_id, occurrence,
                                                               decision.spec)):
            return None
        log.info("run %s failed over to run %s (%s)", run_id, failover_id, decision.why)
        self.dispatch(failover_id, decision.spec, occurrence)
        return failover_id

    # the end of a run, and of its occurrence

    def run_ended(self, run_id: str) -> None:
        """After a run reached a terminal state: fail over, or settle the occurrence."""
        run = self.ledger.run(run_id)
        if run is None:
            return
        if run["state"] == "storage_unavailable":
            self.failover(run_id)
        elif run["state"] in ("succeeded", "failed"):
            self.conclude(run["occurrence"], run, succeeded=run["state"] == "succeeded")

    def conclude(self, occurrence: str, run: dict[str, Any], succeeded: bool) -> None:
        """Settle the occurrence once; its follow-ups and migration are those of ``run``.

        Follow-ups are started before the occurrence is settled: their occurrence ids are
        derived from this one, so starting them twice starts them once, and a process killed
        in between leaves the occurrence open for the watchdog to settle (and start the
        follow-ups) again."""
        wanted = {FollowUpWhen.ALWAYS, FollowUpWhen.SUCCESS if succeeded else FollowUpWhen.FAILURE}
        state = "succeeded" if succeeded else "failed"
        follow_ups = [f for f in (FollowUp.model_validate(f) for f in run.get("follow_ups") or [])
                      if f.when in wanted]
        if follow_ups and (self.ledger.occurrence(occurrence) or {}).get("state") != "open":
            return
        for follow_up in follow_ups:
            self.occur(f"{occurrence}>{follow_up.event}", follow_up.event, Trigger.FOLLOW_UP,
                       parent=occurrence, parent_state=state)
        if not self.ledger.settle(occurrence, state):
            return
        if succeeded and run.get("migration_task") and run.get("saveset"):
            self.send("backstop.migrate", [run["run_id"]], rds_queue(self._migration_rds(run)),
                      f"run={run['run_id']} migration={run['migration_task']}")

    def _migration_rds(self, run: dict[str, Any]) -> str:
        migration = next(m for m in self.config.migration_tasks if m.name == run["migration_task"])
        pool = next(p for p in self.config.media_pools if p.name == migration.target_pool)
        return next(s.rds for s in self.config.data_stores if s.name == pool.data_store)

    # verify and command events

    def _send_job(self, record: dict[str, Any]) -> None:
        """Send a verify or command run: a verify reads the saveset where it lies, on the
        RDS of its store; a command runs on the control plane."""
        run_id, occurrence = record["run_id"], record["occurrence"]
        readable = f"event={record['event']} occurrence={occurrence} run={run_id}"
        if record["kind"] == "command":
            self.send("backstop.command", [run_id], CONTROL_QUEUE, readable)
        else:
            rds = self.saveset_rds(record.get("parent"))
            self.send("backstop.verify", [run_id], rds_queue(rds) if rds else CONTROL_QUEUE,
                      readable)

    def saveset_rds(self, occurrence: str | None) -> str | None:
        """The RDS that holds the saveset made by ``occurrence``, if it made one."""
        for run in self.ledger.runs_of(occurrence) if occurrence else []:
            if run["state"] == "succeeded" and run.get("rds"):
                return str(run["rds"])
        return None

    # cancellation

    def cancel(self, run_id: str) -> None:
        """A revoked run ends as failed/cancelled; one still running ends when its process
        has gone (its lease runs out) and is never sent again."""
        fields = {"state": "failed", "error": {"kind": "cancelled", "message": "revoked"}}
        outcome = self.ledger.finish(run_id, fields)
        if outcome == "busy":
            self.ledger.update(run_id, {"cancel_requested": True})
        elif outcome == "done":
            self.run_ended(run_id)

    # the watchdog

    def watchdog(self) -> int:
        """End runs whose RDS nobody serves; send again those whose process died; settle
        occurrences whose runs all ended unsettled. Returns how many it acted on."""
        return self._watch_runs() + self._settle_stragglers()

    def _settle_stragglers(self, grace_s: float = 30.0) -> int:
        """An occurrence whose last run ended over ``grace_s`` ago but that was never settled
        (the process that ended the run died before it could): settle it now."""
        acted = 0
        cutoff = datetime.now(UTC) - timedelta(seconds=grace_s)
        for occurrence in self.ledger.open_occurrences():
            runs = self.ledger.runs_of(occurrence)
            last = runs[-1] if runs else None
            if (last is not None and last["state"] not in ("queued", "running")
                    and last.get("finished_at")
                    and datetime.fromisoformat(last["finished_at"]) < cutoff):
                self.run_ended(last["run_id"])
                acted += 1
        return acted

    def _watch_runs(self) -> int:
        acted = 0
        stale = datetime.now(UTC) - timedelta(seconds=RESEND_QUEUED_AFTER_S)
        for run in self.ledger.unfinished():
            run_id = run["run_id"]
            lease_gone = run["state"] == "running" and self.ledger.lease_holder(run_id) is None
            # a queued run nobody took for long: its message may have died with a worker
            forgotten = run["state"] == "queued" and datetime.fromisoformat(
                run.get("sent_at") or run["queued_at"]) < stale
            # a verify or command run has no RDS of its own to lose
            served = run.get("rds") is None or self.rds_live(run["rds"])
            if run["state"] == "queued" and not served:
                self.end_unreachable(run_id, run["task"], f"RDS {run['rds']} stopped being "
                                                          "served while the run was queued")
            elif lease_gone and run.get("cancel_requested"):
                self.cancel(run_id)
            elif lease_gone and not served:
                self.end_unreachable(run_id, run["task"], f"RDS {run['rds']} stopped being "
                                                          "served while the run was running")
            elif lease_gone or forgotten:
                self._send_again(run)
            else:
                continue
            acted += 1
        return acted

    def _send_again(self, run: dict[str, Any]) -> None:
        log.warning("run %s (%s): sending it again: %s", run["run_id"], run["event"],
                    "its process died" if run["state"] == "running"
                    else f"queued and untaken for over {RESEND_QUEUED_AFTER_S:.0f} s")
        self.ledger.update(run["run_id"], {"sent_at": now_iso()})
        if run.get("rds") is None:
            self._send_job(run)
        else:
            self.dispatch(run["run_id"], RunSpec.from_json(run["spec"]), run["occurrence"])


def job_record(run_id: str, occurrence: str, definition: VerifyEvent | CommandEvent,
               trigger: Trigger, parent: str | None,
               parent_state: str | None = None) -> dict[str, Any]:
    """A queued run of a verify or command event: the run record without storage settings."""
    return {
        "run_id": run_id, "occurrence": occurrence, "event": definition.name,
        "origin_event": definition.name, "trigger": trigger.value, "failover_of": None,
        "failover_run": None, "task": getattr(definition, "task", None), "level": None,
        "effective_level": None, "enforce_full": False, "media_pool": None,
        "data_store": None, "drive": None, "interface": None,
        "follow_ups": [{"event": f.event, "when": f.when.value}
                       for f in definition.follow_ups],
        "migration_task": None, "state": "queued", "error": None, "saveset": None,
        "files": None, "bytes": None, "queued_at": now_iso(), "started_at": None,
        "finished_at": None, "rds": None, "attempts": 0, "progress": None,
        "kind": definition.kind, "parent": parent, "parent_state": parent_state,
    }
