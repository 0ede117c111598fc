"""SPEC section 10 notifications, to a real local HTTP receiver (webhooks, and Apprise's own
``json://``), sent by a real worker when occurrences settle."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
import redis
from celery.contrib.testing.worker import start_worker

import backstop.orchestration.notify
from backstop.constants import CONTROL_QUEUE, METRICS_NOTIFY_FAILED_KEY, NOTIFY_QUEUE, rds_queue
from backstop.orchestration.app import create_app
from backstop.orchestration.heartbeat import live_workers
from backstop.orchestration.ledger import Ledger
from backstop.orchestration.notify import Notifier
from backstop.orchestration.tasks import control_for
from backstop.runs import OccurrenceState, Trigger
from backstop.settings import load_settings
from backstop.workers.engine import create_missing_stores
from tests.integration.conftest import WorkerFleet
from tests.integration.test_orchestration import CONFIG
from tests.receiver import Receiver
from tests.waiting import wait_for


def free_port(host: str) -> int:
    with closing(socket.socket()) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.close()


# Nothing listens here until a test starts a receiver on it, minutes after this port was
# found free: on an address of its own, which no connection to 127.0.0.1 takes a port of.
LATE_HOST = "127.0.0.9"
LATE = free_port(LATE_HOST)


def notify_config(port: int) -> str:
    return CONFIG + f"""
notify:
  - {{webhook: "http://127.0.0.1:{port}/hook", when: [failover]}}
  - {{url: "json://127.0.0.1:{port}/failures", when: [failure]}}
  - {{url: "json://127.0.0.1:{port}/all", when: [success, failover, missed]}}
  - {{webhook: "http://user:s3cret-pw@{LATE_HOST}:{LATE}/late", when: [success]}}
"""


@pytest.fixture
def fleet(tmp_path: Path, broker_url: str, redis_client: redis.Redis,
          receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> Iterator[WorkerFleet]:
    monkeypatch.setattr(backstop.orchestration.notify, "NOTIFY_RETRY_FIRST_S", 0.5)
    (tmp_path / "backstop.yaml").write_text(notify_config(receiver.port))
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f.bin").write_bytes(os.urandom(100_000))
    settings = load_settings(str(tmp_path / "backstop.yaml"), {"BACKSTOP_BROKER_URL": broker_url})
    create_missing_stores(settings, ["local"])
    app = create_app(settings, broker_url)
    with start_worker(app, queues=[CONTROL_QUEUE, NOTIFY_QUEUE, rds_queue("local")],
                      pool="threads", concurrency=4, perform_ping_check=False,
                      hostname="notify@test"):
        wait_for(lambda: any("local" in w.rds for w in live_workers(redis_client)),
                 "the worker's heartbeat")
        yield WorkerFleet(app, Ledger(redis_client), tmp_path)


def test_each_target_whose_when_applies_gets_one_message_when_the_occurrence_settles(
        fleet: WorkerFleet, receiver: Receiver) -> None:
    # Given an occurrence that fails over (out of space) and succeeds there
    occurrence = fleet.occur("to-tiny")
    original, rescue = fleet.settled(occurrence)
    # Then the failover webhook gets the SPEC object, kind failover
    [hook] = wait_for(lambda: receiver.at("/hook", occurrence) or None, "the webhook's message")
    assert (hook["kind"], hook["occurrence"], hook["event"], hook["task"], hook["state"]) == (
        "failover", occurrence, "to-tiny", "docs", "succeeded")
    assert [r["run_id"] for r in hook["runs"]] == [original["run_id"], rescue["run_id"]]
    assert hook["runs"][0]["error"]["reason"] == "out_of_space"
    # And the Apprise target that wants failovers gets a readable message
    [apprise] = wait_for(lambda: receiver.at("/all", original["run_id"]) or None,
                         "the Apprise message")
    assert apprise["title"] == "Backstop: to-tiny needed its failover (succeeded)"
    assert original["run_id"] in apprise["message"] and "out_of_space" in apprise["message"]
    assert rescue["saveset"] in apprise["message"]
    # And the one that wants failures only gets nothing; nobody gets a second message
    time.sleep(1.5)
    assert receiver.at("/failures") == [] and len(receiver.at("/hook", occurrence)) == 1
    assert len(receiver.at("/all", original["run_id"])) == 1


def test_a_redelivered_message_and_a_second_control_worker_send_nothing_twice(
        fleet: WorkerFleet, receiver: Receiver) -> None:
    occurrence = fleet.occur("to-tiny")
    original = fleet.settled(occurrence)[0]
    wait_for(lambda: receiver.at("/hook", occurrence) or None, "the webhook's message")
    wait_for(lambda: receiver.at("/all", original["run_id"]) or None, "the Apprise message")
    # When the notify message is delivered again, to two control workers at once
    notifiers = [Notifier(fleet.app.settings.config, Ledger(fleet.ledger.client),
                          fleet.app.send) for _ in range(2)]
    threads = [threading.Thread(target=n.notify, args=(occurrence,)) for n in notifiers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    time.sleep(1.0)
    # Then each target still has its one message
    assert len(receiver.at("/hook", occurrence)) == 1
    assert len(receiver.at("/all", original["run_id"])) == 1


def test_an_unreachable_target_is_tried_again_counted_and_never_shows_its_password(
        fleet: WorkerFleet, redis_client: redis.Redis,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    # Given a target that is down when the occurrence settles
    occurrence = fleet.occur("plain")
    fleet.settled(occurrence)
    wait_for(lambda: redis_client.hget(METRICS_NOTIFY_FAILED_KEY, json.dumps(["3"])),
             "a failed attempt to be counted")
    # When it comes up, Then a retry reaches it, once
    late = Receiver(LATE, LATE_HOST)
    try:
        [message] = wait_for(lambda: late.at("/late", occurrence) or None,
                             "the retried message", limit_s=30)
        assert (message["kind"], message["state"]) == ("success", "succeeded")
        time.sleep(2)
        assert len(late.at("/late", occurrence)) == 1
    finally:
        late.close()
    assert float(redis_client.hget(METRICS_NOTIFY_FAILED_KEY, json.dumps(["3"])) or 0) >= 1
    # And the target's password is in no log line
    assert f"notify[3] (http://user:***@{LATE_HOST}" in caplog.text
    assert "s3cret-pw" not in caplog.text


def test_a_missed_tick_is_told_to_the_targets_that_want_missed(
        fleet: WorkerFleet, receiver: Receiver) -> None:
    control = control_for(fleet.app, fleet.ledger.client)
    assert control.record_skipped("plain@2026-01-01T00:00:00Z", "plain", Trigger.SCHEDULE,
                                  OccurrenceState.MISSED)
    [message] = wait_for(lambda: receiver.at("/all", "plain was missed") or None,
                         "the missed message")
    assert message["title"] == "Backstop: plain was missed"
    assert "missed" in message["message"]
