"""One exception tree, grouped by what the caller can do about it.

Every constructor passes all of its arguments to ``Exception.__init__`` so that an
exception survives being serialized between workers and rebuilt from ``args``.
"""

from __future__ import annotations

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


class BrokerUnreachable(BackstopError):
    """No broker could be found or reached; the message says where Backstop looked."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


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


class StorageUnavailable(StorageError):
    """A data store or media pool cannot take a saveset now; the only error that fails over.

    ``reason`` is one of ``out_of_space``, ``no_free_media``, ``rds_unreachable``,
    ``store_offline`` (SPEC section 3).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(reason, message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


class SourceError(BackstopError):
    """The backup source is missing or unreadable; never a reason to fail over."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message
