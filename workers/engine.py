"""The backup engine: one run of a backup, from scanning the source to the catalog entry.

Steps: scan the source; decide the level (``backstop.workers.levels``); compare with the base's
manifest; estimate the archive; pick a medium (``backstop.workers.media``); claim the space
(pre-flight); stream the archive and the manifest into a staged saveset; commit it to the
store; add it to the catalog, last. A failure anywhere aborts the staging, so nothing of
the run is left to be seen.
"""

from __future__ import annotations

import heapq
import io
import json
import logging
import marshal
import mmap
import os
import secrets
import shutil
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from pathlib import Path
from typing import Any, BinaryIO, cast

import zstandard

from backstop.config import DataStore, Level, MediaPool, Task
from backstop.errors import (
    CorruptSaveset,
    SourceError,
    SourceMissing,
    StorageError,
    StorageUnavailable,
)
from backstop.model import (
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
from backstop.settings import Settings
from backstop.workers import manifest as manifests
from backstop.workers.age import Recipient
from backstop.workers.archive import CHUNK, FRAME_BYTES, ArchiveWriter, tar_size
from backstop.workers.catalog import Catalog
from backstop.workers.digest import digest_of
from backstop.workers.jobs import Jobs, Processes
from backstop.workers.jobs import state as handed_state
from backstop.workers.levels import LevelDecision, decide_level
from backstop.workers.media import MediumChoice, choose_medium
from backstop.workers.retention import protected
from backstop.workers.sealing import Keyring, LocalManifests, Sealer, opener, sealed
from backstop.workers.store import ARCHIVE, MANIFEST, META, PathStore, Store
from backstop.workers.streams import StreamFailed, Streams

# Pre-flight allowance for the manifest and metadata, per path and in total.
MANIFEST_BYTES_PER_ENTRY = 160
MANIFEST_BYTES_FIXED = 16 << 10
SLICE_RECORDS = 20_000  # records (manifest rows among them) of a backup's slice at most

log = logging.getLogger(__name__)
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
    from backstop.workers.s3 import S3Store  # boto3 is loaded by the processes that use a bucket

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
        self.keyring = Keyring(settings)
        self.local = LocalManifests(settings.state_dir / "manifests")
        self.jobs = Jobs.of(settings.config.backup_jobs)

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

    def backup(self, request: BackupRequest, progress: Progress | None = None,
               decided: Callable[[LevelDecision], None] | None = None) -> BackupResult:
        """Back up ``request``'s task into its pool. ``decided`` hears the level the run
        runs at as soon as it is known, before anything is read or written (a run that
        fails later has tried that level); ``progress`` hears files and bytes done."""
        now = self.clock()
        saveset_id = request.saveset_id or new_saveset_id(request.task, now)
        existing = self.catalog.get(saveset_id) or self.adopt(
            self.pool(request.media_pool).data_store, saveset_id)
        if existing is not None:  # this run already committed its saveset
            return BackupResult(existing, LevelDecision(request.level, existing.level,
                                                        existing.based_on, "already taken"))
        task = self.task(request.task)
        source = None if task.source is None else self.settings.resolve(task.source)
        decision = decide_level(request.level, self.catalog.level_facts(
            task.name, now, self.store_unavailable), enforce_full=request.enforce_full,
            full_interval=request.full_interval)
        if task.streams and request.level is not Level.FULL:  # every level runs as FULL
            base, why = None, (f"task {task.name} stores the output of commands (streams), "
                               "which has no earlier version to compare with")
            decision = LevelDecision(request.level, Level.FULL, None, why)
        else:
            base, why = self.base_manifest(decision.base)
            if decision.base and base is None:
                decision = LevelDecision(request.level, Level.FULL, None, why)
        if decided is not None:
            decided(decision)
        streams = Streams(task.streams, self.config.data_path.io_timeout.total_seconds(),
                          str(self.settings.base_dir))
        try:
            with nameless_if(bool(self.keyring.recipients(task.name)), source):
                planned = plan(saveset_id, source, task.exclude, base, decision.base,
                               streams)
                saveset, changed = self._write(request, decision, saveset_id, now, planned,
                                               progress, source)
        except BaseException:
            if decision.effective is Level.FULL:
                self.catalog.record_full_attempt(task.name, False, now, request.run_id)
            raise
        if decision.effective is Level.FULL:
            self.catalog.record_full_attempt(task.name, True, now, request.run_id)
        warnings = [f"ran as FULL: {why}"] if base is None and why else []
        if saveset.encrypted and changed:  # no file name of an encrypted saveset outside it
            warnings.append(f"{len(changed)} file(s) changed while they were read; their "
                            "stored copies may mix old and new content")
        else:
            warnings += [f"{path}: changed while it was read; its stored copy may mix old "
                         "and new content" for path in changed]
        return BackupResult(saveset, decision, tuple(warnings))

    def base_manifest(self, base_id: str | None) -> tuple[bytes | None, str]:
        """The base's manifest as written (plaintext), and if there is none, why: from the
        catalog's cache, else this host's own copy (an encrypted base), else its store."""
        if base_id is None:
            return None, ""
        cached = self.catalog.manifest(base_id)
        if cached is not None:
            return cached, ""
        base = self.catalog.get(base_id)
        if base is None or self.store_unavailable(base.data_store):
            return None, f"manifest of base {base_id} unreadable"
        if base.encrypted:
            return self._sealed_base(base)
        with self.stores[base.data_store].read(base.key, MANIFEST) as data:
            return data.read(), ""

    def _sealed_base(self, base: Saveset) -> tuple[bytes | None, str]:
        kept = self.local.get(base.task, base.id)
        if kept is not None:
            return kept, ""
        if not self.keyring.can_open(base.task):
            return None, (f"this host keeps no copy of the manifest of base {base.id} and "
                          "has no identity to read it (a write-only client keeps the one of "
                          "its own last run)")
        with opener(self.stores[base.data_store], base, MANIFEST, self.keyring)(0) as data:
            return data.read(), ""

    def keep_manifest(self, saveset: Saveset, manifest: bytes) -> None:
        """Catalog the saveset; an encrypted one's manifest stays out of the catalog (no
        file names there) and is kept on this host as the base of its next INC/DIFF."""
        if saveset.encrypted:
            self.catalog.add(saveset, b"")
            if saveset.level in (Level.FULL, Level.DIFF, Level.INC):
                self.local.put(saveset.task, saveset.id, manifest,
                               full=saveset.level is Level.FULL)
        else:
            self.catalog.add(saveset, manifest)

    def _write(self, request: BackupRequest, decision: LevelDecision, saveset_id: str,
               now: datetime, planned: Plan, progress: Progress | None,
               source: Path | None) -> tuple[Saveset, list[str]]:
        """Stage, write and commit the saveset; return it, and the files that changed while
        they were read."""
        pool = self.pool(request.media_pool)
        store = self.stores[pool.data_store]
        estimate = (planned.tar_bytes + self._streams_estimate(request.task, planned)
                    + MANIFEST_BYTES_FIXED + MANIFEST_BYTES_PER_ENTRY * planned.entries)
        store.space()  # store_offline before anything else
        choice = self._choose_medium(pool, estimate, now)
        key = SavesetKey(pool.name, choice.label, saveset_id)
        staging = store.stage(key, estimate, choice.room_bytes)
        recipients = self.keyring.recipients(request.task)
        try:
            with staging.open(ARCHIVE) as out:
                written = archive_into(out, recipients, source, planned, progress, self.jobs)
            stored_manifest = sealed(written.manifest, recipients) if recipients else (
                written.manifest)
            with staging.open(MANIFEST) as out:
                out.write(stored_manifest)
            saveset = Saveset(
                id=saveset_id, task=request.task, pool=pool.name, data_store=pool.data_store,
                medium=choice.label, level=decision.effective, run_id=request.run_id,
                created_at=now, files=written.files, bytes=written.bytes,
                based_on=decision.base, needs=tuple(sorted(planned.holders - {saveset_id})),
                archive_bytes=written.archive_bytes, archive_digest=written.archive_digest,
                manifest_bytes=len(stored_manifest),
                manifest_digest=digest_of(stored_manifest),
                recipients=tuple(str(r) for r in recipients))
            with staging.open(META) as out:
                out.write(saveset.dumps().encode())
            staging.commit()
        except BaseException:
            staging.abort()
            raise
        self.keep_manifest(saveset, written.manifest)
        return saveset, written.changed

    def _streams_estimate(self, task: str, planned: Plan) -> int:
        """The streams' size is known only at their end: as large as the task's last
        saveset's files (those of its source included), for the pre-flight."""
        if not planned.streams.by_name:
            return 0
        last = max(self.catalog.all(task), key=attrgetter("created_at"), default=None)
        return 0 if last is None else max(last.bytes - planned.file_bytes, 0)

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
        if source.encrypted:
            return self._copy_sealed(source, copy_id, pool, run_id), b""
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

    def _copy_sealed(self, source: Saveset, copy_id: str, pool: MediaPool,
                     run_id: str | None) -> Saveset:
        """A copy of an encrypted saveset: archive and manifest copied as stored, without
        any key; the copy holds what its manifest says the original holds."""
        with self.stores[source.data_store].read(source.key, MANIFEST) as data:
            stored_manifest = data.read()
        now = self.clock()
        choice = self._choose_medium(pool, source.stored_bytes, now)
        copy = replace(source, id=copy_id, pool=pool.name, data_store=pool.data_store,
                       medium=choice.label, run_id=run_id, created_at=now,
                       migrated_from=source.id, manifest_of=source.manifest_names)
        self._copy_archive(source, copy, stored_manifest, choice.room_bytes)
        return copy

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
# Records of a plan's spool: an entry whose manifest row is final, a file to store, or
# a stream to store (its name).
KEEP, STORE, STREAM = b"K", b"S", b"P"
HERE = b"H"  # a file to store that is a slice of its own: stored by the run's own process
ENTRY_FIELDS = attrgetter(*(f.name for f in fields(Entry)))  # an entry as a plain tuple
ENTRY_SIZE = [f.name for f in fields(Entry)].index("size")


@dataclass
class Plan:
    """What a backup will write, from a walk of the source and its base's manifest, both
    read one entry at a time: every entry in order, spooled compressed in memory (a final
    manifest row, or a file still to store), and what the pre-flight and the saveset's
    record need. Memory stays small whatever the number of files."""

    saveset_id: str
    # the manifest's first rows, final before any file to store (all of a no-change INC's):
    # written straight into the manifest, never spooled
    head: manifests.ManifestWriter = field(init=False)
    spool: bytes = b""
    entries: int = 0
    files: int = 0  # to store
    file_bytes: int = 0
    tar_bytes: int = 2 * 512  # exact size of the tar of the files to store (end blocks)
    holders: set[str] = field(default_factory=set)  # savesets holding kept content
    headers: list[Entry] = field(default_factory=list)  # links, fifos, devices: tar headers
    deleted: list[str] = field(default_factory=list)
    streams: Streams = field(default_factory=lambda: Streams([], 0))

    def __post_init__(self) -> None:
        self.head = manifests.ManifestWriter(self.saveset_id)

    def records(self) -> Iterator[tuple[bytes, bytes]]:
        """(KEEP, manifest row) or (STORE, marshalled entry), in order."""
        reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(self.spool),
                                                            read_across_frames=True)
        data = io.BufferedReader(reader, 1 << 20)
        while head := data.read(5):
            kind, size = head[:1], int.from_bytes(head[1:], "little")
            yield kind, data.read(size)


class BaseOutOfOrder(Exception):
    """A base manifest whose rows are not in walk order (not written by this engine)."""


BaseRow = tuple[str, list[Any], bytes]  # path, row, as stored


def plan(saveset_id: str, source: Path | None, exclude: list[str], base: bytes | None,
         base_id: str | None, streams: Streams | None = None) -> Plan:
    """Walk the source and its base's manifest side by side (both in ``order_key`` order):
    an unchanged file keeps its base's content, a new or changed one is to be stored; the
    streams take their place among the source's top-level names. Rows before the first
    file to store go into the manifest at once; the rest are spooled."""
    streams = streams or Streams([], 0)
    if base is None or base_id is None:
        return _plan(saveset_id, source, exclude, iter(()), streams)
    try:
        return _plan(saveset_id, source, exclude, _base_rows(base, base_id), streams)
    except BaseOutOfOrder:  # a manifest not written in walk order: sort it, in memory
        held = sorted(((row[1], row, line) for row, line in manifests.rows(base, base_id)),
                      key=lambda r: manifests.order_key(r[0]))
        return _plan(saveset_id, source, exclude, iter(held), streams)


def _walk_with(source: Path | None, exclude: list[str], linked: set[str], streams: Streams
               ) -> Iterator[manifests.Found | str]:
    """What the walk of the source finds, with the streams' names (files at the top) in
    their places of walk order; SourceError for a stream named like a path of the source."""
    walked: Iterator[manifests.Found | str] = (
        manifests.found(source, exclude, linked) if source is not None else iter(()))
    last = ""
    for item in heapq.merge(walked, streams.names(),
                            key=lambda i: manifests.order_key(_path_of(i))):
        path = _path_of(item)
        if path == last:
            raise SourceError(f"stream {path} has the name of a path of source {source}; "
                              "rename the stream or exclude the path")
        last = path
        yield item


def _path_of(item: manifests.Found | str) -> str:
    return item if isinstance(item, str) else item[0]


def _base_rows(base: bytes, base_id: str) -> Iterator[BaseRow]:
    """The base's rows, checked to be in walk order as they come (a row's key is made only
    where its directory differs from the row before's)."""
    last_parent: str | None = None
    last_parts: tuple[str, ...] = ()
    last_name = ""
    for row, line in manifests.rows(base, base_id):
        path = row[1]
        parent, _, name = path.rpartition("/")
        if parent != last_parent:
            parts = tuple(parent.split("/")) if parent else ()
            if last_parent is not None and parts <= last_parts:
                raise BaseOutOfOrder(path)
            last_parent, last_parts = parent, parts
        elif name <= last_name:
            raise BaseOutOfOrder(path)
        last_name = name
        yield path, row, line


def _walks_before(path: str, other: str) -> bool:
    """``path`` comes before ``other`` in walk order."""
    return manifests.order_key(path) < manifests.order_key(other)


class _Spool:
    """Where a plan's records go: rows straight into the manifest until the first file to
    store, then every record, in order, into the compressed spool."""

    def __init__(self, head: manifests.ManifestWriter) -> None:
        self.head, self.storing = head, False
        self.out = io.BytesIO()
        self.spool = manifests.BatchedWriter(zstandard.ZstdCompressor(level=1), self.out)

    def keep(self, line: bytes) -> None:
        if self.storing:
            self.spool.write(KEEP + len(line).to_bytes(4, "little") + line)
        else:
            self.head.add_row(line)

    def store(self, record: bytes, kind: bytes = STORE) -> None:
        self.storing = True
        self.spool.write(kind + len(record).to_bytes(4, "little") + record)

    def finish(self) -> bytes:
        self.spool.finish()
        return self.out.getvalue()


def _plan(saveset_id: str, source: Path | None, exclude: list[str], base: Iterator[BaseRow],
          streams: Streams) -> Plan:
    planned = Plan(saveset_id, streams=streams)
    linked: set[str] = set()  # first names of files with several
    stored_linked: set[str] = set()
    spool = _Spool(planned.head)
    before = next(base, None)
    for seen in _walk_with(source, exclude, linked, streams):
        planned.entries += 1
        if isinstance(seen, str):  # a stream: its size is known once it is stored
            spool.store(seen.encode(), STREAM)
            planned.files += 1
            continue
        path = seen[0]
        while before is not None and before[0] != path and _walks_before(before[0], path):
            planned.deleted.append(before[0])
            before = next(base, None)
        same = before[1:] if before is not None and before[0] == path else None
        if same is not None:
            before = next(base, None)
            if manifests.kept_as_is(seen, same[0]):  # the common case of an INC: no entry
                planned.holders.add(same[0][7])
                spool.keep(same[1])
                continue
        entry = manifests.entry_of_found(seen)
        if entry.kind == FILE and (same is None or not manifests.unchanged(entry, same[0])):
            spool.store(marshal.dumps(ENTRY_FIELDS(entry)))
            planned.files += 1
            planned.file_bytes += entry.size
            planned.tar_bytes += tar_size([entry.size]) - 2 * 512
            if entry.path in linked:
                stored_linked.add(entry.path)
            continue
        spool.keep(_final_row(entry, same[0] if same is not None else None, planned))
    while before is not None:
        planned.deleted.append(before[0])
        before = next(base, None)
    planned.spool = spool.finish()
    planned.headers = [e for e in planned.headers
                       if e.kind != HARDLINK or e.target in stored_linked]
    return planned


def _final_row(entry: Entry, older: list[Any] | None, planned: Plan) -> bytes:
    """The row of an entry whose content is not stored again: a file unchanged since an
    older row keeps that row's content; a link, fifo or device gets a tar header too."""
    if entry.kind == FILE and older is not None:
        planned.holders.add(older[7])
        return manifests.row_of(replace(
            entry, digest=older[6], holder=older[7],
            frame=older[16] if len(older) == 18 else -1,
            skip=older[17] if len(older) == 18 else 0))
    if entry.kind in HEADER_ONLY:
        planned.headers.append(entry)
    return manifests.row_of(entry)


@dataclass
class Written:
    manifest: bytes
    files: int
    bytes: int
    archive_bytes: int
    archive_digest: str
    changed: list[str]  # files that changed while they were read


class _Rows:
    """The manifest's rows in order: a stored file's row waits until the frame its member
    starts in is written (its offset is known then), and the rows after it with it."""

    def __init__(self, writer: ArchiveWriter, planned: Plan, progress: Progress | None) -> None:
        self.writer, self.planned, self.progress = writer, planned, progress
        self.saveset_id = planned.saveset_id
        self.manifest = planned.head  # its first rows are in already
        # rows, and stored files' row heads with where their members start (frame number,
        # offset in it)
        self.waiting: deque[bytes | tuple[bytes, int, int]] = deque()
        self.files = self.bytes = 0  # stored so far

    def keep(self, row: bytes) -> None:
        if self.waiting:
            self.waiting.append(row)
            self.emit()
        else:  # no stored file's row before it: at once
            self.manifest.add_row(row)

    def stream(self, record: bytes) -> None:
        """The stream of ``record``, read into the archive where it stands, and its row."""
        entry = Streams.entry(record.decode())
        stored = self.planned.streams.store(self.writer, entry.path)
        self.stored(entry, stored.size, stored.digest, stored.stat, *stored.at)

    def stored(self, entry: Entry, size: int, digest: str, st: os.stat_result, frame: int,
               skip: int) -> None:
        self.stored_head(manifests.stored_head(entry, size, digest, st, self.saveset_id), size,
                         frame, skip)

    def stored_head(self, head: bytes, size: int, frame: int, skip: int) -> None:
        """A stored file's row but for where its member lies (``manifests.stored_head``)."""
        self.waiting.append((head, frame, skip))
        self.emit()
        self.files += 1
        self.bytes += size
        if self.progress is not None:
            self.progress(self.files, self.bytes, self.planned.files, self.planned.file_bytes)

    def emit(self, everything: bool = False) -> None:
        waiting, writer = self.waiting, self.writer
        while waiting:
            head = waiting[0]
            if isinstance(head, bytes):
                self.manifest.add_row(head)
            elif everything or head[1] < writer.frames_written():
                row, frame, skip = head
                self.manifest.add_row(row + manifests.stored_tail(writer.frame_offset(frame),
                                                                  skip))
            else:
                return
            waiting.popleft()


@contextmanager
def nameless_if(encrypted: bool, source: Path | None) -> Iterator[None]:
    """Keep the names of an encrypted task's files out of its run record: a source error
    names the source only, and the file it met goes to this host's log."""
    try:
        yield
    except (SourceMissing, StreamFailed):
        raise  # names the source alone, or a stream the config names
    except SourceError as exc:
        if not encrypted:
            raise
        log.warning("encrypted task's source %s: %s", source, exc)
        raise SourceError(f"a file under {source} could not be read (an encrypted task's "
                          "file names stay out of the run record; this host's worker log "
                          "names it)") from None


def archive_into(out: BinaryIO, recipients: list[Recipient], source: Path | None,
                 planned: Plan, progress: Progress | None, jobs: Jobs) -> Written:
    """The archive of ``planned`` into ``out``, sealed to ``recipients`` where there are any
    (its bytes and digest are then those of the stored ciphertext); its files read, hashed
    and compressed by ``jobs``' processes."""
    sealer = Sealer(out, recipients) if recipients else None
    parallel = jobs.processes > 1 and planned.tar_bytes >= jobs.backup_from_bytes
    # one process: this one, on one core (each frame compressed as it is cut); a small
    # backup: here, its frames compressed on a thread per process it could have had
    threads = 0 if jobs.processes == 1 else jobs.processes
    with ArchiveWriter(cast(BinaryIO, sealer or out), threads) as writer:
        written = (archive_sliced(writer, source, planned, progress, jobs) if parallel
                   else archive_files(writer, source, planned, progress))
    if sealer is None:
        return written
    stored, digest = sealer.close()
    return replace(written, archive_bytes=stored, archive_digest=digest)


def archive_files(writer: ArchiveWriter, source: Path | None, planned: Plan,
                  progress: Progress | None) -> Written:
    """Stream each file to store into the archive, and every row into the manifest, in
    order (rows wait for at most the files of the few frames still compressing)."""
    rows = _Rows(writer, planned, progress)
    root = str(source)
    for kind, record in planned.records():
        if kind == KEEP:
            rows.keep(record)
        elif kind == STREAM:
            rows.stream(record)
        else:
            entry = Entry(*marshal.loads(record))
            size, digest, st, (frame, skip) = writer.add(entry.path,
                                                         os.path.join(root, entry.path))
            rows.stored(entry, size, digest, st, frame, skip)
    return _finish(writer, rows, planned)


def _finish(writer: ArchiveWriter, rows: _Rows, planned: Plan) -> Written:
    """The tar headers of links, fifos and devices, the tar's end; the manifest's last rows."""
    for entry in planned.headers:  # for tar -x alone: links, fifos, devices
        writer.add_header(entry)
    archive_bytes, archive_digest = writer.close()
    rows.emit(everything=True)
    for path in planned.deleted:
        rows.manifest.delete(path)
    return Written(rows.manifest.finish(), rows.files, rows.bytes, archive_bytes,
                   archive_digest, writer.changed)


Slice = list[tuple[bytes, bytes]]  # (kind, record) of a plan, in order
Stored = tuple[int, bytes, int, int]  # a file's size, row head, frame and offset in it
SliceDone = tuple[int, list[int], list[Stored], list[str]]  # what _store_slice returns


def archive_sliced(writer: ArchiveWriter, source: Path | None, planned: Plan,
                   progress: Progress | None, jobs: Jobs) -> Written:
    """As ``archive_files``, the files read, hashed, put in tar members and compressed by
    ``jobs``' processes: the plan's records are cut into slices of about ``slice_bytes`` of
    files, each stored by a process into frames of its own (the last one short) in a slot
    of memory shared with this process, which appends them to the archive in order (the tar
    stays one stream: a slice holds whole members) with their rows. A stream, or a file of
    a slice's size or more, is read here, between two slices, its frames compressed on a
    thread per process."""
    rows = _Rows(writer, planned, progress)
    slots = _Slots(2 * jobs.processes, 2 * jobs.slice_bytes + jobs.slice_bytes // 64 + CHUNK)
    # each process's frame buffer: made once, filled again for each of its slices
    frame = bytearray(FRAME_BYTES)
    handed = (os.path.join(str(source), ""), slots, frame, planned.saveset_id)
    with slots, Processes(jobs.processes, handed, "backup") as processes:
        slices = _Slices(writer, rows, processes, slots)
        for piece in _slices(planned, jobs.slice_bytes):
            slices.add(piece, os.path.join(str(source), ""))
        slices.append_done(keep=0)
    return _finish(writer, rows, planned)


class _Slots:
    """Memory shared with the engine's processes (an anonymous shared mapping, which they
    inherit): one slot for each slice on its way, where its process writes its frames."""

    def __init__(self, count: int, size: int) -> None:
        self.size = size
        self.memory = mmap.mmap(-1, count * size)
        self.free = deque(range(count))

    def __enter__(self) -> _Slots:
        return self

    def __exit__(self, *exc: object) -> None:
        self.memory.close()

    def view(self, slot: int, length: int) -> memoryview:
        return memoryview(self.memory)[slot * self.size:slot * self.size + length]


class _SlotWriter:
    """A file-like writer into one slot (in one of the engine's processes)."""

    def __init__(self, slots: _Slots, slot: int) -> None:
        self.slots, self.start, self.length = slots, slot * slots.size, 0

    def write(self, data: bytes | memoryview) -> int:
        if self.length + len(data) > self.slots.size:  # bounded by the slice's size: a bug
            raise RuntimeError(f"a slice's frames outgrew their slot ({self.slots.size} bytes)")
        at = self.start + self.length
        self.slots.memory[at:at + len(data)] = data
        self.length += len(data)
        return len(data)

    def flush(self) -> None:
        pass


class _Slices:
    """The slices on their way, appended to the archive in order as they are done."""

    def __init__(self, writer: ArchiveWriter, rows: _Rows, processes: Processes,
                 slots: _Slots) -> None:
        self.writer, self.rows, self.processes, self.slots = writer, rows, processes, slots
        self.waiting: deque[tuple[Slice, int, Future[SliceDone] | None]] = deque()

    def add(self, piece: Slice, root: str) -> None:
        kind, record = piece[0]
        if kind in (STREAM, HERE):  # where it lies in the tar: after the slices before
            self.append_done(keep=0)
            if kind == STREAM:
                self.rows.stream(record)
            else:
                entry = Entry(*marshal.loads(record))
                size, digest, st, (frame, skip) = self.writer.add(entry.path, root + entry.path)
                self.rows.stored(entry, size, digest, st, frame, skip)
            return
        to_store = [record for kind, record in piece if kind == STORE]
        if not to_store:  # rows alone
            self.waiting.append((piece, -1, None))
            return
        while not self.slots.free:
            self.append_done(keep=len(self.waiting) - 1)
        slot = self.slots.free.popleft()
        self.waiting.append((piece, slot, self.processes.submit(_store_slice, slot, to_store)))
        self.append_done(keep=len(self.waiting))  # what is done already

    def append_done(self, keep: int) -> None:
        """Append the oldest slices while they are done, or more than ``keep`` wait."""
        waiting = self.waiting
        while waiting and (len(waiting) > keep or waiting[0][2] is None
                           or waiting[0][2].done()):
            piece, slot, future = waiting.popleft()
            self._append(piece, slot, None if future is None else self.processes.result(future))

    def _append(self, piece: Slice, slot: int, done: SliceDone | None) -> None:
        first, stored = 0, cast(Iterator[Stored], iter(()))
        if done is not None:
            length, offsets, files, changed = done
            with self.slots.view(slot, length) as frames:
                first = self.writer.stream.append(frames, offsets)
            self.slots.free.append(slot)
            self.writer.changed.extend(changed)
            stored = iter(files)
        for kind, record in piece:
            if kind == KEEP:
                self.rows.keep(record)
                continue
            size, head, frame, skip = next(stored)
            self.rows.stored_head(head, size, first + frame, skip)


def _slices(planned: Plan, slice_bytes: int) -> Iterator[Slice]:
    """The plan's records in slices: about ``slice_bytes`` of files to store each (with
    the rows between them); a stream alone, and a file of ``slice_bytes`` or more alone,
    as HERE."""
    piece: Slice = []
    size = 0
    for kind, record in planned.records():
        if kind == STORE:
            member = tar_size([marshal.loads(record)[ENTRY_SIZE]]) - 2 * 512
            if member >= slice_bytes:
                kind = HERE
            else:
                size += member
        if kind in (STREAM, HERE):
            if piece:
                yield piece
            yield [(kind, record)]
            piece, size = [], 0
            continue
        piece.append((kind, record))
        if size >= slice_bytes or len(piece) >= SLICE_RECORDS:
            yield piece
            piece, size = [], 0
    if piece:
        yield piece


def _store_slice(slot: int, records: list[bytes]) -> SliceDone:
    """In one of the engine's processes: the files of ``records`` as tar members in frames
    of their own, into ``slot``; the frames' length, each one's offset, of each file its
    size, its row's head and where its member starts (frame, offset in it), and the files
    that changed while they were read."""
    root, slots, frame, saveset_id = handed_state()
    out = _SlotWriter(slots, slot)
    writer = ArchiveWriter(cast(BinaryIO, out), 0, hashed=False, frame=frame)
    stored = []
    for record in records:
        entry = Entry(*marshal.loads(record))
        size, digest, st, (at, skip) = writer.add(entry.path, root + entry.path)
        stored.append((size, manifests.stored_head(entry, size, digest, st, saveset_id), at,
                       skip))
    offsets = writer.close_slice()
    return out.length, offsets, stored, writer.changed
