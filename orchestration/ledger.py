"""The run ledger in Redis: runs and occurrences, with atomic state transitions.

Every transition is one Lua script, so that of two workers, two beats or a message
delivered twice, exactly one wins: a run is claimed by one process at a time (it holds a
lease it renews while it works); a run that has ended cannot be claimed or ended again;
an occurrence is settled once, and only the caller that settled it fires its follow-ups;
the failover of an occurrence is started once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from workers.constants import (
    OCCURRENCE_FAILOVER_KEY,
    OCCURRENCE_KEY,
    OCCURRENCE_RUNS_KEY,
    RUN_KEY,
    RUN_LEASE_KEY,
    RUNS_BY_EVENT_KEY,
    RUNS_INDEX_KEY,
    RUNS_KEPT,
)

TERMINAL = ("succeeded", "failed", "storage_unavailable", "suppressed", "missed")

_CLAIM = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 'missing' end
local run = cjson.decode(raw)
if run.state == 'queued' or (run.state == 'running' and redis.call('EXISTS', KEYS[2]) == 0) then
  run.state = 'running'
  if run.started_at == cjson.null then run.started_at = ARGV[2] end
  run.worker = ARGV[1]
  run.attempts = (run.attempts or 0) + 1
  redis.call('SET', KEYS[1], cjson.encode(run))
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
  return 'claimed'
end
if run.state == 'running' then return 'busy' end
return 'ended'
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# ARGV: holder ('' = not claimed by anyone: dispatch or watchdog), JSON of fields to set.
_FINISH = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 'missing' end
local run = cjson.decode(raw)
if run.state ~= 'queued' and run.state ~= 'running' then return 'ended' end
local holder = redis.call('GET', KEYS[2])
if ARGV[1] ~= '' and holder ~= ARGV[1] then return 'lost' end
if ARGV[1] == '' and holder then return 'busy' end
for k, v in pairs(cjson.decode(ARGV[2])) do run[k] = v end
redis.call('SET', KEYS[1], cjson.encode(run))
redis.call('DEL', KEYS[2])
return 'done'
"""
_UPDATE = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local run = cjson.decode(raw)
for k, v in pairs(cjson.decode(ARGV[1])) do run[k] = v end
redis.call('SET', KEYS[1], cjson.encode(run))
return 1
"""
_SETTLE = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local occ = cjson.decode(raw)
if occ.state ~= 'open' then return 0 end
occ.state = ARGV[1]
occ.settled_at = ARGV[2]
redis.call('SET', KEYS[1], cjson.encode(occ))
return 1
"""


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


@dataclass(frozen=True)
class Claim:
    outcome: str  # claimed | busy | ended | missing

    @property
    def ok(self) -> bool:
        return self.outcome == "claimed"


class Ledger:
    def __init__(self, client: redis.Redis, kept: int = RUNS_KEPT) -> None:
        self.client = client
        self.kept = kept
        self._claim = client.register_script(_CLAIM)
        self._renew = client.register_script(_RENEW)
        self._finish = client.register_script(_FINISH)
        self._update = client.register_script(_UPDATE)
        self._settle = client.register_script(_SETTLE)

    # occurrences

    def open_occurrence(self, occurrence: str, event: str, trigger: str,
                        parent: str | None = None, state: str = "open") -> bool:
        """Record a new occurrence; False when it exists already (a second beat, a redelivery)."""
        record = {"occurrence": occurrence, "event": event, "trigger": trigger,
                  "parent": parent, "state": state, "created_at": now_iso()}
        return bool(self.client.set(OCCURRENCE_KEY.format(occ=occurrence), json.dumps(record),
                                    nx=True))

    def occurrence(self, occurrence: str) -> dict[str, Any] | None:
        raw = self.client.get(OCCURRENCE_KEY.format(occ=occurrence))
        return json.loads(raw) if raw else None

    def settle(self, occurrence: str, state: str) -> bool:
        """Close an open occurrence as succeeded/failed; True only for the one caller that did."""
        return bool(self._settle(keys=[OCCURRENCE_KEY.format(occ=occurrence)],
                                 args=[state, now_iso()]))

    def start_failover_once(self, occurrence: str) -> bool:
        return bool(self.client.set(OCCURRENCE_FAILOVER_KEY.format(occ=occurrence), "1", nx=True))

    # runs

    def add_run(self, record: dict[str, Any]) -> bool:
        run_id, occurrence = record["run_id"], record["occurrence"]
        if not self.client.set(RUN_KEY.format(run=run_id), json.dumps(record), nx=True):
            return False
        score = datetime.fromisoformat(record["queued_at"]).timestamp()
        pipe = self.client.pipeline(transaction=False)
        pipe.zadd(RUNS_INDEX_KEY, {run_id: score})
        for event in {record["event"], record["origin_event"]}:
            pipe.zadd(RUNS_BY_EVENT_KEY.format(event=event), {run_id: score})
        pipe.rpush(OCCURRENCE_RUNS_KEY.format(occ=occurrence), run_id)
        pipe.execute()
        self._trim()
        return True

    def run(self, run_id: str) -> dict[str, Any] | None:
        raw = self.client.get(RUN_KEY.format(run=run_id))
        return json.loads(raw) if raw else None

    def claim(self, run_id: str, holder: str, lease_ms: int) -> Claim:
        keys = [RUN_KEY.format(run=run_id), RUN_LEASE_KEY.format(run=run_id)]
        return Claim(_text(self._claim(keys=keys, args=[holder, now_iso(), lease_ms])))

    def renew(self, run_id: str, holder: str, lease_ms: int) -> bool:
        return bool(self._renew(keys=[RUN_LEASE_KEY.format(run=run_id)], args=[holder, lease_ms]))

    def lease_holder(self, run_id: str) -> str | None:
        value = self.client.get(RUN_LEASE_KEY.format(run=run_id))
        return _text(value) if value else None

    def finish(self, run_id: str, fields: dict[str, Any], holder: str = "") -> str:
        """End a run: ``done``, or ``ended``/``lost``/``busy`` when someone else has it."""
        fields = {"finished_at": now_iso(), **fields}
        keys = [RUN_KEY.format(run=run_id), RUN_LEASE_KEY.format(run=run_id)]
        return _text(self._finish(keys=keys, args=[holder, json.dumps(fields)]))

    def update(self, run_id: str, fields: dict[str, Any]) -> None:
        self._update(keys=[RUN_KEY.format(run=run_id)], args=[json.dumps(fields)])

    def runs_of(self, occurrence: str) -> list[dict[str, Any]]:
        ids = [_text(i) for i in self.client.lrange(OCCURRENCE_RUNS_KEY.format(occ=occurrence),
                                                    0, -1)]
        return self._records(ids)

    def recent(self, event: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Runs, newest first."""
        index = RUNS_BY_EVENT_KEY.format(event=event) if event else RUNS_INDEX_KEY
        return self._records([_text(i) for i in self.client.zrevrange(index, 0, limit - 1)])

    def unfinished(self) -> list[dict[str, Any]]:
        """Queued and running runs (the watchdog's work list), among the newest kept."""
        ids = [_text(i) for i in self.client.zrevrange(RUNS_INDEX_KEY, 0, -1)]
        return [r for r in self._records(ids) if r["state"] in ("queued", "running")]

    def _records(self, ids: Iterable[str]) -> list[dict[str, Any]]:
        keys = [RUN_KEY.format(run=i) for i in ids]
        return [json.loads(raw) for raw in (self.client.mget(keys) if keys else []) if raw]

    def _trim(self) -> None:
        """Bounded history: forget the oldest runs beyond ``kept`` once they have ended."""
        excess = int(self.client.zcard(RUNS_INDEX_KEY)) - self.kept
        if excess <= 0:
            return
        for run in self._records([_text(i) for i in
                                  self.client.zrange(RUNS_INDEX_KEY, 0, excess - 1)]):
            if run["state"] in TERMINAL:
                pipe = self.client.pipeline(transaction=False)
                pipe.delete(RUN_KEY.format(run=run["run_id"]))
                pipe.zrem(RUNS_INDEX_KEY, run["run_id"])
                for event in {run["event"], run["origin_event"]}:
                    pipe.zrem(RUNS_BY_EVENT_KEY.format(event=event), run["run_id"])
                pipe.execute()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
