"""``backstop run`` (an ad-hoc occurrence, through the same path as the beat) and ``runs``."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from orchestration.cli_common import (
    EXIT_FAILED,
    EXIT_USAGE,
    config_option,
    json_option,
    print_json,
    settings_from,
)
from orchestration.config import Level
from orchestration.config_refs import did_you_mean
from orchestration.ledger import Ledger
from orchestration.units import format_size

POLL_S = 0.2


def adhoc_occurrence(event: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"adhoc:{event}:{stamp}:{uuid.uuid4().hex[:6]}"


@click.command("run")
@config_option
@click.argument("event")
@click.option("--level", type=click.Choice([level.value for level in Level]), default=None,
              help="Run at this level instead of the event's.")
@click.option("--enforce-full/--no-enforce-full", default=None,
              help="Override the event's Enforce FULL.")
@click.option("--wait", is_flag=True, help="Wait until the occurrence has ended.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0), default=None,
              help="With --wait: give up after this many seconds (exit 1).")
@json_option
@click.pass_context
def run(ctx: click.Context, config_file: str | None, event: str, level: str | None,
        enforce_full: bool | None, wait: bool, timeout_s: float | None, as_json: bool) -> None:
    """Start an occurrence of EVENT now; with --wait, exit 0 iff it succeeded."""
    from orchestration.broker import broker_url
    from orchestration.status import connect
    from workers.app import create_app
    from workers.constants import CONTROL_QUEUE
    from workers.heartbeat import live_workers

    settings = settings_from(ctx, config_file)
    names = [e.name for e in settings.config.events]
    if event not in names:
        raise click.BadParameter(f"unknown event {event!r}{did_you_mean(event, names)}",
                                 param_hint="EVENT")
    url = broker_url(settings)
    client = connect(url)
    if not any(w.control for w in live_workers(client)):
        click.echo("backstop: no live control worker to start it (run `backstop up`, or "
                   "`backstop worker --control`)", err=True)
        ctx.exit(EXIT_USAGE)
    occurrence = adhoc_occurrence(event)
    app = create_app(settings, url)
    options = {"level": level, "enforce_full": enforce_full}
    app.send("backstop.dispatch", [occurrence, event, "adhoc"], CONTROL_QUEUE,
             f"event={event} occurrence={occurrence}", **options)
    ledger = Ledger(client)
    state = follow(ledger, occurrence, wait, timeout_s, quiet=as_json)
    runs = ledger.runs_of(occurrence)
    succeeded = state == "succeeded"
    if as_json:
        print_json({"occurrence": occurrence, "runs": runs, "succeeded": succeeded})
    else:
        click.echo(f"occurrence {occurrence}: {state}")
        print_runs(runs)
    if wait and not succeeded:
        ctx.exit(EXIT_FAILED)


def follow(ledger: Ledger, occurrence: str, wait: bool, timeout_s: float | None,
           quiet: bool) -> str:
    """The occurrence's state once it has started (or, with ``wait``, ended)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    shown: set[tuple[str, str]] = set()
    while True:
        found = ledger.occurrence(occurrence)
        state = found["state"] if found else "sent"
        if not quiet:
            for r in ledger.runs_of(occurrence):
                if (r["run_id"], r["state"]) not in shown:
                    shown.add((r["run_id"], r["state"]))
                    click.echo(f"  run {r['run_id']} ({r['event']}, {r['trigger']}): "
                               f"{r['state']}", err=True)
        if (found and not wait) or state not in ("sent", "open"):
            return str(state)
        if deadline is not None and time.monotonic() > deadline:
            click.echo(f"backstop: gave up waiting after {timeout_s:g}s; the occurrence goes "
                       "on", err=True)
            return str(state)
        time.sleep(POLL_S)


@click.command("runs")
@config_option
@click.option("--event", default=None, help="Runs that used or were triggered by EVENT.")
@click.option("--occurrence", default=None)
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@json_option
@click.pass_context
def runs(ctx: click.Context, config_file: str | None, event: str | None,
         occurrence: str | None, limit: int, as_json: bool) -> None:
    """The run ledger, newest first."""
    from orchestration.broker import broker_url
    from orchestration.status import connect

    settings = settings_from(ctx, config_file)
    ledger = Ledger(connect(broker_url(settings)))
    if occurrence:
        found = list(reversed(ledger.runs_of(occurrence)))[:limit]
    else:
        found = ledger.recent(event, limit)
    if as_json:
        print_json(found)
    else:
        print_runs(found)


def print_runs(found: list[dict[str, Any]]) -> None:
    table = Table("run", "occurrence", "event (origin)", "trigger", "state", "level",
                  "pool", "saveset", "size", "queued")
    for r in found:
        origin = f" ({r['origin_event']})" if r["origin_event"] != r["event"] else ""
        state = r["state"]
        if r.get("error"):
            state += f": {r['error'].get('reason') or r['error'].get('kind')}"
        if r.get("progress") and r["state"] == "running":
            state += f" {r['progress']['files']}/{r['progress']['files_total']} files"
        level = r.get("level") or "-"
        if r.get("effective_level") and r["effective_level"] != level:
            level += f"→{r['effective_level']}"
        table.add_row(r["run_id"], r["occurrence"], r["event"] + origin, r["trigger"], state,
                      level, r.get("media_pool") or "-", r.get("saveset") or "-",
                      format_size(r["bytes"]) if r.get("bytes") is not None else "-",
                      (r.get("queued_at") or "")[:19])
    Console().print(table)


COMMANDS = [run, runs]
