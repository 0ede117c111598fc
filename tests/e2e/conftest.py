"""Real ``backstop`` processes in a scratch directory, and a way to see what they left."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from backstop.orchestration.broker import EmbeddedBroker, free_port
from tests.fleet import Fleet, bulk_source
from tests.waiting import wait_for

__all__ = ["Fleet", "Up", "backstop", "bulk_source"]

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "deploy" / "examples" / "quickstart.yaml"


def backstop(*args: str, config: Path, env: dict[str, str] | None = None,
             timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "backstop.orchestration.cli", *args,
                           "-c", str(config)],
                          capture_output=True, text=True, timeout=timeout_s, env=env,
                          check=False)


@dataclass
class Up:
    """A running ``backstop up`` and the config it was started with."""

    process: subprocess.Popen[bytes]
    config: Path
    log: Path

    def status(self) -> dict[str, Any] | None:
        done = backstop("status", "--json", config=self.config)
        return json.loads(done.stdout) if done.returncode == 0 else None

    def wait_live(self) -> dict[str, Any]:
        def live() -> dict[str, Any] | None:
            report = self.status()
            ok = (report and all(r["live"] for r in report["rds"]) and report["beat_leader"]
                  and any(w["control"] for w in report["workers"]))
            return report if ok else None

        return wait_for(live, "backstop up to serve every RDS and the control plane",
                        limit_s=60, every_s=0.5)

    def processes(self) -> list[psutil.Process]:
        return psutil.Process(self.process.pid).children(recursive=True)

    def stop(self, sig: signal.Signals = signal.SIGINT) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=90)

    def output(self) -> str:
        return self.log.read_text()


@pytest.fixture
def quickstart(tmp_path: Path) -> Path:
    """The quickstart config, copied into a scratch directory (its paths are relative)."""
    target = tmp_path / "quickstart.yaml"
    shutil.copy(QUICKSTART, target)
    return target


@pytest.fixture
def start_up(tmp_path: Path) -> Iterator[Callable[..., Up]]:
    started: list[Up] = []

    def start(config: Path, *args: str) -> Up:
        log = tmp_path / f"up-{len(started)}.log"
        argv = [sys.executable, "-m", "backstop.orchestration.cli", "up", "-c", str(config), *args]
        if "--no-flower" not in args and "--flower-port" not in args:
            argv += ["--flower-port", str(free_port())]
        if "--metrics-port" not in args:
            argv += ["--metrics-port", str(free_port())]
        env = {k: v for k, v in os.environ.items() if not k.startswith("BACKSTOP_")}
        with open(log, "wb") as out:
            process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        up = Up(process, config, log)
        started.append(up)
        return up

    yield start
    for up in started:
        leftovers = up.processes() if up.process.poll() is None else []
        up.stop(signal.SIGTERM)
        for process in leftovers:
            if process.is_running():
                process.kill()


@pytest.fixture
def make_fleet(tmp_path: Path) -> Iterator[Callable[[str], Fleet]]:
    """``make_fleet(config_text)``: the config in a scratch directory and a running broker
    (persistent, so it can be stopped and started again on the same data)."""
    made: list[Fleet] = []

    def make(config: str) -> Fleet:
        (tmp_path / "backstop.yaml").write_text(config)
        fleet = Fleet(tmp_path, EmbeddedBroker(tmp_path / "broker", persistent=True))
        made.append(fleet)
        return fleet

    yield make
    for fleet in made:
        fleet.stop()
        fleet.broker.stop()
