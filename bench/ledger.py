"""The run ledger at fleet scale: 90 days of a fleet of 10,000 occurrences a day.

    .venv/bin/python bench/ledger.py                    # 1,000,000 runs
    .venv/bin/python bench/ledger.py --runs 100000      # quicker

Fills a real (embedded) Redis with ended runs written by the ledger's own writer, spread
over the history window, one in 20 failed over (its run ended storage_unavailable, then a
failover run), and measures, side by side with a bare Redis baseline in the same run:
  memory per ended run (every key of it: record, indexes, occurrence)  target <= 1.5 KB
  runs --limit 50, runs --task T --limit 50 (the query, and the command) target <= 0.5 s
  report --since 24h (the per-task part, from the ledger)              target <= 2 s
The baseline is the cost of reading the same 50 records with one HGETALL each, pipelined.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import redis  # noqa: E402

from backstop.config import FollowUp, Level  # noqa: E402
from backstop.config_load import parse_config  # noqa: E402
from backstop.errors import Reason  # noqa: E402
from backstop.orchestration.ledger import Ledger  # noqa: E402
from backstop.orchestration.report import task_lines  # noqa: E402
from backstop.runs import (  # noqa: E402
    ErrorKind,
    Occurrence,
    OccurrenceState,
    Run,
    RunError,
    RunState,
    Trigger,
    utc_now,
)

TASKS = 100
# The tasks of the filled ledger, as a config names them (for the report).
CONFIG = ("rds: [{name: rds-01}]\ntasks:\n"
          + "".join(f"  - {{name: task-{i:03}, source: /srv/{i}}}\n" for i in range(TASKS)))
HISTORY = timedelta(days=90)
BATCH = 2000


def records(n: int) -> Any:
    """``n`` ended runs, newest last, as a fleet's beat and failovers leave them."""
    now = utc_now()
    step = HISTORY / n
    i = 0
    while i < n:
        queued = now - HISTORY + step * i
        task = f"task-{i % TASKS:03}"
        occurrence = f"{task}-nightly@{queued:%Y-%m-%dT%H:%M:%S.%fZ}"
        base = dict(occurrence=occurrence, origin_event=f"{task}-nightly", task=task,
                    level=Level.INC, effective_level=Level.INC, enforce_full=True,
                    full_interval_s=604800.0, rds="rds-01", client=None, interface=None,
                    follow_ups=(FollowUp(event=f"{task}-verify", when="success"),),
                    queued_at=queued, started_at=queued + timedelta(seconds=1),
                    finished_at=queued + timedelta(seconds=95), sent_at=queued, attempts=1,
                    worker="backstop-rds-01@node-01", pid=4242)
        failover = i % 20 == 19 and i + 1 < n
        first = Run(run_id=f"{i:016x}", event=f"{task}-nightly", trigger=Trigger.SCHEDULE,
                    media_pool="daily", data_store="store-a", drive="drive-a",
                    **base,  # type: ignore[arg-type]
                    **({"state": RunState.STORAGE_UNAVAILABLE, "failover_run": f"{i + 1:016x}",
                        "error": RunError(kind=ErrorKind.STORAGE_UNAVAILABLE,
                                          reason=Reason.OUT_OF_SPACE,
                                          message="data store store-a: 12.1MiB free, 1.2GiB "
                                                  "needed (reserve 16.0MiB)")}
                       if failover else
                       {"state": RunState.SUCCEEDED, "saveset": f"{task}-{queued:%Y%m%dT%H%M%SZ}"
                        f"-{i:06x}", "files": 1234, "bytes": 567_890_123}))
        runs = [first]
        if failover:
            runs.append(Run(run_id=f"{i + 1:016x}", event=f"{task}-spare",
                            trigger=Trigger.FAILOVER, failover_of=first.run_id,
                            media_pool="spare", data_store="store-b", drive="drive-b",
                            state=RunState.SUCCEEDED, saveset=f"{task}-{i:06x}-spare",
                            files=1234, bytes=567_890_123,
                            **base))  # type: ignore[arg-type]
        yield Occurrence(occurrence=occurrence, event=f"{task}-nightly",
                         trigger=Trigger.SCHEDULE, state=OccurrenceState.SUCCEEDED,
                         created_at=queued, settled_at=queued + timedelta(seconds=95)), runs
        i += len(runs)


def fill(ledger: Ledger, n: int) -> None:
    """The ledger's own writer (as open_occurrence, add_failover_run and finish leave it),
    pipelined so that a million runs go in within minutes."""
    from backstop.constants import OCCURRENCE_FAILOVER_KEY, OCCURRENCE_KEY
    from backstop.orchestration.ledger import FIRST_RUN

    pipe = ledger.client.pipeline(transaction=False)
    for count, (occurrence, runs) in enumerate(records(n), 1):
        pipe.hset(OCCURRENCE_KEY.format(occ=occurrence.occurrence),
                  mapping={**occurrence.encode(), FIRST_RUN: json.dumps(runs[0].run_id)})
        for run in runs:  # ended runs: their state's index too, as finish leaves it
            ledger._add_run(pipe, run)
        if len(runs) > 1:
            pipe.set(OCCURRENCE_FAILOVER_KEY.format(occ=occurrence.occurrence), runs[1].run_id)
        if count % BATCH == 0:
            pipe.execute()
    pipe.execute()


def timed(repeat: int, work: Callable[[], Any]) -> tuple[float, Any]:
    """Median wall time of ``repeat`` calls, and the last result."""
    times, last = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        last = work()
        times.append(time.perf_counter() - start)
    return statistics.median(times), last


def url_of(client: redis.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    password = f":{kwargs['password']}@" if kwargs.get("password") else ""
    return f"redis://{password}{kwargs['host']}:{kwargs['port']}/{kwargs.get('db', 0)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/backstop-ledger-bench"))
    args = parser.parse_args()
    from backstop.orchestration.broker import EmbeddedBroker

    shutil.rmtree(args.workdir, ignore_errors=True)
    broker = EmbeddedBroker(args.workdir, persistent=False)
    client = redis.Redis.from_url(broker.start())
    try:
        report(measure(client, args), args)
    finally:
        client.close()
        broker.stop()


def measure(client: redis.Redis, args: argparse.Namespace) -> dict[str, Any]:
    ledger = Ledger(client, HISTORY)
    before = int(client.info("memory")["used_memory"])
    start = time.perf_counter()
    print(f"filling {args.runs:,} runs ...", file=sys.stderr)
    fill(ledger, args.runs)
    r: dict[str, Any] = {"fill_s": time.perf_counter() - start}
    r["runs"] = int(client.zcard("backstop:runs"))
    r["bytes_per_run"] = (int(client.info("memory")["used_memory"]) - before) / r["runs"]
    r["recent_s"], newest = timed(args.repeat, lambda: ledger.query(limit=50))
    r["task_s"], _ = timed(args.repeat, lambda: ledger.query(task="task-042", limit=50))
    r["state_s"], _ = timed(args.repeat, lambda: ledger.query(
        state=RunState.STORAGE_UNAVAILABLE, limit=50))
    since = utc_now() - timedelta(hours=24)
    r["since_s"], day = timed(args.repeat, lambda: ledger.query(since=since,
                                                                 limit=args.runs))
    r["day_runs"] = len(day)
    keys = [f"backstop:run:{run.run_id}" for run in newest]

    def bare() -> list[Any]:
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        return list(pipe.execute())

    r["bare_s"], _ = timed(args.repeat, bare)
    config = parse_config(CONFIG)
    config_file = args.workdir / "backstop.yaml"
    config_file.write_text(CONFIG)
    env = dict(os.environ, BACKSTOP_BROKER_URL=url_of(client))

    def command(*argv: str) -> Callable[[], Any]:
        return lambda: subprocess.run([sys.executable, "-m", "backstop.orchestration.cli", *argv,
                                       "-c", str(config_file), "--json"], env=env,
                                      check=True, capture_output=True)

    r["cli_recent_s"], _ = timed(args.repeat, command("runs", "--limit", "50"))
    r["cli_task_s"], _ = timed(args.repeat, command("runs", "--task", "task-042",
                                                   "--limit", "50"))
    r["report_s"], lines = timed(args.repeat, lambda: task_lines(ledger, config, since,
                                                                 utc_now()))
    r["report_occurrences"] = sum(line.occurrences for line in lines)
    return r


def report(r: dict[str, Any], args: argparse.Namespace) -> None:
    def line(name: str, seconds: float, target: float) -> None:
        met = "met" if seconds <= target else "NOT met"
        print(f"{name:34} {seconds * 1000:8.1f} ms  {seconds / r['bare_s']:6.1f}x bare  "
              f"target <= {target:g} s ({met})")

    print(f"\n{r['runs']:,} ended runs over {HISTORY.days} days in the ledger (filled in "
          f"{r['fill_s']:.0f} s); median of {args.repeat}")
    print(f"{'bare Redis: 50 HGETALL, pipelined':34} {r['bare_s'] * 1000:8.1f} ms")
    line("runs --limit 50", r["recent_s"], 0.5)
    line("runs --task T --limit 50", r["task_s"], 0.5)
    line("backstop runs --limit 50 (command)", r["cli_recent_s"], 0.5)
    line("backstop runs --task T --limit 50", r["cli_task_s"], 0.5)
    line("runs --state storage_unavailable", r["state_s"], 0.5)
    print(f"{'runs --since 24h (all of them)':34} {r['since_s'] * 1000:8.1f} ms  "
          f"({r['day_runs']:,} runs)")
    line("report --since 24h (its ledger part)", r["report_s"], 2.0)
    print(f"{'':34} ({r['report_occurrences']:,} occurrences of {TASKS} tasks)")
    per = r["bytes_per_run"]
    print(f"memory per ended run: {per:,.0f} bytes (target <= 1,536: "
          f"{'met' if per <= 1536 else 'NOT met'})")


if __name__ == "__main__":
    main()
