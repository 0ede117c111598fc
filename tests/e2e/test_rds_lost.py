"""An RDS whose only worker is killed mid-backup: rds_unreachable, exactly one failover."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from orchestration.broker import EmbeddedBroker
from orchestration.ledger import Ledger
from tests.waiting import wait_for
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


class Fleet:
    """A broker and separately started processes: no supervisor restarts anything."""

    def __init__(self, root: Path, url: str) -> None:
        self.root, self.url = root, url
        self.env = dict(os.environ, BACKSTOP_BROKER_URL=url)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.client = redis.Redis.from_url(url)

    def start(self, name: str, *args: str) -> None:
        with open(self.root / f"{name}.log", "ab") as log:
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", "orchestration.cli", *args, "-c",
                 str(self.root / "backstop.yaml")], env=self.env, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self, name: str) -> None:
        os.killpg(self.processes[name].pid, signal.SIGKILL)  # the worker and its pool
        self.processes.pop(name).wait()

    def stop(self) -> None:
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            process.wait(timeout=60)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    (tmp_path / "backstop.yaml").write_text(CONFIG)
    (tmp_path / "bulk").mkdir()
    for i in range(40):
        (tmp_path / "bulk" / f"f{i:02}.bin").write_bytes(os.urandom(8 << 20))
    broker = EmbeddedBroker(tmp_path / "broker", persistent=False)
    made = Fleet(tmp_path, broker.start())
    try:
        made.start("control", "worker", "--control", "--concurrency", "2")
        made.start("near", "worker", "--rds", "near", "--concurrency", "1")
        made.start("far", "worker", "--rds", "far", "--concurrency", "1")
        made.start("beat", "beat")  # sends the watchdog
        wait_for(lambda: ({r for w in live_workers(made.client) for r in w.rds} == {
            "near", "far"} and any(w.control for w in live_workers(made.client))) or None,
                 "the fleet", limit_s=60)
        yield made
    finally:
        made.stop()
        broker.stop()


def test_the_only_worker_of_an_rds_killed_mid_backup_fails_over_once(fleet: Fleet) -> None:
    from orchestration.settings import load_settings
    from workers.app import create_app
    from workers.constants import CONTROL_QUEUE, rds_queue

    settings = load_settings(str(fleet.root / "backstop.yaml"), fleet.env)
    app = create_app(settings, fleet.url)
    ledger = Ledger(fleet.client)
    app.send("backstop.dispatch", ["lost-1", "to-near", "adhoc"], CONTROL_QUEUE, "test")

    def running() -> dict[str, Any] | None:
        runs = ledger.runs_of("lost-1")
        return runs[0] if runs and runs[0]["state"] == "running" else None

    original = wait_for(running, "the backup on near to run", limit_s=30, every_s=0.005)
    fleet.kill("near")  # RDS near has no worker any more

    def settled() -> dict[str, Any] | None:
        found = ledger.occurrence("lost-1")
        return found if found and found["state"] != "open" else None

    assert wait_for(settled, "the occurrence to end", limit_s=90, every_s=0.5)["state"] == (
        "succeeded")
    first, failover = ledger.runs_of("lost-1")
    assert (first["state"], first["error"]["reason"]) == ("storage_unavailable",
                                                          "rds_unreachable")
    assert (failover["event"], failover["data_store"], failover["state"]) == (
        "to-far", "far-store", "succeeded")
    # The worker comes back and the old message reaches it late: nothing changes
    fleet.start("near", "worker", "--rds", "near", "--concurrency", "1")
    wait_for(lambda: any("near" in w.rds for w in live_workers(fleet.client)) or None,
             "near's worker to be back", limit_s=60)
    app.send("backstop.backup", [original["run_id"]], rds_queue("near"), "late")
    app.send("backstop.failover", [original["run_id"]], CONTROL_QUEUE, "late")
    app.send("backstop.dispatch", ["probe", "to-near", "adhoc"], CONTROL_QUEUE, "probe")
    wait_for(lambda: (ledger.occurrence("probe") or {}).get("state") == "succeeded" or None,
             "a later occurrence on near", limit_s=60)
    assert ledger.runs_of("lost-1") == [first, failover]
    savesets = [k for k in fleet.client.scan_iter("backstop:catalog:saveset:*")]
    assert len(savesets) == 2  # the failover's and the probe's: none from the killed run
    assert not any(".partial-" in str(p) for p in (fleet.root / "stores").rglob("*"))
