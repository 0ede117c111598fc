"""The run ledger keeps its history by age, and finds runs through its indexes (SPEC §10)."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from rich.console import Console

from backstop.errors import Reason
from backstop.orchestration.cli import main
from backstop.orchestration.cli_runs import print_runs
from backstop.orchestration.ledger import Ledger
from backstop.runs import ErrorKind, OccurrenceState, Run, RunEnd, RunError, RunState, Trigger

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def add(ledger: Ledger, run_id: str, task: str, age: timedelta, state: RunState,
        event: str | None = None) -> Run:
    """An occurrence with one run of ``task`` queued ``age`` before NOW, ended in ``state``
    (left queued when ``state`` is queued), settled when it ended."""
    event = event or f"{task}-nightly"
    run = Run(run_id=run_id, occurrence=f"{event}@{run_id}", event=event, origin_event=event,
              trigger=Trigger.SCHEDULE, task=task, queued_at=NOW - age)
    assert ledger.open_occurrence(run.occurrence, event, Trigger.SCHEDULE, run)
    if state is not RunState.QUEUED:
        error = (RunError(kind=ErrorKind.STORAGE_UNAVAILABLE, reason=Reason.OUT_OF_SPACE,
                          message="data store a: 0 bytes free")
                 if state is RunState.STORAGE_UNAVAILABLE else None)
        assert ledger.finish(run_id, RunEnd(state=state, error=error, bytes=1000)) == "done"
        settled = (OccurrenceState.SUCCEEDED if state is RunState.SUCCEEDED
                   else OccurrenceState.FAILED)
        assert ledger.settle(run.occurrence, settled)
    return run


def test_ended_runs_past_history_leave_the_ledger_with_every_key_of_theirs(
        redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client, history=timedelta(days=90))
    # Given runs inside and past the 90 days, ended and not
    add(ledger, "old-ok", "docs", timedelta(days=91), RunState.SUCCEEDED)
    add(ledger, "old-failed", "www", timedelta(days=200), RunState.STORAGE_UNAVAILABLE)
    add(ledger, "old-stuck", "docs", timedelta(days=95), RunState.QUEUED)
    add(ledger, "young", "docs", timedelta(days=89), RunState.SUCCEEDED)
    # When the ledger forgets what is past its history
    assert ledger.forget_past_history(NOW) == 2
    # Then the ended old runs are gone, from every index, with their occurrences
    assert ledger.run("old-ok") is None and ledger.run("old-failed") is None
    assert ledger.occurrence("docs-nightly@old-ok") is None
    assert {r.run_id for r in ledger.query(limit=100)} == {"old-stuck", "young"}
    assert [r.run_id for r in ledger.query(task="www")] == []
    assert ledger.query(state=RunState.STORAGE_UNAVAILABLE) == []
    left = {k.decode() for k in redis_client.keys("*")}
    assert not any("old-ok" in k or "old-failed" in k for k in left), left
    # And a run still queued stays whatever its age (the watchdog's to end), as does the young
    assert ledger.run("old-stuck") is not None and ledger.run("young") is not None
    # And a second pass finds nothing more to forget
    assert ledger.forget_past_history(NOW) == 0


def test_forgetting_goes_past_old_runs_that_are_still_active(
        redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client, history=timedelta(days=1))
    for i in range(7):
        add(ledger, f"stuck-{i}", "docs", timedelta(days=30, minutes=i), RunState.QUEUED)
    for i in range(5):
        add(ledger, f"done-{i}", "docs", timedelta(days=20, minutes=i), RunState.SUCCEEDED)
    # a batch of 3 at a time: the first batch holds only runs that must stay
    import backstop.orchestration.ledger as module
    batch = module.HISTORY_SWEEP_BATCH
    module.HISTORY_SWEEP_BATCH = 3
    try:
        assert ledger.forget_past_history(NOW) == 5
    finally:
        module.HISTORY_SWEEP_BATCH = batch
    assert len(ledger.query(limit=100)) == 7


def test_runs_are_found_by_task_state_event_and_time(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    add(ledger, "d1", "docs", timedelta(hours=30), RunState.SUCCEEDED)
    add(ledger, "d2", "docs", timedelta(hours=5), RunState.STORAGE_UNAVAILABLE)
    add(ledger, "d3", "docs", timedelta(hours=1), RunState.QUEUED)
    add(ledger, "w1", "www", timedelta(hours=2), RunState.SUCCEEDED, event="www-hourly")
    add(ledger, "w2", "www", timedelta(hours=40), RunState.FAILED, event="www-hourly")

    def ids(**filters: object) -> list[str]:
        return [r.run_id for r in ledger.query(**filters)]  # type: ignore[arg-type]

    assert ids() == ["d3", "w1", "d2", "d1", "w2"]  # newest first
    assert ids(task="docs") == ["d3", "d2", "d1"]
    assert ids(state=RunState.SUCCEEDED) == ["w1", "d1"]
    assert ids(state=RunState.QUEUED) == ["d3"]
    assert ids(state=RunState.STORAGE_UNAVAILABLE, task="docs") == ["d2"]
    assert ids(event="www-hourly", state=RunState.FAILED) == ["w2"]
    assert ids(since=NOW - timedelta(hours=24)) == ["d3", "w1", "d2"]
    assert ids(task="www", since=NOW - timedelta(hours=24)) == ["w1"]
    assert ids(limit=2) == ["d3", "w1"]
    assert ids(task="nope") == []


def test_the_runs_command_filters_and_its_table_fits_80_columns(
        redis_client: redis.Redis, settings_file: Path) -> None:
    ledger = Ledger(redis_client)
    add(ledger, "0123456789abcdef", "docs", timedelta(hours=1), RunState.STORAGE_UNAVAILABLE,
        event="docs-nightly-with-a-rather-long-event-name")
    add(ledger, "fedcba9876543210", "www", timedelta(hours=2), RunState.SUCCEEDED)
    runner = CliRunner()
    done = runner.invoke(main, ["runs", "-c", str(settings_file), "--task", "docs",
                                "--state", "storage_unavailable", "--since", "1000d", "--json"])
    assert done.exit_code == 0, done.output
    assert '"run_id": "0123456789abcdef"' in done.output and "fedcba" not in done.output
    bad = runner.invoke(main, ["runs", "-c", str(settings_file), "--since", "yesterday"])
    assert bad.exit_code == 2 and "'yesterday' is neither a duration" in bad.output
    # The table, as a pipe or an 80-column terminal shows it
    console = Console(width=80, record=True, file=io.StringIO())
    print_runs(ledger.query(limit=10), console)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80, text
    assert "0123456789abcdef" in text and "fedcba9876543210" in text
    assert "out_of_space" in text.replace("\n", "").replace(" ", ""), text


@pytest.fixture
def settings_file(tmp_path: Path, broker_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BACKSTOP_BROKER_URL", broker_url)
    path = tmp_path / "backstop.yaml"
    path.write_text("rds: [{name: local}]\n")
    return path
