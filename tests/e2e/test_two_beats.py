"""Two real beat processes: one schedules, each tick becomes exactly one occurrence."""

from __future__ import annotations

import itertools
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
import redis

from orchestration.ledger import Ledger
from tests.e2e.conftest import Up
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e

CONFIG = """
state_dir: .backstop
rds: [{name: local}]
data_stores: [{name: a, rds: local, path: stores/a, create: true}]
media_pools: [{name: daily, data_store: a, retention: 14d}]
tasks: [{name: docs, source: docs}]
schedules: [{name: fast, every: 2s}]
events: [{name: tick, schedule: fast, task: docs, level: INC, media_pool: daily}]
"""


def test_two_beat_processes_make_each_tick_once(tmp_path: Path,
                                                start_up: Callable[..., Up]) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("a")
    config = tmp_path / "backstop.yaml"
    config.write_text(CONFIG)
    up = start_up(config, "--no-flower")
    up.wait_live()
    url = json.loads((tmp_path / ".backstop" / "broker.json").read_text())["url"]
    env = dict(os.environ, BACKSTOP_BROKER_URL=url)
    with open(tmp_path / "second-beat.log", "wb") as log:
        second = subprocess.Popen([sys.executable, "-m", "orchestration.cli", "beat", "-c",
                                   str(config)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        time.sleep(12)
    finally:
        second.terminate()
        second.wait(timeout=30)
    client = redis.Redis.from_url(url)
    ledger = Ledger(client)
    ticks = sorted(k.decode().split(":", 2)[2] for k in client.scan_iter("backstop:occurrence:*")
                   if not k.decode().endswith((":runs", ":failover")))
    assert len(ticks) >= 4
    # one occurrence per tick, ticks 2 s apart with none skipped, one run each
    times = [datetime.fromisoformat(t.split("@")[1].replace("Z", "+00:00")) for t in ticks]
    assert [(b - a).total_seconds() for a, b in itertools.pairwise(times)] == [
        2.0] * (len(times) - 1)
    wait_for(lambda: all((ledger.occurrence(t) or {}).get("state") != "open" for t in ticks),
             "the ticks' occurrences to end")
    assert all(len(ledger.runs_of(t)) == 1 for t in ticks)
    assert up.stop() == 0


def test_a_standby_beat_takes_over_within_60_s_when_the_leader_is_killed(
        tmp_path: Path, start_up: Callable[..., Up]) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("a")
    config = tmp_path / "backstop.yaml"
    config.write_text(CONFIG)
    up = start_up(config, "--no-flower")
    leader = str(up.wait_live()["beat_leader"])
    url = json.loads((tmp_path / ".backstop" / "broker.json").read_text())["url"]
    with open(tmp_path / "standby.log", "wb") as log:
        standby = subprocess.Popen([sys.executable, "-m", "orchestration.cli", "beat", "-c",
                                    str(config)], env=dict(os.environ, BACKSTOP_BROKER_URL=url),
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        time.sleep(3)
        os.kill(int(leader.split(".")[1].split("@", maxsplit=1)[0]), signal.SIGKILL)
        killed_at = datetime.now(UTC)

        def new_leader() -> str | None:
            report = up.status() or {}
            current = report.get("beat_leader")
            return current if current and current != leader else None

        wait_for(new_leader, "another beat to lead", limit_s=60, every_s=1)
        client = redis.Redis.from_url(url)

        def ticked_since() -> bool:
            return any(datetime.fromisoformat(k.decode().split("@")[1].replace("Z", "+00:00"))
                       > killed_at for k in client.scan_iter("backstop:occurrence:tick@*")
                       if not k.decode().endswith((":runs", ":failover")))

        wait_for(ticked_since, "a tick scheduled by the new leader", limit_s=30)
    finally:
        standby.terminate()
        standby.wait(timeout=30)
    assert up.stop() == 0
