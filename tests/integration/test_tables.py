"""Every listing as a pipe shows it (80 columns): full ids and names, no ellipsis, no line
wider than 80; `--json` is left as it is."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta

import pytest
from click.testing import CliRunner

from backstop.config import Level
from backstop.orchestration.cli import main
from backstop.workers.engine import BackupRequest
from tests.integration.conftest import Setup

LONG_NAMES = """
rds: [{name: local}]
data_stores:
  - {name: primary-disk-array-frankfurt, rds: local, path: stores/a,
     create: true}
media_pools:
  - {name: customer-database-daily-pool, data_store: primary-disk-array-frankfurt,
     retention: 14d, media: {count: 10, size: 100MiB}}
tasks: [{name: customer-database-exports, source: src}]
"""


@pytest.fixture
def listed(make_setup: Callable[..., Setup], broker_url: str,
           monkeypatch: pytest.MonkeyPatch) -> tuple[Setup, list[str]]:
    monkeypatch.setenv("BACKSTOP_BROKER_URL", broker_url)
    setup = make_setup(LONG_NAMES)
    (setup.source / "reports" / "2026" / "quarterly").mkdir(parents=True)
    (setup.source / "reports" / "2026" / "quarterly" / "revenue-by-region.csv").write_text("1")
    request = {"task": "customer-database-exports", "media_pool": "customer-database-daily-pool"}
    full = setup.engine.backup(BackupRequest(level=Level.FULL, **request)).saveset
    setup.clock.now += timedelta(hours=1)
    (setup.source / "notes.txt").write_text("second")
    inc = setup.engine.backup(BackupRequest(level=Level.INC, **request)).saveset
    return setup, [full.id, inc.id]


@pytest.mark.parametrize("args", [
    ("savesets",), ("pools",), ("runs",), ("status",), ("report",), ("ls", "{inc}"),
    ("find", "*.csv"), ("diff", "{full}", "{inc}"),
])
def test_a_piped_listing_shows_whole_ids_within_80_columns(
        listed: tuple[Setup, list[str]], args: tuple[str, ...]) -> None:
    setup, (full, inc) = listed
    argv = [a.format(full=full, inc=inc) for a in args]
    done = CliRunner().invoke(main, [*argv, "-c", str(setup.settings.config_path)])
    assert done.exit_code == 0, done.output
    lines = done.stdout.splitlines()
    assert lines and max(len(line) for line in lines) <= 80, done.stdout
    assert "…" not in done.stdout
    if args[0] in ("savesets", "find"):
        assert inc in lines[1] or inc in done.stdout.split()
        assert all(f in done.stdout.split() for f in (full, inc) if args[0] == "savesets")
    if args[0] == "pools":
        assert "customer-database-daily-pool" in done.stdout.split()
    if args[0] in ("ls", "find"):
        assert "reports/2026/quarterly/revenue-by-region.csv" in done.stdout.split()
    if args[0] == "diff":
        assert done.stdout.split() == ["+", "notes.txt"]


def test_json_listings_keep_every_field(listed: tuple[Setup, list[str]]) -> None:
    setup, (full, inc) = listed
    done = CliRunner().invoke(main, ["savesets", "--json", "-c", str(setup.settings.config_path)])
    [newest, oldest] = json.loads(done.stdout)
    assert (newest["id"], newest["based_on"], oldest["id"]) == (inc, full, full)
    assert newest["task"] == "customer-database-exports"
