"""Encrypted savesets: sealed in the process that reads the source, opened only where an
identity is.

A saveset's archive and manifest are age files (:mod:`backstop.workers.age`); the bytes
and digests the catalog records for them are those of the ciphertext, so a storage node
checks what it stores without any key. Reading one back goes through :class:`Opened`,
which gives the plaintext from any offset by decrypting from the chunk that holds it.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from backstop.errors import CorruptSaveset, KeyUnusable
from backstop.model import Saveset
from backstop.settings import Settings
from backstop.workers.age import (
    CHUNK,
    SEALED,
    AgeError,
    Identity,
    NoMatch,
    Recipient,
    SeekableReader,
    Writer,
    read_identities,
)
from backstop.workers.archive import HashingSink
from backstop.workers.store import Store


class Keyring:
    """This host's keys, per task: the recipients its savesets are sealed to, and the
    identities (read once) that open them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loaded: dict[Path, list[Identity]] = {}

    def recipients(self, task: str) -> list[Recipient]:
        """Whom ``task``'s new savesets are sealed to; [] for plain savesets."""
        found = self.settings.encryption_of(task)
        return [Recipient.parse(r) for r in found.recipients] if found else []

    def can_open(self, task: str) -> bool:
        return self.settings.identity_file_of(task) is not None

    def identity_file(self, task: str) -> Path:
        path = self.settings.identity_file_of(task)
        if path is None:
            raise KeyUnusable(f"no identity for task {task}: this host can write its "
                              "savesets but not read them (set encryption.identity_file or "
                              "BACKSTOP_IDENTITY_FILE)")
        return path

    def identities(self, task: str) -> list[Identity]:
        path = self.identity_file(task)
        if path not in self.loaded:
            self.loaded[path] = read_identities(path)
        return self.loaded[path]


class LocalManifests:
    """This host's copies of the manifests of the newest saveset, and of the newest FULL,
    of each encrypted task it backed up (mode 0600, in state_dir): the bases of its next
    INC and DIFF, also where it has no identity to read them from the store (a write-only
    client)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def get(self, task: str, saveset_id: str) -> bytes | None:
        for kind in ("last", "full"):
            try:
                return (self.root / task / kind / saveset_id).read_bytes()
            except OSError:
                continue
        return None

    def put(self, task: str, saveset_id: str, manifest: bytes, full: bool) -> None:
        for kind in ("last", "full") if full else ("last",):
            folder = self.root / task / kind
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            fresh = folder / f".{saveset_id}.new"
            fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(manifest)
            fresh.rename(folder / saveset_id)
            for old in folder.iterdir():
                if old.name != saveset_id:
                    old.unlink(missing_ok=True)


class Sealer:
    """An age writer into a part, with the size and digest of what it stored."""

    def __init__(self, out: BinaryIO, recipients: Iterable[Recipient]) -> None:
        self.sink = HashingSink(out)  # counts and hashes the ciphertext
        self.writer = Writer(self.sink, recipients)  # type: ignore[arg-type]

    def write(self, data: bytes | bytearray | memoryview) -> int:
        return self.writer.write(data)

    def flush(self) -> None:
        pass

    def close(self) -> tuple[int, str]:
        """Seal the last chunk; (bytes, digest) of the stored ciphertext."""
        self.writer.close()
        return self.sink.bytes, self.sink.digest.hexdigest()


def sealed(data: bytes, recipients: Iterable[Recipient]) -> bytes:
    out = io.BytesIO()
    with Writer(out, recipients) as writer:
        writer.write(data)
    return out.getvalue()


class Opened:
    """The plaintext of one part of an encrypted saveset, from any offset."""

    def __init__(self, store: Store, saveset: Saveset, part: str,
                 identities: list[Identity], identity_file: Path) -> None:
        self.store, self.saveset, self.part = store, saveset, part
        size = store.part_size(saveset.key, part)
        try:
            self.reader = SeekableReader(self.read_at, size, identities)
        except NoMatch:
            raise KeyUnusable(f"no identity in {identity_file} opens saveset {saveset.id} "
                              f"(its {part} is encrypted to "
                              f"{', '.join(saveset.recipients)})") from None
        except AgeError as exc:
            raise CorruptSaveset(saveset.id, f"{part}: {exc.detail}") from None

    def read_at(self, offset: int, size: int) -> bytes:
        with self.store.read(self.saveset.key, self.part, offset) as data:
            return data.read(size)

    def open(self, offset: int = 0) -> BinaryIO:
        """The plaintext from ``offset`` to the end, decrypted chunk by chunk from one read
        of the store that starts at the chunk holding ``offset``."""
        first = offset // CHUNK
        source = self.store.read(self.saveset.key, self.part,
                                 self.reader.start + first * SEALED)
        return io.BufferedReader(ChunkStream(self, source, first, offset - first * CHUNK),
                                 CHUNK)

    def read_all(self) -> bytes:
        with self.open() as data:
            return data.read()


class Hashed:
    """Reads through to ``source`` and hashes every byte read (a whole stored part)."""

    def __init__(self, source: BinaryIO, digest: Any) -> None:
        self.source, self.digest = source, digest

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        self.digest.update(data)
        return data

    def close(self) -> None:
        self.source.close()

    def __enter__(self) -> Hashed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ChunkStream(io.RawIOBase):
    """Plaintext chunks of an :class:`Opened` part, read in order from ``source``."""

    def __init__(self, opened: Opened, source: BinaryIO, first: int, skip: int) -> None:
        self.opened, self.source = opened, source
        self.chunks = self._chunks(first, skip)
        self.pending = memoryview(b"")

    def _chunks(self, first: int, skip: int) -> Iterator[bytes]:
        reader, saveset = self.opened.reader, self.opened.saveset
        for number in range(first, reader.chunks):
            sealed_chunk = self.source.read(SEALED)
            try:
                plain = reader.open_chunk(number, sealed_chunk)
            except AgeError as exc:
                raise CorruptSaveset(saveset.id, f"{self.opened.part}: {exc.detail}") from None
            yield plain[skip:] if number == first else plain

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self.pending:
            chunk = next(self.chunks, None)
            if chunk is None:
                return 0
            self.pending = memoryview(chunk)
        size = min(len(buffer), len(self.pending))
        buffer[:size] = self.pending[:size]
        self.pending = self.pending[size:]
        return size

    def close(self) -> None:
        if not self.closed:
            self.source.close()
        super().close()


def opener(store: Store, saveset: Saveset, part: str, keyring: Keyring | None
           ) -> Callable[[int], BinaryIO]:
    """``open(offset)`` of a saveset's part: the plaintext from that offset, decrypted
    where the saveset is encrypted (KeyUnusable where this host has no identity)."""
    if not saveset.encrypted:
        return lambda offset: store.read(saveset.key, part, offset)
    if keyring is None:
        raise KeyUnusable(f"saveset {saveset.id} is encrypted and no keys were given")
    opened = Opened(store, saveset, part, keyring.identities(saveset.task),
                    keyring.identity_file(saveset.task))
    return opened.open


