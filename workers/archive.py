"""Saveset archives: a POSIX (PAX) tar of file contents, compressed with zstd.

Only regular files' contents go into the archive; directories, symlinks, modes and exact
mtimes live in the manifest. The archive stays a plain ``.tar.zst`` so that
``zstd -d < archive.tar.zst | tar -x`` recovers the files without Backstop. Each file is
read once: hashed and compressed from the same buffer.

The tar stream is cut into independent zstd frames of ``FRAME_BYTES`` each (a sequence of
frames is one plain zstd stream to any zstd reader). The manifest records, for each file,
the compressed offset of the frame its member starts in and how far into that frame it
starts, so a restore of a few files decompresses only their frames, wherever they lie in
the archive. The frames are compressed in parallel, one per core.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import os
import queue
import stat
import tarfile
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, BinaryIO

import zstandard

from backstop.errors import CorruptSaveset, SourceError
from backstop.model import BLOCK_DEVICE, CHAR_DEVICE, FIFO, HARDLINK, Entry
from backstop.workers.digest import new_digest

BLOCK = 512
CHUNK = 1 << 20
ZSTD_LEVEL = 3
# Uncompressed bytes of one zstd frame: what a restore of one file decompresses at most
# before its member begins.
FRAME_BYTES = 8 << 20


class HashingSink:
    """Counts and hashes (unless not ``hashed``) the compressed bytes on their way into the
    store."""

    def __init__(self, out: BinaryIO, hashed: bool = True) -> None:
        self.out = out
        self.digest = new_digest()
        self.hashed = hashed
        self.bytes = 0

    def write(self, data: bytes | memoryview) -> int:
        if self.hashed:
            self.digest.update(data)
        self.bytes += len(data)
        return self.out.write(data)

    def flush(self) -> None:
        self.out.flush()


class FrameSink:
    """Cuts the tar stream into zstd frames of ``FRAME_BYTES``, compresses them in parallel
    threads (zstd releases the GIL) and writes them to ``out`` in order; with no
    ``threads``, compresses and writes each frame in the calling thread (a process that
    is one of the engine's jobs: one core's work)."""

    def __init__(self, out: BinaryIO, threads: int, hashed: bool = True,
                 frame: bytearray | None = None) -> None:
        self.sink = HashingSink(out, hashed)
        self.threads = threads
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="compress") if threads else None
        # one thread writes the frames, in order, as they are done (off the reading thread)
        self.writer = (ThreadPoolExecutor(1, thread_name_prefix="archive-write") if threads
                       else None)
        self.local = threading.local()
        self.pending: deque[Future[None]] = deque()
        self.failed = False
        self.spare: deque[bytearray] = deque()  # frame buffers compressed, to fill again
        # the frame being filled: ``frame`` where the caller has one to reuse (filling a new
        # one costs a page fault every 4 KiB)
        self.frame, self.fill = frame or bytearray(FRAME_BYTES), 0
        self.frames = 0  # frames handed to the pool so far
        self.offsets: list[int] = []  # compressed offset of each frame written

    def position(self) -> tuple[int, int]:
        """Where the next byte goes: (frame number, uncompressed offset in that frame)."""
        return self.frames, self.fill

    def free(self) -> memoryview:
        """The unused rest of the current frame, to read into; ``advance`` says how much."""
        return memoryview(self.frame)[self.fill:]

    def advance(self, size: int) -> None:
        self.fill += size
        if self.fill == FRAME_BYTES:
            self._cut()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            take = min(len(view), FRAME_BYTES - self.fill)
            self.frame[self.fill:self.fill + take] = view[:take]
            view = view[take:]
            self.advance(take)

    def _compress(self, frame: bytearray, size: int) -> bytes:
        compressor = getattr(self.local, "compressor", None)
        if compressor is None:
            compressor = self.local.compressor = zstandard.ZstdCompressor(
                level=ZSTD_LEVEL, write_checksum=True)
        with memoryview(frame) as view:
            compressed = compressor.compress(view[:size])
        self.spare.append(frame)
        return compressed

    def _write(self, compressed: Future[bytes] | bytes | memoryview,
               offsets: list[int] | None = None) -> None:
        """A compressed frame, or several (``offsets``: where each starts in them)."""
        if self.failed:  # an earlier frame could not be written: write nothing after it
            return
        try:
            data = compressed.result() if isinstance(compressed, Future) else compressed
            self.offsets.extend(self.sink.bytes + o for o in offsets or [0])
            self.sink.write(data)
        except BaseException:
            self.failed = True
            raise

    def _cut(self) -> None:
        if self.pool is None or self.writer is None:
            self._write(self._compress(self.frame, self.fill))
        else:
            compressed = self.pool.submit(self._compress, self.frame, self.fill)
            self.pending.append(self.writer.submit(self._write, compressed))
        self.frames += 1
        self.frame = self.spare.popleft() if self.spare else bytearray(FRAME_BYTES)
        self.fill = 0
        self._drain(self.threads + 1)

    def append(self, frames: memoryview, offsets: list[int]) -> int:
        """Frames compressed elsewhere (another of the engine's processes): ``frames``, each
        starting at its offset in ``offsets``, after the frame being filled (cut short,
        where it holds anything). Returns the number of the first."""
        if self.fill:
            self._cut()
        self._drain(0)
        first = self.frames
        self._write(frames, offsets)  # here: ``frames`` may be reused once this returns
        self.frames += len(offsets)
        return first

    def _drain(self, keep: int) -> None:
        """Wait for written frames (raising what writing them raised) until at most
        ``keep`` are on their way."""
        while len(self.pending) > keep:
            self.pending.popleft().result()

    def close(self) -> None:
        """The last frame, and every frame still on its way, into ``out``."""
        try:
            if self.fill:
                self._cut()
            self._drain(0)
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        self.failed = True  # what is still queued (after an error) is not written
        for pool in (self.pool, self.writer):
            if pool is not None:
                pool.shutdown(cancel_futures=True)


class ArchiveWriter:
    """Streams files into ``out`` as tar+zstd; ``close`` finishes the archive, not ``out``.

    Use it as a context manager (or call ``close``): it runs compression threads.
    """

    def __init__(self, out: BinaryIO, threads: int | None = None, hashed: bool = True,
                 frame: bytearray | None = None) -> None:
        self.stream = FrameSink(out, (os.cpu_count() or 1) if threads is None else threads,
                                hashed, frame)
        # files that changed while they were read (their stored copy may mix versions)
        self.changed: list[str] = []
        self.closed = False

    def __enter__(self) -> ArchiveWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.closed:
            self.stream.shutdown()

    def frames_written(self) -> int:
        """How many frames are in ``out`` (their offsets known)."""
        return len(self.stream.offsets)

    def frame_offset(self, frame: int) -> int:
        """The compressed offset of frame number ``frame`` (once the archive is closed)."""
        return self.stream.offsets[frame]

    def add(self, name: str, path: str | Path) -> tuple[int, str, os.stat_result, tuple[int, int]]:
        """Store the file at ``path`` as ``name``; return its size, digest, stat, and where
        its member starts: (frame number, offset in that frame; see ``frame_offset``)."""
        try:
            # never waits: a file that became a fifo since the walk is refused below
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise SourceError(f"{path} changed into something other than a file")
            regions = data_regions(fd, st)
            info = tarfile.TarInfo(name)
            info.size, info.mtime = st.st_size, int(st.st_mtime)
            info.mode, info.uid, info.gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
            at = self.stream.position()
            if regions is None:
                self.stream.write(ustar_header(info) or info.tobuf(
                    tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
                digest = self._copy(fd, st.st_size, path)
            else:
                digest = self._copy_sparse(fd, info, regions, path)
            after = os.fstat(fd)
            if (after.st_size, after.st_mtime_ns, after.st_ctime_ns) != (
                    st.st_size, st.st_mtime_ns, st.st_ctime_ns):
                self.changed.append(name)
        finally:
            os.close(fd)
        return st.st_size, digest, st, at

    def _copy_sparse(self, fd: int, info: tarfile.TarInfo, regions: list[tuple[int, int]],
                     path: str | Path) -> str:
        """A sparse file as GNU tar's sparse format 1.0 (a PAX member whose data begins with
        the map of its data regions): holes take no room, and tar -x makes them holes
        again. The digest is of the whole content, holes read as zeros."""
        if not regions or sum(regions[-1]) < info.size:  # ends in a hole: say where it ends
            regions = [*regions, (info.size, 0)]           # (as GNU tar does, and needs)
        sparse_map = f"{len(regions)}\n" + "".join(f"{o}\n{n}\n" for o, n in regions)
        mapped = sparse_map.encode() + bytes(-len(sparse_map) % BLOCK)
        real_size, name = info.size, info.name
        head, _, tail = name.rpartition("/")
        info.name = f"{head}/GNUSparseFile.0/{tail}" if head else f"GNUSparseFile.0/{tail}"
        info.size = len(mapped) + sum(n for _, n in regions)
        info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                            "GNU.sparse.name": name, "GNU.sparse.realsize": str(real_size)}
        self.stream.write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        self.stream.write(mapped)
        digest, done = new_digest(), 0
        for offset, length in regions:
            hash_zeros(digest, offset - done)
            os.lseek(fd, offset, os.SEEK_SET)
            digest_part = self._copy_region(fd, length, path)
            digest.update(digest_part)
            done = offset + length
        hash_zeros(digest, real_size - done)
        padding = -info.size % BLOCK
        if padding:
            self.stream.write(bytes(padding))
        return digest.hexdigest()

    def _copy_region(self, fd: int, length: int, path: str | Path) -> bytes:
        """``length`` bytes of ``fd`` from where it stands, into the archive; returned for
        the caller's digest (regions are small next to their holes)."""
        data = bytearray()
        while len(data) < length:
            try:
                got = os.read(fd, min(CHUNK, length - len(data)))
            except OSError as exc:
                raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from exc
            if not got:  # the file shrank since fstat: keep the archive well-formed
                got = bytes(length - len(data))
            data += got
        self.stream.write(data)
        return bytes(data)

    def _copy(self, fd: int, size: int, path: str | Path) -> str:
        """The content, read straight into the frame being filled, hashed from there."""
        digest = new_digest()
        remaining = size
        while remaining:
            view = self.stream.free()[:min(CHUNK, remaining)]
            try:
                got = os.readv(fd, [view])
            except OSError as exc:
                raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from exc
            if not got:  # the file shrank since fstat: keep the archive well-formed
                view[:] = bytes(len(view))
                got = len(view)
            digest.update(view[:got])
            self.stream.advance(got)
            remaining -= got
        padding = -size % BLOCK
        if padding:
            self.stream.write(bytes(padding))
        return digest.hexdigest()

    def add_header(self, entry: Entry) -> None:
        """A member without content, so that ``tar -x`` alone recreates it too: a hard link
        (to a file earlier in this archive), a fifo, a device node."""
        info = tarfile.TarInfo(entry.path)
        info.type = {HARDLINK: tarfile.LNKTYPE, FIFO: tarfile.FIFOTYPE,
                     CHAR_DEVICE: tarfile.CHRTYPE, BLOCK_DEVICE: tarfile.BLKTYPE}[entry.kind]
        info.linkname = entry.target if entry.kind == HARDLINK else ""
        info.mode, info.mtime = entry.mode, entry.mtime_ns // 1_000_000_000
        info.uid, info.gid = max(entry.uid, 0), max(entry.gid, 0)
        info.devmajor, info.devminor = os.major(entry.rdev), os.minor(entry.rdev)
        self.stream.write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))

    def close_slice(self) -> list[int]:
        """End the last frame, not the tar: a slice of an archive, whose frames
        (``FrameSink.append``) another writer adds to its own. Returns where each frame
        starts in ``out``."""
        self.stream.close()
        self.closed = True
        return self.stream.offsets

    def close(self) -> tuple[int, str]:
        """End the tar and its last zstd frame; return the archive's size and digest."""
        self.stream.write(bytes(2 * BLOCK))
        self.stream.close()
        self.closed = True
        return self.stream.sink.bytes, self.stream.sink.digest.hexdigest()


def ustar_header(info: tarfile.TarInfo) -> bytes | None:
    """The header ``info.tobuf(PAX_FORMAT)`` makes for a regular file whose name and
    numbers fit a plain ustar header (most files), made in a fifth of the time; None for
    any other (tarfile makes those, with their PAX headers)."""
    name = info.name
    if not (name.isascii() and len(name) <= 100 and 0 <= info.uid < USTAR_ID_LIMIT
            and 0 <= info.gid < USTAR_ID_LIMIT and 0 <= info.size < USTAR_NUMBER_LIMIT
            and 0 <= info.mtime < USTAR_NUMBER_LIMIT and info.type == tarfile.REGTYPE):
        return None
    head = b"".join((name.encode().ljust(100, b"\0"), b"%07o\0" % (info.mode & 0o7777),
                     b"%07o\0" % info.uid, b"%07o\0" % info.gid, b"%011o\0" % info.size,
                     b"%011o\0" % int(info.mtime), b"        0", bytes(100), b"ustar\x0000",
                     bytes(247)))
    return head[:148] + b"%06o\0" % sum(head) + head[155:]  # the checksum, as tarfile


USTAR_ID_LIMIT = 8 ** 7  # uid and gid: 7 octal digits
USTAR_NUMBER_LIMIT = 8 ** 11  # size and mtime: 11
USTAR_MAGIC = b"ustar\x0000"


class Header(tarfile.TarInfo):
    """Reads the headers ``ustar_header`` writes (a regular file, no link name, owner name,
    device or prefix) five times faster than tarfile; any other the way tarfile does."""

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Header:
        if (len(buf) == BLOCK and buf[156:157] == b"0" and buf[257:265] == USTAR_MAGIC
                and buf[154:156] == b"\0 " and buf[157:257].count(0) == 100
                and buf[265:].count(0) == 247):
            try:
                if sum(buf[:148]) + sum(buf[156:]) + 256 == int(buf[148:154], 8):
                    header = cls(buf[:100].split(b"\0", 1)[0].decode(encoding, errors))
                    header.mode, header.uid = int(buf[100:107], 8), int(buf[108:115], 8)
                    header.gid, header.size = int(buf[116:123], 8), int(buf[124:135], 8)
                    header.mtime, header.chksum = int(buf[136:147], 8), int(buf[148:154], 8)
                    return header
            except ValueError:
                pass  # not as ustar_header writes them: tarfile says what is wrong
        return super().frombuf(buf, encoding, errors)


# Below this a file is stored whole: the map and its header cost more than the holes save.
SPARSE_FROM = 64 << 10


def data_regions(fd: int, st: os.stat_result) -> list[tuple[int, int]] | None:
    """(offset, length) of the data of a file whose holes are worth keeping, else None."""
    if st.st_size < SPARSE_FROM or st.st_blocks * 512 >= st.st_size:
        return None
    regions, offset = [], 0
    try:
        while offset < st.st_size:
            start = os.lseek(fd, offset, os.SEEK_DATA)
            end = min(os.lseek(fd, start, os.SEEK_HOLE), st.st_size)
            regions.append((start, end - start))
            offset = end
    except OSError as exc:
        if exc.errno != errno.ENXIO:  # no SEEK_DATA here: store it whole
            return None
        # ENXIO: no data after offset, only a hole to the end
    return regions if sum(n for _, n in regions) < st.st_size else None


def hash_zeros(digest: Any, length: int) -> None:
    zeros = bytes(min(length, CHUNK))
    while length > 0:
        digest.update(zeros[:min(length, CHUNK)])
        length -= CHUNK


def tar_size(file_sizes: list[int]) -> int:
    """Exact uncompressed size of the archive of these files (the pre-flight estimate).

    One header block each (plus a PAX header for long names, counted generously), content
    rounded up to blocks, and the two end blocks.
    """
    content = sum(-(-size // BLOCK) * BLOCK for size in file_sizes)
    return content + 3 * BLOCK * len(file_sizes) + 2 * BLOCK


class ReadAhead:
    """Reads ``source`` ahead in a thread of its own.

    zstd releases the GIL while it decompresses, so with this the decompression of the next
    megabytes overlaps the caller's parsing, hashing and writing, as it would in a
    ``zstd -d | tar -x`` pipeline. Errors of the source are raised in the caller's thread.
    """

    def __init__(self, source: IO[bytes], chunk: int = CHUNK, depth: int = 8,
                 threaded: bool = True) -> None:
        self.source, self.chunk = source, chunk
        self.queue: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=depth)
        self.stopped = threading.Event()
        self.buffer, self.offset, self.eof = b"", 0, False
        self.position = 0
        self.thread: threading.Thread | None = None
        if threaded:  # else: read in the caller's thread, when it needs more (one core)
            self.thread = threading.Thread(target=self._fill, name="read-ahead", daemon=True)
            self.thread.start()

    def _fill(self) -> None:
        while not self.stopped.is_set():
            try:
                data: bytes | BaseException = self.source.read(self.chunk)
            except BaseException as exc:  # handed over to the reading thread
                data = exc
            while not self.stopped.is_set():
                try:
                    self.queue.put(data, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if not isinstance(data, bytes) or not data:
                return

    def read(self, size: int = -1) -> bytes:
        if 0 <= size <= len(self.buffer) - self.offset:  # the common case: one slice
            start = self.offset
            self.offset += size
            self.position += size
            return self.buffer[start:self.offset]
        parts = []
        while size != 0 and not self._exhausted():
            take = len(self.buffer) - self.offset if size < 0 else min(
                size, len(self.buffer) - self.offset)
            parts.append(self.buffer[self.offset:self.offset + take])
            self.offset += take
            self.position += take
            size -= take if size > 0 else 0
        return b"".join(parts)

    def tell(self) -> int:
        return self.position

    def seek(self, position: int, whence: int = os.SEEK_SET) -> int:
        """Forward only (what tarfile does when it reads members in order): skips bytes."""
        if whence != os.SEEK_SET or position < self.position:
            raise OSError(f"read-ahead stream cannot seek back to {position}")
        while self.position < position and not self._exhausted():
            step = min(position - self.position, len(self.buffer) - self.offset)
            self.offset += step
            self.position += step
        return self.position

    def seekable(self) -> bool:
        return True

    def _exhausted(self) -> bool:
        if self.offset < len(self.buffer):
            return False
        if self.eof:
            return True
        item = self.queue.get() if self.thread is not None else self.source.read(self.chunk)
        if isinstance(item, BaseException):
            self.eof = True
            raise item
        self.buffer, self.offset, self.eof = item, 0, not item
        return self.eof

    def close(self) -> None:
        if self.thread is None:
            return
        self.stopped.set()
        with contextlib.suppress(queue.Empty):  # room for the chunk it may be putting
            while True:
                self.queue.get_nowait()
        self.thread.join()


class MemberContent:
    """The content of the current member, read straight from the archive stream."""

    def __init__(self, stream: ReadAhead, size: int) -> None:
        self.stream, self.remaining = stream, size

    def read(self, size: int = -1) -> bytes:
        size = self.remaining if size < 0 else min(size, self.remaining)
        data = self.stream.read(size)
        if len(data) < size:
            raise tarfile.ReadError("unexpected end of data")
        self.remaining -= size
        return data


class SparseContent(MemberContent):
    """The content of a sparse member: ``read`` gives it whole (holes as zeros), and
    ``regions`` only its data, where it lies, for writing holes back as holes."""

    def __init__(self, stream: ReadAhead, sparse: list[tuple[int, int]], size: int) -> None:
        super().__init__(stream, sum(n for _, n in sparse))
        self.sparse, self.size, self.position = list(sparse), size, 0

    def regions(self) -> Iterator[tuple[int, bytes]]:
        for offset, length in self.sparse:
            yield offset, MemberContent.read(self, length)

    def read(self, size: int = -1) -> bytes:
        """Sequential reading of the whole content (verify)."""
        left = self.size - self.position
        size = left if size < 0 else min(size, left)
        out = bytearray()
        while len(out) < size:
            here = self.position + len(out)
            region = next(((o, n) for o, n in self.sparse if o + n > here), None)
            if region is None or region[0] > here:  # a hole up to the next region, or the end
                gap = (region[0] if region else self.size) - here
                out += bytes(min(gap, size - len(out)))
            else:
                take = min(region[0] + region[1] - here, size - len(out))
                out += MemberContent.read(self, take)
        self.position += len(out)
        return bytes(out)


Members = Generator[tuple[tarfile.TarInfo, IO[bytes]], None, None]

# A stream (a command's output, whose size is known only at its end) longer than one part
# is stored as consecutive members, one per part (``NAME.part-000001``, …), each marked in
# its PAX header with the stream's name, its number and whether another part follows;
# readers join them into the one file NAME again (``cat NAME.part-*`` does the same).
STREAM_KEY, PART_KEY, MORE_KEY = "BACKSTOP.stream", "BACKSTOP.part", "BACKSTOP.more"


class JoinedContent:
    """The content of a stream stored in parts: the parts' contents, one after another."""

    def __init__(self, ahead: ReadAhead, archive: Any, first: tarfile.TarInfo) -> None:
        # ``archive``: the tarfile.TarFile being read (whose ``members`` typeshed omits)
        self.ahead, self.archive = ahead, archive
        self.name = first.pax_headers[STREAM_KEY]
        self.part, self.more = 1, first.pax_headers.get(MORE_KEY) == "1"
        self.current = MemberContent(ahead, first.size)

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            return b"".join(iter(lambda: self.read(CHUNK), b""))
        while not self.current.remaining and self.more:
            self._next_part()
        return self.current.read(size)

    def _next_part(self) -> None:
        member = self.archive.next()
        self.archive.members.clear()
        self.part += 1
        if member is None or (member.pax_headers.get(STREAM_KEY),
                              member.pax_headers.get(PART_KEY)) != (self.name, str(self.part)):
            raise tarfile.ReadError(f"stream {self.name}: part {self.part} is missing")
        self.ahead.seek(member.offset_data)
        self.more = member.pax_headers.get(MORE_KEY) == "1"
        self.current = MemberContent(self.ahead, member.size)


def read_members(source: BinaryIO, skip: int = 0, threaded: bool = True) -> Members:
    """Each regular file of an archive with a reader for its content, in archive order;
    with ``skip``, of the archive from that many uncompressed bytes on (``source`` then
    starts at a frame boundary, and a member at ``skip``); decompressed ahead on a thread
    of its own, unless not ``threaded`` (one of the engine's processes: one core).

    Damage shows up while reading, in the caller's loop: wrap it in ``corruption_of``.
    """
    reader = zstandard.ZstdDecompressor().stream_reader(source, read_across_frames=True)
    ahead = ReadAhead(reader, threaded=threaded)
    try:
        ahead.seek(skip)
        # "r:" reads each member's content in one call, where stream mode ("r|") goes
        # through 10 KB records; it needs only tell() and forward seeks, as read in order.
        with tarfile.open(fileobj=ahead, mode="r:", encoding="utf-8",  # type: ignore[call-overload]
                          errors="surrogateescape", tarinfo=Header) as archive:
            for member in archive:
                archive.members.clear()  # keep no list of every header of a huge archive
                if member.isreg() and PART_KEY not in member.pax_headers:  # a later part
                    ahead.seek(member.offset_data)                 # is read with its first
                    if STREAM_KEY in member.pax_headers:
                        joined = JoinedContent(ahead, archive, member)
                        whole = copy.copy(member)
                        whole.name = joined.name
                        yield whole, joined  # type: ignore[misc]
                    elif member.sparse:
                        yield member, SparseContent(ahead, member.sparse, member.size)  # type: ignore[misc]
                    else:
                        yield member, MemberContent(ahead, member.size)  # type: ignore[misc]
    finally:
        ahead.close()


class Counted:
    """A stream that says how far into the archive its reader has come."""

    def __init__(self, source: IO[bytes], start: int) -> None:
        self.source, self.position = source, start

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        self.position += len(data)
        return data


def read_located(open_at: Callable[[int], IO[bytes]], wanted: list[tuple[int, int, str]],
                 threaded: bool = True) -> Members:
    """The members named in ``wanted`` — (frame, skip, name) of each, as the manifest
    records them — read frame by frame: an archive stream is opened (``open_at``, a
    compressed offset) at the frame of the next wanted member, and read on as long as the
    following one lies within a frame ahead. Other members met on the way are yielded too;
    a wanted one that is not where it should be is simply not yielded.
    """
    order = sorted(wanted)
    done = 0
    while done < len(order):
        frame, skip, _ = order[done]
        before = done
        with open_at(frame) as raw:
            counted = Counted(raw, frame)
            members = read_members(counted, skip, threaded)  # type: ignore[arg-type]
            try:
                for member, content in members:
                    yield member, content
                    if member.name != order[done][2]:
                        continue
                    done += 1
                    if done == len(order) or order[done][0] > counted.position + FRAME_BYTES:
                        break
            finally:
                members.close()
        if done == before:  # not found where the manifest says: the caller reports it
            return


@contextmanager
def corruption_of(saveset_id: str) -> Iterator[None]:
    """Turn any sign of a damaged or truncated archive into CorruptSaveset."""
    try:
        yield
    except (zstandard.ZstdError, tarfile.TarError, EOFError) as exc:
        raise CorruptSaveset(saveset_id, f"archive unreadable: {exc}") from exc
