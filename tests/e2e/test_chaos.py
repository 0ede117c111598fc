"""Real faults against real processes; every test ends with the same audit (tests/invariants).

Each fleet here is started by hand (no supervisor restarts anything) unless the test is
about ``backstop up`` itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from click.testing import CliRunner

from backstop.constants import CONTROL_QUEUE, rds_queue
from backstop.orchestration.broker import patient_client
from backstop.orchestration.cli import main
from backstop.orchestration.ledger import Ledger
from backstop.settings import load_settings
from tests.e2e.conftest import Fleet, Up, bulk_source
from tests.fleet import run_records, running_run, wait_settled
from tests.invariants import audit
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e

TWO_RDS = """
state_dir: .backstop
rds: [{name: near}, {name: far}]
data_stores:
  - {name: near-store, rds: near, path: stores/near, create: true}
  - {name: far-store, rds: far, path: stores/far, create: true}
media_pools:
  - {name: near-pool, data_store: near-store, retention: 14d}
  - {name: far-pool, data_store: far-store, retention: 14d}
tasks: [{name: bulk, source: bulk}, {name: small, source: small}]
events:
  - {name: to-near, task: bulk, level: FULL, media_pool: near-pool, failover_event: to-far}
  - {name: to-far, task: bulk, level: FULL, media_pool: far-pool}
  - {name: small-near, task: small, level: FULL, media_pool: near-pool, failover_event: to-far}
"""


def started_by_hand(make_fleet: Callable[[str], Fleet], near_workers: list[str]) -> Fleet:
    """TWO_RDS with a control worker, ``near_workers`` for RDS near, one worker for far and
    a beat (which runs the watchdog), each its own process."""
    fleet = make_fleet(TWO_RDS)
    bulk_source(fleet.root / "bulk")
    fleet.start("control", "worker", "--control", "--concurrency", "2")
    for name in near_workers:
        fleet.start(name, "worker", "--rds", "near", "--concurrency", "1")
    fleet.start("far", "worker", "--rds", "far", "--concurrency", "1")
    fleet.start("beat", "beat")
    fleet.serving({"near", "far"})
    return fleet


def test_one_of_two_workers_of_an_rds_killed_mid_backup_runs_it_again_on_the_other(
        make_fleet: Callable[[str], Fleet]) -> None:
    fleet = started_by_hand(make_fleet, near_workers=["near-a", "near-b"])
    fleet.send("backstop.dispatch", ["twice", "to-near", "adhoc"], CONTROL_QUEUE)
    first = running_run(fleet.ledger, "twice")
    killed = fleet.owner_of(int(first["worker"].split(":")[1]))
    fleet.kill(killed)  # the worker and its pool: RDS near is still served by the other
    fleet.settled(["twice"])
    [run] = run_records(fleet.ledger, "twice")  # no failover: the RDS never stopped being served
    assert (run["state"], run["data_store"]) == ("succeeded", "near-store")
    assert run["attempts"] >= 2
    assert fleet.owner_of(int(run["worker"].split(":")[1])) in {"near-a", "near-b"} - {killed}
    found = fleet.audit(["twice"])
    assert (found.savesets, found.failovers, found.restored) == (1, {}, 1)


def test_the_only_worker_of_an_rds_killed_mid_backup_fails_over_once(
        make_fleet: Callable[[str], Fleet]) -> None:
    fleet = started_by_hand(make_fleet, near_workers=["near"])
    fleet.send("backstop.dispatch", ["lost-1", "to-near", "adhoc"], CONTROL_QUEUE)

    original = running_run(fleet.ledger, "lost-1")
    fleet.kill("near")  # RDS near has no worker any more
    fleet.settled(["lost-1"], limit_s=90)
    assert fleet.ledger.occurrence("lost-1").state == "succeeded"  # type: ignore[union-attr]
    first, failover = run_records(fleet.ledger, "lost-1")
    assert (first["state"], first["error"]["reason"]) == ("storage_unavailable",
                                                          "rds_unreachable")
    assert (failover["event"], failover["data_store"], failover["state"]) == (
        "to-far", "far-store", "succeeded")
    # The worker comes back and the old message reaches it late: nothing changes
    fleet.start("near", "worker", "--rds", "near", "--concurrency", "1")
    fleet.serving({"near"})
    fleet.send("backstop.backup", [original["run_id"]], rds_queue("near"))
    fleet.send("backstop.failover", [original["run_id"]], CONTROL_QUEUE)
    fleet.send("backstop.dispatch", ["probe", "to-near", "adhoc"], CONTROL_QUEUE)
    fleet.settled(["probe"], limit_s=60)
    assert run_records(fleet.ledger, "lost-1") == [first, failover]
    found = fleet.audit(["lost-1", "probe"])
    assert (found.savesets, found.failovers, found.restored) == (2, {"rds_unreachable": 1}, 2)


def test_a_run_waiting_for_a_drive_in_a_worker_that_dies_runs_without_waiting_minutes(
        make_fleet: Callable[[str], Fleet]) -> None:
    # Given one drive channel on the near store, and a worker running one backup through it
    # while it holds the next run's message until the channel is free
    fleet = make_fleet(TWO_RDS + "drives: [{name: one, data_store: near-store, channels: 1}]\n")
    bulk_source(fleet.root / "bulk", files=60)  # about 3 s of work per FULL
    fleet.start("control", "worker", "--control", "--concurrency", "2")
    fleet.start("near", "worker", "--rds", "near", "--concurrency", "2")
    fleet.start("beat", "beat")
    fleet.serving({"near"})
    for occurrence in ("first", "waiting"):  # whichever gets the channel, the other waits
        fleet.send("backstop.dispatch", [occurrence, "to-near", "adhoc"], CONTROL_QUEUE)

    def held_by_near() -> int:
        entries = [json.loads(v) for v in fleet.client.hvals("unacked")]
        return sum(1 for _message, _exchange, key in entries if key == rds_queue("near"))

    wait_for(lambda: held_by_near() == 2, "the near worker to hold both runs' messages")
    # When that worker dies with both, and another takes its place
    fleet.kill("near")
    fleet.start("near-b", "worker", "--rds", "near", "--concurrency", "2")
    # Then both run on it well before the 120 s after which a queued run is sent again:
    # the messages the dead worker held went back on their queue once its heartbeat stopped
    fleet.settled(["first", "waiting"], limit_s=75)
    found = fleet.audit(["first", "waiting"])
    assert (found.savesets, found.failovers, found.restored) == (2, {}, 2)
    assert "went back on its queue" in (fleet.root / "beat.log").read_text()  # the watchdog


@pytest.mark.timeout(300)  # two fleets started, ten backups, and up to 150 s to settle
def test_the_broker_stopped_and_restarted_while_workers_run_loses_and_repeats_nothing(
        tmp_path: Path, start_up: Callable[..., Up]) -> None:
    up, config, accepted, ledger = up_with_work(
        tmp_path, start_up, ["small-near"] * 4 + ["to-far"] + ["to-near"] * 5)
    broker = next(p for p in up.processes() if "valkey" in p.name())
    broker.terminate()  # Valkey writes its append-only file and exits; up starts it again
    broker.wait(timeout=30)
    wait_settled(ledger.client, accepted, limit_s=150)
    found = audit(config, [*accepted, start(config, "small-near", wait=True)])
    assert found.problems == []
    assert found.outcomes == {"succeeded": len(accepted) + 1}
    assert "embedded broker exited" in up.output()
    assert up.stop() == 0


def up_with_work(tmp_path: Path, start_up: Callable[..., Up],
                 events: list[str]) -> tuple[Up, Path, list[str], Ledger]:
    """``backstop up`` on TWO_RDS, ``events`` started with ``backstop run``, and one of
    their backups running (start the long ones last, so that some are still going)."""
    config = tmp_path / "backstop.yaml"
    config.write_text(TWO_RDS)
    bulk_source(tmp_path / "bulk")
    bulk_source(tmp_path / "small", files=5, size=1 << 20)
    up = start_up(config, "--no-flower")
    up.wait_live()
    accepted = [start(config, event) for event in events]
    ledger = ledger_of(tmp_path)
    wait_for(lambda: any(r["state"] == "running" for o in accepted for r in run_records(ledger, o)),
             "a backup to be running", limit_s=30, every_s=0.01)
    return up, config, accepted, ledger


def start(config: Path, event: str, wait: bool = False) -> str:
    """``backstop run EVENT``: the occurrence it started."""
    started = CliRunner().invoke(main, ["run", event, "--json", "-c", str(config),
                                        *(["--wait"] if wait else [])],
                                 catch_exceptions=False)
    return str(json.loads(started.stdout)["occurrence"])


def ledger_of(root: Path) -> Ledger:
    url = json.loads((root / ".backstop" / "broker.json").read_text())["url"]
    return Ledger(patient_client(load_settings(str(root / "backstop.yaml"), {}), url))


@pytest.mark.timeout(300)  # two fleets started, eight backups, and up to 150 s to settle
def test_everything_killed_with_occurrences_queued_then_restarted_loses_and_repeats_nothing(
        tmp_path: Path, start_up: Callable[..., Up]) -> None:
    up, config, accepted, ledger = up_with_work(
        tmp_path, start_up, ["small-near"] * 2 + ["to-far"] + ["to-near"] * 5)
    unsettled = [o for o in accepted if getattr(ledger.occurrence(o), "state", None) != (
        "succeeded")]
    # SIGKILL everything at once: up, the broker, every worker and pool process, the beat
    everything = [psutil.Process(up.process.pid), *up.processes()]
    for process in everything:
        process.send_signal(signal.SIGKILL)
    psutil.wait_procs(everything, timeout=30)
    up.process.wait()
    assert len(unsettled) >= 3  # a moment before, these were queued or running
    again = start_up(config, "--no-flower")
    again.wait_live()
    ledger = ledger_of(tmp_path)
    wait_settled(ledger.client, accepted, limit_s=150)
    found = audit(config, accepted)
    assert found.problems == []
    assert found.outcomes == {"succeeded": len(accepted)}
    assert again.stop() == 0


TMPFS = """
state_dir: .backstop
rds: [{name: local}]
data_stores:
  - {name: cramped, rds: local, path: cramped/store, create: true}
  - {name: roomy, rds: local, path: stores/roomy, create: true}
media_pools:
  - {name: cramped-pool, data_store: cramped, retention: 14d}
  - {name: roomy-pool, data_store: roomy, retention: 14d}
tasks: [{name: bulk, source: bulk}, {name: small, source: small}]
events:
  - {name: to-cramped, task: bulk, level: FULL, media_pool: cramped-pool,
     failover_event: to-roomy}
  - {name: to-roomy, task: bulk, level: FULL, media_pool: roomy-pool}
  - {name: small-roomy, task: small, level: FULL, media_pool: roomy-pool}
"""


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Any:
    mount = tmp_path / "cramped"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400m", "tmpfs", str(mount)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_store_filling_up_mid_write_fails_over_while_other_backups_run(
        make_fleet: Callable[[str], Fleet], small_tmpfs: Path) -> None:
    fleet = make_fleet(TMPFS)
    bulk_source(fleet.root / "bulk")  # 320 MiB of random data: it fits, until the filler runs
    bulk_source(fleet.root / "small", files=5, size=1 << 20)
    fleet.start("worker", "worker", "--control", "--rds", "local", "--concurrency", "3")
    fleet.start("beat", "beat")
    fleet.serving({"local"})
    fleet.send("backstop.dispatch", ["crowded", "to-cramped", "adhoc"], CONTROL_QUEUE)
    others = [f"other-{i}" for i in range(4)]
    for occurrence in others:
        fleet.send("backstop.dispatch", [occurrence, "small-roomy", "adhoc"], CONTROL_QUEUE)
    running_run(fleet.ledger, "crowded")
    # Something else on the same file system takes the space the backup was counting on
    with open(small_tmpfs / "filler", "wb") as filler:
        try:
            while True:
                filler.write(os.urandom(1 << 20))
        except OSError:
            pass
    fleet.settled(["crowded", *others])
    first, failover = run_records(fleet.ledger, "crowded")
    assert (first["state"], first["error"]["reason"]) == ("storage_unavailable",
                                                          "out_of_space")
    assert (failover["state"], failover["data_store"]) == ("succeeded", "roomy")
    (small_tmpfs / "filler").unlink()
    found = fleet.audit(["crowded", *others])
    assert found.outcomes == {"succeeded": 5}
    assert found.failovers == {"out_of_space": 1}
