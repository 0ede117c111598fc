"""A restore as root against independent tools' view of the same tree (SPEC section 12):
`bsdtar --format=mtree` (type, mode, owner, group, mtime to the nanosecond, size, SHA-256,
link targets, link counts) and `getfattr` (every extended attribute, ACLs among them), on
a tree that holds every case a saveset keeps."""

from __future__ import annotations

import os
import stat
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest

from backstop.config import Level
from tests.integration.conftest import Setup
from tests.system_tools import require

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="owners and devices need root")

MTREE = "!all,type,mode,uid,gid,size,time,link,sha256,nlink"


def every_case(src: Path) -> None:
    """Owners, modes, set-id bits, symlinks (relative, absolute, dangling), empty and deep
    directories, odd names, hard links, a fifo, a device, a sparse file, attributes and
    ACLs."""
    (src / "www" / "deep" / "er" / "est").mkdir(parents=True)
    (src / "www" / "index.html").write_text("<h1>hi</h1>")
    (src / "www" / "deep" / "er" / "est" / "leaf").write_bytes(os.urandom(5000))
    (src / "empty").mkdir()
    (src / "line\nbreak").write_text("newline in the name")
    (src / "caf\u00e9 \u2603").write_text("unicode")
    (src / ("n" * 255)).write_text("a 255-byte name")
    with open(os.path.join(os.fsencode(src), b"\xff not utf-8"), "wb") as out:
        out.write(b"bytes")
    (src / "tool").write_bytes(b"#!/bin/sh\n")
    os.chmod(src / "tool", 0o4755)
    os.chmod(src / "www" / "deep", 0o2775)
    os.symlink("www/index.html", src / "relative")
    os.symlink("/etc/hostname", src / "absolute")
    os.symlink("nowhere/at/all", src / "dangling")
    os.link(src / "www" / "index.html", src / "index-again.html")
    os.mkfifo(src / "pipe", 0o620)
    os.mknod(src / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    for path, (uid, gid) in {"www": (33, 33), "www/index.html": (33, 33),
                             "www/deep/er/est/leaf": (1234, 5678), "tool": (0, 50),
                             "pipe": (1000, 1000)}.items():
        os.chown(src / path, uid, gid)
    os.lchown(src / "dangling", 4321, 8765)
    with open(src / "disk.img", "wb") as out:  # sparse: 8 KiB of data in 20 MiB
        out.seek(10 << 20)
        out.write(os.urandom(8192))
        out.truncate(20 << 20)
    os.setxattr(src / "www" / "index.html", "user.origin", b"cms")
    setfacl = require("setfacl", "acl")
    subprocess.run([setfacl, "-m", "u:1234:rw", str(src / "tool")], check=True)
    subprocess.run([setfacl, "-d", "-m", "g:5678:rx", str(src / "www" / "deep")], check=True)


def mtree(root: Path) -> list[str]:
    bsdtar = require("bsdtar", "libarchive-tools")
    done = subprocess.run([bsdtar, "-cf", "-", "--format=mtree", f"--options={MTREE}",
                           "-C", str(root), "."], capture_output=True, check=True)
    lines = done.stdout.decode(errors="surrogateescape").splitlines()
    return sorted(line for line in lines if not line.startswith((". ", "./.backstop")))


def attributes(root: Path) -> dict[str, list[str]]:
    """getfattr's view: path -> its attributes (name=hex value), whatever the walk order."""
    getfattr = require("getfattr", "attr")
    done = subprocess.run([getfattr, "-R", "-h", "-d", "-m", "-", "-e", "hex", "."],
                          cwd=root, capture_output=True, check=False)
    found: dict[str, list[str]] = {}
    for block in done.stdout.decode(errors="surrogateescape").split("\n\n"):
        lines = [line for line in block.splitlines() if line]
        if lines and lines[0].startswith("# file: ") and ".backstop" not in lines[0]:
            found[lines[0].removeprefix("# file: ")] = sorted(lines[1:])
    return found


def test_a_full_and_an_inc_restore_as_tools_see_the_source(
        setup: Setup, tmp_path: Path) -> None:
    src = setup.source
    every_case(src)
    full = setup.backup(Level.FULL).saveset
    expected_tree, expected_attributes = mtree(src), attributes(src)
    assert any("type=fifo" in line for line in expected_tree)
    assert "system.posix_acl_default" in expected_attributes["www/deep"][0]
    assert len(expected_tree) >= 19 and len(expected_attributes) >= 4
    setup.restorer.restore(full, tmp_path / "full")
    assert mtree(tmp_path / "full") == expected_tree
    assert attributes(tmp_path / "full") == expected_attributes
    assert (tmp_path / "full" / "disk.img").stat().st_blocks <= 4 * (
        src / "disk.img").stat().st_blocks
    # After a change of owner alone, of an attribute alone, and of content, an INC
    setup.clock.now += timedelta(hours=1)
    os.chown(src / "www" / "deep" / "er" / "est" / "leaf", 4321, 4321)
    os.setxattr(src / "tool", "user.checked", b"yes")
    (src / "www" / "index.html").write_text("<h1>changed</h1>")
    inc = setup.backup(Level.INC).saveset
    setup.restorer.restore(inc, tmp_path / "inc")
    assert mtree(tmp_path / "inc") == mtree(src)
    assert attributes(tmp_path / "inc") == attributes(src)
