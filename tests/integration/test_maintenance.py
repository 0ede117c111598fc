"""Purge, the pools report and catalog rebuild, over real stores and the real catalog."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta

import pytest

from backstop.config import Level
from backstop.constants import CATALOG_INDEX_KEY
from backstop.errors import StorageUnavailable
from backstop.workers.maintenance import pool_report, purge, rebuild
from tests.integration.conftest import ENGINE_CONFIG, Setup

MEDIA_CONFIG = ENGINE_CONFIG.replace(
    "{name: daily, data_store: a, retention: 14d}",
    "{name: daily, data_store: a, retention: 7d, media: {count: 2, size: 1MiB}}")


def change(setup: Setup, name: str, size: int = 300_000) -> None:
    (setup.source / name).write_bytes(os.urandom(size))


def ages(setup: Setup) -> list[str]:
    return [s.id for s in setup.catalog.all()]


def test_purge_deletes_what_is_past_retention_and_keeps_what_retained_savesets_need(
        setup: Setup) -> None:
    # Given: FULL (day 0), INC (day 1), FULL (day 20), INC (day 21), within a 14-day retention
    change(setup, "a")
    full1 = setup.backup(Level.FULL).saveset
    setup.clock.now += timedelta(days=1)
    change(setup, "b")
    inc1 = setup.backup(Level.INC).saveset
    setup.clock.now += timedelta(days=19)
    full2 = setup.backup(Level.FULL).saveset
    setup.clock.now += timedelta(days=1)
    change(setup, "c")
    inc2 = setup.backup(Level.INC).saveset
    # When purge runs on day 21: the first chain is past retention and needed by nothing
    dry = purge(setup.settings.config, setup.catalog, setup.engine.stores, setup.clock.now,
                dry_run=True)
    assert dry.deleted == [full1.id, inc1.id]
    assert ages(setup) == [full1.id, inc1.id, full2.id, inc2.id]  # a dry run deletes nothing
    done = purge(setup.settings.config, setup.catalog, setup.engine.stores, setup.clock.now)
    # Then only the second chain is left, in the catalog and in the store
    assert done.deleted == [full1.id, inc1.id]
    assert done.bytes == full1.stored_bytes + inc1.stored_bytes
    assert ages(setup) == [full2.id, inc2.id]
    assert {k.saveset_id for k in setup.engine.stores["a"].list()} == {full2.id, inc2.id}


def test_purge_never_deletes_the_base_of_a_retained_inc(setup: Setup) -> None:
    change(setup, "a")
    full = setup.backup(Level.FULL).saveset
    setup.clock.now += timedelta(days=13)
    change(setup, "b")
    inc = setup.backup(Level.INC).saveset
    setup.clock.now += timedelta(days=2)  # the FULL is past retention, the INC is not
    assert purge(setup.settings.config, setup.catalog, setup.engine.stores,
                 setup.clock.now).deleted == []
    assert ages(setup) == [full.id, inc.id]


def test_media_are_freed_by_retention_and_recycled(make_setup: Callable[..., Setup]) -> None:
    setup = make_setup(MEDIA_CONFIG)
    change(setup, "a", 700_000)
    first = setup.backup(Level.FULL).saveset
    setup.clock.now += timedelta(days=1)
    second = setup.backup(Level.FULL).saveset
    assert (first.medium, second.medium) == ("DAILY00001", "DAILY00002")
    report = {p["name"]: p for p in pool_report(setup.settings.config, setup.catalog,
                                                setup.engine.stores, setup.clock.now,
                                                lambda rds: True)}
    assert report["daily"]["media"] == {"count": 2, "free": 0, "size": 1 << 20}
    # the current medium still has room for a small saveset, not for another FULL
    assert report["daily"]["availability"] == "ok"
    assert report["daily"]["free_bytes"] == (1 << 20) - second.stored_bytes
    with pytest.raises(StorageUnavailable) as caught:
        setup.backup(Level.FULL)
    assert caught.value.reason == "no_free_media"
    # Once the first medium's saveset is past retention (and superseded), it is reused
    setup.clock.now += timedelta(days=10)
    third = setup.backup(Level.FULL).saveset
    assert third.medium == "DAILY00001"
    assert ages(setup) == [second.id, third.id]


def test_the_pools_report(setup: Setup) -> None:
    change(setup, "a")
    setup.backup(Level.FULL)
    lines = pool_report(setup.settings.config, setup.catalog, setup.engine.stores,
                        setup.clock.now, lambda rds: rds == "local")
    daily, spare = lines
    assert set(daily) >= {"name", "data_store", "rds", "availability", "used_bytes",
                          "free_bytes", "media"}
    assert (daily["name"], daily["data_store"], daily["rds"]) == ("daily", "a", "local")
    assert daily["availability"] == "ok"
    assert daily["used_bytes"] > 300_000
    assert daily["free_bytes"] > 0
    assert (spare["used_bytes"], spare["media"]) == (0, None)
    unreachable = pool_report(setup.settings.config, setup.catalog, setup.engine.stores,
                              setup.clock.now, lambda rds: False)
    assert {p["availability"] for p in unreachable} == {"rds_unreachable"}


def test_the_catalog_is_rebuilt_from_the_stores_alone(setup: Setup) -> None:
    change(setup, "a")
    full = setup.backup(Level.FULL).saveset
    setup.clock.now += timedelta(hours=1)
    change(setup, "b")
    inc = setup.backup(Level.INC).saveset
    before = setup.catalog.all()
    # Given a catalog that was lost
    for s in before:
        setup.catalog.remove(s)
    assert setup.catalog.client.zcard(CATALOG_INDEX_KEY) == 0
    # When it is rebuilt
    result = rebuild(setup.catalog, setup.engine.stores)
    # Then every saveset is back, the next INC still finds its base
    assert result.added == 2
    assert setup.catalog.all() == before
    setup.clock.now += timedelta(hours=1)
    change(setup, "c")
    assert setup.backup(Level.INC).saveset.based_on == inc.id
    assert full.id in {s.id for s in setup.catalog.all()}


def test_rebuild_drops_entries_whose_saveset_is_gone(setup: Setup) -> None:
    change(setup, "a")
    saveset = setup.backup(Level.FULL).saveset
    setup.engine.stores["a"].delete(saveset.key)
    assert rebuild(setup.catalog, setup.engine.stores).removed == 1
    assert setup.catalog.all() == []
