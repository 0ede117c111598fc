"""``backstop up``: broker, control worker, one worker per RDS, beat and Flower on one host.

Each part runs as a child process in a session of its own, logging to
``state_dir/logs/<part>.log``. A child that exits on its own is started again after a
back-off that doubles up to a minute (and resets once it has run for a minute). SIGINT or
SIGTERM stops the parts in reverse order, each with a grace period, then the broker, which
flushes its append-only file. One ``up`` owns a state_dir at a time (a file lock); the lock
goes with the process, so after any stop, even SIGKILL, the next ``up`` starts.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from backstop.errors import AlreadyRunning
from backstop.orchestration.broker import EmbeddedBroker, forget_broker, record_broker
from backstop.orchestration.demo import seed_demo_sources
from backstop.orchestration.process import spawn, stop_group
from backstop.settings import BROKER_ENV, Settings
from backstop.workers.access import create_token
from backstop.workers.engine import create_missing_stores

log = logging.getLogger("backstop.up")

# A part that ran this long before it exited is restarted without delay.
STABLE_RUN_S = 60.0
MAX_BACKOFF_S = 60.0
# Workers get this long to finish (warm shutdown) before they are killed; acks_late puts
# what they were running back on the queue.
STOP_GRACE_S = 20.0
POLL_S = 0.5


@dataclass
class Part:
    """One supervised child process."""

    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    failures: int = 0
    restart_at: float = 0.0
    log_path: Path = field(default=Path(os.devnull))

    def start(self, env: dict[str, str]) -> None:
        with open(self.log_path, "ab") as out:
            self.process = spawn(self.argv, env=env, log=out)
        self.started_at = time.monotonic()
        log.info("started %s (pid %d), log %s", self.name, self.process.pid, self.log_path)

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def schedule_restart(self, code: int, now: float) -> None:
        self.failures = 0 if now - self.started_at >= STABLE_RUN_S else self.failures + 1
        delay = min(MAX_BACKOFF_S, 2.0 ** self.failures - 1)
        self.restart_at = now + delay
        self.process = None
        log.warning("%s exited with %d; restarting in %.0fs", self.name, code, delay)


def backstop_argv(settings: Settings, *args: str) -> list[str]:
    return [sys.executable, "-m", "backstop.orchestration.cli", *args,
            "-c", str(settings.config_path)]


def plan_parts(settings: Settings, rds: list[str], clients: list[str],
               flower_port: int | None, metrics_port: int | None = None) -> list[Part]:
    parts = [Part("control worker", backstop_argv(settings, "worker", "--control"))]
    parts += [Part(f"worker rds {name}", backstop_argv(settings, "worker", "--rds", name))
              for name in rds]
    parts += [Part(f"serve rds {name}", backstop_argv(settings, "serve", "--rds", name))
              for name in rds if settings.config.rds_named(name).interfaces]
    parts += [Part(f"worker client {name}", backstop_argv(settings, "worker", "--client", name))
              for name in clients]
    parts.append(Part("beat", backstop_argv(settings, "beat")))
    if flower_port is not None:
        parts.append(Part("flower", backstop_argv(settings, "flower", "--port", str(flower_port))))
    if metrics_port is not None:
        parts.append(Part("metrics", backstop_argv(settings, "metrics", "--port",
                                                   str(metrics_port))))
    logs = settings.state_dir / "logs"
    for part in parts:
        part.log_path = logs / (part.name.replace(" ", "-") + ".log")
    return parts


@contextmanager
def owning(state_dir: Path) -> Iterator[None]:
    """Hold state_dir's lock for the duration; AlreadyRunning if another up holds it."""
    lock_path = state_dir / "up.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip()
            raise AlreadyRunning(str(state_dir), int(owner) if owner.isdigit() else None) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


class Supervisor:
    def __init__(self, settings: Settings, rds: list[str], clients: list[str],
                 flower_port: int | None, metrics_port: int | None = None) -> None:
        self.settings = settings
        self.rds = rds
        self.parts = plan_parts(settings, rds, clients, flower_port, metrics_port)
        self.stopping = threading.Event()
        self.broker: EmbeddedBroker | None = None

    def run(self) -> int:
        state_dir = self.settings.state_dir
        (state_dir / "logs").mkdir(parents=True, exist_ok=True)
        with owning(state_dir), self._signals():
            for source in seed_demo_sources(self.settings):
                log.info("created demo source %s", source)
            for store in create_missing_stores(self.settings, self.rds):
                log.info("created data store %s at %s", store.name, store.root)
            if not self.settings.data_token:
                create_token(self.settings.data_token_file)
            try:
                env = self._start_broker()
                for part in self.parts:
                    part.start(env)
                log.info("backstop is up; Ctrl-C stops everything")
                self._watch(env)
            finally:
                self._stop_all()
        return 0

    def _start_broker(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.settings.broker_url:
            env[BROKER_ENV] = self.settings.broker_url
            return env
        self.broker = EmbeddedBroker(self.settings.state_dir / "broker")
        url = self.broker.start()
        record_broker(self.settings.state_dir, url, os.getpid())
        log.info("embedded broker on 127.0.0.1:%d (data in %s)", self.broker.port,
                 self.broker.data_dir)
        env[BROKER_ENV] = url
        return env

    def _watch(self, env: dict[str, str]) -> None:
        while not self.stopping.wait(POLL_S):
            now = time.monotonic()
            if self.broker is not None and self.broker.process is not None:
                code = self.broker.process.poll()
                if code is not None:
                    log.warning("embedded broker exited with %d; restarting it", code)
                    self.broker.start()
            for part in self.parts:
                code = part.exited()
                if code is not None:
                    part.schedule_restart(code, now)
                elif part.process is None and now >= part.restart_at:
                    part.start(env)

    def _stop_all(self) -> None:
        for part in reversed(self.parts):
            if part.process is not None:
                code = stop_group(part.process, STOP_GRACE_S)
                log.info("stopped %s (exit %d)", part.name, code)
                part.process = None
        if self.broker is not None:
            self.broker.stop()
            forget_broker(self.settings.state_dir)
            log.info("stopped embedded broker")

    @contextmanager
    def _signals(self) -> Iterator[None]:
        def on_signal(signum: int, frame: FrameType | None) -> None:
            log.info("received %s, stopping", signal.Signals(signum).name)
            self.stopping.set()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
