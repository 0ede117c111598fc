"""The run ledger in Redis: runs and occurrences, with atomic state transitions.

Every transition is one Lua script or one MULTI/EXEC transaction, so that of two workers,
two beats or a message delivered twice, exactly one wins: a run is claimed by one process at
a time (it holds a lease it renews while it works); a run that has ended cannot be claimed
or ended again; an occurrence and its first run are written together, once; an occurrence
is settled once; the failover run of an occurrence is added once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from string import Template
from typing import Any

import redis
from redis.client import Pipeline

from backstop.constants import (
    HISTORY_SWEEP_BATCH,
    HISTORY_SWEEP_S,
    OCCURRENCE_FAILOVER_KEY,
    OCCURRENCE_KEY,
    OCCURRENCE_RUNS_KEY,
    OCCURRENCES_OPEN_KEY,
    RUN_KEY,
    RUN_LEASE_KEY,
    RUNS_BY_EVENT_KEY,
    RUNS_BY_STATE_KEY,
    RUNS_BY_TASK_KEY,
    RUNS_INDEX_KEY,
    RUNS_UNFINISHED_KEY,
)
from backstop.orchestration.leader import RENEW_SCRIPT
from backstop.orchestration.metrics import APPLY_COUNTS_LUA, add_counts, counts_of_end
from backstop.orchestration.replicas import Replicas
from backstop.runs import (
    ACTIVE,
    TERMINAL,
    Occurrence,
    OccurrenceState,
    Run,
    RunEnd,
    RunState,
    Trigger,
    utc_now,
)

# Ended states with an index of their own: the rare ones an operator looks for (most runs
# succeed; ``runs --state succeeded`` reads the index of all runs).
STATE_INDEXED = frozenset(TERMINAL - {RunState.SUCCEEDED})
# The occurrence hash's field naming its first run (its failover run is in
# OCCURRENCE_FAILOVER_KEY).
FIRST_RUN = "run"


def _lua(script: str) -> str:
    """A script with each ``$state`` replaced by that state's JSON, as a Lua string."""
    states = {s.name.lower(): f"'{json.dumps(s.value)}'"
              for s in (*RunState, *OccurrenceState)}
    return Template(script).substitute(states)


# Records are hashes whose values are JSON, encoded by backstop.runs; scripts only compare
# states and set the fields they are given (as field, JSON value pairs).
_CLAIM = _lua("""
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'missing' end
if redis.call('HGET', KEYS[1], 'cancel_requested') == 'true' then return 'cancelled' end
if state == $queued or (state == $running and redis.call('EXISTS', KEYS[2]) == 0) then
  redis.call('HSET', KEYS[1], 'state', $running, 'worker', ARGV[4])
  local started = redis.call('HGET', KEYS[1], 'started_at')
  if not started or started == 'null' then
    redis.call('HSET', KEYS[1], 'started_at', ARGV[2])
  end
  redis.call('HINCRBY', KEYS[1], 'attempts', 1)
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
  return 'claimed'
end
if state == $running then return 'busy' end
return 'ended'
""")
# ARGV: holder ('' = not claimed by anyone: dispatch or watchdog), run id, the number of
# field/value arguments, the field/value pairs, then the metrics' counts (metrics.Count.args).
_FINISH = _lua("""
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'missing' end
if state ~= $queued and state ~= $running then return 'ended' end
local holder = redis.call('GET', KEYS[2])
if ARGV[1] ~= '' and holder ~= ARGV[1] then return 'lost' end
if ARGV[1] == '' and holder then return 'busy' end
local first = 4 + tonumber(ARGV[3])
redis.call('HSET', KEYS[1], unpack(ARGV, 4, first - 1))
redis.call('HDEL', KEYS[1], 'progress')
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[3], ARGV[2])
local queued = redis.call('ZSCORE', KEYS[4], ARGV[2])
if queued and KEYS[5] then redis.call('ZADD', KEYS[5], queued, ARGV[2]) end
""" + APPLY_COUNTS_LUA + """
return 'done'
""")
_UPDATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""
_SETTLE = _lua("""
if redis.call('HGET', KEYS[1], 'state') ~= $open then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'settled_at', ARGV[2])
redis.call('SREM', KEYS[2], ARGV[3])
return 1
""")


def _flat(encoded: dict[str, str]) -> list[str]:
    """Field/JSON-value pairs, flat, for the scripts' ARGV."""
    return [part for pair in encoded.items() for part in pair]


def _decoded(raw: dict[Any, Any]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in raw.items()}


@dataclass(frozen=True)
class Claim:
    outcome: str  # claimed | busy | ended | missing | cancelled

    @property
    def ok(self) -> bool:
        return self.outcome == "claimed"


class Ledger:
    def __init__(self, client: redis.Redis, history: timedelta = timedelta(days=90),
                 replicas: Replicas | None = None) -> None:
        self.client = client
        self.history = history
        # acknowledged writes wait for a replica (SPEC section 13); None: nothing waits
        self.replicas = replicas
        self._next_sweep = 0.0
        self._claim = client.register_script(_CLAIM)
        self._renew = client.register_script(RENEW_SCRIPT)
        self._finish = client.register_script(_FINISH)
        self._update = client.register_script(_UPDATE)
        self._settle = client.register_script(_SETTLE)

    # occurrences

    def open_occurrence(self, occurrence: str, event: str, trigger: Trigger, first_run: Run,
                        parent: str | None = None,
                        state: OccurrenceState = OccurrenceState.OPEN) -> bool:
        """Record a new occurrence and its first run in one transaction; False when the
        occurrence exists already (a second beat, a redelivery). A process killed at any
        point leaves either both or neither."""
        key = OCCURRENCE_KEY.format(occ=occurrence)
        record = Occurrence(occurrence=occurrence, event=event, trigger=trigger,
                            parent=parent, state=state, created_at=utc_now())

        def write(pipe: Pipeline) -> None:
            pipe.hset(key, mapping={**record.encode(), FIRST_RUN: json.dumps(first_run.run_id)})
            if state is OccurrenceState.OPEN:
                pipe.sadd(OCCURRENCES_OPEN_KEY, occurrence)
            self._add_run(pipe, first_run)

        return self._write_once(key, write)

    def open_occurrences(self) -> list[str]:
        return sorted(_text(o) for o in self.client.smembers(OCCURRENCES_OPEN_KEY))

    def occurrence(self, occurrence: str) -> Occurrence | None:
        raw = _decoded(self.client.hgetall(OCCURRENCE_KEY.format(occ=occurrence)))
        return Occurrence.decode(raw, occurrence) if "state" in raw else None

    def settle(self, occurrence: str, state: OccurrenceState) -> bool:
        """Close an open occurrence as succeeded/failed; True only for the one caller that did."""
        settled = bool(self._settle(keys=[OCCURRENCE_KEY.format(occ=occurrence),
                                          OCCURRENCES_OPEN_KEY],
                                    args=[json.dumps(state.value),
                                          json.dumps(utc_now().isoformat()), occurrence]))
        if settled:
            self._replicated(f"settle {occurrence}")
        return settled

    def add_failover_run(self, original: str, run: Run) -> bool:
        """Add the failover run of an occurrence and link the original run to it, in one
        transaction; False when the occurrence has its failover run already."""
        key = OCCURRENCE_FAILOVER_KEY.format(occ=run.occurrence)

        def write(pipe: Pipeline) -> None:
            pipe.set(key, run.run_id)
            self._add_run(pipe, run)
            pipe.hset(RUN_KEY.format(run=original),
                      mapping=Run.encode({"failover_run": run.run_id}))

        return self._write_once(key, write)

    def _write_once(self, guard: str, write: Callable[[Pipeline], None]) -> bool:
        """Run ``write`` in a MULTI/EXEC transaction if ``guard`` does not exist, and no one
        creates it meanwhile."""
        with self.client.pipeline() as pipe:
            try:
                pipe.watch(guard)
                if pipe.exists(guard):
                    return False
                pipe.multi()
                write(pipe)
                pipe.execute()
            except redis.WatchError:
                return False
        self._replicated(f"record {guard}")
        self._sweep()
        return True

    def _replicated(self, what: str) -> None:
        if self.replicas is not None:
            self.replicas.wait(what)

    # runs

    def _add_run(self, pipe: Pipeline, run: Run) -> None:
        pipe.hset(RUN_KEY.format(run=run.run_id), mapping=run.encoded())
        for index in _indexes(run):
            pipe.zadd(index, {run.run_id: run.queued_at.timestamp()})
        if run.state in ACTIVE:
            pipe.sadd(RUNS_UNFINISHED_KEY, run.run_id)
        else:  # recorded ended (missed, suppressed)
            add_counts(pipe, counts_of_end(run, RunEnd(run.state, run.error), run.queued_at))

    def run(self, run_id: str) -> Run | None:
        raw = _decoded(self.client.hgetall(RUN_KEY.format(run=run_id)))
        return Run.decode(raw, run_id) if "state" in raw else None

    def claim(self, run_id: str, holder: str, lease_ms: int) -> Claim:
        keys = [RUN_KEY.format(run=run_id), RUN_LEASE_KEY.format(run=run_id)]
        args: list[str | int] = [holder, json.dumps(utc_now().isoformat()), lease_ms,
                                 json.dumps(holder)]
        return Claim(_text(self._claim(keys=keys, args=args)))

    def renew(self, run_id: str, holder: str, lease_ms: int) -> bool:
        return bool(self._renew(keys=[RUN_LEASE_KEY.format(run=run_id)], args=[holder, lease_ms]))

    def lease_holder(self, run_id: str) -> str | None:
        value = self.client.get(RUN_LEASE_KEY.format(run=run_id))
        return _text(value) if value else None

    def finish(self, run_id: str, end: RunEnd, holder: str = "") -> str:
        """End a run: ``done``, or ``ended``/``lost``/``busy`` when someone else has it.
        The end is counted in the metrics by the same script, so exactly once."""
        now = utc_now()
        before = self.run(run_id)
        counts = counts_of_end(before, end, now) if before is not None else []
        pairs = _flat(Run.encode({"finished_at": now, **end.values()}))
        keys = [RUN_KEY.format(run=run_id), RUN_LEASE_KEY.format(run=run_id),
                RUNS_UNFINISHED_KEY, RUNS_INDEX_KEY]
        if end.state in STATE_INDEXED:
            keys.append(RUNS_BY_STATE_KEY.format(state=end.state.value))
        args = [holder, run_id, str(len(pairs)), *pairs,
                *(arg for count in counts for arg in count.args())]
        outcome = _text(self._finish(keys=keys, args=args))
        if outcome == "done":
            self._replicated(f"end run {run_id}")
        return outcome

    def update(self, run_id: str, **fields: Any) -> None:
        """Set fields of a run that exists (progress, the drive it got, its migration)."""
        self._update(keys=[RUN_KEY.format(run=run_id)], args=_flat(Run.encode(fields)))

    def runs_of(self, occurrence: str) -> list[Run]:
        """The occurrence's run, then its failover run if it has one."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(OCCURRENCE_KEY.format(occ=occurrence), FIRST_RUN)
        pipe.get(OCCURRENCE_FAILOVER_KEY.format(occ=occurrence))
        pipe.lrange(OCCURRENCE_RUNS_KEY.format(occ=occurrence), 0, -1)  # before 0.4
        first, failover, listed = pipe.execute()
        ids = [_text(i) for i in listed]
        if not ids:
            ids = [json.loads(first)] if first else []
            ids += [_text(failover)] if failover else []
        return self._records(ids)

    def recent(self, event: str | None = None, limit: int = 50) -> list[Run]:
        """Runs, newest first."""
        return self.query(event=event, limit=limit)

    def query(self, *, event: str | None = None, task: str | None = None,
              state: RunState | None = None, since: datetime | None = None,
              limit: int = 50) -> list[Run]:
        """Runs newest first that match every filter given: runs that used or were triggered
        by ``event``, of ``task``, in ``state``, queued at or after ``since``. Reads one
        index (the narrowest the filters allow) page by page."""
        if state in ACTIVE:
            ids = [_text(i) for i in self.client.smembers(RUNS_UNFINISHED_KEY)]
            found = [r for r in self._records(ids) if matches(r, event, task, state, since)]
            return sorted(found, key=lambda r: r.queued_at, reverse=True)[:limit]
        index = (RUNS_BY_STATE_KEY.format(state=state.value) if state in STATE_INDEXED
                 else RUNS_BY_TASK_KEY.format(task=task) if task
                 else RUNS_BY_EVENT_KEY.format(event=event) if event
                 else RUNS_INDEX_KEY)
        low = since.timestamp() if since else "-inf"
        page = max(limit, 100)
        found, offset = [], 0
        while len(found) < limit:
            ids = [_text(i) for i in self.client.zrevrangebyscore(index, "+inf", low,
                                                                  start=offset, num=page)]
            found += [r for r in self._records(ids) if matches(r, event, task, state, since)]
            if len(ids) < page:
                break
            offset += page
        return found[:limit]

    def unfinished(self) -> list[Run]:
        """Queued and running runs: the watchdog's work list."""
        ids = sorted(_text(i) for i in self.client.smembers(RUNS_UNFINISHED_KEY))
        return [r for r in self._records(ids) if r.state in ACTIVE]

    def _records(self, ids: Iterable[str]) -> list[Run]:
        """The runs of ``ids`` that exist, in that order."""
        ids = list(ids)
        pipe = self.client.pipeline(transaction=False)
        for run_id in ids:
            pipe.hgetall(RUN_KEY.format(run=run_id))
        return [Run.decode(raw, run_id) for run_id, found in zip(ids, pipe.execute(), strict=True)
                if "state" in (raw := _decoded(found))]

    def _sweep(self) -> None:
        """Forget past history now and then (at most every HISTORY_SWEEP_S per ledger)."""
        if time.monotonic() < self._next_sweep:
            return
        self._next_sweep = time.monotonic() + HISTORY_SWEEP_S
        self.forget_past_history()

    def forget_past_history(self, now: datetime | None = None,
                            at_most: int = 20 * HISTORY_SWEEP_BATCH) -> int:
        """Let ended runs queued before the history window leave the ledger (up to
        ``at_most``, a batch at a time), with every index entry and, once settled, their
        occurrences. Runs still queued or running stay whatever their age. Returns how many
        runs left."""
        cutoff = (now or utc_now()) - self.history
        gone = skipped = 0
        while gone < at_most:
            ids = [_text(i) for i in self.client.zrangebyscore(
                RUNS_INDEX_KEY, "-inf", cutoff.timestamp(), start=skipped,
                num=HISTORY_SWEEP_BATCH)]
            left = self._forget(ids)
            gone, skipped = gone + left, skipped + len(ids) - left
            if len(ids) < HISTORY_SWEEP_BATCH:
                break
        return gone

    def _forget(self, ids: list[str]) -> int:
        """Forget the ended runs of ``ids``; return how many of ``ids`` left the index."""
        if not ids:
            return 0
        runs = self._records(ids)
        ended = [r for r in runs if r.state.ended]
        occurrences = sorted({r.occurrence for r in ended})
        still_open = (self.client.smismember(OCCURRENCES_OPEN_KEY, occurrences)
                      if occurrences else [])
        pipe = self.client.pipeline(transaction=False)
        gone = set(ids) - {r.run_id for r in runs}  # records gone already
        if gone:
            pipe.zrem(RUNS_INDEX_KEY, *gone)
        for run in ended:
            pipe.delete(RUN_KEY.format(run=run.run_id))
            for index in _indexes(run):
                pipe.zrem(index, run.run_id)
        for occurrence, is_open in zip(occurrences, still_open, strict=True):
            if not is_open:
                pipe.delete(OCCURRENCE_KEY.format(occ=occurrence),
                            OCCURRENCE_RUNS_KEY.format(occ=occurrence),
                            OCCURRENCE_FAILOVER_KEY.format(occ=occurrence))
        pipe.execute()
        return len(ids) - (len(runs) - len(ended))


def _indexes(run: Run) -> list[str]:
    """The sorted sets that list ``run`` (by queue time): all runs, its events, its task, its
    state when that state has an index (an active run enters its state's when it ends)."""
    found = [RUNS_INDEX_KEY,
             *(RUNS_BY_EVENT_KEY.format(event=e) for e in {run.event, run.origin_event})]
    if run.task:
        found.append(RUNS_BY_TASK_KEY.format(task=run.task))
    if run.state in STATE_INDEXED:
        found.append(RUNS_BY_STATE_KEY.format(state=run.state.value))
    return found


def matches(run: Run, event: str | None = None, task: str | None = None,
            state: RunState | None = None, since: datetime | None = None) -> bool:
    """Whether ``run`` used or was triggered by ``event``, is of ``task``, in ``state`` and
    queued at or after ``since`` (each when given)."""
    return ((event is None or event in (run.event, run.origin_event))
            and (task is None or run.task == task)
            and (state is None or run.state is state)
            and (since is None or run.queued_at >= since))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
