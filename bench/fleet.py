"""N real client workers on one broker: what each costs idle, and a wave of backups.

    .venv/bin/python bench/fleet.py                  # N = 50, 60 s idle window
    .venv/bin/python bench/fleet.py --clients 20 --idle-s 30

On one embedded Valkey, with a control+RDS worker (`backstop worker --control --rds local`)
and the RDS's data service (`backstop serve`, on 127.0.0.2), the bench measures the broker
(INFO: connected clients, commands processed, network bytes, its own CPU, memory):
  idle     over --idle-s seconds with the control+RDS worker alone, then again with N
           client workers (`backstop worker --client cNNN`) started and settled: per
           client worker, the difference in connections, commands/s and bytes/s, and the
           RSS of its processes (a prefork parent and its children, if any)
  wave     N occurrences at once, one per client (a small FULL each, through the data
           service): occurrences/s, broker commands per occurrence, broker CPU, and that
           each occurrence has exactly one run, succeeded, and one saveset
  after    the same idle measures once every client worker has run a backup
  bare     the baseline, in the same run: --bare workers of a bare Celery app with one no-op
           task, each consuming a queue of its own, idle, measured the same way: started as
           `celery worker` starts with its defaults (prefork), and with the same switches as
           a lean client worker (threads, no remote control, events, gossip, mingle or
           heartbeat, publishing pool 0, a 10 s poll)
and extrapolates to 1,000 / 10,000 / 100,000 clients next to Valkey's limits: maxclients
(10,000 by default) and one core's worth of commands, measured as the broker's CPU time
per command during the wave. The store is on a tmpfs the bench mounts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scratch import scratch  # bench/scratch.py, beside this script

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TOKEN = "bench-fleet-token-0123456789abcdef"
MAXCLIENTS = 10_000  # Valkey's default maxclients
SCALES = (1_000, 10_000, 100_000)


def config_text(clients: int, port: int) -> str:
    names = [f"c{i:03}" for i in range(clients)]
    return "\n".join([
        "state_dir: state",
        f"rds: [{{name: local, interfaces: [{{name: lo2, address: 127.0.0.2, port: {port}}}]}}]",
        "data_stores: [{name: fast, rds: local, path: out/store, create: true}]",
        "media_pools: [{name: fast, data_store: fast, retention: 14d}]",
        "data_path: {connect_timeout: 5s, io_timeout: 60s}",
        "clients: [" + ", ".join(f"{{name: {n}}}" for n in names) + "]",
        "tasks:", *(f"  - {{name: t-{n}, client: {n}, source: src/{n}}}" for n in names),
        "events:", *(f"  - {{name: e-{n}, task: t-{n}, level: FULL, media_pool: fast}}"
                     for n in names),
    ]) + "\n"


@dataclass
class Broker:
    """The numbers of a broker's INFO that the bench compares over time."""

    connections: int
    commands: int
    net_bytes: int
    cpu_s: float
    memory: int
    at: float

    @classmethod
    def read(cls, client: Any) -> Broker:
        info = client.info("everything")
        return cls(int(info["connected_clients"]), int(info["total_commands_processed"]),
                   int(info["total_net_input_bytes"]) + int(info["total_net_output_bytes"]),
                   float(info["used_cpu_sys"]) + float(info["used_cpu_user"]),
                   int(info["used_memory"]), time.monotonic())


def own_connections(client: Any, pids: list[int]) -> dict[str, tuple[int, int]]:
    """The broker's connections that processes ``pids`` hold (by address): the commands
    (a script counts with the commands it ran, as the broker counts) and bytes of each."""
    import psutil  # type: ignore[import-untyped]

    port = int(client.connection_pool.connection_kwargs["port"])
    mine = {f"{c.laddr.ip}:{c.laddr.port}" for pid in pids
            for c in psutil.Process(pid).net_connections(kind="tcp")
            if c.raddr and c.raddr.port == port}
    return {c["addr"]: (int(c["tot-cmds"]), int(c["tot-net-in"]) + int(c["tot-net-out"]))
            for c in client.client_list() if c["addr"] in mine}


def over(client: Any, seconds: float, pids: list[int] | None = None) -> dict[str, float]:
    """The broker over ``seconds``: connections at the end, and rates; with ``pids``, also
    what their own connections did, per process (``own_*``)."""
    first = Broker.read(client)
    own_first = own_connections(client, pids or [])
    time.sleep(seconds)
    own_last = own_connections(client, pids or [])
    last = Broker.read(client)
    span = last.at - first.at
    measured = {"connections": last.connections,
                "commands_s": (last.commands - first.commands - 4) / span,  # our own reads
                "bytes_s": (last.net_bytes - first.net_bytes) / span,
                "cpu": (last.cpu_s - first.cpu_s) / span, "memory": last.memory}
    if pids:
        done = [(now[0] - own_first.get(addr, (0, 0))[0], now[1] - own_first.get(addr, (0, 0))[1])
                for addr, now in own_last.items()]
        measured |= {"own_connections": len(own_last) / len(pids),
                     "own_commands_s": sum(d[0] for d in done) / span / len(pids),
                     "own_bytes_s": sum(d[1] for d in done) / span / len(pids)}
    return measured


def tree(pid: int) -> list[int]:
    """A process and every process under it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def tree_rss_mb(pid: int) -> float:
    """The resident memory of a process and every process under it, in MB."""
    total = 0
    for member in tree(pid):
        try:
            status = (Path("/proc") / str(member) / "status").read_text()
        except OSError:
            continue
        total += next((int(line.split()[1]) for line in status.splitlines()
                       if line.startswith("VmRSS:")), 0)
    return total / 1024


def cpu_s(pids: list[int]) -> float:
    """CPU seconds (user and system) the processes ``pids`` and those under them used."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for member in {m for pid in pids for m in tree(pid)}:
        try:
            fields = (Path("/proc") / str(member) / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def spawn(argv: list[str], env: dict[str, str], work: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, env=env, cwd=work, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def wait_until(probe: Any, what: str, limit_s: float = 600) -> float:
    start = time.monotonic()
    while not probe():
        if time.monotonic() - start > limit_s:
            sys.exit(f"bench: gave up waiting for {what}")
        time.sleep(0.2)
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--idle-s", type=float, default=60.0)
    parser.add_argument("--bare", type=int, default=10,
                        help="bare Celery workers of each kind for the baseline")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/backstop-fleet-bench"))
    args = parser.parse_args()
    report(measure(args), args)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    with scratch(args.workdir) as work:
        return measure_in(args, work)


def measure_in(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import redis

    from backstop.orchestration.broker import EmbeddedBroker, free_port

    for i in range(args.clients):
        (work / "src" / f"c{i:03}").mkdir(parents=True)
        (work / "src" / f"c{i:03}" / "f.txt").write_text(f"client {i}\n" * 100)
    (work / "backstop.yaml").write_text(config_text(args.clients, free_port("127.0.0.2")))
    broker = EmbeddedBroker(work / "broker", persistent=False)
    url = broker.start()
    env = dict(os.environ, BACKSTOP_BROKER_URL=url, BACKSTOP_DATA_TOKEN=TOKEN)
    cli = [sys.executable, "-m", "backstop.orchestration.cli"]
    processes = [spawn([*cli, "serve", "--rds", "local", "-c", "backstop.yaml"], env, work),
                 spawn([*cli, "worker", "-c", "backstop.yaml", "--control", "--rds", "local",
                        "--concurrency", "2", "--loglevel", "WARNING"], env, work)]
    client = redis.Redis.from_url(url)
    try:
        return phases(args, work, client, processes, cli, env)
    finally:
        stop(processes)
        broker.stop()


def phases(args: argparse.Namespace, work: Path, client: Any,
           processes: list[subprocess.Popen[bytes]], cli: list[str], env: dict[str, str]
           ) -> dict[str, Any]:
    from backstop.orchestration.heartbeat import live_workers

    wait_until(lambda: any(w.rds for w in live_workers(client)), "the control+RDS worker")
    time.sleep(5)
    print(f"idle, control+RDS worker alone, {args.idle_s:.0f} s ...", file=sys.stderr)
    r: dict[str, Any] = {"base": over(client, args.idle_s)}
    names = [f"c{i:03}" for i in range(args.clients)]
    print(f"starting {args.clients} client workers ...", file=sys.stderr)
    started = time.monotonic()
    clients = [spawn([*cli, "worker", "-c", "backstop.yaml", "--client", name,
                      "--loglevel", "WARNING"], env, work) for name in names]
    processes += clients
    wait_until(lambda: len({c for w in live_workers(client) for c in w.clients}) == len(names),
               "every client worker's heartbeat")
    r["start_s"] = time.monotonic() - started
    time.sleep(10)  # start-up traffic over
    print(f"idle, with {args.clients} client workers, {args.idle_s:.0f} s ...", file=sys.stderr)
    r["fleet"] = over(client, args.idle_s, [p.pid for p in clients])
    r["rss_mb"] = sorted(tree_rss_mb(p.pid) for p in clients)
    # the first backup of each worker (cold: its data path set up on first use), then
    # the steady state of a fleet that has run before (warm)
    roles = {"client workers": [p.pid for p in clients],
             "control+RDS worker": [processes[1].pid], "data service": [processes[0].pid]}
    r["wave"] = wave(work, client, names, env["BACKSTOP_BROKER_URL"], "cold", 1, roles)
    time.sleep(5)
    r["warm_wave"] = wave(work, client, names, env["BACKSTOP_BROKER_URL"], "warm", 2, roles)
    time.sleep(15)  # the wave's connections let go
    print(f"idle after the wave, {args.idle_s:.0f} s ...", file=sys.stderr)
    r["after"] = over(client, args.idle_s, [p.pid for p in clients])
    r["after_rss_mb"] = sorted(tree_rss_mb(p.pid) for p in clients)
    stop(clients)
    for kind in ("defaults", "lean"):
        r[f"bare_{kind}"] = bare(work, client, env, args, kind)
    return r


BARE_APP = """
import os
from celery import Celery
app = Celery("bare", broker=os.environ["BACKSTOP_BROKER_URL"])
if os.environ["BARE_KIND"] == "lean":
    app.conf.update(worker_enable_remote_control=False, worker_send_task_events=False,
                    broker_pool_limit=0, broker_transport_options={"polling_interval": 10})

@app.task
def noop():
    return None
"""


def bare(work: Path, client: Any, env: dict[str, str], args: argparse.Namespace,
         kind: str) -> dict[str, Any]:
    """``args.bare`` workers of a bare Celery app, idle: the baseline."""
    (work / "bareapp.py").write_text(BARE_APP)
    flags = (["-P", "threads", "--without-gossip", "--without-mingle", "--without-heartbeat"]
             if kind == "lean" else [])
    before = Broker.read(client).connections
    workers = [spawn([sys.executable, "-m", "celery", "-A", "bareapp", "worker", "-Q",
                      f"bare{i}", "-n", f"bare{i}@%h", "-l", "WARNING", *flags],
                     dict(env, BARE_KIND=kind, PYTHONPATH=str(work)), work)
               for i in range(args.bare)]
    print(f"{args.bare} bare Celery workers ({kind}) ...", file=sys.stderr)
    wait_until(lambda: Broker.read(client).connections >= before + args.bare, "bare workers")
    time.sleep(15)
    measured: dict[str, Any] = dict(over(client, args.idle_s, [p.pid for p in workers]))
    measured["rss_mb"] = sorted(tree_rss_mb(p.pid) for p in workers)
    stop(workers)
    time.sleep(3)
    return measured


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wave(work: Path, client: Any, names: list[str], url: str, label: str,
         waves: int, roles: dict[str, list[int]]) -> dict[str, Any]:
    """N occurrences at once, one per client; settled, counted and checked (``waves``: how
    many savesets each task has after it). Its time runs from the first message sent to
    the last run's end, as the ledger recorded it."""
    from backstop.constants import CONTROL_QUEUE
    from backstop.orchestration.app import create_app
    from backstop.orchestration.catalog import RedisCatalog
    from backstop.orchestration.ledger import Ledger
    from backstop.settings import load_settings

    settings = load_settings(str(work / "backstop.yaml"), {})
    app = create_app(settings, url)
    ledger = Ledger(client)
    occurrences = [f"{label}-{name}" for name in names]
    print(f"a wave of {len(names)} client backups ({label}) ...", file=sys.stderr)
    before = Broker.read(client)
    cpu_before = {role: cpu_s(pids) for role, pids in roles.items()}
    sent = datetime.now(UTC)
    for occurrence, name in zip(occurrences, names, strict=True):
        app.send("backstop.dispatch", [occurrence, f"e-{name}", "adhoc"], CONTROL_QUEUE,
                 occurrence)

    def settled() -> bool:
        return all(getattr(ledger.occurrence(o), "state", "open") in ("succeeded", "failed")
                   for o in occurrences)

    wait_until(settled, "the wave to settle")
    after = Broker.read(client)
    cpu = {role: cpu_s(pids) - cpu_before[role] for role, pids in roles.items()}
    runs = {o: ledger.runs_of(o) for o in occurrences}
    catalog = RedisCatalog(client)
    savesets = {s.task: 0 for s in catalog.all()}
    for saveset in catalog.all():
        savesets[saveset.task] += 1
    seconds = (max(r.finished_at for rs in runs.values() for r in rs if r.finished_at)
               - sent).total_seconds()
    commands = after.commands - before.commands
    return {
        "seconds": seconds, "per_s": len(names) / seconds,
        "commands_per_occurrence": commands / len(names),
        "broker_cpu_s": after.cpu_s - before.cpu_s,
        "cpu_ms_per_occurrence": {**{role: v / len(names) * 1000 for role, v in cpu.items()},
                                  "broker": (after.cpu_s - before.cpu_s) / len(names) * 1000},
        "cpu_per_command_us": (after.cpu_s - before.cpu_s) / commands * 1e6,
        "succeeded": sum(1 for r in runs.values()
                         if len(r) == 1 and r[0].state.value == "succeeded"),
        "lost_or_duplicated": sorted(o for o, r in runs.items() if len(r) != 1)
        + sorted(t for t, n in savesets.items() if n != waves),
    }


def per_worker(measured: dict[str, float], base: dict[str, float], n: int
               ) -> dict[str, float]:
    """What each of ``n`` workers added to the broker's idle numbers over ``base``."""
    return {"connections": (measured["connections"] - base["connections"]) / n,
            "commands_s": (measured["commands_s"] - base["commands_s"]) / n,
            "bytes_s": (measured["bytes_s"] - base["bytes_s"]) / n,
            "memory": (measured["memory"] - base["memory"]) / n,
            **{k: v for k, v in measured.items() if k.startswith("own_")}}


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def report(r: dict[str, Any], args: argparse.Namespace) -> None:
    n, base, wave_ = args.clients, r["base"], r["wave"]
    lean = per_worker(r["fleet"], base, n)
    after = per_worker(r["after"], base, n)
    rows = [("Backstop lean client worker, idle", lean, median(r["rss_mb"])),
            ("  the same, after a backup each", after, median(r["after_rss_mb"]))]
    for kind, label in (("defaults", "bare Celery worker, its defaults (prefork)"),
                        ("lean", "bare Celery worker, the same switches")):
        bare_ = r[f"bare_{kind}"]
        rows.append((label, per_worker(bare_, base, args.bare), median(bare_["rss_mb"])))
    print(f"\n{n} client workers ({args.bare} bare Celery workers of each kind) on one embedded "
          f"Valkey; {os.cpu_count()} CPUs; idle windows of {args.idle_s:.0f} s; started in "
          f"{r['start_s']:.0f} s")
    print("per idle worker: the broker's numbers with the workers less without them, and "
          "(own) what the workers' own connections did")
    print(f"{'':<44} {'conns':>6} {'cmd/s':>7} {'bytes/s':>8} {'own conns':>9} "
          f"{'own cmd/s':>9} {'own B/s':>8} {'RSS MB':>7}")
    for label, w, rss in rows:
        print(f"{label:<44} {w['connections']:>6.2f} {w['commands_s']:>7.3f} "
              f"{w['bytes_s']:>8.0f} {w['own_connections']:>9.2f} {w['own_commands_s']:>9.3f} "
              f"{w['own_bytes_s']:>8.0f} {rss:>7.1f}")
    defaults, same = rows[2][1], rows[3][1]

    def ratio(ours: float, theirs: float) -> str:
        return f"{ours / theirs:.2f}x" if theirs else "n/a"

    print(f"Backstop lean against bare Celery's defaults: connections "
          f"{ratio(lean['own_connections'], defaults['own_connections'])}, commands/s "
          f"{ratio(lean['own_commands_s'], defaults['own_commands_s'])}, RSS "
          f"{ratio(rows[0][2], rows[2][2])}; against bare Celery with the same switches: "
          f"connections {ratio(lean['own_connections'], same['own_connections'])}, commands/s "
          f"{ratio(lean['own_commands_s'], same['own_commands_s'])}, RSS "
          f"{ratio(rows[0][2], rows[3][2])}")
    # a client worker's own numbers, the worse of idle and after a backup
    own = {k: max(lean[f"own_{k}"], after[f"own_{k}"])
           for k in ("connections", "commands_s", "bytes_s")}
    worst_rss = max(rows[0][2], rows[1][2])
    print(f"  targets: <= 3 connections ({'met' if own['connections'] <= 3 else 'NOT met'}), "
          f"<= 0.2 commands/s ({'met' if own['commands_s'] <= 0.2 else 'NOT met'}), "
          f"<= 60 MB RSS ({'met' if worst_rss <= 60 else f'NOT met, by {worst_rss - 60:.0f} MB'})")
    # the rest of the fleet (the control+RDS worker, once it has run a wave) and the broker's
    # memory per client (its connections' buffers, its heartbeat)
    rest = {"connections": r["after"]["connections"] - n * after["own_connections"],
            "commands_s": r["after"]["commands_s"] - n * after["own_commands_s"]}
    memory_per_client = after["memory"]
    print(f"the rest of the fleet (control+RDS worker): {rest['connections']:.0f} connections, "
          f"{rest['commands_s']:.1f} commands/s; broker memory per client "
          f"{memory_per_client / 1024:.0f} KiB")
    cmd_cost_s = wave_["cpu_per_command_us"] / 1e6
    core = 1 / cmd_cost_s  # commands/s one core of this broker sustains, as measured
    for label, w in (("cold", wave_), ("warm", r["warm_wave"])):
        print(f"wave of {n} ({label}): {w['seconds']:.2f} s, {w['per_s']:.1f} occurrences/s "
              f"(target >= 49: {'met' if w['per_s'] >= 49 else 'NOT met'}), "
              f"{w['commands_per_occurrence']:.0f} broker commands per occurrence, broker CPU "
              f"{w['broker_cpu_s']:.2f} s ({w['cpu_per_command_us']:.1f} µs/command); "
              f"{w['succeeded']}/{n} succeeded once; lost or duplicated: "
              f"{w['lost_or_duplicated'] or 'none'}")
        print("  CPU ms per occurrence: " + ", ".join(
            f"{role} {ms:.1f}" for role, ms in w["cpu_ms_per_occurrence"].items()))
    print(f"one core of this broker: {core:,.0f} commands/s (the cold wave's CPU per command)")
    print(f"\n{'clients':>9} {'connections':>12} {'idle cmd/s':>11} {'idle CPU':>9} "
          f"{'broker MB':>10}  limits passed")
    for scale in SCALES:
        connections = rest["connections"] + own["connections"] * scale
        commands = rest["commands_s"] + own["commands_s"] * scale
        cpu = commands * cmd_cost_s
        memory = (base["memory"] + memory_per_client * scale) / 1e6
        limits = [name for name, hit in (("maxclients 10,000", connections > MAXCLIENTS),
                                         ("50,000 connections", connections > 50_000),
                                         ("one core", cpu > 1.0)) if hit]
        print(f"{scale:>9,} {connections:>12,.0f} {commands:>11,.0f} {cpu:>8.1%} "
              f"{memory:>10,.0f}  {', '.join(limits) or '-'}")
    per_conn, per_cmd = own["connections"], own["commands_s"]
    by_connections = (MAXCLIENTS - rest["connections"]) / per_conn if per_conn else float("inf")
    by_cpu = (core - rest["commands_s"]) / per_cmd if per_cmd > 0 else float("inf")
    print(f"\nlimits: maxclients 10,000 at {by_connections:,.0f} idle clients (it can be "
          f"raised: a client costs the broker {memory_per_client / 1024:.0f} KiB), one core of "
          f"commands at {by_cpu:,.0f}; the first hit is "
          f"{'maxclients' if by_connections < by_cpu else 'one core of commands'}")
    ok = (rest["connections"] + per_conn * 10_000 < 50_000
          and (rest["commands_s"] + per_cmd * 10_000) * cmd_cost_s < 0.05)
    print(f"10,000 idle clients on one Valkey (connections < 50,000, idle CPU < 5 %): "
          f"{'met' if ok else 'NOT met'}")
    print(json.dumps({k: v for k, v in r.items() if "rss" not in k}, default=str),
          file=sys.stderr)


if __name__ == "__main__":
    main()
