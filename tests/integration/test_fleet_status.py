"""Heartbeats, RDS liveness and queue depths, with a real server and a real Celery worker."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from celery.contrib.testing.worker import start_worker
from click.testing import CliRunner

from backstop.constants import CONTROL_QUEUE, HEARTBEAT_TTL_S, HEARTBEATS_KEY, rds_queue
from backstop.orchestration.app import create_app
from backstop.orchestration.cli import main
from backstop.orchestration.heartbeat import read_heartbeats, server_time, write_beat_heartbeat
from backstop.orchestration.status import fleet_status
from backstop.settings import Settings, load_settings
from tests.waiting import wait_for


def rds_live(client: redis.Redis, settings: Settings) -> bool:
    return bool(fleet_status(client, settings.config)["rds"][0]["live"])


def test_a_running_rds_worker_makes_its_rds_live_and_a_stopped_one_not(
        settings: Settings, broker_url: str, redis_client: redis.Redis) -> None:
    # Given no worker, the RDS is not served
    assert not rds_live(redis_client, settings)
    app = create_app(settings, broker_url)
    # When a worker for it runs
    with start_worker(app, queues=[rds_queue("local")], perform_ping_check=False,
                      hostname="rds-local.test@host"):
        wait_for(lambda: rds_live(redis_client, settings), "the RDS to be live")
        report = fleet_status(redis_client, settings.config)
        # Then status shows the worker with the RDS it serves, and no control role
        [worker] = report["workers"]
        assert (worker["name"], worker["rds"], worker["control"]) == (
            "rds-local.test@host", ["local"], False)
    # And once it has shut down, its RDS is no longer live
    assert not rds_live(redis_client, settings)
    assert redis_client.hlen(HEARTBEATS_KEY) == 0


def test_a_control_worker_serves_no_rds(settings: Settings, broker_url: str,
                                        redis_client: redis.Redis) -> None:
    app = create_app(settings, broker_url)
    with start_worker(app, queues=[CONTROL_QUEUE], perform_ping_check=False,
                      hostname="control.test@host"):
        report = wait_for(lambda: fleet_status(redis_client, settings.config)["workers"] or None,
                          "the control worker's heartbeat")
        assert report[0]["control"] is True
        assert report[0]["rds"] == []
        assert not rds_live(redis_client, settings)


def test_a_worker_that_stopped_beating_is_not_live(settings: Settings,
                                                   redis_client: redis.Redis) -> None:
    # Given a heartbeat from a worker that was killed long enough ago
    stale = {"name": "rds-local.dead@host", "rds": ["local"], "control": False, "pid": 1,
             "host": "host", "at": server_time(redis_client) - HEARTBEAT_TTL_S - 1}
    redis_client.hset(HEARTBEATS_KEY, stale["name"], json.dumps(stale))
    # Then its RDS is not live, and status does not list it
    report = fleet_status(redis_client, settings.config)
    assert report["workers"] == []
    assert not report["rds"][0]["live"]


def test_heartbeats_older_than_a_day_and_garbage_entries_are_forgotten(
        redis_client: redis.Redis) -> None:
    ancient = {"name": "old@host", "rds": [], "control": True, "pid": 1, "host": "host",
               "at": server_time(redis_client) - 2 * 86400}
    redis_client.hset(HEARTBEATS_KEY, mapping={"old@host": json.dumps(ancient),
                                               "junk": "not json"})
    beats, _ = read_heartbeats(redis_client)
    assert beats == []
    assert redis_client.hlen(HEARTBEATS_KEY) == 0


def test_queue_depth_counts_waiting_messages_of_every_priority(
        settings: Settings, broker_url: str, redis_client: redis.Redis) -> None:
    app = create_app(settings, broker_url)
    queue = rds_queue("local")
    for priority in (0, 0, 5, 9):
        app.send_task("backstop.example", queue=queue, priority=priority, ignore_result=True)
    depths = {q["name"]: q["depth"] for q in fleet_status(redis_client, settings.config)["queues"]}
    assert depths == {CONTROL_QUEUE: 0, queue: 4}


@contextmanager
def worker_processes(broker_url: str, workers: list[tuple[Any, ...]]) -> Iterator[None]:
    """``backstop worker`` processes, each (settings, name, *options); stopped (SIGTERM:
    a clean shutdown takes each out of the fleet) when the block ends."""
    env = dict(os.environ, BACKSTOP_BROKER_URL=broker_url)
    started = []
    try:
        for settings, name, *options in workers:
            log = settings.config_path.with_name(f"{name}.log").open("ab")
            started.append(subprocess.Popen(
                [sys.executable, "-m", "backstop.orchestration.cli", "worker", "-c",
                 str(settings.config_path), "--name", name, "--concurrency", "1", *options],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
            log.close()
        yield
    finally:
        for process in started:
            process.terminate()
        for process in started:
            process.wait(timeout=60)


def test_status_names_the_processes_that_run_another_config(
        settings: Settings, broker_url: str, redis_client: redis.Redis) -> None:
    # Given two workers and a beat on the fleet's config, and a worker on an edited copy
    edited = settings.config_path.with_name("edited.yaml")
    edited.write_bytes(settings.config_path.read_bytes() + b"# changed on one host\n")
    other = load_settings(str(edited), {"BACKSTOP_BROKER_URL": broker_url})
    assert len(settings.config_hash) == 12 and other.config_hash != settings.config_hash
    assert settings.config_hash == hashlib.sha256(
        settings.config_path.read_bytes()).hexdigest()[:12]
    write_beat_heartbeat(redis_client, "beat.1@host", True, settings.config_hash)
    # (real processes: Celery workers in one process would share kombu's event loop)
    with worker_processes(broker_url, [
            (settings, "a@host", "--control"), (settings, "b@host", "--rds", "local"),
            (other, "odd@host", "--rds", "local")]):
        def all_three() -> dict[str, Any] | None:
            found = fleet_status(redis_client, settings.config)
            return found if len(found["workers"]) == 3 else None

        report = wait_for(all_three, "three heartbeats", limit_s=60)
        # Then every worker and the beat say which config they run, and the odd one is named
        hashes = {w["name"]: w["config_hash"] for w in report["workers"]}
        assert hashes == {"a@host": settings.config_hash, "b@host": settings.config_hash,
                          "odd@host": other.config_hash}
        assert report["beats"] == [{"name": "beat.1@host", "leader": True, "pid": os.getpid(),
                                    "host": socket.gethostname(),
                                    "config_hash": settings.config_hash}]
        assert report["config_mismatch"] == ["odd@host"]
        # And the text status warns
        shown = CliRunner().invoke(main, ["status", "-c", str(settings.config_path)],
                                   env={"BACKSTOP_BROKER_URL": broker_url})
        assert "warning:" in shown.output and "odd@host" in shown.output
    # And when all agree, nothing is named
    assert fleet_status(redis_client, settings.config)["config_mismatch"] == []
