"""The data store interface, and the ``path`` store: a directory on the RDS.

A store holds savesets as directories of parts (archive, manifest, metadata). A write is
staged under a hidden name, fsynced and renamed into place, so a listing, restore or purge
only ever sees committed savesets. Every OS error of a store operation becomes
``StorageUnavailable`` with the reason of SPEC section 3.

Layout of a path store::

    .backstop-store.json                 marker: names the store (a wrong disk is caught)
    .backstop-lock                       flock, held while space is checked or claimed
    pools/<pool>/<MEDIUM>/<id>/          a committed saveset
    pools/<pool>/<MEDIUM>/.partial-<id>/ a write in progress (flock on its .lock)
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import secrets
import shutil
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from backstop.errors import Reason, SavesetMissing, StorageError, StorageUnavailable
from backstop.model import SavesetKey, Space

# The parts of a saveset: its archive, its manifest and its record (written last).
ARCHIVE, MANIFEST, META = "archive.tar.zst", "manifest.jsonl.zst", "saveset.json"
MARKER = ".backstop-store.json"
STORE_LOCK = ".backstop-lock"
PARTIAL = ".partial-"
DELETING = ".deleting-"
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


def unavailable(store: str, exc: OSError, doing: str) -> StorageUnavailable:
    """The StorageUnavailable an OS error of a store operation means."""
    reason = Reason.OUT_OF_SPACE if exc.errno in _FULL_ERRNOS else Reason.STORE_OFFLINE
    return StorageUnavailable(reason, f"data store {store}: {doing}: {exc.strerror or exc}")


class Staging(ABC):
    """A saveset being written; invisible until ``commit``, gone after ``abort``."""

    @abstractmethod
    def open(self, part: str) -> BinaryIO:
        """A new part to write; writes raise StorageUnavailable when the store cannot take more."""

    @abstractmethod
    def commit(self) -> None:
        """Make the saveset visible, durably; it is then listed, readable and deletable."""

    @abstractmethod
    def abort(self) -> None:
        """Remove everything written; safe to call after a failed commit or twice."""


class Store(ABC):
    """What the engine needs of a data store; every implementation passes tests/unit/stores."""

    name: str

    @abstractmethod
    def space(self) -> Space:
        """Used and free bytes; StorageUnavailable(store_offline) when the store is unusable."""

    @abstractmethod
    def stage(self, key: SavesetKey, reserve_bytes: int, room_bytes: int | None = None) -> Staging:
        """Claim ``reserve_bytes`` for a new saveset (pre-flight).

        Raises StorageUnavailable(out_of_space) when the store has less free; the staging
        then refuses to grow past the free space seen here, and past ``room_bytes`` (the
        room left on the medium) with ``no_free_media``.
        """

    @abstractmethod
    def list(self) -> list[SavesetKey]:
        """Every committed saveset."""

    @abstractmethod
    def find(self, saveset_id: str) -> SavesetKey | None:
        """Where a committed saveset is, by id; None when it is not in this store."""

    @abstractmethod
    def read(self, key: SavesetKey, part: str, offset: int = 0) -> BinaryIO:
        """A committed part, from byte ``offset`` on; SavesetMissing when the saveset is
        not there."""

    @abstractmethod
    def delete(self, key: SavesetKey) -> None:
        """Remove a committed saveset; it is never seen half-deleted."""

    def close(self) -> None:  # noqa: B027 - most stores hold nothing open
        """Let go of what the store holds open (connections)."""

    def part_size(self, key: SavesetKey, part: str) -> int:
        """The bytes of a committed part (read through; stores override it)."""
        with self.read(key, part) as data:
            return sum(len(chunk) for chunk in iter(lambda: data.read(1 << 20), b""))

    def drop_abandoned(self) -> None:  # noqa: B027 - a store reached remotely drops its own
        """Remove what writes killed midway left behind."""

    def init(self) -> None:
        """Create the store (``backstop store init``)."""
        raise StorageError(f"data store {self.name} cannot be created from this host")


def _libc_sync_file_range() -> Any:
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):  # not Linux: the fsync at commit does it all
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return function


_sync_file_range = _libc_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2
WRITEBACK_BYTES = 32 << 20


class _LimitedWriter:
    """A part's file: counts bytes against the staging's limits, maps OS errors.

    Every ``WRITEBACK_BYTES`` it asks the kernel to start writing what it has written so far
    to the disk (``sync_file_range``, as PostgreSQL's ``*_flush_after`` settings do): the
    disk writes while the rest is read and compressed, and the fsync at commit, which makes
    the part durable, has little left to wait for."""

    def __init__(self, staging: PathStaging, path: Path) -> None:
        self.staging = staging
        self.file = open(path, "xb")  # noqa: SIM115 - closed in close()
        self.written = self.flushed = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.staging.account(len(data))
        try:
            done = self.file.write(data)
            self.written += done
            if self.written - self.flushed >= WRITEBACK_BYTES:
                self._start_writeback()
            return done
        except OSError as exc:
            raise unavailable(self.staging.store.name, exc, "write") from exc

    def _start_writeback(self) -> None:
        self.file.flush()
        if _sync_file_range is not None:  # a failure here shows again in fsync: ignore it
            _sync_file_range(self.file.fileno(), self.flushed, self.written - self.flushed,
                             _SYNC_FILE_RANGE_WRITE)
        self.flushed = self.written

    def flush(self) -> None:
        try:
            self.file.flush()
        except OSError as exc:
            raise unavailable(self.staging.store.name, exc, "write") from exc

    def close(self) -> None:
        if self.file.closed:
            return
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
        except OSError as exc:
            raise unavailable(self.staging.store.name, exc, "write") from exc
        finally:
            self.file.close()

    def __enter__(self) -> _LimitedWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PathStaging(Staging):
    def __init__(self, store: PathStore, key: SavesetKey, limit_bytes: int,
                 room_bytes: int | None) -> None:
        self.store = store
        self.key = key
        self.final = store.saveset_dir(key)
        self.dir = self.final.with_name(PARTIAL + key.saveset_id)
        self.limit_bytes = limit_bytes
        self.room_bytes = room_bytes
        self.written = 0
        self.writers: list[_LimitedWriter] = []
        self.lock_fd: int | None = None

    def account(self, size: int) -> None:
        self.written += size
        if self.room_bytes is not None and self.written > self.room_bytes:
            raise StorageUnavailable(Reason.NO_FREE_MEDIA, f"medium {self.key.medium} of pool "
                                     f"{self.key.pool} is full ({self.room_bytes} bytes left)")
        if self.written > self.limit_bytes:
            raise StorageUnavailable(Reason.OUT_OF_SPACE, f"data store {self.store.name}: quota or "
                                     f"free space crossed mid-write ({self.limit_bytes} bytes)")

    def open(self, part: str) -> BinaryIO:
        writer = _LimitedWriter(self, self.dir / part)
        self.writers.append(writer)
        return writer  # type: ignore[return-value]

    def commit(self) -> None:
        try:
            for writer in self.writers:
                writer.close()
            with self.store.locked():
                for name in (".lock", ".reserve"):
                    (self.dir / name).unlink(missing_ok=True)
                fsync_dir(self.dir)
                os.rename(self.dir, self.final)
                fsync_dir(self.final.parent)
        except OSError as exc:
            raise unavailable(self.store.name, exc, "commit") from exc
        finally:
            self._unlock()

    def abort(self) -> None:
        for writer in self.writers:
            with suppress(OSError, StorageUnavailable):
                writer.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        self._unlock()

    def _unlock(self) -> None:
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PathStore(Store):
    """A directory with a marker naming the store, an optional quota and a reserve."""

    def __init__(self, name: str, root: Path, capacity_bytes: int | None = None,
                 reserve_bytes: int = 0) -> None:
        self.name = name
        self.root = root
        self.capacity_bytes = capacity_bytes
        self.reserve_bytes = reserve_bytes
        self._sizes: dict[str, int] = {}  # committed saveset directory -> bytes

    def saveset_dir(self, key: SavesetKey) -> Path:
        return self.root / "pools" / key.pool / key.medium / key.saveset_id

    def init(self) -> None:
        """Create the store: an empty (or missing) directory gets its marker."""
        if self.root.exists() and any(self.root.iterdir()):
            if (self.root / MARKER).exists():
                return
            raise StorageUnavailable(Reason.STORE_OFFLINE, f"data store {self.name}: {self.root} "
                                     "is not empty and has no store marker; not claiming it")
        self.root.mkdir(parents=True, exist_ok=True)
        marker = {"store": self.name, "created_at": datetime.now(UTC).isoformat()}
        (self.root / MARKER).write_text(json.dumps(marker) + "\n")
        fsync_dir(self.root)

    def check(self) -> None:
        """StorageUnavailable(store_offline) unless the store is there, ours and writable.

        Never creates anything: a store that went away is offline, not new.
        """
        problem = self._problem()
        if problem:
            raise StorageUnavailable(Reason.STORE_OFFLINE, f"data store {self.name}: {problem}")

    def _problem(self) -> str | None:
        if not self.root.exists():
            return f"directory {self.root} is missing"
        if not self.root.is_dir():
            return f"{self.root} is not a directory"
        return self._marker_problem() or self._write_problem()

    def _marker_problem(self) -> str | None:
        try:
            marker = json.loads((self.root / MARKER).read_text())
        except FileNotFoundError:
            return f"store marker {MARKER} is missing in {self.root} (wrong disk mounted?)"
        except (OSError, ValueError) as exc:
            return f"store marker unreadable: {exc}"
        if not isinstance(marker, dict) or marker.get("store") != self.name:
            found = marker.get("store") if isinstance(marker, dict) else None
            return f"store marker in {self.root} names {found!r} (wrong disk mounted?)"
        return None

    def _write_problem(self) -> str | None:
        probe = self.root / f".probe-{os.getpid()}-{secrets.token_hex(4)}"  # one per call
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            return f"not writable: {exc.strerror or exc}"
        return None

    @contextmanager
    def locked(self) -> Iterator[None]:
        fd = os.open(self.root / STORE_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def space(self) -> Space:
        self.check()
        try:
            used, claimed = self._usage()
            stat = os.statvfs(self.root)
        except OSError as exc:
            raise unavailable(self.name, exc, "measure space") from exc
        free = stat.f_bavail * stat.f_frsize - claimed - self.reserve_bytes
        if self.capacity_bytes is not None:
            free = min(free, self.capacity_bytes - self.reserve_bytes - used)
        return Space(used_bytes=used, free_bytes=max(0, free))

    def _usage(self) -> tuple[int, int]:
        """Bytes used (committed + claimed by live writes), and claimed but not yet written.

        Other processes commit, abort and delete while this looks, so an entry may vanish
        under it: that is not an error. A committed saveset never changes, so its size is
        measured once per process.
        """
        used = claimed = 0
        seen: set[str] = set()
        for medium in self._media_dirs():
            for entry in _scandir(medium):
                if entry.name.startswith(PARTIAL):
                    written, claim = _dir_bytes(entry.path), _claim_of(entry.path)
                    claimed += max(0, claim - written)
                    used += max(written, claim)
                elif not entry.name.startswith("."):
                    seen.add(entry.path)
                    if entry.path not in self._sizes:
                        self._sizes[entry.path] = _dir_bytes(entry.path)
                    used += self._sizes[entry.path]
        self._sizes = {path: size for path, size in self._sizes.items() if path in seen}
        return used, claimed

    def stage(self, key: SavesetKey, reserve_bytes: int, room_bytes: int | None = None) -> Staging:
        self.check()
        try:
            with self.locked():
                self._drop_abandoned()
                space = self.space()
                if reserve_bytes > space.free_bytes:
                    raise StorageUnavailable(
                        Reason.OUT_OF_SPACE, f"data store {self.name} has {space.free_bytes} bytes "
                                        f"free, the run needs about {reserve_bytes}")
                staging = PathStaging(self, key, space.free_bytes, room_bytes)
                staging.dir.mkdir(parents=True)
                staging.lock_fd = os.open(staging.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
                fcntl.flock(staging.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                (staging.dir / ".reserve").write_text(str(reserve_bytes))
                return staging
        except OSError as exc:
            raise unavailable(self.name, exc, "stage a saveset") from exc

    def drop_abandoned(self) -> None:
        """Remove what writes and deletes whose process died left (at start-up)."""
        self.check()
        with self.locked():
            self._drop_abandoned()

    def staged_part(self, key: SavesetKey, part: str) -> Path:
        """Where a part of a saveset being staged is written."""
        return self.saveset_dir(key).with_name(PARTIAL + key.saveset_id) / part

    def _drop_abandoned(self) -> None:
        """Remove writes and deletes whose process died (their lock is free); under the lock."""
        for medium in self._media_dirs():
            for entry in medium.iterdir():
                if entry.name.startswith(DELETING) or (
                        entry.name.startswith(PARTIAL) and not _held(entry / ".lock")):
                    shutil.rmtree(entry, ignore_errors=True)

    def _media_dirs(self) -> list[Path]:
        return [Path(m.path) for p in _scandir(self.root / "pools") if p.is_dir()
                for m in _scandir(Path(p.path)) if m.is_dir()]

    def list(self) -> list[SavesetKey]:
        self.check()
        try:
            return sorted(SavesetKey(m.parent.name, m.name, s.name)
                          for m in self._media_dirs() for s in m.iterdir()
                          if not s.name.startswith(".") and (s / META).exists())
        except OSError as exc:
            raise unavailable(self.name, exc, "list savesets") from exc

    def find(self, saveset_id: str) -> SavesetKey | None:
        self.check()
        for medium in self._media_dirs():
            if (medium / saveset_id / "saveset.json").exists():
                return SavesetKey(medium.parent.name, medium.name, saveset_id)
        return None

    def read(self, key: SavesetKey, part: str, offset: int = 0) -> BinaryIO:
        self.check()
        try:
            data = open(self.saveset_dir(key) / part, "rb")  # noqa: SIM115 - the caller closes it
            data.seek(offset)
            return data
        except FileNotFoundError:
            raise SavesetMissing(self.name, key.saveset_id) from None
        except OSError as exc:
            raise unavailable(self.name, exc, "read") from exc

    def part_size(self, key: SavesetKey, part: str) -> int:
        self.check()
        try:
            return (self.saveset_dir(key) / part).stat().st_size
        except FileNotFoundError:
            raise SavesetMissing(self.name, key.saveset_id) from None
        except OSError as exc:
            raise unavailable(self.name, exc, "read") from exc

    def delete(self, key: SavesetKey) -> None:
        self.check()
        final = self.saveset_dir(key)
        doomed = final.with_name(DELETING + key.saveset_id)
        try:
            with self.locked():
                if not final.exists():
                    return
                os.rename(final, doomed)
                fsync_dir(final.parent)
            remove_tree(doomed)
        except OSError as exc:
            raise unavailable(self.name, exc, "delete") from exc


def remove_tree(path: Path) -> None:
    """Remove ``path``; parts that another process removed meanwhile are not an error."""

    def gone_already(function: Any, target: str, exc_info: Any) -> None:
        if not isinstance(exc_info[1], FileNotFoundError):
            raise exc_info[1]

    shutil.rmtree(path, onerror=gone_already)


def _scandir(path: Path | str) -> list[os.DirEntry[str]]:
    """The entries of a directory; none if it is gone (another process removed it)."""
    try:
        with os.scandir(path) as it:
            return list(it)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _dir_bytes(path: str) -> int:
    total = 0
    for entry in _scandir(path):
        with suppress(FileNotFoundError):
            total += entry.stat(follow_symlinks=False).st_size
    return total


def _claim_of(path: str) -> int:
    try:
        return int((Path(path) / ".reserve").read_text() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def _held(lock: Path) -> bool:
    """True when a live process holds this flock."""
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
