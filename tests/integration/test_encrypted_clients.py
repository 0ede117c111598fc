"""An encrypted client task through a real worker and a real data service: the data
service, the store and the broker never see a file's content or name, and a write-only
client runs INCs against its own copy of the base."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery.contrib.testing.worker import start_worker

from backstop.constants import CONTROL_QUEUE, client_queue, rds_queue
from backstop.orchestration.app import create_app
from backstop.orchestration.broker import free_port
from backstop.orchestration.catalog import RedisCatalog
from backstop.orchestration.heartbeat import live_workers
from backstop.orchestration.ledger import Ledger
from backstop.orchestration.tasks import close_context
from backstop.settings import load_settings
from backstop.workers.age import Identity, write_identity
from backstop.workers.engine import create_missing_stores, stores_of
from backstop.workers.restore import Restorer
from backstop.workers.sealing import Keyring
from tests.integration.test_clients import TOKEN, Fleet, config_text, serving
from tests.waiting import wait_for

NAME = "customer-ledger-2026.xlsx"
MARKER = b"PLAINTEXT-MARKER-0815"


@pytest.fixture
def sealed_fleet(tmp_path: Path, broker_url: str, redis_client: redis.Redis
                 ) -> Iterator[tuple[Fleet, Identity]]:
    identity = Identity.generate()
    ports = {"a": free_port("127.0.0.2"), "b": free_port("127.0.0.3")}
    # the client has the recipient and no identity: it writes, it never reads back
    (tmp_path / "backstop.yaml").write_text(
        config_text(ports) + f"encryption: {{recipients: [{identity.recipient}]}}\n")
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / NAME).write_bytes(MARKER * 2000)
    (tmp_path / "www" / "other.bin").write_bytes(os.urandom(200_000))
    env = {"BACKSTOP_BROKER_URL": broker_url, "BACKSTOP_DATA_TOKEN": TOKEN}
    settings = load_settings(str(tmp_path / "backstop.yaml"), env)
    create_missing_stores(settings, ["r1"])
    app = create_app(settings, broker_url)
    queues = [CONTROL_QUEUE, rds_queue("r1"), client_queue("web1")]
    with start_worker(app, queues=queues, pool="threads", concurrency=4,
                      perform_ping_check=False, hostname="sealed-client@test"):
        wait_for(lambda: any("web1" in w.clients for w in live_workers(redis_client)),
                 "the client worker's heartbeat")
        yield Fleet(app, Ledger(redis_client), tmp_path, settings, ports), identity
    close_context(app)


def broker_text(client: redis.Redis) -> bytes:
    """Every key and value the broker holds, as bytes (hashes, lists, sets, strings)."""
    found = []
    for key in client.scan_iter():
        found += [key, *values_of(client, key, client.type(key))]
    return b"\n".join(found)


def values_of(client: redis.Redis, key: bytes, kind: bytes) -> list[bytes]:
    if kind == b"string":
        return [client.get(key) or b""]
    if kind == b"hash":
        return [k + v for k, v in client.hgetall(key).items()]
    if kind == b"list":
        return list(client.lrange(key, 0, -1))
    if kind in (b"set", b"zset"):
        return list(client.smembers(key) if kind == b"set" else client.zrange(key, 0, -1))
    return []


def test_an_encrypted_client_task_leaves_no_content_or_name_outside_its_saveset(
        sealed_fleet: tuple[Fleet, Identity], redis_client: redis.Redis,
        tmp_path: Path) -> None:
    fleet, identity = sealed_fleet
    listening = serving(fleet)
    try:
        [full] = fleet.settled(fleet.occur("www-first", level="FULL"))
        (tmp_path / "www" / NAME).write_bytes(MARKER * 2001)
        [inc] = fleet.settled(fleet.occur("www-first"))
    finally:
        listening.stop()
    # Then the write-only client ran its INC against its own copy of the FULL's manifest
    assert (full["state"], inc["state"]) == ("succeeded", "succeeded")
    assert (inc["effective_level"], inc["files"], inc["warnings"]) == ("INC", 1, [])
    # And neither the store nor the broker (ledger, catalog, results) holds content or name
    stored = b"".join(p.read_bytes() for p in (tmp_path / "stores").rglob("*") if p.is_file())
    assert MARKER not in stored and NAME.encode() not in stored
    assert NAME.encode() not in broker_text(redis_client)
    assert b"AGE-SECRET-KEY" not in broker_text(redis_client)
    # And the savesets open with the identity, on a host that has it
    key = tmp_path / "recovery.key"
    write_identity(key, identity)
    settings = load_settings(str(tmp_path / "backstop.yaml"),
                             {"BACKSTOP_IDENTITY_FILE": str(key)})
    catalog = RedisCatalog(redis_client)
    saveset = catalog.get(inc["saveset"])
    assert saveset is not None and saveset.encrypted
    restorer = Restorer(catalog, stores_of(settings), Keyring(settings))
    restorer.restore(saveset, tmp_path / "back")
    assert (tmp_path / "back" / NAME).read_bytes() == MARKER * 2001
    assert restorer.verify(saveset).checked == "files"
