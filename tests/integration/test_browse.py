"""SPEC section 11 `ls`, `find` and `diff` on a real chain of savesets, through the
command line, from manifests alone."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from click.testing import CliRunner

from backstop.config import Level
from backstop.orchestration.cli import main
from tests.integration.conftest import Setup
from tests.invariants import cli_json


def chain(setup: Setup) -> tuple[str, str]:
    src = setup.source
    (src / "docs" / "deep").mkdir(parents=True)
    (src / "docs" / "a.txt").write_text("alpha")
    (src / "docs" / "deep" / "b.bin").write_bytes(os.urandom(3000))
    os.symlink("docs/a.txt", src / "latest")
    (src / "empty").mkdir()
    full = setup.backup(Level.FULL).saveset.id
    setup.clock.now += timedelta(hours=1)
    (src / "docs" / "a.txt").write_text("alpha, changed")
    (src / "docs" / "new.txt").write_text("new")
    os.remove(src / "docs" / "deep" / "b.bin")
    inc = setup.backup(Level.INC).saveset.id
    return full, inc


def test_ls_lists_a_saveset_as_of_its_time_with_the_chain_applied(
        setup: Setup, broker_url: str) -> None:
    full, inc = chain(setup)
    config, env = setup.settings.config_path, {"BACKSTOP_BROKER_URL": broker_url}
    listed = {line["path"]: line for line in cli_json(config, "ls", inc, env=env)}
    # everything present at the INC, the unchanged files (held by the FULL) too
    assert set(listed) == {"docs", "docs/a.txt", "docs/new.txt", "docs/deep", "latest",
                           "empty"}
    a = listed["docs/a.txt"]
    assert set(a) >= {"path", "type", "size", "mtime", "mode", "uid", "gid"}
    assert (a["type"], a["size"], a["uid"]) == ("file", 14, os.getuid())
    assert a["mtime"].endswith("+00:00")
    assert (listed["latest"]["type"], listed["latest"]["target"]) == ("symlink", "docs/a.txt")
    assert listed["empty"]["type"] == "dir"
    # a PATH lists what is under it; the FULL still has the file the INC no longer has
    assert [line["path"] for line in cli_json(config, "ls", inc, "docs/deep", env=env)] == [
        "docs/deep"]
    assert "docs/deep/b.bin" in {line["path"] for line in cli_json(config, "ls", full, env=env)}
    # unknown saveset or path: exit 2 naming it
    runner = CliRunner()
    bad = runner.invoke(main, ["ls", "docs-nope", "-c", str(config)], env=env)
    assert bad.exit_code == 2 and "unknown saveset 'docs-nope'" in bad.output
    bad = runner.invoke(main, ["ls", inc, "nowhere", "-c", str(config)], env=env)
    assert bad.exit_code == 2 and "holds no path 'nowhere'" in bad.output


def test_find_and_diff(setup: Setup, broker_url: str) -> None:
    full, inc = chain(setup)
    config, env = setup.settings.config_path, {"BACKSTOP_BROKER_URL": broker_url}
    found = cli_json(config, "find", "*.txt", "--task", "docs", env=env)
    assert [(f["saveset"], f["path"]) for f in found] == [
        (inc, "docs/a.txt"), (inc, "docs/new.txt"), (full, "docs/a.txt")]
    assert set(found[0]) == {"saveset", "task", "created_at", "path", "size", "mtime"}
    # a directory pattern finds the directory and what is in it (gitignore semantics)
    assert [f["path"] for f in cli_json(config, "find", "deep/", env=env)] == [
        "docs/deep", "docs/deep", "docs/deep/b.bin"]
    changes = cli_json(config, "diff", full, inc, env=env)
    assert changes["added"] == ["docs/new.txt"]
    assert changes["removed"] == ["docs/deep/b.bin"]
    assert "docs/a.txt" in changes["changed"] and "latest" not in changes["changed"]
    assert cli_json(config, "diff", inc, inc, env=env) == {"added": [], "removed": [],
                                                           "changed": []}


def test_diff_of_two_tasks_is_refused(setup: Setup, broker_url: str, tmp_path: Path) -> None:
    full, _ = chain(setup)
    other = setup.backup(Level.FULL).saveset
    other_task = other.__class__(**{**other.__dict__, "id": "www-1", "task": "www"})
    setup.catalog.add(other_task, setup.catalog.manifest(other.id) or b"")
    done = CliRunner().invoke(main, ["diff", full, "www-1", "-c",
                                     str(setup.settings.config_path)],
                              env={"BACKSTOP_BROKER_URL": broker_url})
    assert done.exit_code == 2 and "compare two savesets of one task" in done.output


def test_restore_include_brings_back_only_the_matching_paths(
        setup: Setup, broker_url: str, tmp_path: Path) -> None:
    _, inc = chain(setup)
    os.link(setup.source / "docs" / "a.txt", setup.source / "hard.txt")
    setup.clock.now += timedelta(hours=1)
    with_link = setup.backup(Level.INC).saveset.id
    config, env = setup.settings.config_path, {"BACKSTOP_BROKER_URL": broker_url}
    done = cli_json(config, "restore", "--saveset", inc, "--to", str(tmp_path / "one"),
                    "--include", "docs/new.txt", env=env)
    assert done["files"] == 1
    assert sorted(str(p.relative_to(tmp_path / "one"))
                  for p in (tmp_path / "one").rglob("*")) == ["docs", "docs/new.txt"]
    # a directory comes with its contents; a hard link alone comes back as its file
    cli_json(config, "restore", "--saveset", with_link, "--to", str(tmp_path / "two"),
             "--include", "deep/", "--include", "hard.txt", env=env)
    assert sorted(str(p.relative_to(tmp_path / "two")) for p in (tmp_path / "two").rglob("*")
                  ) == ["docs", "docs/deep", "hard.txt"]
    assert (tmp_path / "two" / "hard.txt").read_text() == "alpha, changed"
