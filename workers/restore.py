"""Restore and verify savesets.

Restore rebuilds the source as it was when a saveset was taken: its manifest lists every
path and which saveset holds each file's content, so each archive of the chain is read once.
Everything is first written into a hidden directory inside the target and checked against
the manifest's hashes; only a complete, verified restore is moved into place, so a damaged
saveset is reported, never half restored. Nothing is ever written outside the target:
unsafe paths are refused, files are created without following links, symlinks come last,
and existing links in the target are replaced, never followed.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import shutil
import stat
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

import pathspec

from backstop.errors import CorruptSaveset, RestoreRefused
from backstop.model import (
    BLOCK_DEVICE,
    CHAR_DEVICE,
    DIR,
    FIFO,
    FILE,
    HARDLINK,
    SYMLINK,
    Entry,
    Manifest,
    Saveset,
)
from backstop.workers import manifest as manifests
from backstop.workers.archive import (
    CHUNK,
    SparseContent,
    corruption_of,
    hash_zeros,
    read_located,
    read_members,
)
from backstop.workers.catalog import Catalog
from backstop.workers.digest import digest_of, new_digest
from backstop.workers.engine import Progress
from backstop.workers.jobs import Jobs, Processes
from backstop.workers.jobs import state as handed_state
from backstop.workers.sealing import Hashed, Keyring, opener
from backstop.workers.store import ARCHIVE, MANIFEST, Store


@dataclass(frozen=True)
class RestoreResult:
    saveset: str
    files: int
    bytes: int
    target: str
    # what could not be given back as it was (e.g. owners, when not restoring as root)
    warnings: list[str] = field(default_factory=list)
    # files of an encrypted saveset whose ciphertext did not authenticate: not restored
    damaged: list[str] = field(default_factory=list)


@dataclass
class VerifyResult:
    saveset: str
    ok: bool = True
    files: int = 0
    bad: list[str] = field(default_factory=list)
    # "files": every stored file against its hash; "ciphertext": an encrypted saveset's
    # stored bytes against the hashes recorded at commit (no identity here)
    checked: str = "files"


def safe_relpath(path: str, saveset_id: str) -> str:
    """A path that stays inside the target (relative, no ``..``, no empty or ``.`` part),
    or RestoreRefused."""
    if (not path or "\0" in path or path.startswith("/")
            or any(part in ("", ".", "..") for part in path.split("/"))):
        raise RestoreRefused(saveset_id, f"path {path!r} would land outside the target")
    return path


def selected(manifest: Manifest, patterns: list[str]) -> Manifest:
    """The part of ``manifest`` that ``patterns`` match, with the directories above it; a
    hard link whose file is left out becomes a file of that content."""
    spec = pathspec.GitIgnoreSpec.from_lines(patterns)
    kept = {p: e for p, e in manifest.entries.items()
            if spec.match_file(p + "/" if e.kind == DIR else p)}
    for path in list(kept):
        for parent in parents_of(path):
            if parent in manifest.entries:
                kept.setdefault(parent, manifest.entries[parent])
    for path, entry in kept.items():
        if entry.kind == HARDLINK and entry.target not in kept:
            content = manifest.entries[entry.target]
            kept[path] = replace(content, path=path, target=entry.target)
    return Manifest(manifest.saveset_id, kept)


def total_of(files: list[Entry]) -> tuple[int, int]:
    return len(files), sum(e.size for e in files)


class Scan:
    """A manifest too big to hold in memory (more than ``restore_chunk`` paths), read one
    row at a time: twice before anything is written, for the checks of ``check_paths``
    and what ``selected`` keeps, then chunk by chunk (``chunks``). What it keeps is small
    next to the paths: the directories, the paths that have paths under them, the hard
    links with their files, and the savesets holding the contents."""

    def __init__(self, raw: bytes, saveset_id: str, include: list[str] | None) -> None:
        self.raw, self.saveset_id = raw, saveset_id
        self.spec = pathspec.GitIgnoreSpec.from_lines(include) if include else None
        self.above: set[str] = set()  # every path with a path under it
        self.links: dict[str, str] = {}  # hard link -> the path its content is stored under
        self.dirs = self._first_read()
        self.linked: dict[str, Entry] = {}  # the entries of the hard links' files
        self.holders: set[str] = set()  # the savesets holding what the restore writes
        self.total = self._second_read()

    def _first_read(self) -> dict[str, Entry]:
        """Every path checked to stay inside; the paths above others; hard links; the
        directories the restore makes (with include: those it keeps, and those above)."""
        dirs: dict[str, Entry] = {}
        kept_above: set[str] = set()
        for row, _ in manifests.rows(self.raw, self.saveset_id):
            kind, path = row[0], safe_relpath(row[1], self.saveset_id)
            _add_parents(path, self.above)
            if kind == DIR:
                dirs[path] = manifests.entry_of(row, self.saveset_id)
            elif kind == HARDLINK:
                self.links[path] = safe_relpath(str(row[8]), self.saveset_id)
            if self.spec is not None and self.kept(path, kind):
                _add_parents(path, kept_above)
        return {p: e for p, e in dirs.items() if self.kept(p, DIR) or p in kept_above}

    def _second_read(self) -> tuple[int, int]:
        """No path under a file or a symlink; every hard link's file is a file of the
        saveset; the files and bytes the restore writes, and their holders."""
        files = size = 0
        targets = set(self.links.values())
        for entry in self.entries():
            if entry.kind != DIR and entry.path in self.above:
                raise RestoreRefused(self.saveset_id, f"a path lies under {entry.path!r}, "
                                     "which is not a directory")
            if entry.path in targets:
                self.linked[entry.path] = entry
            if entry.kind == FILE and self.kept(entry.path, FILE):
                self.holders.add(entry.holder)
                files, size = files + 1, size + entry.size
        for path, target in self.links.items():
            linked = self.linked.get(target)
            if linked is None or linked.kind != FILE:
                raise RestoreRefused(self.saveset_id, f"hard link {path!r} names {target!r}, "
                                     "which is no file of the saveset")
            if self.kept(path, HARDLINK) and not self.kept(target, FILE):
                self.holders.add(linked.holder)  # restored as a file of that content
                files, size = files + 1, size + linked.size
        return files, size

    def kept(self, path: str, kind: str) -> bool:
        """Whether the restore writes ``path`` (``include`` matches it, or there is none);
        directories above kept paths are in ``dirs``."""
        return self.spec is None or self.spec.match_file(path + "/" if kind == DIR else path)

    def entries(self) -> Iterator[Entry]:
        for row, _ in manifests.rows(self.raw, self.saveset_id):
            yield manifests.entry_of(row, self.saveset_id)

    def chunks(self, size: int) -> Iterator[list[Entry]]:
        """What the restore writes but directories, ``size`` entries at a time, in the
        manifest's order; a kept hard link whose file is left out is a file of its content."""
        chunk: list[Entry] = []
        for entry in self.entries():
            if entry.kind == DIR or not self.kept(entry.path, entry.kind):
                continue
            if entry.kind == HARDLINK and not self.kept(entry.target, FILE):
                entry = replace(self.linked[entry.target], path=entry.path,
                                target=entry.target)
            chunk.append(entry)
            if len(chunk) == size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk


def _add_parents(path: str, found: set[str]) -> None:
    """The parents of ``path`` into ``found`` (up to the first one found already: its own
    parents are there with it)."""
    for parent in parents_of(path):
        if parent in found:
            return
        found.add(parent)


def parents_of(path: str) -> Iterator[str]:
    """``a/b/c`` -> ``a/b``, ``a``."""
    while "/" in path:
        path = path.rpartition("/")[0]
        yield path


def check_paths(manifest: Manifest) -> None:
    """Every path is relative and inside; no path lies under a symlink or a file; a hard
    link names a file of the saveset."""
    entries = manifest.entries
    for entry in entries.values():
        safe_relpath(entry.path, manifest.saveset_id)
        if entry.kind == HARDLINK:
            linked = entries.get(safe_relpath(entry.target, manifest.saveset_id))
            if linked is None or linked.kind != FILE:
                raise RestoreRefused(manifest.saveset_id, f"hard link {entry.path!r} names "
                                     f"{entry.target!r}, which is no file of the saveset")
        for parent in parents_of(entry.path):
            above = entries.get(parent)
            if above is not None and above.kind != DIR:
                raise RestoreRefused(manifest.saveset_id, f"path {entry.path!r} lies under "
                                     f"{above.path!r}, which is not a directory")
            if above is not None:
                break  # its own parents were checked with it


class Restorer:
    """Reads savesets back; ``keyring`` opens the encrypted ones (without it, or without an
    identity for their task, they are refused with KeyUnusable; verify then checks their
    ciphertext)."""

    def __init__(self, catalog: Catalog, stores: Mapping[str, Store],
                 keyring: Keyring | None = None, jobs: Jobs | None = None) -> None:
        self.catalog = catalog
        self.stores = stores
        self.keyring = keyring
        self.jobs = jobs or Jobs.of(None)

    def open_at(self, saveset: Saveset, part: str) -> Callable[[int], BinaryIO]:
        """``open(offset)``: the plaintext of ``part`` from that offset."""
        return opener(self.stores[saveset.data_store], saveset, part, self.keyring)

    def manifest(self, saveset: Saveset) -> Manifest:
        return manifests.decode(self.manifest_bytes(saveset), saveset.manifest_names)

    def manifest_bytes(self, saveset: Saveset) -> bytes:
        """The saveset's manifest as written, checked against its recorded hash (that of
        the stored ciphertext, for an encrypted one, which its chunks' tags authenticate
        as well)."""
        if saveset.encrypted:
            with self.open_at(saveset, MANIFEST)(0) as data:
                return data.read()
        with self.stores[saveset.data_store].read(saveset.key, MANIFEST) as data:
            raw = data.read()
        if digest_of(raw) != saveset.manifest_digest:
            raise CorruptSaveset(saveset.id, "manifest does not match its recorded hash")
        return raw

    def holder(self, saveset_id: str, needed_by: Saveset) -> Saveset:
        """The saveset whose archive holds content ``needed_by`` names as ``saveset_id``'s
        (``needed_by`` itself, where its manifest names its original)."""
        if saveset_id == needed_by.manifest_names:
            return needed_by
        found = self.catalog.get(saveset_id)
        if found is None:
            raise CorruptSaveset(needed_by.id, f"it needs saveset {saveset_id}, which is gone")
        return found

    def restore(self, saveset: Saveset, target: Path, progress: Progress | None = None,
                include: list[str] | None = None) -> RestoreResult:
        """Rebuild ``saveset`` under ``target``; with ``include`` (gitignore-style patterns),
        only the matching paths (a directory with its contents) and their parents. A
        manifest of more than ``restore_chunk`` paths is read in chunks (see ``Scan``)."""
        raw, names = self.manifest_bytes(saveset), saveset.manifest_names
        head = list(itertools.islice(manifests.rows(raw, names), self.jobs.restore_chunk + 1))
        rebuild: Callable[[Path, Progress | None, Metadata], tuple[int, int]]
        if len(head) <= self.jobs.restore_chunk:  # all of it, in memory
            manifest = Manifest(names, {e.path: e for e in (
                manifests.entry_of(row, names) for row, _ in head)})
            check_paths(manifest)
            if include:
                manifest = selected(manifest, include)
            rebuild = functools.partial(self._rebuild, saveset, manifest)
        else:
            del head
            rebuild = functools.partial(self._rebuild_in_chunks, saveset,
                                        Scan(raw, names, include))
        target.mkdir(parents=True, exist_ok=True)
        work = target / f".backstop-restore-{saveset.id}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        metadata = Metadata()
        try:
            files, size = rebuild(work, progress, metadata)
            merge_into(work, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return RestoreResult(saveset.id, files, size, str(target), metadata.warnings(),
                             sorted(metadata.damaged))

    def _rebuild(self, saveset: Saveset, manifest: Manifest, work: Path,
                 progress: Progress | None, metadata: Metadata) -> tuple[int, int]:
        """Directories, then file contents (by holder), then hard links, fifos and device
        nodes, then symlinks; directories' metadata last (deepest first)."""
        entries = sorted(manifest.entries.values(), key=lambda e: e.path)
        for entry in entries:
            if entry.kind == DIR:
                (work / entry.path).mkdir(parents=True, exist_ok=True)
        files = [e for e in entries if e.kind == FILE]
        done = self._contents(saveset, files, work, progress, metadata, total_of(files))
        self._others(entries, work, metadata)
        for entry in reversed(entries):
            if entry.kind == DIR:
                metadata.apply(work / entry.path, entry)
        return done[0], done[1]

    def _rebuild_in_chunks(self, saveset: Saveset, scan: Scan, work: Path,
                           progress: Progress | None, metadata: Metadata) -> tuple[int, int]:
        """As ``_rebuild``, the manifest read again chunk by chunk: in each, the file
        contents, then its hard links (those whose file comes later, at the end), fifos,
        devices and symlinks. The engine's processes are started once, for every chunk."""
        dirs = sorted(scan.dirs.values(), key=lambda e: e.path)
        for entry in dirs:
            (work / entry.path).mkdir(parents=True, exist_ok=True)
        done = [0, 0]
        later: list[Entry] = []  # hard links whose file is not written yet
        with ExitStack() as stack:
            processes = None
            if self.jobs.processes > 1 and scan.holders:
                handed = self._handed(saveset, dict.fromkeys(scan.holders), work)
                processes = stack.enter_context(
                    Processes(self.jobs.processes, handed, "restore"))
            for chunk in scan.chunks(self.jobs.restore_chunk):
                files = [e for e in chunk if e.kind == FILE]
                self._contents(saveset, files, work, progress, metadata, scan.total, done,
                               processes)
                now = []
                for entry in chunk:
                    if entry.kind == HARDLINK and not os.path.lexists(work / entry.target):
                        later.append(entry)
                    else:
                        now.append(entry)
                self._others(now, work, metadata)
        self._others(later, work, metadata)
        for entry in reversed(dirs):
            metadata.apply(work / entry.path, entry)
        return done[0], done[1]

    def _handed(self, saveset: Saveset, files: Mapping[str, dict[str, Entry] | None],
                work: Path) -> dict[str, tuple[Callable[[int], BinaryIO],
                                               dict[str, Entry] | None, str, Saveset]]:
        """What the engine's processes of a restore hold, by holder: how to open its
        archive, its files (none: they travel with the work), the work directory, the
        holder (each looked up once)."""
        holders = {holder_id: self.holder(holder_id, saveset) for holder_id in files}
        return {holder_id: (self.open_at(holder, ARCHIVE), files[holder_id], str(work), holder)
                for holder_id, holder in holders.items()}

    def _others(self, entries: list[Entry], work: Path, metadata: Metadata) -> None:
        """Hard links, fifos and device nodes, then symlinks, of ``entries``."""
        for entry in entries:
            if entry.kind == HARDLINK and entry.target in metadata.damaged:
                metadata.damaged.add(entry.path)
            elif entry.kind == HARDLINK:
                os.link(work / entry.target, work / entry.path)
            elif entry.kind in (FIFO, CHAR_DEVICE, BLOCK_DEVICE):
                self._special(work / entry.path, entry, metadata)
        for entry in entries:
            if entry.kind == SYMLINK:
                os.symlink(entry.target, work / entry.path)
                metadata.owner(work / entry.path, entry)
                metadata.xattrs(work / entry.path, entry)
                os.utime(work / entry.path, ns=(entry.mtime_ns, entry.mtime_ns),
                         follow_symlinks=False)

    def _contents(self, saveset: Saveset, entries: list[Entry], work: Path,
                  progress: Progress | None, metadata: Metadata, total: tuple[int, int],
                  done: list[int] | None = None, processes: Processes | None = None
                  ) -> list[int]:
        """Every file's content, read from the archive of its holder; [files, bytes] (added
        to ``done``). A file is found in the archive under its path, or, for a hard link
        restored alone as a file, under the path its content is stored under (its
        ``target``). With ``processes`` (started for every chunk of a restore), the files
        travel to them with their work."""
        wanted: dict[str, dict[str, Entry]] = defaultdict(dict)
        for entry in entries:
            wanted[entry.holder][entry.target or entry.path] = entry
        done = [0, 0] if done is None else done
        jobs = self.jobs
        if jobs.processes == 1 or (len(entries) < jobs.restore_from_files and sum(
                e.size for e in entries) < jobs.restore_from_bytes) or any(
                e.frame < 0 for e in entries):
            for holder_id, files in wanted.items():
                self._extract(self.holder(holder_id, saveset), files, work, done, total,
                              progress, metadata)
            return done
        with ExitStack() as stack:
            if processes is None:
                handed = self._handed(saveset, wanted, work)
                processes = stack.enter_context(Processes(jobs.processes, handed, "restore"))
                carried = False
            else:
                carried = True
            for holder_id, files in wanted.items():
                place = Placer(holder_id, dict(files), str(work), done, total, progress,
                               metadata)
                pieces = _pieces(files, 4 * jobs.processes)
                futures = [processes.submit(_restore_piece, holder_id, (
                    {name: files[name] for name in names} if carried else names))
                    for names in pieces]
                for names, future in zip(pieces, futures, strict=True):
                    place.merge(names, processes.result(future))
                place.check()
        return done

    @staticmethod
    def _special(path: Path, entry: Entry, metadata: Metadata) -> None:
        """A fifo, or a device node where the restoring process may make one (root)."""
        if entry.kind == FIFO:
            os.mkfifo(path)
        else:
            kind = stat.S_IFCHR if entry.kind == CHAR_DEVICE else stat.S_IFBLK
            try:
                os.mknod(path, kind | 0o600, entry.rdev)
            except PermissionError:
                metadata.devices_refused.append(entry)
                return
        metadata.apply(path, entry)

    def _extract(self, holder: Saveset, files: dict[str, Entry], work: Path, done: list[int],
                 total: tuple[int, int], progress: Progress | None,
                 metadata: Metadata) -> None:
        place = Placer(holder.id, dict(files), str(work), done, total, progress, metadata)
        open_at = self.open_at(holder, ARCHIVE)
        # one job: this process alone, on one core; else decompressed ahead on a thread
        threaded = self.jobs.processes > 1
        if all(e.frame >= 0 for e in files.values()):  # only the frames that hold them
            extract_located(holder, files, open_at, place, threaded)
        else:
            with corruption_of(holder.id), open_at(0) as raw:
                members = read_members(raw, threaded=threaded)
                try:
                    for member, content in members:
                        place(member, content)
                finally:
                    members.close()
        place.check()


    def verify(self, saveset: Saveset, progress: Progress | None = None) -> VerifyResult:
        """Every stored file against its hash, and the archive against its recorded hash;
        an encrypted saveset where this host has no identity for it (a storage node): its
        stored bytes against the hashes recorded when it was committed."""
        if saveset.encrypted and (self.keyring is None
                                  or not self.keyring.can_open(saveset.task)):
            return self.verify_ciphertext(saveset)
        result = VerifyResult(saveset.id)
        try:
            manifest = self.manifest(saveset)
        except CorruptSaveset as exc:
            return VerifyResult(saveset.id, ok=False, bad=[f"(manifest) {exc.detail}"])
        if saveset.encrypted:
            return self._verify_sealed(saveset, manifest, result, progress)
        expected = {e.path: e for e in manifest.stored_here()}
        digest = new_digest()
        try:
            with self._archive(saveset, digest) as raw, corruption_of(saveset.id):
                for member, content in read_members(raw):
                    entry = expected.pop(member.name, None)
                    if entry is None or _digest(content) != entry.digest:
                        result.bad.append(member.name)
                    result.files += 1
                    if progress is not None:
                        progress(result.files, 0, len(manifest.stored_here()), 0)
        except CorruptSaveset as exc:
            result.bad.append(f"(archive) {exc.detail}")
        result.bad += sorted(expected)
        if digest.hexdigest() != saveset.archive_digest and not result.bad:
            result.bad.append("(archive) does not match its recorded hash")
        result.ok = not result.bad
        return result

    def _verify_sealed(self, saveset: Saveset, manifest: Manifest, result: VerifyResult,
                       progress: Progress | None) -> VerifyResult:
        """Frame by frame, so that damage names the files it hits (those that start in a
        frame whose ciphertext does not authenticate), and the others are still checked;
        then the stored bytes against the hashes recorded at commit."""
        expected = {e.path: e for e in manifest.stored_here()}
        by_frame: dict[int, list[tuple[int, int, str]]] = defaultdict(list)
        for stored in expected.values():
            by_frame[stored.frame].append((stored.frame, stored.skip, stored.path))
        open_at = self.open_at(saveset, ARCHIVE)
        for frame in sorted(by_frame):
            checking: list[str] = []
            try:
                with corruption_of(saveset.id):
                    members = read_located(open_at, by_frame[frame])
                    try:
                        for member, content in members:
                            entry = expected.pop(member.name, None)
                            if entry is None:
                                continue
                            checking[:] = [member.name]
                            if _digest(content) != entry.digest:
                                result.bad.append(member.name)
                            checking.clear()
                            result.files += 1
                            if progress is not None:
                                progress(result.files, 0, len(manifest.stored_here()), 0)
                    finally:
                        members.close()
            except CorruptSaveset:
                lost = [n for _, _, n in by_frame[frame] if n in expected]
                result.bad += checking + lost
                for name in lost:
                    del expected[name]
        result.bad += sorted(expected)
        if not result.bad:
            result.bad = self.verify_ciphertext(saveset).bad
        result.ok = not result.bad
        return result

    def _archive(self, saveset: Saveset, digest: Any) -> BinaryIO:
        """A plain saveset's archive from its start, ``digest`` hashing every byte."""
        store = self.stores[saveset.data_store]
        return cast(BinaryIO, Hashed(store.read(saveset.key, ARCHIVE), digest))

    def verify_ciphertext(self, saveset: Saveset) -> VerifyResult:
        """The stored archive and manifest against the hashes recorded at commit."""
        bad = []
        store = self.stores[saveset.data_store]
        for part, recorded in ((ARCHIVE, saveset.archive_digest),
                               (MANIFEST, saveset.manifest_digest)):
            digest = new_digest()
            with store.read(saveset.key, part) as data:
                while chunk := data.read(CHUNK):
                    digest.update(chunk)
            if digest.hexdigest() != recorded:
                bad.append(f"({part}) does not match its recorded hash")
        return VerifyResult(saveset.id, ok=not bad, bad=bad, checked="ciphertext")


def extract_located(holder: Saveset, files: dict[str, Entry],
                    open_at: Callable[[int], BinaryIO], place: Placer, threaded: bool) -> None:
    """The files of ``holder``'s archive whose frames the manifest records, to ``place``."""
    if holder.encrypted:
        extract_sealed(holder.id, files, open_at, place, threaded)
    else:
        with corruption_of(holder.id):
            read_all(open_at, files, place, threaded)


def extract_sealed(holder_id: str, files: dict[str, Entry],
                   open_at: Callable[[int], BinaryIO], place: Placer, threaded: bool) -> None:
    """In one pass while the ciphertext authenticates; from the first damage on, frame by
    frame: a frame whose ciphertext does not authenticate costs the files that start
    in it (and the one it broke off), which are named as damaged and left out; the
    others are restored. Nothing that did not authenticate is ever kept."""
    try:
        with corruption_of(holder_id):
            read_all(open_at, files, place, threaded)
        return
    except CorruptSaveset:
        place.damaged()  # the file whose content broke off
    by_frame: dict[int, list[str]] = defaultdict(list)
    for name in place.missing:
        by_frame[files[name].frame].append(name)
    for frame in sorted(by_frame):
        try:
            with corruption_of(holder_id):
                read_all(open_at, {n: files[n] for n in by_frame[frame]}, place, threaded)
        except CorruptSaveset:
            place.damaged()
            for name in by_frame[frame]:
                place.damaged(name)


def read_all(open_at: Callable[[int], BinaryIO], files: dict[str, Entry],
             place: Callable[[Any, IO[bytes]], None], threaded: bool = True) -> None:
    """Every member of ``files`` that their frames hold, handed to ``place``."""
    members = read_located(open_at, [(e.frame, e.skip, name) for name, e in files.items()],
                           threaded)
    try:
        for member, content in members:
            place(member, content)
    finally:
        members.close()


@dataclass
class Placer:
    """Writes each wanted member of a holder's archive into the work directory."""

    holder_id: str
    missing: dict[str, Entry]
    root: str
    done: list[int]
    total: tuple[int, int]
    progress: Progress | None
    metadata: Metadata

    current: Entry | None = None  # the file being written

    def __call__(self, member: Any, content: IO[bytes]) -> None:
        safe_relpath(member.name, self.holder_id)
        entry = self.missing.pop(member.name, None)
        if entry is None:
            return  # content of a file changed or deleted later, or restored already
        self.current = entry
        write_file(os.path.join(self.root, entry.path), entry, content, self.holder_id,
                   self.metadata)
        self.current = None
        self.done[0] += 1
        self.done[1] += entry.size
        if self.progress is not None:
            self.progress(self.done[0], self.done[1], *self.total)

    def check(self) -> None:
        """CorruptSaveset if a wanted file was not found in the archive."""
        if self.missing:
            raise CorruptSaveset(self.holder_id, f"{len(self.missing)} file(s) missing from "
                                 f"its archive, e.g. {next(iter(self.missing))!r}")

    def merge(self, names: list[str], done: PieceDone) -> None:
        """What one of the engine's processes placed of ``names`` (see ``_restore_piece``)."""
        (files, size), missing, metadata = done
        kept = set(missing)
        for name in names:
            if name not in kept:
                self.missing.pop(name, None)
        self.done[0] += files
        self.done[1] += size
        self.metadata.merge(metadata)
        if self.progress is not None:
            self.progress(self.done[0], self.done[1], *self.total)

    def damaged(self, name: str | None = None) -> None:
        """A wanted file (``name``; else the one being written) whose content did not
        authenticate: left out, and named."""
        entry = self.missing.pop(name, None) if name else self.current
        self.current = None if name is None else self.current
        if entry is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.root, entry.path))  # what was written of it
        self.metadata.damaged.add(entry.path)


PieceDone = tuple[list[int], list[str], "Metadata"]  # what _restore_piece returns


def _pieces(files: dict[str, Entry], count: int) -> list[list[str]]:
    """The files in about ``count`` pieces of about the same size (a tar header counted as
    a block), each the files whose members start in a run of neighbouring frames."""
    by_frame: dict[int, list[str]] = defaultdict(list)
    for name, entry in files.items():
        by_frame[entry.frame].append(name)
    each = sum(e.size + 512 for e in files.values()) // count + 1
    pieces: list[list[str]] = [[]]
    size = 0
    for frame in sorted(by_frame):
        if size >= each:
            pieces.append([])
            size = 0
        pieces[-1] += by_frame[frame]
        size += sum(files[name].size + 512 for name in by_frame[frame])
    return pieces


def _restore_piece(holder_id: str, piece: list[str] | dict[str, Entry]) -> PieceDone:
    """In one of the engine's processes: the files of ``piece`` (their names in the
    holder's files it was handed, or the files themselves) of holder ``holder_id``'s
    archive written into the work directory; ([files, bytes] written, names not found,
    what could not be given back)."""
    open_at, files, root, holder = handed_state()[holder_id]
    wanted = piece if isinstance(piece, dict) else {name: files[name] for name in piece}
    metadata = Metadata()
    place = Placer(holder_id, dict(wanted), root, [0, 0], (0, 0), None, metadata)
    extract_located(holder, wanted, open_at, place, threaded=False)
    return place.done, list(place.missing), metadata


def _digest(content: IO[bytes]) -> str:
    digest = new_digest()
    while chunk := content.read(CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def write_file(path: str, entry: Entry, content: IO[bytes], saveset_id: str,
               metadata: Metadata) -> None:
    """Create ``path`` (never through a link), check its digest, set mode and mtime."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except FileNotFoundError:  # a manifest that does not list the parent directory
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, flags, 0o600)
    digest = new_digest()
    try:
        if isinstance(content, SparseContent):
            _write_sparse(fd, content, digest)
        while chunk := content.read(CHUNK):
            digest.update(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
        if digest.hexdigest() != entry.digest:
            raise CorruptSaveset(saveset_id, f"{entry.path}: content does not match its digest")
        metadata.apply(fd, entry)
    finally:
        os.close(fd)


def _write_sparse(fd: int, content: SparseContent, digest: Any) -> None:
    """Only the data regions, where they lie; the holes stay holes (the digest reads them
    as zeros)."""
    done = 0
    for offset, data in content.regions():
        hash_zeros(digest, offset - done)
        digest.update(data)
        view = memoryview(data)
        while view:
            view = view[os.pwrite(fd, view, offset + len(data) - len(view)):]
        done = offset + len(data)
    hash_zeros(digest, content.size - done)
    os.ftruncate(fd, content.size)
    content.position = content.size  # nothing left for read()


class Metadata:
    """Gives restored paths their recorded owner and group, by number (``tar
    --numeric-owner``), and their extended attributes (POSIX ACLs among them), where the
    restoring process may; keeps what it could not give back, for the restore's warnings."""

    def __init__(self) -> None:
        self.owners_refused: list[Entry] = []
        self.xattrs_refused: list[tuple[Entry, str]] = []
        self.devices_refused: list[Entry] = []
        self.damaged: set[str] = set()  # paths whose content did not authenticate

    def apply(self, where: Path | int, entry: Entry) -> None:
        """Owner, mode, attributes and mtime of a file (its descriptor), directory, fifo or
        device node, in the order they must come."""
        self.owner(where, entry)
        os.chmod(where, entry.mode)
        self.xattrs(where, entry)
        os.utime(where, ns=(entry.mtime_ns, entry.mtime_ns))

    def owner(self, where: Path | int, entry: Entry) -> None:
        """Before the mode: a change of owner clears set-id bits."""
        if entry.uid < 0:  # a manifest that did not record owners
            return
        try:
            if isinstance(where, int):
                os.fchown(where, entry.uid, entry.gid)
            else:
                os.chown(where, entry.uid, entry.gid, follow_symlinks=False)
        except PermissionError:
            self.owners_refused.append(entry)

    def xattrs(self, where: Path | int, entry: Entry) -> None:
        """After owner and mode: an ACL and the mode's group bits are one."""
        for name, value in entry.xattrs:
            if entry.kind == SYMLINK and name.startswith("user."):
                continue  # Linux keeps no user attributes on symlinks
            try:
                if isinstance(where, int):
                    os.setxattr(where, name, value)
                else:
                    os.setxattr(where, name, value, follow_symlinks=False)
            except OSError as exc:
                self.xattrs_refused.append((entry, f"{name}: {exc.strerror or exc}"))

    def merge(self, other: Metadata) -> None:
        self.owners_refused += other.owners_refused
        self.xattrs_refused += other.xattrs_refused
        self.devices_refused += other.devices_refused
        self.damaged |= other.damaged

    def warnings(self) -> list[str]:
        found = []
        if self.owners_refused:
            first = self.owners_refused[0]
            found.append(
                f"owners not restored: this process may not give files away (not root, or "
                f"without CAP_CHOWN), so {len(self.owners_refused)} path(s) belong to uid "
                f"{os.geteuid()} instead of their own (e.g. {first.path}: "
                f"{first.user or first.uid}:{first.group or first.gid})")
        if self.xattrs_refused:
            entry, why = self.xattrs_refused[0]
            found.append(f"extended attributes not restored on "
                         f"{len({e.path for e, _ in self.xattrs_refused})} path(s) (e.g. "
                         f"{entry.path}: {why})")
        if self.devices_refused:
            found.append(f"device nodes not recreated: this process may not make them (not "
                         f"root): {', '.join(e.path for e in self.devices_refused[:5])}"
                         + (" ..." if len(self.devices_refused) > 5 else ""))
        return found


def merge_into(source: Path, target: Path) -> None:
    """Move everything under ``source`` into ``target``; what is in the way is replaced.

    Uses lstat throughout: a link in the target is replaced, never followed.
    """
    for item in os.scandir(source):
        dest = target / item.name
        try:
            existing = os.lstat(dest)
        except FileNotFoundError:
            existing = None
        if item.is_dir(follow_symlinks=False) and existing and stat.S_ISDIR(existing.st_mode):
            merge_into(Path(item.path), dest)
            shutil.copystat(item.path, dest, follow_symlinks=False)
            continue
        if existing is not None:
            if stat.S_ISDIR(existing.st_mode):
                shutil.rmtree(dest)
            else:
                dest.unlink()
        os.rename(item.path, dest)
