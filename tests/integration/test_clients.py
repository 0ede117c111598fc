"""SPEC section 9 with a real broker, a real worker and a real data service: a client's task
is read by the client's worker and streamed to the RDS through an interface."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from celery.contrib.testing.worker import start_worker
from click.testing import CliRunner

from backstop.constants import CONTROL_QUEUE, client_queue, rds_queue
from backstop.orchestration.app import create_app
from backstop.orchestration.broker import free_port
from backstop.orchestration.catalog import RedisCatalog
from backstop.orchestration.cli import main
from backstop.orchestration.heartbeat import live_workers
from backstop.orchestration.ledger import Ledger
from backstop.orchestration.tasks import close_context
from backstop.settings import Settings, load_settings
from backstop.workers.engine import create_missing_stores, stores_of
from backstop.workers.restore import Restorer
from backstop.workers.serve import Listening, service_for
from tests.integration.conftest import WorkerFleet
from tests.invariants import Audit, audit
from tests.waiting import wait_for

TOKEN = "integration-data-token-0123456789"

CONFIG = """
rds: [{{name: r1, interfaces: [{interfaces}]}}]
clients: [{{name: web1}}, {{name: nobody}}]
data_stores:
  - {{name: main, rds: r1, path: stores/main, create: true}}
  - {{name: other, rds: r1, path: stores/other, create: true}}
media_pools:
  - {{name: daily, data_store: main, retention: 14d}}
  - {{name: spare, data_store: other, retention: 14d}}
tasks:
  - {{name: www, client: web1, source: www}}
  - {{name: lonely, client: nobody, source: www}}
data_path: {{connect_timeout: 2s, io_timeout: 5s}}
events:
  - {{name: www-a, task: www, level: INC, media_pool: daily, interface: a,
     failover_event: www-b}}
  - {{name: www-b, task: www, media_pool: spare, interface: b}}
  - {{name: www-first, task: www, level: INC, media_pool: daily}}
  - {{name: lonely-now, task: lonely, media_pool: daily, failover_event: www-b}}
"""


@dataclass
class Fleet(WorkerFleet):
    settings: Settings
    ports: dict[str, int]

    def audit(self, accepted: list[str]) -> Audit:
        env = {"BACKSTOP_BROKER_URL": self.app.conf.broker_url, "BACKSTOP_DATA_TOKEN": TOKEN}
        found = audit(self.root / "backstop.yaml", accepted, env=env)
        assert found.problems == []
        return found


ADDRESS = {"a": "127.0.0.2", "b": "127.0.0.3"}


def config_text(ports: dict[str, int]) -> str:
    listed = ", ".join(f"{{name: {name}, address: {ADDRESS[name]}, port: {port}}}"
                       for name, port in ports.items())
    return CONFIG.format(interfaces=listed)


def serving(fleet: Fleet, down: tuple[str, ...] = (), token: str = TOKEN) -> Listening:
    """The data service of r1, knowing ``token``; on the ``down`` interfaces nothing
    listens where the clients look (the service listens on another port there)."""
    ports = {name: free_port(ADDRESS[name]) if name in down else port
             for name, port in fleet.ports.items()}
    path = fleet.root / "service.yaml"
    path.write_text(config_text(ports))
    settings = load_settings(str(path), {"BACKSTOP_DATA_TOKEN": token})
    return Listening(settings, "r1", service_for(settings, "r1")).start()


@pytest.fixture
def fleet(tmp_path: Path, broker_url: str, redis_client: redis.Redis) -> Iterator[Fleet]:
    ports = {"a": free_port("127.0.0.2"), "b": free_port("127.0.0.3")}
    (tmp_path / "backstop.yaml").write_text(config_text(ports))
    (tmp_path / "www").mkdir()
    for i in range(3):
        (tmp_path / "www" / f"page{i}.html").write_bytes(os.urandom(50_000))
    env = {"BACKSTOP_BROKER_URL": broker_url, "BACKSTOP_DATA_TOKEN": TOKEN}
    settings = load_settings(str(tmp_path / "backstop.yaml"), env)
    create_missing_stores(settings, ["r1"])
    app = create_app(settings, broker_url)
    queues = [CONTROL_QUEUE, rds_queue("r1"), client_queue("web1")]
    with start_worker(app, queues=queues, pool="threads", concurrency=4,
                      perform_ping_check=False, hostname="client@test"):
        wait_for(lambda: any("web1" in w.clients for w in live_workers(redis_client)),
                 "the client worker's heartbeat")
        yield Fleet(app, Ledger(redis_client), tmp_path, settings, ports)
    close_context(app)


def test_a_client_task_is_sent_through_the_interface_and_lands_in_the_store(
        fleet: Fleet, tmp_path: Path) -> None:
    listening = serving(fleet)
    try:
        [run] = fleet.settled(fleet.occur("www-first"))
    finally:
        listening.stop()
    assert (run["state"], run["client"], run["interface"]) == ("succeeded", "web1", "a")
    assert (run["files"], run["effective_level"]) == (3, "FULL")
    # indistinguishable from a saveset an RDS worker wrote: in the store, catalog, verify
    catalog = RedisCatalog(fleet.ledger.client)
    saveset = catalog.get(run["saveset"])
    assert saveset is not None and saveset.data_store == "main"
    assert (tmp_path / "stores" / "main" / "pools" / "daily" / saveset.medium / saveset.id
            / "saveset.json").exists()
    assert Restorer(catalog, stores_of(fleet.settings)).verify(saveset).ok


def test_an_inc_through_the_data_service_stores_only_what_changed(
        fleet: Fleet, tmp_path: Path) -> None:
    listening = serving(fleet)
    try:
        fleet.settled(fleet.occur("www-first", level="FULL"))
        (tmp_path / "www" / "page0.html").write_bytes(b"changed")
        [run] = fleet.settled(fleet.occur("www-first"))
    finally:
        listening.stop()
    assert (run["state"], run["effective_level"], run["files"]) == ("succeeded", "INC", 1)


def test_an_interface_that_refuses_fails_over_to_the_other_interface(
        fleet: Fleet, tmp_path: Path) -> None:
    listening = serving(fleet, down=("a",))
    try:
        occurrence = fleet.occur("www-a")
        original, failover = fleet.settled(occurrence)
        assert fleet.audit([occurrence]).failovers == {"rds_unreachable": 1}
    finally:
        listening.stop()
    assert (original["state"], original["error"]["reason"]) == (
        "storage_unavailable", "rds_unreachable")
    assert "interface a" in original["error"]["message"]
    assert (failover["state"], failover["event"], failover["interface"]) == (
        "succeeded", "www-b", "b")
    assert (failover["level"], failover["client"]) == ("INC", "web1")


def test_a_refused_token_is_store_offline_and_says_so(fleet: Fleet) -> None:
    listening = serving(fleet, token="a-different-token-of-the-rds-0123")
    try:
        occurrence = fleet.occur("www-a")
        original, failover = fleet.settled(occurrence)
        assert fleet.audit([occurrence]).failovers == {"store_offline": 1}
    finally:
        listening.stop()
    assert (original["state"], original["error"]["reason"]) == (
        "storage_unavailable", "store_offline")
    assert "refused the token" in original["error"]["message"]
    assert failover["state"] == "storage_unavailable"  # same token: refused there too


def test_a_client_nobody_serves_is_client_unreachable_and_never_fails_over(
        fleet: Fleet) -> None:
    occurrence = fleet.occur("lonely-now")
    [run] = fleet.settled(occurrence)
    assert fleet.audit([occurrence]).failovers == {}
    assert (run["state"], run["error"]["kind"], run["failover_run"]) == (
        "failed", "client_unreachable", None)


def cli(fleet: Fleet, *args: str, config: Path | None = None) -> Any:
    env = {"BACKSTOP_BROKER_URL": fleet.app.conf.broker_url, "BACKSTOP_DATA_TOKEN": TOKEN}
    done = CliRunner().invoke(main, [*args, "--json", "-c", str(config or fleet.root /
                                                              "backstop.yaml")], env=env)
    assert done.exit_code == 0, done.output
    return json.loads(done.stdout)


def test_status_probes_each_interface_and_lists_clients(fleet: Fleet) -> None:
    listening = serving(fleet, down=("a",))
    try:
        report = cli(fleet, "status")
    finally:
        listening.stop()
    [r1] = report["rds"]
    assert {i["name"]: i["reachable"] for i in r1["interfaces"]} == {"a": False, "b": True}
    assert {c["name"]: c["live"] for c in report["clients"]} == {"web1": True, "nobody": False}
    assert any(w["clients"] == ["web1"] for w in report["workers"])


def test_a_saveset_whose_store_is_elsewhere_is_verified_through_the_data_service(
        fleet: Fleet) -> None:
    listening = serving(fleet)
    try:
        [run] = fleet.settled(fleet.occur("www-first"))
        # this host's view: the stores are not here (another path, nothing there)
        elsewhere = fleet.root / "operator.yaml"
        elsewhere.write_text((fleet.root / "backstop.yaml").read_text()
                             .replace("path: stores/", "path: not-here/"))
        verified = cli(fleet, "verify", run["saveset"], config=elsewhere)
        pools = {p["name"]: p for p in cli(fleet, "pools", config=elsewhere)}
    finally:
        listening.stop()
    assert (verified["ok"], verified["files"]) == (True, 3)
    assert pools["daily"]["used_bytes"] > 0
    assert not (fleet.root / "not-here").exists()


def test_restore_on_a_client_is_written_there_by_its_worker(fleet: Fleet) -> None:
    listening = serving(fleet)
    try:
        [run] = fleet.settled(fleet.occur("www-first"))
        target = fleet.root / "restored"
        done = cli(fleet, "restore", "--saveset", run["saveset"], "--client", "web1",
                   "--to", str(target))
    finally:
        listening.stop()
    assert (done["saveset"], done["files"]) == (run["saveset"], 3)
    for i in range(3):
        name = f"page{i}.html"
        assert (target / name).read_bytes() == (fleet.root / "www" / name).read_bytes()
