"""Three real beat processes, then two after the leader is killed: each tick is scheduled
exactly once, and a standby takes over within 60 s."""

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

from tests.e2e.conftest import Up
from tests.fleet import wait_settled
from tests.invariants import audit
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e

CONFIG = """
state_dir: .backstop
rds: [{name: local}]
data_stores: [{name: a, rds: local, path: stores/a, create: true}]
media_pools: [{name: daily, data_store: a, retention: 14d}]
tasks: [{name: docs, source: docs}]
schedules: [{name: fast, every: 5s}]
events: [{name: tick, schedule: fast, task: docs, level: INC, media_pool: daily}]
"""


def ticks(client: redis.Redis) -> list[datetime]:
    keys = [k.decode() for k in client.scan_iter("backstop:occurrence:tick@*")]
    return sorted(datetime.fromisoformat(k.split("@")[1].replace("Z", "+00:00"))
                  for k in keys if not k.endswith((":runs", ":failover")))


def test_three_beats_then_two_schedule_each_tick_once_and_a_standby_takes_over(
        tmp_path: Path, start_up: Callable[..., Up]) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("a")
    config = tmp_path / "backstop.yaml"
    config.write_text(CONFIG)
    up = start_up(config, "--no-flower")
    leader = str(up.wait_live()["beat_leader"])
    url = json.loads((tmp_path / ".backstop" / "broker.json").read_text())["url"]
    client = redis.Redis.from_url(url)
    standbys = []
    for i in range(2):
        with open(tmp_path / f"standby-{i}.log", "wb") as log:
            standbys.append(subprocess.Popen(
                [sys.executable, "-m", "backstop.orchestration.cli", "beat", "-c", str(config)],
                env=dict(os.environ, BACKSTOP_BROKER_URL=url), stdout=log,
                stderr=subprocess.STDOUT))
    try:
        time.sleep(26)  # three beats, five ticks or so
        before = ticks(client)
        assert len(before) >= 4
        assert {(b - a).total_seconds() for a, b in itertools.pairwise(before)} == {5.0}
        os.kill(int(leader.split(".")[1].split("@", maxsplit=1)[0]), signal.SIGKILL)
        killed_at = datetime.now(UTC)

        def new_leader() -> str | None:
            current = (up.status() or {}).get("beat_leader")
            return current if current and current != leader else None

        wait_for(new_leader, "a standby to lead", limit_s=60, every_s=1)
        took_over = datetime.now(UTC)
        wait_for(lambda: len([t for t in ticks(client) if t > took_over]) >= 3,
                 "three ticks from the new leader", limit_s=30)
    finally:
        for standby in standbys:
            standby.terminate()
            standby.wait(timeout=30)
    after = [t for t in ticks(client) if t > killed_at]
    # 5 s apart, except that the ticks missed during the takeover are one catch-up tick
    assert {(b - a).total_seconds() for a, b in itertools.pairwise(after[1:])} == {5.0}
    occurrences = [f"tick@{t.strftime('%Y-%m-%dT%H:%M:%SZ')}" for t in ticks(client)]
    wait_settled(client, occurrences)
    found = audit(config, occurrences)
    assert found.problems == []
    assert found.occurrences == len(occurrences)
    assert up.stop() == 0
