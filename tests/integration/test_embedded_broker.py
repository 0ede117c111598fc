"""The embedded broker: persistent across a crash, password-protected, loopback only."""

from __future__ import annotations

import signal
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
