"""Exactly once under a killed worker process: the run is done again, one saveset."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from backstop.orchestration.ledger import Ledger
from tests.e2e.conftest import Up, backstop, bulk_source
from tests.fleet import running_run
from tests.invariants import audit
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e

CONFIG = """
state_dir: .backstop
rds: [{name: local}]
data_stores: [{name: big, rds: local, path: stores/big, create: true}]
media_pools: [{name: daily, data_store: big, retention: 14d}]
tasks: [{name: bulk, source: bulk}]
events: [{name: bulk-now, task: bulk, level: FULL, media_pool: daily}]
"""


@pytest.fixture
def bulk_config(tmp_path: Path) -> Path:
    bulk_source(tmp_path / "bulk")  # about 2 s of work: long enough to be killed midway
    path = tmp_path / "backstop.yaml"
    path.write_text(CONFIG)
    return path


def test_a_backup_whose_process_is_killed_runs_again_and_makes_one_saveset(
        bulk_config: Path, start_up: Callable[..., Up]) -> None:
    up = start_up(bulk_config, "--no-flower")
    up.wait_live()
    url = json.loads((bulk_config.parent / ".backstop" / "broker.json").read_text())["url"]
    ledger = Ledger(redis.Redis.from_url(url))
    started = json.loads(backstop("run", "bulk-now", "--json", config=bulk_config).stdout)
    occurrence = started["occurrence"]

    run = running_run(ledger, occurrence)
    pid = int(str(run["worker"]).split(":")[1])
    os.kill(pid, signal.SIGKILL)  # the pool process doing the backup dies mid-write

    def ended() -> list[dict[str, object]] | None:
        runs = json.loads(backstop("runs", "--occurrence", occurrence, "--json",
                                   config=bulk_config).stdout)
        return runs if runs and runs[0]["state"] not in ("queued", "running") else None

    [final] = wait_for(ended, "the run to end", limit_s=90, every_s=0.5)
    assert final["state"] == "succeeded"
    assert int(str(final["attempts"])) >= 2
    savesets = json.loads(backstop("savesets", "--json", config=bulk_config).stdout)
    assert [s["run_id"] for s in savesets] == [final["run_id"]]
    found = audit(bulk_config, [occurrence])
    assert found.problems == []
    assert (found.savesets, found.restored) == (1, 1)
    assert up.stop() == 0
