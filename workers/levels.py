"""The level policy of SPEC section 2: which level a run really takes, and against what base.

Pure: takes the facts (including the current time) and returns a decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from backstop.config import Level

# Levels a DIFF/INC may be based on: a COPY never is.
BASE_LEVELS = (Level.FULL, Level.DIFF, Level.INC)


@dataclass(frozen=True)
class PastSaveset:
    id: str
    created_at: datetime
    data_store: str


@dataclass(frozen=True)
class LevelFacts:
    now: datetime
    # The task's newest successful FULL, and its newest successful FULL/DIFF/INC (COPY is
    # never a base), anywhere in the catalog.
    last_full: PastSaveset | None
    last_backup: PastSaveset | None
    # The task's newest FULL attempt failed after its last successful FULL.
    full_attempt_failed: bool = False
    # Data stores that cannot be read or written right now.
    unavailable_stores: frozenset[str] = frozenset()


@dataclass(frozen=True)
class LevelDecision:
    requested: Level
    effective: Level
    base: str | None
    reason: str


def decide_level(requested: Level, facts: LevelFacts, *, enforce_full: bool = False,
                 full_interval: timedelta | None = None) -> LevelDecision:
    if requested in (Level.FULL, Level.COPY):
        return LevelDecision(requested, requested, None, "as requested")
    if facts.last_full is None:
        return LevelDecision(requested, Level.FULL, None, "no successful FULL of the task yet")
    base = facts.last_full if requested is Level.DIFF else facts.last_backup or facts.last_full
    if enforce_full:
        reason = _enforced_full_reason(base, facts, full_interval)
        if reason:
            return LevelDecision(requested, Level.FULL, None, f"Enforce FULL: {reason}")
    return LevelDecision(requested, requested, base.id, f"based on {base.id}")


def _enforced_full_reason(base: PastSaveset, facts: LevelFacts,
                          full_interval: timedelta | None) -> str | None:
    assert facts.last_full is not None
    if facts.full_attempt_failed:
        return "the newest FULL attempt failed"
    if full_interval is not None and facts.now - facts.last_full.created_at > full_interval:
        return f"the last FULL is older than {full_interval}"
    if base.data_store in facts.unavailable_stores:
        return f"the base {base.id} lies in unavailable data store {base.data_store}"
    return None
