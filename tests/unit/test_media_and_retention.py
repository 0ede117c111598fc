"""Medium choice and retention, as tables of cases over plain savesets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from backstop.config import Level, Media, MediaPool
from backstop.errors import StorageUnavailable
from backstop.model import Saveset
from backstop.workers.media import choose_medium, label
from backstop.workers.retention import protected, purge_plan

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
MIB = 1 << 20


def saveset(sid: str, medium: str, age_days: float, level: Level = Level.FULL,
            size: int = MIB, task: str = "docs", needs: tuple[str, ...] = (),
            pool: str = "daily") -> Saveset:
    return Saveset(id=sid, task=task, pool=pool, data_store="a", medium=medium, level=level,
                   run_id=None, created_at=NOW - timedelta(days=age_days), files=1, bytes=size,
                   needs=needs, archive_bytes=size)


def pool(count: int | None = 2, size: int | None = 10 * MIB) -> MediaPool:
    media = Media(count=count, size=size) if (count or size) else None
    return MediaPool(name="daily", data_store="a", retention=timedelta(days=7), media=media)


def test_labels_are_the_pool_name_in_upper_case_and_five_digits() -> None:
    assert label("daily", 1) == "DAILY00001"
    assert label("weekly-b", 42) == "WEEKLY-B00042"


@pytest.mark.parametrize(("savesets", "count", "estimate", "expected"), [
    # first saveset: the first medium
    ([], 2, MIB, "DAILY00001"),
    # the current medium has room
    ([saveset("a", "DAILY00001", 1)], 2, MIB, "DAILY00001"),
    # the current medium is full: the next empty one
    ([saveset("a", "DAILY00001", 1, size=9 * MIB)], 2, 2 * MIB, "DAILY00002"),
    # no count: media are added as needed
    ([saveset("a", "DAILY00001", 1, size=9 * MIB)], None, 2 * MIB, "DAILY00002"),
    # all media used, but one holds only expired, unneeded savesets: it is recycled
    ([saveset("old", "DAILY00001", 30, size=9 * MIB), saveset("new", "DAILY00002", 1, size=9 * MIB),
      saveset("newest", "DAILY00002", 0.5)], 2, 2 * MIB, "DAILY00001"),
])
def test_medium_choice(savesets: list[Saveset], count: int | None, estimate: int,
                       expected: str) -> None:
    keep = protected(savesets, {"daily": timedelta(days=7)}, NOW)
    assert choose_medium(pool(count), savesets, estimate, lambda: keep).label == expected


def test_a_recycled_medium_names_the_savesets_to_delete_first() -> None:
    savesets = [saveset("old", "DAILY00001", 30, size=9 * MIB),
                saveset("new", "DAILY00002", 1, size=9 * MIB)]
    keep = protected(savesets, {"daily": timedelta(days=7)}, NOW)
    choice = choose_medium(pool(2), savesets, 2 * MIB, lambda: keep)
    assert [s.id for s in choice.recycle] == ["old"]


@pytest.mark.parametrize("savesets", [
    # every medium holds savesets within retention
    [saveset("a", "DAILY00001", 2, size=9 * MIB), saveset("b", "DAILY00002", 1, size=9 * MIB)],
    # the expired saveset is the base of a retained INC
    [saveset("a", "DAILY00001", 30, size=9 * MIB),
     saveset("b", "DAILY00002", 1, Level.INC, size=9 * MIB, needs=("a",))],
])
def test_no_free_media(savesets: list[Saveset]) -> None:
    keep = protected(savesets, {"daily": timedelta(days=7)}, NOW)
    with pytest.raises(StorageUnavailable) as caught:
        choose_medium(pool(2), savesets, 2 * MIB, lambda: keep)
    assert caught.value.reason == "no_free_media"


def test_a_saveset_larger_than_a_medium_has_no_medium() -> None:
    with pytest.raises(StorageUnavailable, match="larger than a medium"):
        choose_medium(pool(2), [], 11 * MIB, set)


def test_a_pool_without_media_settings_has_one_unbounded_medium() -> None:
    savesets = [saveset("a", "DAILY00001", 1, size=500 * MIB)]
    choice = choose_medium(pool(None, None), savesets, 900 * MIB, set)
    assert (choice.label, choice.room_bytes) == ("DAILY00001", None)


RETENTION = {"daily": timedelta(days=7)}


@pytest.mark.parametrize(("savesets", "purged"), [
    # within retention: kept
    ([saveset("f1", "M", 1)], []),
    # expired, but the task's newest FULL (the next DIFF's base): kept
    ([saveset("f1", "M", 30)], []),
    # expired and superseded by a newer FULL: purged
    ([saveset("f1", "M", 30), saveset("f2", "M", 1)], ["f1"]),
    # expired FULL that a retained INC restores from: kept
    ([saveset("f1", "M", 30), saveset("i1", "M", 1, Level.INC, needs=("f1",)),
      saveset("f2", "M", 0.5)], []),
    # a COPY is never a base: purged when expired
    ([saveset("c1", "M", 30, Level.COPY), saveset("f1", "M", 1)], ["c1"]),
    # expired chain whose INC is not needed any more: both go, oldest first
    ([saveset("f1", "M", 30), saveset("i1", "M", 29, Level.INC, needs=("f1",)),
      saveset("f2", "M", 1)], ["f1", "i1"]),
])
def test_purge_plan(savesets: list[Saveset], purged: list[str]) -> None:
    assert [s.id for s in purge_plan(savesets, RETENTION, NOW)] == purged
