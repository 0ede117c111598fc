"""The saveset catalog, in Redis so that every host of the fleet sees the same savesets.

Implements the data plane's :class:`backstop.workers.catalog.Catalog`. An entry is added only after
its saveset was committed to its store, so the catalog never names a saveset that is not
there; ``rebuild`` recreates it from the stores.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import datetime

import redis

from backstop.config import Level
from backstop.constants import (
    CATALOG_CACHED_KEY,
    CATALOG_FULL_ATTEMPT_KEY,
    CATALOG_INDEX_KEY,
    CATALOG_MANIFEST_KEY,
    CATALOG_POOL_KEY,
    CATALOG_SAVESET_KEY,
    CATALOG_TASK_KEY,
)
from backstop.model import Saveset
from backstop.orchestration.replicas import Replicas
from backstop.workers.levels import BASE_LEVELS, LevelFacts, PastSaveset


class RedisCatalog:
    def __init__(self, client: redis.Redis, replicas: Replicas | None = None) -> None:
        self.client = client
        self.replicas = replicas  # entries wait for a replica (SPEC section 13)

    def add(self, saveset: Saveset, manifest: bytes) -> None:
        score = saveset.created_at.timestamp()
        pipe = self.client.pipeline(transaction=True)
        pipe.set(CATALOG_SAVESET_KEY.format(id=saveset.id), saveset.dumps())
        pipe.zadd(CATALOG_INDEX_KEY, {saveset.id: score})
        pipe.zadd(CATALOG_TASK_KEY.format(task=saveset.task), {saveset.id: score})
        pipe.zadd(CATALOG_POOL_KEY.format(pool=saveset.pool), {saveset.id: score})
        if saveset.level in BASE_LEVELS and not saveset.encrypted:  # no file names of those
            pipe.set(CATALOG_MANIFEST_KEY.format(id=saveset.id), manifest)
            pipe.sadd(CATALOG_CACHED_KEY.format(task=saveset.task), saveset.id)
        pipe.execute()
        if self.replicas is not None:
            self.replicas.wait(f"catalog {saveset.id}")
        self._drop_stale_manifests(saveset.task)

    def remove(self, saveset: Saveset) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(CATALOG_SAVESET_KEY.format(id=saveset.id),
                    CATALOG_MANIFEST_KEY.format(id=saveset.id))
        pipe.zrem(CATALOG_INDEX_KEY, saveset.id)
        pipe.zrem(CATALOG_TASK_KEY.format(task=saveset.task), saveset.id)
        pipe.zrem(CATALOG_POOL_KEY.format(pool=saveset.pool), saveset.id)
        pipe.srem(CATALOG_CACHED_KEY.format(task=saveset.task), saveset.id)
        pipe.execute()

    def in_pool(self, pool: str) -> list[Saveset]:
        """The savesets of one pool, oldest first."""
        return self._load([text(i) for i in
                           self.client.zrange(CATALOG_POOL_KEY.format(pool=pool), 0, -1)])

    def newest_first(self, task: str, page: int = 64) -> Iterator[Saveset]:
        """A task's savesets, newest first, read a page at a time."""
        key, start = CATALOG_TASK_KEY.format(task=task), 0
        while ids := [text(i) for i in self.client.zrevrange(key, start, start + page - 1)]:
            yield from self._load(ids)
            start += page

    def bases(self, task: str) -> tuple[Saveset | None, Saveset | None]:
        """The task's newest FULL and its newest FULL/DIFF/INC: the possible bases."""
        full = base = None
        for saveset in self.newest_first(task):
            if base is None and saveset.level in BASE_LEVELS:
                base = saveset
            if saveset.level is Level.FULL:
                full = saveset
                break
        return full, base

    def _load(self, ids: list[str]) -> list[Saveset]:
        if not ids:
            return []
        raws = self.client.mget([CATALOG_SAVESET_KEY.format(id=i) for i in ids])
        return [Saveset.from_json(json.loads(raw)) for raw in raws if raw]

    def get(self, saveset_id: str) -> Saveset | None:
        raw = self.client.get(CATALOG_SAVESET_KEY.format(id=saveset_id))
        return Saveset.from_json(json.loads(raw)) if raw else None

    def all(self, task: str | None = None) -> list[Saveset]:
        """Savesets, oldest first."""
        index = CATALOG_TASK_KEY.format(task=task) if task else CATALOG_INDEX_KEY
        return self._load([text(i) for i in self.client.zrange(index, 0, -1)])

    def manifest(self, saveset_id: str) -> bytes | None:
        value = self.client.get(CATALOG_MANIFEST_KEY.format(id=saveset_id))
        return value if isinstance(value, bytes) else None

    def record_full_attempt(self, task: str, ok: bool, at: datetime, run_id: str | None) -> None:
        self.client.set(CATALOG_FULL_ATTEMPT_KEY.format(task=task),
                        json.dumps({"at": at.isoformat(), "ok": ok, "run_id": run_id}))

    def level_facts(self, task: str, now: datetime,
                    store_unavailable: Callable[[str], bool]) -> LevelFacts:
        full, base = self.bases(task)
        last_full = _past(full) if full else None
        last_backup = _past(base) if base else None
        stores = {s.data_store for s in (last_full, last_backup) if s is not None}
        return LevelFacts(now=now, last_full=last_full, last_backup=last_backup,
                          full_attempt_failed=self._full_attempt_failed(task, last_full),
                          unavailable_stores=frozenset(s for s in stores if store_unavailable(s)))

    def _full_attempt_failed(self, task: str, last_full: PastSaveset | None) -> bool:
        raw = self.client.get(CATALOG_FULL_ATTEMPT_KEY.format(task=task))
        if not raw or last_full is None:
            return False
        attempt = json.loads(raw)
        return not attempt["ok"] and datetime.fromisoformat(attempt["at"]) > last_full.created_at

    def _drop_stale_manifests(self, task: str) -> None:
        """Keep cached manifests only of the savesets a future DIFF/INC may be based on."""
        keep = {s.id for s in self.bases(task) if s is not None}
        cached = {text(i) for i in self.client.smembers(CATALOG_CACHED_KEY.format(task=task))}
        stale = sorted(cached - keep)
        if stale:
            self.client.delete(*(CATALOG_MANIFEST_KEY.format(id=i) for i in stale))
            self.client.srem(CATALOG_CACHED_KEY.format(task=task), *stale)


def text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _past(saveset: Saveset) -> PastSaveset:
    return PastSaveset(saveset.id, saveset.created_at, saveset.data_store)
