"""Streams: the output of real commands stored as files of a saveset, read back whole."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
import zstandard
from celery.contrib.testing.worker import start_worker

from backstop.config import Level
from backstop.constants import CONTROL_QUEUE, rds_queue
from backstop.errors import SourceError
from backstop.orchestration.app import create_app
from backstop.orchestration.catalog import RedisCatalog
from backstop.orchestration.heartbeat import live_workers
from backstop.orchestration.ledger import Ledger
from backstop.orchestration.tasks import close_context
from backstop.settings import load_settings
from backstop.workers.age import Identity, write_identity
from backstop.workers.engine import create_missing_stores
from backstop.workers.restore import Restorer
from backstop.workers.single import copy_out, one_file
from backstop.workers.store import ARCHIVE
from backstop.workers.streams import PART_BYTES
from tests.integration.conftest import Setup, WorkerFleet, snapshot
from tests.waiting import wait_for

DUMPGEN = str(Path(__file__).resolve().parents[1] / "dumpgen.py")
STREAMS_CONFIG = """
rds: [{{name: local}}]
data_stores:
  - {{name: a, rds: local, path: stores/a, create: true}}
  - {{name: b, rds: local, path: stores/b, create: true}}
media_pools:
  - {{name: daily, data_store: a, retention: 14d}}
  - {{name: spare, data_store: b, retention: 14d}}
data_path: {{io_timeout: 2s}}
tasks:
  - name: docs
    source: src
    streams: {streams}
"""


def dump_command(size: int) -> list[str]:
    return [sys.executable, DUMPGEN, str(size)]


def dump_bytes(size: int) -> bytes:
    return subprocess.run(dump_command(size), check=True, capture_output=True).stdout


def with_streams(make_setup: Callable[..., Setup], streams: str) -> Setup:
    return make_setup(STREAMS_CONFIG.format(streams=streams))


def argv(command: list[str]) -> str:
    return json.dumps(command)  # JSON is YAML: a flow sequence of quoted strings


def test_a_stream_longer_than_a_part_restores_byte_for_byte_beside_the_source(
        make_setup: Callable[..., Setup], tmp_path: Path) -> None:
    size = 2 * PART_BYTES + 12_345
    setup = with_streams(make_setup, f"[{{name: app.dump, argv: {argv(dump_command(size))}}},"
                                     " {name: globals.sql, argv: [echo, CREATE ROLE app;]}]")
    (setup.source / "a.txt").write_text("alpha")
    (setup.source / "z").mkdir()
    (setup.source / "z" / "b.txt").write_text("beta")
    result = setup.backup(Level.INC)
    saveset = result.saveset
    # Then it ran as FULL, saying why, with the streams as files at the top
    assert saveset.level is Level.FULL
    assert any("streams" in w and "FULL" in w for w in result.warnings), result.warnings
    assert (saveset.files, saveset.bytes) == (4, size + len("CREATE ROLE app;\n") + 5 + 4)
    restored = tmp_path / "back"
    setup.restorer.restore(saveset, restored)
    expected = dump_bytes(size)
    assert (restored / "app.dump").read_bytes() == expected
    assert (restored / "globals.sql").read_bytes() == b"CREATE ROLE app;\n"
    assert oct((restored / "app.dump").stat().st_mode & 0o777) == "0o600"
    assert snapshot(restored, lambda p: p.endswith((".dump", ".sql"))) == snapshot(setup.source)
    assert setup.restorer.verify(saveset).ok
    # And one file alone to a stream, as `restore --include app.dump --stdout` does
    out = io.BytesIO()
    entry = one_file(setup.restorer, saveset, ["app.dump"])
    assert copy_out(setup.restorer, saveset, entry, out) == size
    assert hashlib.sha256(out.getvalue()).digest() == hashlib.sha256(expected).digest()
    # And without Backstop: zstd -d | tar -x gives its parts, which cat joins
    archive = setup.settings.resolve(Path("stores/a"))
    [stored] = archive.rglob(ARCHIVE)
    with zstandard.ZstdDecompressor().stream_reader(stored.open("rb"),
                                                    read_across_frames=True) as data, \
            tarfile.open(fileobj=data, mode="r|") as tar:
        tar.extractall(tmp_path / "plain", filter="data")
    parts = sorted((tmp_path / "plain").glob("app.dump.part-*"))
    assert [p.name for p in parts] == [f"app.dump.part-00000{i}" for i in (1, 2, 3)]
    assert b"".join(p.read_bytes() for p in parts) == expected
    assert (tmp_path / "plain" / "globals.sql").read_bytes() == b"CREATE ROLE app;\n"


def test_a_task_of_streams_alone_needs_no_source(make_setup: Callable[..., Setup],
                                                 tmp_path: Path) -> None:
    setup = make_setup(STREAMS_CONFIG.format(streams="[{name: one, argv: [echo, hi]}]")
                       .replace("    source: src\n", ""))
    saveset = setup.backup().saveset
    setup.restorer.restore(saveset, tmp_path / "back")
    assert os.listdir(tmp_path / "back") == ["one"]
    assert (tmp_path / "back" / "one").read_bytes() == b"hi\n"


@pytest.mark.parametrize(("command", "says"), [
    ("[sh, -c, 'echo partial; echo pg_dump: error: connection refused >&2; exit 3']",
     "sh exited with status 3; its standard error ends: pg_dump: error: connection refused"),
    ("[sh, -c, 'echo partial; kill -9 $$']", "sh was killed by signal SIGKILL"),
    ("[/nonexistent/pg_dump]", "/nonexistent/pg_dump could not be started: No such file"),
])
def test_a_failing_stream_fails_the_run_naming_it_and_leaves_no_saveset(
        make_setup: Callable[..., Setup], command: str, says: str) -> None:
    setup = with_streams(make_setup, f"[{{name: app.dump, argv: {command}}}]")
    with pytest.raises(SourceError) as failed:
        setup.backup()
    assert f"stream app.dump: {says}" in str(failed.value)
    assert setup.catalog.all() == []
    assert not list(setup.settings.resolve(Path("stores")).rglob("pools/*/*/*"))


def test_a_silent_stream_is_killed_with_its_children(make_setup: Callable[..., Setup],
                                                     tmp_path: Path) -> None:
    setup = with_streams(make_setup, "[{name: app.dump, argv: [sh, -c, "
                                     "'echo started; sleep 60 & echo $! > child.pid; wait']}]")
    with pytest.raises(SourceError, match=re.escape(
            "stream app.dump: sh wrote nothing for 2s and was killed with its children")):
        setup.backup()
    child = int((tmp_path / "child.pid").read_text())
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(
        f"/proc/{child}/stat").read_text().split()[2]
    assert setup.catalog.all() == []


def test_a_stream_named_like_a_path_of_the_source_is_refused(
        make_setup: Callable[..., Setup]) -> None:
    setup = with_streams(make_setup, "[{name: a.txt, argv: [echo, hi]}]")
    (setup.source / "a.txt").write_text("alpha")
    with pytest.raises(SourceError,
                       match=re.escape("stream a.txt has the name of a path of source")):
        setup.backup()


def test_an_encrypted_stream_is_sealed_and_read_back_one_file_alone(
        make_setup: Callable[..., Setup], tmp_path: Path) -> None:
    identity = Identity.generate()
    write_identity(tmp_path / "host.key", identity)
    size = PART_BYTES + 1000
    setup = make_setup(STREAMS_CONFIG.format(
        streams=f"[{{name: app.dump, argv: {argv(dump_command(size))}}}]")
        + f"encryption: {{recipients: [{identity.recipient}], identity_file: host.key}}\n")
    saveset = setup.backup().saveset
    assert saveset.encrypted
    [stored] = setup.settings.resolve(Path("stores/a")).rglob(ARCHIVE)
    assert b"INSERT INTO" not in stored.read_bytes()
    restorer = Restorer(setup.catalog, setup.engine.stores, setup.engine.keyring)
    out = io.BytesIO()
    entry = one_file(restorer, saveset, ["app.dump"])
    assert copy_out(restorer, saveset, entry, out) == size
    assert out.getvalue() == dump_bytes(size)
    checked = restorer.verify(saveset)
    assert (checked.ok, checked.checked) == (True, "files")


FAILOVER_CONFIG = """
rds: [{name: local}]
data_stores:
  - {name: small, rds: local, path: stores/small, create: true, capacity: 3MiB}
  - {name: big, rds: local, path: stores/big, create: true}
media_pools:
  - {name: daily, data_store: small, retention: 14d}
  - {name: spare, data_store: big, retention: 14d}
tasks:
  - name: db
    streams:
      - {name: db.dump, argv: [sh, -c, "echo $$ >> runs.log; head -c 6000000 /dev/urandom"]}
events:
  - {name: db-now, task: db, level: INC, media_pool: daily, failover_event: db-spare}
  - {name: db-spare, task: db, media_pool: spare}
"""


def test_storage_lost_mid_stream_fails_over_and_the_failover_runs_the_command_again(
        tmp_path: Path, broker_url: str, redis_client: redis.Redis) -> None:
    (tmp_path / "backstop.yaml").write_text(FAILOVER_CONFIG)
    settings = load_settings(str(tmp_path / "backstop.yaml"), {"BACKSTOP_BROKER_URL": broker_url})
    create_missing_stores(settings, ["local"])
    app = create_app(settings, broker_url)
    with start_worker(app, queues=[CONTROL_QUEUE, rds_queue("local")], pool="threads",
                      concurrency=2, perform_ping_check=False, hostname="streams@test"):
        wait_for(lambda: any("local" in w.rds for w in live_workers(redis_client)),
                 "the worker's heartbeat")
        fleet = WorkerFleet(app, Ledger(redis_client), tmp_path)
        origin, failover = fleet.settled(fleet.occur("db-now"))
    close_context(app)
    assert (origin["state"], origin["error"]["reason"]) == ("storage_unavailable", "out_of_space")
    assert (failover["state"], failover["effective_level"]) == ("succeeded", "FULL")
    assert len((tmp_path / "runs.log").read_text().split()) == 2  # the command ran twice
    saveset = RedisCatalog(redis_client).get(failover["saveset"])
    assert saveset is not None and saveset.pool == "spare" and saveset.bytes == 6_000_000
    assert not list((tmp_path / "stores" / "small").rglob("pools/*/*/*"))  # nothing left


# One backup of task docs in a process of its own, then its one stream read back to a
# hash: prints the stream's size, the hash, and the process's peak RSS in MiB.
BACKUP_IN_A_PROCESS = """
import hashlib, json, sys
from pathlib import Path
import redis
from backstop.config import Level
from backstop.orchestration.catalog import RedisCatalog
from backstop.settings import load_settings
from backstop.workers.engine import BackupRequest, Engine, create_missing_stores
from backstop.workers.restore import Restorer
from backstop.workers.single import copy_out, one_file
config, url = sys.argv[1:]
settings = load_settings(config, {"BACKSTOP_BROKER_URL": url})
catalog = RedisCatalog(redis.Redis.from_url(url))
create_missing_stores(settings, ["local"])
engine = Engine(settings, catalog)
saveset = engine.backup(BackupRequest("docs", Level.FULL, "daily")).saveset
class Hashing:
    digest = hashlib.sha256()
    def write(self, data): self.digest.update(data)
    def flush(self): pass
out = Hashing()
restorer = Restorer(catalog, engine.stores)
size = copy_out(restorer, saveset, one_file(restorer, saveset, ["app.dump"]), out)
# VmHWM belongs to this process alone; ru_maxrss would carry the parent's peak across exec
hwm = next(line for line in Path("/proc/self/status").read_text().splitlines()
           if line.startswith("VmHWM:"))
print(json.dumps({"size": size, "sha256": out.digest.hexdigest(),
                  "peak_rss_mib": int(hwm.split()[1]) / 1024}))
"""


def test_a_stream_of_hundreds_of_megabytes_comes_back_identical_in_flat_memory(
        tmp_path: Path, broker_url: str) -> None:
    peaks = {}
    for size in (20 << 20, 400 << 20):
        root = tmp_path / str(size)
        root.mkdir()
        (root / "backstop.yaml").write_text(STREAMS_CONFIG.format(
            streams=f"[{{name: app.dump, argv: {argv(dump_command(size))}}}]")
            .replace("    source: src\n", ""))
        done = subprocess.run([sys.executable, "-c", BACKUP_IN_A_PROCESS,
                               str(root / "backstop.yaml"), broker_url],
                              capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        measured = json.loads(done.stdout)
        expected = hashlib.sha256()
        with subprocess.Popen(dump_command(size), stdout=subprocess.PIPE) as generated:
            assert generated.stdout is not None
            while chunk := generated.stdout.read(1 << 20):
                expected.update(chunk)
        assert (measured["size"], measured["sha256"]) == (size, expected.hexdigest())
        peaks[size] = measured["peak_rss_mib"]
    # twenty times the stream, the same memory: a part and the frames in flight, not more
    assert peaks[400 << 20] - peaks[20 << 20] < 40, peaks
    assert peaks[400 << 20] < 250, peaks
    print(f"peak RSS of a backup and restore of a stream: {peaks} MiB")
