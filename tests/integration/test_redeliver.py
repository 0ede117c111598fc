"""A message taken by a worker that then died goes back on its queue; one a live worker holds
stays with it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import redis
from celery.contrib.testing.worker import start_worker

from backstop.constants import CONTROL_QUEUE, HEARTBEATS_KEY, rds_queue
from backstop.orchestration.app import create_app
from backstop.orchestration.heartbeat import live_workers, read_heartbeats
from backstop.orchestration.ledger import Ledger
from backstop.orchestration.redeliver import redeliver_stale
from backstop.settings import load_settings
from backstop.workers.engine import create_missing_stores
from tests.integration.test_orchestration import CONFIG
from tests.waiting import wait_for

# Takes one message from the control queue as a worker does (it goes to kombu's unacked
# hash), then dies at once: no acknowledgement, no restore at shutdown.
TAKE_AND_DIE = """
import os, sys
from kombu import Connection
with Connection(sys.argv[1]) as connection:
    message = connection.default_channel.basic_get(queue=sys.argv[2], no_ack=False)
    print("took" if message is not None else "nothing", flush=True)
    os._exit(0)
"""


def test_a_dispatch_held_by_a_dead_worker_is_put_back_and_its_occurrence_runs(
        tmp_path: Path, broker_url: str, redis_client: redis.Redis) -> None:
    (tmp_path / "backstop.yaml").write_text(CONFIG)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text("a")
    settings = load_settings(str(tmp_path / "backstop.yaml"), {"BACKSTOP_BROKER_URL": broker_url})
    create_missing_stores(settings, ["local"])
    app = create_app(settings, broker_url)
    # Given an accepted dispatch, taken by a worker that died before running it
    app.send("backstop.dispatch", ["held", "plain", "adhoc"], CONTROL_QUEUE, "held")
    took = subprocess.run([sys.executable, "-c", TAKE_AND_DIE, broker_url, CONTROL_QUEUE],
                          capture_output=True, text=True, check=True, env=dict(os.environ))
    assert took.stdout.strip() == "took"
    assert redis_client.llen(CONTROL_QUEUE) == 0 and redis_client.hlen("unacked") == 1
    # When the watchdog's redelivery looks: not yet, while the message is young
    assert redeliver_stale(app) == 0
    # ... and once it has been held too long, Then it is back on its queue
    assert redeliver_stale(app, older_than_s=0) == 1
    assert redis_client.llen(CONTROL_QUEUE) == 1 and redis_client.hlen("unacked") == 0
    # And a live worker runs the occurrence, once
    with start_worker(app, queues=[CONTROL_QUEUE, rds_queue("local")], pool="threads",
                      concurrency=2, perform_ping_check=False, hostname="redeliver@test"):
        wait_for(lambda: any("local" in w.rds for w in live_workers(redis_client)),
                 "the worker's heartbeat")
        ledger = Ledger(redis_client)
        wait_for(lambda: getattr(ledger.occurrence("held"), "state", None) == "succeeded",
                 "the held occurrence to succeed")
        assert len(ledger.runs_of("held")) == 1


def test_a_message_a_live_worker_holds_stays_with_it_however_long(
        tmp_path: Path, broker_url: str, redis_client: redis.Redis) -> None:
    (tmp_path / "backstop.yaml").write_text(CONFIG)
    settings = load_settings(str(tmp_path / "backstop.yaml"), {"BACKSTOP_BROKER_URL": broker_url})
    app = create_app(settings, broker_url)
    with start_worker(app, queues=[CONTROL_QUEUE], pool="threads", concurrency=1,
                      perform_ping_check=False, hostname="holder@test"):
        # Given a live worker holding a message until its countdown is up
        app.send("backstop.dispatch", ["later", "plain", "adhoc"], CONTROL_QUEUE, "later",
                 countdown=3600)
        wait_for(lambda: redis_client.hlen("unacked") == 1, "the worker to take the message")
        [tag] = [t.decode() for t in redis_client.hkeys("unacked")]

        def holds() -> bool:
            beats, _ = read_heartbeats(redis_client)
            return any(b.name == "holder@test" and tag in (b.held or []) for b in beats)

        # When its heartbeat says so
        wait_for(holds, "the worker's heartbeat to list the message it holds")
        # Then the watchdog leaves the message with it, whatever its age
        assert redeliver_stale(app, older_than_s=0) == 0
        assert redis_client.hlen("unacked") == 1 and redis_client.llen(CONTROL_QUEUE) == 0
        # But a worker that does not say what it holds (an older release) makes the
        # watchdog fall back to putting back control messages held for long
        beats, _ = read_heartbeats(redis_client)
        redis_client.hset(HEARTBEATS_KEY, "older@test", json.dumps(
            {**asdict(next(b for b in beats if b.name == "holder@test")),
             "name": "older@test", "held": None}))
        assert redeliver_stale(app, older_than_s=0) == 0  # held for under 60 s
        assert redeliver_stale(app, older_than_s=0, unsure_after_s=0) == 1  # back on its queue
        redis_client.hdel(HEARTBEATS_KEY, "older@test")
