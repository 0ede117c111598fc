"""The data commands as an operator calls them: JSON shapes of SPEC section 7, exit codes."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from backstop.config import Level
from backstop.orchestration.cli import main
from tests.integration.conftest import Setup
from tests.integration.test_restore_safety import archive_path, flip_byte


@pytest.fixture
def cli(setup: Setup, broker_url: str, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("BACKSTOP_BROKER_URL", broker_url)

    def run(*args: str) -> Result:
        return CliRunner().invoke(main, [*args, "-c", str(setup.settings.config_path)])

    return run


def as_json(result: Result) -> Any:
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout)


@pytest.fixture
def chain(setup: Setup) -> list[str]:
    (setup.source / "a.txt").write_text("first")
    full = setup.backup(Level.FULL).saveset
    setup.clock.now += timedelta(hours=1)
    (setup.source / "b.txt").write_text("second")
    inc = setup.backup(Level.INC).saveset
    return [full.id, inc.id]


def test_savesets_json(cli, chain: list[str]) -> None:  # type: ignore[no-untyped-def]
    listed = as_json(cli("savesets", "--json"))
    assert [s["id"] for s in listed] == chain[::-1]  # newest first
    for record in listed:
        assert set(record) >= {"id", "task", "pool", "data_store", "level", "run_id",
                               "created_at", "files", "bytes", "based_on", "migrated_from"}
    assert listed[0]["based_on"] == chain[0]
    assert (listed[0]["level"], listed[0]["files"], listed[0]["bytes"]) == ("INC", 1, 6)
    assert as_json(cli("savesets", "--task", "other", "--json")) == []
    assert len(as_json(cli("savesets", "--pool", "daily", "--json"))) == 2


def test_restore_json_and_by_task_at_a_time(cli, chain: list[str], setup: Setup,  # type: ignore[no-untyped-def]
                                            tmp_path: Path) -> None:
    result = as_json(cli("restore", "--saveset", chain[1], "--to", str(tmp_path / "r1"), "--json"))
    assert result == {"saveset": chain[1], "files": 2, "bytes": 11,
                      "target": str(tmp_path / "r1"), "warnings": [], "damaged": []}
    first = setup.catalog.get(chain[0])
    assert first is not None
    at = (first.created_at + timedelta(minutes=1)).isoformat()
    result = as_json(cli("restore", "--task", "docs", "--at", at, "--to", str(tmp_path / "r2"),
                         "--json"))
    assert result["saveset"] == chain[0]
    assert sorted(p.name for p in (tmp_path / "r2").iterdir()) == ["a.txt"]


def test_verify_json_and_its_exit_code(cli, chain: list[str], setup: Setup) -> None:  # type: ignore[no-untyped-def]
    ok = cli("verify", chain[0], "--json")
    assert ok.exit_code == 0
    assert json.loads(ok.stdout) == {"saveset": chain[0], "ok": True, "files": 1, "bad": [],
                                      "checked": "files"}
    saveset = setup.catalog.get(chain[0])
    assert saveset is not None
    path = archive_path(setup, saveset)
    flip_byte(path, path.stat().st_size - 10)
    bad = cli("verify", chain[0], "--json")
    assert bad.exit_code == 1
    assert json.loads(bad.stdout)["ok"] is False


def test_pools_json(cli, chain: list[str]) -> None:  # type: ignore[no-untyped-def]
    pools = as_json(cli("pools", "--json"))
    assert [p["name"] for p in pools] == ["daily", "spare"]
    for pool in pools:
        assert set(pool) >= {"name", "data_store", "rds", "availability", "used_bytes",
                             "free_bytes", "media"}
        # no worker serves RDS local in this test
        assert pool["availability"] == "rds_unreachable"


def test_purge_dry_run_json(cli, chain: list[str]) -> None:  # type: ignore[no-untyped-def]
    result = as_json(cli("purge", "--dry-run", "--json"))
    assert result == {"dry_run": True, "deleted": [], "bytes": 0, "skipped": []}


def test_catalog_rebuild_json(cli, chain: list[str]) -> None:  # type: ignore[no-untyped-def]
    result = as_json(cli("catalog", "rebuild", "--json"))
    assert result["added"] == 2
    assert {"name": "a", "savesets": 2} in result["stores"]


@pytest.mark.parametrize(("args", "message"), [
    (("verify", "nope"), "unknown saveset 'nope'"),
    (("restore", "--saveset", "nope", "--to", "/tmp/x"), "unknown saveset 'nope'"),
    (("restore", "--to", "/tmp/x"), "give --saveset ID or --task T"),
    (("restore", "--task", "docs", "--at", "yesterday", "--to", "/tmp/x"), "bad time"),
    (("restore", "--task", "docs", "--at", "2000-01-01T00:00:00", "--to", "/tmp/x"),
     "no saveset of task 'docs' taken at or before"),
    (("store", "init", "c"), "unknown data store 'c'"),
])
def test_bad_input_exits_2_and_says_what_is_wrong(cli, chain: list[str], args: tuple[str, ...],  # type: ignore[no-untyped-def]
                                                  message: str) -> None:
    result = cli(*args)
    assert result.exit_code == 2
    assert message in result.output


def test_store_init_creates_an_empty_store_and_refuses_a_foreign_directory(  # type: ignore[no-untyped-def]
        cli, setup: Setup) -> None:
    root = setup.engine.stores["b"].root  # type: ignore[attr-defined]
    for item in root.iterdir():
        item.unlink()
    root.rmdir()
    assert cli("store", "init", "b").exit_code == 0
    assert setup.engine.stores["b"].space().free_bytes > 0
    foreign = setup.root / "foreign"
    foreign.mkdir()
    (foreign / "somebody's file").write_text("keep")
    setup.settings.config_path.write_text(setup.settings.config_path.read_text().replace(
        "stores/b", "foreign"))
    result = cli("store", "init", "b")
    assert result.exit_code == 1
    assert "not empty and has no store marker" in result.output


def test_verify_of_an_inc_says_what_it_checked_and_where_its_other_files_are(  # type: ignore[no-untyped-def]
        cli, chain: list[str]) -> None:
    done = cli("verify", chain[1])
    assert done.exit_code == 0, done.output
    assert "1 files stored in it checked" in done.stdout and "OK" in done.stdout
    assert f"its other files are kept in {chain[0]}" in done.stdout


def test_diff_without_changes_says_so(cli, chain: list[str]) -> None:  # type: ignore[no-untyped-def]
    done = cli("diff", chain[0], chain[0])
    assert done.exit_code == 0 and done.stdout == ""
    assert f"no changes from {chain[0]} to {chain[0]}" in done.stderr


def test_restore_stdout_writes_exactly_one_file(cli, chain: list[str]) -> None:  # type: ignore[no-untyped-def]
    done = cli("restore", "--saveset", chain[1], "--include", "b.txt", "--stdout")
    assert done.exit_code == 0, done.output
    assert done.stdout_bytes == b"second"
    # a file the INC keeps from its base comes from the base's archive
    done = cli("restore", "--task", "docs", "--include", "a.txt", "--stdout")
    assert done.exit_code == 0 and done.stdout_bytes == b"first"
    for pattern, matched in (("*.txt", "matches 2"), ("nothing.here", "matches 0")):
        done = cli("restore", "--saveset", chain[1], "--include", pattern, "--stdout")
        assert done.exit_code == 2 and matched in done.stderr, done.output
    done = cli("restore", "--saveset", chain[1], "--stdout")
    assert done.exit_code == 2 and "--include" in done.output
