"""The backup engine: one run of a backup, from scanning the source to the catalog entry.

Steps: scan the source; decide the level (``workers.levels``); compare with the base's
manifest; estimate the archive; pick a medium (``workers.media``); claim the space
(pre-flight); stream the archive and the manifest into a staged saveset; commit it to the
store; add it to the catalog, last. A failure anywhere aborts the staging, so nothing of
the run is left to be seen.
"""

from __future__ import annotations

import json
import secrets
import shutil
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from core.config import DataStore, Level, MediaPool, Task
from core.errors import CorruptSaveset, StorageError, StorageUnavailable
from core.model import (
    BLOCK_DEVICE,
    CHAR_DEVICE,
    FIFO,
    FILE,
    HARDLINK,
    Entry,
    Manifest,
    Saveset,
    SavesetKey,
)
from core.settings import Settings
from workers import manifest as manifests
from workers.archive import ArchiveWriter, tar_size
from workers.catalog import Catalog
from workers.digest import digest_of
from workers.levels import LevelDecision, decide_level
from workers.media import MediumChoice, choose_medium
from workers.retention import protected
from workers.store import ARCHIVE, MANIFEST, META, PathStore, Store

# Pre-flight allowance for the manifest and metadata, per path and in total.
MANIFEST_BYTES_PER_ENTRY = 160
MANIFEST_BYTES_FIXED = 16 << 10

Progress = Callable[[int, int, int, int], None]  # files done, bytes done, files, bytes


@dataclass(frozen=True)
class BackupRequest:
    task: str
    level: Level
    media_pool: str
    enforce_full: bool = False
    full_interval: timedelta | None = None
    run_id: str | None = None
    # The saveset id; a run that is tried again passes the same id and gets the same saveset.
    saveset_id: str | None = None


@dataclass(frozen=True)
class BackupResult:
    saveset: Saveset
    decision: LevelDecision
    warnings: tuple[str, ...] = ()  # e.g. files that changed while they were read


def new_saveset_id(task: str, now: datetime) -> str:
    return f"{task}-{now.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"


def path_store(settings: Settings, store: DataStore) -> PathStore:
    """A directory store (the caller knows it is one)."""
    if store.path is None:
        raise StorageError(f"data store {store.name} is an S3 bucket, not a directory")
    return PathStore(store.name, settings.resolve(store.path), store.capacity, store.reserve)


def store_of(settings: Settings, store: DataStore) -> Store:
    """A data store of the config as this host reaches it directly: its directory, or its
    bucket."""
    if store.s3 is None:
        return path_store(settings, store)
    from workers.s3 import S3Store  # boto3 is loaded by the processes that use a bucket

    access, secret = settings.s3_keys.get(store.name, ("", ""))
    pools = {p.name: p.retention for p in settings.config.media_pools
             if p.data_store == store.name}
    timeouts = settings.config.data_path  # those of the data path, for buckets too
    return S3Store(store.name, store.s3, access, secret, store.capacity, store.reserve, pools,
                   timeouts.connect_timeout.total_seconds(), timeouts.io_timeout.total_seconds())


def stores_of(settings: Settings) -> dict[str, Store]:
    """Every data store of the config, by name."""
    return {s.name: store_of(settings, s) for s in settings.config.data_stores}


def create_missing_stores(settings: Settings, rds: list[str]) -> list[PathStore]:
    """At start-up: create the stores marked ``create: true`` of these RDS that do not exist
    (directories; a bucket is made by ``backstop store init``)."""
    created = []
    for store in settings.config.data_stores:
        if store.path is None:
            continue
        made = path_store(settings, store)
        if store.create and store.rds in rds and not made.root.exists():
            made.init()
            created.append(made)
    return created


def drop_abandoned(settings: Settings, rds: list[str]) -> None:
    """At start-up: remove what writes killed midway left in the stores of these RDS."""
    for store in settings.config.data_stores:
        if store.rds in rds:
            with suppress(StorageUnavailable):
                store_of(settings, store).drop_abandoned()


class Engine:
    """Runs backups for the stores of one config; the catalog is shared by the fleet."""

    def __init__(self, settings: Settings, catalog: Catalog,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 stores: Mapping[str, Store] | None = None) -> None:
        self.settings = settings
        self.config = settings.config
        self.catalog = catalog
        self.clock = clock
        # the stores as this host reaches them: directories here, or through data services
        self.stores = stores if stores is not None else stores_of(settings)

    def store_unavailable(self, name: str) -> bool:
        try:
            self.stores[name].space()
        except StorageUnavailable:
            return True
        return False

    def pool(self, name: str) -> MediaPool:
        return next(p for p in self.config.media_pools if p.name == name)

    def task(self, name: str) -> Task:
        return next(t for t in self.config.tasks if t.name == name)

    def backup(self, request: BackupRequest, progress: Progress | None = None) -> BackupResult:
        now = self.clock()
        saveset_id = request.saveset_id or new_saveset_id(request.task, now)
        existing = self.catalog.get(saveset_id) or self.adopt(
            self.pool(request.media_pool).data_store, saveset_id)
        if existing is not None:  # this run already committed its saveset
            return BackupResult(existing, LevelDecision(request.level, existing.level,
                                                        existing.based_on, "already taken"))
        task = self.task(request.task)
        entries = manifests.scan(self.settings.resolve(task.source), task.exclude)
        decision = decide_level(request.level, self.catalog.level_facts(
            task.name, now, self.store_unavailable), enforce_full=request.enforce_full,
            full_interval=request.full_interval)
        base = self.base_manifest(decision.base)
        if decision.base and base is None:
            decision = LevelDecision(request.level, Level.FULL, None,
                                     f"manifest of base {decision.base} unreadable")
        try:
            saveset, changed = self._write(request, decision, saveset_id, now, entries, base,
                                           progress, self.settings.resolve(task.source))
        except BaseException:
            if decision.effective is Level.FULL:
                self.catalog.record_full_attempt(task.name, False, now, request.run_id)
            raise
        if decision.effective is Level.FULL:
            self.catalog.record_full_attempt(task.name, True, now, request.run_id)
        return BackupResult(saveset, decision, tuple(
            f"{path}: changed while it was read; its stored copy may mix old and new content"
            for path in changed))

    def base_manifest(self, base_id: str | None) -> Manifest | None:
        """The base's manifest: from the catalog's cache, else from its store."""
        if base_id is None:
            return None
        cached = self.catalog.manifest(base_id)
        if cached is not None:
            return manifests.decode(cached, base_id)
        base = self.catalog.get(base_id)
        if base is None or self.store_unavailable(base.data_store):
            return None
        return self.stored_manifest(base)

    def _write(self, request: BackupRequest, decision: LevelDecision, saveset_id: str,
               now: datetime, entries: list[Entry], base: Manifest | None,
               progress: Progress | None, source: Path) -> tuple[Saveset, list[str]]:
        """Stage, write and commit the saveset; return it, and the files that changed while
        they were read."""
        pool = self.pool(request.media_pool)
        store = self.stores[pool.data_store]
        manifest, to_store = plan(saveset_id, entries, base)
        estimate = (tar_size([e.size for e in to_store]) + MANIFEST_BYTES_FIXED
                    + MANIFEST_BYTES_PER_ENTRY * len(entries))
        store.space()  # store_offline before anything else
        choice = self._choose_medium(pool, estimate, now)
        key = SavesetKey(pool.name, choice.label, saveset_id)
        staging = store.stage(key, estimate, choice.room_bytes)
        try:
            with staging.open(ARCHIVE) as out, ArchiveWriter(out) as writer:
                stored, archive_bytes, archive_digest = archive_files(
                    writer, source, manifest, to_store, progress)
            encoded = manifests.encode(manifest)
            with staging.open(MANIFEST) as out:
                out.write(encoded)
            saveset = Saveset(
                id=saveset_id, task=request.task, pool=pool.name, data_store=pool.data_store,
                medium=choice.label, level=decision.effective, run_id=request.run_id,
                created_at=now, files=len(stored), bytes=sum(e.size for e in stored),
                based_on=decision.base, needs=tuple(sorted(manifest.holders() - {saveset_id})),
                archive_bytes=archive_bytes, archive_digest=archive_digest,
                manifest_bytes=len(encoded), manifest_digest=digest_of(encoded))
            with staging.open(META) as out:
                out.write(saveset.dumps().encode())
            staging.commit()
        except BaseException:
            staging.abort()
            raise
        self.catalog.add(saveset, encoded)
        return saveset, writer.changed

    def adopt(self, store_name: str, saveset_id: str) -> Saveset | None:
        """A saveset committed to its store but not cataloged (its writer died in between):
        catalog it now, instead of writing it again."""
        store = self.stores[store_name]
        try:
            key = store.find(saveset_id)
        except StorageUnavailable:
            return None  # nothing to adopt; the run's pre-flight reports the store
        if key is None:
            return None
        saveset, manifest = read_committed(store, key)
        self.catalog.add(saveset, manifest)
        return saveset

    def migrate(self, saveset_id: str, migration_name: str, run_id: str | None
                ) -> tuple[Saveset, bytes]:
        """Copy a saveset into the migration task's target pool; return the copy and its
        manifest. The caller verifies the copy and catalogs it (the engine does neither).

        The copy holds the same archive; its manifest names the copy as the holder of what
        the original held (content of earlier savesets of a chain stays where it is).
        """
        copy_id = f"{saveset_id}.{migration_name}"
        migration = next(m for m in self.config.migration_tasks if m.name == migration_name)
        pool = self.pool(migration.target_pool)
        done = self.stores[pool.data_store].find(copy_id)
        if done is not None:  # copied before: hand back what is there
            return read_committed(self.stores[pool.data_store], done)
        source = self.catalog.get(saveset_id)
        if source is None:
            raise StorageError(f"saveset {saveset_id} is not in the catalog")
        held = self._held_by(self.stored_manifest(source), copy_id)
        encoded = manifests.encode(held)
        now = self.clock()
        choice = self._choose_medium(pool, source.archive_bytes + len(encoded), now)
        copy = replace(source, id=copy_id, pool=pool.name, data_store=pool.data_store,
                       medium=choice.label, run_id=run_id, created_at=now,
                       migrated_from=source.id, manifest_bytes=len(encoded),
                       manifest_digest=digest_of(encoded),
                       needs=tuple(sorted(held.holders() - {copy_id})))
        self._copy_archive(source, copy, encoded, choice.room_bytes)
        return copy, encoded

    @staticmethod
    def _held_by(manifest: Manifest, copy_id: str) -> Manifest:
        """The manifest of a copy: what the original held, the copy now holds."""
        original = manifest.saveset_id
        manifest.saveset_id = copy_id
        manifest.entries = {p: replace(e, holder=copy_id) if e.holder == original else e
                            for p, e in manifest.entries.items()}
        return manifest

    def _copy_archive(self, source: Saveset, copy: Saveset, manifest: bytes,
                      room_bytes: int | None) -> None:
        """Write ``copy``: the archive of ``source``, with its own manifest and record."""
        staging = self.stores[copy.data_store].stage(copy.key, copy.stored_bytes, room_bytes)
        try:
            with self.stores[source.data_store].read(source.key, ARCHIVE) as data, \
                    staging.open(ARCHIVE) as out:
                shutil.copyfileobj(data, out, 1 << 20)
            for part, content in ((MANIFEST, manifest), (META, copy.dumps().encode())):
                with staging.open(part) as out:
                    out.write(content)
            staging.commit()
        except BaseException:
            staging.abort()
            raise

    def stored_manifest(self, saveset: Saveset) -> Manifest:
        """A saveset's manifest as its store holds it."""
        with self.stores[saveset.data_store].read(saveset.key, MANIFEST) as data:
            return manifests.decode(data, saveset.id)

    def _choose_medium(self, pool: MediaPool, estimate: int, now: datetime) -> MediumChoice:
        in_pool = self.catalog.in_pool(pool.name) if pool.media else []
        choice = choose_medium(pool, in_pool, estimate, keep=lambda: protected(
            self.catalog.all(), {p.name: p.retention for p in self.config.media_pools}, now))
        for old in choice.recycle:
            self.stores[old.data_store].delete(old.key)
            self.catalog.remove(old)
        return choice


def read_committed(store: Store, key: SavesetKey) -> tuple[Saveset, bytes]:
    """The catalog record and the manifest of a committed saveset, read from its store."""
    with store.read(key, META) as meta:
        saveset = Saveset.from_json(json.loads(meta.read()))
    if saveset.id != key.saveset_id:
        raise CorruptSaveset(key.saveset_id, f"its metadata names {saveset.id}")
    with store.read(key, MANIFEST) as manifest:
        return saveset, manifest.read()


# Kinds that go into an archive as a header without content (for tar -x alone).
HEADER_ONLY = (HARDLINK, FIFO, CHAR_DEVICE, BLOCK_DEVICE)

def archive_files(writer: ArchiveWriter, source: Path, manifest: Manifest,
                  to_store: list[Entry], progress: Progress | None
                  ) -> tuple[list[Entry], int, str]:
    """Stream each file into the archive and close it; each file's manifest entry gets its
    hash, real size and place in the archive. Returns the stored entries and the archive's
    size and digest."""
    total_bytes = sum(e.size for e in to_store)
    done_bytes = 0
    added = []
    for number, entry in enumerate(to_store, 1):
        size, digest, st, at = writer.add(entry.path, source / entry.path)
        added.append((entry, size, digest, st, at))
        done_bytes += size
        if progress is not None:
            progress(number, done_bytes, len(to_store), total_bytes)
    names = {e.path for e in to_store}
    for entry in manifest.entries.values():  # for tar -x alone: links, fifos, devices
        if entry.kind in HEADER_ONLY and (entry.kind != HARDLINK or entry.target in names):
            writer.add_header(entry)
    archive_bytes, archive_digest = writer.close()
    stored = []
    for entry, size, digest, st, (frame, skip) in added:
        kept = replace(entry, size=size, digest=digest, mtime_ns=st.st_mtime_ns,
                       inode=st.st_ino, ctime_ns=st.st_ctime_ns, holder=manifest.saveset_id,
                       frame=writer.frame_offset(frame), skip=skip)
        manifest.entries[entry.path] = kept
        stored.append(kept)
    return stored, archive_bytes, archive_digest


def plan(saveset_id: str, entries: list[Entry],
         base: Manifest | None) -> tuple[Manifest, list[Entry]]:
    """The new manifest (unchanged files point at their holder) and the files to store."""
    manifest = Manifest(saveset_id)
    to_store = []
    for entry in entries:
        before = base.entries.get(entry.path) if base else None
        if entry.kind == FILE and before is not None and entry.same_content_as(before):
            manifest.entries[entry.path] = replace(entry, digest=before.digest,
                                                   holder=before.holder, frame=before.frame,
                                                   skip=before.skip)
        else:
            manifest.entries[entry.path] = entry
            if entry.kind == FILE:
                to_store.append(entry)
    if base is not None:
        manifest.deleted = [p for p in base.entries if p not in manifest.entries]
    return manifest, to_store
