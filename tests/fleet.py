"""A fleet started by hand: a broker and ``backstop`` worker/beat processes, each in its own
process group, so that a test (or the soak bench) decides what dies and what comes back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import redis

from backstop.constants import OCCURRENCE_KEY
from backstop.orchestration.broker import EmbeddedBroker
from backstop.orchestration.celery_app import BackstopApp
from backstop.orchestration.heartbeat import WorkerBeat, live_workers
from backstop.orchestration.ledger import Ledger
from tests.invariants import Audit, audit
from tests.waiting import wait_for


def bulk_source(root: Path, files: int = 40, size: int = 8 << 20) -> Path:
    """A source of random files: with the defaults, about 2 s of work per FULL backup."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (root / f"f{i:02}.bin").write_bytes(os.urandom(size))
    return root


def all_settled(client: redis.Redis, occurrences: list[str]) -> bool:
    """Every one of ``occurrences`` is in the ledger and settled."""
    pipe = client.pipeline(transaction=False)
    for occurrence in occurrences:
        pipe.hget(OCCURRENCE_KEY.format(occ=occurrence), "state")
    return all(state not in (None, b'"open"') for state in pipe.execute())


def wait_settled(client: redis.Redis, occurrences: list[str], limit_s: float = 120) -> None:
    wait_for(lambda: all_settled(client, occurrences),
             f"{len(occurrences)} occurrences to settle", limit_s=limit_s, every_s=0.5)


def run_records(ledger: Ledger, occurrence: str) -> list[dict[str, Any]]:
    """The runs of ``occurrence`` as ``backstop runs --json`` prints them, in order."""
    return [run.to_json() for run in ledger.runs_of(occurrence)]


def running_run(ledger: Ledger, occurrence: str) -> dict[str, Any]:
    """The first run of ``occurrence``, as soon as it is running (to be killed midway)."""
    def running() -> dict[str, Any] | None:
        runs = run_records(ledger, occurrence)
        return runs[0] if runs and runs[0]["state"] == "running" else None

    return wait_for(running, f"{occurrence} to be running", limit_s=30, every_s=0.005)


class Fleet:
    """A broker and separately started ``backstop`` processes; no supervisor restarts
    anything, so a test decides what dies and what comes back."""

    def __init__(self, root: Path, broker: EmbeddedBroker) -> None:
        self.root, self.broker = root, broker
        self.config = root / "backstop.yaml"
        self.url = broker.start()
        self.env = dict(os.environ, BACKSTOP_BROKER_URL=self.url)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.argv: dict[str, tuple[str, ...]] = {}
        self.app: BackstopApp | None = None
        self.client = redis.Redis.from_url(self.url)
        self.ledger = Ledger(self.client)

    def start(self, name: str, *args: str) -> None:
        """Start ``backstop ARGS`` as ``name``; without ARGS, as ``name`` was started before."""
        args = args or self.argv[name]
        self.argv[name] = args
        with open(self.root / f"{name}.log", "ab") as log:
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", "backstop.orchestration.cli", *args, "-c", str(self.config)],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self, name: str) -> None:
        """SIGKILL a process and everything it started (a worker and its pool)."""
        os.killpg(self.processes[name].pid, signal.SIGKILL)
        self.processes.pop(name).wait()

    def revive(self) -> list[str]:
        """Start again every process that exited on its own, as a supervisor would."""
        exited = [n for n, p in self.processes.items() if p.poll() is not None]
        for name in exited:
            self.start(name)
        return exited

    def signal(self, name: str, sig: signal.Signals) -> None:
        """Send ``sig`` to a started process and everything it started (SIGSTOP: a stall)."""
        os.killpg(self.processes[name].pid, sig)

    def live(self) -> list[WorkerBeat]:
        return live_workers(self.client)

    def kill_broker(self) -> None:
        """SIGKILL the broker: no chance to flush anything it has not written yet."""
        assert self.broker.process is not None
        os.killpg(self.broker.process.pid, signal.SIGKILL)
        self.broker.process.wait()
        self.broker.process = None

    def owner_of(self, pid: int) -> str:
        """The name of the started process that ``pid`` is, or descends from."""
        lineage = {pid, *(p.pid for p in psutil.Process(pid).parents())}
        return next(n for n, p in self.processes.items() if p.pid in lineage)

    def serving(self, rds: set[str], control: bool = True) -> None:
        def ready() -> bool:
            workers = live_workers(self.client)
            return ({r for w in workers for r in w.rds} >= rds
                    and (not control or any(w.control for w in workers)))

        wait_for(ready, f"workers for {sorted(rds)}", limit_s=60)

    def send(self, task: str, args: list[Any], queue: str) -> None:
        if self.app is None:
            from backstop.orchestration.app import create_app
            from backstop.settings import load_settings

            self.app = create_app(load_settings(str(self.config), self.env), self.url)
        self.app.send(task, args, queue, "test")

    def settled(self, occurrences: list[str], limit_s: float = 120) -> None:
        wait_settled(self.client, occurrences, limit_s)

    def audit(self, accepted: list[str]) -> Audit:
        found = audit(self.config, accepted, env=self.env)
        assert found.problems == []
        return found

    def stop(self) -> None:
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            process.wait(timeout=60)
