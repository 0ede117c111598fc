"""One suite for every data store: what the engine relies on, for each implementation.

Each variant has about 8 MiB free: a path store on a real 8 MiB tmpfs, a path store with an
8 MiB quota on the ordinary disk, a remote store reaching a path store on an 8 MiB tmpfs
through a real data service on loopback, and an S3 store with an 8 MiB capacity in a bucket
of a real SeaweedFS server.
"""

from __future__ import annotations

import os
import signal
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from backstop.config import Level, S3Location
from backstop.errors import SavesetMissing, StorageUnavailable
from backstop.model import Saveset, SavesetKey
from backstop.orchestration.broker import free_port
from backstop.settings import Settings, load_settings
from backstop.workers.age import CHUNK, Identity
from backstop.workers.engine import path_store, store_of
from backstop.workers.remote import Endpoint, RemoteStore
from backstop.workers.s3 import S3Store
from backstop.workers.sealing import Opened, Sealer
from backstop.workers.serve import Listening, service_for
from backstop.workers.store import PathStore, Store
from tests.fs import tmpfs
from tests.seaweed import ACCESS_KEY, SECRET_KEY, Seaweed
from tests.waiting import wait_for

MIB = 1 << 20
KEY = SavesetKey("daily", "DAILY00001", "docs-1")
TOKEN = "contract-suite-token-0123456789"


SERVICE_CONFIG = """
rds: [{name: r1, interfaces: [{name: lo, address: 127.0.0.1, port: %d}]}]
data_stores: [{name: a, rds: r1, %s}]
data_path: {io_timeout: 1s, connect_timeout: 2s}
"""


@contextmanager
def remote(root: Path) -> Iterator[tuple[Store, PathStore]]:
    """A remote store ``a``, served from ``root`` by a data service on loopback."""
    with served(root.parent, f"path: {root}") as (made, settings):
        backing = path_store(settings, settings.config.data_stores[0])
        yield made, backing


@contextmanager
def served(where: Path, store: str, environ: dict[str, str] | None = None
           ) -> Iterator[tuple[Store, Settings]]:
    """A remote store ``a`` (``store``: the rest of its config), created and served by a
    data service on loopback."""
    port = free_port()
    (where / "backstop.yaml").write_text(SERVICE_CONFIG % (port, store))
    settings = load_settings(str(where / "backstop.yaml"),
                             {"BACKSTOP_DATA_TOKEN": TOKEN, **(environ or {})})
    store_of(settings, settings.config.data_stores[0]).init()
    listening = Listening(settings, "r1", service_for(settings, "r1")).start()
    made = RemoteStore("a", Endpoint(f"http://127.0.0.1:{port}", "lo", TOKEN, 2.0, 1.0))
    try:
        yield made, settings
    finally:
        made.close()
        listening.stop()


Clean = Callable[[], bool]  # nothing of a saveset is left where the store keeps its data


@pytest.fixture(params=["tmpfs", "quota", "remote", "s3", "remote-s3"])
def variant(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Store, Clean]]:
    """The store under test, and what says that nothing but its markers is left."""
    if request.param == "quota":
        made = PathStore("a", tmp_path / "store", capacity_bytes=9 * MIB, reserve_bytes=MIB)
        made.init()
        yield made, lambda: nothing_on_disk_but_markers(made)
        return
    if request.param in ("s3", "remote-s3"):
        server: Seaweed = request.getfixturevalue("seaweed")
        bucket = f"contract-{uuid.uuid4().hex[:12]}"
        if request.param == "remote-s3":  # a bucket behind a data service
            with served(tmp_path, f"capacity: 9MiB, reserve: 1MiB, s3: {{endpoint: "
                        f"'{server.endpoint}', bucket: {bucket}, access_key_env: K, "
                        f"secret_key_env: S}}", {"K": ACCESS_KEY, "S": SECRET_KEY}
                        ) as (made, _):
                yield made, lambda: nothing_in_bucket_but_marker(server, bucket)
            return
        s3 = s3_store(server, bucket, capacity_bytes=9 * MIB, reserve_bytes=MIB)
        s3.init()
        yield s3, lambda: nothing_in_bucket_but_marker(server, bucket)
        s3.close()
        return
    with tmpfs(tmp_path / "fs", 8 * MIB) as root:
        if request.param == "remote":
            with remote(root / "store") as (made, backing):
                yield made, lambda: nothing_on_disk_but_markers(backing)
        else:
            made = PathStore("a", root / "store")
            made.init()
            yield made, lambda: nothing_on_disk_but_markers(made)


def s3_store(server: Seaweed, bucket: str, **options: Any) -> S3Store:
    location = S3Location(endpoint=server.endpoint, bucket=bucket, access_key_env="K",
                          secret_key_env="S", **options.pop("location", {}))
    return S3Store("a", location, ACCESS_KEY, SECRET_KEY, **options)


def nothing_in_bucket_but_marker(server: Seaweed, bucket: str) -> bool:
    client: Any = server.client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return keys == ["backstop-store.json"] and not uploads


@pytest.fixture
def store(variant: tuple[Store, Clean]) -> Store:
    return variant[0]


@pytest.fixture
def clean(variant: tuple[Store, Clean]) -> Clean:
    return variant[1]


def write(store: Store, key: SavesetKey = KEY, size: int = 1000, reserve: int = 4096,
          room: int | None = None) -> None:
    staging = store.stage(key, reserve, room)
    with staging.open("archive") as out:
        out.write(os.urandom(size))
    with staging.open("manifest.jsonl.zst") as out:
        out.write(b"manifest")
    with staging.open("saveset.json") as out:
        out.write(b"{}")
    staging.commit()


def nothing_on_disk_but_markers(backing: PathStore) -> bool:
    """No file of a saveset is left; a data service drops the staging of a client that went
    away once it has been idle for io_timeout (1 s here), so this waits that long."""
    def clean() -> bool:
        try:
            return [p for p in (backing.root / "pools").rglob("*") if p.is_file()] == []
        except FileNotFoundError:  # a directory went while it was listed: look again
            return False

    return bool(wait_for(clean, "staged files to go", limit_s=10, every_s=0.1))


def test_a_committed_saveset_is_listed_and_reads_back(store: Store) -> None:
    staging = store.stage(KEY, 4096)
    with staging.open("archive") as out:
        out.write(b"payload")
    with staging.open("manifest.jsonl.zst") as out:
        out.write(b"manifest")
    with staging.open("saveset.json") as out:
        out.write(b"{}")
    assert store.list() == []  # staged, not committed: invisible
    staging.commit()
    assert store.list() == [KEY]
    assert store.find(KEY.saveset_id) == KEY
    assert store.find("another") is None
    with store.read(KEY, "archive") as data:
        assert data.read() == b"payload"


def test_a_part_reads_from_any_offset(store: Store) -> None:
    payload = bytes(range(256)) * 40
    staging = store.stage(KEY, 1 << 16)
    with staging.open("archive") as out:
        out.write(payload)
    with staging.open("manifest.jsonl.zst") as out:
        out.write(b"manifest")
    with staging.open("saveset.json") as out:
        out.write(b"{}")
    staging.commit()
    for offset in (0, 1, 4000, len(payload) - 1):
        with store.read(KEY, "archive", offset) as data:
            assert data.read() == payload[offset:], offset


def test_an_aborted_staging_leaves_nothing(store: Store, clean: Clean) -> None:
    staging = store.stage(KEY, 4096)
    with staging.open("archive") as out:
        out.write(b"half")
    staging.abort()
    staging.abort()
    assert store.list() == []
    assert clean()


def test_pre_flight_refuses_a_run_that_needs_more_than_is_free(
        store: Store, clean: Clean) -> None:
    free = store.space().free_bytes
    with pytest.raises(StorageUnavailable) as caught:
        store.stage(KEY, free + 1)
    assert caught.value.reason == "out_of_space"
    assert store.list() == []
    assert clean()


def test_writing_past_the_free_space_fails_mid_write_and_leaves_nothing(
        store: Store, clean: Clean) -> None:
    staging = store.stage(KEY, 4096)
    with pytest.raises(StorageUnavailable) as caught, staging.open("archive") as out:
        for _ in range(20):
            out.write(os.urandom(MIB))
    staging.abort()
    assert caught.value.reason == "out_of_space"
    assert store.list() == []
    assert clean()


def test_writing_past_the_room_of_the_medium_is_no_free_media(store: Store) -> None:
    staging = store.stage(KEY, 4096, room_bytes=10_000)
    with pytest.raises(StorageUnavailable) as caught, staging.open("archive") as out:
        out.write(os.urandom(20_000))
    staging.abort()
    assert caught.value.reason == "no_free_media"


def test_claimed_space_is_not_free_for_another_write(store: Store) -> None:
    free = store.space().free_bytes
    first = store.stage(KEY, free - MIB)
    with pytest.raises(StorageUnavailable):
        store.stage(SavesetKey("daily", "DAILY00001", "docs-2"), 2 * MIB)
    first.abort()
    store.stage(SavesetKey("daily", "DAILY00001", "docs-2"), 2 * MIB).abort()


def test_committed_bytes_count_as_used(store: Store) -> None:
    before = store.space()
    write(store, size=MIB)
    after = store.space()
    assert after.used_bytes >= before.used_bytes + MIB
    assert after.free_bytes <= before.free_bytes - MIB


def test_a_deleted_saveset_is_gone(store: Store) -> None:
    write(store)
    store.delete(KEY)
    store.delete(KEY)
    assert store.list() == []
    with pytest.raises(SavesetMissing):
        store.read(KEY, "archive")


def test_a_write_whose_process_died_is_never_listed_and_is_cleaned_up(
        store: Store, clean: Clean) -> None:
    pid = os.fork()
    if pid == 0:  # the child stages a write and is killed in the middle of it
        staging = store.stage(KEY, 4096)
        with staging.open("archive") as out:
            out.write(b"x" * 1000)
            os.kill(os.getpid(), signal.SIGKILL)
    os.waitpid(pid, 0)
    assert store.list() == []
    store.stage(SavesetKey("daily", "DAILY00001", "docs-2"), 4096).abort()
    assert clean()




def test_a_remote_part_takes_writes_larger_than_a_segment(tmp_path: Path) -> None:
    """One write of 12 MiB (an incompressible frame is a little over 8 MiB) goes out in
    segments the data service accepts."""
    (tmp_path / "big").mkdir()
    payload = os.urandom(12 * MIB)
    with remote(tmp_path / "big" / "store") as (store, _):
        staging = store.stage(KEY, 13 * MIB)
        with staging.open("archive") as out:
            out.write(payload)
        with staging.open("manifest.jsonl.zst") as out:
            out.write(b"manifest")
        with staging.open("saveset.json") as out:
            out.write(b"{}")
        staging.commit()
        with store.read(KEY, "archive") as data:
            assert data.read() == payload


def churn(store: Store, worker: int) -> None:
    """Write, commit, abort and delete savesets, as another worker of the store would."""
    for i in range(40):
        key = SavesetKey("daily", "DAILY00001", f"w{worker}-{i}")
        staging = store.stage(key, 4096)
        with staging.open("archive") as out:
            out.write(b"x" * 2000)
        if i % 3 == 0:
            staging.abort()
        else:
            staging.commit()
            if i % 2 == 0:
                store.delete(key)


def test_space_is_measured_while_other_writes_come_and_go(store: Store) -> None:
    errors: list[BaseException] = []
    stop = threading.Event()

    def guarded(work: Callable[[], None]) -> threading.Thread:
        def run() -> None:
            try:
                work()
            except BaseException as exc:
                errors.append(exc)
        return threading.Thread(target=run)

    def measure() -> None:
        while not stop.is_set():
            store.space()
            store.list()

    writers = [guarded(lambda n=n: churn(store, n)) for n in range(2)]
    reader = guarded(measure)
    for thread in [*writers, reader]:
        thread.start()
    for thread in writers:
        thread.join()
    stop.set()
    reader.join()
    assert errors == []


def test_an_encrypted_part_is_stored_as_ciphertext_and_opens_from_any_offset(
        store: Store) -> None:
    # Given an archive sealed where it is written, as the engine seals it
    identity = Identity.generate()
    plain = os.urandom(3 * CHUNK + 77)
    staging = store.stage(KEY, 1 << 20)
    with staging.open("archive") as out:
        sealer = Sealer(out, [identity.recipient])
        sealer.write(plain)
        stored, _ = sealer.close()
    with staging.open("manifest.jsonl.zst") as out:
        out.write(b"manifest")
    with staging.open("saveset.json") as out:
        out.write(b"{}")
    staging.commit()
    # Then the store holds the ciphertext, and the plaintext opens from any offset
    assert store.part_size(KEY, "archive") == stored
    with store.read(KEY, "archive") as data:
        assert plain[:64] not in data.read()
    saveset = Saveset(KEY.saveset_id, "docs", KEY.pool, "a", KEY.medium, Level.FULL, None,
                      datetime.now(UTC), 0, 0, recipients=(str(identity.recipient),))
    opened = Opened(store, saveset, "archive", [identity], Path("identity"))
    for offset in (0, 1, CHUNK - 1, CHUNK, 2 * CHUNK + 5, len(plain) - 1):
        with opened.open(offset) as data:
            assert data.read() == plain[offset:], offset
