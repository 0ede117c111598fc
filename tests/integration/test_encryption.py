"""Encrypted savesets with a real catalog and real stores: what the store holds, what reads
it back and what cannot, write-only hosts, damage, and recovery with age, zstd and tar."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from backstop.config import Level
from backstop.errors import SourceError
from backstop.orchestration.cli import main
from backstop.workers.age import Identity, read_identities, write_identity
from backstop.workers.engine import BackupRequest
from backstop.workers.restore import Restorer
from backstop.workers.store import ARCHIVE, MANIFEST
from tests.integration.conftest import Setup, snapshot
from tests.system_tools import require

MARKER = b"PLAINTEXT-MARKER-4711"
SECRET_NAME = "quarterly-salaries-2026.csv"


def encrypted_config(recipients: list[str], identity_file: str | None) -> str:
    identity = f", identity_file: {identity_file}" if identity_file else ""
    return f"""
rds: [{{name: local}}]
data_stores:
  - {{name: a, rds: local, path: stores/a, create: true}}
  - {{name: b, rds: local, path: stores/b, create: true}}
media_pools:
  - {{name: daily, data_store: a, retention: 14d}}
  - {{name: vault, data_store: b, retention: 90d}}
migration_tasks: [{{name: offsite, target_pool: vault}}]
encryption: {{recipients: {json.dumps(recipients)}{identity}}}
tasks: [{{name: docs, source: src}}, {{name: open, source: src, encryption: none}}]
"""


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Identity, Identity, Path]:
    """The hosts' identity (its file in the test directory) and an offline recovery one."""
    host, recovery = Identity.generate(), Identity.generate()
    write_identity(tmp_path / "host.key", host)
    return host, recovery, tmp_path / "host.key"


@pytest.fixture
def sealed_setup(make_setup: Callable[..., Setup], keys: tuple[Identity, Identity, Path],
                 broker_url: str, monkeypatch: pytest.MonkeyPatch) -> Setup:
    host, recovery, key = keys
    monkeypatch.setenv("BACKSTOP_BROKER_URL", broker_url)
    setup = make_setup(encrypted_config([str(host.recipient), str(recovery.recipient)],
                                        str(key)))
    (setup.source / "hr").mkdir()
    (setup.source / "hr" / SECRET_NAME).write_bytes(MARKER * 1000)
    (setup.source / "big.bin").write_bytes(os.urandom(9 << 20))  # a frame and more
    return setup


def cli(setup: Setup, *args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, [*args, "-c", str(setup.settings.config_path)],
                              env=env)


def stored_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted((root / "stores").rglob("*"))
                    if p.is_file())


def test_an_encrypted_chain_restores_exactly_and_the_store_holds_only_ciphertext(
        sealed_setup: Setup, tmp_path: Path) -> None:
    setup = sealed_setup
    # Given a FULL, then an INC after one file changed
    full = setup.backup(Level.FULL).saveset
    setup.clock.now += timedelta(hours=1)
    (setup.source / "hr" / "new.txt").write_text("one more")
    inc = setup.backup(Level.INC).saveset
    # Then the INC stored one file, and both savesets say whom they are encrypted to
    assert (inc.level, inc.files, inc.based_on) == (Level.INC, 1, full.id)
    listed = json.loads(cli(setup, "savesets", "--json").stdout)
    assert all(len(s["encryption"]["recipients"]) == 2 for s in listed)
    # And neither the store nor the catalog holds a file's content or name
    stored = stored_bytes(setup.root)
    assert MARKER not in stored and SECRET_NAME.encode() not in stored
    assert setup.catalog.manifest(full.id) is None
    # And the restore of the INC rebuilds the source exactly
    done = cli(setup, "restore", "--saveset", inc.id, "--to", str(tmp_path / "back"), "--json")
    assert done.exit_code == 0, done.output
    assert snapshot(tmp_path / "back") == snapshot(setup.source)
    # And ls, find and diff read the encrypted manifests
    assert f"hr/{SECRET_NAME}" in cli(setup, "ls", inc.id).stdout
    assert "hr/new.txt" in cli(setup, "find", "new.txt").stdout
    assert json.loads(cli(setup, "diff", full.id, inc.id, "--json").stdout)["added"] == [
        "hr/new.txt"]


def test_one_file_is_read_from_its_chunks_only(sealed_setup: Setup, tmp_path: Path) -> None:
    setup = sealed_setup
    saveset = setup.backup(Level.FULL).saveset
    done = cli(setup, "restore", "--saveset", saveset.id, "--include", f"hr/{SECRET_NAME}",
               "--to", str(tmp_path / "one"))
    assert done.exit_code == 0, done.output
    assert (tmp_path / "one" / "hr" / SECRET_NAME).read_bytes() == MARKER * 1000
    assert not (tmp_path / "one" / "big.bin").exists()


def test_a_saveset_is_recovered_with_age_zstd_and_tar_alone(
        sealed_setup: Setup, keys: tuple[Identity, Identity, Path], tmp_path: Path) -> None:
    age, zstd = require("age", "age"), require("zstd", "zstd")
    setup = sealed_setup
    saveset = setup.backup(Level.FULL).saveset
    folder = setup.root / "stores" / "a" / "pools" / "daily" / saveset.medium / saveset.id
    _, recovery, _ = keys
    offline = tmp_path / "recovery.key"
    write_identity(offline, recovery)  # the offline recovery key alone
    out = tmp_path / "bare"
    out.mkdir()
    pipeline = (f"{age} -d -i {offline} {folder / ARCHIVE} | {zstd} -d | tar -x -C {out}")
    done = subprocess.run(["sh", "-c", pipeline], capture_output=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert (out / "hr" / SECRET_NAME).read_bytes() == MARKER * 1000
    manifest = subprocess.run([age, "-d", "-i", str(offline), str(folder / MANIFEST)],
                              capture_output=True, timeout=60, check=True).stdout
    assert manifest  # the manifest decrypts too (zstd-compressed rows)


def test_a_write_only_host_backs_up_never_reads_back_and_keeps_its_own_base(
        make_setup: Callable[..., Setup], keys: tuple[Identity, Identity, Path],
        broker_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    host, _, key = keys
    monkeypatch.setenv("BACKSTOP_BROKER_URL", broker_url)
    # Given a host with the recipients and no identity
    setup = make_setup(encrypted_config([str(host.recipient)], None))
    (setup.source / "a.txt").write_text("first")
    full = setup.backup(Level.FULL).saveset
    # When one file changes, Then an INC stores that file alone, against its own copy
    setup.clock.now += timedelta(hours=1)
    (setup.source / "b.txt").write_text("second")
    inc = setup.backup(Level.INC)
    assert (inc.saveset.level, inc.saveset.files, inc.warnings) == (Level.INC, 1, ())
    # And it cannot read anything back: exit 2, naming the task
    for args in (("restore", "--saveset", inc.saveset.id, "--to", str(tmp_path / "r")),
                 ("ls", inc.saveset.id), ("find", "a.txt", "--task", "docs"),
                 ("diff", full.id, inc.saveset.id)):
        done = cli(setup, *args)
        assert done.exit_code == 2 and "no identity for task docs" in done.output, args
    # And without its copy of the base, the next INC is a FULL that says why
    for copy in (setup.settings.state_dir / "manifests").rglob("*"):
        if copy.is_file():
            copy.unlink()
    setup.clock.now += timedelta(hours=1)
    again = setup.backup(Level.INC)
    assert again.saveset.level is Level.FULL
    assert any("ran as FULL" in w and "no copy" in w for w in again.warnings)
    # And with the identity elsewhere, every saveset restores
    done = cli(setup, "restore", "--saveset", inc.saveset.id, "--to", str(tmp_path / "r"),
               env={"BACKSTOP_IDENTITY_FILE": str(key)})
    assert done.exit_code == 0, done.output
    assert (tmp_path / "r" / "b.txt").read_text() == "second"


def test_wrong_or_unsafe_keys_are_refused_naming_what(sealed_setup: Setup,
                                                       tmp_path: Path) -> None:
    setup = sealed_setup
    saveset = setup.backup(Level.FULL).saveset
    stranger = tmp_path / "stranger.key"
    write_identity(stranger, Identity.generate())
    done = cli(setup, "restore", "--saveset", saveset.id, "--to", str(tmp_path / "x"),
               env={"BACKSTOP_IDENTITY_FILE": str(stranger)})
    assert done.exit_code == 2
    assert f"no identity in {stranger} opens saveset {saveset.id}" in done.output
    stranger.chmod(0o644)
    done = cli(setup, "ls", saveset.id, env={"BACKSTOP_IDENTITY_FILE": str(stranger)})
    assert done.exit_code == 2 and "readable by others" in done.output


def test_damage_is_named_by_verify_and_nothing_unauthenticated_is_restored(
        sealed_setup: Setup) -> None:
    setup = sealed_setup
    saveset = setup.backup(Level.FULL).saveset
    ok = json.loads(cli(setup, "verify", saveset.id, "--json").stdout)
    assert (ok["ok"], ok["checked"], ok["files"]) == (True, "files", 2)
    # When a byte of the archive's ciphertext flips
    archive = (setup.root / "stores" / "a" / "pools" / "daily" / saveset.medium / saveset.id
               / ARCHIVE)
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 1
    archive.write_bytes(bytes(data))
    # Then verify with the identity names the damaged file (and no other), exit 1
    bad = cli(setup, "verify", saveset.id, "--json")
    found: dict[str, Any] = json.loads(bad.stdout)
    assert bad.exit_code == 1 and not found["ok"]
    assert found["bad"] == ["big.bin"], found
    # And where there is no identity (a storage node), its stored bytes do not match
    keyless = Restorer(setup.catalog, setup.engine.stores).verify(saveset)
    assert (keyless.ok, keyless.checked) == (False, "ciphertext")
    assert keyless.bad == ["(archive.tar.zst) does not match its recorded hash"]
    # And a restore gives back the other files, names the damaged one, exits 1, and never
    # writes what did not authenticate
    done = cli(setup, "restore", "--saveset", saveset.id, "--to",
               str(setup.root / "restored"))
    assert done.exit_code == 1, done.output
    assert "damaged, not restored: big.bin" in done.output
    assert not (setup.root / "restored" / "big.bin").exists()
    assert (setup.root / "restored" / "hr" / SECRET_NAME).read_bytes() == MARKER * 1000


def test_a_migration_copies_ciphertext_without_a_key_and_the_copy_restores(
        sealed_setup: Setup, make_setup: Callable[..., Setup],
        keys: tuple[Identity, Identity, Path], tmp_path: Path) -> None:
    setup = sealed_setup
    saveset = setup.backup(Level.FULL).saveset
    host, _, key = keys
    # Given an engine with no identity (a storage node: the same config, less the identity),
    # When it migrates the saveset
    keyless = make_setup(encrypted_config([str(host.recipient)], None))
    copy, _ = keyless.engine.migrate(saveset.id, "offsite", None)
    keyless.catalog.add(copy, b"")
    assert copy.encrypted and copy.manifest_of == saveset.id
    # Then the copy's ciphertext checks out without a key, and restores with one
    assert keyless.restorer.verify(copy).checked == "ciphertext"
    setup.catalog.remove(saveset)  # the original purged: the copy stands alone
    done = cli(setup, "restore", "--saveset", copy.id, "--to", str(tmp_path / "c"),
               env={"BACKSTOP_IDENTITY_FILE": str(key)})
    assert done.exit_code == 0, done.output
    assert (tmp_path / "c" / "hr" / SECRET_NAME).read_bytes() == MARKER * 1000


def test_a_task_with_encryption_none_writes_plain_savesets(sealed_setup: Setup) -> None:
    setup = sealed_setup
    saveset = setup.engine.backup(BackupRequest("open", Level.FULL, "daily")).saveset
    assert not saveset.encrypted and setup.catalog.manifest(saveset.id) is not None


def test_keys_new_writes_a_private_identity_and_which_lists_what_each_recipient_opens(
        sealed_setup: Setup, keys: tuple[Identity, Identity, Path], tmp_path: Path) -> None:
    setup = sealed_setup
    out = tmp_path / "new.key"
    made = CliRunner().invoke(main, ["keys", "new", "--out", str(out)])
    assert made.exit_code == 0, made.output
    assert (out.stat().st_mode & 0o777) == 0o600
    [identity] = read_identities(out)
    assert made.stdout.strip() == str(identity.recipient)
    assert identity.encoded() not in made.output
    again = CliRunner().invoke(main, ["keys", "new", "--out", str(out)])
    assert again.exit_code == 2 and "exists" in again.output
    # which: both recipients of the config open the saveset; the plain one is no one's
    saveset = setup.backup(Level.FULL).saveset
    setup.engine.backup(BackupRequest("open", Level.FULL, "daily"))
    host, recovery, _ = keys
    listed = json.loads(cli(setup, "keys", "which", "--json").stdout)
    assert sorted(listed, key=lambda r: r["recipient"]) == sorted(
        [{"recipient": str(host.recipient), "savesets": [saveset.id]},
         {"recipient": str(recovery.recipient), "savesets": [saveset.id]}],
        key=lambda r: r["recipient"])


def test_a_file_an_encrypted_task_cannot_read_is_not_named_in_its_error(
        sealed_setup: Setup) -> None:
    setup = sealed_setup
    secret = setup.source / "hr" / SECRET_NAME

    def swap(*_: int) -> None:  # after the first file: the next one turns into a directory
        if secret.is_file():
            secret.unlink()
            secret.mkdir()

    with pytest.raises(SourceError) as caught:
        setup.engine.backup(BackupRequest("docs", Level.FULL, "daily"), progress=swap)
    assert SECRET_NAME not in str(caught.value)
    assert str(setup.source) in str(caught.value)


def sealed_part(setup: Setup, saveset_id: str, part: str) -> Path:
    [found] = (setup.root / "stores").rglob(f"{saveset_id}/{part}")
    return found


def test_a_truncated_archive_and_a_swapped_manifest_are_caught(sealed_setup: Setup) -> None:
    setup = sealed_setup
    first = setup.backup(Level.FULL).saveset
    setup.clock.now += timedelta(hours=1)
    second = setup.backup(Level.FULL).saveset
    # a cut archive: the file in its lost last chunk is named
    archive = sealed_part(setup, first.id, ARCHIVE)
    archive.write_bytes(archive.read_bytes()[:-20])
    found = json.loads(cli(setup, "verify", first.id, "--json").stdout)
    assert not found["ok"] and f"hr/{SECRET_NAME}" in found["bad"], found
    # a manifest swapped for another saveset's (same keys): refused, never used
    sealed_part(setup, second.id, MANIFEST).write_bytes(
        sealed_part(setup, first.id, MANIFEST).read_bytes())
    found = json.loads(cli(setup, "verify", second.id, "--json").stdout)
    assert not found["ok"] and "(manifest)" in found["bad"][0], found
    done = cli(setup, "restore", "--saveset", second.id, "--to", str(setup.root / "x"))
    assert done.exit_code == 1 and "belongs to saveset" in done.output


def test_one_file_of_an_encrypted_saveset_to_standard_output(sealed_setup: Setup) -> None:
    setup = sealed_setup
    saveset = setup.backup(Level.FULL).saveset
    done = cli(setup, "restore", "--saveset", saveset.id, "--include", f"hr/{SECRET_NAME}",
               "--stdout")
    assert done.exit_code == 0, done.output
    assert done.stdout_bytes == MARKER * 1000
