"""Seekable savesets: a restore of a few files reads only the frames that hold them, and
the archive stays one plain zstd stream that ``zstd -d | tar -x`` restores whole."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import IO, BinaryIO

import zstandard

from backstop.config import Level
from backstop.model import SavesetKey
from backstop.workers.archive import FRAME_BYTES
from backstop.workers.jobs import Jobs
from backstop.workers.restore import Restorer
from backstop.workers.store import ARCHIVE, PathStore, Store
from tests.integration.conftest import Setup, snapshot
from tests.system_tools import require

FILE_BYTES = 3 << 20
FILES = 24  # 72 MiB of random bytes: nine frames or so


class Counting:
    """A part of a saveset being read, counting the bytes read into ``counted``."""

    def __init__(self, source: BinaryIO, counted: list[int]) -> None:
        self.source, self.counted = source, counted

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        self.counted[0] += len(data)
        return data

    def __enter__(self) -> Counting:
        return self

    def __exit__(self, *exc: object) -> None:
        self.source.close()


class CountingStore(PathStore):
    """A directory store that counts the archive bytes read from it."""

    def __init__(self, store: Store, counted: list[int]) -> None:
        assert isinstance(store, PathStore)
        super().__init__(store.name, store.root, store.capacity_bytes, store.reserve_bytes)
        self.counted = counted

    def read(self, key: SavesetKey, part: str, offset: int = 0) -> BinaryIO:
        data = super().read(key, part, offset)
        if part != ARCHIVE:
            return data
        return Counting(data, self.counted)  # type: ignore[return-value]


def counting(setup: Setup) -> tuple[Restorer, list[int]]:
    """A restorer over the setup's stores, and the archive bytes it has read (in this
    process: one job)."""
    counted = [0]
    stores = {name: CountingStore(s, counted) for name, s in setup.engine.stores.items()}
    return Restorer(setup.catalog, stores, jobs=Jobs(1)), counted


def big_tree(src: Path) -> None:
    for i in range(FILES):
        (src / f"part{i:02}.bin").write_bytes(os.urandom(FILE_BYTES))
        (src / f"note{i:02}.txt").write_text(f"note {i}\n" * 50)


def test_one_file_is_restored_from_its_frames_only(setup: Setup, tmp_path: Path) -> None:
    big_tree(setup.source)
    saveset = setup.backup(Level.FULL).saveset
    assert saveset.archive_bytes > 8 * FRAME_BYTES
    restorer, read = counting(setup)
    # at most: the frame the member starts in, the file, and what is read ahead past it
    bound = FRAME_BYTES + FILE_BYTES + 10 * (1 << 20)
    for name in ("part00.bin", "part11.bin", "part23.bin", "note23.txt"):
        read[0] = 0
        target = tmp_path / name
        restorer.restore(saveset, target, include=[name])
        assert (target / name).read_bytes() == (setup.source / name).read_bytes()
        assert [p.name for p in target.iterdir()] == [name]
        assert read[0] < bound, (name, read[0], saveset.archive_bytes)
    read[0] = 0
    restorer.restore(saveset, tmp_path / "all")
    assert snapshot(tmp_path / "all") == snapshot(setup.source)
    assert read[0] == saveset.archive_bytes  # a full restore reads it once


def test_an_incremental_restore_reads_only_what_it_needs_of_its_base(
        setup: Setup, tmp_path: Path) -> None:
    big_tree(setup.source)
    setup.backup(Level.FULL)
    for i in range(FILES):
        if i != 12:
            (setup.source / f"part{i:02}.bin").write_bytes(os.urandom(1000))
    setup.clock.now += timedelta(hours=1)
    inc = setup.backup(Level.INC).saveset
    restorer, read = counting(setup)
    restorer.restore(inc, tmp_path / "inc")
    assert snapshot(tmp_path / "inc") == snapshot(setup.source)
    full = setup.catalog.get(inc.based_on or "")
    assert full is not None
    # the INC's own archive, and of the FULL's, the notes and part12 (spread thin, but
    # far from all of its 72 MiB)
    assert read[0] < inc.archive_bytes + full.archive_bytes // 2


def test_the_archive_is_many_frames_that_zstd_and_tar_restore_alone(
        setup: Setup, tmp_path: Path) -> None:
    big_tree(setup.source)
    setup.backup(Level.FULL)
    archive = next(setup.root.rglob("archive.tar.zst"))
    assert frames_in(archive) >= 8
    zstd = require("zstd", "zstd")
    by_tar = tmp_path / "by-tar"
    by_tar.mkdir()
    with subprocess.Popen([zstd, "-dc", str(archive)], stdout=subprocess.PIPE) as unzstd:
        subprocess.run(["tar", "-x", "-C", str(by_tar)], stdin=unzstd.stdout, check=True)
    assert unzstd.returncode == 0
    for name in ("part00.bin", "part23.bin", "note11.txt"):
        assert (by_tar / name).read_bytes() == (setup.source / name).read_bytes()


def frames_in(archive: Path) -> int:
    """The zstd frames of a file, counted by walking their headers."""
    count = 0
    with open(archive, "rb") as data:
        for _ in iter_frames(data):
            count += 1
    return count


def iter_frames(data: IO[bytes]) -> Iterator[int]:
    raw = data.read()
    offset = 0
    while offset < len(raw):
        size = zstandard.frame_content_size(raw[offset:offset + 18])
        assert size > 0
        # a frame's compressed size: decompress it alone and see how much input it took
        decompressor = zstandard.ZstdDecompressor().decompressobj()
        decompressor.decompress(raw[offset:])
        used = len(raw) - offset - len(decompressor.unused_data)
        yield offset
        offset += used
