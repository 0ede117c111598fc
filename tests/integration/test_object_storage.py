"""S3 buckets as data stores (SPEC section 14), against a real SeaweedFS server: failover
to a bucket, migration to an object-locked bucket, immutability, and every way a bucket can
be unavailable, caused for real."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from botocore.exceptions import ClientError
from celery.contrib.testing.worker import start_worker
from click.testing import CliRunner

from backstop.config import Level
from backstop.constants import CONTROL_QUEUE, rds_queue
from backstop.errors import StorageUnavailable
from backstop.orchestration.app import create_app
from backstop.orchestration.catalog import RedisCatalog
from backstop.orchestration.cli import main
from backstop.orchestration.heartbeat import live_workers
from backstop.orchestration.ledger import Ledger
from backstop.settings import Settings, load_settings
from backstop.workers.engine import create_missing_stores, store_of, stores_of
from backstop.workers.maintenance import purge
from backstop.workers.restore import Restorer
from backstop.workers.s3 import S3Store
from backstop.workers.store import ARCHIVE, MANIFEST, META
from tests.integration.conftest import PARALLEL, Setup, WorkerFleet, snapshot
from tests.seaweed import ACCESS_KEY, SECRET_KEY, Seaweed
from tests.waiting import wait_for

KEYS = {"S3_KEY": ACCESS_KEY, "S3_SECRET": SECRET_KEY}

FLEET_CONFIG = """
rds: [{{name: local}}]
data_path: {{connect_timeout: 2s, io_timeout: 3s}}
data_stores:
  - {{name: small, rds: local, path: stores/small, create: true, capacity: 64KiB}}
  - {{name: big, rds: local, path: stores/big, create: true}}
  - name: cloud
    rds: local
    s3: {{endpoint: "{endpoint}", bucket: {cloud}, prefix: "site1/",
         access_key_env: S3_KEY, secret_key_env: S3_SECRET}}
  - name: vaultstore
    rds: local
    s3: {{endpoint: "{endpoint}", bucket: {vault}, access_key_env: S3_KEY,
         secret_key_env: S3_SECRET, object_lock: {{mode: COMPLIANCE, days: 3}}}}
media_pools:
  - {{name: tiny, data_store: small, retention: 14d}}
  - {{name: spare, data_store: big, retention: 14d}}
  - {{name: cloud-pool, data_store: cloud, retention: 14d, failover_pool: spare}}
  - {{name: vault, data_store: vaultstore, retention: 1d}}
migration_tasks: [{{name: offsite, target_pool: vault}}]
tasks: [{{name: docs, source: src}}]
events:
  - {{name: to-tiny, task: docs, level: INC, enforce_full: true, media_pool: tiny,
     failover_event: to-cloud}}
  - {{name: to-cloud, task: docs, media_pool: cloud-pool, failover_event: to-spare}}
  - {{name: to-spare, task: docs, media_pool: spare}}
  - {{name: nightly, task: docs, media_pool: spare, migration_task: offsite}}
"""


def buckets() -> dict[str, str]:
    tag = uuid.uuid4().hex[:10]
    return {"cloud": f"cloud-{tag}", "vault": f"vault-{tag}"}


def init_buckets(settings: Settings) -> None:
    for store in settings.config.data_stores:
        if store.s3 is not None:
            store_of(settings, store).init()


@pytest.fixture
def fleet(tmp_path: Path, broker_url: str, redis_client: redis.Redis, seaweed: Seaweed
          ) -> Iterator[WorkerFleet]:
    (tmp_path / "backstop.yaml").write_text(FLEET_CONFIG.format(endpoint=seaweed.endpoint,
                                                                **buckets()))
    (tmp_path / "src").mkdir()
    for i in range(3):
        (tmp_path / "src" / f"f{i}.bin").write_bytes(os.urandom(100_000))
    settings = load_settings(str(tmp_path / "backstop.yaml"),
                             {"BACKSTOP_BROKER_URL": broker_url, **KEYS})
    create_missing_stores(settings, ["local"])
    init_buckets(settings)
    app = create_app(settings, broker_url)
    with start_worker(app, queues=[CONTROL_QUEUE, rds_queue("local")], pool="threads",
                      concurrency=4, perform_ping_check=False, hostname="s3fleet@test"):
        wait_for(lambda: any("local" in w.rds for w in live_workers(redis_client)),
                 "the worker's heartbeat")
        yield WorkerFleet(app, Ledger(redis_client), tmp_path)


def settings_of(fleet: WorkerFleet) -> Settings:
    return load_settings(str(fleet.root / "backstop.yaml"), KEYS)


def test_a_full_local_pool_fails_over_to_a_bucket_and_restores_from_it(
        fleet: WorkerFleet, tmp_path: Path) -> None:
    original, failover = fleet.settled(fleet.occur("to-tiny"))
    assert original["error"]["reason"] == "out_of_space"
    assert (failover["event"], failover["data_store"], failover["state"]) == (
        "to-cloud", "cloud", "succeeded")
    assert (failover["level"], failover["enforce_full"]) == ("INC", True)
    catalog = RedisCatalog(fleet.ledger.client)
    saveset = catalog.get(failover["saveset"])
    assert saveset is not None and saveset.data_store == "cloud"
    stores = stores_of(settings_of(fleet))
    # through the engine's processes: each makes its own S3 client, never sharing the run's
    restorer = Restorer(catalog, stores, jobs=PARALLEL)
    restorer.restore(saveset, tmp_path / "back")
    assert snapshot(tmp_path / "back") == snapshot(fleet.root / "src")
    assert restorer.verify(saveset).ok
    assert stores["cloud"].list() == [saveset.key]


def test_a_bucket_that_is_gone_fails_over_to_a_local_pool(
        fleet: WorkerFleet, seaweed: Seaweed) -> None:
    settings = settings_of(fleet)
    cloud = store_of(settings, settings.config.data_stores[2])
    assert isinstance(cloud, S3Store)
    client: Any = seaweed.client()
    for item in client.list_objects_v2(Bucket=cloud.bucket).get("Contents", []):
        client.delete_object(Bucket=cloud.bucket, Key=item["Key"])
    client.delete_bucket(Bucket=cloud.bucket)
    original, failover = fleet.settled(fleet.occur("to-cloud"))
    assert original["error"]["reason"] == "store_offline"
    assert "the bucket is missing" in original["error"]["message"]
    assert (failover["event"], failover["data_store"], failover["state"]) == (
        "to-spare", "big", "succeeded")


def test_a_nightly_saveset_is_migrated_to_a_locked_bucket_that_keeps_it(
        fleet: WorkerFleet, seaweed: Seaweed) -> None:
    [run] = fleet.settled(fleet.occur("nightly"))

    def migrated() -> dict[str, Any] | None:
        found = fleet.ledger.run(run["run_id"])
        return found.to_json()["migration"] if found and found.migration else None

    migration = wait_for(migrated, "the migration")
    assert migration["state"] == "succeeded"
    settings = settings_of(fleet)
    catalog = RedisCatalog(fleet.ledger.client)
    copy = catalog.get(migration["saveset"])
    assert copy is not None and copy.data_store == "vaultstore"
    vault = store_of(settings, settings.config.data_stores[3])
    assert isinstance(vault, S3Store)
    # every object of the copy is locked, COMPLIANCE, for at least the lock's 3 days
    client: Any = seaweed.client()
    for part in (ARCHIVE, META, MANIFEST):
        head = client.head_object(Bucket=vault.bucket, Key=vault.object_key(copy.key, part))
        assert head["ObjectLockMode"] == "COMPLIANCE"
        assert head["ObjectLockRetainUntilDate"] > datetime.now(UTC) + timedelta(days=2.9)
    # past the pool's retention (1 day) but not the lock's, and no longer the newest FULL
    # (a base a next INC could need): purge would delete it, but keeps it and says why
    [later] = fleet.settled(fleet.occur("nightly"))
    wait_for(lambda: (found := fleet.ledger.run(later["run_id"])) and found.migration
             and found.migration.state == "succeeded", "the second migration")
    stores = stores_of(settings)
    result = purge(settings.config, catalog, stores, datetime.now(UTC) + timedelta(days=2))
    assert copy.id not in result.deleted
    [skipped] = [s for s in result.skipped if s["id"] == copy.id]
    assert "locked until" in skipped["error"]
    # a hand-made delete of a locked version is refused by the server
    versions = client.list_object_versions(Bucket=vault.bucket).get("Versions", [])
    archive = next(v for v in versions if v["Key"] == vault.object_key(copy.key, ARCHIVE))
    with pytest.raises(ClientError) as refused:
        client.delete_object(Bucket=vault.bucket, Key=archive["Key"],
                             VersionId=archive["VersionId"])
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    assert catalog.get(copy.id) is not None
    assert Restorer(catalog, stores).verify(copy).ok


S3_ONLY = """
rds: [{{name: local}}]
data_path: {{connect_timeout: 1s, io_timeout: {io_timeout}}}
data_stores:
  - name: a
    rds: local
    s3: {{endpoint: "{endpoint}", bucket: {bucket}, access_key_env: S3_KEY,
         secret_key_env: S3_SECRET{lock}}}
media_pools: [{{name: daily, data_store: a, retention: 14d}}]
tasks: [{{name: docs, source: src}}]
"""


@pytest.fixture
def s3_setup(make_setup: Callable[..., Setup]) -> Callable[..., Setup]:
    def make(server: Seaweed, lock: str = "", environ: dict[str, str] | None = None,
             create: bool = True, bucket: str | None = None, io_timeout: str = "10s") -> Setup:
        bucket = bucket or f"b-{uuid.uuid4().hex[:12]}"
        setup = make_setup(S3_ONLY.format(endpoint=server.endpoint, bucket=bucket, lock=lock,
                                          io_timeout=io_timeout),
                           environ=KEYS if environ is None else environ)
        if create:
            init_buckets(setup.settings)
        (setup.source / "f.bin").write_bytes(os.urandom(300_000))
        return setup
    return make


def offline_message(setup: Setup) -> str:
    with pytest.raises(StorageUnavailable) as caught:
        setup.backup(Level.FULL)
    assert caught.value.reason == "store_offline"
    return caught.value.message


def test_wrong_credentials_are_store_offline_saying_so(
        s3_setup: Callable[..., Setup], seaweed: Seaweed) -> None:
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    client: Any = seaweed.client()
    client.create_bucket(Bucket=bucket)
    wrong = s3_setup(seaweed, environ={"S3_KEY": ACCESS_KEY, "S3_SECRET": "not-the-secret"},
                     create=False, bucket=bucket)
    message = offline_message(wrong)
    assert "credentials were refused" in message
    assert "not-the-secret" not in message


def test_keys_not_in_the_environment_are_store_offline_naming_the_variable(
        s3_setup: Callable[..., Setup], seaweed: Seaweed) -> None:
    setup = s3_setup(seaweed, environ={"S3_KEY": ACCESS_KEY}, create=False)
    assert "S3_SECRET" in offline_message(setup)


def test_a_missing_bucket_is_store_offline_saying_so(
        s3_setup: Callable[..., Setup], seaweed: Seaweed) -> None:
    setup = s3_setup(seaweed, create=False)
    assert "the bucket is missing" in offline_message(setup)


def test_a_deleted_bucket_is_store_offline(s3_setup: Callable[..., Setup],
                                           seaweed: Seaweed) -> None:
    setup = s3_setup(seaweed)
    setup.backup(Level.FULL)
    client: Any = seaweed.client()
    bucket = setup.settings.config.data_stores[0].s3.bucket  # type: ignore[union-attr]
    for item in client.list_objects_v2(Bucket=bucket).get("Contents", []):
        client.delete_object(Bucket=bucket, Key=item["Key"])
    client.delete_bucket(Bucket=bucket)
    assert "the bucket is missing" in offline_message(setup)


def test_a_bucket_without_object_lock_is_refused_for_a_locked_store(
        s3_setup: Callable[..., Setup], seaweed: Seaweed) -> None:
    setup = s3_setup(seaweed, lock=", object_lock: {mode: COMPLIANCE, days: 1}", create=False)
    bucket = setup.settings.config.data_stores[0].s3.bucket  # type: ignore[union-attr]
    client: Any = seaweed.client()
    client.create_bucket(Bucket=bucket)  # without object lock
    assert "has no object lock enabled" in offline_message(setup)
    done = CliRunner().invoke(main, ["-c", str(setup.settings.config_path), "store", "init",
                                     "a"], env=KEYS)
    assert done.exit_code != 0
    assert "has no object lock enabled" in done.output


def test_a_stopped_server_is_store_offline_within_the_timeouts(
        s3_setup: Callable[..., Setup], own_seaweed: Seaweed) -> None:
    setup = s3_setup(own_seaweed, io_timeout="2s")
    own_seaweed.signal(signal.SIGSTOP)
    started = datetime.now(UTC)
    assert "unreachable" in offline_message(setup)
    assert datetime.now(UTC) - started < timedelta(seconds=20)
    own_seaweed.signal(signal.SIGCONT)
    setup.backup(Level.FULL)  # and it is back


def test_a_server_stalled_mid_upload_is_found_within_connect_plus_twice_io_timeout(
        s3_setup: Callable[..., Setup], own_seaweed: Seaweed) -> None:
    # Given a FULL of several parts to a bucket, with connect 1 s and io 2 s: bound 5 s
    setup = s3_setup(own_seaweed, io_timeout="2s")
    for i in range(12):
        (setup.source / f"big{i}.bin").write_bytes(os.urandom(4 << 20))
    bucket = setup.settings.config.data_stores[0].s3.bucket  # type: ignore[union-attr]
    client: Any = own_seaweed.client()
    stalled_at: list[float] = []

    def stall_when_uploading() -> None:
        wait_for(lambda: client.list_multipart_uploads(Bucket=bucket).get("Uploads"),
                 "the multipart upload to begin", limit_s=30, every_s=0.05)
        own_seaweed.signal(signal.SIGSTOP)
        stalled_at.append(time.monotonic())

    staller = threading.Thread(target=stall_when_uploading)
    staller.start()
    # When the server stops answering mid-upload
    try:
        with pytest.raises(StorageUnavailable) as caught:
            setup.backup(Level.FULL)
        ended_at = time.monotonic()
    finally:
        staller.join()
        own_seaweed.signal(signal.SIGCONT)
    # Then the run ends store_offline within the bound (with a margin for a loaded machine),
    # however many calls were still to make (parts in flight, the abort), and stores nothing
    assert caught.value.reason == "store_offline"
    assert ended_at - stalled_at[0] < 5 + 5
    assert setup.catalog.all() == []


def test_a_server_killed_mid_upload_is_store_offline_and_leaves_no_saveset(
        s3_setup: Callable[..., Setup], own_seaweed: Seaweed) -> None:
    setup = s3_setup(own_seaweed)
    for i in range(12):  # 48 MiB: several parts of the multipart upload
        (setup.source / f"big{i}.bin").write_bytes(os.urandom(4 << 20))
    uploading = threading.Event()
    bucket = setup.settings.config.data_stores[0].s3.bucket  # type: ignore[union-attr]
    client: Any = own_seaweed.client()

    def kill_when_uploading() -> None:
        wait_for(lambda: client.list_multipart_uploads(Bucket=bucket).get("Uploads"),
                 "the multipart upload to begin", limit_s=30, every_s=0.05)
        own_seaweed.kill()
        uploading.set()

    killer = threading.Thread(target=kill_when_uploading)
    killer.start()
    with pytest.raises(StorageUnavailable) as caught:
        setup.backup(Level.FULL)
    killer.join()
    assert uploading.is_set()
    assert caught.value.reason == "store_offline"
    assert setup.catalog.all() == []
    own_seaweed.start()  # the same ports and data
    store = setup.engine.stores["a"]
    assert store.list() == []

    def takes_a_part() -> bool:  # a restarted server answers lists before it takes writes
        try:
            client.put_object(Bucket=bucket, Key="probe", Body=os.urandom(8 << 20))
        except Exception:
            return False
        client.delete_object(Bucket=bucket, Key="probe")
        return True

    wait_for(takes_a_part, "the restarted server to take an 8 MiB write", limit_s=60)
    setup.backup(Level.FULL)  # the next run writes the saveset whole
    assert len(store.list()) == 1
