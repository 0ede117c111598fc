"""Follow-up jobs: ``kind: verify`` (restore-test a saveset) and ``kind: command`` (argv),
and the migration of a succeeded run's saveset."""

from __future__ import annotations

import os
import subprocess

from backstop.config import CommandEvent
from backstop.errors import BackstopError
from backstop.orchestration.catalog import RedisCatalog
from backstop.orchestration.ledger import Ledger
from backstop.runs import ErrorKind, MigrationOutcome, Run, RunEnd, RunError, RunState
from backstop.settings import Settings
from backstop.workers.engine import Engine
from backstop.workers.restore import Restorer


def parent_saveset(ledger: Ledger, run: Run) -> str | None:
    """The saveset of the occurrence that triggered this one (its succeeded run's)."""
    for earlier in ledger.runs_of(run.parent) if run.parent else []:
        if earlier.state is RunState.SUCCEEDED and earlier.saveset:
            return earlier.saveset
    return None


def verify_job(engine: Engine, ledger: Ledger, catalog: RedisCatalog, run: Run) -> RunEnd:
    saveset_id = parent_saveset(ledger, run)
    if saveset_id is None and run.task:
        newest = catalog.all(run.task)
        saveset_id = newest[-1].id if newest else None
    saveset = catalog.get(saveset_id) if saveset_id else None
    if saveset is None:
        return RunEnd.failed(ErrorKind.INTERNAL,
                             "no saveset to verify: the triggering occurrence made none")
    result = Restorer(catalog, engine.stores, engine.keyring).verify(saveset)
    if result.ok:
        return RunEnd(RunState.SUCCEEDED, saveset=saveset.id, files=result.files)
    bad = RunError(kind=ErrorKind.INTERNAL,
                   message=f"verify found {len(result.bad)} bad: " + ", ".join(result.bad[:5]))
    return RunEnd(RunState.FAILED, bad, saveset=saveset.id, files=result.files)


def command_job(settings: Settings, ledger: Ledger, run: Run) -> RunEnd:
    """Run the event's argv (never through a shell) in the config file's directory."""
    event = settings.config.event_named(run.event)
    assert isinstance(event, CommandEvent)
    # a follow-up is started just before its parent is settled: it carries the outcome
    parent_state = run.parent_state
    if parent_state is None and run.parent:
        found = ledger.occurrence(run.parent)
        parent_state = found.state if found else None
    env = dict(os.environ, BACKSTOP_OCCURRENCE=run.occurrence, BACKSTOP_EVENT=run.event,
               BACKSTOP_RUN_ID=run.run_id, BACKSTOP_PARENT_OCCURRENCE=run.parent or "",
               BACKSTOP_PARENT_STATE=parent_state or "",
               BACKSTOP_SAVESET=parent_saveset(ledger, run) or "")
    try:
        done = subprocess.run(event.argv, cwd=settings.base_dir, env=env, shell=False,
                              capture_output=True, timeout=event.timeout.total_seconds(),
                              check=False)
    except subprocess.TimeoutExpired:
        return RunEnd.failed(ErrorKind.TIMEOUT, f"{event.argv[0]} ran longer than {event.timeout}")
    except OSError as exc:
        return RunEnd.failed(ErrorKind.INTERNAL, f"cannot run {event.argv[0]}: {exc}")
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip()[-300:]
        return RunEnd.failed(ErrorKind.INTERNAL,
                             f"{event.argv[0]} exited with {done.returncode}: {tail}")
    return RunEnd(RunState.SUCCEEDED)


def migrate_job(engine: Engine, catalog: RedisCatalog, run: Run) -> MigrationOutcome:
    """Copy the run's saveset by its migration task, verify the copy, then catalog it."""
    assert run.saveset and run.migration_task
    try:
        copy, manifest = engine.migrate(run.saveset, run.migration_task, run.run_id)
        if catalog.get(copy.id) is None:
            result = Restorer(catalog, engine.stores, engine.keyring).verify(copy)
            if not result.ok:
                engine.stores[copy.data_store].delete(copy.key)
                return MigrationOutcome(state=RunState.FAILED, saveset=copy.id,
                                        bad=tuple(result.bad))
            catalog.add(copy, manifest)
    except BackstopError as exc:
        return MigrationOutcome(state=RunState.FAILED,
                                error=RunError(kind=ErrorKind.INTERNAL, message=str(exc)))
    return MigrationOutcome(state=RunState.SUCCEEDED, saveset=copy.id)
