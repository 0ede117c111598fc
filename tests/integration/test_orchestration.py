"""SPEC section 4 with a real broker and a real worker: failover, exactly once, follow-ups."""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from celery.contrib.testing.worker import start_worker

from backstop.config import CommandEvent
from backstop.constants import CONTROL_QUEUE, HEARTBEATS_KEY, rds_queue
from backstop.orchestration.app import create_app
from backstop.orchestration.celery_app import BackstopApp
from backstop.orchestration.heartbeat import live_workers, server_time
from backstop.orchestration.ledger import Ledger
from backstop.runs import Run, RunState, Trigger
from backstop.settings import load_settings
from backstop.workers.engine import create_missing_stores
from backstop.workers.store import MARKER
from tests.integration.conftest import WorkerFleet
from tests.waiting import wait_for

CONFIG = """
rds: [{name: local, interfaces: [{name: lo, address: 127.0.0.1}]}, {name: remote}]
data_stores:
  - {name: small, rds: local, path: stores/small, create: true, capacity: 64KiB}
  - {name: big, rds: local, path: stores/big, create: true}
  - {name: other, rds: local, path: stores/other, create: true}
  - {name: far, rds: remote, path: stores/far}
  - {name: vaultstore, rds: local, path: stores/vault, create: true}
media_pools:
  - {name: tiny, data_store: small, retention: 14d}
  - {name: spare, data_store: big, retention: 14d}
  - {name: main, data_store: other, retention: 14d, failover_pool: spare}
  - {name: remote-pool, data_store: far, retention: 14d}
  - {name: one-medium, data_store: big, retention: 14d, media: {count: 1, size: 400KiB}}
  - {name: vault, data_store: vaultstore, retention: 90d}
migration_tasks: [{name: offsite, target_pool: vault}]
drives:
  - {name: drive-big, data_store: big, channels: 1}
  - {name: drive-other, data_store: other, channels: 1}
tasks: [{name: docs, source: src}, {name: gone, source: nowhere}]
events:
  - name: plain
    task: docs
    media_pool: spare
  - {name: with-migration, task: docs, media_pool: spare, migration_task: offsite}
  - {name: one-channel, task: docs, media_pool: spare, drive: drive-big}
  - name: to-tiny
    task: docs
    level: INC
    enforce_full: true
    media_pool: tiny
    follow_ups: [{event: note, when: success}]
    failover_event: to-spare
  - name: to-spare
    task: docs
    level: DIFF
    enforce_full: false
    media_pool: spare
    drive: drive-big
    follow_ups: [{event: note, when: always}, {event: check, when: success}]
    failover_event: to-tiny-again
  - {name: to-tiny-again, task: docs, media_pool: tiny}
  - {name: to-far, task: docs, media_pool: remote-pool, failover_event: to-spare}
  - {name: to-one-medium, task: docs, media_pool: one-medium, failover_event: to-spare}
  - {name: to-main, task: docs, media_pool: main}
  - name: broken-source
    task: gone
    media_pool: spare
    failover_event: to-spare
    follow_ups: [{event: note, when: failure}]
  - {name: both-full, task: docs, media_pool: tiny, failover_event: to-tiny-again}
  - name: note
    kind: command
    argv: ["sh", "-c", "echo $BACKSTOP_PARENT_OCCURRENCE $BACKSTOP_PARENT_STATE >> notes.txt"]
  - {name: check, kind: verify}
"""


def announce(client: redis.Redis, name: str, rds: str) -> None:
    """Write the heartbeat a worker serving ``rds`` writes; it consumes nothing."""
    beat = {"name": name, "rds": [rds], "control": False, "pid": 1, "host": "elsewhere",
            "at": server_time(client)}
    client.hset(HEARTBEATS_KEY, name, json.dumps(beat))


Fleet = WorkerFleet


@pytest.fixture
def fleet(tmp_path: Path, broker_url: str, redis_client: redis.Redis) -> Iterator[Fleet]:
    (tmp_path / "backstop.yaml").write_text(CONFIG)
    (tmp_path / "src").mkdir()
    for i in range(3):
        (tmp_path / "src" / f"f{i}.bin").write_bytes(os.urandom(100_000))
    settings = load_settings(str(tmp_path / "backstop.yaml"), {"BACKSTOP_BROKER_URL": broker_url})
    create_missing_stores(settings, ["local"])
    app = create_app(settings, broker_url)
    with start_worker(app, queues=[CONTROL_QUEUE, rds_queue("local")], pool="threads",
                      concurrency=4, perform_ping_check=False, hostname="fleet@test"):
        wait_for(lambda: any("local" in w.rds for w in live_workers(redis_client)),
                 "the worker's heartbeat")
        yield Fleet(app, Ledger(redis_client), tmp_path)


def test_a_run_succeeds_and_its_record_has_the_spec_shape(fleet: Fleet) -> None:
    occurrence = fleet.occur("plain")
    [run] = fleet.settled(occurrence)
    assert set(run) >= {"run_id", "occurrence", "event", "origin_event", "trigger",
                        "failover_of", "failover_run", "task", "level", "effective_level",
                        "enforce_full", "media_pool", "data_store", "drive", "interface",
                        "follow_ups", "migration_task", "state", "error", "saveset", "files",
                        "bytes", "queued_at", "started_at", "finished_at"}
    assert (run["state"], run["trigger"], run["files"], run["error"]) == (
        "succeeded", "adhoc", 3, None)
    assert run["saveset"] and run["effective_level"] == "FULL"
    assert fleet.state(occurrence) == "succeeded"


def test_out_of_space_fails_over_once_keeping_what_and_how(fleet: Fleet) -> None:
    occurrence = fleet.occur("to-tiny")
    original, failover = fleet.settled(occurrence)
    # the original ran out of space, and names its one failover run
    assert original["state"] == "storage_unavailable"
    assert original["error"]["kind"] == "storage_unavailable"
    assert original["error"]["reason"] == "out_of_space"
    assert original["failover_run"] == failover["run_id"]
    # and says the level it tried: an INC with no FULL yet runs as FULL
    assert (original["level"], original["effective_level"]) == ("INC", "FULL")
    # the failover run: where from the failover event, what and how from the original
    assert (failover["event"], failover["origin_event"], failover["trigger"]) == (
        "to-spare", "to-tiny", "failover")
    assert failover["failover_of"] == original["run_id"]
    assert (failover["task"], failover["level"], failover["enforce_full"]) == ("docs", "INC", True)
    assert (failover["media_pool"], failover["data_store"], failover["drive"]) == (
        "spare", "big", "drive-big")
    assert [f["event"] for f in failover["follow_ups"]] == ["note", "check"]
    assert failover["state"] == "succeeded"
    assert failover["effective_level"] == "FULL"  # INC with no FULL yet
    assert fleet.state(occurrence) == "succeeded"


def test_an_expected_outcome_is_one_warning_line_without_a_traceback(
        fleet: Fleet, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="celery.app.trace")
    original, _ = fleet.settled(fleet.occur("to-tiny"))
    [line] = [r for r in caplog.records if original["run_id"] in r.getMessage()
              or "StorageUnavailable" in r.getMessage()]
    assert line.levelname == "WARNING" and line.exc_info is None
    assert "raised expected" in line.getMessage() and "out_of_space" in line.getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_store_offline_fails_over(fleet: Fleet) -> None:
    (fleet.root / "stores" / "small" / MARKER).write_text('{"store": "someone-else"}')
    original, failover = fleet.settled(fleet.occur("to-tiny"))
    assert original["error"]["reason"] == "store_offline"
    assert failover["state"] == "succeeded"


def test_no_free_media_fails_over(fleet: Fleet) -> None:
    first = fleet.settled(fleet.occur("to-one-medium"))
    assert [r["state"] for r in first] == ["succeeded"]
    original, failover = fleet.settled(fleet.occur("to-one-medium", level="FULL"))
    assert original["error"]["reason"] == "no_free_media"
    assert failover["event"] == "to-spare"


def test_an_rds_nobody_serves_fails_over_at_dispatch(fleet: Fleet) -> None:
    original, failover = fleet.settled(fleet.occur("to-far"))
    assert original["error"]["reason"] == "rds_unreachable"
    assert original["started_at"] is None
    assert (failover["data_store"], failover["state"]) == ("big", "succeeded")


def test_a_source_error_never_fails_over(fleet: Fleet) -> None:
    occurrence = fleet.occur("broken-source")
    [run] = fleet.settled(occurrence)
    assert (run["state"], run["error"]["kind"], run["failover_run"]) == (
        "failed", "source_error", None)
    assert fleet.state(occurrence) == "failed"


def test_a_failover_that_fails_ends_the_occurrence_without_a_second_failover(
        fleet: Fleet) -> None:
    occurrence = fleet.occur("both-full")
    runs = fleet.settled(occurrence)
    assert [r["state"] for r in runs] == ["storage_unavailable", "storage_unavailable"]
    assert runs[1]["failover_run"] is None  # to-tiny-again would be the next: never used
    assert fleet.state(occurrence) == "failed"


def test_pool_level_failover_when_the_event_has_none(fleet: Fleet) -> None:
    (fleet.root / "stores" / "other" / MARKER).unlink()
    original, redirected = fleet.settled(fleet.occur("to-main"))
    assert original["error"]["reason"] == "store_offline"
    assert (redirected["event"], redirected["media_pool"], redirected["data_store"]) == (
        "to-main", "spare", "big")
    assert redirected["state"] == "succeeded"


def test_follow_ups_are_those_of_the_run_that_succeeded(fleet: Fleet) -> None:
    occurrence = fleet.occur("to-tiny")
    fleet.settled(occurrence)
    # to-spare's follow-ups ran (note: always, check: success); to-tiny's would be note only
    note = wait_for(lambda: fleet.ledger.occurrence(f"{occurrence}>note"), "note follow-up")
    check = wait_for(lambda: fleet.ledger.occurrence(f"{occurrence}>check"), "check follow-up")
    assert note.trigger == check.trigger == "follow_up"
    [verify_run] = fleet.settled(f"{occurrence}>check")
    assert verify_run["state"] == "succeeded"
    [note_run] = fleet.settled(f"{occurrence}>note")
    assert note_run["state"] == "succeeded"
    assert (fleet.root / "notes.txt").read_text() == f"{occurrence} succeeded\n"


def test_failure_follow_ups_fire_once_when_the_occurrence_failed(fleet: Fleet) -> None:
    occurrence = fleet.occur("broken-source")
    fleet.settled(occurrence)
    fleet.settled(f"{occurrence}>note")
    assert (fleet.root / "notes.txt").read_text() == f"{occurrence} failed\n"


def test_a_late_or_repeated_message_changes_nothing(fleet: Fleet) -> None:
    occurrence = fleet.occur("to-tiny")
    runs = fleet.settled(occurrence)
    # the same occurrence dispatched again (a second beat), a backup and a failover
    # message delivered again after the runs ended
    fleet.app.send("backstop.dispatch", [occurrence, "to-tiny", "adhoc"], CONTROL_QUEUE, "")
    for run in runs:
        fleet.app.send("backstop.backup", [run["run_id"]], rds_queue("local"), "")
        fleet.app.send("backstop.failover", [run["run_id"]], CONTROL_QUEUE, "")
    probe = fleet.occur("plain")  # messages are handled in order enough: wait for a later one
    fleet.settled(probe)
    assert fleet.records(occurrence) == runs
    catalog_ids = [r["saveset"] for r in runs if r["saveset"]]
    assert len(catalog_ids) == 1


def test_migration_copies_the_new_saveset_verifies_and_catalogs_it(fleet: Fleet) -> None:
    from backstop.orchestration.catalog import RedisCatalog

    [run] = fleet.settled(fleet.occur("with-migration"))

    def migrated() -> dict[str, Any] | None:
        found = fleet.ledger.run(run["run_id"])
        return found.to_json()["migration"] if found and found.migration else None

    migration = wait_for(migrated, "the migration")
    assert migration["state"] == "succeeded"
    catalog = RedisCatalog(fleet.ledger.client)
    copy = catalog.get(migration["saveset"])
    assert copy is not None
    assert (copy.migrated_from, copy.pool, copy.data_store) == (run["saveset"], "vault",
                                                                 "vaultstore")
    original = catalog.get(run["saveset"])
    assert original is not None
    assert (copy.files, copy.bytes, copy.level) == (original.files, original.bytes,
                                                    original.level)


def test_a_drive_never_has_more_writers_than_channels_and_waiting_is_not_failing(
        fleet: Fleet) -> None:
    for i in range(6):  # bigger source: runs long enough to overlap if they could
        (fleet.root / "src" / f"big{i}.bin").write_bytes(os.urandom(4 << 20))
    occurrences = [fleet.occur("one-channel") for _ in range(3)]
    runs = [fleet.settled(o)[0] for o in occurrences]
    assert [r["state"] for r in runs] == ["succeeded"] * 3
    spans = sorted((r["started_at"], r["finished_at"]) for r in runs)
    for (_, first_end), (second_start, _) in itertools.pairwise(spans):
        assert second_start >= first_end  # one channel: one writer at a time


def test_a_queued_run_whose_rds_stops_being_served_fails_over(fleet: Fleet) -> None:
    from backstop.orchestration.tasks import control_for

    # Given a worker for RDS remote that announced itself (its heartbeat) and then vanished
    client = fleet.ledger.client
    announce(client, "remote@gone", "remote")
    occurrence = fleet.occur("to-far")
    run = fleet.first_record(occurrence)
    assert run["state"] == "queued"  # sent to backstop.rds.remote, which nobody consumes
    client.hdel(HEARTBEATS_KEY, "remote@gone")
    # When the watchdog looks
    assert control_for(fleet.app, client).watchdog() >= 1
    # Then the run ended as rds_unreachable and its occurrence failed over
    original, failover = fleet.settled(occurrence)
    assert (original["state"], original["error"]["reason"]) == (
        "storage_unavailable", "rds_unreachable")
    assert failover["state"] == "succeeded"


def test_a_revoked_run_is_cancelled_and_never_run(fleet: Fleet) -> None:
    from backstop.orchestration.tasks import control_for

    # Given a run queued for RDS remote, which nobody consumes, revoked by the operator
    client = fleet.ledger.client
    announce(client, "remote@idle", "remote")
    occurrence = fleet.occur("to-far")
    run = fleet.first_record(occurrence)
    control_for(fleet.app, client).cancel(run["run_id"])
    [cancelled] = fleet.settled(occurrence)
    assert (cancelled["state"], cancelled["error"]["kind"]) == ("failed", "cancelled")
    assert fleet.state(occurrence) == "failed"
    # a message for it delivered later does nothing
    client.hdel(HEARTBEATS_KEY, "remote@idle")
    fleet.app.send("backstop.backup", [run["run_id"]], rds_queue("local"), "")
    fleet.settled(fleet.occur("plain"))
    assert fleet.records(occurrence) == [cancelled]


def test_an_occurrence_left_open_by_a_dead_worker_is_settled_by_the_watchdog(
        fleet: Fleet) -> None:
    from backstop.constants import OCCURRENCE_KEY, OCCURRENCES_OPEN_KEY, RUN_KEY
    from backstop.orchestration.tasks import control_for

    # Given an occurrence whose run ended, but whose worker died before settling it
    occurrence = fleet.occur("plain")
    [run] = fleet.settled(occurrence)
    client = fleet.ledger.client
    client.hset(OCCURRENCE_KEY.format(occ=occurrence), "state", '"open"')
    client.sadd(OCCURRENCES_OPEN_KEY, occurrence)
    client.hset(RUN_KEY.format(run=run["run_id"]), "finished_at",
                '"2026-01-01T00:00:00+00:00"')
    # When the watchdog looks, Then it is settled (once) from its run
    control = control_for(fleet.app, client)
    assert control.watchdog() == 1
    assert fleet.state(occurrence) == "succeeded"
    assert control.watchdog() == 0


def test_a_queued_run_whose_message_was_lost_is_sent_again_by_the_watchdog(
        fleet: Fleet) -> None:
    from backstop.orchestration.control import new_run_id
    from backstop.orchestration.events import resolve
    from backstop.orchestration.tasks import control_for

    # Given an occurrence and its run, written by a dispatch killed before it sent the run
    control = control_for(fleet.app, fleet.ledger.client)
    spec = resolve(control.config, "plain", Trigger.ADHOC)
    record = Run.for_backup(new_run_id(), "lost-message", spec).model_copy(
        update={"queued_at": datetime(2026, 1, 1, tzinfo=UTC)})  # long ago: nobody took it
    assert fleet.ledger.open_occurrence("lost-message", "plain", Trigger.ADHOC, record)
    # When the watchdog looks, Then it sends the run again and the occurrence succeeds
    assert control.watchdog() == 1
    [run] = fleet.settled("lost-message")
    assert run["state"] == "succeeded" and run["sent_at"] is not None
    assert control.watchdog() == 0


def test_a_recent_queued_run_is_not_sent_again(fleet: Fleet) -> None:
    from backstop.orchestration.tasks import control_for

    # Given a run queued for RDS remote (served, but its worker consumes nothing)
    client = fleet.ledger.client
    announce(client, "remote@slow", "remote")
    occurrence = fleet.occur("to-far")
    fleet.first_record(occurrence)
    # When the watchdog looks, Then a run queued a moment ago is left to its message
    assert control_for(fleet.app, client).watchdog() == 0
    client.hdel(HEARTBEATS_KEY, "remote@slow")


def test_a_command_run_whose_process_died_is_run_again_by_the_watchdog(fleet: Fleet) -> None:
    from backstop.orchestration.control import new_run_id
    from backstop.orchestration.tasks import control_for

    # Given a command run left running by a process that died (its lease has run out)
    control = control_for(fleet.app, fleet.ledger.client)
    note = control.config.event_named("note")
    assert isinstance(note, CommandEvent)
    record = Run.for_job(new_run_id(), "dead-command", note, Trigger.ADHOC).model_copy(
        update={"state": RunState.RUNNING, "attempts": 1})
    assert fleet.ledger.open_occurrence("dead-command", "note", Trigger.ADHOC, record)
    # When the watchdog looks, Then the command runs again, once, and the occurrence ends
    assert control.watchdog() == 1
    [run] = fleet.settled("dead-command")
    assert (run["state"], run["attempts"]) == ("succeeded", 2)
    assert control.watchdog() == 0


def test_a_run_whose_worker_died_after_cataloging_its_saveset_succeeded(fleet: Fleet) -> None:
    import dataclasses

    from backstop.constants import CATALOG_SAVESET_KEY
    from backstop.orchestration.catalog import RedisCatalog
    from backstop.orchestration.tasks import control_for

    # Given a run on RDS remote, claimed by a worker that then died: its lease ran out
    client = fleet.ledger.client
    announce(client, "remote@dying", "remote")
    occurrence = fleet.occur("to-far")
    run = fleet.first_record(occurrence)
    assert fleet.ledger.claim(run["run_id"], "remote@dying:1:x", lease_ms=1).ok
    # ... after writing and cataloging its saveset (the one the run's id names)
    [plain] = fleet.settled(fleet.occur("plain"))
    catalog = RedisCatalog(client)
    written = dataclasses.replace(catalog.get(plain["saveset"]), id=f"docs-{run['run_id']}")
    client.set(CATALOG_SAVESET_KEY.format(id=written.id), written.dumps())
    client.hdel(HEARTBEATS_KEY, "remote@dying")
    # When the watchdog finds RDS remote unserved, Then the run succeeded: no failover
    assert control_for(fleet.app, client).watchdog() == 1
    [ended] = fleet.settled(occurrence)
    assert (ended["state"], ended["saveset"], ended["failover_run"]) == (
        "succeeded", written.id, None)
    assert fleet.state(occurrence) == "succeeded"


def test_a_backup_revoked_by_broadcast_is_cancelled_when_its_message_arrives(
        fleet: Fleet) -> None:
    from backstop.orchestration.control import new_run_id
    from backstop.orchestration.events import resolve
    from backstop.orchestration.tasks import control_for

    # Given a queued run, and its task id revoked fleet-wide (as Flower's revoke does)
    control = control_for(fleet.app, fleet.ledger.client)
    record = Run.for_backup(new_run_id(), "revoked",
                            resolve(control.config, "plain", Trigger.ADHOC))
    assert fleet.ledger.open_occurrence("revoked", "plain", Trigger.ADHOC, record)
    task_id = f"backup-{record.run_id}"
    replies = fleet.app.control.revoke(task_id, reply=True, timeout=5)
    assert replies  # the worker has heard it
    # When the run's message reaches the worker
    fleet.app.send_task("backstop.backup", args=[record.run_id], queue=rds_queue("local"),
                        task_id=task_id, ignore_result=True)
    # Then the run is cancelled, never run, and its occurrence failed
    [run] = fleet.settled("revoked")
    assert (run["state"], run["error"]["kind"], run["saveset"]) == ("failed", "cancelled", None)
    assert fleet.state("revoked") == "failed"


class TaskEvents:
    """The task events a worker sends (what Flower shows), captured from the broker."""

    def __init__(self, app: BackstopApp) -> None:
        self.app, self.seen = app, []  # type: ignore[var-annotated]
        self.receiver: Any = None
        self.thread = threading.Thread(target=self._capture, daemon=True)
        self.ready = threading.Event()

    def _capture(self) -> None:
        with self.app.connection_for_read() as connection:
            self.receiver = self.app.events.Receiver(connection, handlers={"*": self.seen.append})
            self.ready.set()
            with contextlib.suppress(socket.timeout, TimeoutError):
                self.receiver.capture(limit=None, timeout=None, wakeup=False)

    def __enter__(self) -> TaskEvents:
        self.thread.start()
        self.ready.wait(10)
        time.sleep(0.5)  # subscribed before anything is sent
        return self

    def __exit__(self, *exc: object) -> None:
        self.receiver.should_stop = True
        self.thread.join(10)

    def of(self, kind: str, name: str | None = None) -> list[dict[str, Any]]:
        named = {e["uuid"]: e.get("name") for e in self.seen if e.get("name")}
        return [e for e in self.seen if e["type"] == kind
                and (name is None or named.get(e.get("uuid")) == name)]


def test_flower_sees_a_run_that_hit_storage_unavailable_fail_and_its_failover_as_its_child(
        fleet: Fleet) -> None:
    with TaskEvents(fleet.app) as events:
        occurrence = fleet.occur("to-tiny")
        original, failover = fleet.settled(occurrence)
        wait_for(lambda: len(events.of("task-succeeded", "backstop.backup")) >= 1,
                 "the failover backup's success event")
    # the backup whose run ended storage_unavailable is FAILURE, saying why
    [failed] = events.of("task-failed", "backstop.backup")
    assert "StorageUnavailable" in failed["exception"] and "out_of_space" in failed["exception"]
    # it sent the one failover task itself, whose arguments carry what a failover keeps
    [sent] = events.of("task-received", "backstop.failover")
    assert sent["parent_id"] == failed["uuid"]
    for shown in (f"run={original['run_id']}", "origin_event=to-tiny", "failover_event=to-spare",
                  "task=docs", "level=INC", "enforce_full=true"):
        assert shown in sent["args"], sent["args"]
    # the failover run's backup is the failover task's child, and SUCCESS
    [rescue] = [e for e in events.of("task-received", "backstop.backup")
                if e["parent_id"] == sent["uuid"]]
    assert [e["uuid"] for e in events.of("task-succeeded", "backstop.backup")] == [
        rescue["uuid"]]
    roots = {e["root_id"] for e in (sent, rescue)} | {
        e["root_id"] for e in events.of("task-received", "backstop.backup")}
    assert len(roots) == 1  # all under the dispatch that started the occurrence
    assert failover["state"] == "succeeded"


def test_flower_sees_a_source_error_fail_and_a_late_message_not_fail(fleet: Fleet) -> None:
    with TaskEvents(fleet.app) as events:
        [run] = fleet.settled(fleet.occur("broken-source"))
        fleet.app.send("backstop.backup", [run["run_id"]], rds_queue("local"), "late")
        fleet.settled(fleet.occur("plain"))
        wait_for(lambda: len(events.of("task-succeeded", "backstop.backup")) >= 2,
                 "the late message and the plain backup to end")
    [failed] = events.of("task-failed", "backstop.backup")
    assert "RunFailed" in failed["exception"] and "source_error" in failed["exception"]


def test_an_occurrence_started_ad_hoc_from_flower_runs_like_backstop_run(fleet: Fleet) -> None:
    # Flower's "apply" of backstop.run with keyword arguments (its API sends just this)
    sent = fleet.app.send_task("backstop.run", kwargs={"event": "plain", "level": "DIFF"},
                               queue=CONTROL_QUEUE)
    occurrence = sent.get(timeout=30)
    [run] = fleet.settled(occurrence)
    assert (run["trigger"], run["level"], run["state"]) == ("adhoc", "DIFF", "succeeded")
    sent.forget()


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"event": "plian"}, "unknown event 'plian' (did you mean 'plain'?)"),
    ({"event": "plain", "level": "WEEKLY"}, "bad level 'WEEKLY': one of FULL, DIFF, INC, COPY"),
    ({"event": "plain", "enforce_full": "yes"}, "bad enforce_full 'yes'"),
])
def test_a_bad_ad_hoc_start_fails_with_a_clear_message_and_starts_nothing(
        fleet: Fleet, kwargs: dict[str, Any], expected: str) -> None:
    client = fleet.ledger.client
    sent = fleet.app.send_task("backstop.run", kwargs=kwargs, queue=CONTROL_QUEUE)
    with pytest.raises(Exception) as caught:
        sent.get(timeout=30)
    assert expected in str(caught.value)
    assert sent.state == "FAILURE"
    assert client.keys("backstop:occurrence:*") == [] and client.keys("backstop:run:*") == []
    sent.forget()


def test_celery_s_own_tools_reach_the_fleet(fleet: Fleet) -> None:
    # Given the fleet's config and broker, as an operator's shell has them
    env = dict(os.environ, BACKSTOP_CONFIG=str(fleet.root / "backstop.yaml"),
               BACKSTOP_BROKER_URL=fleet.app.conf.broker_url)
    celery = [sys.executable, "-m", "celery", "-A", "backstop.orchestration.celery_main"]
    # When `celery inspect` asks the workers, Then the fleet's worker answers
    pinged = subprocess.run([*celery, "inspect", "ping", "-d", "fleet@test", "-t", "10"],
                            env=env, capture_output=True, text=True, timeout=60, check=False)
    assert pinged.returncode == 0 and "pong" in pinged.stdout, pinged.stdout + pinged.stderr
    queues = subprocess.run([*celery, "inspect", "active_queues", "-d", "fleet@test",
                             "-t", "10"], env=env, capture_output=True, text=True, timeout=60,
                            check=False)
    assert "backstop.control" in queues.stdout and "backstop.rds.local" in queues.stdout
