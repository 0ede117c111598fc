"""Encrypted savesets side by side with plain ones, in one run.

    .venv/bin/python bench/encryption.py                    # 500 MB / 10,000 files, 5 GiB
    .venv/bin/python bench/encryption.py --big-gb 0         # without the 5 GiB file

Measures, best of --repeat runs each (plain and encrypted in turns), on the tree of
bench/engine.py (half compressible), the store on a tmpfs the bench mounts:
  FULL      encrypted (age, X25519 + ChaCha20-Poly1305)  vs  the same task unencrypted
  restore   of that encrypted FULL                        vs  of the plain one
  one file  restore --include of the last file of an encrypted --big-gb saveset
Targets: encrypted >= 0.85x plain for FULL and restore; one file <= 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.engine import generate, in_turns  # noqa: E402

CONFIG = """
state_dir: state
rds: [{{name: local}}]
data_stores: [{{name: bench, rds: local, path: out/store, create: true}}]
media_pools: [{{name: pool, data_store: bench, retention: 30d}}]
encryption: {{recipients: ["{recipient}"], identity_file: bench.key}}
tasks:
  - {{name: plain, source: tree, encryption: none}}
  - {{name: sealed, source: tree}}
  - {{name: big, source: big}}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--size-mb", type=int, default=500)
    parser.add_argument("--big-gb", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/backstop-bench-encryption"))
    parser.add_argument("--op", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.op:
        run_op(Path(args.op[0]), args.op[1], *args.op[2:])
        return
    report(measure(args), args)


def op(work: Path, *args: str) -> dict[str, Any]:
    """One operation in a fresh process: its seconds (scan to commit) and peak RSS."""
    done = subprocess.run([sys.executable, __file__, "--op", str(work), *args],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def run_op(work: Path, name: str, *args: str) -> None:
    import redis

    from backstop.config import Level
    from backstop.orchestration.catalog import RedisCatalog
    from backstop.settings import load_settings
    from backstop.workers.engine import BackupRequest, Engine, create_missing_stores
    from backstop.workers.restore import Restorer

    url = (work / "broker-url").read_text()
    settings = load_settings(str(work / "backstop.yaml"), {"BACKSTOP_BROKER_URL": url})
    create_missing_stores(settings, ["local"])
    catalog = RedisCatalog(redis.Redis.from_url(url))
    engine = Engine(settings, catalog)
    start = time.perf_counter()
    result: dict[str, Any] = {}
    if name == "backup":
        saveset = engine.backup(BackupRequest(args[0], Level.FULL, "pool")).saveset
        result = {"saveset": saveset.id, "stored": saveset.stored_bytes}
    else:
        saveset_id, target, *include = args
        found = catalog.get(saveset_id)
        assert found is not None
        done = Restorer(catalog, engine.stores, engine.keyring).restore(
            found, Path(target), include=include or None)
        result = {"files": done.files}
    result["seconds"] = time.perf_counter() - start
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from backstop.orchestration.broker import EmbeddedBroker
    from backstop.workers.age import Identity, write_identity

    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    identity = Identity.generate()
    write_identity(work / "bench.key", identity)
    (work / "backstop.yaml").write_text(CONFIG.format(recipient=identity.recipient))
    print(f"generating {args.files} files / {args.size_mb} MB and {args.big_gb} GiB ...",
          file=sys.stderr)
    generate(work / "tree", args.files, args.size_mb << 20)
    (work / "big").mkdir()
    if args.big_gb:
        with open(work / "big" / "huge.bin", "wb") as out:
            for _ in range(args.big_gb * 64):
                out.write(os.urandom(16 << 20))
        (work / "big" / "zz-last.txt").write_text("the archive's last file\n")
    out = work / "out"
    out.mkdir()
    size = 4 * (args.size_mb << 20) + (args.big_gb << 30) + (2 << 30)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(out)],
                   check=True)
    broker = EmbeddedBroker(work / "broker", persistent=False)
    (work / "broker-url").write_text(broker.start())
    try:
        return compare(args, work)
    finally:
        broker.stop()
        subprocess.run(["umount", str(out)], check=False)
        shutil.rmtree(work, ignore_errors=True)


def compare(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    out = work / "out"
    r: dict[str, Any] = {}

    def clean() -> None:
        shutil.rmtree(out / "restored", ignore_errors=True)

    (plain_s, plain), (sealed_s, sealed) = in_turns(
        args.repeat, clean, lambda: op(work, "backup", "plain"),
        lambda: op(work, "backup", "sealed"))
    r |= {"plain_full_s": plain_s, "sealed_full_s": sealed_s,
          "sealed_full_rss_mb": sealed["peak_rss_mb"]}
    (plain_r, _), (sealed_r, restored) = in_turns(
        args.repeat, clean,
        lambda: op(work, "restore", plain["saveset"], str(out / "restored")),
        lambda: op(work, "restore", sealed["saveset"], str(out / "restored")))
    r |= {"plain_restore_s": plain_r, "sealed_restore_s": sealed_r,
          "sealed_restore_rss_mb": restored["peak_rss_mb"]}
    if args.big_gb:
        big = op(work, "backup", "big")
        one = op(work, "restore", big["saveset"], str(out / "one"), "zz-last.txt")
        r |= {"big_full_s": big["seconds"], "one_file_s": one["seconds"]}
    return r


def report(r: dict[str, Any], args: argparse.Namespace) -> None:
    mb = args.size_mb
    full = r["plain_full_s"] / r["sealed_full_s"]
    restore = r["plain_restore_s"] / r["sealed_restore_s"]
    print(f"\ntree: {args.files} files, {mb} MB; best of {args.repeat}, in turns; "
          f"{os.cpu_count()} CPUs; store on tmpfs")
    print(f"FULL     encrypted {r['sealed_full_s']:.2f}s   plain {r['plain_full_s']:.2f}s   "
          f"{full:.2f}x  (target >= 0.85x: {'met' if full >= 0.85 else 'NOT met'})")
    print(f"restore  encrypted {r['sealed_restore_s']:.2f}s   plain "
          f"{r['plain_restore_s']:.2f}s   {restore:.2f}x  (target >= 0.85x: "
          f"{'met' if restore >= 0.85 else 'NOT met'})")
    print(f"peak RSS encrypted FULL {r['sealed_full_rss_mb']:.0f} MB, restore "
          f"{r['sealed_restore_rss_mb']:.0f} MB")
    if args.big_gb:
        print(f"one file from an encrypted {args.big_gb} GiB saveset: {r['one_file_s']:.3f}s "
              f"(target <= 1 s: {'met' if r['one_file_s'] <= 1 else 'NOT met'}; its FULL "
              f"took {r['big_full_s']:.1f}s)")


if __name__ == "__main__":
    main()
