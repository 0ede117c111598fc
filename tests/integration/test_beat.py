"""The beat's planner with a real broker and worker: ticks once each, catch-up, suppression."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from celery.contrib.testing.worker import start_worker
from kombu.exceptions import OperationalError

from backstop.constants import BEAT_LAST_TICK_KEY, CONTROL_QUEUE, rds_queue
from backstop.orchestration.app import create_app
from backstop.orchestration.beat import Planner
from backstop.orchestration.celery_app import BackstopApp
from backstop.orchestration.heartbeat import live_workers
from backstop.orchestration.ledger import Ledger
from backstop.orchestration.tasks import control_for
from backstop.orchestration.watchdog import watchdog_counts, watchdog_pass
from backstop.settings import Settings, load_settings
from backstop.workers.engine import create_missing_stores
from tests.waiting import wait_for

CONFIG = """
rds: [{name: local}]
data_stores: [{name: a, rds: local, path: stores/a, create: true}]
media_pools: [{name: daily, data_store: a, retention: 14d}]
tasks: [{name: docs, source: src}]
schedules:
  - {name: fast, every: 2s}
  - {name: yearly, cron: "0 0 1 1 *", catch_up: 1h}
events:
  - {name: low, schedule: fast, task: docs, media_pool: daily, priority: 1}
  - {name: high, schedule: fast, task: docs, media_pool: daily, priority: 5}
  - {name: new-year, schedule: yearly, task: docs, media_pool: daily}
"""


@pytest.fixture
def beat_fleet(tmp_path: Path, broker_url: str, redis_client: redis.Redis
               ) -> Iterator[tuple[Settings, BackstopApp]]:
    (tmp_path / "backstop.yaml").write_text(CONFIG)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(os.urandom(1000))
    settings = load_settings(str(tmp_path / "backstop.yaml"), {"BACKSTOP_BROKER_URL": broker_url})
    create_missing_stores(settings, ["local"])
    app = create_app(settings, broker_url)
    with start_worker(app, queues=[CONTROL_QUEUE, rds_queue("local")], pool="threads",
                      concurrency=4, perform_ping_check=False, hostname="beat-fleet@test"):
        wait_for(lambda: any(w.rds for w in live_workers(redis_client)), "a live worker")
        yield settings, app


def planner(settings: Settings, app: BackstopApp, client: redis.Redis) -> Planner:
    made = Planner(settings.config, client, control_for(app, client))
    made.load()
    return made


def occurrences(client: redis.Redis, prefix: str) -> dict[str, str]:
    ledger = Ledger(client)
    keys = [k.decode().split(":", 2)[2] for k in client.scan_iter("backstop:occurrence:*")
            if not k.decode().endswith((":runs", ":failover"))]
    return {k: ledger.occurrence(k).state for k in keys  # type: ignore[union-attr]
            if k.startswith(prefix)}


def test_two_beats_ticking_together_make_each_occurrence_once(
        beat_fleet: tuple[Settings, BackstopApp], redis_client: redis.Redis) -> None:
    settings, app = beat_fleet
    beats = [planner(settings, app, redis_client) for _ in range(2)]
    # Given both have seen the schedule (a first sight starts with the next tick)
    for beat in beats:
        beat.tick(datetime.now(UTC))
    deadline = time.monotonic() + 7
    while time.monotonic() < deadline:  # both tick four times a second, as if both led
        for beat in beats:
            beat.tick(datetime.now(UTC))
        time.sleep(0.25)
    high = wait_for(lambda: occurrences(redis_client, "high@") or None, "high's occurrences")
    assert 2 <= len(high) <= 5
    ledger = Ledger(redis_client)

    def all_settled() -> bool:
        return all(state != "open" for state in occurrences(redis_client, "high@").values())

    wait_for(all_settled, "every occurrence to end")
    for occurrence in occurrences(redis_client, "high@"):
        assert [r.state for r in ledger.runs_of(occurrence)] == ["succeeded"]
    # and the lower-priority event with the same task was suppressed at each of those ticks
    low = occurrences(redis_client, "low@")
    assert set(low.values()) == {"suppressed"}
    assert {k.split("@")[1] for k in low} == {k.split("@")[1] for k in high}


def test_a_tick_missed_while_no_beat_ran_runs_once_if_recent_enough(
        beat_fleet: tuple[Settings, BackstopApp], redis_client: redis.Redis) -> None:
    settings, app = beat_fleet
    # Given the beat last handled a tick of "fast" a day ago (no beat ran since)
    redis_client.hset(BEAT_LAST_TICK_KEY, "fast",
                      (datetime.now(UTC) - timedelta(days=1)).isoformat())
    beat = planner(settings, app, redis_client)
    beat.tick(datetime.now(UTC))
    beat.tick(datetime.now(UTC))
    # Then only the newest tick ran, once (not once per missed tick)
    ran = wait_for(lambda: occurrences(redis_client, "high@") or None, "the caught-up tick")
    assert len(ran) == 1
    wait_for(lambda: all(s != "open" for s in occurrences(redis_client, "high@").values()),
             "it to end")
    assert len(occurrences(redis_client, "high@")) == 1


def test_a_tick_older_than_catch_up_is_recorded_as_missed(
        beat_fleet: tuple[Settings, BackstopApp], redis_client: redis.Redis) -> None:
    settings, app = beat_fleet
    redis_client.hset(BEAT_LAST_TICK_KEY, "yearly",
                      datetime(2020, 1, 1, tzinfo=UTC).isoformat())
    beat = planner(settings, app, redis_client)
    beat.tick(datetime.now(UTC))
    missed = occurrences(redis_client, "new-year@")
    assert list(missed.values()) == ["missed"]
    [run] = Ledger(redis_client).runs_of(next(iter(missed)))
    assert run.state == "missed"


def test_the_leading_beat_runs_the_watchdog_itself_and_counts_its_passes(
        tmp_path: Path, broker_url: str, redis_client: redis.Redis) -> None:
    # Given a planner (no worker consumes anything) with the watchdog the beat gives it
    (tmp_path / "backstop.yaml").write_text(CONFIG.split("schedules:", maxsplit=1)[0])
    settings = load_settings(str(tmp_path / "backstop.yaml"), {"BACKSTOP_BROKER_URL": broker_url})
    app = create_app(settings, broker_url)
    control = control_for(app, redis_client)
    beat = Planner(settings.config, redis_client, control,
                   lambda: watchdog_pass(app, control, redis_client))
    before = watchdog_counts(redis_client)
    # When it ticks at 0 s, 5 s and 11 s
    start = datetime.now(UTC)
    for seconds in (0, 5, 11):
        beat.tick(start + timedelta(seconds=seconds))
    # Then it made two passes (one per 10 s), stamped in the broker, and sent no message
    after = watchdog_counts(redis_client)
    assert after["passes"] - before["passes"] == 2
    assert after["last_pass"] >= time.time() - 60
    assert redis_client.llen(CONTROL_QUEUE) == 0


def test_a_tick_whose_send_failed_is_sent_again_on_the_next_tick(
        beat_fleet: tuple[Settings, BackstopApp], redis_client: redis.Redis,
        monkeypatch: pytest.MonkeyPatch) -> None:
    settings, app = beat_fleet
    beat = planner(settings, app, redis_client)
    # half a second into an even second: "fast" (every 2 s) has its next tick 1.5 s later,
    # and the one after 3.5 s later, after every tick below
    now = datetime.now(UTC)
    start = now.replace(second=now.second - now.second % 2, microsecond=500_000)
    beat.tick(start)  # first sight: the schedule starts with its next tick
    # Given the broker has no master for a moment: sending a task message fails
    send = beat.control.send

    def no_master(*args: object, **kwargs: object) -> None:
        raise OperationalError("No master found for 'backstop'")

    monkeypatch.setattr(beat.control, "send", no_master)
    # When a tick is due, Then the tick fails and records nothing as handled
    with pytest.raises(OperationalError):
        beat.tick(start + timedelta(seconds=2.8))
    assert occurrences(redis_client, "high@") == {}
    # And once the broker answers again, the next tick sends what was due, once
    monkeypatch.setattr(beat.control, "send", send)
    beat.tick(start + timedelta(seconds=3.0))
    beat.tick(start + timedelta(seconds=3.1))
    wait_for(lambda: occurrences(redis_client, "high@") or None, "the tick's occurrence")
    assert len(occurrences(redis_client, "high@")) == 1
