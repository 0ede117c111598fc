"""``backstop up`` as an operator runs it: starts, serves, restarts parts, stops cleanly."""

from __future__ import annotations

import json
import os
import shutil
import signal
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.e2e.conftest import REPO, Up, backstop
from tests.waiting import wait_for

CLIENTS = REPO / "deploy" / "examples" / "clients.yaml"

pytestmark = pytest.mark.e2e


def gone(processes: list[psutil.Process]) -> bool:
    return not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in processes)


def test_up_serves_every_rds_and_ctrl_c_leaves_no_process(
        quickstart: Path, start_up: Callable[..., Up], monkeypatch: pytest.MonkeyPatch) -> None:
    # Given backstop up on the quickstart config, as the README starts it
    monkeypatch.delenv("FLOWER_UNAUTHENTICATED_API", raising=False)
    up = start_up(quickstart)
    report = up.wait_live()
    # Then status shows the RDS live, its data service answering on its interface, a control
    # worker, an RDS worker and a beat leader
    assert report["rds"] == [{"name": "local", "live": True, "interfaces": [
        {"name": "lo", "address": "127.0.0.1", "port": 7390, "reachable": True}]}]
    assert sorted((w["control"], tuple(w["rds"])) for w in report["workers"]) == [
        (False, ("local",)), (True, ())]
    assert {q["name"] for q in report["queues"]} == {"backstop.control", "backstop.rds.local"}
    children = up.processes()
    assert any("valkey-server" in " ".join(p.cmdline()) for p in children)
    # And the demo source was created on first start
    assert (quickstart.parent / "demo-data" / "docs").is_dir()
    # And the broker's password is in no log, of up or of any part it started
    state = quickstart.parent / ".backstop"
    secret = (state / "broker" / "secret").read_text().strip()
    logs = [*(state / "logs").glob("*.log"), up.log]
    assert len(logs) >= 5
    assert all(secret not in log.read_text(errors="replace") for log in logs)
    # And Flower shows each task with readable arguments, and no password anywhere
    assert backstop("run", "demo-often", "--wait", config=quickstart).returncode == 0
    port = up.process.args[up.process.args.index("--flower-port") + 1]  # type: ignore[index]

    def flower_tasks() -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/tasks", timeout=5) as r:
                text = r.read().decode()
        except OSError:
            return None
        return text if '"backstop.backup"' in text else None

    shown = wait_for(flower_tasks, "Flower to show the backup task", limit_s=60, every_s=1)
    backup = next(t for t in json.loads(shown).values() if t["name"] == "backstop.backup")
    assert all(f"{key}=" in backup["args"] for key in
               ("event", "occurrence", "run", "level", "pool")), backup["args"]
    assert secret not in shown
    # And an ad-hoc start through Flower's API works as the docs' curl sends it
    send = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/task/send-task/backstop.run", method="POST",
        data=b'{"kwargs": {"event": "demo-often", "level": "FULL"}}',
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(send, timeout=10) as r:
        assert r.status == 200 and "task-id" in json.loads(r.read())
    # And the metrics exporter up started counts the run, and names no password either
    metrics_port = up.process.args[up.process.args.index("--metrics-port") + 1]  # type: ignore[index]
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30) as r:
        metrics = r.read().decode()
    assert ('backstop_runs_total{event="demo-often",state="succeeded",task="demo",'
            'trigger="adhoc"} 1.0') in metrics, metrics[:3000]
    assert 'backstop_rds_up{rds="local"} 1.0' in metrics
    assert secret not in metrics

    # When the operator presses Ctrl-C
    assert up.stop(signal.SIGINT) == 0
    # Then nothing it started is left running, and the broker record is gone
    wait_for(lambda: gone(children), "every child process to exit", limit_s=10)
    assert not (quickstart.parent / ".backstop" / "broker.json").exists()


def test_up_runs_data_services_and_client_workers_of_the_clients_example(
        tmp_path: Path, start_up: Callable[..., Up]) -> None:
    # Given backstop up on deploy/examples/clients.yaml (two RDS, a client on this host)
    config = tmp_path / "clients.yaml"
    shutil.copy(CLIENTS, config)
    up = start_up(config, "--no-flower")

    def ready() -> dict[str, Any] | None:
        report = up.status()
        ok = report and all(i["reachable"] for r in report["rds"] for i in r["interfaces"]) \
            and all(c["live"] for c in report["clients"]) and report["beat_leader"] \
            and any(w["control"] for w in report["workers"])
        return report if ok else None

    # Then every interface answers, the client and the control plane are live, and the
    # fleet's token exists (0600)
    wait_for(ready, "the data services and the client worker", limit_s=90, every_s=0.5)
    token = tmp_path / ".backstop-clients" / "data-token"
    assert token.stat().st_mode & 0o777 == 0o600
    # When the client's event runs, Then its data goes through interface near-a
    done = backstop("run", "www-near", "--wait", "--json", config=config)
    assert done.returncode == 0, done.stderr
    [run] = json.loads(done.stdout)["runs"]
    assert (run["client"], run["interface"], run["data_store"]) == ("web1", "near-a",
                                                                   "near-store")
    assert token.read_text().strip() not in up.output()
    assert up.stop() == 0


def test_a_second_up_is_refused_while_the_first_runs_and_starts_after_it_stopped(
        quickstart: Path, start_up: Callable[..., Up]) -> None:
    first = start_up(quickstart, "--no-flower")
    first.wait_live()
    second = start_up(quickstart, "--no-flower")
    assert second.process.wait(timeout=30) == 2
    assert "already running" in second.output()

    assert first.stop() == 0
    third = start_up(quickstart, "--no-flower")
    third.wait_live()
    assert third.stop() == 0


def test_a_killed_worker_is_started_again(quickstart: Path,
                                          start_up: Callable[..., Up]) -> None:
    up = start_up(quickstart, "--no-flower")
    report = up.wait_live()
    [rds_worker] = [w for w in report["workers"] if w["rds"] == ["local"]]
    os.kill(rds_worker["pid"], signal.SIGKILL)

    def replaced() -> bool:
        status = up.status() or {"workers": []}
        pids = [w["pid"] for w in status["workers"] if w["rds"] == ["local"]]
        return bool(pids) and rds_worker["pid"] not in pids

    wait_for(replaced, "a new worker for RDS local", limit_s=60, every_s=0.5)
    assert up.stop() == 0
    assert "exited with" in up.output()


def test_a_hard_killed_up_takes_its_children_with_it(quickstart: Path,
                                                     start_up: Callable[..., Up]) -> None:
    up = start_up(quickstart, "--no-flower")
    up.wait_live()
    children = up.processes()
    up.stop(signal.SIGKILL)
    wait_for(lambda: gone(children), "the children of a killed up to exit", limit_s=30)


def test_status_without_a_running_up_says_so_and_exits_2(quickstart: Path) -> None:
    done = backstop("status", "--json", config=quickstart)
    assert done.returncode == 2
    assert "no broker" in done.stderr


def test_up_with_an_external_broker_url_uses_it(quickstart: Path, broker_url: str,
                                                start_up: Callable[..., Up]) -> None:
    text = quickstart.read_text().replace("broker_url: null", f"broker_url: {broker_url}")
    quickstart.write_text(text)
    up = start_up(quickstart, "--no-flower")
    up.wait_live()
    assert not any("valkey-server" in " ".join(p.cmdline()) for p in up.processes())
    report = json.loads(backstop("status", "--json", config=quickstart).stdout)
    password = broker_url.split("@", maxsplit=1)[0].rsplit(":", maxsplit=1)[-1]
    assert password not in json.dumps(report)
    assert up.stop() == 0


def test_the_quickstart_fails_over_when_its_primary_pool_is_full(
        quickstart: Path, start_up: Callable[..., Up]) -> None:
    up = start_up(quickstart, "--no-flower")
    up.wait_live()
    results = []
    for _ in range(3):  # FULLs until the small primary store cannot take one more
        done = backstop("run", "demo-often", "--level", "FULL", "--wait", "--timeout", "60",
                        "--json", config=quickstart)
        assert done.returncode == 0, done.stderr
        results.append(json.loads(done.stdout))
    assert all(r["succeeded"] for r in results)
    failed_over = [r for r in results if len(r["runs"]) == 2]
    assert failed_over, [[run["state"] for run in r["runs"]] for r in results]
    original, failover = failed_over[0]["runs"]
    assert (original["state"], original["error"]["reason"]) == (
        "storage_unavailable", "out_of_space")
    assert (failover["event"], failover["origin_event"], failover["media_pool"]) == (
        "demo-spare", "demo-often", "spare")
    assert (failover["level"], failover["enforce_full"]) == ("FULL", True)
    runs = json.loads(backstop("runs", "--json", "--event", "demo-spare",
                               config=quickstart).stdout)
    assert failover["run_id"] in {r["run_id"] for r in runs}
    assert up.stop() == 0


def test_run_exits_2_for_an_unknown_event_and_1_for_a_failed_occurrence(
        quickstart: Path, start_up: Callable[..., Up]) -> None:
    up = start_up(quickstart, "--no-flower")
    up.wait_live()
    unknown = backstop("run", "demo-oftn", config=quickstart)
    assert unknown.returncode == 2
    assert "did you mean 'demo-often'" in unknown.stderr
    shutil.rmtree(quickstart.parent / "demo-data")  # the source is gone: a source error
    failed = backstop("run", "demo-often", "--wait", "--json", config=quickstart)
    assert failed.returncode == 1
    report = json.loads(failed.stdout)
    assert report["succeeded"] is False
    assert report["runs"][0]["error"]["kind"] == "source_error"
    assert up.stop() == 0
