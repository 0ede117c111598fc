"""An in-place upgrade loses nothing: savesets and catalog entries written by the release
before this one (its code checked out from this repository's history) are read by this
code: restored, verified, rebuilt into the catalog, and used as the base of an INC."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from datetime import timedelta
from pathlib import Path

import pytest

from backstop.config import Level
from backstop.workers.engine import read_committed
from tests.integration.conftest import Setup, snapshot

REPO = Path(__file__).resolve().parents[2]
EARLIER = "5e326c5"  # the release before the package was renamed and savesets encrypted

WRITE_WITH_EARLIER = """
import os, sys
from datetime import UTC, datetime
import redis
from core.config import Level
from core.settings import load_settings
from orchestration.catalog import RedisCatalog
from workers.engine import BackupRequest, Engine
config, url, source = sys.argv[1:4]
settings = load_settings(config, {"BACKSTOP_BROKER_URL": url})
engine = Engine(settings, RedisCatalog(redis.Redis.from_url(url)))
full = engine.backup(BackupRequest("docs", Level.FULL, "daily")).saveset
with open(os.path.join(source, "b.txt"), "w") as out:
    out.write("changed after the FULL")
inc = engine.backup(BackupRequest("docs", Level.INC, "daily")).saveset
print(full.id, inc.id)
"""


@pytest.fixture
def earlier_code(tmp_path: Path) -> Path:
    """The earlier release's code, from git (skips where the history is not at hand)."""
    tree = tmp_path / "earlier"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", EARLIER, "core", "workers",
                              "orchestration"], capture_output=True, check=False)
    if archive.returncode != 0:
        pytest.skip(f"commit {EARLIER} is not in this clone's history")
    (tmp_path / "earlier.tar").write_bytes(archive.stdout)
    with tarfile.open(tmp_path / "earlier.tar") as unpacked:
        unpacked.extractall(tree, filter="data")
    return tree


def test_savesets_of_the_earlier_release_restore_verify_and_serve_as_a_base(
        setup: Setup, earlier_code: Path, broker_url: str, tmp_path: Path) -> None:
    # Given a FULL and an INC written by the earlier release's engine
    (setup.source / "a.txt").write_text("first")
    (setup.source / "b.txt").write_text("second")
    done = subprocess.run(
        [sys.executable, "-c", WRITE_WITH_EARLIER, str(setup.settings.config_path),
         broker_url, str(setup.source)],
        env={**os.environ, "PYTHONPATH": str(earlier_code)}, cwd=earlier_code,
        capture_output=True, text=True,
        timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    full_id, inc_id = done.stdout.split()
    # Then this code reads their records, restores the INC exactly and verifies both
    inc = setup.catalog.get(inc_id)
    assert inc is not None and inc.based_on == full_id and not inc.encrypted
    setup.restorer.restore(inc, tmp_path / "back")
    assert snapshot(tmp_path / "back") == snapshot(setup.source)
    for saveset_id in (full_id, inc_id):
        found = setup.catalog.get(saveset_id)
        assert found is not None and setup.restorer.verify(found).ok
    # And their records as stored read back whole (a catalog rebuilt from the store)
    stored, _ = read_committed(setup.engine.stores["a"], inc.key)
    assert stored == inc
    # And an INC of this code is based on the earlier release's INC
    setup.clock.now += timedelta(days=1)
    (setup.source / "c.txt").write_text("new")
    newer = setup.backup(Level.INC).saveset
    assert (newer.level, newer.based_on, newer.files) == (Level.INC, inc_id, 1)
