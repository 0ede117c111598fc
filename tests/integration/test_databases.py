"""A real PostgreSQL database backed up as streams by a client worker through the data
service, dropped, and restored with ``backstop restore --stdout | pg_restore``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery.contrib.testing.worker import start_worker

from backstop.constants import CONTROL_QUEUE, client_queue, rds_queue
from backstop.orchestration.app import create_app
from backstop.orchestration.broker import free_port
from backstop.orchestration.heartbeat import live_workers
from backstop.orchestration.ledger import Ledger
from backstop.orchestration.tasks import close_context
from backstop.settings import load_settings
from backstop.workers.engine import create_missing_stores
from backstop.workers.serve import Listening, service_for
from tests.integration.conftest import WorkerFleet
from tests.postgres import Postgres, running_postgres
from tests.waiting import wait_for

TOKEN = "databases-data-token-0123456789"
CONFIG = """
rds: [{{name: r1, interfaces: [{{name: lo2, address: 127.0.0.2, port: {port}}}]}}]
clients: [{{name: db1}}]
data_stores: [{{name: main, rds: r1, path: stores/main, create: true}}]
media_pools: [{{name: daily, data_store: main, retention: 14d}}]
data_path: {{connect_timeout: 2s, io_timeout: 10s}}
tasks:
  - name: app-db
    client: db1
    streams:
      - {{name: app.dump, argv: {dump}}}
      - {{name: globals.sql, argv: {globals}}}
events:
  - {{name: app-db-nightly, task: app-db, level: INC, media_pool: daily}}
"""
ROWS = "SELECT id, name, amount FROM invoices ORDER BY id"


@pytest.fixture
def postgres() -> Iterator[Postgres]:
    with running_postgres() as server:
        yield server


def test_a_database_dumped_by_a_client_comes_back_row_for_row_through_pg_restore(
        postgres: Postgres, tmp_path: Path, broker_url: str, redis_client: redis.Redis) -> None:
    postgres.psql("postgres", "CREATE DATABASE app")
    postgres.psql("postgres", "CREATE ROLE reporting LOGIN")
    postgres.psql("app", "CREATE TABLE invoices (id int PRIMARY KEY, name text, amount numeric);"
                         "INSERT INTO invoices SELECT i, 'customer ' || i, i * 1.25 "
                         "FROM generate_series(1, 20000) AS i")
    before = postgres.psql("app", ROWS)
    port = free_port("127.0.0.2")
    (tmp_path / "backstop.yaml").write_text(CONFIG.format(
        port=port,
        dump=json.dumps(["pg_dump", "--format=custom", *postgres.connection, "--dbname=app"]),
        globals=json.dumps(["pg_dumpall", "--globals-only", *postgres.connection])))
    env = {"BACKSTOP_BROKER_URL": broker_url, "BACKSTOP_DATA_TOKEN": TOKEN}
    settings = load_settings(str(tmp_path / "backstop.yaml"), env)
    create_missing_stores(settings, ["r1"])
    listening = Listening(settings, "r1", service_for(settings, "r1")).start()
    app = create_app(settings, broker_url)
    try:
        # the client worker reads the task; the RDS worker and its data service store it
        with start_worker(app, queues=[CONTROL_QUEUE, rds_queue("r1"), client_queue("db1")],
                          pool="threads", concurrency=2, perform_ping_check=False,
                          hostname="db1@test"):
            wait_for(lambda: any("db1" in w.clients for w in live_workers(redis_client)),
                     "the client worker's heartbeat")
            fleet = WorkerFleet(app, Ledger(redis_client), tmp_path)
            [run] = fleet.settled(fleet.occur("app-db-nightly"))
        close_context(app)
        assert (run["state"], run["effective_level"], run["files"]) == ("succeeded", "FULL", 2)
        assert any("streams" in w for w in run["warnings"]), run["warnings"]
        postgres.psql("postgres", "DROP DATABASE app")
        postgres.psql("postgres", "DROP ROLE reporting")
        # The globals first (the roles), then the database, each from standard output
        cli = [sys.executable, "-m", "backstop.orchestration.cli", "restore", "--task", "app-db",
               "--stdout", "-c", str(tmp_path / "backstop.yaml")]
        cli_env = {**os.environ, **env}
        globals_sql = subprocess.run([*cli, "--include", "globals.sql"], env=cli_env,
                                     capture_output=True, check=True).stdout
        subprocess.run(["psql", *postgres.connection, "--dbname=postgres", "-v",
                        "ON_ERROR_STOP=0", "-q"], input=globals_sql, check=True,
                       capture_output=True)
        postgres.psql("postgres", "CREATE DATABASE app")
        restore = subprocess.Popen([*cli, "--include", "app.dump"], env=cli_env,
                                   stdout=subprocess.PIPE)
        pg_restore = subprocess.run(["pg_restore", *postgres.connection, "--dbname=app",
                                     "--exit-on-error"], stdin=restore.stdout,
                                    capture_output=True, text=True, check=False)
        assert restore.stdout is not None
        restore.stdout.close()
        assert restore.wait(30) == 0
        assert pg_restore.returncode == 0, pg_restore.stderr
    finally:
        listening.stop()
    assert postgres.psql("app", ROWS) == before
    assert postgres.psql("postgres", "SELECT rolname FROM pg_roles WHERE rolname = 'reporting'"
                         ).strip() == "reporting"
