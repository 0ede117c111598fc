"""Flower tells the truth, in a real browser: headless Chromium loads the task pages of a
failover chain from `backstop up` and reads the states, the carried arguments and the
parent links from the DOM (SPEC section 10)."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Up, backstop
from tests.system_tools import require
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e


class TaskPage(HTMLParser):
    """The rows of a Flower task page: each <dt> with the text and the links of its <dd>."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.rows: dict[str, str] = {}
        self.links: dict[str, list[str]] = {}
        self.where: str | None = None
        self.key = ""
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("dt", "dd"):
            self.where = tag
            if tag == "dt":
                self.key = ""
        elif tag == "a" and self.where == "dd":
            self.links.setdefault(self.key, []).append(dict(attrs).get("href") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("dt", "dd"):
            self.where = None

    def handle_data(self, data: str) -> None:
        if self.where == "dt":
            self.key += data.strip()
        elif self.where == "dd":
            self.rows[self.key] = (self.rows.get(self.key, "") + " " + data.strip()).strip()


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    binary = require("chromium", "chromium")
    return subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu",
                           "--disable-dev-shm-usage", "--virtual-time-budget=5000", *args],
                          capture_output=True, text=True, timeout=120, check=False)


def page(url: str) -> TaskPage:
    done = chromium("--dump-dom", url)
    assert done.returncode == 0 and "<html" in done.stdout, done.stderr[-2000:]
    return TaskPage(done.stdout)


def test_flower_shows_a_failover_chain_as_it_happened(
        quickstart: Path, start_up: Callable[..., Up], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    require("chromium", "chromium")
    monkeypatch.setenv("FLOWER_UNAUTHENTICATED_API", "true")
    up = start_up(quickstart)
    up.wait_live()
    port = up.process.args[up.process.args.index("--flower-port") + 1]  # type: ignore[index]
    flower = f"http://127.0.0.1:{port}"
    # Given a failover drill of the quickstart's event: its first run ends out_of_space
    done = backstop("drill", "demo-often", "--reason", "out_of_space", "--wait", "--json",
                    config=quickstart, timeout_s=120)
    assert done.returncode == 0, done.stderr
    original, rescue = json.loads(done.stdout)["runs"]

    def chain() -> dict[str, dict[str, Any]] | None:
        try:
            with urllib.request.urlopen(f"{flower}/api/tasks", timeout=5) as answer:
                tasks: dict[str, dict[str, Any]] = json.loads(answer.read())
        except OSError:
            return None
        found = {}
        for task_id, task in tasks.items():
            args = task.get("args") or ""
            if task["name"] == "backstop.backup" and f"run={original['run_id']}" in args:
                found["failed"] = {"id": task_id, **task}
            elif task["name"] == "backstop.failover" and original["run_id"] in args:
                found["failover"] = {"id": task_id, **task}
            elif task["name"] == "backstop.backup" and f"run={rescue['run_id']}" in args:
                found["rescue"] = {"id": task_id, **task}
        done = len(found) == 3 and all(t["state"] in ("SUCCESS", "FAILURE")
                                       for t in found.values())
        return found if done else None

    tasks = wait_for(chain, "Flower to have seen the whole chain", limit_s=60, every_s=1)
    # When a browser opens the failed backup's page
    failed = page(f"{flower}/task/{tasks['failed']['id']}")
    # Then it is FAILURE with StorageUnavailable and the reason, and it is the drill's run
    assert failed.rows["Status"] == "FAILURE"
    assert "StorageUnavailable" in failed.rows["Exception"]
    assert failed.rows["Exception"].startswith("StorageUnavailable('out_of_space', 'drill:")
    assert f"run={original['run_id']}" in failed.rows["Arguments"]
    assert "drill=out_of_space" in failed.rows["Arguments"]
    # And the failover task shows what a failover keeps, and links to that backup as parent
    failover = page(f"{flower}/task/{tasks['failover']['id']}")
    assert failover.rows["Status"] == "SUCCESS"
    for carried in (f"run={original['run_id']}", "origin_event=demo-often",
                    "failover_event=demo-spare", "task=demo", "level=INC",
                    "enforce_full=true"):
        assert carried in failover.rows["Arguments"], failover.rows["Arguments"]
    assert failover.links["Parent id"] == [f"/task/{tasks['failed']['id']}"]
    # And the failover run's backup succeeded, a child of the failover task, same root
    rescued = page(f"{flower}/task/{tasks['rescue']['id']}")
    assert rescued.rows["Status"] == "SUCCESS"
    assert rescued.links["Parent id"] == [f"/task/{tasks['failover']['id']}"]
    assert rescued.links["Root id"] == failed.links["Root id"] == failover.links["Root id"]
    # And a screenshot of the failed task's page is kept for whoever looks at the run
    shot = tmp_path / "flower-failed-backup.png"
    assert chromium(f"--screenshot={shot}", "--window-size=1280,1400",
                    f"{flower}/task/{tasks['failed']['id']}").returncode == 0
    assert shot.stat().st_size > 10_000


def test_an_occurrence_started_through_flower_s_api_runs_and_a_bad_one_fails_there(
        quickstart: Path, start_up: Callable[..., Up], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWER_UNAUTHENTICATED_API", "true")
    up = start_up(quickstart)
    up.wait_live()
    port = up.process.args[up.process.args.index("--flower-port") + 1]  # type: ignore[index]
    flower = f"http://127.0.0.1:{port}"

    def apply(kwargs: dict[str, Any]) -> str:
        request = urllib.request.Request(
            f"{flower}/api/task/async-apply/backstop.run", method="POST",
            data=json.dumps({"kwargs": kwargs}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            return str(json.loads(answer.read())["task-id"])

    def info(task_id: str) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"{flower}/api/task/info/{task_id}", timeout=5) as r:
                found: dict[str, Any] = json.loads(r.read())
        except OSError:
            return None
        return found if found.get("state") in ("SUCCESS", "FAILURE") else None

    # When an operator starts the event through Flower's API, with a level of its own
    started = apply({"event": "demo-often", "level": "FULL"})
    done = wait_for(lambda: info(started), "the backstop.run task", limit_s=60)
    assert done["state"] == "SUCCESS"
    occurrence = json.loads(done["result"].replace("'", '"'))

    # Then that occurrence runs as `backstop run` would start it: ad hoc, at that level
    def settled() -> list[dict[str, Any]] | None:
        runs = json.loads(backstop("runs", "--occurrence", occurrence, "--json",
                                   config=quickstart).stdout)
        return runs if runs and runs[0]["state"] not in ("queued", "running") else None

    [run] = wait_for(settled, "the occurrence to end", limit_s=60)
    assert (run["trigger"], run["level"], run["state"]) == ("adhoc", "FULL", "succeeded")

    # And an unknown event fails that task with a message naming it, and starts nothing
    def adhoc_runs() -> int:
        runs = json.loads(backstop("runs", "--json", config=quickstart).stdout)
        return sum(r["trigger"] == "adhoc" for r in runs)

    before = adhoc_runs()
    bad = apply({"event": "demo-oftn"})
    failed = wait_for(lambda: info(bad), "the bad backstop.run task", limit_s=60)
    assert failed["state"] == "FAILURE"
    assert "unknown event 'demo-oftn'" in failed["exception"], failed
    assert "did you mean 'demo-often'" in failed["exception"]
    assert adhoc_runs() == before
