"""Media of a pool: which medium the next saveset goes to, as a pure policy.

A medium is a fixed-size volume labelled ``POOLNAME00001``. A saveset goes to the current
medium (the one written last) while it has room; else to an empty medium (a new label while
the pool's media count allows), else to a medium whose savesets are all past retention and
needed by nothing (those are deleted first: the medium is recycled). Otherwise the pool has
no free media.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from backstop.config import MediaPool
from backstop.errors import Reason, StorageUnavailable
from backstop.model import Saveset


def label(pool: str, number: int) -> str:
    return f"{pool.upper()}{number:05d}"


@dataclass(frozen=True)
class MediumChoice:
    label: str
    # Bytes the saveset may take on this medium; None when media have no size.
    room_bytes: int | None
    # Savesets to delete before writing (recycling a medium).
    recycle: tuple[Saveset, ...] = ()


@dataclass(frozen=True)
class MediumState:
    label: str
    used_bytes: int
    savesets: tuple[Saveset, ...]
    free: bool


def media_states(pool: MediaPool, savesets: list[Saveset], keep: set[str]) -> list[MediumState]:
    """Every medium of the pool: the labels in use and, with a count, the unused ones too."""
    on: dict[str, list[Saveset]] = defaultdict(list)
    for s in savesets:
        on[s.medium].append(s)
    count = pool.media.count if pool.media else None
    labels = set(on) | {label(pool.name, n) for n in range(1, (count or 0) + 1)}
    return [MediumState(m, sum(s.stored_bytes for s in on[m]), tuple(on[m]),
                        free=all(s.id not in keep for s in on[m]))
            for m in sorted(labels)]


def choose_medium(pool: MediaPool, savesets: list[Saveset], estimate_bytes: int,
                  keep: Callable[[], set[str]]) -> MediumChoice:
    """``keep`` gives the ids that must stay; it is asked only when a medium would be
    recycled (it may look at every saveset)."""
    size = pool.media.size if pool.media else None
    count = pool.media.count if pool.media else None
    states = media_states(pool, savesets, set())
    if savesets:
        current = max(savesets, key=lambda s: s.created_at).medium
        used = next(st.used_bytes for st in states if st.label == current)
        if size is None or used + estimate_bytes <= size:
            return MediumChoice(current, None if size is None else size - used)
    if size is not None and estimate_bytes > size:
        raise StorageUnavailable(Reason.NO_FREE_MEDIA, f"pool {pool.name}: the saveset (about "
                                 f"{estimate_bytes} bytes) is larger than a medium ({size})")
    empty = [st for st in states if not st.savesets]
    if empty:
        return MediumChoice(empty[0].label, size)
    if count is None:
        highest = max((int(st.label[-5:]) for st in states), default=0)
        return MediumChoice(label(pool.name, highest + 1), size)
    states = media_states(pool, savesets, keep())
    recyclable = sorted((st for st in states if st.free),
                        key=lambda st: max(s.created_at for s in st.savesets))
    if recyclable:
        return MediumChoice(recyclable[0].label, size, recyclable[0].savesets)
    raise StorageUnavailable(Reason.NO_FREE_MEDIA, f"pool {pool.name}: all {count} media hold "
                             "savesets still within retention (or needed by one)")
