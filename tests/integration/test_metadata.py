"""SPEC section 12, owners and extended attributes: a saveset keeps numeric owners and
groups (and their names for display) and extended attributes with POSIX ACLs; a change of
them alone is noticed by INC; a restore as root gives them back, and a restore that may not
give files away says what it could not give back."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from backstop.config import Level
from tests.integration.conftest import Setup
from tests.system_tools import require

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")


def owners(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.lstat().st_uid, p.lstat().st_gid)
            for p in sorted(root.rglob("*")) if not p.name.startswith(".backstop")}


def owned_tree(src: Path) -> None:
    (src / "www").mkdir()
    (src / "www" / "index.html").write_text("<h1>hi</h1>")
    (src / "home.txt").write_text("mine")
    os.symlink("www/index.html", src / "link")
    os.chown(src / "www", 1234, 5678)
    os.chown(src / "www" / "index.html", 1234, 5678)
    os.chown(src / "home.txt", 0, 0)
    os.lchown(src / "link", 4321, 8765)


def test_owners_round_trip_as_root_and_a_change_of_owner_alone_is_backed_up(
        setup: Setup, tmp_path: Path) -> None:
    owned_tree(setup.source)
    before = owners(setup.source)
    full = setup.backup(Level.FULL).saveset
    # a restore as root gives every owner back, by number
    setup.restorer.restore(full, tmp_path / "r1")
    assert owners(tmp_path / "r1") == before
    # When only the owner of a file changes (content and mtime as they were)
    setup.clock.now += timedelta(hours=1)
    os.chown(setup.source / "home.txt", 1000, 1000)
    inc = setup.backup(Level.INC).saveset
    # Then INC records it, and its restore has the new owner
    assert inc.files == 1
    setup.restorer.restore(inc, tmp_path / "r2")
    assert owners(tmp_path / "r2")["home.txt"] == (1000, 1000)
    assert owners(tmp_path / "r2")["www/index.html"] == (1234, 5678)
    # And the manifest keeps the names too, for display
    manifest = setup.restorer.manifest(inc)
    assert manifest.entries["home.txt"].user in ("", "root") or \
        manifest.entries["home.txt"].uid == 1000
    assert manifest.entries["www"].uid == 1234 and manifest.entries["link"].gid == 8765


RESTORE = """
import json, sys
from pathlib import Path
import redis
from backstop.settings import load_settings
from backstop.orchestration.catalog import RedisCatalog
from backstop.workers.engine import Engine
from backstop.workers.restore import Restorer
from tests.integration.conftest import PARALLEL
settings = load_settings(sys.argv[1], {"BACKSTOP_BROKER_URL": sys.argv[2]})
catalog = RedisCatalog(redis.Redis.from_url(sys.argv[2]))
restorer = Restorer(catalog, Engine(settings, catalog).stores, jobs=PARALLEL)
result = restorer.restore(catalog.get(sys.argv[3]), Path(sys.argv[4]))
print(json.dumps(result.warnings))
"""


def test_a_restore_that_may_not_give_files_away_keeps_the_rest_and_says_so(
        setup: Setup, broker_url: str, tmp_path: Path) -> None:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is not installed")
    owned_tree(setup.source)
    full = setup.backup(Level.FULL).saveset
    # When the restore runs without the right to give files away (as a user, or root in a
    # container without CAP_CHOWN)
    target = tmp_path / "restricted"
    done = subprocess.run([setpriv, "--bounding-set=-chown", "--inh-caps=-chown", "--",
                           sys.executable, "-c", RESTORE, str(setup.settings.config_path),
                           broker_url, full.id, str(target)],
                          capture_output=True, text=True, check=False,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    # Then every file comes back, owned by the restoring user, and the restore says so
    [warning] = json.loads(done.stdout)
    assert warning.startswith("owners not restored: this process may not give files away")
    assert "3 path(s)" in warning  # www, www/index.html and link; home.txt is root's
    assert (target / "www" / "index.html").read_text() == "<h1>hi</h1>"
    assert set(owners(target).values()) == {(0, 0)}


def xattrs(root: Path) -> dict[str, dict[str, bytes]]:
    found = {}
    for p in sorted(root.rglob("*")):
        if p.name.startswith(".backstop") or p.is_symlink():
            continue
        found[str(p.relative_to(root))] = {n: os.getxattr(p, n) for n in os.listxattr(p)}
    return found


def test_extended_attributes_and_acls_round_trip_and_a_change_of_them_alone_is_backed_up(
        setup: Setup, tmp_path: Path) -> None:
    setfacl = require("setfacl", "acl")
    src = setup.source
    owned_tree(src)
    os.setxattr(src / "home.txt", "user.origin", b"scanner \x00\xff bytes")
    os.setxattr(src / "www", "user.project", b"site")
    subprocess.run([setfacl, "-m", "u:1234:rw,g:5678:r", str(src / "home.txt")], check=True)
    subprocess.run([setfacl, "-d", "-m", "u:1234:rwx", str(src / "www")], check=True)
    before = xattrs(src)
    assert "system.posix_acl_access" in before["home.txt"]
    assert "system.posix_acl_default" in before["www"]
    full = setup.backup(Level.FULL).saveset
    setup.restorer.restore(full, tmp_path / "r1")
    assert xattrs(tmp_path / "r1") == before
    # When only an attribute changes, INC records it and its restore has it
    setup.clock.now += timedelta(hours=1)
    os.setxattr(src / "www" / "index.html", "user.reviewed", b"yes")
    inc = setup.backup(Level.INC).saveset
    assert inc.files == 1
    setup.restorer.restore(inc, tmp_path / "r2")
    assert xattrs(tmp_path / "r2") == xattrs(src)


def test_hard_links_fifos_and_devices_round_trip_and_tar_alone_restores_them(
        setup: Setup, tmp_path: Path) -> None:
    src = setup.source
    (src / "a.txt").write_bytes(os.urandom(50_000))
    os.link(src / "a.txt", src / "b.txt")
    (src / "d").mkdir()
    os.link(src / "a.txt", src / "d" / "c.txt")
    os.mkfifo(src / "pipe", 0o640)
    os.mknod(src / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    full = setup.backup(Level.FULL).saveset
    # the content of the three names is stored once
    assert full.files == 1
    manifest = setup.restorer.manifest(full)
    assert {p: e.kind for p, e in manifest.entries.items() if e.kind != "d"} == {
        "a.txt": "f", "b.txt": "h", "d/c.txt": "h", "pipe": "p", "null": "c"}
    # a restore gives back one file with three names, the fifo and the device
    target = tmp_path / "r"
    setup.restorer.restore(full, target)
    inodes = {(target / n).stat().st_ino for n in ("a.txt", "b.txt", "d/c.txt")}
    assert len(inodes) == 1 and (target / "a.txt").stat().st_nlink == 3
    assert (target / "b.txt").read_bytes() == (src / "a.txt").read_bytes()
    assert stat.S_ISFIFO((target / "pipe").lstat().st_mode)
    assert stat.S_IMODE((target / "pipe").lstat().st_mode) == 0o640
    assert stat.S_ISCHR((target / "null").lstat().st_mode)
    assert (target / "null").lstat().st_rdev == os.makedev(1, 3)
    # And tar alone, from the archive, makes the same
    zstd = require("zstd", "zstd")
    archive = next(setup.root.rglob("archive.tar.zst"))
    by_tar = tmp_path / "by-tar"
    by_tar.mkdir()
    unpacked = subprocess.run(["tar", "-x", "-C", str(by_tar)], input=subprocess.run(
        [zstd, "-dc", str(archive)], capture_output=True, check=True).stdout, check=False)
    assert unpacked.returncode == 0
    assert (by_tar / "b.txt").stat().st_ino == (by_tar / "a.txt").stat().st_ino
    assert stat.S_ISFIFO((by_tar / "pipe").lstat().st_mode)
    assert (by_tar / "null").lstat().st_rdev == os.makedev(1, 3)


def test_a_crafted_hard_link_out_of_the_saveset_is_refused(setup: Setup) -> None:
    from backstop.errors import RestoreRefused
    from backstop.model import HARDLINK, Entry, Manifest
    from backstop.workers.restore import check_paths

    manifest = Manifest("s1", {"x": Entry("x", HARDLINK, 0, 0, 1, 0o644, target="../../etc")})
    with pytest.raises(RestoreRefused):
        check_paths(manifest)
    manifest = Manifest("s1", {"x": Entry("x", HARDLINK, 0, 0, 1, 0o644, target="nothing")})
    with pytest.raises(RestoreRefused, match="no file of the saveset"):
        check_paths(manifest)


def test_names_are_bytes_and_round_trip(setup: Setup, tmp_path: Path) -> None:
    src = os.fsencode(setup.source)
    names = [b"\xff\xfe not utf-8.txt", b"line\nbreak", b"x" * 255, "caf\u00e9".encode()]
    for name in names:
        with open(os.path.join(src, name), "wb") as out:
            out.write(name)
    full = setup.backup(Level.FULL).saveset
    target = os.fsencode(tmp_path / "r")
    setup.restorer.restore(full, Path(os.fsdecode(target)))
    for name in names:
        with open(os.path.join(target, name), "rb") as back:
            assert back.read() == name


def test_a_file_that_changes_while_it_is_read_is_reported(setup: Setup) -> None:
    busy = setup.source / "busy.log"
    busy.write_bytes(os.urandom(64 << 20))
    (setup.source / "calm.txt").write_text("still")
    stop = threading.Event()

    def keep_writing() -> None:
        with open(busy, "r+b") as out:
            while not stop.is_set():
                out.seek(0)
                out.write(os.urandom(4096))
                out.flush()

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        result = setup.backup(Level.FULL)
    finally:
        stop.set()
        writer.join()
    # Then the run knows which file may be torn, and only that one
    assert result.warnings == (
        "busy.log: changed while it was read; its stored copy may mix old and new content",)


def test_a_sparse_file_keeps_its_holes_in_the_archive_and_on_restore(
        setup: Setup, tmp_path: Path) -> None:
    sparse = setup.source / "disk.img"
    with open(sparse, "wb") as out:
        out.write(os.urandom(8192))
        out.seek(100 << 20)
        out.write(os.urandom(8192))
        out.truncate(200 << 20)  # a hole to the end
    if sparse.stat().st_blocks * 512 > 1 << 20:
        pytest.skip("this file system does not keep holes")
    (setup.source / "plain.txt").write_text("not sparse")
    full = setup.backup(Level.FULL).saveset
    # the archive holds the data, not the 200 MiB
    assert full.archive_bytes < 1 << 20
    target = tmp_path / "r"
    setup.restorer.restore(full, target)
    back = target / "disk.img"
    assert back.stat().st_size == 200 << 20
    assert back.stat().st_blocks * 512 <= 4 * sparse.stat().st_blocks * 512
    assert back.read_bytes() == sparse.read_bytes()
    assert setup.restorer.verify(full).ok
    # And tar alone makes it sparse too
    zstd = require("zstd", "zstd")
    archive = next(setup.root.rglob("archive.tar.zst"))
    by_tar = tmp_path / "by-tar"
    by_tar.mkdir()
    subprocess.run(["tar", "-x", "-C", str(by_tar)], check=True, input=subprocess.run(
        [zstd, "-dc", str(archive)], capture_output=True, check=True).stdout)
    assert (by_tar / "disk.img").read_bytes() == sparse.read_bytes()
    assert (by_tar / "disk.img").stat().st_blocks * 512 < 1 << 20
