"""The ``backstop`` command line (SPEC section 7).

Exit codes: 0 success; 1 the operation ran and failed; 2 bad usage, bad config, unknown
names, nothing reachable. Settings are built here, once, and passed down.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from backstop.config import SECTIONS, Config
from backstop.config_warnings import failover_warnings
from backstop.errors import ConfigError
from backstop.orchestration.cli_common import (
    EXIT_USAGE,
    BackstopGroup,
    config_option,
    json_option,
    print_json,
    settings_from,
)
from backstop.orchestration.config_reference import reference
from backstop.orchestration.status import connect, fleet_status


@click.group(cls=BackstopGroup, context_settings={"help_option_names": ["-h", "--help"]})
@config_option
@click.version_option(package_name="backstop-backup")
@click.pass_context
def main(ctx: click.Context, config_file: str | None) -> None:
    """Backstop: scheduled backups on a Celery worker fleet, with failover backup events."""
    ctx.obj = {"config_file": config_file}


@main.group("config")
def config_group() -> None:
    """Check the config file, or print its JSON Schema."""


@config_group.command("check")
@config_option
@click.option("--strict", is_flag=True, help="Exit 2 on warnings too.")
@json_option
@click.pass_context
def config_check(ctx: click.Context, config_file: str | None, strict: bool,
                 as_json: bool) -> None:
    """Validate the config; exit 2 listing every problem with its YAML path. Warns of
    failovers that cannot help (exit 0, or 2 with --strict)."""
    try:
        settings = settings_from(ctx, config_file)
    except ConfigError as exc:
        if as_json:
            print_json({"ok": False, "config": exc.source, "problems": exc.problems})
        else:
            click.echo(str(exc))
        ctx.exit(EXIT_USAGE)
    summary = config_summary(settings.config)
    warnings = failover_warnings(settings.config)
    if as_json:
        print_json({"ok": True, "config": str(settings.config_path), "counts": summary,
                    "warnings": warnings})
    else:
        counts = ", ".join(f"{n} {name.replace('_', ' ')}" for name, n in summary.items())
        click.echo(f"{settings.config_path}: OK ({counts})")
        for warning in warnings:
            click.echo(f"warning: {warning}")
    if strict and warnings:
        ctx.exit(EXIT_USAGE)


def config_summary(config: Config) -> dict[str, int]:
    counts = {section: len(getattr(config, section)) for section in SECTIONS}
    counts["events"] = len(config.events)
    counts["scheduled events"] = sum(1 for e in config.events if e.schedule)
    counts["failover events"] = sum(1 for e in config.events
                                    if getattr(e, "failover_event", None))
    return counts


@config_group.command("schema")
def config_schema() -> None:
    """Print the JSON Schema of the config file (for editors)."""
    schema = Config.model_json_schema(mode="validation")
    schema["title"] = "Backstop configuration"
    print_json(schema)


@config_group.command("reference")
def config_reference() -> None:
    """Print the configuration reference (Markdown: every key, its type and default)."""
    click.echo(reference(), nl=False)


@main.command()
@config_option
@json_option
@click.pass_context
def status(ctx: click.Context, config_file: str | None, as_json: bool) -> None:
    """Workers, RDS liveness, queue depths and the beat leader."""
    from backstop.workers.access import known_token
    from backstop.workers.remote import probe_interfaces

    settings = settings_from(ctx, config_file)
    client = connect(settings)
    report = fleet_status(client, settings.config,
                          probe_interfaces(settings, known_token(settings)))
    client.close()
    if as_json:
        print_json(report)
    else:
        print_status(report)


def print_status(report: dict[str, Any]) -> None:
    from rich.console import Console  # not in every command: a worker does without rich

    from backstop.orchestration.tables import Column, print_table

    console = Console()
    if report["config_mismatch"]:
        console.print(f"[bold red]warning:[/] not every process runs the same config: "
                      f"{', '.join(report['config_mismatch'])} differ from the others "
                      "(see config hash); restart them with the fleet's config")
    roles = [(w["name"], ", ".join(w["rds"]) or "-", ", ".join(w["clients"]) or "-",
              "control" if w["control"] else "-", w["config_hash"] or "-")
             for w in report["workers"]]
    roles += [(b["name"], "-", "-", "beat" + (" (leader)" if b["leader"] else ""),
               b["config_hash"] or "-") for b in report["beats"]]
    print_table((Column("process", whole=True), Column("rds"), Column("clients"),
                 Column("role"), Column("config", drop=1)), roles, "Workers", console)
    interfaces = [(r["name"], "live" if r["live"] else "not served",
                   ", ".join(f"{i['name']} {i['address']}:{i['port']} "
                             + ("reachable" if i["reachable"] else "unreachable")
                             for i in r["interfaces"]) or "-") for r in report["rds"]]
    print_table((Column("rds", whole=True), Column("live"), Column("interfaces")),
                interfaces, "RDS", console)
    if report["clients"]:
        print_table((Column("client", whole=True), Column("live")),
                    [(c["name"], "live" if c["live"] else "no worker")
                     for c in report["clients"]], "Clients", console)
    print_table((Column("queue", whole=True), Column("depth", right=True)),
                [(q["name"], str(q["depth"])) for q in report["queues"]], "Queues", console)
    console.print(f"beat leader: {report['beat_leader'] or 'none'}")


BackstopGroup.lazy = {
    **{name: f"backstop.orchestration.cli_fleet:{name}"
       for name in ("up", "metrics", "serve", "beat", "flower")},
    "worker": "backstop.orchestration.cli_worker:worker",
    **{name: f"backstop.orchestration.cli_data:{name}"
       for name in ("savesets", "restore", "verify", "pools", "report", "purge", "ls",
                    "find", "diff")},
    "catalog": "backstop.orchestration.cli_data:catalog_group",
    "store": "backstop.orchestration.cli_data:store_group",
    "keys": "backstop.orchestration.cli_keys:keys_group",
    **{name: f"backstop.orchestration.cli_runs:{name}" for name in ("run", "drill", "runs")},
}


if __name__ == "__main__":
    sys.exit(main())
