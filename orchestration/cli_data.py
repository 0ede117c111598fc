"""Data commands: savesets, restore, verify, pools, purge, catalog rebuild, store init.

They work on the stores as this host sees them (run them where the stores are: the host of
``backstop up``, or the RDS host of a fleet) and on the fleet's catalog in Redis.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

from backstop.config_refs import did_you_mean
from backstop.constants import TASK_RESTORE, client_queue
from backstop.errors import BackstopError, StorageError
from backstop.model import Manifest, Saveset
from backstop.orchestration.app import create_app
from backstop.orchestration.broker import broker_url
from backstop.orchestration.catalog import RedisCatalog
from backstop.orchestration.cli_common import (
    EXIT_FAILED,
    EXIT_USAGE,
    Since,
    config_option,
    json_option,
    print_json,
    settings_from,
)
from backstop.orchestration.growth import POOLS_PERIOD, with_days_until_full
from backstop.orchestration.heartbeat import live_workers, served_rds
from backstop.orchestration.ledger import Ledger
from backstop.orchestration.report import fleet_report
from backstop.orchestration.status import connect
from backstop.orchestration.tables import Column, print_table
from backstop.settings import Settings
from backstop.units import format_size
from backstop.workers import browse
from backstop.workers import manifest as manifests
from backstop.workers.access import known_token
from backstop.workers.engine import store_of
from backstop.workers.jobs import Jobs
from backstop.workers.maintenance import pool_report, rebuild
from backstop.workers.maintenance import purge as run_purge
from backstop.workers.remote import reachable_stores
from backstop.workers.restore import Restorer, RestoreResult
from backstop.workers.sealing import Keyring
from backstop.workers.single import NotOneFile, copy_out, one_file


class Data:
    """What the data commands share: settings, the catalog, the stores."""
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client = connect(settings)
        self.catalog = RedisCatalog(self.client)
        self.stores = reachable_stores(settings, known_token(settings))
        self.keyring = Keyring(settings)

    def close(self) -> None:
        for store in self.stores.values():
            store.close()
        self.client.close()

    def saveset(self, saveset_id: str) -> Saveset:
        found = self.catalog.get(saveset_id)
        if found is None:
            known = [s.id for s in self.catalog.all()]
            raise click.BadParameter(f"unknown saveset {saveset_id!r}"
                                     f"{did_you_mean(saveset_id, known)}")
        return found


def data_from(ctx: click.Context, config_file: str | None) -> Data:
    data = Data(settings_from(ctx, config_file))
    ctx.call_on_close(data.close)
    return data


@contextmanager
def progress_bar(label: str, quiet: bool) -> Iterator[Callable[[int, int, int, int], None]]:
    """A progress bar on a terminal; nothing with --json or when output is not a terminal."""
    if quiet or not sys.stderr.isatty():
        yield lambda *_: None
        return
    with Progress(TextColumn(label), BarColumn(), DownloadColumn(binary_units=True),
                  transient=True,
                  console=Console(stderr=True)) as bar:
        task = bar.add_task(label, total=None)

        def update(files: int, done: int, total_files: int, total_bytes: int) -> None:
            bar.update(task, completed=done, total=total_bytes or None)

        yield update


@click.command("savesets")
@config_option
@click.option("--task", default=None)
@click.option("--pool", default=None)
@json_option
@click.pass_context
def savesets(ctx: click.Context, config_file: str | None, task: str | None, pool: str | None,
             as_json: bool) -> None:
    """The catalog, newest first."""
    data = data_from(ctx, config_file)
    found = [s for s in reversed(data.catalog.all(task)) if pool is None or s.pool == pool]
    if as_json:
        print_json([s.to_json() for s in found])
        return
    print_table(SAVESET_COLUMNS, [
        (s.id, s.level.value, s.pool, s.medium, s.created_at.strftime("%Y-%m-%d %H:%M"),
         str(s.files), format_size(s.bytes), s.based_on or "-") for s in found])


# The id says the task and when (task-YYYYMMDDTHHMMSSZ-xxxxxx): the other columns go first
# when a row does not fit.
SAVESET_COLUMNS = (Column("id", whole=True), Column("level"),
                   Column("pool", whole=True, drop=1), Column("medium", drop=3),
                   Column("created (UTC)", drop=2), Column("files", drop=4, right=True),
                   Column("size", right=True), Column("based on", whole=True, drop=5))


def manifest_of(data: Data, saveset: Saveset, under: str | None = None) -> Manifest:
    """A saveset's manifest (only the part at and under ``under``, if given): the catalog's
    copy where it keeps one, else from its store (checked against its recorded hash)."""
    raw = (data.catalog.manifest(saveset.id)
           or Restorer(data.catalog, data.stores, data.keyring).manifest_bytes(saveset))
    return manifests.decode(raw, saveset.manifest_names, (under or "").strip("/"))


@click.command("ls")
@config_option
@click.argument("saveset_id", metavar="SAVESET")
@click.argument("path", required=False)
@json_option
@click.pass_context
def ls(ctx: click.Context, config_file: str | None, saveset_id: str, path: str | None,
       as_json: bool) -> None:
    """Everything under PATH (default: all) as of SAVESET, from its manifest alone."""
    data = data_from(ctx, config_file)
    saveset = data.saveset(saveset_id)
    try:
        found = browse.ls(manifest_of(data, saveset, path), path)
    except browse.NotInSaveset:
        raise click.BadParameter(f"saveset {saveset.id} holds no path {path!r}",
                                 param_hint="PATH") from None
    if as_json:
        print_json(found)
        return
    rows = []
    for line in found:
        owner = f"{line['user'] or line['uid']}:{line['group'] or line['gid']}"
        name = line["path"] + (f" -> {line['target']}" if "target" in line else "")
        rows.append((line["type"], f"{line['mode']:04o}", owner, format_size(line["size"]),
                     line["mtime"][:16].replace("T", " "), name))
    print_table((Column("type"), Column("mode", drop=2), Column("owner", drop=1),
                 Column("size", right=True), Column("modified (UTC)", drop=3),
                 Column("path", whole=True)), rows)


@click.command("find")
@config_option
@click.argument("pattern")
@click.option("--task", default=None, help="Only savesets of TASK.")
@json_option
@click.pass_context
def find(ctx: click.Context, config_file: str | None, pattern: str, task: str | None,
         as_json: bool) -> None:
    """Paths matching a gitignore-style PATTERN in every saveset, newest first."""
    data = data_from(ctx, config_file)
    found = browse.find(pattern, ((s, manifest_of(data, s)) for s in data.catalog.all(task)))
    if as_json:
        print_json(found)
        return
    by_saveset: dict[str, list[dict[str, Any]]] = {}
    for line in found:
        by_saveset.setdefault(line["saveset"], []).append(line)
    for saveset_id, lines in by_saveset.items():
        created = lines[0]["created_at"][:16].replace("T", " ")
        print_table((Column("size", right=True), Column("path", whole=True)),
                    [(format_size(line["size"]), line["path"]) for line in lines],
                    title=f"{saveset_id} ({created} UTC)")


@click.command("diff")
@config_option
@click.argument("first", metavar="A")
@click.argument("second", metavar="B")
@json_option
@click.pass_context
def diff(ctx: click.Context, config_file: str | None, first: str, second: str,
         as_json: bool) -> None:
    """What changed from saveset A to saveset B (of one task): added, removed, changed."""
    data = data_from(ctx, config_file)
    a, b = data.saveset(first), data.saveset(second)
    if a.task != b.task:
        raise click.BadParameter(f"{a.id} is of task {a.task} and {b.id} of task {b.task}: "
                                 "compare two savesets of one task", param_hint="A B")
    found = browse.diff(manifest_of(data, a), manifest_of(data, b))
    if as_json:
        print_json(found)
        return
    for mark, key in (("+", "added"), ("-", "removed"), ("M", "changed")):
        for path in found[key]:
            click.echo(f"{mark} {path}")
    if not any(found.values()):
        click.echo(f"no changes from {a.id} to {b.id}", err=True)


@click.command("restore")
@config_option
@click.option("--saveset", "saveset_id", default=None, help="Restore this saveset.")
@click.option("--task", default=None, help="Restore the newest saveset of this task ...")
@click.option("--at", "at", default=None, metavar="ISO-TIME",
              help="... taken at or before this time.")
@click.option("--to", "target", default=None,
              type=click.Path(file_okay=False, path_type=Path))
@click.option("--client", default=None, metavar="NAME",
              help="Write the files on this client, by its worker (DIR is on the client).")
@click.option("--include", multiple=True, metavar="PATTERN",
              help="Only paths matching this gitignore-style pattern (repeatable; a directory "
                   "with its contents).")
@click.option("--stdout", "to_stdout", is_flag=True,
              help="Write the one file --include matches to standard output (no --to).")
@json_option
@click.pass_context
def restore(ctx: click.Context, config_file: str | None, saveset_id: str | None,
            task: str | None, at: str | None, target: Path | None, client: str | None,
            include: tuple[str, ...], to_stdout: bool, as_json: bool) -> None:
    """Rebuild the source as of a saveset, under DIR (never outside it); with --stdout, one
    file to standard output."""
    if (saveset_id is None) == (task is None):
        raise click.UsageError("give --saveset ID or --task T")
    if to_stdout == (target is not None) or (to_stdout and (not include or client)):
        raise click.UsageError("give --to DIR, or --stdout with --include PATTERN (and no "
                               "--client)")
    data = data_from(ctx, config_file)
    chosen = data.saveset(saveset_id) if saveset_id else newest(data.catalog, task or "", at)
    if to_stdout:
        restorer = Restorer(data.catalog, data.stores, data.keyring)
        try:
            entry = one_file(restorer, chosen, list(include))
        except NotOneFile as exc:
            click.echo(f"backstop: {exc}", err=True)
            ctx.exit(EXIT_USAGE)
        copy_out(restorer, chosen, entry, sys.stdout.buffer)
        return
    assert target is not None
    if client is not None:
        result = restore_on_client(data, client, chosen, target, list(include))
    else:
        with progress_bar(f"restoring {chosen.id}", as_json) as update:
            result = Restorer(data.catalog, data.stores, data.keyring,
                              Jobs.of(data.settings.config.backup_jobs)).restore(
                chosen, target.absolute(), update, include=list(include))
    if as_json:
        print_json(asdict(result))
    else:
        click.echo(f"restored {result.files} files ({format_size(result.bytes)}) of "
                   f"{result.saveset} to {result.target}")
        for warning in result.warnings:
            click.echo(f"warning: {warning}", err=True)
    for path in result.damaged:  # left out: their ciphertext did not authenticate
        click.echo(f"damaged, not restored: {path}", err=True)
    if result.damaged:
        ctx.exit(EXIT_FAILED)


def restore_on_client(data: Data, client: str, saveset: Saveset, target: Path,
                      include: list[str]) -> RestoreResult:
    """Have the worker of ``client`` restore ``saveset`` into ``target`` on that host."""
    known = [c.name for c in data.settings.config.clients]
    if client not in known:
        raise click.BadParameter(f"unknown client {client!r}{did_you_mean(client, known)}",
                                 param_hint="--client")
    if not any(client in w.clients for w in live_workers(data.client)):
        raise BackstopError(f"no live worker serves client {client}: start `backstop worker "
                            f"--client {client}` there")
    app = create_app(data.settings, broker_url(data.settings))
    sent = app.send_task(TASK_RESTORE, args=[saveset.id, str(target), client, include],
                         queue=client_queue(client),
                         argsrepr=f"saveset={saveset.id} client={client} to={target}")
    try:
        return RestoreResult(**sent.get(timeout=data.settings.config.backup_time_limit
                                        .total_seconds(), propagate=True))
    except Exception as exc:
        raise BackstopError(f"restore on client {client} failed: {exc}") from None
    finally:
        sent.forget()


def newest(catalog: RedisCatalog, task: str, at: str | None) -> Saveset:
    when = parse_time(at) if at else None
    candidates = [s for s in catalog.all(task) if when is None or s.created_at <= when]
    if not candidates:
        limit = f" taken at or before {at}" if at else ""
        raise click.BadParameter(f"no saveset of task {task!r}{limit}")
    return candidates[-1]


def parse_time(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"bad time {text!r}: expected ISO 8601, e.g. "
                                 "2026-11-24T22:00:00+01:00", param_hint="--at") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@click.command("verify")
@config_option
@click.argument("saveset_id", metavar="SAVESET")
@json_option
@click.pass_context
def verify(ctx: click.Context, config_file: str | None, saveset_id: str, as_json: bool) -> None:
    """Re-read a saveset and check every file's hash; exit 1 when anything is bad."""
    data = data_from(ctx, config_file)
    saveset = data.saveset(saveset_id)
    with progress_bar(f"verifying {saveset.id}", as_json) as update:
        result = Restorer(data.catalog, data.stores, data.keyring).verify(saveset, update)
    if as_json:
        print_json(asdict(result))
    else:
        state = "OK" if result.ok else f"BAD ({len(result.bad)}): " + ", ".join(result.bad[:10])
        click.echo(f"{result.saveset}: {result.files} files stored in it checked, archive "
                   f"and manifest against their recorded hashes: {state}")
        if saveset.needs:  # an INC/DIFF: the rest of its files are in the chain
            click.echo(f"its other files are kept in {', '.join(saveset.needs)}; "
                       "verify those to check the whole chain")
    if not result.ok:
        ctx.exit(EXIT_FAILED)


@click.command("pools")
@config_option
@json_option
@click.pass_context
def pools(ctx: click.Context, config_file: str | None, as_json: bool) -> None:
    """Each pool: store, RDS, availability, used/free bytes, days until full (at its growth
    of the last 24 hours), media."""
    data = data_from(ctx, config_file)
    served = served_rds(data.client)
    now = datetime.now(UTC)
    report = with_days_until_full(
        data.client, pool_report(data.settings.config, data.catalog, data.stores, now,
                                 lambda rds: rds in served), now - POOLS_PERIOD, now)
    if as_json:
        print_json(report)
        return
    rows = []
    for p in report:
        media, days = p["media"], p["days_until_full"]
        rows.append((p["name"], p["data_store"], p["rds"], p["availability"],
                     format_size(p["used_bytes"]), format_size(p["free_bytes"]),
                     "-" if days is None else f"{days:g} days",
                     f"{media['free']} of {media['count'] or '∞'}" if media else "-"))
    print_table((Column("pool", whole=True), Column("store", whole=True, drop=2),
                 Column("rds", whole=True, drop=1), Column("availability", whole=True),
                 Column("used", right=True), Column("free", right=True),
                 Column("full in", drop=3), Column("free media", drop=4)), rows)


@click.command("report")
@config_option
@click.option("--since", type=Since(), default="24h", show_default=True,
              help="The period's start: a duration back from now or an ISO time.")
@json_option
@click.pass_context
def report(ctx: click.Context, config_file: str | None, since: datetime,
           as_json: bool) -> None:
    """What happened since then: per task (occurrences, succeeded, failed over, failed, last
    success, bytes) and per pool (used, free, days until full at the period's growth)."""
    data = data_from(ctx, config_file)
    served = served_rds(data.client)
    now = datetime.now(UTC)
    pools_now = with_days_until_full(
        data.client, pool_report(data.settings.config, data.catalog, data.stores, now,
                                 lambda rds: rds in served), since, now)
    found = fleet_report(Ledger(data.client, data.settings.config.history),
                         data.settings.config, pools_now, since, now)
    if as_json:
        print_json(found)
        return
    click.echo(f"from {found['since'][:19]} to {found['until'][:19]} (UTC)")
    print_table((Column("task", whole=True), Column("occurrences", right=True),
                 Column("succeeded", right=True), Column("failed over", right=True),
                 Column("failed", right=True), Column("drills", right=True, drop=2),
                 Column("last success", drop=1), Column("size", right=True)),
                [(t["task"], str(t["occurrences"]), str(t["succeeded"]),
                  str(t["failed_over"]), str(t["failed"]), str(t["drills"]),
                  (t["last_success"] or "never")[:16].replace("T", " "),
                  format_size(t["bytes"])) for t in found["tasks"]], title="Tasks")
    print_table((Column("pool", whole=True), Column("used", right=True),
                 Column("free", right=True), Column("full in")),
                [(p["name"], format_size(p["used_bytes"]), format_size(p["free_bytes"]),
                  "-" if p["days_until_full"] is None else f"{p['days_until_full']:g} days")
                 for p in found["pools"]], title="Pools")


@click.command("purge")
@config_option
@click.option("--dry-run", is_flag=True, help="Only list what would be deleted.")
@json_option
@click.pass_context
def purge(ctx: click.Context, config_file: str | None, dry_run: bool, as_json: bool) -> None:
    """Delete savesets past retention, never one a retained saveset depends on."""
    data = data_from(ctx, config_file)
    result = run_purge(data.settings.config, data.catalog, data.stores, datetime.now(UTC),
                       dry_run)
    if as_json:
        print_json(asdict(result))
    else:
        verb = "would delete" if dry_run else "deleted"
        click.echo(f"{verb} {len(result.deleted)} savesets ({format_size(result.bytes)})")
        for skipped in result.skipped:
            click.echo(f"skipped {skipped['id']}: {skipped['error']}", err=True)
    if result.skipped:
        ctx.exit(EXIT_FAILED)


@click.group("catalog")
def catalog_group() -> None:
    """The saveset catalog."""


@catalog_group.command("rebuild")
@config_option
@json_option
@click.pass_context
def catalog_rebuild(ctx: click.Context, config_file: str | None, as_json: bool) -> None:
    """Recreate the catalog from the stores this host can read."""
    data = data_from(ctx, config_file)
    result = rebuild(data.catalog, data.stores)
    if as_json:
        print_json(asdict(result))
    else:
        click.echo(f"catalog rebuilt: {result.added} savesets, {result.removed} stale entries "
                   "removed")
        for store in result.stores:
            if "error" in store:
                click.echo(f"  {store['name']}: {store['error']}", err=True)


@click.group("store")
def store_group() -> None:
    """Data stores."""


@store_group.command("init")
@config_option
@click.argument("names", nargs=-1, required=True)
@click.pass_context
def store_init(ctx: click.Context, config_file: str | None, names: tuple[str, ...]) -> None:
    """Create data stores: their directory and store marker (an empty directory only), or
    their bucket (with object lock when the store asks for it) and marker."""
    settings = settings_from(ctx, config_file)
    known = {s.name: s for s in settings.config.data_stores}
    for name in names:
        if name not in known:
            raise click.BadParameter(f"unknown data store {name!r}{did_you_mean(name, known)}")
    for name in names:
        store = store_of(settings, known[name])
        try:
            store.init()
        except StorageError as exc:
            raise click.ClickException(str(exc)) from exc
        s3 = known[name].s3
        where = f"s3 bucket {s3.bucket} at {s3.endpoint}" if s3 else str(known[name].path)
        click.echo(f"data store {name}: ready at {where}")


COMMANDS = [savesets, restore, verify, pools, report, purge, catalog_group, store_group]
