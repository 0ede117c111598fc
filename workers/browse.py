"""Browsing savesets (SPEC section 11): ``ls``, ``find`` and ``diff``, from manifests alone.

A saveset's manifest lists every path present when it was taken (the chain applied: an
unchanged file names the saveset holding its content), so listing, finding and comparing
never read an archive.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import pathspec

from backstop.model import (
    BLOCK_DEVICE,
    CHAR_DEVICE,
    DIR,
    FIFO,
    FILE,
    HARDLINK,
    SYMLINK,
    Entry,
    Manifest,
    Saveset,
)

TYPES = {FILE: "file", HARDLINK: "file", DIR: "dir", SYMLINK: "symlink", FIFO: "fifo",
         CHAR_DEVICE: "device", BLOCK_DEVICE: "device"}


def iso(mtime_ns: int) -> str:
    return datetime.fromtimestamp(mtime_ns / 1e9, UTC).isoformat()


def listed(entry: Entry) -> dict[str, Any]:
    """SPEC section 11 ``ls --json`` line (plus names, and a link's target)."""
    line: dict[str, Any] = {
        "path": entry.path, "type": TYPES[entry.kind], "size": entry.size,
        "mtime": iso(entry.mtime_ns), "mode": entry.mode, "uid": entry.uid,
        "gid": entry.gid, "user": entry.user, "group": entry.group}
    if entry.kind in (SYMLINK, HARDLINK):
        line["target"] = entry.target
    return line


class NotInSaveset(LookupError):
    """A path the saveset does not hold."""


def ls(manifest: Manifest, under: str | None = None) -> list[dict[str, Any]]:
    """Everything under ``under`` (default: all), recursively, sorted by path."""
    prefix = (under or "").strip("/")
    if prefix and prefix not in manifest.entries:
        raise NotInSaveset(prefix)
    return [listed(e) for path, e in sorted(manifest.entries.items())
            if not prefix or path == prefix or path.startswith(prefix + "/")]


def find(pattern: str, savesets: Iterable[tuple[Saveset, Manifest]]) -> list[dict[str, Any]]:
    """Paths matching a gitignore-style ``pattern`` in each saveset, newest saveset first."""
    spec = pathspec.GitIgnoreSpec.from_lines([pattern])
    found = []
    for saveset, manifest in sorted(savesets, key=lambda sm: sm[0].created_at, reverse=True):
        for path, entry in sorted(manifest.entries.items()):
            if spec.match_file(path + "/" if entry.kind == DIR else path):
                found.append({"saveset": saveset.id, "task": saveset.task,
                              "created_at": saveset.created_at.isoformat(), "path": path,
                              "size": entry.size, "mtime": iso(entry.mtime_ns)})
    return found


def changed(a: Entry, b: Entry) -> bool:
    """Type, size, content, mode, owner or mtime differ (SPEC section 11)."""
    return (a.kind != b.kind or a.size != b.size or a.digest != b.digest
            or a.target != b.target or a.mode != b.mode or (a.uid, a.gid) != (b.uid, b.gid)
            or a.mtime_ns != b.mtime_ns)


def diff(a: Manifest, b: Manifest) -> dict[str, list[str]]:
    """What B has that A had not, what A had that B has not, and what differs."""
    return {"added": sorted(b.entries.keys() - a.entries.keys()),
            "removed": sorted(a.entries.keys() - b.entries.keys()),
            "changed": sorted(p for p in a.entries.keys() & b.entries.keys()
                              if changed(a.entries[p], b.entries[p]))}
