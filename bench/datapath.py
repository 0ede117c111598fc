"""A client's backup through an RDS data service, side by side with the same backup read
locally by an RDS worker, in one run.

    .venv/bin/python bench/datapath.py                 # 500 MB / 10,000 files, and 5 GB
    .venv/bin/python bench/datapath.py --big-gb 0      # without the 5 GB memory run

Measures, best of --repeat runs each, on the tree of bench/engine.py:
  FULL            client → data service over loopback (127.0.0.2)  vs  RDS worker, local
  no-change INC   client → data service                            vs  RDS worker, local
and the peak RSS of the data service (its VmHWM) and of the client (each backup runs in a
process of its own) during a FULL of a --big-gb tree. The store is on a tmpfs the bench
mounts (as in bench/engine.py), the data service is the real `backstop serve` process.
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

from bench.engine import best, generate  # noqa: E402

TOKEN = "bench-data-token-0123456789abcdef"
CONFIG = """
state_dir: state
rds: [{{name: local, interfaces: [{{name: lo2, address: 127.0.0.2, port: {port}}}]}}]
clients: [{{name: c1}}]
data_stores: [{{name: bench, rds: local, path: out/store, create: true}}]
media_pools: [{{name: pool, data_store: bench, retention: 30d}}]
tasks:
  - {{name: tree, source: tree}}
  - {{name: tree-client, client: c1, source: tree}}
  - {{name: big, source: big}}
  - {{name: big-client, client: c1, source: big}}
"""


def run_op(work: Path, task: str, level: str) -> None:
    """Child side: one backup of ``task`` (through the data service when it has a client)."""
    import redis

    from backstop.config import Level
    from backstop.orchestration.catalog import RedisCatalog
    from backstop.settings import load_settings
    from backstop.workers.engine import BackupRequest, Engine
    from backstop.workers.remote import RemoteStores

    url = (work / "broker-url").read_text()
    settings = load_settings(str(work / "backstop.yaml"),
                             {"BACKSTOP_BROKER_URL": url, "BACKSTOP_DATA_TOKEN": TOKEN})
    remote = (RemoteStores(settings, TOKEN) if settings.config.task_named(task).client
              else None)
    engine = Engine(settings, RedisCatalog(redis.Redis.from_url(url)), stores=remote)
    start = time.perf_counter()
    saveset = engine.backup(BackupRequest(task, Level(level), "pool")).saveset
    seconds = time.perf_counter() - start
    if remote is not None:
        remote.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"seconds": seconds, "files": saveset.files, "bytes": saveset.bytes,
                      "level": saveset.level.value, "peak_rss_mb": peak_rss_mb(os.getpid()),
                      "cpu_user_s": usage.ru_utime, "cpu_sys_s": usage.ru_stime}))


def op(work: Path, task: str, level: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, __file__, "--op", str(work), task, level],
                          check=False, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{task} {level} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def generate_big(root: Path, gib: int) -> None:
    """``gib`` GiB in 256 MiB files of random bytes (incompressible: all of it travels)."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(gib * 4):
        with open(root / f"big{i:03}.bin", "wb") as out:
            for _ in range(256):
                out.write(os.urandom(1 << 20))


def peak_rss_mb(pid: int) -> float:
    """The high-water mark of a process's resident memory (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int) -> float:
    """The user and system CPU seconds a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--op", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--size-mb", type=int, default=500)
    parser.add_argument("--big-gb", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/backstop-datapath"))
    parser.add_argument("--keep", action="store_true",
                        help="keep --workdir (trees, stores) when the bench ends")
    args = parser.parse_args()
    if args.op:
        run_op(Path(args.op[0]), args.op[1], args.op[2])
        return
    report(measure(args), args)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from backstop.orchestration.broker import EmbeddedBroker, free_port

    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "backstop.yaml").write_text(CONFIG.format(port=free_port("127.0.0.2")))
    print(f"generating {args.files} files / {args.size_mb} MB and {args.big_gb} GiB ...",
          file=sys.stderr)
    generate(work / "tree", args.files, args.size_mb << 20)
    generate_big(work / "big", args.big_gb)
    out = work / "out"
    out.mkdir()
    size = 3 * (args.size_mb << 20) + (args.big_gb << 30) * 2 + (1 << 30)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(out)],
                   check=True)
    broker = EmbeddedBroker(work / "broker", persistent=False)
    (work / "broker-url").write_text(broker.start())
    env = dict(os.environ, BACKSTOP_DATA_TOKEN=TOKEN)
    serve = subprocess.Popen([sys.executable, "-m", "backstop.orchestration.cli", "serve", "--rds",
                              "local", "-c", str(work / "backstop.yaml")], env=env,
                             stderr=subprocess.DEVNULL)
    try:
        wait_serving(work)
        return compare(args, work, serve.pid)
    finally:
        serve.terminate()
        serve.wait()
        broker.stop()
        subprocess.run(["umount", str(out)], check=False)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def wait_serving(work: Path) -> None:
    from backstop.settings import load_settings
    from backstop.workers.remote import probe_interfaces

    settings = load_settings(str(work / "backstop.yaml"), {})
    deadline = time.monotonic() + 30
    while not all(probe_interfaces(settings, TOKEN).values()):
        if time.monotonic() > deadline:
            sys.exit("the data service did not start")
        time.sleep(0.2)


def compare(args: argparse.Namespace, work: Path, serve_pid: int) -> dict[str, Any]:
    r: dict[str, Any] = {"tree_bytes": sum(p.stat().st_size for p in (work / "tree").rglob("*")
                                            if p.is_file())}
    r["local_full_s"], local = best(args.repeat, lambda: op(work, "tree", "FULL"))
    service_before = cpu_s(serve_pid)
    r["remote_full_s"], remote = best(args.repeat, lambda: op(work, "tree-client", "FULL"))
    # core-seconds of each side in one FULL (the service's: the mean of the runs)
    r["local_full_cpu_s"] = local["cpu_user_s"] + local["cpu_sys_s"]
    r["client_full_cpu_s"] = remote["cpu_user_s"] + remote["cpu_sys_s"]
    r["service_full_cpu_s"] = (cpu_s(serve_pid) - service_before) / args.repeat
    r["local_inc_s"], _ = best(args.repeat, lambda: op(work, "tree", "INC"))
    r["remote_inc_s"], inc = best(args.repeat, lambda: op(work, "tree-client", "INC"))
    r["remote_inc_files"] = inc["files"]
    r["big_bytes"] = args.big_gb << 30
    if args.big_gb:
        big = op(work, "big-client", "FULL")
        r["big_s"], r["big_client_rss_mb"] = big["seconds"], big["peak_rss_mb"]
        r["big_service_rss_mb"] = peak_rss_mb(serve_pid)
    return r


def report(r: dict[str, Any], args: argparse.Namespace) -> None:
    mb = r["tree_bytes"] / 1e6
    full = r["local_full_s"] / r["remote_full_s"]
    inc = r["remote_inc_s"] / r["local_inc_s"]
    print(f"\ntree: {args.files} files, {mb:.0f} MB; best of {args.repeat}; "
          f"{os.cpu_count()} CPUs; store on tmpfs; data service on 127.0.0.2")
    print(f"{'':15} {'client via data service':28} {'RDS worker, local':24} {'ratio':>7}  "
          "target")
    print(f"{'FULL':15} {r['remote_full_s']:.2f}s ({mb / r['remote_full_s']:.0f} MB/s)"
          f"{'':8} {r['local_full_s']:.2f}s ({mb / r['local_full_s']:.0f} MB/s){'':5} "
          f"{full:>6.2f}x  >= 0.8x speed ({'met' if full >= 0.8 else 'NOT met'})")
    print(f"{'':15} CPU: client {r['client_full_cpu_s']:.2f} + data service "
          f"{r['service_full_cpu_s']:.2f} core-s{'':3} {r['local_full_cpu_s']:.2f} core-s")
    print(f"{'no-change INC':15} {r['remote_inc_s']:.2f}s{'':22} {r['local_inc_s']:.2f}s"
          f"{'':19} {inc:>6.2f}x  <= 1.5x time ({'met' if inc <= 1.5 else 'NOT met'})")
    if args.big_gb:
        ok = max(r["big_service_rss_mb"], r["big_client_rss_mb"]) < 250
        print(f"{args.big_gb} GiB FULL through the data service: {r['big_s']:.1f}s; peak RSS "
              f"data service {r['big_service_rss_mb']:.0f} MB, client "
              f"{r['big_client_rss_mb']:.0f} MB (target < 250 MB each: "
              f"{'met' if ok else 'NOT met'})")


if __name__ == "__main__":
    main()
