"""Soak: thousands of occurrences for a set time under random faults, then the audit.

A fleet of real processes (one broker; a control worker; two workers for RDS ``near``, one
for RDS ``far``; two beats) takes a steady stream of ad-hoc occurrences and three 5 s
schedules, while a fault is injected every few seconds, picked at random from:

- ``kill-one-of-two``  SIGKILL one of near's two workers (and its pool); back after 5 s
- ``kill-only-worker`` SIGKILL far's only worker; back after 20 s (its runs fail over)
- ``kill-leader``      SIGKILL the leading beat; back after 5 s
- ``broker-restart``   stop the broker (SIGTERM) and start it again 3 s later
- ``kill-everything``  SIGKILL every process and the broker, then start them all again
- ``fill-store``       fill the ``cramped`` store's tmpfs for 8 s, mid-write for some runs

Then faults stop, every accepted occurrence must settle, and the audit of
``tests/invariants.py`` runs: one terminal state per occurrence, at most one failover, at
most one saveset per run, no partial file, sampled savesets verify and restore bit-exact.

    .venv/bin/python bench/soak.py --minutes 10
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from backstop.constants import BEAT_LEADER_KEY, CONTROL_QUEUE  # noqa: E402
from backstop.orchestration.broker import EmbeddedBroker  # noqa: E402
from tests.fleet import Fleet, all_settled, bulk_source  # noqa: E402
from tests.invariants import Audit, audit  # noqa: E402

CONFIG = """
state_dir: .backstop
rds: [{name: near}, {name: far}]
data_stores:
  - {name: near-store, rds: near, path: stores/near, create: true}
  - {name: far-store, rds: far, path: stores/far, create: true}
  - {name: cramped, rds: near, path: cramped/store, create: true}
media_pools:
  - {name: near-pool, data_store: near-store, retention: 14d}
  - {name: far-pool, data_store: far-store, retention: 14d}
  - {name: cramped-pool, data_store: cramped, retention: 20s,
     media: {count: 3, size: 4MiB}}
tasks: [{name: docs, source: docs}, {name: bulk, source: bulk}]
schedules: [{name: fast, every: 5s}]
events:
  - {name: docs-near, task: docs, level: INC, media_pool: near-pool, failover_event: docs-far}
  - {name: docs-far, task: docs, level: INC, media_pool: far-pool, failover_event: docs-near}
  - {name: bulk-cramped, task: bulk, level: FULL, media_pool: cramped-pool,
     failover_event: bulk-near}
  - {name: bulk-near, task: bulk, level: FULL, media_pool: near-pool}
  - {name: tick-near, schedule: fast, task: docs, level: INC, media_pool: near-pool,
     failover_event: docs-far}
  - {name: tick-far, schedule: fast, task: docs, level: INC, media_pool: far-pool,
     failover_event: docs-near}
  - {name: tick-cramped, schedule: fast, task: bulk, level: FULL, media_pool: cramped-pool,
     failover_event: bulk-near}
"""

WORKERS = {
    "control": ("worker", "--control", "--concurrency", "2"),
    "near-a": ("worker", "--rds", "near", "--concurrency", "2"),
    "near-b": ("worker", "--rds", "near", "--concurrency", "2"),
    "far": ("worker", "--rds", "far", "--concurrency", "2"),
    "beat-1": ("beat",),
    "beat-2": ("beat",),
}


class Soak:
    def __init__(self, root: Path, seed: int) -> None:
        self.root = root
        self.random = random.Random(seed)
        (root / "backstop.yaml").write_text(CONFIG)
        bulk_source(root / "docs", files=20, size=16 << 10)
        bulk_source(root / "bulk", files=4, size=768 << 10)
        self.cramped = root / "cramped"
        self.cramped.mkdir()
        self.tmpfs = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs",
                                     str(self.cramped)], capture_output=True,
                                    check=False).returncode == 0
        self.fleet = Fleet(root, EmbeddedBroker(root / "broker", persistent=True))
        self.accepted: list[str] = []
        self.refused = 0
        self.faults: Counter[str] = Counter()
        self.exited: Counter[str] = Counter()
        self.lock = threading.Lock()

    def start_all(self) -> None:
        for name, argv in WORKERS.items():
            self.fleet.start(name, *argv)
        self.fleet.serving({"near", "far"})

    def fault(self) -> None:
        kinds: dict[str, Callable[[], None]] = {
            "kill-one-of-two": self.kill_one_of_two, "kill-only-worker": self.kill_only_worker,
            "kill-leader": self.kill_leader, "broker-restart": self.broker_restart,
            "kill-everything": self.kill_everything}
        if self.tmpfs:
            kinds["fill-store"] = self.fill_store
        kind = self.random.choice(sorted(kinds))
        print(f"  {time.strftime('%H:%M:%S')} fault: {kind}", flush=True)
        with self.lock:
            kinds[kind]()
        self.faults[kind] += 1

    def supervise(self, seconds: float) -> None:
        """Wait, restarting (like ``backstop up`` or systemd) any process that exited."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for name in self.fleet.revive():
                print(f"  {time.strftime('%H:%M:%S')} {name} had exited; started again",
                      flush=True)
                self.exited[name] += 1
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))

    def kill_one_of_two(self) -> None:
        name = self.random.choice(["near-a", "near-b"])
        self.fleet.kill(name)
        time.sleep(5)
        self.fleet.start(name)

    def kill_only_worker(self) -> None:
        self.fleet.kill("far")
        time.sleep(20)
        self.fleet.start("far")

    def kill_leader(self) -> None:
        leader = self.fleet.client.get(BEAT_LEADER_KEY)
        pid = int(leader.decode().split(".")[1].split("@")[0]) if leader else 0
        name = next((n for n, p in self.fleet.processes.items() if p.pid == pid), "beat-1")
        self.fleet.kill(name)
        time.sleep(5)
        self.fleet.start(name)

    def broker_restart(self) -> None:
        self.fleet.broker.stop()
        time.sleep(3)
        self.fleet.broker.start()

    def kill_everything(self) -> None:
        for name in list(self.fleet.processes):
            self.fleet.kill(name)
        self.fleet.kill_broker()
        self.fleet.broker.start()
        self.start_all()

    def fill_store(self) -> None:
        filler = self.cramped / "filler"
        try:
            with open(filler, "wb") as out:
                while True:
                    out.write(b"\0" * (1 << 20))
        except OSError:
            pass
        time.sleep(8)
        filler.unlink()

    def dispatch_loop(self, rate: float, stop: threading.Event) -> None:
        events = ["docs-near"] * 6 + ["docs-far"] * 3
        n = 0
        while not stop.wait(1 / rate):
            n += 1
            occurrence, event = f"soak-{n:06}", self.random.choice(events)
            try:
                self.fleet.send("backstop.dispatch", [occurrence, event, "adhoc"],
                                CONTROL_QUEUE)
                self.accepted.append(occurrence)
            except Exception:  # the broker is down: not accepted, and the caller would know
                self.refused += 1


def report(soak: Soak, found: Audit, minutes: float, settle_s: float) -> None:
    print()
    print(f"duration            {minutes:g} min of faults, then {settle_s:.0f} s to settle")
    print(f"faults              {sum(soak.faults.values())}: " + ", ".join(
        f"{k} {v}" for k, v in sorted(soak.faults.items())))
    print("exited on their own " + (", ".join(f"{k} {v}" for k, v in sorted(
        soak.exited.items())) or "none") + " (started again, as a supervisor does)")
    print(f"ad-hoc accepted     {len(soak.accepted)} (refused while the broker was down: "
          f"{soak.refused})")
    print(f"occurrences         {found.occurrences} (ad-hoc and scheduled), runs {found.runs}")
    print("outcomes            " + ", ".join(f"{k} {v}" for k, v in sorted(
        found.outcomes.items())))
    print("failovers by reason " + (", ".join(f"{k} {v}" for k, v in sorted(
        found.failovers.items())) or "none"))
    print(f"savesets            {found.savesets}")
    print(f"recycled            {found.recycled} savesets of cramped-pool, past retention")
    print(f"lost                {len(found.lost)}")
    print(f"duplicated          {len(found.duplicated)}")
    print(f"restore checks      {found.restored} of {found.verified} verified savesets "
          f"restored bit-exact (random sample)")
    print(f"other problems      {len(found.broken)}")
    for problem in found.problems[:20]:
        print(f"  {problem}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=8.0, help="ad-hoc occurrences per s")
    parser.add_argument("--fault-every", type=float, default=20.0, help="seconds, on average")
    parser.add_argument("--restore-checks", type=int, default=60)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="backstop-soak-"))
    soak = Soak(root, args.seed)
    print(f"soak in {root}: {args.minutes:g} min, {args.rate:g} occurrences/s, a fault every "
          f"~{args.fault_every:g} s (tmpfs store: {'yes' if soak.tmpfs else 'no'})", flush=True)
    try:
        soak.start_all()
        stop = threading.Event()
        sender = threading.Thread(target=soak.dispatch_loop, args=(args.rate, stop))
        started = time.monotonic()
        sender.start()
        try:
            while time.monotonic() - started < args.minutes * 60:
                soak.supervise(soak.random.expovariate(1 / args.fault_every))
                soak.fault()
        finally:
            stop.set()
            sender.join()
        print(f"faults over after {time.monotonic() - started:.0f} s; waiting for "
              f"{len(soak.accepted)} occurrences to settle", flush=True)
        settle_started = time.monotonic()
        while not all_settled(soak.fleet.client, soak.accepted) and time.monotonic() - (
                settle_started) < 900:
            soak.supervise(1)
        settle_s = time.monotonic() - settle_started
        found = audit(root / "backstop.yaml", soak.accepted, env=soak.fleet.env,
                      restore_at_most=args.restore_checks, recycling_pools=["cramped-pool"])
    finally:
        soak.fleet.stop()
        soak.fleet.broker.stop()
        if soak.tmpfs:
            subprocess.run(["umount", "-l", str(soak.cramped)], check=False)
    report(soak, found, args.minutes, settle_s)
    shutil.rmtree(root, ignore_errors=True)
    sys.exit(0 if found.ok else 1)


if __name__ == "__main__":
    main()
