"""The fleet's counters (SPEC section 10 metrics), kept in the broker.

Counters live in Redis hashes, one per metric, whose fields are the JSON arrays of their
label values. A run's end is counted in the same script that ends it (``Ledger.finish``), so
each end is counted once whoever ended it, every exporter of a fleet reads the same numbers,
and they survive restarts of every process. Labels are names from the config and fixed
words, never run or saveset ids. :mod:`backstop.orchestration.exporter` serves them to Prometheus.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime

from redis.client import Pipeline

from backstop.constants import (
    METRICS_BYTES_KEY,
    METRICS_DRILLS_KEY,
    METRICS_DURATION_KEY,
    METRICS_ERRORS_KEY,
    METRICS_FAILOVERS_KEY,
    METRICS_LAST_SUCCESS_KEY,
    METRICS_RUNS_KEY,
    METRICS_UNAVAILABLE_KEY,
)
from backstop.runs import Run, RunEnd, RunKind, RunState

# Upper bounds of the run duration histogram's buckets, in seconds: half a minute to a day.
DURATION_BUCKETS = (30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0,
                    86400.0, math.inf)
SUM = "sum"  # the histogram's sum field, next to its buckets


@dataclass(frozen=True)
class Count:
    """One change to a counter hash: add ``value`` to the field of ``labels``; with
    ``at_least``, raise the field to ``value`` if it is lower (a timestamp gauge)."""

    key: str
    labels: tuple[str, ...]
    value: float
    at_least: bool = False

    def args(self) -> list[str]:
        return ["max" if self.at_least else "add", self.key, json.dumps(self.labels),
                repr(float(self.value))]


def bucket_label(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else f"{bound:g}"


def counts_of_end(run: Run, end: RunEnd, now: datetime) -> list[Count]:
    """What the end of ``run`` as ``end`` adds to the counters."""
    counts = [Count(METRICS_RUNS_KEY, (run.event, run.task or "", run.trigger.value,
                                       end.state.value), 1)]
    counts += outage_counts(run, end)
    if end.error is not None:
        counts.append(Count(METRICS_ERRORS_KEY, (run.event, end.error.kind.value), 1))
    if run.kind is not RunKind.BACKUP or not run.task:
        return counts
    if end.state is RunState.SUCCEEDED:
        counts.append(Count(METRICS_BYTES_KEY, (run.task, run.media_pool or ""),
                            end.bytes or 0))
        counts.append(Count(METRICS_LAST_SUCCESS_KEY, (run.task,), now.timestamp(),
                            at_least=True))
    if run.started_at is not None:
        seconds = max(0.0, (now - run.started_at).total_seconds())
        level = str(end.effective_level or run.effective_level or run.level or "")
        bound = next(b for b in DURATION_BUCKETS if seconds <= b)
        counts += [Count(METRICS_DURATION_KEY, (run.task, level, bucket_label(bound)), 1),
                   Count(METRICS_DURATION_KEY, (run.task, level, SUM), seconds)]
    return counts


def outage_counts(run: Run, end: RunEnd) -> list[Count]:
    """Storage unavailable and failovers; a drill's outage was made up, so its failover is
    counted apart (``backstop_drills_total``) and no alert takes it for a real one."""
    result = "succeeded" if end.state is RunState.SUCCEEDED else "failed"
    if run.drill:
        return ([Count(METRICS_DRILLS_KEY, (run.origin_event, run.event, result), 1)]
                if run.failover_of is not None else [])
    counts = []
    if end.state is RunState.STORAGE_UNAVAILABLE and end.error and end.error.reason:
        counts.append(Count(METRICS_UNAVAILABLE_KEY, (run.event, end.error.reason.value), 1))
    if run.failover_of is not None:
        counts.append(Count(METRICS_FAILOVERS_KEY, (run.origin_event, run.event, result), 1))
    return counts


def add_counts(pipe: Pipeline, counts: list[Count]) -> None:
    """Apply ``counts`` in a pipeline (a transaction's: runs recorded as already ended)."""
    for count in counts:
        pipe.eval("local first = 1\n" + APPLY_COUNTS_LUA, 0, *count.args())


# Applies Count.args quadruples from ARGV[first] on; the script it is part of sets ``first``.
APPLY_COUNTS_LUA = """
for i = first, #ARGV, 4 do
  local key, field, value = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  if ARGV[i] == 'add' then
    redis.call('HINCRBYFLOAT', key, field, value)
  else
    local now = tonumber(redis.call('HGET', key, field))
    if not now or now < tonumber(value) then redis.call('HSET', key, field, value) end
  end
end
"""

