"""Shared fixtures: a real Valkey server from the embedded wheel, configs written to disk.

The server is started once per session by the same code that ``backstop up`` uses, on a
free loopback port with a password, and flushed before every test that uses it.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from backstop.orchestration.broker import EmbeddedBroker
from backstop.settings import Settings, load_settings

# the ``cluster`` fixture: a Sentinel-managed Valkey
pytest_plugins = ["tests.sentinels", "tests.seaweed"]

MINIMAL_CONFIG = """
rds: [{name: local, interfaces: [{name: lo, address: 127.0.0.1}]}]
data_stores:
  - {name: store-a, rds: local, path: stores/a, capacity: 1GiB, reserve: 16MiB}
  - {name: store-b, rds: local, path: stores/b}
media_pools:
  - {name: daily, data_store: store-a, retention: 14d, media: {count: 10, size: 100MiB},
     failover_pool: spare}
  - {name: spare, data_store: store-b, retention: 14d}
drives:
  - {name: drive-a, data_store: store-a, channels: 2}
  - {name: drive-b, data_store: store-b, channels: 1}
tasks: [{name: docs, source: data/docs, exclude: ["*.tmp", "cache/"]}]
schedules:
  - {name: nightly, cron: "0 22 * * 1-5", timezone: Europe/Berlin, catch_up: 1h}
  - {name: often, every: 30s}
events:
  - name: docs-nightly
    schedule: nightly
    task: docs
    level: INC
    enforce_full: true
    full_interval: 7d
    media_pool: daily
    drive: drive-a
    interface: lo
    priority: 1
    follow_ups: [{event: docs-verify, when: success}]
    failover_event: docs-spare
  - {name: docs-spare, task: docs, level: FULL, media_pool: spare, drive: drive-b}
  - {name: docs-verify, kind: verify}
"""


@pytest.fixture(scope="session")
def broker_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    server = EmbeddedBroker(tmp_path_factory.mktemp("broker"), persistent=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def broker_url(broker_server: EmbeddedBroker) -> Iterator[str]:
    """The session server's URL, with every key flushed first."""
    client = redis.Redis.from_url(broker_server.url)
    client.flushall()
    client.close()
    yield broker_server.url


@pytest.fixture
def redis_client(broker_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(broker_url)
    yield client
    client.close()


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[str], Path]:
    """Write a config file into the test's directory and return its path."""

    def write(text: str, name: str = "backstop.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


@pytest.fixture
def settings(write_config: Callable[[str], Path], broker_url: str) -> Settings:
    path = write_config(MINIMAL_CONFIG)
    return load_settings(str(path), {"BACKSTOP_BROKER_URL": broker_url})
