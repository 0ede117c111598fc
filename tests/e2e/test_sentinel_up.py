"""SPEC section 13 end to end: `backstop up` on a Sentinel-managed Valkey (a master, two
replicas, three Sentinels), the master SIGKILLed in the middle of a burst of occurrences.
Every accepted occurrence succeeds exactly once, the schedule keeps ticking, and no process
of the fleet is restarted. And the leading beat killed together with the master."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from backstop.orchestration.broker import free_port
from tests.e2e.conftest import Up, backstop
from tests.invariants import audit
from tests.sentinels import MASTER_NAME, SENTINEL_PASSWORD, SentinelCluster
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e

BURST = 16


def ha_config(root: Path, cluster: SentinelCluster, client: bool = False) -> Path:
    """The fleet on the cluster; with ``client``, also a client host whose lean worker
    backs up through the RDS's data service (event ``burst-client``)."""
    source = root / "src"
    source.mkdir()
    for i in range(20):
        (source / f"f{i:02}.bin").write_bytes(os.urandom(50_000))
    interfaces = (f", interfaces: [{{name: lo2, address: 127.0.0.2, "
                  f"port: {free_port('127.0.0.2')}}}]" if client else "")
    config = root / "backstop.yaml"
    config.write_text(f"""
state_dir: .backstop
broker_url: "{cluster.url}"
broker_master_name: {MASTER_NAME}
broker_sentinel_password: {SENTINEL_PASSWORD}
rds: [{{name: local{interfaces}}}]
clients: [{"{name: web1}" if client else ""}]
data_stores: [{{name: main, rds: local, path: stores/main, create: true}}]
media_pools: [{{name: daily, data_store: main, retention: 14d}}]
tasks: [{{name: docs, source: src}}{", {name: www, client: web1, source: src}" if client else ""}]
schedules: [{{name: often, every: 5s, catch_up: 1m}}]
events:
  - {{name: burst, task: docs, level: FULL, media_pool: daily}}
  - {{name: ticking, schedule: often, task: docs, level: INC, media_pool: daily}}
""" + ("  - {name: burst-client, task: www, level: FULL, media_pool: daily}\n" if client else ""))
    return config


def runs_of(config: Path) -> list[dict[str, object]]:
    done = backstop("runs", "--limit", "100000", "--json", config=config, timeout_s=120)
    return list(json.loads(done.stdout)) if done.returncode == 0 else []


@pytest.mark.timeout(300)  # a burst through a promotion, and up to 180 s to settle
def test_up_on_sentinels_loses_nothing_when_the_master_dies_mid_burst(
        tmp_path: Path, cluster: SentinelCluster, start_up: Callable[..., Up]) -> None:
    config = ha_config(tmp_path, cluster)
    up = start_up(config, "--no-flower")
    up.wait_live()
    parts = {p.pid for p in up.processes()}
    # Given a burst of ad-hoc occurrences, the master SIGKILLed in its middle
    accepted: list[str] = []
    killed_at: datetime | None = None
    for i in range(BURST):
        if i == BURST // 2:
            old = cluster.master()
            old.kill()
            killed_at = datetime.now(UTC)
            killed_clock = time.monotonic()
        done = backstop("run", "burst", "--json", config=config, timeout_s=120)
        if done.returncode == 0:  # reported accepted: it must not be lost
            accepted.append(json.loads(done.stdout)["occurrence"])
    assert killed_at is not None and len(accepted) >= BURST // 2
    cluster.wait_promoted(old)

    # Then every accepted occurrence settles, succeeded
    def settled() -> list[dict[str, object]] | None:
        runs = runs_of(config)
        mine = [r for r in runs if r["occurrence"] in accepted]
        done = ({str(r["occurrence"]) for r in mine if r["state"] == "succeeded"}
                == set(accepted))
        return runs if done else None

    runs = wait_for(settled, "every accepted occurrence to succeed", limit_s=180, every_s=2)
    first_after = min(datetime.fromisoformat(str(r["finished_at"])) for r in runs
                      if r["state"] == "succeeded"
                      and datetime.fromisoformat(str(r["finished_at"])) > killed_at)
    print(json.dumps({"master_killed_to_first_success_s":
                      round((first_after - killed_at).total_seconds(), 1),
                      "accepted": len(accepted),
                      "settled_after_s": round(time.monotonic() - killed_clock, 1)}))
    # And the schedule keeps ticking after the promotion
    wait_for(lambda: [r for r in runs_of(config) if r["event"] == "ticking"
                      and datetime.fromisoformat(str(r["queued_at"])) > killed_at
                      and r["state"] == "succeeded"] or None,
             "a scheduled run after the promotion", limit_s=60, every_s=2)
    # And the shared audit finds each accepted occurrence once, one saveset per success
    found = audit(config, accepted, restore_at_most=5)
    assert found.problems == [], found.problems
    # And no process of the fleet was restarted
    assert {p.pid for p in up.processes()} >= parts
    assert "restarting in" not in up.output()
    assert up.stop() == 0


def test_the_leading_beat_and_the_master_killed_together_the_schedule_goes_on(
        tmp_path: Path, cluster: SentinelCluster, start_up: Callable[..., Up]) -> None:
    config = ha_config(tmp_path, cluster)
    up = start_up(config, "--no-flower")
    up.wait_live()
    # Given a standby beat next to up's
    standby = subprocess.Popen([sys.executable, "-m", "backstop.orchestration.cli", "beat", "-c",
                                str(config)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: len((up.status() or {}).get("beats", [])) == 2 or None,
                 "two beats to report")
        status = up.status()
        assert status is not None
        [leader] = [b for b in status["beats"] if b["leader"]]
        # When the leading beat and the master are SIGKILLed together
        os.kill(leader["pid"], signal.SIGKILL)
        old = cluster.master()
        old.kill()
        killed_at = datetime.now(UTC)
        cluster.wait_promoted(old)
        # Then the standby leads, and scheduled runs succeed again
        wait_for(lambda: [r for r in runs_of(config) if r["event"] == "ticking"
                          and datetime.fromisoformat(str(r["queued_at"])) > killed_at
                          and r["state"] == "succeeded"] or None,
                 "a scheduled run after the beat and the master died", limit_s=120, every_s=2)
        # (the standby, or up's beat that up restarted: one leader, not the dead one)
        leaders = wait_for(lambda: [b for b in (up.status() or {}).get("beats", [])
                                    if b["leader"]] or None, "a leading beat", limit_s=60)
        assert len(leaders) == 1 and leaders[0]["pid"] != leader["pid"]
        # And every tick ran once: the audit finds no duplicate and nothing lost
        found = audit(config, restore_at_most=3)
        assert found.problems == [], found.problems
    finally:
        standby.send_signal(signal.SIGTERM)
        standby.wait(timeout=30)


PROMOTIONS = 3


def test_every_part_of_up_rides_out_several_promotions_under_load(
        tmp_path: Path, cluster: SentinelCluster, start_up: Callable[..., Up]) -> None:
    # Given up with every part (Flower, metrics, a lean client worker and a data service
    # too) on a Sentinel-managed broker
    config = ha_config(tmp_path, cluster, client=True)
    up = start_up(config)
    up.wait_live()
    wait_for(lambda: any(c["live"] for c in (up.status() or {}).get("clients", [])) or None,
             "the client worker")
    parts = {p.pid: " ".join(p.cmdline()[3:5]) for p in up.processes()}
    accepted: list[str] = []
    # When the master is SIGKILLed three times, each time while occurrences are started
    for _ in range(PROMOTIONS):
        old = cluster.master()
        for i in range(6):
            if i == 3:
                old.kill()
            event = "burst-client" if i % 2 else "burst"
            done = backstop("run", event, "--json", config=config, timeout_s=120)
            if done.returncode == 0:
                accepted.append(json.loads(done.stdout)["occurrence"])
        cluster.wait_promoted(old)
        cluster.revive(old)
    # Then every accepted occurrence succeeds
    wait_for(lambda: {str(r["occurrence"]) for r in runs_of(config)
                      if r["state"] == "succeeded"} >= set(accepted) or None,
             "every accepted occurrence to succeed", limit_s=180, every_s=2)
    assert len(accepted) >= PROMOTIONS * 3
    # And every part of up is the process it was: none exited, none was restarted
    now = {p.pid for p in up.processes()}
    assert set(parts) <= now, {pid: what for pid, what in parts.items() if pid not in now}
    assert "restarting in" not in up.output(), up.output()
    assert up.stop() == 0
