"""One exception tree, grouped by what the caller can do about it.

Every constructor passes all of its arguments to ``Exception.__init__`` so that an
exception survives being serialized between workers and rebuilt from ``args``.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence


class BackstopError(Exception):
    """Root of every error Backstop raises on purpose."""


class ConfigError(BackstopError):
    """The configuration cannot be used; ``problems`` lists every one found, each with its path."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        super().__init__(source, list(problems))
        self.source = source
        self.problems = list(problems)

    def __str__(self) -> str:
        count = len(self.problems)
        head = f"{self.source}: {count} problem{'s' if count != 1 else ''}"
        return "\n".join([head, *(f"  {p}" for p in self.problems)])


class MessageError(BackstopError):
    """An error that is all in its message."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class BrokerUnreachable(MessageError):
    """No broker could be found or reached; the message says where Backstop looked."""


class AlreadyRunning(BackstopError):
    """Another ``backstop up`` already owns this state directory."""

    def __init__(self, state_dir: str, pid: int | None) -> None:
        super().__init__(state_dir, pid)
        self.state_dir = state_dir
        self.pid = pid

    def __str__(self) -> str:
        owner = f" (pid {self.pid})" if self.pid else ""
        return f"backstop up is already running on state_dir {self.state_dir}{owner}"


class StorageError(BackstopError):
    """Something went wrong on the storage side of a run."""


class Reason(enum.StrEnum):
    """Why a data store or media pool is unavailable for writing (SPEC section 3)."""

    OUT_OF_SPACE = "out_of_space"
    NO_FREE_MEDIA = "no_free_media"
    RDS_UNREACHABLE = "rds_unreachable"
    STORE_OFFLINE = "store_offline"


class StorageUnavailable(StorageError):
    """A data store or media pool cannot take a saveset now; the only error that fails over."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = Reason(reason)
        super().__init__(self.reason.value, message)  # plain words in reprs (Flower)
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


class RunFailed(BackstopError):
    """A run ended failed (not for lack of storage): what its task reports to Celery."""

    def __init__(self, run_id: str, kind: str, message: str) -> None:
        super().__init__(run_id, kind, message)
        self.run_id, self.kind, self.message = run_id, kind, message

    def __str__(self) -> str:
        return f"run {self.run_id} failed ({self.kind}): {self.message}"


class SourceError(MessageError):
    """The backup source is missing or unreadable; never a reason to fail over."""


class SourceMissing(SourceError):
    """The task's source itself is missing or not a directory."""


class HookFailed(MessageError):
    """A task's ``before`` command failed or timed out: the run fails, nothing is read."""


class SavesetMissing(StorageError):
    """A saveset the caller named is not in the data store (deleted, or never written)."""

    def __init__(self, store: str, saveset_id: str) -> None:
        super().__init__(store, saveset_id)
        self.store, self.saveset_id = store, saveset_id

    def __str__(self) -> str:
        return f"saveset {self.saveset_id} is not in data store {self.store}"


class SavesetProblem(BackstopError):
    """Something about one saveset; ``detail`` says what."""

    template = "saveset {saveset_id}: {detail}"

    def __init__(self, saveset_id: str, detail: str) -> None:
        super().__init__(saveset_id, detail)
        self.saveset_id, self.detail = saveset_id, detail

    def __str__(self) -> str:
        return self.template.format(saveset_id=self.saveset_id, detail=self.detail)


class CorruptSaveset(SavesetProblem):
    """A saveset's archive or manifest cannot be read back as written."""

    template = "saveset {saveset_id} is corrupt: {detail}"


class RestoreRefused(SavesetProblem):
    """A saveset asks for something a restore must never do (e.g. write outside the target)."""

    template = "restore of saveset {saveset_id} refused: {detail}"


class KeyUnusable(MessageError):
    """An encrypted saveset cannot be opened here: no identity for its task, an identity
    file others may read, or no identity that opens it. A usage problem (exit 2), never
    damage."""
