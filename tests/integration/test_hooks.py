"""A task's before and after commands, run by a real worker around real backups."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery.contrib.testing.worker import start_worker

from backstop.constants import CONTROL_QUEUE, rds_queue
from backstop.orchestration.app import create_app
from backstop.orchestration.heartbeat import live_workers
from backstop.orchestration.ledger import Ledger
from backstop.settings import load_settings
from backstop.workers.engine import create_missing_stores
from tests.integration.conftest import WorkerFleet
from tests.integration.test_metrics import scrape, value
from tests.waiting import wait_for

ENV = "echo $BACKSTOP_TASK $BACKSTOP_EVENT $BACKSTOP_RUN $BACKSTOP_LEVEL ${BACKSTOP_STATE:-} >> "
CONFIG = f"""
rds: [{{name: local}}]
data_stores:
  - {{name: a, rds: local, path: stores/a, create: true}}
  - {{name: b, rds: local, path: stores/b, create: true}}
media_pools:
  - {{name: daily, data_store: a, retention: 14d}}
  - {{name: spare, data_store: b, retention: 14d}}
tasks:
  - name: app
    source: src
    before: [[sh, -c, "{ENV}before.log"], [sh, -c, "test ! -e fail-before"]]
    after:
      - [sh, -c, "{ENV}after.log"]
      - [sh, -c, "test ! -e fail-after || (echo thaw broke >&2; exit 3)"]
  - name: slow
    source: src
    hook_timeout: 1s
    before: [[sh, -c, "sleep 60 & echo $! > child.pid; wait"]]
    after: [[sh, -c, "echo $BACKSTOP_STATE >> after.log"]]
events:
  - {{name: app-now, task: app, level: INC, media_pool: daily, failover_event: app-spare}}
  - {{name: app-spare, task: app, media_pool: spare}}
  - {{name: slow-now, task: slow, media_pool: daily, failover_event: app-spare}}
"""


@pytest.fixture
def fleet(tmp_path: Path, broker_url: str, redis_client: redis.Redis) -> Iterator[WorkerFleet]:
    (tmp_path / "backstop.yaml").write_text(CONFIG)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "data.bin").write_bytes(os.urandom(10_000))
    settings = load_settings(str(tmp_path / "backstop.yaml"), {"BACKSTOP_BROKER_URL": broker_url})
    create_missing_stores(settings, ["local"])
    app = create_app(settings, broker_url)
    with start_worker(app, queues=[CONTROL_QUEUE, rds_queue("local")], pool="threads",
                      concurrency=2, perform_ping_check=False, hostname="hooks@test"):
        wait_for(lambda: any("local" in w.rds for w in live_workers(redis_client)),
                 "the worker's heartbeat")
        yield WorkerFleet(app, Ledger(redis_client), tmp_path)


def test_hooks_run_around_the_backup_with_the_run_in_their_environment(
        fleet: WorkerFleet) -> None:
    [run] = fleet.settled(fleet.occur("app-now"))
    assert run["state"] == "succeeded" and run["saveset"]
    before = (fleet.root / "before.log").read_text().split()
    after = (fleet.root / "after.log").read_text().split()
    assert before == ["app", "app-now", run["run_id"], "FULL"]  # the effective level
    assert after == ["app", "app-now", run["run_id"], "FULL", "succeeded"]


def test_a_failing_before_fails_the_run_without_saveset_or_failover_and_after_still_runs(
        fleet: WorkerFleet) -> None:
    (fleet.root / "fail-before").touch()
    runs = fleet.settled(fleet.occur("app-now"))
    [run] = runs  # no failover run
    assert (run["state"], run["error"]["kind"], run["saveset"]) == ("failed", "hook_failed",
                                                                   None)
    assert "before command of task app: sh exited with status 1" in run["error"]["message"]
    assert (fleet.root / "after.log").read_text().split()[-1] == "failed"
    # And the metrics count it by its kind, every other kind served at 0
    samples = scrape(fleet)
    assert value(samples, "backstop_run_errors_total", event="app-now", kind="hook_failed") == 1
    assert ("backstop_run_errors_total", frozenset({("event", "app-now"),
                                                    ("kind", "source_error")})) in samples


def test_a_failing_after_is_a_warning_of_a_run_that_succeeded(fleet: WorkerFleet) -> None:
    (fleet.root / "fail-after").touch()
    [run] = fleet.settled(fleet.occur("app-now"))
    assert run["state"] == "succeeded"
    assert any("after command of task app: sh exited with status 3: thaw broke" in w
               for w in run["warnings"]), run["warnings"]


def test_a_before_that_outlasts_its_timeout_is_killed_with_its_children(
        fleet: WorkerFleet) -> None:
    [run] = fleet.settled(fleet.occur("slow-now"))
    assert (run["state"], run["error"]["kind"]) == ("failed", "hook_failed")
    assert "ran longer than 1s and was killed" in run["error"]["message"]
    child = int((fleet.root / "child.pid").read_text())

    def gone() -> bool:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return True
        return Path(f"/proc/{child}/stat").read_text().split()[2] == "Z"

    assert wait_for(gone, "the hook's child to be gone", limit_s=10)
    assert (fleet.root / "after.log").read_text().split() == ["failed"]
