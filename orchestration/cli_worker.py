"""``backstop worker``, in a module of its own: a worker imports only what it runs (a
lean client worker's memory is mostly the code it has loaded, docs/scale.md)."""

from __future__ import annotations

import os
from typing import Any

import click
from celery.utils.log import mlevel
from celery.utils.nodenames import default_nodename, host_format

from backstop.config_refs import did_you_mean
from backstop.constants import CONTROL_QUEUE, NOTIFY_QUEUE, client_queue, rds_queue
from backstop.orchestration.app import create_app
from backstop.orchestration.broker import broker_url
from backstop.orchestration.celery_app import make_lean
from backstop.orchestration.cli_common import config_option, settings_from
from backstop.settings import Settings
from backstop.workers.engine import create_missing_stores, drop_abandoned


def check_names(names: tuple[str, ...], known: list[str], what: str, hint: str) -> list[str]:
    """``names`` if each is ``known``, or every known one when none is given."""
    for name in names:
        if name not in known:
            raise click.BadParameter(f"unknown {what} {name!r}{did_you_mean(name, known)}",
                                     param_hint=hint)
    return list(names) or known


def check_rds_names(settings: Settings, names: tuple[str, ...]) -> list[str]:
    return check_names(names, [r.name for r in settings.config.rds], "RDS", "--rds")


def check_client_names(settings: Settings, names: tuple[str, ...]) -> list[str]:
    return check_names(names, [c.name for c in settings.config.clients], "client", "--client")


@click.command()
@config_option
@click.option("--rds", "rds", multiple=True, metavar="NAME", help="Serve this RDS (repeatable).")
@click.option("--client", "clients", multiple=True, metavar="NAME",
              help="Back up this client's tasks, read on this host (repeatable).")
@click.option("--control", is_flag=True, help="Run the control plane (dispatch, failover, ...).")
@click.option("--concurrency", type=click.IntRange(min=1), default=None,
              help="Backups (or control tasks) run at once; default: number of CPUs.")
@click.option("--name", default=None, help="Node name; default <role>.<pid>@<host>.")
@click.option("--events", is_flag=True,
              help="Send task events for Flower from a client-only worker too (they are on "
                   "for every other worker).")
@click.option("--loglevel", default="INFO", show_default=True)
@click.pass_context
def worker(ctx: click.Context, config_file: str | None, rds: tuple[str, ...],
           clients: tuple[str, ...], control: bool, concurrency: int | None, name: str | None,
           events: bool, loglevel: str) -> None:
    """One worker of a fleet: serves the given RDS, clients and/or the control plane.

    A worker that serves clients only is lean: one process, three broker connections and a
    command every few seconds when idle, no task events unless --events."""
    settings = settings_from(ctx, config_file)
    if not rds and not clients and not control:
        raise click.UsageError("say what this worker serves: --rds NAME, --client NAME "
                               "(repeatable) and/or --control")
    if rds:
        check_rds_names(settings, rds)
        for store in create_missing_stores(settings, list(rds)):
            click.echo(f"created data store {store.name} at {store.root}", err=True)
        drop_abandoned(settings, list(rds))
    if clients:
        check_client_names(settings, clients)
    app = create_app(settings, broker_url(settings))
    queues = ([CONTROL_QUEUE, NOTIFY_QUEUE] if control else []) + [rds_queue(r) for r in rds]
    queues += [client_queue(c) for c in clients]
    role = "+".join((["control"] if control else []) + [f"rds-{r}" for r in rds]
                    + [f"client-{c}" for c in clients])
    # Started as `celery worker` starts it, without Celery's command line: that one loads
    # every plugin command installed (Flower's, a REPL's), 20 MB a worker would carry.
    options: dict[str, Any] = {"without_gossip": True}
    if not rds and not control:
        make_lean(app)
        options |= {"without_mingle": True, "without_heartbeat": True}
        if events:
            app.conf.worker_send_task_events = True
    if concurrency:
        options["concurrency"] = concurrency
    node = app.Worker(hostname=host_format(default_nodename(name or f"{role}.{os.getpid()}@%h")),
                      queues=queues, loglevel=mlevel(loglevel), **options)
    node.start()
    ctx.exit(node.exitcode or 0)
