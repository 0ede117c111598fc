"""The embedded broker: persistent across a crash, password-protected, loopback only."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from backstop.orchestration.broker import EmbeddedBroker


def test_writes_survive_a_killed_server_and_a_restart(tmp_path: Path) -> None:
    broker = EmbeddedBroker(tmp_path / "broker")
    url = broker.start()
    try:
        client = redis.Redis.from_url(url)
        client.set("occurrence", "kept")
        client.close()
        assert broker.process is not None
        # The server appends to its file before it answers; a SIGKILL cannot take that back.
        broker.process.send_signal(signal.SIGKILL)
        broker.process.wait()
        restarted = EmbeddedBroker(tmp_path / "broker", port=broker.port)
        assert restarted.start() == url  # same port, same password
        assert redis.Redis.from_url(url).get("occurrence") == b"kept"
        restarted.stop()
    finally:
        broker.stop()


def test_the_broker_wants_its_password_and_listens_on_loopback(tmp_path: Path) -> None:
    broker = EmbeddedBroker(tmp_path / "broker", persistent=False)
    broker.start()
    try:
        anonymous = redis.Redis(host="127.0.0.1", port=broker.port)
        with pytest.raises(redis.AuthenticationError):
            anonymous.ping()
        config = redis.Redis.from_url(broker.url).config_get("bind")
        assert config["bind"] == "127.0.0.1"
        assert (tmp_path / "broker" / "secret").stat().st_mode & 0o077 == 0
    finally:
        broker.stop()


def test_a_command_against_a_stalled_broker_gives_up_within_its_timeouts(
        tmp_path: Path) -> None:
    # Given a broker that takes connections but never answers (SIGSTOP)
    broker = EmbeddedBroker(tmp_path / "broker", persistent=False)
    url = broker.start()
    (tmp_path / "backstop.yaml").write_text("rds: [{name: local}]\n")
    assert broker.process is not None
    broker.process.send_signal(signal.SIGSTOP)
    try:
        # When status asks it, Then it exits 2 naming the broker, within its connect (3 s)
        # and read (10 s) timeouts and a margin: retries do not multiply them
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "backstop.orchestration.cli", "status",
                               "-c", str(tmp_path / "backstop.yaml")],
                              env=dict(os.environ, BACKSTOP_BROKER_URL=url),
                              capture_output=True, text=True, timeout=60, check=False)
        took = time.monotonic() - started
    finally:
        broker.process.send_signal(signal.SIGCONT)
        broker.stop()
    assert done.returncode == 2 and "cannot reach broker" in done.stderr, done.stderr
    assert took < 13 + 7, took
