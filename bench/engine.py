"""Backstop's backup engine side by side with tar|zstd, restic and BorgBackup, in one run.

    .venv/bin/python bench/engine.py          # 500 MB / 10,000 files, 200,000-file manifest
    .venv/bin/python bench/engine.py --size-mb 100 --files 2000 --manifest-files 20000

Measures, best of --repeat runs each (Backstop and its baseline in turns), on a tree
generated once (half compressible):
  FULL            Backstop FULL          vs  tar -cf - | zstd -3 -T0, and the same followed
                                             by a sync of its output (a saveset is on the
                                             disk when its FULL returns)
  FULL, peers     Backstop FULL          vs  restic backup into an empty repository, and
                                             borg create (zstd,3, no encryption) likewise
  no-change INC   Backstop INC           vs  restic backup (second run, unchanged tree)
  restore         Backstop restore       vs  zstd -d | tar -x, restic restore, borg extract
  one file        Backstop restore --include of the archive's last file
                                         vs  the full restore, and restic restore --include
FULL and restore run with one job too (one process on one core), for the speed-up of the
default (a process per core; --jobs sets it). Also printed: the peak RSS of each Backstop
operation (each runs in its own process) and of the largest of its engine processes, and
a FULL, a no-change INC and a restore of a 200,000-file tree (the memory targets).
Everything both sides write (Backstop's store, the .tar.zst, the restic repository, the
restore targets) goes to a tmpfs the bench mounts, so that the software is compared and not
the moods of a virtual disk (seen here: the same `tar -x` taking 1.8 s, then 6.4 s);
--on-disk writes to --workdir instead.
Needs zstd, restic and borg (installed from Debian's packages when missing and run as
root).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONFIG = """
state_dir: state
rds: [{name: local}]
data_stores: [{name: bench, rds: local, path: out/store, create: true}]
media_pools: [{name: pool, data_store: bench, retention: 30d}]
tasks: [{name: tree, source: tree}, {name: many, source: many}]
"""
WORDS = ["backup", "restore", "saveset", "medium", "pool", "drive", "failover", "schedule",
         "level", "full", "incremental", "differential", "copy", "retention", "catalog",
         "manifest", "archive", "verify", "purge", "store"]


def generate(root: Path, files: int, total_bytes: int, seed: int = 7) -> None:
    """``files`` files, half random bytes, half text, sizes spread around the mean."""
    rng = random.Random(seed)
    text = " ".join(rng.choice(WORDS) for _ in range(400_000)).encode()
    mean = total_bytes // files
    for i in range(files):
        directory = root / f"d{i % 100:02}" / f"e{i % 7}"
        directory.mkdir(parents=True, exist_ok=True)
        size = max(1, int(rng.uniform(0.2, 1.8) * mean))
        if i % 2:
            data = os.urandom(size)
        else:
            start = rng.randrange(0, len(text) - min(size, len(text) - 1))
            data = (text[start:] + text)[:size]
        (directory / f"f{i:06}.dat").write_bytes(data)


def generate_many(root: Path, files: int) -> None:
    for i in range(files):
        directory = root / f"d{i // 1000:04}"
        if i % 1000 == 0:
            directory.mkdir(parents=True, exist_ok=True)
        (directory / f"f{i:07}.txt").write_bytes(b"x" * (i % 200))


def best(repeat: int, run: Callable[[], Any], reset: Callable[[], None] = lambda: None
         ) -> tuple[float, Any]:
    """Fastest of ``repeat`` runs: wall time, or the ``seconds`` a Backstop operation reports
    (its work from scan to commit, without the interpreter's start-up, which a running
    worker does not pay)."""
    times, last = [], None
    for _ in range(repeat):
        reset()
        os.sync()  # what a reset deleted or wrote must not slow down the run measured
        start = time.perf_counter()
        last = run()
        elapsed = time.perf_counter() - start
        times.append(last["seconds"] if isinstance(last, dict) else elapsed)
    return min(times), last


def in_turns(repeat: int, reset: Callable[[], None], *runs: Callable[[], Any]
             ) -> list[tuple[float, Any]]:
    """For each of ``runs``, its best of ``repeat`` and what it returned last (as ``best``),
    the runs taken in turns, so that no side has a disk's good or bad minutes to itself
    (seen here: the same restore taking 0.9 s, then 3.2 s, as the virtual disk allocates
    blocks written for the first time)."""
    times: list[list[float]] = [[] for _ in runs]
    last: list[Any] = [None for _ in runs]
    for _ in range(repeat):
        for i, run in enumerate(runs):
            seconds, last[i] = best(1, run, reset)
            times[i].append(seconds)
    return [(min(t), result) for t, result in zip(times, last, strict=True)]


def sh(command: str, env: dict[str, str] | None = None) -> None:
    subprocess.run(["bash", "-o", "pipefail", "-c", command], check=True, env=env,
                   stdout=subprocess.DEVNULL)


def backstop_op(work: Path, *args: str, jobs: int | None = None) -> dict[str, Any]:
    """One Backstop operation in a fresh process (with ``jobs`` processes; default: the
    bench's --jobs, else backup_jobs' default); returns its timing, CPU and peak RSS."""
    jobs = jobs or JOBS[0]
    env = dict(os.environ, BENCH_JOBS=str(jobs)) if jobs else None
    done = subprocess.run([sys.executable, __file__, "--op", str(work), *args],
                          check=False, capture_output=True, text=True, env=env)
    if done.returncode:
        sys.exit(f"backstop {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def run_op(work: Path, op: str, *args: str) -> None:
    """Child side of backstop_op."""
    import redis

    from backstop.config import Level
    from backstop.orchestration.catalog import RedisCatalog
    from backstop.settings import load_settings
    from backstop.workers.engine import BackupRequest, Engine
    from backstop.workers.jobs import Jobs
    from backstop.workers.restore import Restorer

    url = (work / "broker-url").read_text()
    settings = load_settings(str(work / "backstop.yaml"), {"BACKSTOP_BROKER_URL": url})
    catalog = RedisCatalog(redis.Redis.from_url(url))
    engine = Engine(settings, catalog)
    if os.environ.get("BENCH_JOBS"):
        engine.jobs = Jobs(int(os.environ["BENCH_JOBS"]))
    before = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = before.ru_utime + before.ru_stime
    start = time.perf_counter()
    result: dict[str, Any] = {}
    if op == "backup":
        task, level = args
        saveset = engine.backup(BackupRequest(task, Level(level), "pool")).saveset
        result = {"saveset": saveset.id, "files": saveset.files, "bytes": saveset.bytes,
                  "stored": saveset.stored_bytes, "level": saveset.level.value}
    elif op == "restore":
        saveset_id, target, *include = args
        found = catalog.get(saveset_id)
        assert found is not None
        restored = Restorer(catalog, engine.stores, jobs=engine.jobs).restore(found, Path(target),
                                                            include=include or None)
        result = {"files": restored.files, "bytes": restored.bytes}
    result["seconds"] = time.perf_counter() - start
    result["jobs"] = engine.jobs.processes
    own, children = (resource.getrusage(who) for who in (resource.RUSAGE_SELF,
                                                          resource.RUSAGE_CHILDREN))
    result["peak_rss_mb"] = own.ru_maxrss / 1024
    result["process_peak_rss_mb"] = children.ru_maxrss / 1024  # the largest of its processes
    result["cpu_s"] = own.ru_utime + own.ru_stime - cpu_before
    result["processes_cpu_s"] = children.ru_utime + children.ru_stime
    print(json.dumps(result))


JOBS: list[int | None] = [None]  # --jobs
TOOLS = {"zstd": "zstd", "restic": "restic", "tar": "tar", "borg": "borgbackup"}


def ensure_tools() -> None:
    missing = [package for tool, package in TOOLS.items() if shutil.which(tool) is None]
    if missing and os.geteuid() == 0:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True)
    missing = [package for tool, package in TOOLS.items() if shutil.which(tool) is None]
    if missing:
        sys.exit(f"bench needs {', '.join(missing)} (apt-get install {' '.join(missing)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--op", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--size-mb", type=int, default=500)
    parser.add_argument("--manifest-files", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--jobs", type=int, help="Backstop's processes (default: backup_jobs' "
                        "default, one per core); FULL and restore are measured with one too")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/backstop-bench"))
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--on-disk", action="store_true",
                        help="write outputs to --workdir, not to a tmpfs")
    parser.add_argument("--keep", action="store_true",
                        help="keep --workdir (trees, stores) when the bench ends")
    args = parser.parse_args()
    if args.op:
        run_op(Path(args.op[0]), args.op[1], *args.op[2:])
        return
    ensure_tools()
    JOBS[0] = args.jobs
    measure(args)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from backstop.orchestration.broker import EmbeddedBroker

    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "backstop.yaml").write_text(CONFIG)
    print(f"generating {args.files} files / {args.size_mb} MB and {args.manifest_files} "
          "small files ...", file=sys.stderr)
    generate(work / "tree", args.files, args.size_mb << 20)
    generate_many(work / "many", args.manifest_files)
    out = work / "out"
    out.mkdir()
    if not args.on_disk:
        size = 6 * (args.size_mb << 20) + (1 << 30)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(out)],
                       check=True)
    broker = EmbeddedBroker(work / "broker", persistent=False)
    (work / "broker-url").write_text(broker.start())
    try:
        results = compare(args, work)
        results["outputs_on"] = "disk" if args.on_disk else "tmpfs"
    finally:
        broker.stop()
        if not args.on_disk:
            subprocess.run(["umount", str(out)], check=False)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report(results, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


def compare(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    tree, repeat = work / "tree", args.repeat
    out = work / "out"
    env = dict(os.environ, RESTIC_PASSWORD="bench", RESTIC_REPOSITORY=str(out / "restic"),
               BORG_BASE_DIR=str(out / "borg-home"),
               BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes")
    r: dict[str, Any] = {"tree_bytes": sum(p.stat().st_size for p in tree.rglob("*")
                                            if p.is_file()), "files": args.files}

    def fresh_store() -> None:
        import redis

        shutil.rmtree(out / "store", ignore_errors=True)
        redis.Redis.from_url((work / "broker-url").read_text()).flushall()
        from backstop.settings import load_settings
        from backstop.workers.engine import create_missing_stores

        create_missing_stores(load_settings(str(work / "backstop.yaml"), {}), ["local"])

    tar_zstd = f"tar -C {tree} -cf - . | zstd -3 -T0 -q -f -o {out}/tree.tar.zst"
    (r["tar_zstd_s"], _), (r["tar_zstd_sync_s"], _), (r["full_one_job_s"], _), (
        r["full_s"], full) = in_turns(
        repeat, fresh_store, lambda: sh(tar_zstd),
        # as durable as a saveset, which is on the disk when its FULL returns
        lambda: sh(f"{tar_zstd} && sync {out}/tree.tar.zst"),
        lambda: backstop_op(work, "backup", "tree", "FULL", jobs=1),
        lambda: backstop_op(work, "backup", "tree", "FULL"))  # last: the one kept
    r["jobs"] = full["jobs"]
    r["full_stored_bytes"], r["full_peak_rss_mb"] = full["stored"], full["peak_rss_mb"]
    r["full_process_peak_rss_mb"] = full["process_peak_rss_mb"]
    r["full_cpu_s"] = full["cpu_s"] + full["processes_cpu_s"]
    r["tar_zstd_bytes"] = (out / "tree.tar.zst").stat().st_size
    r["inc_s"], inc = best(repeat, lambda: backstop_op(work, "backup", "tree", "INC"))
    r["inc_peak_rss_mb"], r["inc_files"] = inc["peak_rss_mb"], inc["files"]
    peers(r, tree, out, env, repeat)
    r["restic_s"], _ = best(repeat, lambda: sh(f"restic backup -q {tree}", env))

    def clear_targets() -> None:
        for name in ("restore-backstop", "restore-tar"):
            shutil.rmtree(out / name, ignore_errors=True)
        (out / "restore-tar").mkdir()

    (r["untar_s"], _), (r["restore_one_job_s"], _), (r["restore_s"], restored) = in_turns(
        repeat, clear_targets,
        lambda: sh(f"zstd -d -q -c {out}/tree.tar.zst | tar -C {out}/restore-tar -xf -"),
        lambda: backstop_op(work, "restore", full["saveset"], str(out / "restore-backstop"),
                            jobs=1),
        lambda: backstop_op(work, "restore", full["saveset"], str(out / "restore-backstop")))
    r["restore_peak_rss_mb"] = restored["peak_rss_mb"]
    r["restore_process_peak_rss_mb"] = restored["process_peak_rss_mb"]
    r["restic_restore_s"], _ = best(repeat, lambda: sh(
        f"restic restore -q latest --target {out}/restore-tar", env), clear_targets)
    r["borg_extract_s"], _ = best(repeat, lambda: sh(
        f"cd {out}/restore-tar && borg extract {out}/borg::full", env), clear_targets)
    last = "/".join(max(p.relative_to(tree).parts for p in tree.rglob("*") if p.is_file()))
    r["one_file"] = last
    r["one_file_s"], _ = best(repeat, lambda: backstop_op(
        work, "restore", full["saveset"], str(out / "restore-backstop"), last), clear_targets)
    r["restic_one_file_s"], _ = best(repeat, lambda: sh(
        f"restic restore -q latest --target {out}/restore-tar --include {tree}/{last}", env),
        clear_targets)
    many_full = backstop_op(work, "backup", "many", "FULL")
    many_inc = backstop_op(work, "backup", "many", "INC")
    r["manifest_files"] = args.manifest_files
    r["manifest_full_s"], r["manifest_full_peak_rss_mb"] = many_full["seconds"], many_full[
        "peak_rss_mb"]
    r["manifest_inc_s"], r["manifest_inc_peak_rss_mb"] = many_inc["seconds"], many_inc[
        "peak_rss_mb"]
    r["manifest_full_process_peak_rss_mb"] = many_full["process_peak_rss_mb"]
    # on --workdir's disk: a tmpfs takes a page a file, 4 GB for a million
    shutil.rmtree(work / "restore-many", ignore_errors=True)
    many_restore = backstop_op(work, "restore", many_full["saveset"], str(work / "restore-many"))
    shutil.rmtree(work / "restore-many", ignore_errors=True)
    r["manifest_restore_s"] = many_restore["seconds"]
    r["manifest_restore_peak_rss_mb"] = many_restore["peak_rss_mb"]
    r["manifest_restore_process_peak_rss_mb"] = many_restore["process_peak_rss_mb"]
    return r


def peers(r: dict[str, Any], tree: Path, out: Path, env: dict[str, str], repeat: int) -> None:
    """restic's and Borg's first backup of the tree, each into an empty repository; their
    repositories are left with that backup, for the restores and the no-change INC."""
    def empty(name: str, make: str) -> Callable[[], None]:
        def reset() -> None:
            shutil.rmtree(out / name, ignore_errors=True)
            sh(make, env)
        return reset

    r["restic_full_s"], _ = best(repeat, lambda: sh(f"restic backup -q {tree}", env),
                                 empty("restic", "restic init -q"))
    r["borg_full_s"], _ = best(
        repeat, lambda: sh(f"cd {tree} && borg create --compression zstd,3 {out}/borg::full .",
                           env),
        empty("borg", f"borg init -e none {out}/borg"))


def report(r: dict[str, Any], args: argparse.Namespace) -> None:
    mb = r["tree_bytes"] / 1e6
    rows = [
        ("FULL", f"Backstop {r['full_s']:.2f}s ({mb / r['full_s']:.0f} MB/s)",
         f"tar|zstd -3 -T0 {r['tar_zstd_s']:.2f}s ({mb / r['tar_zstd_s']:.0f} MB/s)",
         r["tar_zstd_s"] / r["full_s"], ">= 1.0"),
        ("", "", f"the same, then sync of it {r['tar_zstd_sync_s']:.2f}s",
         r["tar_zstd_sync_s"] / r["full_s"], "(as durable as a saveset)"),
        ("", "", f"restic backup {r['restic_full_s']:.2f}s",
         r["restic_full_s"] / r["full_s"], ">= 1.5"),
        ("", "", f"borg create {r['borg_full_s']:.2f}s",
         r["borg_full_s"] / r["full_s"], ">= 1.5"),
        ("no-change INC", f"Backstop {r['inc_s']:.2f}s", f"restic {r['restic_s']:.2f}s",
         r["restic_s"] / r["inc_s"], ">= 8.0"),
        ("restore", f"Backstop {r['restore_s']:.2f}s", f"zstd -d|tar -x {r['untar_s']:.2f}s",
         r["untar_s"] / r["restore_s"], ">= 1.0"),
        ("", "", f"restic restore {r['restic_restore_s']:.2f}s",
         r["restic_restore_s"] / r["restore_s"], ">= 1.5"),
        ("", "", f"borg extract {r['borg_extract_s']:.2f}s",
         r["borg_extract_s"] / r["restore_s"], ">= 1.5"),
        ("one file", f"Backstop {r['one_file_s']:.3f}s",
         f"restic restore --include {r['restic_one_file_s']:.2f}s",
         r["restic_one_file_s"] / r["one_file_s"], "<= 1 s"),
        ("", "", f"Backstop full restore {r['restore_s']:.2f}s",
         r["restore_s"] / r["one_file_s"], ""),
        (f"{r['jobs']} jobs vs 1", f"FULL {r['full_s']:.2f}s",
         f"Backstop, one job {r['full_one_job_s']:.2f}s",
         r["full_one_job_s"] / r["full_s"], ">= 1.6 (2 jobs)"),
        ("", f"restore {r['restore_s']:.2f}s",
         f"Backstop, one job {r['restore_one_job_s']:.2f}s",
         r["restore_one_job_s"] / r["restore_s"], ">= 1.6 (2 jobs)"),
    ]
    print(f"\ntree: {args.files} files, {mb:.0f} MB; best of {args.repeat}; "
          f"{os.cpu_count()} CPUs; outputs on {r['outputs_on']}")
    print(f"{'':15} {'Backstop':32} {'baseline':36} {'speed ratio':>11}  target")
    for name, ours, theirs, ratio, target in rows:
        print(f"{name:15} {ours:32} {theirs:36} {ratio:>10.2f}x  {target}")
    print(f"stored: Backstop {r['full_stored_bytes'] / 1e6:.0f} MB, tar.zst "
          f"{r['tar_zstd_bytes'] / 1e6:.0f} MB")
    print(f"peak RSS: FULL {r['full_peak_rss_mb']:.0f} MB (its largest job "
          f"{r['full_process_peak_rss_mb']:.0f} MB), INC {r['inc_peak_rss_mb']:.0f} MB, "
          f"restore {r['restore_peak_rss_mb']:.0f} MB (its largest job "
          f"{r['restore_process_peak_rss_mb']:.0f} MB); FULL used {r['full_cpu_s']:.2f} "
          "CPU-seconds")
    print(f"{r['manifest_files']}-file tree: FULL {r['manifest_full_s']:.1f}s / "
          f"{r['manifest_full_peak_rss_mb']:.0f} MB peak RSS (its largest job "
          f"{r['manifest_full_process_peak_rss_mb']:.0f} MB), no-change INC "
          f"{r['manifest_inc_s']:.1f}s / {r['manifest_inc_peak_rss_mb']:.0f} MB, restore "
          f"{r['manifest_restore_s']:.1f}s / {r['manifest_restore_peak_rss_mb']:.0f} MB (its "
          f"largest job {r['manifest_restore_process_peak_rss_mb']:.0f} MB) "
          "(targets at 1,000,000 files: <= 500 MB for the backups, < 250 MB a process)")


if __name__ == "__main__":
    main()
