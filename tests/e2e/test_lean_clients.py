"""Lean client workers, as `backstop worker --client` starts them: one process, three broker
connections and a slow heartbeat when idle, whatever it ran before (backups, a restore);
time limits kept in its thread pool."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable

import psutil
import pytest

from backstop.constants import (
    CLIENT_HEARTBEAT_INTERVAL_S,
    CLIENT_HEARTBEAT_TTL_S,
    CONTROL_QUEUE,
    HEARTBEAT_TTL_S,
)
from backstop.orchestration.broker import free_port
from backstop.settings import load_settings
from backstop.workers.remote import probe_interfaces
from tests.e2e.conftest import Fleet, backstop
from tests.fleet import run_records
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e

TOKEN = "e2e-data-token-0123456789abcdef"
# standard output that never goes silent, for far longer than the run may take
TRICKLE = [sys.executable, "-c",
           "import sys, time\nfor _ in range(600):\n    sys.stdout.write('x' * 100)\n"
           "    sys.stdout.flush()\n    time.sleep(0.1)"]

LEAN = """
state_dir: .backstop
backup_time_limit: 4s
rds: [{{name: near, interfaces: [{{name: near-a, address: 127.0.0.2, port: {port}}}]}}]
clients: [{{name: web1}}]
data_stores: [{{name: store, rds: near, path: stores/near, create: true}}]
media_pools: [{{name: pool, data_store: store, retention: 14d}}]
tasks:
  - {{name: www, client: web1, source: www}}
  - {{name: slow, client: web1, streams: [{{name: trickle.out, argv: {trickle}}}]}}
data_path: {{connect_timeout: 2s, io_timeout: 5s}}
events:
  - {{name: www-full, task: www, level: FULL, media_pool: pool}}
  - {{name: slow-full, task: slow, level: FULL, media_pool: pool}}
"""


@pytest.fixture
def lean(make_fleet: Callable[[str], Fleet]) -> Fleet:
    fleet = make_fleet(LEAN.format(port=free_port("127.0.0.2"), trickle=TRICKLE))
    (fleet.root / "www").mkdir()
    for i in range(20):
        (fleet.root / "www" / f"page{i}.html").write_bytes(os.urandom(50_000))
    fleet.env["BACKSTOP_DATA_TOKEN"] = TOKEN
    fleet.start("control", "worker", "--control", "--rds", "near", "--concurrency", "2")
    fleet.start("serve", "serve", "--rds", "near")
    fleet.start("web1", "worker", "--client", "web1", "--concurrency", "1")
    fleet.serving({"near"})
    settings = load_settings(str(fleet.config), fleet.env)
    wait_for(lambda: all(probe_interfaces(settings, TOKEN).values()),
             "the data service to answer", limit_s=60, every_s=0.5)
    wait_for(lambda: any("web1" in w.clients for w in fleet.live()), "the client worker")
    return fleet


def occur(fleet: Fleet, event: str, occurrence: str) -> dict[str, object]:
    fleet.send("backstop.dispatch", [occurrence, event, "adhoc"], CONTROL_QUEUE)
    fleet.settled([occurrence], limit_s=60)
    (run,) = run_records(fleet.ledger, occurrence)
    return run


def broker_connections(fleet: Fleet, pid: int) -> int:
    port = fleet.broker.port
    return sum(1 for c in psutil.Process(pid).net_connections(kind="tcp")
               if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED)


def test_a_lean_client_worker_is_one_process_with_three_connections_after_backups(
        lean: Fleet) -> None:
    worker = psutil.Process(lean.processes["web1"].pid)
    (beat,) = [w for w in lean.live() if "web1" in w.clients]
    assert (beat.ttl, beat.pid) == (CLIENT_HEARTBEAT_TTL_S, worker.pid)
    assert [w.ttl for w in lean.live() if w.control] == [HEARTBEAT_TTL_S]
    for i in range(3):
        last = occur(lean, "www-full", f"www-{i}")
        assert last["state"] == "succeeded"
    assert worker.children() == []  # a thread pool: no forked children
    # a restore on the client is written there by its worker, which reports back through
    # the result backend
    target = lean.root / "restored"
    done = backstop("restore", "--saveset", str(last["saveset"]), "--client", "web1", "--to",
                    str(target), "--json", config=lean.config, env=lean.env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["files"] == 20
    assert ((target / "page7.html").read_bytes()
            == (lean.root / "www" / "page7.html").read_bytes())
    # the connections a run opened (ledger, data path, sending to the control plane) are
    # let go once it ended: its consumer's two and the heartbeat's one are left
    wait_for(lambda: broker_connections(lean, worker.pid) <= 3,
             "the client worker to hold at most 3 broker connections", limit_s=20)
    # and it beats at its own pace, through the one connection it keeps for that
    first = {w.name: w.at for w in lean.live()}[beat.name]
    time.sleep(CLIENT_HEARTBEAT_INTERVAL_S + 2)
    assert {w.name: w.at for w in lean.live()}[beat.name] > first
    assert broker_connections(lean, worker.pid) <= 3


def test_a_backup_on_a_lean_client_worker_ends_at_its_time_limit_and_it_goes_on(
        lean: Fleet) -> None:
    started = time.monotonic()
    run = occur(lean, "slow-full", "slow")
    assert (run["state"], run["error"]["kind"]) == ("failed", "timeout")  # type: ignore[index]
    assert time.monotonic() - started < 30
    # the stream's command went with the run, and the worker took the next one
    wait_for(lambda: not [p for p in psutil.process_iter(["cmdline"])
                          if "range(600)" in " ".join(p.info["cmdline"] or [])],
             "the stream's command to be gone", limit_s=10)
    assert lean.processes["web1"].poll() is None
    assert occur(lean, "www-full", "after")["state"] == "succeeded"
