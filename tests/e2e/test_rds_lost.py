"""An RDS whose only worker is killed mid-backup: rds_unreachable, exactly one failover."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.conftest import Fleet, bulk_source
from tests.waiting import wait_for
from workers.constants import CONTROL_QUEUE, rds_queue
from workers.heartbeat import live_workers

pytestmark = pytest.mark.e2e

CONFIG = """
state_dir: .backstop
rds: [{name: near}, {name: far}]
data_stores:
  - {name: near-store, rds: near, path: stores/near, create: true}
  - {name: far-store, rds: far, path: stores/far, create: true}
media_pools:
  - {name: near-pool, data_store: near-store, retention: 14d}
  - {name: far-pool, data_store: far-store, retention: 14d}
tasks: [{name: bulk, source: bulk}]
events:
  - {name: to-near, task: bulk, level: FULL, media_pool: near-pool, failover_event: to-far}
  - {name: to-far, task: bulk, level: FULL, media_pool: far-pool}
"""


def test_the_only_worker_of_an_rds_killed_mid_backup_fails_over_once(
        make_fleet: Callable[[str], Fleet]) -> None:
    fleet = make_fleet(CONFIG)
    bulk_source(fleet.root / "bulk")
    fleet.start("control", "worker", "--control", "--concurrency", "2")
    fleet.start("near", "worker", "--rds", "near", "--concurrency", "1")
    fleet.start("far", "worker", "--rds", "far", "--concurrency", "1")
    fleet.start("beat", "beat")  # sends the watchdog
    fleet.serving({"near", "far"})
    fleet.send("backstop.dispatch", ["lost-1", "to-near", "adhoc"], CONTROL_QUEUE)

    def running() -> dict[str, Any] | None:
        runs = fleet.ledger.runs_of("lost-1")
        return runs[0] if runs and runs[0]["state"] == "running" else None

    original = wait_for(running, "the backup on near to run", limit_s=30, every_s=0.005)
    fleet.kill("near")  # RDS near has no worker any more
    fleet.settled(["lost-1"], limit_s=90)
    assert fleet.ledger.occurrence("lost-1")["state"] == "succeeded"  # type: ignore[index]
    first, failover = fleet.ledger.runs_of("lost-1")
    assert (first["state"], first["error"]["reason"]) == ("storage_unavailable",
                                                          "rds_unreachable")
    assert (failover["event"], failover["data_store"], failover["state"]) == (
        "to-far", "far-store", "succeeded")
    # The worker comes back and the old message reaches it late: nothing changes
    fleet.start("near", "worker", "--rds", "near", "--concurrency", "1")
    wait_for(lambda: any("near" in w.rds for w in live_workers(fleet.client)) or None,
             "near's worker to be back", limit_s=60)
    fleet.send("backstop.backup", [original["run_id"]], rds_queue("near"))
    fleet.send("backstop.failover", [original["run_id"]], CONTROL_QUEUE)
    fleet.send("backstop.dispatch", ["probe", "to-near", "adhoc"], CONTROL_QUEUE)
    fleet.settled(["probe"], limit_s=60)
    assert fleet.ledger.runs_of("lost-1") == [first, failover]
    found = fleet.audit(["lost-1", "probe"])
    assert (found.savesets, found.failovers, found.restored) == (2, {"rds_unreachable": 1}, 2)
