"""``backstop report``: what happened in a period, per task and per pool (SPEC section 10).

Per task: the occurrences of its backup events that settled in the period, how many
succeeded and how many failed (missed ticks count as failed; the two add up), how many
needed their failover (whatever came of it; drills are counted apart, as ``drills``: their
outage was made up), its newest success (ever) and the bytes its
succeeded runs backed up in the period. Per pool: used and free bytes and days_until_full
at its growth in the period. Reads only the runs queued in the period (and a backup time
limit before it, for occurrences that settled in it), and only the fields it counts.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from backstop.config import Config
from backstop.constants import OCCURRENCE_KEY, RUN_KEY, RUNS_INDEX_KEY
from backstop.orchestration.ledger import Ledger
from backstop.runs import OccurrenceState, RunKind, RunState

# The fields of a run and of an occurrence the report reads (JSON values; absent: default).
RUN_FIELDS = ("occurrence", "kind", "task", "state", "bytes", "failover_of", "finished_at",
              "drill")
OCCURRENCE_FIELDS = ("state", "settled_at", "created_at")


@dataclass
class TaskLine:
    task: str
    occurrences: int = 0
    succeeded: int = 0
    failed_over: int = 0
    failed: int = 0
    drills: int = 0
    last_success: str | None = None
    bytes: int = 0

    def count(self, runs: list[dict[str, Any]], state: str) -> None:
        """Count one settled occurrence of the task, with its runs."""
        self.occurrences += 1
        if state == OccurrenceState.SUCCEEDED:
            self.succeeded += 1
        else:
            self.failed += 1
        if any(r.get("drill") for r in runs):
            self.drills += 1
        elif any(r.get("failover_of") or r["state"] == RunState.STORAGE_UNAVAILABLE
                 for r in runs):
            self.failed_over += 1
        for run in runs:
            if run["state"] != RunState.SUCCEEDED:
                continue
            self.bytes += int(run.get("bytes") or 0)
            finished = run.get("finished_at")
            if finished and (self.last_success is None or finished > self.last_success):
                self.last_success = finished

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task, "occurrences": self.occurrences,
                "succeeded": self.succeeded, "failed_over": self.failed_over,
                "failed": self.failed, "drills": self.drills,
                "last_success": self.last_success,
                "bytes": self.bytes}


def _fields(raw: list[Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {name: json.loads(value) for name, value in zip(names, raw, strict=True)
            if value is not None}


def task_lines(ledger: Ledger, config: Config, since: datetime,
               until: datetime) -> list[TaskLine]:
    lines = {t.name: TaskLine(t.name) for t in config.tasks}
    runs_of = _backup_runs(ledger, since - config.backup_time_limit - timedelta(hours=1),
                           until)
    for runs, state in _settled(ledger, runs_of, since, until):
        task = next((r["task"] for r in runs if r.get("task")), None)
        if task in lines:
            lines[task].count(runs, state)
    for line in lines.values():
        if line.last_success is None:  # none in the period: the newest before it
            newest = ledger.query(task=line.task, state=RunState.SUCCEEDED, limit=1)
            if newest and newest[0].finished_at:
                line.last_success = newest[0].finished_at.isoformat()
    return sorted(lines.values(), key=lambda line: line.task)


def _backup_runs(ledger: Ledger, low: datetime, high: datetime
                 ) -> dict[str, list[dict[str, Any]]]:
    """The backup runs queued between ``low`` and ``high`` (the fields the report counts),
    by occurrence."""
    client = ledger.client
    ids = [i.decode() for i in client.zrangebyscore(RUNS_INDEX_KEY, low.timestamp(),
                                                    high.timestamp())]
    pipe = client.pipeline(transaction=False)
    for run_id in ids:
        pipe.hmget(RUN_KEY.format(run=run_id), RUN_FIELDS)
    runs_of: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for raw in pipe.execute():
        run = _fields(raw, RUN_FIELDS)
        if "state" in run and run.get("kind", RunKind.BACKUP.value) == RunKind.BACKUP.value:
            runs_of[run["occurrence"]].append(run)
    return runs_of


def _settled(ledger: Ledger, runs_of: dict[str, list[dict[str, Any]]], since: datetime,
             until: datetime) -> Iterator[tuple[list[dict[str, Any]], str]]:
    """(runs, occurrence state) of the occurrences that settled in the period (a missed one
    when it was recorded), suppressed ones left out."""
    occurrences = list(runs_of)
    pipe = ledger.client.pipeline(transaction=False)
    for occurrence in occurrences:
        pipe.hmget(OCCURRENCE_KEY.format(occ=occurrence), OCCURRENCE_FIELDS)
    for occurrence, raw in zip(occurrences, pipe.execute(), strict=True):
        found = _fields(raw, OCCURRENCE_FIELDS)
        state, settled = found.get("state"), found.get("settled_at") or found.get("created_at")
        if (settled and state not in (None, OccurrenceState.OPEN, OccurrenceState.SUPPRESSED)
                and since <= datetime.fromisoformat(settled) <= until):
            yield runs_of[occurrence], state


def fleet_report(ledger: Ledger, config: Config, pools: list[dict[str, Any]],
                 since: datetime, until: datetime) -> dict[str, Any]:
    """SPEC section 10 ``report --json``; ``pools``: lines of a pools report with
    ``days_until_full`` over the same period."""
    return {"since": since.isoformat(), "until": until.isoformat(),
            "tasks": [line.to_json() for line in task_lines(ledger, config, since, until)],
            "pools": [{"name": p["name"], "used_bytes": p["used_bytes"],
                       "free_bytes": p["free_bytes"], "days_until_full": p["days_until_full"]}
                      for p in pools]}
