"""Backups and restores of real trees: every level, chains, excludes, deletions, rules."""

from __future__ import annotations

import os
import shutil
from datetime import timedelta
from pathlib import Path

import pytest

from backstop.config import Level
from backstop.errors import SourceError, StorageUnavailable
from backstop.workers.store import MARKER
from tests.integration.conftest import Setup, snapshot


def excluded(rel: str) -> bool:
    return rel.endswith(".tmp") or rel == "cache" or rel.startswith("cache/")


def make_tree(src: Path) -> None:
    (src / "docs" / "deep" / "er").mkdir(parents=True)
    (src / "cache").mkdir()
    (src / "docs" / "a.txt").write_text("alpha\n" * 100)
    (src / "docs" / "deep" / "er" / "b.bin").write_bytes(os.urandom(70_000))
    (src / "docs" / "notes.tmp").write_text("scratch")
    (src / "cache" / "blob").write_bytes(b"cached")
    (src / "script.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(src / "script.sh", 0o750)
    os.symlink("docs/a.txt", src / "latest")
    (src / "empty").mkdir()


def test_a_chain_restores_bit_exact_at_every_point(setup: Setup, tmp_path: Path) -> None:
    src = setup.source
    make_tree(src)
    expected = {}

    def take(level: Level) -> str:
        setup.clock.now += timedelta(hours=1)
        saveset = setup.backup(level).saveset
        expected[saveset.id] = snapshot(src, excluded)
        return saveset.id

    full = take(Level.FULL)
    (src / "docs" / "a.txt").write_text("alpha changed\n")
    (src / "docs" / "new.txt").write_text("new file")
    os.remove(src / "docs" / "deep" / "er" / "b.bin")
    inc = take(Level.INC)
    os.symlink("/etc/hostname", src / "outside-link")
    os.chmod(src / "script.sh", 0o700)
    (src / "docs" / "deep" / "er" / "b.bin").write_bytes(os.urandom(1000))
    diff = take(Level.DIFF)
    shutil.rmtree(src / "docs" / "deep")
    copy = take(Level.COPY)
    (src / "late.txt").write_text("after the copy")
    inc2 = take(Level.INC)

    for saveset_id, tree in expected.items():
        target = tmp_path / "restored" / saveset_id
        saveset = setup.catalog.get(saveset_id)
        assert saveset is not None
        setup.restorer.restore(saveset, target)
        assert snapshot(target) == tree, saveset_id
        assert setup.restorer.verify(saveset).ok

    records = {i: setup.catalog.get(i) for i in (full, inc, diff, copy, inc2)}
    assert records[inc].based_on == full  # type: ignore[union-attr]
    assert records[diff].based_on == full  # type: ignore[union-attr]
    assert records[copy].based_on is None  # type: ignore[union-attr]
    assert records[inc2].based_on == diff  # type: ignore[union-attr]  # COPY is never a base


def test_files_and_bytes_count_stored_contents_only(setup: Setup) -> None:
    make_tree(setup.source)
    full = setup.backup(Level.FULL).saveset
    assert full.files == 3  # a.txt, b.bin, script.sh: excludes and non-files do not count
    assert full.bytes == 600 + 70_000 + len("#!/bin/sh\necho hi\n")
    setup.clock.now += timedelta(minutes=5)
    unchanged = setup.backup(Level.INC).saveset
    assert (unchanged.level, unchanged.files, unchanged.bytes) == (Level.INC, 0, 0)
    os.remove(setup.source / "docs" / "a.txt")
    setup.clock.now += timedelta(minutes=5)
    deletion = setup.backup(Level.INC).saveset
    assert (deletion.files, deletion.bytes) == (0, 0)


def test_inc_without_any_full_runs_as_full_and_records_both_levels(setup: Setup) -> None:
    make_tree(setup.source)
    result = setup.backup(Level.INC)
    assert (result.decision.requested, result.decision.effective) == (Level.INC, Level.FULL)
    assert result.saveset.level is Level.FULL


def test_a_run_tried_again_with_its_saveset_id_gets_the_same_saveset(setup: Setup) -> None:
    make_tree(setup.source)
    first = setup.backup(Level.FULL, saveset_id="docs-run-1").saveset
    again = setup.backup(Level.FULL, saveset_id="docs-run-1").saveset
    assert first == again
    assert len(setup.catalog.all()) == 1
    assert len(setup.engine.stores["a"].list()) == 1


def test_a_missing_source_is_a_source_error_and_stores_nothing(setup: Setup) -> None:
    shutil.rmtree(setup.source)
    with pytest.raises(SourceError, match="missing"):
        setup.backup(Level.FULL)
    assert setup.catalog.all() == []
    assert setup.engine.stores["a"].list() == []


def test_enforce_full_after_a_failed_full_attempt(setup: Setup) -> None:
    make_tree(setup.source)
    setup.backup(Level.FULL)
    # Given a FULL attempt that fails for want of space in its store
    marker = setup.engine.stores["a"].root / MARKER  # type: ignore[attr-defined]
    good = marker.read_text()
    marker.write_text('{"store": "someone-else"}')
    setup.clock.now += timedelta(hours=1)
    with pytest.raises(StorageUnavailable):
        setup.backup(Level.FULL)
    marker.write_text(good)
    # When an INC with Enforce FULL runs, it runs as FULL; without Enforce FULL it stays INC
    setup.clock.now += timedelta(hours=1)
    assert setup.backup(Level.INC).saveset.level is Level.INC
    setup.clock.now += timedelta(hours=1)
    assert setup.backup(Level.INC, enforce_full=True).saveset.level is Level.FULL


def test_enforce_full_when_the_last_full_is_older_than_full_interval(setup: Setup) -> None:
    make_tree(setup.source)
    setup.backup(Level.FULL)
    setup.clock.now += timedelta(days=2)
    assert setup.backup(Level.DIFF, enforce_full=True,
                        full_interval=timedelta(days=3)).saveset.level is Level.DIFF
    setup.clock.now += timedelta(days=2)
    assert setup.backup(Level.DIFF, enforce_full=True,
                        full_interval=timedelta(days=3)).saveset.level is Level.FULL


def test_an_inc_whose_base_store_is_offline(setup: Setup, tmp_path: Path) -> None:
    # Given a FULL in store a, which then goes offline (its disk is not mounted)
    make_tree(setup.source)
    full = setup.backup(Level.FULL).saveset
    store_a = setup.engine.stores["a"].root  # type: ignore[attr-defined]
    store_a.rename(tmp_path / "unmounted")
    (setup.source / "docs" / "a.txt").write_text("changed while a was away")
    # When an INC runs into pool spare (store b) without Enforce FULL,
    # Then it is an INC against the FULL, from the manifest the catalog keeps
    setup.clock.now += timedelta(hours=1)
    inc = setup.backup(Level.INC, pool="spare").saveset
    assert (inc.level, inc.based_on, inc.files) == (Level.INC, full.id, 1)
    # And a DIFF with Enforce FULL is a FULL, since its base (the FULL) lies in store a
    setup.clock.now += timedelta(hours=1)
    enforced = setup.backup(Level.DIFF, pool="spare", enforce_full=True).saveset
    assert enforced.level is Level.FULL
    # And once store a is back, the INC restores exactly
    (tmp_path / "unmounted").rename(store_a)
    setup.restorer.restore(inc, tmp_path / "back")
    assert snapshot(tmp_path / "back") == snapshot(setup.source, excluded)


def test_an_inc_against_a_base_manifest_in_another_order_stores_nothing_unchanged(
        setup: Setup) -> None:
    """The plan walks the source and the base's manifest side by side; a base whose rows
    are in another order (not written by this engine) is sorted first, not misread."""
    import random

    from backstop.workers import manifest as manifests

    make_tree(setup.source)
    full = setup.backup(Level.FULL).saveset
    held = manifests.decode(setup.catalog.manifest(full.id) or b"", full.id)
    shuffled = list(held.entries.items())
    random.Random(3).shuffle(shuffled)
    held.entries = dict(shuffled)
    setup.catalog.add(full, manifests.encode(held))
    (setup.source / "docs" / "new.txt").write_text("new")
    setup.clock.now += timedelta(hours=1)
    inc = setup.backup(Level.INC).saveset
    assert (inc.files, inc.based_on) == (1, full.id)  # new.txt only
    restored = setup.root / "restored"
    setup.restorer.restore(inc, restored)
    assert snapshot(restored) == snapshot(setup.source, excluded)


def test_an_inc_manifest_keeps_walk_order_around_the_files_it_stores(setup: Setup) -> None:
    """Rows before the first file to store go into the manifest at once, the rest through
    the spool; the manifest is in walk order either way (the next INC reads it so)."""
    from backstop.workers import manifest as manifests

    make_tree(setup.source)
    (setup.source / "zz").mkdir()
    (setup.source / "zz" / "last.txt").write_text("last")
    full = setup.backup(Level.FULL).saveset
    (setup.source / "docs" / "deep" / "er" / "b.bin").write_bytes(b"changed")  # mid-walk
    setup.clock.now += timedelta(hours=1)
    inc = setup.backup(Level.INC).saveset
    assert (inc.files, inc.based_on) == (1, full.id)
    paths = [row[1] for row, _ in manifests.rows(setup.catalog.manifest(inc.id) or b"",
                                                 inc.id)]
    assert paths == sorted(paths, key=manifests.order_key)
    assert {"docs/a.txt", "docs/deep/er/b.bin", "zz/last.txt"} <= set(paths)
    restored = setup.root / "restored"
    setup.restorer.restore(inc, restored)
    assert snapshot(restored) == snapshot(setup.source, excluded)
