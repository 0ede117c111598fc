"""Restore and verify against damaged and crafted savesets: refused, reported, nothing half done."""

from __future__ import annotations

import dataclasses
import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from backstop.config import Level
from backstop.errors import CorruptSaveset, RestoreRefused
from backstop.model import DIR, FILE, HARDLINK, SYMLINK, Entry, Manifest, Saveset, SavesetKey
from backstop.workers import manifest as manifests
from backstop.workers.digest import digest_of
from backstop.workers.engine import ARCHIVE, MANIFEST, META
from backstop.workers.restore import Restorer
from tests.integration.conftest import PARALLEL, Setup, snapshot


@pytest.fixture
def taken(setup: Setup) -> Iterator[tuple[Setup, Saveset]]:
    for i in range(20):
        (setup.source / f"file{i:02}.txt").write_text(f"content {i}\n" * 2000)
    yield setup, setup.backup(Level.FULL).saveset


def archive_path(setup: Setup, saveset: Saveset) -> Path:
    return setup.engine.stores[saveset.data_store].saveset_dir(saveset.key) / ARCHIVE  # type: ignore[attr-defined]


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flipped byte", "truncated"])
def test_a_damaged_archive_is_caught_by_verify_and_restore(
        taken: tuple[Setup, Saveset], tmp_path: Path, damage: str) -> None:
    setup, saveset = taken
    path = archive_path(setup, saveset)
    if damage == "flipped byte":
        flip_byte(path, path.stat().st_size // 2)
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    result = setup.restorer.verify(saveset)
    assert not result.ok
    assert result.bad

    target = tmp_path / "target"
    target.mkdir()
    (target / "keep.txt").write_text("was here before")
    with pytest.raises(CorruptSaveset):
        setup.restorer.restore(saveset, target)
    # nothing half restored: the target is as it was
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]


def test_a_damaged_manifest_is_reported(taken: tuple[Setup, Saveset], tmp_path: Path) -> None:
    setup, saveset = taken
    path = archive_path(setup, saveset).with_name(MANIFEST)
    flip_byte(path, 20)
    assert not setup.restorer.verify(saveset).ok
    with pytest.raises(CorruptSaveset, match="manifest"):
        setup.restorer.restore(saveset, tmp_path / "target")


def test_an_intact_saveset_verifies(taken: tuple[Setup, Saveset]) -> None:
    setup, saveset = taken
    result = setup.restorer.verify(saveset)
    assert (result.ok, result.files, result.bad) == (True, 20, [])


def craft(setup: Setup, members: dict[str, bytes], entries: list[Entry],
          saveset_id: str = "crafted") -> Saveset:
    """Put a hand-made saveset into store a and the catalog, as an attacker with store access."""
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w", format=tarfile.PAX_FORMAT) as out:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
    archive = zstandard.ZstdCompressor().compress(tar.getvalue())
    manifest = Manifest(saveset_id, {e.path: e for e in entries})
    encoded = manifests.encode(manifest)
    record = Saveset(id=saveset_id, task="docs", pool="daily", data_store="a",
                     medium="DAILY00001", level=Level.FULL, run_id=None,
                     created_at=setup.clock.now, files=len(members), bytes=0,
                     archive_bytes=len(archive), archive_digest=digest_of(archive),
                     manifest_bytes=len(encoded), manifest_digest=digest_of(encoded))
    staging = setup.engine.stores["a"].stage(SavesetKey("daily", "DAILY00001", saveset_id), 0)
    for part, data in ((ARCHIVE, archive), (MANIFEST, encoded), (META, record.dumps().encode())):
        with staging.open(part) as out:
            out.write(data)
    staging.commit()
    setup.catalog.add(record, encoded)
    return record


def file_entry(path: str, data: bytes, holder: str = "crafted") -> Entry:
    return Entry(path, FILE, len(data), 0, 0, 0o644, digest_of(data), holder)


@pytest.mark.parametrize("chunk", [50_000, 1], ids=["in memory", "in chunks"])
@pytest.mark.parametrize(("members", "entries"), [
    ({"../evil": b"x"}, [file_entry("../evil", b"x")]),
    ({"/tmp/evil": b"x"}, [file_entry("/tmp/evil", b"x")]),
    ({"ok.txt": b"x", "../evil": b"x"}, [file_entry("ok.txt", b"x")]),
    ({"link/evil": b"x"}, [Entry("link", SYMLINK, 0, 0, 0, 0o777, target="/tmp"),
                           file_entry("link/evil", b"x")]),
    ({"link/evil": b"x"}, [file_entry("link/evil", b"x"),  # the path under it first
                           Entry("link", SYMLINK, 0, 0, 0, 0o777, target="/tmp")]),
    ({"a/../../evil": b"x"}, [Entry("a", DIR, 0, 0, 0, 0o755), file_entry("a/../../evil", b"x")]),
    ({"ok.txt": b"x"}, [file_entry("ok.txt", b"x"),
                        Entry("hard", HARDLINK, 0, 0, 0, 0o644, target="../../etc/passwd")]),
    ({"ok.txt": b"x"}, [Entry("hard", HARDLINK, 0, 0, 0, 0o644, target="dir"),
                        Entry("dir", DIR, 0, 0, 0, 0o755), file_entry("ok.txt", b"x")]),
])
def test_paths_that_would_land_outside_the_target_are_refused(
        setup: Setup, tmp_path: Path, members: dict[str, bytes], entries: list[Entry],
        chunk: int) -> None:
    saveset = craft(setup, members, entries)
    target = tmp_path / "deep" / "target"
    before = snapshot(tmp_path)
    restorer = Restorer(setup.catalog, setup.engine.stores,
                        jobs=dataclasses.replace(PARALLEL, restore_chunk=chunk))
    with pytest.raises(RestoreRefused):
        restorer.restore(saveset, target)
    assert not (tmp_path / "deep" / "evil").exists()
    assert not Path("/tmp/evil").exists()
    after = snapshot(tmp_path)
    assert {k for k in after if not k.startswith("deep")} == {
        k for k in before if not k.startswith("deep")}
    assert not target.exists() or list(target.iterdir()) == []


def test_a_link_already_in_the_target_is_replaced_not_followed(setup: Setup,
                                                               tmp_path: Path) -> None:
    (setup.source / "docs").mkdir()
    (setup.source / "docs" / "a.txt").write_text("restored")
    saveset = setup.backup(Level.FULL).saveset
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "target"
    target.mkdir()
    os.symlink(outside, target / "docs")
    setup.restorer.restore(saveset, target)
    assert list(outside.iterdir()) == []
    assert (target / "docs").is_dir() and not (target / "docs").is_symlink()
    assert (target / "docs" / "a.txt").read_text() == "restored"


def test_content_that_does_not_match_its_hash_is_refused(setup: Setup, tmp_path: Path) -> None:
    entry = file_entry("a.txt", b"what the manifest promises")
    saveset = craft(setup, {"a.txt": b"something else entirely!!!"}, [entry])
    with pytest.raises(CorruptSaveset, match="does not match its digest"):
        setup.restorer.restore(saveset, tmp_path / "target")
    assert not setup.restorer.verify(saveset).ok


@pytest.mark.parametrize("chunk", [50_000, 1], ids=["in memory", "in chunks"])
def test_a_hard_link_listed_before_its_file_is_made_once_the_file_is_there(
        setup: Setup, tmp_path: Path, chunk: int) -> None:
    saveset = craft(setup, {"ok.txt": b"x"}, [
        Entry("hard", HARDLINK, 0, 0, 0, 0o644, target="ok.txt"), file_entry("ok.txt", b"x")])
    restorer = Restorer(setup.catalog, setup.engine.stores,
                        jobs=dataclasses.replace(PARALLEL, restore_chunk=chunk))
    restorer.restore(saveset, tmp_path / "target")
    assert (tmp_path / "target" / "hard").stat().st_ino == (
        tmp_path / "target" / "ok.txt").stat().st_ino
