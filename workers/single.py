"""One file of a saveset to a stream (``backstop restore --include PATTERN --stdout``):
``backstop restore --task app-db --include app.dump --stdout | pg_restore --dbname=app``."""

from __future__ import annotations

from typing import IO, BinaryIO

from backstop.errors import CorruptSaveset, MessageError
from backstop.model import FILE, Entry, Saveset
from backstop.workers.archive import CHUNK, corruption_of, read_located, read_members
from backstop.workers.digest import new_digest
from backstop.workers.restore import Restorer, selected
from backstop.workers.store import ARCHIVE


class NotOneFile(MessageError):
    """``--stdout`` wants patterns that match exactly one file."""


def one_file(restorer: Restorer, saveset: Saveset, patterns: list[str]) -> Entry:
    """The one file of ``saveset`` that ``patterns`` match; NotOneFile naming how many."""
    entries = selected(restorer.manifest(saveset), patterns).entries.values()
    files = sorted(e.path for e in entries if e.kind == FILE)
    if len(files) != 1:
        listed = f": {', '.join(files[:5])}{' …' if len(files) > 5 else ''}" if files else ""
        raise NotOneFile(f"--stdout writes exactly one file; {' '.join(patterns)} matches "
                         f"{len(files)} in saveset {saveset.id}{listed}")
    return next(e for e in entries if e.path == files[0])


def copy_out(restorer: Restorer, saveset: Saveset, entry: Entry, out: BinaryIO) -> int:
    """Write ``entry``'s content to ``out`` as it is read (an encrypted one chunk by chunk,
    each authenticated first); CorruptSaveset when it does not match its recorded hash."""
    holder = restorer.holder(entry.holder, saveset)
    name = entry.target or entry.path
    open_at = restorer.open_at(holder, ARCHIVE)
    with corruption_of(holder.id):
        members = (read_located(open_at, [(entry.frame, entry.skip, name)])
                   if entry.frame >= 0 else read_members(open_at(0)))
        try:
            for member, content in members:
                if member.name == name:
                    return _copy(content, out, entry, holder.id)
        finally:
            members.close()
    raise CorruptSaveset(holder.id, f"{name} is missing from its archive")


def _copy(content: IO[bytes], out: BinaryIO, entry: Entry, holder_id: str) -> int:
    digest, written = new_digest(), 0
    while chunk := content.read(CHUNK):
        digest.update(chunk)
        out.write(chunk)
        written += len(chunk)
    out.flush()
    if digest.hexdigest() != entry.digest:
        raise CorruptSaveset(holder_id, f"{entry.path} does not match its recorded hash")
    return written
