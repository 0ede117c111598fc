"""Backstop's dispatch path side by side with bare Celery, on one broker, in one run.

    .venv/bin/python bench/dispatch.py            # N = 2,000; 200 latency samples
    .venv/bin/python bench/dispatch.py --n 300 --samples 50

Measures:
  throughput   N occurrences of an event with a tiny source (dispatch, backup into a store,
               settle: a saveset each) vs N bare Celery tasks that only INCR a counter;
               both by one worker process with --concurrency 2 and Backstop's Celery
               settings (JSON, late acks, prefetch 1)
  failover     latency from a run ending in StorageUnavailable to its failover run starting
               (p50/p99, one occurrence at a time) vs the round trip of one bare task
  beat tick    one planner tick with 10,000 configured events: nothing due, and 100 due
The store lives on a tmpfs the bench mounts when it can (root), as in bench/engine.py.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from scratch import scratch  # bench/scratch.py, beside this script

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONFIG = """
state_dir: state
rds: [{name: local}]
data_stores:
  - {name: fast, rds: local, path: out/fast, create: true}
  - {name: gone, rds: local, path: out/gone, create: true}
media_pools:
  - {name: fast, data_store: fast, retention: 14d}
  - {name: gone, data_store: gone, retention: 14d}
tasks: [{name: tiny, source: tiny}]
events:
  - {name: tiny-now, task: tiny, level: FULL, media_pool: fast}
  - {name: tiny-gone, task: tiny, level: FULL, media_pool: gone, failover_event: tiny-now}
"""
BARE_QUEUE = "bench.bare"
COUNTER = "bench:bare:done"


def bare_app(url: str) -> Any:
    """A bare Celery app with Backstop's delivery settings and one task that INCRs a key."""
    import redis
    from celery import Celery

    from backstop.config_load import parse_config
    from backstop.orchestration.celery_app import celery_config

    app = Celery("bare", set_as_current=False)
    app.conf.update(celery_config(parse_config(CONFIG), url))
    client = redis.Redis.from_url(url)

    @app.task(name="bench.noop", shared=False)
    def noop() -> None:
        client.incr(COUNTER)

    return app


def wait_until(probe: Any, limit_s: float = 600) -> float:
    start = time.perf_counter()
    while not probe():
        if time.perf_counter() - start > limit_s:
            raise TimeoutError("benchmark stalled")
        time.sleep(0.002)
    return time.perf_counter() - start


def spawn(argv: list[str], url: str, work: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, BACKSTOP_BROKER_URL=url)
    return subprocess.Popen(argv, env=env, cwd=work, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def measure_bare(app: Any, client: Any, n: int, samples: int) -> dict[str, Any]:
    client.delete(COUNTER)
    start = time.perf_counter()
    for _ in range(n):
        app.send_task("bench.noop", queue=BARE_QUEUE, ignore_result=True)
    wait_until(lambda: int(client.get(COUNTER) or 0) >= n)
    rate = n / (time.perf_counter() - start)
    latencies = []
    for i in range(samples):
        before = time.perf_counter()
        app.send_task("bench.noop", queue=BARE_QUEUE, ignore_result=True)
        wait_until(lambda i=i: int(client.get(COUNTER) or 0) >= n + i + 1)
        latencies.append(time.perf_counter() - before)
    return {"rate": rate, "latencies": latencies}


def measure_backstop(app: Any, ledger: Any, n: int, samples: int) -> dict[str, Any]:
    from backstop.constants import CONTROL_QUEUE

    def states(occurrences: list[str]) -> list[str]:
        return [getattr(ledger.occurrence(o), "state", "sent") for o in occurrences]

    names = [f"bench-{i}" for i in range(n)]
    start = time.perf_counter()
    for name in names:
        app.send("backstop.dispatch", [name, "tiny-now", "adhoc"], CONTROL_QUEUE, name)
    wait_until(lambda: all(s in ("succeeded", "failed") for s in states(names[-50:]))
               and all(s in ("succeeded", "failed") for s in states(names)))
    rate = n / (time.perf_counter() - start)
    failed = [o for o, s in zip(names, states(names), strict=True) if s != "succeeded"]
    if failed:
        print(f"{len(failed)} occurrences did not succeed, e.g. "
              f"{ledger.runs_of(failed[0])}", file=sys.stderr)
    latencies = []
    for i in range(samples):
        name = f"failover-{i}"
        app.send("backstop.dispatch", [name, "tiny-gone", "adhoc"], CONTROL_QUEUE, name)
        wait_until(lambda name=name: len(ledger.runs_of(name)) == 2
                   and ledger.runs_of(name)[1].started_at)
        original, failover = ledger.runs_of(name)
        gap = failover.started_at - original.finished_at
        latencies.append(gap.total_seconds())
    return {"rate": rate, "latencies": latencies}


def beat_tick_ms(url: str, events: int = 10_000) -> tuple[float, float]:
    """One planner tick with ``events`` configured events: nothing due, then 100 due."""
    import redis
    import yaml

    from backstop.config_load import parse_config
    from backstop.orchestration.beat import Planner
    from backstop.orchestration.control import Control
    from backstop.orchestration.ledger import Ledger

    raw = yaml.safe_load(CONFIG)
    # s0 ticks every minute; the other 99 once a year, so that a tick of s0 has exactly
    # its own 100 events due (all of one task: 99 of them are suppressed)
    raw["schedules"] = [{"name": "s0", "cron": "* * * * *"}] + [
        {"name": f"s{i}", "cron": f"0 3 1 {1 + i % 12} *"} for i in range(1, 100)]
    raw["events"] = [{"name": f"e{i}", "schedule": f"s{i % 100}", "task": "tiny",
                      "media_pool": "fast", "priority": i} for i in range(events)]
    config = parse_config(yaml.safe_dump(raw))
    client = redis.Redis.from_url(url)
    sent: list[str] = []
    control = Control(config, Ledger(client), lambda *a: sent.append(a[0]), lambda _: True)
    planner = Planner(config, client, control)
    planner.load()
    now = datetime.now(UTC)
    planner.tick(now)  # first sight of every schedule
    start = time.perf_counter()
    planner.tick(now + timedelta(milliseconds=1))
    idle = (time.perf_counter() - start) * 1000
    due = planner.states["s0"].next_due
    start = time.perf_counter()
    planner.tick(due)  # s0 ticks: its 100 events are due (99 suppressed: same task)
    busy = (time.perf_counter() - start) * 1000
    return idle, busy


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/backstop-dispatch-bench"))
    parser.add_argument("--bare-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_worker:
        bare_app(args.bare_worker).worker_main(
            ["worker", "-Q", BARE_QUEUE, "-c", "2", "-l", "WARNING", "--without-gossip"])
        return
    run(args)


def run(args: argparse.Namespace) -> None:
    with scratch(args.workdir) as work:
        bare, ours, idle_ms, busy_ms = compare(args, work)
    report(args, bare, ours, idle_ms, busy_ms)


def compare(args: argparse.Namespace, work: Path
            ) -> tuple[dict[str, Any], dict[str, Any], float, float]:
    """Both sides measured in ``work``: bare Celery, Backstop, and the beat's tick."""
    import redis

    from backstop.orchestration.app import create_app
    from backstop.orchestration.broker import EmbeddedBroker
    from backstop.orchestration.heartbeat import live_workers
    from backstop.orchestration.ledger import Ledger
    from backstop.settings import load_settings
    from backstop.workers.engine import create_missing_stores
    from backstop.workers.store import MARKER

    (work / "tiny").mkdir()
    (work / "tiny" / "f.txt").write_text("tiny source\n")
    (work / "backstop.yaml").write_text(CONFIG)
    broker = EmbeddedBroker(work / "broker", persistent=False)
    url = broker.start()
    workers: list[subprocess.Popen[bytes]] = []
    try:
        settings = load_settings(str(work / "backstop.yaml"), {"BACKSTOP_BROKER_URL": url})
        create_missing_stores(settings, ["local"])
        (work / "out" / "gone" / MARKER).unlink()  # pool "gone" is unavailable: fails over
        client = redis.Redis.from_url(url)
        cli = [sys.executable, "-m", "backstop.orchestration.cli"]
        workers.append(spawn([*cli, "worker", "-c", "backstop.yaml", "--control", "--rds",
                              "local", "--concurrency", "2", "--loglevel", "WARNING"], url, work))
        workers.append(spawn([sys.executable, __file__, "--bare-worker", url], url, work))
        wait_until(lambda: any(w.rds for w in live_workers(client)), 60)
        time.sleep(2)  # let the bare worker connect as well
        bare = measure_bare(bare_app(url), client, args.n, args.samples)
        ours = measure_backstop(create_app(settings, url), Ledger(client), args.n,
                                args.samples)
        idle_ms, busy_ms = beat_tick_ms(url)
    finally:
        for worker in workers:
            worker.terminate()
            worker.wait()
        broker.stop()
    return bare, ours, idle_ms, busy_ms


def report(args: argparse.Namespace, bare: dict[str, Any], ours: dict[str, Any],
           idle_ms: float, busy_ms: float) -> None:
    b50, b99 = percentile(bare["latencies"], 50), percentile(bare["latencies"], 99)
    f50, f99 = percentile(ours["latencies"], 50), percentile(ours["latencies"], 99)
    print(f"\n{args.n} occurrences / tasks, {args.samples} latency samples, "
          f"{os.cpu_count()} CPUs, one worker process each with --concurrency 2")
    print(f"throughput: Backstop {ours['rate']:.0f} occurrences/s (each a saveset), bare "
          f"Celery {bare['rate']:.0f} tasks/s: {ours['rate'] / bare['rate']:.2f}x "
          "(target >= 0.5x)")
    print(f"failover latency p50 {f50 * 1000:.1f} ms, p99 {f99 * 1000:.1f} ms; bare round "
          f"trip p50 {b50 * 1000:.1f} ms, p99 {b99 * 1000:.1f} ms: p50 {f50 / b50:.1f}x "
          "(target <= 3x)")
    print(f"beat tick, 10,000 events: {idle_ms:.1f} ms with nothing due, {busy_ms:.1f} ms "
          "with 100 due (target < 100 ms)")


if __name__ == "__main__":
    main()
