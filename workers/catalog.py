"""What the data plane needs of the saveset catalog.

The engine, restore and maintenance work against this interface; the fleet's catalog in
Redis (:class:`backstop.orchestration.catalog.RedisCatalog`) implements it, so the data plane knows
nothing of the broker.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Protocol

from backstop.model import Saveset
from backstop.workers.levels import LevelFacts


class Catalog(Protocol):
    def add(self, saveset: Saveset, manifest: bytes) -> None:
        """Catalog a committed saveset (and cache its manifest while it may be a base)."""

    def remove(self, saveset: Saveset) -> None: ...

    def get(self, saveset_id: str) -> Saveset | None: ...

    def all(self, task: str | None = None) -> list[Saveset]:
        """Savesets (of one task), oldest first."""

    def in_pool(self, pool: str) -> list[Saveset]:
        """The savesets of one pool, oldest first."""

    def manifest(self, saveset_id: str) -> bytes | None:
        """The cached manifest of a possible base, if the catalog holds one."""

    def record_full_attempt(self, task: str, ok: bool, at: datetime, run_id: str | None
                            ) -> None:
        """Remember the outcome of the task's newest FULL attempt (Enforce FULL rule a)."""

    def level_facts(self, task: str, now: datetime,
                    store_unavailable: Callable[[str], bool]) -> LevelFacts:
        """What the level policy needs to know of the task's savesets."""
