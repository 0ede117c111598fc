"""Follow-up jobs: ``kind: verify`` (restore-test a saveset) and ``kind: command`` (argv)."""

from __future__ import annotations

import os
import subprocess
from typing import Any

from orchestration.config import CommandEvent
from orchestration.ledger import Ledger
from orchestration.settings import Settings
from workers.catalog import Catalog
from workers.engine import Engine
from workers.restore import Restorer
from workers.runner import failed


def parent_saveset(ledger: Ledger, run: dict[str, Any]) -> str | None:
    """The saveset of the occurrence that triggered this one (its succeeded run's)."""
    parent = run.get("parent")
    for earlier in ledger.runs_of(parent) if parent else []:
        if earlier["state"] == "succeeded" and earlier.get("saveset"):
            return str(earlier["saveset"])
    return None


def verify_job(engine: Engine, ledger: Ledger, catalog: Catalog, run: dict[str, Any]
               ) -> dict[str, Any]:
    saveset_id = parent_saveset(ledger, run)
    if saveset_id is None and run.get("task"):
        newest = catalog.all(run["task"])
        saveset_id = newest[-1].id if newest else None
    saveset = catalog.get(saveset_id) if saveset_id else None
    if saveset is None:
        return failed("internal", "no saveset to verify: the triggering occurrence made none")
    result = Restorer(catalog, engine.stores).verify(saveset)
    fields: dict[str, Any] = {"saveset": saveset.id, "files": result.files, "bytes": None}
    if result.ok:
        return {"state": "succeeded", **fields}
    return {**failed("internal", f"verify found {len(result.bad)} bad: "
                                 + ", ".join(result.bad[:5])), **fields}


def command_job(settings: Settings, ledger: Ledger, run: dict[str, Any]) -> dict[str, Any]:
    """Run the event's argv (never through a shell) in the config file's directory."""
    event = next(e for e in settings.config.events if e.name == run["event"])
    assert isinstance(event, CommandEvent)
    # a follow-up is started just before its parent is settled: it carries the outcome
    parent_state = run.get("parent_state")
    if parent_state is None and run.get("parent"):
        parent_state = (ledger.occurrence(run["parent"]) or {}).get("state")
    env = dict(os.environ, BACKSTOP_OCCURRENCE=run["occurrence"], BACKSTOP_EVENT=run["event"],
               BACKSTOP_RUN_ID=run["run_id"], BACKSTOP_PARENT_OCCURRENCE=run.get("parent") or "",
               BACKSTOP_PARENT_STATE=parent_state or "",
               BACKSTOP_SAVESET=parent_saveset(ledger, run) or "")
    try:
        done = subprocess.run(event.argv, cwd=settings.base_dir, env=env, shell=False,
                              capture_output=True, timeout=event.timeout.total_seconds(),
                              check=False)
    except subprocess.TimeoutExpired:
        return failed("timeout", f"{event.argv[0]} ran longer than {event.timeout}")
    except OSError as exc:
        return failed("internal", f"cannot run {event.argv[0]}: {exc}")
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip()[-300:]
        return failed("internal", f"{event.argv[0]} exited with {done.returncode}: {tail}")
    return {"state": "succeeded"}



def migrate_job(engine: Engine, catalog: Catalog, run: dict[str, Any]) -> dict[str, Any]:
    """Copy the run's saveset by its migration task, verify the copy, then catalog it."""
    copy, manifest = engine.migrate(run["saveset"], run["migration_task"], run["run_id"])
    if catalog.get(copy.id) is None:
        result = Restorer(catalog, engine.stores).verify(copy)
        if not result.ok:
            engine.stores[copy.data_store].delete(copy.key)
            return {"state": "failed", "saveset": copy.id, "bad": result.bad}
        catalog.add(copy, manifest)
    return {"state": "succeeded", "saveset": copy.id}
