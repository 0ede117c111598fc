"""The shipped alert rules firing for real: Debian's Prometheus scrapes a real `backstop
metrics` over a real fleet and sends to a real Alertmanager, which posts to a webhook.
The first storage failure of an event alerts (its counter is served at 0 before it), a
failed failover alerts, a killed RDS worker alerts. Only the rules' `for:` is shortened,
in the test's copy of the rules."""

from __future__ import annotations

import json
import os
import re
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from backstop.orchestration.broker import free_port
from tests.e2e.conftest import backstop
from tests.fleet import Fleet
from tests.integration.test_orchestration import CONFIG
from tests.receiver import Receiver
from tests.system_tools import require
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yaml"


class Monitoring:
    """Prometheus and Alertmanager on loopback, stopped at the end."""

    def __init__(self, root: Path, metrics_port: int, hook_port: int) -> None:
        self.root, self.processes = root, list[subprocess.Popen[bytes]]()
        self.prometheus_port, self.alertmanager_port = free_port(), free_port()
        rules = re.sub(r"for: \S+", "for: 5s", RULES.read_text())
        (root / "alerts.yaml").write_text(rules)
        (root / "alertmanager.yml").write_text(f"""
route: {{receiver: hook, group_by: [alertname, event, rds], group_wait: 1s,
         group_interval: 1s, repeat_interval: 1h}}
receivers: [{{name: hook, webhook_configs: [{{url: "http://127.0.0.1:{hook_port}/alerts"}}]}}]
""")
        (root / "prometheus.yml").write_text(f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
rule_files: [alerts.yaml]
scrape_configs:
  - job_name: backstop
    static_configs: [{{targets: ["127.0.0.1:{metrics_port}"]}}]
alerting:
  alertmanagers: [{{static_configs: [{{targets: ["127.0.0.1:{self.alertmanager_port}"]}}]}}]
""")

    def start(self) -> Monitoring:
        alertmanager = require("prometheus-alertmanager", "prometheus-alertmanager")
        prometheus = require("prometheus", "prometheus")
        self._spawn("alertmanager", [
            alertmanager, f"--config.file={self.root / 'alertmanager.yml'}",
            f"--storage.path={self.root / 'am-data'}", "--cluster.listen-address=",
            f"--web.listen-address=127.0.0.1:{self.alertmanager_port}"])
        self._spawn("prometheus", [
            prometheus, f"--config.file={self.root / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.root / 'prom-data'}",
            f"--web.listen-address=127.0.0.1:{self.prometheus_port}"])
        return self

    def _spawn(self, name: str, argv: list[str]) -> None:
        with open(self.root / f"{name}.log", "ab") as log:
            self.processes.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                                   start_new_session=True))

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = (f"http://127.0.0.1:{self.prometheus_port}/api/v1/query?"
               + urllib.parse.urlencode({"query": expr}))
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                return list(json.loads(answer.read())["data"]["result"])
        except OSError:
            return []

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.wait(timeout=30)


@pytest.fixture
def watched(make_fleet: Callable[[str], Fleet], tmp_path: Path
            ) -> Iterator[tuple[Fleet, Monitoring, Receiver]]:
    fleet = make_fleet(CONFIG)
    (tmp_path / "src").mkdir()
    for i in range(3):
        (tmp_path / "src" / f"f{i}.bin").write_bytes(os.urandom(100_000))
    metrics_port = free_port()
    fleet.start("control", "worker", "--control", "--concurrency", "2")
    fleet.start("rds", "worker", "--rds", "local", "--concurrency", "2")
    fleet.start("metrics", "metrics", "--port", str(metrics_port))
    fleet.serving({"local"})
    hook = Receiver()
    monitoring = Monitoring(tmp_path, metrics_port, hook.port).start()
    try:
        yield fleet, monitoring, hook
    finally:
        monitoring.stop()
        hook.close()


def firing(hook: Receiver, alert: str, **labels: str) -> list[dict[str, Any]]:
    return [a for body in hook.at("/alerts") for a in body["alerts"]
            if a["labels"]["alertname"] == alert and a["status"] == "firing"
            and all(a["labels"].get(k) == v for k, v in labels.items())]


def test_the_first_failure_of_an_event_alerts_through_alertmanager(
        watched: tuple[Fleet, Monitoring, Receiver]) -> None:
    fleet, monitoring, hook = watched
    run = {"config": fleet.config, "env": fleet.env, "timeout_s": 120}
    # Given Prometheus has scraped the counter of the event at 0, before anything ran
    wait_for(lambda: monitoring.query(
        'backstop_storage_unavailable_total{event="to-tiny",reason="out_of_space"} == 0'),
        "Prometheus to scrape the counter at 0", limit_s=60)
    # When the event's first run finds its pool out of space (and fails over)
    done = backstop("run", "to-tiny", "--wait", "--json", **run)
    assert json.loads(done.stdout)["runs"][0]["error"]["reason"] == "out_of_space"
    # Then BackstopStorageUnavailable fires and reaches the webhook through Alertmanager
    [alert, *_] = wait_for(lambda: firing(hook, "BackstopStorageUnavailable", event="to-tiny",
                                          reason="out_of_space"),
                           "BackstopStorageUnavailable at the webhook", limit_s=90)
    assert alert["labels"]["severity"] == "warning" and "instance" not in alert["labels"]
    # When a failover fails (its pool is out of space too)
    done = backstop("run", "both-full", "--wait", "--json", **run)
    assert json.loads(done.stdout)["succeeded"] is False
    # Then BackstopFailoverFailed fires
    wait_for(lambda: firing(hook, "BackstopFailoverFailed", origin_event="both-full",
                            failover_event="to-tiny-again"),
             "BackstopFailoverFailed at the webhook", limit_s=90)
    # When the RDS worker is killed, Then BackstopRdsDown fires for its RDS
    assert not firing(hook, "BackstopRdsDown", rds="local")
    fleet.kill("rds")
    wait_for(lambda: firing(hook, "BackstopRdsDown", rds="local"),
             "BackstopRdsDown at the webhook", limit_s=90)
