"""SPEC section 13 with a real Sentinel-managed Valkey (a master, two replicas, three
Sentinels): clients follow a promotion by themselves, acknowledged writes are on a replica,
and a Celery worker on the Sentinel broker carries on."""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path

import pytest
from celery.contrib.testing.worker import start_worker

from backstop.constants import (
    CATALOG_SAVESET_KEY,
    CONTROL_QUEUE,
    METRICS_REPLICATION_LAG_KEY,
    NOTIFY_QUEUE,
    OCCURRENCE_KEY,
    rds_queue,
)
from backstop.orchestration.app import create_app
from backstop.orchestration.broker import patient_client
from backstop.orchestration.heartbeat import live_workers
from backstop.orchestration.ledger import Ledger
from backstop.orchestration.replicas import Replicas
from backstop.runs import Run, Trigger, utc_now
from backstop.settings import Settings, load_settings
from backstop.workers.engine import create_missing_stores
from tests.integration.conftest import WorkerFleet
from tests.integration.test_orchestration import CONFIG
from tests.sentinels import MASTER_NAME, SENTINEL_PASSWORD, SentinelCluster
from tests.waiting import wait_for


def sentinel_settings(root: Path, cluster: SentinelCluster) -> Settings:
    (root / "backstop.yaml").write_text(
        CONFIG + f'broker_url: "{cluster.url}"\nbroker_master_name: {MASTER_NAME}\n'
                 f"broker_sentinel_password: {SENTINEL_PASSWORD}\nbroker_wait_ms: 1000\n")
    return load_settings(str(root / "backstop.yaml"), {})


def a_run(occurrence: str) -> Run:
    return Run(run_id=occurrence.replace(":", "-"), occurrence=occurrence, event="plain",
               origin_event="plain", trigger=Trigger.ADHOC, task="docs", queued_at=utc_now())


def test_an_acknowledged_write_survives_the_master_and_clients_follow_the_promotion(
        tmp_path: Path, cluster: SentinelCluster) -> None:
    settings = sentinel_settings(tmp_path, cluster)
    assert settings.broker_url is not None
    client = patient_client(settings, settings.broker_url, socket_timeout=5)
    replicas = Replicas(client, settings.config.broker_wait_ms)
    ledger = Ledger(client, replicas=replicas)
    old = cluster.master()
    # Given an occurrence recorded (and so acknowledged) on the master
    assert ledger.open_occurrence("before", "plain", Trigger.ADHOC, a_run("before"))
    assert replicas.count() == 2
    # (WAIT 1: at least one replica has it; the Sentinels promote the most up to date)
    assert any(r.client().exists(OCCURRENCE_KEY.format(occ="before"))
               for r in cluster.servers if r is not old)
    # When the master is killed
    old.kill()
    killed_at = time.monotonic()
    new = cluster.wait_promoted(old)
    # Then the same client writes to the promoted replica by itself, within 30 s
    assert ledger.open_occurrence("after", "plain", Trigger.ADHOC, a_run("after"))
    assert time.monotonic() - killed_at < 30
    assert client.connection_pool.get_master_address()[1] == new.port
    # And nothing acknowledged before is lost
    found = ledger.occurrence("before")
    assert found is not None and found.event == "plain"


def test_a_write_no_replica_confirms_stands_is_logged_and_counted(
        tmp_path: Path, cluster: SentinelCluster, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)  # whatever level an earlier worker left the root at
    settings = sentinel_settings(tmp_path, cluster)
    assert settings.broker_url is not None
    client = patient_client(settings, settings.broker_url, socket_timeout=5)
    replicas = Replicas(client, 300)
    stalled = [s for s in cluster.servers if s is not cluster.master()]
    for server in stalled:
        os.kill(server.process.pid, signal.SIGSTOP)
    try:
        client.set("kept", "yes")
        assert replicas.wait("a test write") is False
    finally:
        for server in stalled:
            os.kill(server.process.pid, signal.SIGCONT)
    assert client.get("kept") == b"yes"
    assert int(client.get(METRICS_REPLICATION_LAG_KEY) or 0) == 1
    assert "no replica confirmed the write within 300 ms" in caplog.text


def test_a_worker_on_the_sentinel_broker_carries_on_after_a_promotion(
        tmp_path: Path, cluster: SentinelCluster) -> None:
    settings = sentinel_settings(tmp_path, cluster)
    assert settings.broker_url is not None
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f.bin").write_bytes(os.urandom(10_000))
    create_missing_stores(settings, ["local"])
    app = create_app(settings, settings.broker_url)
    client = patient_client(settings, settings.broker_url, socket_timeout=5)
    with start_worker(app, queues=[CONTROL_QUEUE, NOTIFY_QUEUE, rds_queue("local")],
                      pool="threads", concurrency=4, perform_ping_check=False,
                      hostname="sentinel@test"):
        wait_for(lambda: any("local" in w.rds for w in live_workers(client)),
                 "the worker's heartbeat")
        fleet = WorkerFleet(app, Ledger(client), tmp_path)
        [before] = fleet.settled(fleet.occur("plain"))
        assert before["state"] == "succeeded"
        # When the master dies and a replica is promoted
        old = cluster.master()
        old.kill()
        killed_at = time.monotonic()
        cluster.wait_promoted(old)
        # Then the same worker takes the next occurrence, and its run succeeds
        [after] = fleet.settled(fleet.occur("plain"), limit_s=90)
        assert after["state"] == "succeeded"
        print(json.dumps({"killed_to_success_s": round(time.monotonic() - killed_at, 1)}))
        # And what was cataloged before is still there
        assert fleet.ledger.run(before["run_id"]) is not None
        assert client.get(CATALOG_SAVESET_KEY.format(id=before["saveset"])) is not None
