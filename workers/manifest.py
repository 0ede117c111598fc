"""Scanning a backup source, and manifests on disk.

A manifest lists every path of the source when the saveset was taken (with size, mtime,
inode, mode, BLAKE3 digest and the saveset holding its content, owner and group, the inode's
ctime) and every path deleted since its base. It is stored as zstd-compressed JSON lines: a
header object, then one compact array per path: ``[kind, path, size, mtime_ns, inode, mode,
digest, holder, target, uid, gid, ctime_ns, user, group, xattrs, rdev, frame, skip]``
(xattrs: an object of name to base64 value; frame and skip: where the file's member lies
in its holder's archive, see ``backstop.workers.archive``), or ``["x", path]`` for a deletion.
Kinds: ``f`` file, ``d`` directory, ``l`` symlink, ``p`` fifo, ``c``/``b`` character/block
device, ``h`` a hard link to the file stored under ``target``. Manifests of format 1
(without the last nine) and 2 (without the last two) are read too.
"""

from __future__ import annotations

import base64
import errno
import functools
import grp
import io
import json
import os
import pwd
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import orjson
import pathspec
import zstandard

from backstop.errors import CorruptSaveset, SourceError, SourceMissing
from backstop.model import (
    BLOCK_DEVICE,
    CHAR_DEVICE,
    DIR,
    FIFO,
    FILE,
    HARDLINK,
    KINDS,
    SYMLINK,
    Entry,
    Manifest,
)
from backstop.workers.digest import ALGORITHM

FORMAT = "backstop-manifest/3"
FORMATS = ("backstop-manifest/1", "backstop-manifest/2", FORMAT)  # what decode reads
DELETED = "x"
ROW_LENGTHS = (9, 16, 18)  # a row of format 1, 2, 3


def excludes(patterns: list[str]) -> pathspec.GitIgnoreSpec:
    return pathspec.GitIgnoreSpec.from_lines(patterns)


def scan(source: Path, patterns: list[str]) -> list[Entry]:
    """Every entry ``walk`` finds, as a list."""
    return list(walk(source, patterns))


def walk(source: Path, patterns: list[str], linked: set[str] | None = None
         ) -> Iterator[Entry]:
    """Every directory, file, symlink, fifo and device node under ``source`` not excluded,
    as ``found`` finds them, with everything an entry keeps."""
    for found_path in found(source, patterns, linked):
        yield entry_of_found(found_path)


# A path the walk found: (path, kind, its lstat, its directory entry, for a hard link the
# first name of its file). Its entry is made only when needed (attributes cost syscalls).
Found = tuple[str, str, os.stat_result, os.DirEntry[str], str]


def found(source: Path, patterns: list[str], linked: set[str] | None = None
          ) -> Iterator[Found]:
    """Every directory, file, symlink, fifo and device node under ``source`` not excluded:
    a directory's entries (sorted by name), then the subdirectories' in the same way, so in
    the order of ``order_key``. A file with several names is a file under the first of them
    and a hard link (to that path) under the others; ``linked`` gets those first names.

    Paths are relative to the source, with ``/``. Sockets are skipped.
    Raises SourceError when the source or a directory in it cannot be read.
    """
    if not source.is_dir():
        raise SourceMissing(f"source {source} is missing or not a directory")
    spec = excludes(patterns)
    first_names: dict[tuple[int, int], str] = {}  # (device, inode) -> path of its content
    stack = [("", source)]
    while stack:
        rel, directory = stack.pop()
        children = []
        for item in _listdir(directory):
            path = f"{rel}/{item.name}" if rel else item.name
            seen = _found(item, path, spec)
            if seen is None:
                continue
            kind, st = seen
            first = ""
            if kind == FILE and st.st_nlink > 1:
                first = first_names.setdefault((st.st_dev, st.st_ino), path)
                if first == path:
                    first = ""
                    if linked is not None:
                        linked.add(path)
                else:
                    kind = HARDLINK
            yield path, kind, st, item, first
            if kind == DIR:
                children.append((path, Path(item.path)))
        stack.extend(reversed(children))


def order_key(path: str) -> tuple[tuple[str, ...], str]:
    """Where ``walk`` puts a path: by its directory (a directory before the directories
    under it), then by name."""
    parent, _, name = path.rpartition("/")
    return (tuple(parent.split("/")) if parent else ()), name


def _listdir(directory: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as exc:
        raise SourceError(f"cannot read directory {directory}: {exc.strerror or exc}") from exc


def _found(item: os.DirEntry[str], path: str, spec: pathspec.GitIgnoreSpec
           ) -> tuple[str, os.stat_result] | None:
    """The kind and lstat of a directory entry to keep; None for one excluded, a socket,
    or one gone meanwhile."""
    try:
        st = item.stat(follow_symlinks=False)
    except FileNotFoundError:
        return None  # deleted while we looked
    except OSError as exc:
        raise SourceError(f"cannot stat {item.path}: {exc.strerror or exc}") from exc
    mode = st.st_mode
    if stat.S_ISREG(mode):
        kind, probe = FILE, path
    elif stat.S_ISDIR(mode):
        kind, probe = DIR, path + "/"
    elif stat.S_ISLNK(mode):
        kind, probe = SYMLINK, path
    elif stat.S_ISFIFO(mode):
        kind, probe = FIFO, path
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        kind, probe = (CHAR_DEVICE if stat.S_ISCHR(mode) else BLOCK_DEVICE), path
    else:
        return None  # a socket: nothing to keep
    if spec.patterns and spec.match_file(probe):
        return None
    return kind, st


def entry_of_found(seen: Found) -> Entry:
    """The entry of a path the walk found: its lstat, link target, owner names and
    extended attributes (a hard link keeps none of its own: its file does)."""
    path, kind, st, item, first = seen
    xattrs: tuple[tuple[str, bytes], ...] = ()
    if kind == HARDLINK:
        target = first
    else:
        target = os.readlink(item.path) if kind == SYMLINK else ""
        xattrs = read_xattrs(item.path)
    return Entry(path=path, kind=kind, size=st.st_size if kind == FILE else 0,
                 mtime_ns=st.st_mtime_ns, inode=st.st_ino, mode=stat.S_IMODE(st.st_mode),
                 target=target, uid=st.st_uid, gid=st.st_gid, ctime_ns=st.st_ctime_ns,
                 user=user_name(st.st_uid), group=group_name(st.st_gid), xattrs=xattrs,
                 rdev=st.st_rdev if kind in (CHAR_DEVICE, BLOCK_DEVICE) else 0)


def read_xattrs(path: str) -> tuple[tuple[str, bytes], ...]:
    """The extended attributes of ``path`` itself (never of a symlink's target), sorted; none
    where the file system has none, or the file went meanwhile."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
        return tuple(sorted((name, os.getxattr(path, name, follow_symlinks=False))
                            for name in names))
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.ENOENT, errno.ENODATA):
            return ()
        raise SourceError(f"cannot read extended attributes of {path}: "
                          f"{exc.strerror or exc}") from exc


@functools.cache
def user_name(uid: int) -> str:
    """The name of ``uid`` on this host ("" when it has none)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return ""


@functools.cache
def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return ""


def encode(manifest: Manifest) -> bytes:
    writer = ManifestWriter(manifest.saveset_id)
    for entry in manifest.entries.values():
        writer.add(entry)
    for path in manifest.deleted:
        writer.delete(path)
    return writer.finish()


class BatchedWriter:
    """A zstd stream writer fed in batches of about 64 KiB: one call into the compressor
    per batch rather than per small record."""

    BATCH = 1 << 16

    def __init__(self, compressor: zstandard.ZstdCompressor, out: BinaryIO) -> None:
        self.stream = compressor.stream_writer(out, closefd=False)
        self.batch = bytearray()

    def write(self, data: bytes) -> None:
        self.batch += data
        if len(self.batch) >= self.BATCH:
            self.stream.write(self.batch)
            self.batch.clear()

    def finish(self) -> None:
        """Everything written, ending the zstd frame."""
        self.stream.write(self.batch)
        self.batch.clear()
        self.stream.flush(zstandard.FLUSH_FRAME)


class ManifestWriter:
    """A manifest encoded row by row, into memory (compressed as it goes)."""

    def __init__(self, saveset_id: str) -> None:
        self.out = io.BytesIO()
        self.stream = BatchedWriter(zstandard.ZstdCompressor(level=3, write_checksum=True),
                                    self.out)
        self.stream.write(_line({"format": FORMAT, "saveset": saveset_id,
                                 "digest": ALGORITHM}))

    def add(self, entry: Entry) -> None:
        self.stream.write(row_of(entry))

    def add_row(self, row: bytes) -> None:
        """A row as ``row_of`` or ``stored_row`` made it."""
        self.stream.write(row)

    def delete(self, path: str) -> None:
        self.stream.write(_line([DELETED, path]))

    def finish(self) -> bytes:
        self.stream.finish()
        return self.out.getvalue()


def row_of(e: Entry) -> bytes:
    """The manifest row of an entry, with its line end."""
    return _line([e.kind, e.path, e.size, e.mtime_ns, e.inode, e.mode, e.digest, e.holder,
                  e.target, e.uid, e.gid, e.ctime_ns, e.user, e.group,
                  {k: base64.b64encode(v).decode() for k, v in e.xattrs}, e.rdev, e.frame,
                  e.skip])


def stored_row(e: Entry, size: int, digest: str, st: os.stat_result, holder: str,
               frame: int, skip: int) -> bytes:
    """``row_of`` the entry of a file as the archive stored it: its size, digest and lstat
    when read, where its member lies (one call per stored file: no copy of the entry)."""
    return stored_head(e, size, digest, st, holder) + stored_tail(frame, skip)


def stored_head(e: Entry, size: int, digest: str, st: os.stat_result, holder: str) -> bytes:
    """``stored_row`` up to where its member lies, which ``stored_tail`` adds (made by one
    of the engine's processes, before that is known)."""
    return _encode([e.kind, e.path, size, st.st_mtime_ns, st.st_ino, e.mode, digest, holder,
                    e.target, e.uid, e.gid, st.st_ctime_ns, e.user, e.group,
                    {k: base64.b64encode(v).decode() for k, v in e.xattrs},
                    e.rdev])[:-1].encode()


def stored_tail(frame: int, skip: int) -> bytes:
    return b",%d,%d]\n" % (frame, skip)


_encode = json.JSONEncoder(separators=(",", ":")).encode  # one encoder for every row
_decode = json.JSONDecoder().decode


def _line(value: Any) -> bytes:
    return _encode(value).encode() + b"\n"


def _row(line: bytes) -> Any:
    """A row parsed. orjson reads rows about 2.5 times as fast as ``json``; it refuses the
    escaped lone surrogates that a name which is not UTF-8 becomes, and those rows (and
    damaged ones, to be named by ``json``'s error) are read by ``json``."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return _decode(line.decode())


def rows(data: BinaryIO | bytes, saveset_id: str) -> Iterator[tuple[list[Any], bytes]]:
    """The rows of a manifest's entries, one by one, in its order (deletions left out),
    parsed and as stored; damage raises CorruptSaveset where it is met. A row is checked
    only for its shape: see ``entry_of``."""
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        lines = _lines(source)
        _check_header(_row(next(lines)), saveset_id)
        for line in lines:
            row = _row(line)
            if not isinstance(row, list) or len(row) < 2 or not isinstance(row[1], str):
                raise ValueError(f"bad manifest row {row!r:.80}")
            if row[0] != DELETED:
                yield row, line
    except (zstandard.ZstdError, ValueError, TypeError, StopIteration, IndexError) as exc:
        raise CorruptSaveset(saveset_id, f"manifest unreadable: {exc or type(exc).__name__}") \
            from exc


def kept_as_is(seen: Found, row: list[Any]) -> bool:
    """A file the walk found that is, by its lstat, the very inode its base's row
    describes, unchanged since (same size, mtime and ctime): that row holds for it as it
    is. Rows that did not record the ctime never do."""
    _, kind, st, _, _ = seen
    return (kind == FILE and len(row) == 18 and row[0] == FILE and row[2] == st.st_size
            and row[3] == st.st_mtime_ns and row[4] == st.st_ino and row[11] == st.st_ctime_ns
            and row[8] == "" and isinstance(row[6], str) and bool(row[6])
            and isinstance(row[7], str))


def unchanged(entry: Entry, row: list[Any]) -> bool:
    """``Entry.same_content_as`` of a scanned file and a row of its base's manifest, and
    the row has its content's digest."""
    ctime = row[11] if len(row) >= 16 else 0
    return (row[0] == FILE and entry.kind == FILE and row[2] == entry.size
            and row[3] == entry.mtime_ns and row[4] == entry.inode and row[8] == entry.target
            and isinstance(row[6], str) and bool(row[6]) and isinstance(row[7], str)
            and (not ctime or not entry.ctime_ns or ctime == entry.ctime_ns))


def entry_of(row: Any, saveset_id: str) -> Entry:
    """The entry of a manifest row; CorruptSaveset if it is not one."""
    try:
        return _entry_of(row)
    except (ValueError, TypeError, IndexError) as exc:
        raise CorruptSaveset(saveset_id, f"manifest unreadable: {exc}") from exc


def decode(data: BinaryIO | bytes, saveset_id: str, under: str = "") -> Manifest:
    """Read a manifest back (with ``under``, a path of the source: only the part at and
    under it); CorruptSaveset if it is damaged or not a manifest of this saveset.

    The part under a path is read without parsing the other rows: a row's path starts at a
    fixed place, so a byte comparison skips them (``ls`` of one directory of a huge saveset).
    """
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    quoted = json.dumps(under)[:-1].encode()  # '"docs/deep' as rows spell it
    start, end = len(b'["f",'), len(b'["f",') + len(quoted)
    try:
        lines = _lines(source)
        _check_header(_row(next(lines)), saveset_id)
        manifest = Manifest(saveset_id)
        for line in lines:
            if not under or (line[start:end] == quoted and line[end:end + 1] in (b'"', b"/")):
                _add(manifest, _row(line))
        return manifest
    except (zstandard.ZstdError, ValueError, TypeError, StopIteration, IndexError) as exc:
        raise CorruptSaveset(saveset_id, f"manifest unreadable: {exc or type(exc).__name__}") \
            from exc


def _check_header(header: Any, saveset_id: str) -> None:
    if not isinstance(header, dict) or header.get("format") not in FORMATS:
        raise ValueError("not a Backstop manifest")
    if header.get("saveset") != saveset_id:
        raise ValueError(f"it belongs to saveset {header.get('saveset')!r}")


def _lines(source: BinaryIO) -> Iterator[bytes]:
    reader = zstandard.ZstdDecompressor().stream_reader(source, read_across_frames=True)
    yield from io.BufferedReader(reader)


def _add(manifest: Manifest, row: Any) -> None:
    if not isinstance(row, list) or not row or not isinstance(row[1], str):
        raise ValueError(f"bad manifest row {row!r:.80}")
    if row[0] == DELETED:
        manifest.deleted.append(row[1])
        return
    entry = _entry_of(row)
    manifest.entries[entry.path] = entry


def _entry_of(row: Any) -> Entry:
    if not isinstance(row, list) or len(row) not in ROW_LENGTHS or not isinstance(row[1], str):
        raise ValueError(f"bad manifest row {row!r:.80}")
    kind, path, size, mtime_ns, inode, mode, sha, holder, target = row[:9]
    uid, gid, ctime_ns, user, group, xattrs, rdev = (row[9:16] if len(row) >= 16
                                                     else (-1, -1, 0, "", "", {}, 0))
    frame, skip = row[16:] if len(row) == 18 else (-1, 0)
    if kind not in KINDS or not all(
            isinstance(n, int) for n in (size, mtime_ns, inode, mode, uid, gid, ctime_ns,
                                         rdev, frame, skip)):
        raise ValueError(f"bad manifest row {row!r:.80}")
    return Entry(
        path, kind, size, mtime_ns, inode, mode, str(sha), sys.intern(str(holder)),
        str(target), uid, gid, ctime_ns, sys.intern(str(user)), sys.intern(str(group)),
        tuple((str(k), base64.b64decode(v)) for k, v in dict(xattrs).items()), rdev, frame,
        skip)
