"""What must hold after any fault, read back the way an operator reads it: through
``backstop runs --json``, ``backstop savesets --json``, ``verify`` and ``restore``.

- every accepted occurrence reached one terminal state (none of its runs is still queued or
  running, and it has exactly one run of its own);
- at most one failover run per occurrence, started by a run that ended storage_unavailable;
- at most one saveset per run, exactly one for a backup run that succeeded, none otherwise;
- no partial file in any store;
- every succeeded saveset verifies, and restores bit-exact to its task's source.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import stat
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from backstop.orchestration.cli import main
from backstop.runs import TERMINAL
from backstop.settings import load_settings


@dataclass
class Audit:
    """What the checks saw: the numbers a soak report prints."""

    occurrences: int = 0
    runs: int = 0
    savesets: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    failovers: Counter[str] = field(default_factory=Counter)
    verified: int = 0
    restored: int = 0
    recycled: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        return self.lost + self.duplicated + self.broken

    @property
    def ok(self) -> bool:
        return not self.problems


def cli_json(config: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    """Run a backstop command in this process and parse its JSON output."""
    result = CliRunner().invoke(main, [*args, "-c", str(config), "--json"], env=env,
                                catch_exceptions=False)
    if result.exit_code not in (0, 1):
        raise AssertionError(f"backstop {' '.join(args)} exited {result.exit_code}: "
                             f"{result.output}")
    return json.loads(result.stdout)


def tree(root: Path) -> dict[str, tuple[str, int, str]]:
    """Every entry under ``root``: kind, permission bits and content (or link) digest."""
    entries: dict[str, tuple[str, int, str]] = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            entries[relative] = ("link", 0, os.readlink(path))
        elif stat.S_ISDIR(info.st_mode):
            entries[relative] = ("dir", stat.S_IMODE(info.st_mode), "")
        else:
            digest = hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
            entries[relative] = ("file", stat.S_IMODE(info.st_mode), digest)
    return entries


def audit(config: Path, accepted: Iterable[str] = (), *, env: dict[str, str] | None = None,
          restore_at_most: int | None = None, sources_unchanged: bool = True,
          recycling_pools: Iterable[str] = ()) -> Audit:
    """Check every invariant; ``accepted`` are occurrences that must be in the ledger.

    In ``recycling_pools`` (media recycled once past retention) a succeeded run's saveset
    may be gone from the catalog by now: counted as ``recycled``, not lost.

    Restores all succeeded savesets, or a random ``restore_at_most`` of them; a restore is
    compared with the task's source as it is now, so only when ``sources_unchanged`` and the
    task excludes nothing.
    """
    found = Audit()
    runs: list[dict[str, Any]] = cli_json(config, "runs", "--limit", "1000000", env=env)
    savesets: list[dict[str, Any]] = cli_json(config, "savesets", env=env)
    found.runs, found.savesets = len(runs), len(savesets)
    by_occurrence: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        by_occurrence[run["occurrence"]].append(run)
    found.occurrences = len(by_occurrence)
    for occurrence in set(accepted) - by_occurrence.keys():
        found.lost.append(f"occurrence {occurrence} was accepted but has no run")
    by_id = {run["run_id"]: run for run in runs}
    for occurrence, its_runs in by_occurrence.items():
        _check_occurrence(occurrence, its_runs, by_id, found)
    _check_savesets(runs, savesets, set(recycling_pools), found)
    settings = load_settings(str(config), env or {})
    for store in settings.config.data_stores:
        root = settings.resolve(store.path)
        partial = [p for p in root.rglob("*") if ".partial" in p.name] if root.is_dir() else []
        found.broken += [f"partial file left in store {store.name}: {p}" for p in partial]
    made = [s for s in savesets if by_id.get(s["run_id"], {}).get("state") == "succeeded"
            and s.get("migrated_from") is None]
    checked = made if restore_at_most is None else random.sample(
        made, min(restore_at_most, len(made)))
    sources = {t.name: settings.resolve(t.source) for t in settings.config.tasks
               if sources_unchanged and not t.exclude}
    for saveset in checked:
        _check_saveset(config, saveset, sources.get(saveset["task"]), env, found)
    return found


def _check_occurrence(occurrence: str, runs: list[dict[str, Any]],
                      by_id: dict[str, dict[str, Any]], found: Audit) -> None:
    own = [r for r in runs if r["trigger"] != "failover"]
    failovers = [r for r in runs if r["trigger"] == "failover"]
    unfinished = [r["run_id"] for r in runs if r["state"] not in TERMINAL]
    if unfinished:
        found.lost.append(f"occurrence {occurrence}: runs {unfinished} never ended")
    if len(own) > 1:
        found.duplicated.append(f"occurrence {occurrence}: {len(own)} runs of its own")
    if not own:
        found.broken.append(f"occurrence {occurrence}: only failover runs")
    if len(failovers) > 1:
        found.duplicated.append(f"occurrence {occurrence}: {len(failovers)} failover runs")
    for failover in failovers:
        original = by_id.get(failover["failover_of"] or "")
        if original is None or original["state"] != "storage_unavailable" or (
                original["failover_run"] != failover["run_id"]):
            found.broken.append(f"occurrence {occurrence}: failover run "
                                f"{failover['run_id']} does not follow a storage failure")
        else:
            found.failovers[original["error"]["reason"]] += 1
    last = failovers[-1] if failovers else (own[-1] if own else None)
    if last is not None:
        found.outcomes[last["state"]] += 1


def _check_savesets(runs: list[dict[str, Any]], savesets: list[dict[str, Any]],
                    recycling: set[str], found: Audit) -> None:
    of_run = Counter(s["run_id"] for s in savesets if s.get("migrated_from") is None)
    for run_id, count in of_run.items():
        if count > 1:
            found.duplicated.append(f"run {run_id} made {count} savesets")
    ids = {s["id"] for s in savesets}
    for run in runs:
        if run.get("kind", "backup") != "backup":
            continue
        made = of_run.get(run["run_id"], 0)
        where = f"run {run['run_id']} ({run['event']}, pool {run['media_pool']})"
        if run["state"] == "succeeded" and not made and run["media_pool"] in recycling:
            found.recycled += 1
        elif run["state"] == "succeeded" and (made != 1 or run["saveset"] not in ids):
            found.lost.append(f"{where} succeeded, but its saveset is not in the catalog")
        elif run["state"] != "succeeded" and made:
            found.duplicated.append(f"{where} ended {run['state']} but made a saveset")


def _check_saveset(config: Path, saveset: dict[str, Any], source: Path | None,
                   env: dict[str, str] | None, found: Audit) -> None:
    verified = cli_json(config, "verify", saveset["id"], env=env)
    if not verified["ok"]:
        found.broken.append(f"saveset {saveset['id']} does not verify: {verified['bad']}")
        return
    found.verified += 1
    target = Path(tempfile.mkdtemp(prefix="backstop-audit-"))
    try:
        cli_json(config, "restore", "--saveset", saveset["id"], "--to", str(target), env=env)
        if source is not None and tree(target) != tree(source):
            found.broken.append(f"saveset {saveset['id']} does not restore to its source")
        else:
            found.restored += 1
    finally:
        shutil.rmtree(target, ignore_errors=True)
