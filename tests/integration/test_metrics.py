"""SPEC section 10 metrics: counted in the broker as runs end, served by `backstop metrics`."""

from __future__ import annotations

import json
import re
import socket
import subprocess
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest
import yaml
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from backstop.orchestration.cli import main
from backstop.orchestration.exporter import serve_metrics
from backstop.runs import RunEnd, RunState
from backstop.settings import load_settings
from tests.integration.test_orchestration import Fleet, fleet  # noqa: F401 - the fixture
from tests.system_tools import require

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(running: Fleet) -> Samples:
    """A fresh exporter (as after a restart of every process), scraped once."""
    settings = load_settings(str(running.root / "backstop.yaml"),
                             {"BACKSTOP_BROKER_URL": running.app.conf.broker_url})
    port = free_port()
    serve_metrics(settings, running.ledger.client, None, "127.0.0.1", port)
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def ended(fleet: Fleet) -> Iterator[Fleet]:  # noqa: F811 - the imported fixture
    """A run that fails over (out of space: to-tiny, then to-spare) and a plain success."""
    fleet.settled(fleet.occur("to-tiny"))
    fleet.settled(fleet.occur("plain"))
    yield fleet


def test_run_ends_are_counted_once_with_their_labels(ended: Fleet) -> None:
    samples = scrape(ended)
    assert value(samples, "backstop_runs_total", event="to-tiny", task="docs",
                 trigger="adhoc", state="storage_unavailable") == 1
    assert value(samples, "backstop_runs_total", event="to-spare", task="docs",
                 trigger="failover", state="succeeded") == 1
    assert value(samples, "backstop_runs_total", event="plain", task="docs", trigger="adhoc",
                 state="succeeded") == 1
    assert value(samples, "backstop_storage_unavailable_total", event="to-tiny",
                 reason="out_of_space") == 1
    assert value(samples, "backstop_failovers_total", origin_event="to-tiny",
                 failover_event="to-spare", result="succeeded") == 1
    assert value(samples, "backstop_backup_bytes_total", task="docs", pool="spare") == 600_000
    assert value(samples, "backstop_run_duration_seconds_count", task="docs", level="FULL") >= 2
    assert value(samples, "backstop_run_duration_seconds_bucket", task="docs", level="FULL",
                 le="+Inf") >= 2
    assert value(samples, "backstop_last_success_timestamp_seconds", task="docs") > 1.7e9
    # And a second end of the same run (a redelivery) changes nothing
    [run] = ended.ledger.query(event="plain", limit=1)
    assert ended.ledger.finish(run.run_id, RunEnd(RunState.SUCCEEDED, bytes=1)) == "ended"
    again = scrape(ended)
    for name in ("backstop_runs_total", "backstop_backup_bytes_total",
                 "backstop_run_duration_seconds_count"):
        assert {k: v for k, v in again.items() if k[0] == name} == {
            k: v for k, v in samples.items() if k[0] == name}


def test_fleet_gauges_say_who_is_up_and_how_full_the_pools_are(ended: Fleet) -> None:
    samples = scrape(ended)
    assert value(samples, "backstop_rds_up", rds="local") == 1
    assert value(samples, "backstop_rds_up", rds="remote") == 0
    assert ("backstop_queue_depth", frozenset({("queue", "backstop.control")})) in samples
    assert value(samples, "backstop_pool_used_bytes", pool="spare", data_store="big") > 0
    assert value(samples, "backstop_pool_free_bytes", pool="spare", data_store="big") > 0
    assert value(samples, "backstop_pool_available", pool="spare", reason="ok") == 1
    assert value(samples, "backstop_pool_available", pool="remote-pool",
                 reason="rds_unreachable") == 1
    assert value(samples, "backstop_interface_reachable", rds="local", interface="lo") == 0


def test_no_label_names_a_run_or_a_saveset(ended: Fleet) -> None:
    ids = {r.run_id for r in ended.ledger.query(limit=100)}
    ids |= {r.saveset for r in ended.ledger.query(limit=100) if r.saveset}
    ids |= {r.occurrence for r in ended.ledger.query(limit=100)}
    for _, labels in scrape(ended):
        for _, label in labels:
            assert not any(i in label for i in ids), label


def test_metrics_on_a_port_in_use_exits_2_naming_it(ended: Fleet) -> None:
    with closing(socket.socket()) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = str(ended.root / "backstop.yaml")
        env = {"BACKSTOP_BROKER_URL": ended.app.conf.broker_url}
        done = CliRunner().invoke(main, ["metrics", "-c", config, "--port", str(port)],
                                  env=env)
        assert done.exit_code == 2 and f"127.0.0.1:{port}" in done.output, done.output
        done = CliRunner().invoke(main, ["up", "-c", config, "--metrics-port", str(port)],
                                  env=env)
        assert done.exit_code == 2, done.output
        assert f"127.0.0.1:{port} (metrics) is in use" in done.output, done.output
        assert "Invalid value" not in done.output


DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def exposed_names(ended: Fleet) -> set[str]:
    """Every series name the exporter serves, also of families without samples yet."""
    settings = load_settings(str(ended.root / "backstop.yaml"),
                             {"BACKSTOP_BROKER_URL": ended.app.conf.broker_url})
    port = free_port()
    serve_metrics(settings, ended.ledger.client, None, "127.0.0.1", port)
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"],
                "gauge": [""]}
    return {family.name + suffix for family in text_string_to_metric_families(text)
            for suffix in suffixes[family.type]}


def used_names(exprs: list[str]) -> set[str]:
    return {name for expr in exprs for name in re.findall(r"\bbackstop_[a-z_]+", expr)}


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "backstop.json").read_text())
    return [target["expr"] for panel in dashboard["panels"]
            for target in panel.get("targets", [])]


def test_alert_rules_pass_promtool_and_their_unit_tests(tmp_path: Path) -> None:
    promtool = require("promtool", "prometheus")
    rules = DEPLOY / "prometheus"
    checked = subprocess.run([promtool, "check", "rules", "alerts.yaml"], cwd=rules,
                             capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 8 rules found" in checked.stdout
    tested = subprocess.run([promtool, "test", "rules", "alerts.test.yaml"], cwd=rules,
                            capture_output=True, text=True, check=False)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_dashboard_and_the_alerts_use_only_metrics_that_exist(ended: Fleet,
                                                                  tmp_path: Path) -> None:
    promtool = require("promtool", "prometheus")
    exposed = exposed_names(ended)
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())
    alert_exprs = [rule["expr"] for group in alerts["groups"] for rule in group["rules"]]
    assert used_names(alert_exprs) <= exposed, used_names(alert_exprs) - exposed
    exprs = dashboard_exprs()
    assert len(exprs) >= 10
    assert used_names(exprs) <= exposed, used_names(exprs) - exposed
    # every query of the dashboard is valid PromQL: promtool checks it as a recording rule
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{n}", "expr": expr} for n, expr in enumerate(exprs)]}]}
    (tmp_path / "dashboard-rules.yaml").write_text(yaml.safe_dump(rules))
    checked = subprocess.run([promtool, "check", "rules", "dashboard-rules.yaml"],
                             cwd=tmp_path, capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
