"""Plain data of the backup engine: savesets, manifest entries, store space. No I/O here."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from backstop.config import Level


@dataclass(frozen=True, order=True)
class SavesetKey:
    """Where a saveset lives inside its data store."""

    pool: str
    medium: str
    saveset_id: str


@dataclass(frozen=True)
class Space:
    """Bytes of one data store: ``free_bytes`` is what a new write may still use."""

    used_bytes: int
    free_bytes: int


@dataclass(frozen=True)
class Saveset:
    """The catalog record of one committed saveset (SPEC section 7, ``savesets --json``)."""

    id: str
    task: str
    pool: str
    data_store: str
    medium: str
    level: Level
    run_id: str | None
    created_at: datetime
    files: int
    bytes: int
    based_on: str | None = None
    migrated_from: str | None = None
    # Every other saveset whose archive holds content this one's restore needs.
    needs: tuple[str, ...] = ()
    archive_bytes: int = 0
    archive_digest: str = ""
    manifest_bytes: int = 0
    manifest_digest: str = ""
    # The age recipients its archive and manifest are encrypted to; () for a plain saveset.
    # The bytes and digests above are then those of the stored ciphertext.
    recipients: tuple[str, ...] = ()
    # The saveset its manifest names, where not itself: a copy of an encrypted saveset keeps
    # its original's manifest as it is (no key rewrote it); what that manifest says its
    # original holds, the copy holds.
    manifest_of: str | None = None

    @property
    def encrypted(self) -> bool:
        return bool(self.recipients)

    @property
    def manifest_names(self) -> str:
        """The saveset id the manifest's header and its own files' rows name."""
        return self.manifest_of or self.id

    @property
    def key(self) -> SavesetKey:
        return SavesetKey(self.pool, self.medium, self.id)

    @property
    def stored_bytes(self) -> int:
        return self.archive_bytes + self.manifest_bytes

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["level"] = self.level.value
        data["created_at"] = self.created_at.isoformat()
        data["needs"] = list(self.needs)
        del data["recipients"]
        data["encryption"] = {"recipients": list(self.recipients)} if self.recipients else None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Saveset:
        fields = dict(data)
        fields["level"] = Level(fields["level"])
        fields["created_at"] = datetime.fromisoformat(fields["created_at"])
        fields["needs"] = tuple(fields.get("needs") or ())
        fields["recipients"] = tuple((fields.get("encryption") or {}).get("recipients") or ())
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in fields.items() if k in known})

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)


# Entry types of a manifest.
FILE, DIR, SYMLINK = "f", "d", "l"
# a fifo; character and block devices; a further name of a file stored under another path
FIFO, CHAR_DEVICE, BLOCK_DEVICE, HARDLINK = "p", "c", "b", "h"
KINDS = (FILE, DIR, SYMLINK, FIFO, CHAR_DEVICE, BLOCK_DEVICE, HARDLINK)


@dataclass(frozen=True, slots=True)
class Entry:
    """One path of the source as it was when a saveset was taken.

    ``digest`` is the BLAKE3 of a file's content; ``holder`` the saveset whose archive holds
    it: this saveset's own id for a file it stores, the base's holder for an unchanged file.
    Both are empty for everything but files. A hard link's ``target`` is the path under
    which its file's content is stored (the first of its names). ``uid``/``gid`` are the
    numeric owner and group (-1: not recorded, manifests of Backstop before 0.4),
    ``user``/``group`` their names when the scanning host knew them (for display);
    ``ctime_ns`` the inode's change time (0: not recorded); ``xattrs`` its extended
    attributes. ``frame`` is the compressed offset, in its holder's archive, of the zstd
    frame in which the file's member starts, and ``skip`` how many uncompressed bytes of
    that frame come before the member (``frame`` -1: not recorded, read from the start).
    """

    path: str
    kind: str
    size: int
    mtime_ns: int
    inode: int
    mode: int
    digest: str = ""
    holder: str = ""
    target: str = ""
    uid: int = -1
    gid: int = -1
    ctime_ns: int = 0
    user: str = ""
    group: str = ""
    # extended attributes, POSIX ACLs (system.posix_acl_*) among them: (name, value) pairs
    xattrs: tuple[tuple[str, bytes], ...] = ()
    rdev: int = 0  # a device node's device number
    frame: int = -1
    skip: int = 0

    def same_content_as(self, other: Entry) -> bool:
        """Change detection of SPEC sections 2 and 12: size, mtime and inode, and the
        inode's ctime where both know it (a change of owner, mode or extended attributes
        alone changes only that)."""
        return (self.kind == other.kind and self.size == other.size
                and self.mtime_ns == other.mtime_ns and self.inode == other.inode
                and self.target == other.target
                and (not self.ctime_ns or not other.ctime_ns
                     or self.ctime_ns == other.ctime_ns))


@dataclass
class Manifest:
    """Every path present when the saveset was taken, and every path deleted since its base."""

    saveset_id: str
    entries: dict[str, Entry] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)

    def stored_here(self) -> list[Entry]:
        return [e for e in self.entries.values() if e.kind == FILE and e.holder == self.saveset_id]

    def holders(self) -> set[str]:
        return {e.holder for e in self.entries.values() if e.kind == FILE}
