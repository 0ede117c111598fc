"""Each reason of SPEC section 3, caused for real; a failed write leaves nothing behind."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from backstop.config import Level
from backstop.errors import StorageUnavailable
from backstop.workers.engine import BackupRequest
from backstop.workers.store import MARKER
from tests.fs import remount_read_only, tmpfs
from tests.integration.conftest import Setup

MIB = 1 << 20

TMPFS_CONFIG = """
rds: [{name: local}]
data_stores:
  - {name: a, rds: local, path: fs/store, create: true}
  - {name: b, rds: local, path: stores/b, create: true}
media_pools:
  - {name: daily, data_store: a, retention: 14d}
  - {name: spare, data_store: b, retention: 14d, media: {count: 1, size: 1MiB}}
tasks: [{name: docs, source: src}]
"""


def random_files(src: Path, count: int, size: int) -> None:
    for i in range(count):
        (src / f"f{i:03}.bin").write_bytes(os.urandom(size))


def nothing_left(setup: Setup, store: str) -> None:
    """No saveset, no catalog entry, no partial file anywhere in the store."""
    root = setup.engine.stores[store].root  # type: ignore[attr-defined]
    assert setup.catalog.all() == []
    assert [p for p in (root / "pools").rglob("*") if p.is_file()] == []


def reason_of(setup: Setup, pool: str = "daily") -> str:
    with pytest.raises(StorageUnavailable) as caught:
        setup.backup(Level.FULL, pool=pool)
    return caught.value.reason


def test_out_of_space_before_the_first_byte(make_setup: Callable[..., Setup],
                                            tmp_path: Path) -> None:
    with tmpfs(tmp_path / "fs", 4 * MIB):
        setup = make_setup(TMPFS_CONFIG)
        random_files(setup.source, 6, MIB)
        assert reason_of(setup) == "out_of_space"
        nothing_left(setup, "a")


def test_out_of_space_when_the_file_system_fills_up_mid_write(
        make_setup: Callable[..., Setup], tmp_path: Path) -> None:
    with tmpfs(tmp_path / "fs", 8 * MIB) as fs:
        setup = make_setup(TMPFS_CONFIG)
        random_files(setup.source, 5, MIB)

        def fill_the_disk(files: int, *_: int) -> None:
            if files == 1:  # something else on the host takes the space meanwhile
                with open(fs / "other-data", "wb") as other, pytest.raises(OSError):
                    while True:
                        other.write(os.urandom(MIB))

        with pytest.raises(StorageUnavailable) as caught:
            setup.engine.backup(BackupRequest("docs", Level.FULL, "daily"),
                                progress=fill_the_disk)
        assert caught.value.reason == "out_of_space"
        assert "No space left" in caught.value.message
        nothing_left(setup, "a")


@pytest.fixture
def media_setup(make_setup: Callable[..., Setup]) -> Setup:
    """The same stores and pools, with store a on the ordinary disk."""
    return make_setup(TMPFS_CONFIG.replace("fs/store", "stores/a"))


def test_no_free_media(media_setup: Setup) -> None:
    # Given a pool with one 1 MiB medium that already holds a saveset within retention
    random_files(media_setup.source, 1, 600_000)
    media_setup.backup(Level.FULL, pool="spare")
    shutil.rmtree(media_setup.source)
    media_setup.source.mkdir()
    random_files(media_setup.source, 1, 700_000)
    # When a second FULL needs more than the medium has left, Then no medium is free
    assert reason_of(media_setup, "spare") == "no_free_media"
    assert len(media_setup.catalog.all()) == 1


def test_a_store_directory_replaced_by_a_file_is_offline(media_setup: Setup) -> None:
    root = media_setup.engine.stores["a"].root  # type: ignore[attr-defined]
    shutil.rmtree(root)
    root.write_text("not a directory")
    random_files(media_setup.source, 1, 1000)
    assert reason_of(media_setup) == "store_offline"


@pytest.mark.parametrize("marker", [None, '{"store": "b"}', "garbage"])
def test_a_missing_or_wrong_store_marker_is_offline(media_setup: Setup,
                                                    marker: str | None) -> None:
    path = media_setup.engine.stores["a"].root / MARKER  # type: ignore[attr-defined]
    if marker is None:
        path.unlink()
    else:
        path.write_text(marker)
    random_files(media_setup.source, 1, 1000)
    assert reason_of(media_setup) == "store_offline"
    assert media_setup.catalog.all() == []


def test_a_missing_store_directory_is_offline_and_not_recreated(media_setup: Setup) -> None:
    root = media_setup.engine.stores["a"].root  # type: ignore[attr-defined]
    shutil.rmtree(root)
    random_files(media_setup.source, 1, 1000)
    assert reason_of(media_setup) == "store_offline"
    assert not root.exists()


def test_a_read_only_store_is_offline(make_setup: Callable[..., Setup], tmp_path: Path) -> None:
    with tmpfs(tmp_path / "fs", 4 * MIB) as fs:
        setup = make_setup(TMPFS_CONFIG)
        random_files(setup.source, 1, 1000)
        remount_read_only(fs)
        assert reason_of(setup) == "store_offline"


def test_source_errors_are_not_storage_errors(media_setup: Setup) -> None:
    from backstop.errors import SourceError

    random_files(media_setup.source, 1, 1000)
    os.chmod(media_setup.source, 0)
    try:
        if os.geteuid() == 0:  # root reads anyway: take the source away instead
            shutil.rmtree(media_setup.source)
        with pytest.raises(SourceError):
            media_setup.backup(Level.FULL)
    finally:
        if media_setup.source.exists():
            os.chmod(media_setup.source, 0o755)
