"""``backstop run`` (an ad-hoc occurrence, through the same path as the beat) and ``runs``."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import click
from rich.console import Console

from backstop.config import Level
from backstop.config_refs import did_you_mean
from backstop.errors import Reason
from backstop.orchestration.broker import broker_url
from backstop.orchestration.cli_common import (
    EXIT_FAILED,
    EXIT_USAGE,
    Since,
    config_option,
    json_option,
    print_json,
    settings_from,
)
from backstop.orchestration.ledger import Ledger, matches
from backstop.orchestration.status import connect
from backstop.orchestration.tables import Column, print_table
from backstop.runs import OccurrenceState, Run, RunState, Trigger
from backstop.units import format_size

POLL_S = 0.2


wait_options = [
    click.option("--wait", is_flag=True, help="Wait until the occurrence has ended."),
    click.option("--timeout", "timeout_s", type=click.FloatRange(min=0), default=None,
                 help="With --wait: give up after this many seconds (exit 1)."),
]


@click.command("run")
@config_option
@click.argument("event")
@click.option("--level", type=click.Choice([level.value for level in Level]), default=None,
              help="Run at this level instead of the event's.")
@click.option("--enforce-full/--no-enforce-full", default=None,
              help="Override the event's Enforce FULL.")
@wait_options[0]
@wait_options[1]
@json_option
@click.pass_context
def run(ctx: click.Context, config_file: str | None, event: str, level: str | None,
        enforce_full: bool | None, wait: bool, timeout_s: float | None, as_json: bool) -> None:
    """Start an occurrence of EVENT now; with --wait, exit 0 iff it succeeded."""
    start(ctx, config_file, event, Level(level) if level else None, enforce_full, None,
          wait, timeout_s, as_json)


@click.command("drill")
@config_option
@click.argument("event")
@click.option("--reason", required=True, type=click.Choice([r.value for r in Reason]),
              help="The storage unavailability to act out.")
@wait_options[0]
@wait_options[1]
@json_option
@click.pass_context
def drill(ctx: click.Context, config_file: str | None, event: str, reason: str, wait: bool,
          timeout_s: float | None, as_json: bool) -> None:
    """A failover drill: an occurrence of EVENT whose first run ends StorageUnavailable
    (REASON) before writing, so that the real failover path runs; with --wait, exit 0 iff
    it succeeded."""
    start(ctx, config_file, event, None, None, Reason(reason), wait, timeout_s, as_json)


def start(ctx: click.Context, config_file: str | None, event: str, level: Level | None,
          enforce_full: bool | None, drill_reason: Reason | None, wait: bool,
          timeout_s: float | None, as_json: bool) -> None:
    """Start an occurrence (``run``, ``drill``), follow it and say how it went."""
    from backstop.orchestration.app import create_app  # Celery: only for the commands that send
    from backstop.orchestration.control import start_adhoc
    from backstop.orchestration.heartbeat import live_workers
    from backstop.orchestration.replicas import Replicas

    settings = settings_from(ctx, config_file)
    found = settings.config.events_by_name.get(event)
    if found is None:
        names = list(settings.config.events_by_name)
        raise click.BadParameter(f"unknown event {event!r}{did_you_mean(event, names)}",
                                 param_hint="EVENT")
    if drill_reason is not None and found.kind != "backup":
        raise click.BadParameter(f"event {event!r} is a {found.kind} event: only a backup "
                                 "event fails over", param_hint="EVENT")
    url = broker_url(settings)
    client = connect(settings, url)
    if not any(w.control for w in live_workers(client)):
        click.echo("backstop: no live control worker to start it (run `backstop up`, or "
                   "`backstop worker --control`)", err=True)
        ctx.exit(EXIT_USAGE)
    app = create_app(settings, url)
    occurrence = start_adhoc(app.send, event, level, enforce_full, drill_reason)
    # accepted: on a replica too, before it is reported (SPEC section 13)
    Replicas(client, settings.config.broker_wait_ms).wait(f"start {occurrence}")
    ledger = Ledger(client)
    state = follow(ledger, occurrence, wait, timeout_s, quiet=as_json)
    runs = ledger.runs_of(occurrence)
    succeeded = state == OccurrenceState.SUCCEEDED
    if as_json:
        print_json({"occurrence": occurrence, "runs": [r.to_json() for r in runs],
                    "succeeded": succeeded})
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
        state = found.state if found else "sent"
        if not quiet:
            for r in ledger.runs_of(occurrence):
                if (r.run_id, r.state) not in shown:
                    shown.add((r.run_id, r.state))
                    click.echo(f"  run {r.run_id} ({r.event}, {r.trigger}): {r.state}",
                               err=True)
        if (found and not wait) or state not in ("sent", OccurrenceState.OPEN):
            return str(state)
        if deadline is not None and time.monotonic() > deadline:
            click.echo(f"backstop: gave up waiting after {timeout_s:g}s; the occurrence goes "
                       "on", err=True)
            return str(state)
        time.sleep(POLL_S)


@click.command("runs")
@config_option
@click.option("--event", default=None, help="Runs that used or were triggered by EVENT.")
@click.option("--task", default=None, help="Runs of TASK.")
@click.option("--state", type=click.Choice([s.value for s in RunState]), default=None,
              help="Runs in STATE.")
@click.option("--occurrence", default=None)
@click.option("--since", type=Since(), default=None,
              help="Runs queued since then: a duration back from now (24h) or an ISO time.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@json_option
@click.pass_context
def runs(ctx: click.Context, config_file: str | None, event: str | None, task: str | None,
         state: str | None, occurrence: str | None, since: datetime | None, limit: int,
         as_json: bool) -> None:
    """The run ledger, newest first."""
    settings = settings_from(ctx, config_file)
    ledger = Ledger(connect(settings), settings.config.history)
    wanted = RunState(state) if state else None
    if occurrence:
        found = [r for r in reversed(ledger.runs_of(occurrence))
                 if matches(r, event, task, wanted, since)][:limit]
    else:
        found = ledger.query(event=event, task=task, state=wanted, since=since, limit=limit)
    if as_json:
        print_json([r.to_json() for r in found])
    else:
        print_runs(found)


def print_runs(found: list[Run], console: Console | None = None) -> None:
    """The runs, one row each: an event's origin, a state's reason and a drill go on
    further lines of their row; ``--json`` has every field."""
    print_table(RUN_COLUMNS, [run_row(r) for r in found], console=console)


RUN_COLUMNS = (Column("queued (UTC)"), Column("run", whole=True), Column("event"),
               Column("state"), Column("level"), Column("size", right=True, drop=1))


def run_row(r: Run) -> tuple[str, ...]:
    event = r.event
    if r.origin_event != r.event:
        event += f"\n(for {r.origin_event})"
    if r.trigger not in (Trigger.SCHEDULE, Trigger.FAILOVER):
        event += f" ({r.trigger})"
    state = str(r.state) + (" (drill)" if r.drill else "")
    if r.error is not None:
        state += f"\n{r.error.reason or r.error.kind}"
    if r.progress is not None and r.state is RunState.RUNNING:
        state += f"\n{r.progress.files}/{r.progress.files_total} files"
    level = str(r.level or "-")
    if r.effective_level and r.effective_level != r.level:
        level += f">{r.effective_level}"
    return (r.queued_at.astimezone(UTC).strftime("%m-%d %H:%M"), r.run_id, event, state,
            level, format_size(r.bytes) if r.bytes is not None else "-")


COMMANDS = [run, drill, runs]
