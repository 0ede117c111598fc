"""Who may do what on an RDS's data service: the fleet's data token and clients' own tokens.

The fleet token may do everything. A client's token reaches only the savesets of that
client's tasks and never deletes (append-only, like a backup server's client should be).
Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from backstop.errors import BackstopError, MessageError
from backstop.settings import Settings

# The header every request carries: ``Authorization: Bearer <token>``.
AUTH_HEADER = "Authorization"
BEARER = "Bearer "
# A client sends a part to a data service in segments of at most this many bytes.
SEGMENT_BYTES = 8 << 20


class Forbidden(MessageError):
    """The caller's token does not reach this saveset or operation."""


@dataclass(frozen=True)
class Identity:
    """Who a request comes from: the fleet (``client`` None) or one client."""

    client: str | None = None
    tasks: frozenset[str] = frozenset()

    @property
    def fleet(self) -> bool:
        return self.client is None

    def may_touch(self, task: str | None) -> bool:
        return self.fleet or (task is not None and task in self.tasks)

    def check_task(self, task: str | None, saveset_id: str) -> None:
        if not self.may_touch(task):
            raise Forbidden(f"client {self.client} may not reach saveset {saveset_id}")

    def check_delete(self) -> None:
        if not self.fleet:
            raise Forbidden(f"client {self.client} may not delete savesets")


@dataclass(frozen=True)
class Tokens:
    """The tokens a data service accepts."""

    fleet: str
    clients: tuple[tuple[str, Identity], ...] = ()

    def identify(self, header: str | None) -> Identity | None:
        """The identity of an ``Authorization`` header; None for a missing or wrong token."""
        if not header or not header.startswith(BEARER):
            return None
        offered = header[len(BEARER):].encode()
        found = None
        # every token is compared, so the time taken says nothing about which one matched
        if hmac.compare_digest(offered, self.fleet.encode()):
            found = Identity()
        for token, identity in self.clients:
            if hmac.compare_digest(offered, token.encode()):
                found = identity
        return found


def fleet_token(settings: Settings, create: bool = False) -> str:
    """The fleet's data token: ``BACKSTOP_DATA_TOKEN``, else its file (created if asked)."""
    if settings.data_token:
        return settings.data_token
    if create:
        return create_token(settings.data_token_file)
    return read_token(settings.data_token_file)


def known_token(settings: Settings) -> str:
    """The fleet token if this host has it, else none (for probes: a 401 is an answer)."""
    try:
        return fleet_token(settings)
    except BackstopError:
        return ""


def client_token(settings: Settings, client: str) -> str:
    """The token a client worker sends: the client's own, else the fleet's."""
    found = next(c for c in settings.config.clients if c.name == client)
    if found.token_file is not None:
        return read_token(settings.resolve(found.token_file))
    return fleet_token(settings)


def read_token(path: Path) -> str:
    """A token file's content; BackstopError naming the file when it cannot be used."""
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise BackstopError(f"cannot read token file {path}: {exc.strerror or exc}") from None
    if len(token) < 16:
        raise BackstopError(f"token file {path} holds no token of at least 16 characters")
    return token


def create_token(path: Path) -> str:
    """Create a token file (mode 0600) unless it exists; return its token."""
    if path.exists():
        return read_token(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")
    return token
