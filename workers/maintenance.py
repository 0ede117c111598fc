"""Pool reports, purge and catalog rebuild: operations over every store of a config."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from backstop.config import Config, MediaPool
from backstop.errors import CorruptSaveset, Reason, StorageError, StorageUnavailable
from backstop.model import Saveset, Space
from backstop.workers.catalog import Catalog
from backstop.workers.engine import read_committed
from backstop.workers.media import media_states
from backstop.workers.retention import protected, purge_plan
from backstop.workers.store import Store


@dataclass
class PurgeResult:
    dry_run: bool
    deleted: list[str] = field(default_factory=list)
    bytes: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)


def purge(config: Config, catalog: Catalog, stores: Mapping[str, Store], now: datetime,
          dry_run: bool = False) -> PurgeResult:
    """Delete savesets past retention that nothing needs; a store that fails is skipped."""
    retention = {p.name: p.retention for p in config.media_pools}
    result = PurgeResult(dry_run)
    for saveset in purge_plan(catalog.all(), retention, now):
        if not dry_run:
            try:
                stores[saveset.data_store].delete(saveset.key)
            except StorageError as exc:
                result.skipped.append({"id": saveset.id, "error": str(exc)})
                continue
            catalog.remove(saveset)
        result.deleted.append(saveset.id)
        result.bytes += saveset.stored_bytes
    return result


def pool_report(config: Config, catalog: Catalog, stores: Mapping[str, Store], now: datetime,
                rds_live: Callable[[str], bool]) -> list[dict[str, Any]]:
    """SPEC section 7 ``pools --json``: store, RDS, availability, used/free bytes, media."""
    everything = catalog.all()
    retention = {p.name: p.retention for p in config.media_pools}
    keep = protected(everything, retention, now)
    space: dict[str, Space | StorageUnavailable] = {}
    for store in config.data_stores:
        try:
            space[store.name] = stores[store.name].space()
        except StorageUnavailable as exc:
            space[store.name] = exc
    return [_pool_line(config, pool, [s for s in everything if s.pool == pool.name], keep,
                       space[pool.data_store], rds_live) for pool in config.media_pools]


def _pool_line(config: Config, pool: MediaPool, savesets: list[Saveset], keep: set[str],
               space: Space | StorageUnavailable,
               rds_live: Callable[[str], bool]) -> dict[str, Any]:
    _, rds = config.storage_of(pool.name)
    free = space.free_bytes if isinstance(space, Space) else 0
    media, media_full = None, False
    if pool.media is not None:
        states = media_states(pool, savesets, keep)
        media = {"count": pool.media.count, "free": sum(st.free for st in states),
                 "size": pool.media.size}
        if pool.media.count and pool.media.size:
            current = max(savesets, key=lambda s: s.created_at).medium if savesets else None
            room = sum(pool.media.size if st.free else pool.media.size - st.used_bytes
                       for st in states if st.free or st.label == current)
            media_full = room <= 0
            free = min(free, room)
    if not rds_live(rds):
        availability = Reason.RDS_UNREACHABLE.value
    elif isinstance(space, StorageUnavailable):
        availability = space.reason.value
    elif media_full:
        availability = Reason.NO_FREE_MEDIA.value
    else:
        availability = "ok" if free > 0 else Reason.OUT_OF_SPACE.value
    return {
        "name": pool.name, "data_store": pool.data_store, "rds": rds,
        "availability": availability, "used_bytes": sum(s.stored_bytes for s in savesets),
        "free_bytes": max(0, free), "media": media,
    }


@dataclass
class RebuildResult:
    added: int = 0
    removed: int = 0
    stores: list[dict[str, Any]] = field(default_factory=list)


def rebuild(catalog: Catalog, stores: Mapping[str, Store]) -> RebuildResult:
    """Recreate the catalog from the stores; entries of unreadable stores are left alone."""
    result = RebuildResult()
    for name, store in stores.items():
        try:
            keys = store.list()
        except StorageUnavailable as exc:
            result.stores.append({"name": name, "error": str(exc)})
            continue
        found = set()
        for key in keys:
            try:
                saveset, manifest = read_committed(store, key)
            except (CorruptSaveset, StorageError, ValueError, KeyError) as exc:
                result.stores.append({"name": name, "saveset": key.saveset_id,
                                      "error": str(exc)})
                continue
            found.add(saveset.id)
            catalog.add(saveset, manifest)
            result.added += 1
        for stale in [s for s in catalog.all() if s.data_store == name and s.id not in found]:
            catalog.remove(stale)
            result.removed += 1
        result.stores.append({"name": name, "savesets": len(found)})
    return result

