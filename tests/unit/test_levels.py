"""The level policy of SPEC section 2, as a table of cases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backstop.config import Level
from backstop.workers.levels import LevelFacts, PastSaveset, decide_level

NOW = datetime(2026, 11, 24, 22, 0, tzinfo=UTC)
FULL = PastSaveset("full-1", NOW - timedelta(days=3), "store-a")
INC = PastSaveset("inc-2", NOW - timedelta(days=1), "store-b")

F, D, INCR, C = Level.FULL, Level.DIFF, Level.INC, Level.COPY


def facts(last_full: PastSaveset | None = FULL, last_backup: PastSaveset | None = INC,
          failed: bool = False, unavailable: frozenset[str] = frozenset()) -> LevelFacts:
    return LevelFacts(NOW, last_full, last_backup, failed, unavailable)


@pytest.mark.parametrize(("requested", "given", "enforce", "interval", "effective", "base"), [
    # requested level taken as is
    (F, facts(), False, None, F, None),
    (C, facts(), True, None, C, None),
    (D, facts(), False, None, D, "full-1"),
    (INCR, facts(), False, None, INCR, "inc-2"),
    # no successful FULL anywhere: DIFF/INC run as FULL, with or without Enforce FULL
    (INCR, facts(None, None), False, None, F, None),
    (D, facts(None, None), False, None, F, None),
    # Enforce FULL (a): the newest FULL attempt failed after the last successful FULL
    (INCR, facts(failed=True), True, None, F, None),
    (INCR, facts(failed=True), False, None, INCR, "inc-2"),
    # Enforce FULL (b): full_interval elapsed since the last successful FULL
    (D, facts(), True, timedelta(days=2), F, None),
    (D, facts(), True, timedelta(days=7), D, "full-1"),
    (D, facts(), False, timedelta(days=2), D, "full-1"),
    # Enforce FULL (c): the base lies in an unavailable store
    (INCR, facts(unavailable=frozenset({"store-b"})), True, None, F, None),
    (D, facts(unavailable=frozenset({"store-b"})), True, None, D, "full-1"),
    (D, facts(unavailable=frozenset({"store-a"})), True, None, F, None),
    (INCR, facts(unavailable=frozenset({"store-b"})), False, None, INCR, "inc-2"),
])
def test_level_decisions(requested: Level, given: LevelFacts, enforce: bool,
                         interval: timedelta | None, effective: Level, base: str | None) -> None:
    decision = decide_level(requested, given, enforce_full=enforce, full_interval=interval)
    assert (decision.effective, decision.base) == (effective, base)
    assert decision.requested is requested


@given(requested=st.sampled_from(list(Level)), enforce=st.booleans(), failed=st.booleans(),
       has_full=st.booleans(), days=st.integers(0, 30) | st.none())
def test_a_decision_is_never_weaker_than_what_was_asked_and_only_bases_on_existing_fulls(
        requested: Level, enforce: bool, failed: bool, has_full: bool, days: int | None) -> None:
    given_facts = facts(FULL if has_full else None, INC if has_full else None, failed)
    interval = timedelta(days=days) if days is not None else None
    decision = decide_level(requested, given_facts, enforce_full=enforce, full_interval=interval)
    if requested in (F, C):
        assert decision.effective is requested
    if decision.effective in (F, C):
        assert decision.base is None
    else:
        assert has_full and decision.base in ("full-1", "inc-2")
