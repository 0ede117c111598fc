"""The engine's processes: a backup and a restore shared out to them give the saveset and
the tree one process gives; one that dies fails the run and leaves nothing behind."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import subprocess
import threading
import time
from contextlib import suppress
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import redis
import zstandard

from backstop.config import Level
from backstop.errors import SourceError
from backstop.model import SavesetKey
from backstop.orchestration.catalog import RedisCatalog
from backstop.settings import load_settings
from backstop.workers.engine import BackupRequest, Engine
from backstop.workers.jobs import Jobs, ProcessDied
from backstop.workers.restore import Restorer
from backstop.workers.store import ARCHIVE, PathStore, Store
from tests.integration.conftest import PARALLEL, Setup, snapshot


def children() -> list[int]:
    """This process's forked children (of any of its threads): the engine's processes,
    not the broker's server or other programs the tests started."""
    me, found = Path("/proc/self/cmdline").read_bytes(), []
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as listed:
            for pid in listed.read().split():
                with suppress(FileNotFoundError):
                    if Path(f"/proc/{pid}/cmdline").read_bytes() == me:
                        found.append(int(pid))
    return found


def kill_children_soon(after_s: float) -> None:
    def kill() -> None:
        time.sleep(after_s)
        for pid in children():
            os.kill(pid, signal.SIGKILL)
    threading.Thread(target=kill, daemon=True).start()


def tree(src: Path, files: int = 60) -> None:
    for i in range(files):
        (src / f"d{i % 4}").mkdir(exist_ok=True)
        (src / f"d{i % 4}" / f"f{i:03}.bin").write_bytes(os.urandom(20_000 + 997 * i))
    (src / "big.bin").write_bytes(os.urandom(300_000))  # a slice of its own (PARALLEL)


def tar_of(setup: Setup, saveset_id: str) -> bytes:
    saveset = setup.catalog.get(saveset_id)
    assert saveset is not None
    with setup.engine.stores[saveset.data_store].read(saveset.key, ARCHIVE) as archive:
        return zstandard.ZstdDecompressor().stream_reader(
            archive, read_across_frames=True).read()


def frames_of(setup: Setup, saveset_id: str) -> int:
    saveset = setup.catalog.get(saveset_id)
    assert saveset is not None
    with setup.engine.stores[saveset.data_store].read(saveset.key, ARCHIVE) as archive:
        data, count = archive.read(), 0
    while data:
        size = zstandard.frame_header_size(data)  # a frame at the start of data
        assert size
        compressed = zstandard.ZstdDecompressor().decompressobj()
        compressed.decompress(data)
        data = compressed.unused_data
        count += 1
    return count


def test_a_backup_in_slices_is_the_tar_one_process_writes(setup: Setup, tmp_path: Path
                                                          ) -> None:
    tree(setup.source)
    # Given the same tree backed up by one process and by two, in slices of a few files
    setup.engine.jobs = Jobs(1)
    one = setup.backup(Level.FULL).saveset
    setup.engine.jobs = PARALLEL
    setup.clock.now = setup.clock.now.replace(hour=13)
    two = setup.backup(Level.FULL).saveset
    # Then their tar streams are the same, byte for byte, in frames of each slice's own
    assert tar_of(setup, one.id) == tar_of(setup, two.id)
    assert frames_of(setup, one.id) == 1
    assert frames_of(setup, two.id) > 10
    # And zstd -d | tar -x restores it without Backstop
    out = tmp_path / "tar"
    out.mkdir()
    with setup.engine.stores[two.data_store].read(two.key, ARCHIVE) as archive:
        subprocess.run(f"zstd -d -q | tar -C {out} -xf -", shell=True, check=True,
                       input=archive.read())
    assert {p: v[3] for p, v in snapshot(out).items() if v[0] == "file"} == {
        p: v[3] for p, v in snapshot(setup.source).items() if v[0] == "file"}
    # And a restore by two processes rebuilds the tree, as one process's does
    setup.restorer.restore(two, tmp_path / "two")
    Restorer(setup.catalog, setup.engine.stores, jobs=Jobs(1)).restore(two, tmp_path / "one")
    assert snapshot(tmp_path / "two") == snapshot(setup.source) == snapshot(tmp_path / "one")


def kill_children() -> None:
    """SIGKILL to the engine's processes, and wait until they are gone."""
    for pid in children():
        os.kill(pid, signal.SIGKILL)
    while children():  # a killed process's cmdline reads empty
        time.sleep(0.01)


def test_a_process_killed_mid_backup_fails_the_run_and_leaves_no_saveset(
        setup: Setup) -> None:
    tree(setup.source)

    killed = []

    def progress(*_: int) -> None:
        # the first slice is in (the processes have started), dozens are to come: kill them
        if not killed and children():
            kill_children()
            killed.append(True)

    with pytest.raises(ProcessDied, match="a process of this backup ended"):
        setup.engine.backup(BackupRequest("docs", Level.FULL, "daily"), progress)
    assert setup.catalog.all() == []
    store = setup.engine.stores["a"]
    assert isinstance(store, PathStore)
    assert [p.name for p in store.root.rglob("*") if p.is_file() and
            not p.name.startswith(".backstop")] == []
    assert children() == []


def test_a_file_that_became_a_fifo_since_the_walk_is_refused_not_waited_for(
        setup: Setup) -> None:
    tree(setup.source)
    late = setup.source / "d2" / "f030.bin"  # in a slice of its own process

    def progress(files: int, *_: int) -> None:
        if late.is_file():
            late.unlink()
            os.mkfifo(late)

    with pytest.raises(SourceError, match=r"f030\.bin changed into something other than a"):
        setup.engine.backup(BackupRequest("docs", Level.FULL, "daily"), progress)
    assert setup.catalog.all() == []


class StallingStore(PathStore):
    """A directory store whose archive, read past its start, stalls (in the engine's
    processes: the pieces of a restore other than the first)."""

    def __init__(self, store: Store) -> None:
        assert isinstance(store, PathStore)
        super().__init__(store.name, store.root, store.capacity_bytes, store.reserve_bytes)

    def read(self, key: SavesetKey, part: str, offset: int = 0) -> BinaryIO:
        if part == ARCHIVE and offset > 0:
            time.sleep(60)
        return super().read(key, part, offset)


def test_a_process_killed_mid_restore_fails_it_and_leaves_nothing_in_the_target(
        setup: Setup, tmp_path: Path) -> None:
    tree(setup.source)
    full = setup.backup(Level.FULL).saveset
    stores = {name: StallingStore(s) for name, s in setup.engine.stores.items()}
    restorer = Restorer(setup.catalog, stores, jobs=PARALLEL)
    target = tmp_path / "target"
    kill_children_soon(1.0)
    with pytest.raises(ProcessDied, match="a process of this restore ended"):
        restorer.restore(full, target)
    assert list(target.iterdir()) == []  # not even its work directory
    assert children() == []


def _backup_in_a_daemon(config: str, broker_url: str, done: Any) -> None:
    """In a daemonic process, as a Celery pool's: a FULL through the engine's processes."""
    catalog = RedisCatalog(redis.Redis.from_url(broker_url))
    settings = load_settings(config, {"BACKSTOP_BROKER_URL": broker_url})
    engine = Engine(settings, catalog)
    engine.jobs = PARALLEL
    try:
        done.put(engine.backup(BackupRequest("docs", Level.FULL, "daily")).saveset.files)
    except Exception as exc:
        done.put(repr(exc))


def test_a_daemonic_process_a_celery_pool_runs_its_backup_through_them(
        setup: Setup, broker_url: str) -> None:
    tree(setup.source)
    context = multiprocessing.get_context("fork")
    done = context.Queue()
    daemon = context.Process(target=_backup_in_a_daemon, daemon=True,
                             args=(str(setup.settings.config_path), broker_url, done))
    daemon.start()
    assert done.get(timeout=60) == 61
    daemon.join(10)
    assert daemon.exitcode == 0



def test_a_restore_in_chunks_is_the_restore_in_memory(setup: Setup, tmp_path: Path) -> None:
    src = setup.source
    tree(src, files=12)
    (src / "d1" / "deep").mkdir()
    (src / "d1" / "deep" / "note.txt").write_text("deep\n")
    os.link(src / "d0" / "f000.bin", src / "d3" / "same.bin")  # a hard link, later in the walk
    (src / "d2" / "to-note").symlink_to("../d1/deep/note.txt")
    full = setup.backup(Level.FULL).saveset
    for include in (None, ["d3/"], ["*.txt"], ["d1/deep/"]):
        results = []
        for chunk in (50_000, 2):  # all in memory; in chunks of two paths
            target = tmp_path / f"{chunk}-{include and include[0]}".replace("/", "_")
            restorer = Restorer(setup.catalog, setup.engine.stores,
                                jobs=dataclasses.replace(PARALLEL, restore_chunk=chunk))
            done = restorer.restore(full, target, include=include)
            results.append(((done.files, done.bytes, done.warnings), snapshot(target)))
        assert results[0] == results[1], include
    assert (tmp_path / "2-None" / "d3" / "same.bin").stat().st_ino == (
        tmp_path / "2-None" / "d0" / "f000.bin").stat().st_ino
    assert (tmp_path / "2-d3_" / "d3" / "same.bin").read_bytes() == (
        src / "d0" / "f000.bin").read_bytes()  # its file left out: a file of its content
