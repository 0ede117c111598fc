"""Retention (SPEC section 1 and ``backstop purge``): which savesets may go, as a pure policy.

A saveset is past retention once its pool's retention has run out. It may be deleted only
if nothing still needs it: no retained saveset restores content from it, and it is not a
possible base of the next DIFF/INC of its task (nor does such a base need it).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from backstop.config import Level
from backstop.model import Saveset
from backstop.workers.levels import BASE_LEVELS


def past_retention(saveset: Saveset, retention: timedelta, now: datetime) -> bool:
    return saveset.created_at + retention <= now


def base_candidates(savesets: Iterable[Saveset]) -> set[str]:
    """Per task: the newest FULL and the newest FULL/DIFF/INC."""
    newest: dict[tuple[str, bool], Saveset] = {}
    for s in sorted(savesets, key=lambda s: s.created_at):
        if s.level in BASE_LEVELS:
            newest[(s.task, True)] = s
            if s.level is Level.FULL:
                newest[(s.task, False)] = s
    return {s.id for s in newest.values()}


def protected(savesets: list[Saveset], retention: dict[str, timedelta],
              now: datetime) -> set[str]:
    """Ids that must stay: retained savesets, base candidates, and what either needs."""
    keep = {s.id for s in savesets if not past_retention(s, retention[s.pool], now)}
    keep |= base_candidates(savesets)
    by_id = {s.id: s for s in savesets}
    return keep | {n for i in keep if i in by_id for n in by_id[i].needs}


def purge_plan(savesets: list[Saveset], retention: dict[str, timedelta],
               now: datetime) -> list[Saveset]:
    """The savesets purge deletes, oldest first."""
    keep = protected(savesets, retention, now)
    return sorted((s for s in savesets if s.id not in keep), key=lambda s: s.created_at)
