"""Streams: a command's standard output stored as a file of the saveset (a database dump).

The command runs on the host that reads the task, never through a shell, in a session of
its own (so that it is killed with its children). Its output goes straight into the
archive: a part of at most ``PART_BYTES`` is read into memory, then written as a tar member
whose size is now known, so memory stays flat whatever the size of the stream. A stream
that fits one part is one plain member ``NAME``; a longer one is consecutive members
``NAME.part-000001``, … that every reader joins again (see ``archive.STREAM_KEY``).

A command that exits non-zero, is killed, or writes nothing for the data path's
``io_timeout`` fails the run as a source error (no saveset, no failover) naming the
stream, its exit status and the last lines of its standard error.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import signal
import stat
import subprocess
import tarfile
import threading
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass

from backstop.config import Stream
from backstop.errors import SourceError
from backstop.model import FILE, Entry
from backstop.workers.archive import (
    BLOCK,
    MORE_KEY,
    PART_KEY,
    STREAM_KEY,
    ArchiveWriter,
    ustar_header,
)
from backstop.workers.digest import new_digest
from backstop.workers.manifest import group_name, user_name

# Uncompressed bytes of one part of a stream: what a run holds in memory of it at most.
PART_BYTES = 16 << 20
PIPE_BYTES = 1 << 20  # asked of the kernel for the command's pipe (fewer, larger reads)
F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ, named in Python 3.10+ on Linux only
TAIL_LINES, TAIL_BYTES = 5, 4096  # of the command's standard error, kept for its message
STREAM_MODE = 0o600  # a dump holds all of a database: readable by its owner alone


class StreamFailed(SourceError):
    """A stream's command failed: exited non-zero, was killed, or went silent."""


@dataclass(frozen=True)
class StoredStream:
    size: int
    digest: str
    stat: os.stat_result  # what the manifest row of a file takes from its lstat
    at: tuple[int, int]  # where its (first) member starts: (frame number, offset in it)


class Command:
    """A stream's command, running, its standard output read with a silence limit."""

    def __init__(self, stream: Stream, silence_s: float, cwd: str) -> None:
        self.stream, self.silence_s = stream, silence_s
        try:
            self.process = subprocess.Popen(
                stream.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, start_new_session=True, bufsize=0, cwd=cwd)
        except OSError as exc:
            raise StreamFailed(f"stream {stream.name}: {stream.argv[0]} could not be started: "
                               f"{exc.strerror or exc}") from exc
        assert self.process.stdout is not None and self.process.stderr is not None
        self.fd = self.process.stdout.fileno()
        with suppress(OSError):
            fcntl.fcntl(self.fd, F_SETPIPE_SZ, PIPE_BYTES)
        os.set_blocking(self.fd, False)
        self.poll = select.poll()
        self.poll.register(self.fd, select.POLLIN)
        self.tail = bytearray()
        self.stderr = threading.Thread(target=self._keep_tail, args=(self.process.stderr,),
                                       name=f"stream-stderr-{stream.name}", daemon=True)
        self.stderr.start()

    def _keep_tail(self, pipe: object) -> None:
        fd = pipe.fileno()  # type: ignore[attr-defined]
        while chunk := os.read(fd, 65536):
            self.tail += chunk
            del self.tail[:-TAIL_BYTES]

    def read_into(self, view: memoryview) -> int:
        """Bytes of output into ``view``; 0 at its end. StreamFailed when the command
        writes nothing for the silence limit (it is killed then)."""
        while True:
            try:
                return os.readv(self.fd, [view])
            except BlockingIOError:
                pass
            if not self.poll.poll(self.silence_s * 1000):
                self.kill()
                raise self.failed(f"wrote nothing for {self.silence_s:g}s and was killed "
                                  "with its children")

    def finish(self) -> None:
        """After the end of the output: the command's exit; StreamFailed unless it is 0."""
        try:
            code = self.process.wait(self.silence_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise self.failed(f"closed its output but did not exit within "
                              f"{self.silence_s:g}s and was killed with its children") from None
        if code < 0:
            raise self.failed(f"was killed by signal {signal.Signals(-code).name}")
        if code:
            raise self.failed(f"exited with status {code}")

    def failed(self, what: str) -> StreamFailed:
        self.kill()  # what is left of its session: its standard error ends
        self.stderr.join(5)
        lines = bytes(self.tail).decode(errors="replace").strip().splitlines()[-TAIL_LINES:]
        said = "; ".join(line.strip() for line in lines if line.strip())
        return StreamFailed(f"stream {self.stream.name}: {self.stream.argv[0]} {what}"
                            + (f"; its standard error ends: {said}" if said else ""))

    def kill(self) -> None:
        """The command and every process of its session, at once."""
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def close(self) -> None:
        """Nothing of the command is left running, its pipes closed."""
        self.kill()
        self.process.wait()
        self.stderr.join(5)
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()


class Streams:
    """The streams of one task, how long each may stay silent, and where they run (the
    config's directory, as hooks)."""

    def __init__(self, streams: Sequence[Stream], silence_s: float, cwd: str = ".") -> None:
        self.by_name = {s.name: s for s in streams}
        self.silence_s, self.cwd = silence_s, cwd

    def names(self) -> list[str]:
        return sorted(self.by_name)

    def store(self, writer: ArchiveWriter, name: str) -> StoredStream:
        """Run the stream ``name``'s command and write its output into the archive."""
        stream = self.by_name[name]
        started = time.time_ns()
        command = Command(stream, self.silence_s, self.cwd)
        try:
            size, digest, at = _write_parts(writer, name, command, started)
            command.finish()
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                raise command.failed("closed its output early") from exc
            raise
        finally:
            command.close()
        seconds = started // 1_000_000_000
        st = os.stat_result((stat.S_IFREG | STREAM_MODE, 0, 0, 1, os.getuid(), os.getgid(),
                             size, seconds, seconds, seconds),
                            {"st_mtime_ns": started, "st_ctime_ns": started,
                             "st_atime_ns": started})
        return StoredStream(size, digest, st, at)

    @staticmethod
    def entry(name: str) -> Entry:
        """The manifest entry of a stream, but for what ``StoredStream`` says of it."""
        uid, gid = os.getuid(), os.getgid()
        return Entry(path=name, kind=FILE, size=0, mtime_ns=0, inode=0, mode=STREAM_MODE,
                     uid=uid, gid=gid, user=user_name(uid), group=group_name(gid))


def _write_parts(writer: ArchiveWriter, name: str, command: Command, started_ns: int
                 ) -> tuple[int, str, tuple[int, int]]:
    """The command's output as members of at most PART_BYTES each; its size, digest, and
    where its first member starts."""
    buffer = bytearray(PART_BYTES)
    view = memoryview(buffer)
    digest, size, part = new_digest(), 0, 0
    at = writer.stream.position()
    while True:
        fill = 0
        while fill < PART_BYTES and (got := command.read_into(view[fill:])):
            fill += got
        part += 1
        more = fill == PART_BYTES  # the output may go on: there is another part
        if part == 1 and not more:
            member, pax = name, {}
        else:
            member = f"{name}.part-{part:06}"
            pax = {STREAM_KEY: name, **({PART_KEY: str(part)} if part > 1 else {}),
                   **({MORE_KEY: "1"} if more else {})}
        info = tarfile.TarInfo(member)
        info.size, info.mtime, info.mode = fill, started_ns // 1_000_000_000, STREAM_MODE
        info.uid, info.gid, info.pax_headers = os.getuid(), os.getgid(), pax
        writer.stream.write((None if pax else ustar_header(info)) or info.tobuf(
            tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        digest.update(view[:fill])
        writer.stream.write(view[:fill])
        if fill % BLOCK:
            writer.stream.write(bytes(BLOCK - fill % BLOCK))
        size += fill
        if not more:
            return size, digest.hexdigest(), at
