"""A database-dump-like stream through a client and the data service, side by side with the
same command piped into ``zstd -3 -T0 > file``, in one run.

    .venv/bin/python bench/streams.py                 # 1 GB, best of 3
    .venv/bin/python bench/streams.py --size-mb 200 --repeat 1

The command is tests/dumpgen.py (numbered SQL-like lines, about 4.6:1 with zstd -3, at
well over 1 GB/s on its own). Backstop's side is a FULL of a task with one stream, run by a
client (a process of its own, as a client worker runs it) that sends it through the real
`backstop serve` on 127.0.0.2 into a store on a tmpfs the bench mounts; the baseline writes
its file to the same tmpfs. Prints both times, the ratio, and the peak RSS of the client
and of the data service (VmHWM).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.datapath import TOKEN, op, peak_rss_mb, wait_serving  # noqa: E402
from bench.engine import best  # noqa: E402

DUMPGEN = REPO / "tests" / "dumpgen.py"
CONFIG = """
state_dir: state
rds: [{{name: local, interfaces: [{{name: lo2, address: 127.0.0.2, port: {port}}}]}}]
clients: [{{name: db1}}]
data_stores: [{{name: bench, rds: local, path: out/store, create: true}}]
media_pools: [{{name: pool, data_store: bench, retention: 30d}}]
tasks:
  - name: db
    client: db1
    streams: [{{name: db.dump, argv: {argv}}}]
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/backstop-streams"))
    args = parser.parse_args()
    if shutil.which("zstd") is None:
        subprocess.run(["apt-get", "install", "-y", "-qq", "zstd"], check=True)
    report(measure(args), args)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from backstop.orchestration.broker import EmbeddedBroker, free_port

    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    size = args.size_mb * 1_000_000
    command = [sys.executable, str(DUMPGEN), str(size)]
    (work / "backstop.yaml").write_text(CONFIG.format(port=free_port("127.0.0.2"),
                                                      argv=json.dumps(command)))
    out = work / "out"
    out.mkdir()
    room = (args.repeat + 2) * size // 3 + (256 << 20)  # the savesets and the baseline's file
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={room}", "tmpfs", str(out)],
                   check=True)
    broker = EmbeddedBroker(work / "broker", persistent=False)
    (work / "broker-url").write_text(broker.start())
    env = dict(os.environ, BACKSTOP_DATA_TOKEN=TOKEN)
    serve = subprocess.Popen([sys.executable, "-m", "backstop.orchestration.cli", "serve",
                              "--rds", "local", "-c", str(work / "backstop.yaml")], env=env,
                             stderr=subprocess.DEVNULL)
    try:
        wait_serving(work)
        return compare(args, work, command, serve.pid)
    finally:
        serve.terminate()
        serve.wait()
        broker.stop()
        subprocess.run(["umount", str(out)], check=False)
        shutil.rmtree(work, ignore_errors=True)


def baseline(command: list[str], target: Path) -> float:
    """``command | zstd -3 -T0 > target``, timed."""
    start = time.perf_counter()
    with open(target, "wb") as sink:
        made = subprocess.Popen(command, stdout=subprocess.PIPE)
        zstd = subprocess.run(["zstd", "-3", "-T0", "-q", "-c"], stdin=made.stdout,
                              stdout=sink, check=True)
        assert made.stdout is not None
        made.stdout.close()
        made.wait()
    seconds = time.perf_counter() - start
    if made.returncode or zstd.returncode:
        sys.exit("the baseline pipeline failed")
    return seconds


def compare(args: argparse.Namespace, work: Path, command: list[str], serve_pid: int
            ) -> dict[str, Any]:
    r: dict[str, Any] = {"bytes": args.size_mb * 1_000_000}
    r["baseline_s"], _ = best(args.repeat, lambda: baseline(command,
                                                           work / "out" / "baseline.zst"))
    r["baseline_stored"] = (work / "out" / "baseline.zst").stat().st_size
    r["backstop_s"], run = best(args.repeat, lambda: op(work, "db", "FULL"))
    r["client_rss_mb"] = run["peak_rss_mb"]
    r["service_rss_mb"] = peak_rss_mb(serve_pid)
    stored = [p.stat().st_size for p in (work / "out" / "store").rglob("archive.tar.zst")]
    r["backstop_stored"] = max(stored)
    return r


def report(r: dict[str, Any], args: argparse.Namespace) -> None:
    mb = r["bytes"] / 1e6
    ratio = r["baseline_s"] / r["backstop_s"]
    rss_ok = max(r["client_rss_mb"], r["service_rss_mb"]) < 250
    print(f"\nstream: {mb:.0f} MB from tests/dumpgen.py; best of {args.repeat}; "
          f"{os.cpu_count()} CPUs; output on tmpfs; data service on 127.0.0.2")
    print(f"{'':28} {'time':>8} {'MB/s':>7} {'stored MB':>10}")
    print(f"{'Backstop (client → service)':28} {r['backstop_s']:>7.2f}s "
          f"{mb / r['backstop_s']:>7.0f} {r['backstop_stored'] / 1e6:>10.1f}")
    print(f"{'cmd | zstd -3 -T0 > file':28} {r['baseline_s']:>7.2f}s "
          f"{mb / r['baseline_s']:>7.0f} {r['baseline_stored'] / 1e6:>10.1f}")
    print(f"ratio (speed): {ratio:.2f}x  target >= 0.8x ({'met' if ratio >= 0.8 else 'NOT met'})")
    print(f"peak RSS: client {r['client_rss_mb']:.0f} MB, data service "
          f"{r['service_rss_mb']:.0f} MB  target < 250 MB each "
          f"({'met' if rss_ok else 'NOT met'})")


if __name__ == "__main__":
    main()
