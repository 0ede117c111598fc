"""An engine over real stores in a scratch directory, with its catalog in the real server."""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from backstop.config import Level
from backstop.constants import CONTROL_QUEUE
from backstop.orchestration.catalog import RedisCatalog
from backstop.orchestration.celery_app import BackstopApp
from backstop.orchestration.ledger import Ledger
from backstop.runs import Occurrence
from backstop.settings import Settings, load_settings
from backstop.workers.engine import BackupRequest, BackupResult, Engine, create_missing_stores
from backstop.workers.jobs import Jobs
from backstop.workers.restore import Restorer
from tests.fleet import run_records
from tests.waiting import wait_for

ENGINE_CONFIG = """
rds: [{name: local}]
data_stores:
  - {name: a, rds: local, path: stores/a, create: true}
  - {name: b, rds: local, path: stores/b, create: true}
media_pools:
  - {name: daily, data_store: a, retention: 14d}
  - {name: spare, data_store: b, retention: 14d}
tasks: [{name: docs, source: src, exclude: ["*.tmp", "cache/"]}]
"""


# The engine's processes for every backup and restore, however small, in slices of a few
# files: each test runs through the parallel engine (a file of 64 KiB or more is a slice
# of its own, stored by the run's own process); and a manifest of more than four paths is
# restored in chunks of four.
PARALLEL = Jobs(2, slice_bytes=64 << 10, backup_from_bytes=0, restore_from_bytes=0,
                restore_from_files=0, restore_chunk=4)


class Clock:
    """The engine's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Setup:
    settings: Settings
    engine: Engine
    restorer: Restorer
    catalog: RedisCatalog
    clock: Clock
    root: Path

    @property
    def source(self) -> Path:
        return self.root / "src"

    def backup(self, level: Level = Level.FULL, pool: str = "daily", **kwargs: Any
               ) -> BackupResult:
        return self.engine.backup(BackupRequest("docs", level, pool, **kwargs))


@pytest.fixture
def make_setup(tmp_path: Path, broker_url: str, redis_client: redis.Redis
               ) -> Callable[..., Setup]:
    def make(config: str = ENGINE_CONFIG, environ: dict[str, str] | None = None) -> Setup:
        path = tmp_path / "backstop.yaml"
        path.write_text(config)
        (tmp_path / "src").mkdir(exist_ok=True)
        settings = load_settings(str(path), {"BACKSTOP_BROKER_URL": broker_url,
                                             **(environ or {})})
        catalog = RedisCatalog(redis_client)
        clock = Clock()
        engine = Engine(settings, catalog, clock=clock)
        engine.jobs = PARALLEL
        create_missing_stores(settings, ["local"])
        return Setup(settings, engine, Restorer(catalog, engine.stores, jobs=PARALLEL), catalog,
                     clock, tmp_path)

    return make


@pytest.fixture
def setup(make_setup: Callable[..., Setup]) -> Setup:
    return make_setup()


def snapshot(root: Path, skip: Callable[[str], bool] = lambda _: False) -> dict[str, Any]:
    """Every path under ``root`` with what a restore must rebuild exactly."""
    found: dict[str, Any] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            full = Path(dirpath) / name
            rel = str(full.relative_to(root))
            if skip(rel):
                continue
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                found[rel] = ("link", os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                found[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
            else:
                found[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns,
                              full.read_bytes())
    return found


@dataclass
class WorkerFleet:
    """A Celery app with a worker started in this process, and the ledger it writes."""

    app: BackstopApp
    ledger: Ledger
    root: Path

    def occur(self, event: str, **options: Any) -> str:
        occurrence = f"adhoc-{uuid.uuid4().hex[:8]}"
        self.app.send("backstop.dispatch", [occurrence, event, "adhoc"], CONTROL_QUEUE,
                      f"event={event}", **options)
        return occurrence

    def settled(self, occurrence: str, limit_s: float = 30) -> list[dict[str, Any]]:
        def done() -> Occurrence | None:
            found = self.ledger.occurrence(occurrence)
            return found if found and found.state != "open" else None

        wait_for(done, f"occurrence {occurrence} to settle", limit_s=limit_s)
        return self.records(occurrence)

    def records(self, occurrence: str) -> list[dict[str, Any]]:
        """The runs of ``occurrence`` as ``backstop runs --json`` prints them."""
        return run_records(self.ledger, occurrence)

    def first_record(self, occurrence: str) -> dict[str, Any]:
        """The first run of ``occurrence`` once it is in the ledger."""
        return wait_for(lambda: (self.records(occurrence) or [None])[0], "the queued run")

    def state(self, occurrence: str) -> str:
        found = self.ledger.occurrence(occurrence)
        assert found is not None
        return str(found.state)
