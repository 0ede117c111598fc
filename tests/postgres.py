"""A real PostgreSQL server for a test: Debian's ``postgresql`` (installed on first use as
root), run as the ``postgres`` user with its data directory and unix socket in a temporary
directory of its own, reached over that socket only (no TCP), and stopped afterwards."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.system_tools import require
from tests.waiting import wait_for


@dataclass(frozen=True)
class Postgres:
    socket_dir: Path

    @property
    def connection(self) -> list[str]:
        """The options every client command takes to reach this server."""
        return [f"--host={self.socket_dir}", "--username=postgres"]

    def psql(self, database: str, sql: str) -> str:
        done = subprocess.run(["psql", *self.connection, "--no-psqlrc", "-v", "ON_ERROR_STOP=1",
                               "-At", f"--dbname={database}", "-c", sql],
                              capture_output=True, text=True, check=True)
        return done.stdout


def server_binary(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        pytest.skip(f"PostgreSQL's {name} is not installed")
    return found[-1]


@contextmanager
def running_postgres() -> Iterator[Postgres]:
    """A fresh cluster, trusting local connections, until the block ends."""
    require("pg_dump", "postgresql")
    if os.geteuid() != 0:
        pytest.skip("the PostgreSQL test runs the server as the postgres user (needs root)")
    # not under pytest's own temporary directory, which only root may enter
    top = Path(tempfile.mkdtemp(prefix="backstop-pg-"))
    shutil.chown(top, "postgres", "postgres")
    data, sockets = top / "data", top / "run"
    sockets.mkdir()
    shutil.chown(sockets, "postgres", "postgres")
    subprocess.run([server_binary("initdb"), "--pgdata", str(data), "--auth=trust",
                    "--username=postgres", "--no-sync"], user="postgres", check=True,
                   capture_output=True)
    server = subprocess.Popen([server_binary("postgres"), "-D", str(data), "-k", str(sockets),
                               "-c", "listen_addresses=", "-c", "fsync=off"],
                              user="postgres", stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        found = Postgres(sockets)
        wait_for(lambda: subprocess.run(["pg_isready", *found.connection],
                                        capture_output=True, check=False).returncode == 0,
                 "PostgreSQL to accept connections", limit_s=30)
        yield found
    finally:
        server.send_signal(signal.SIGINT)  # fast shutdown: backends end, then the server
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        shutil.rmtree(top, ignore_errors=True)
