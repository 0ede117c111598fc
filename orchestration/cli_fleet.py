"""Fleet commands: ``up`` (all in one), ``worker``, ``beat`` and ``flower``."""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import sys

import click
from rich.logging import RichHandler

from core.config_refs import did_you_mean
from core.constants import CONTROL_QUEUE, rds_queue
from core.settings import Settings
from orchestration.app import create_app
from orchestration.beat import LeaderScheduler
from orchestration.broker import broker_url
from orchestration.cli_common import EXIT_USAGE, config_option, settings_from
from orchestration.supervisor import Supervisor
from workers.engine import create_missing_stores

DEFAULT_FLOWER_PORT = 5555


def check_rds_names(settings: Settings, names: tuple[str, ...]) -> list[str]:
    known = [r.name for r in settings.config.rds]
    for name in names:
        if name not in known:
            raise click.BadParameter(f"unknown RDS {name!r}{did_you_mean(name, known)}",
                                     param_hint="--rds")
    return list(names) or known


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@click.command()
@config_option
@click.option("--rds", "rds", multiple=True, metavar="NAME",
              help="Serve this RDS (repeatable; default: every RDS of the config).")
@click.option("--no-flower", is_flag=True, help="Do not start Flower.")
@click.option("--flower-port", type=click.IntRange(1, 65535), default=DEFAULT_FLOWER_PORT,
              show_default=True)
@click.pass_context
def up(ctx: click.Context, config_file: str | None, rds: tuple[str, ...], no_flower: bool,
       flower_port: int) -> None:
    """All in one: embedded broker, control worker, RDS workers, beat, Flower; Ctrl-C stops all."""
    settings = settings_from(ctx, config_file)
    served = check_rds_names(settings, rds)
    if not no_flower and not port_is_free(flower_port):
        raise click.BadParameter(f"port {flower_port} on 127.0.0.1 is in use; choose another "
                                 "or use --no-flower", param_hint="--flower-port")
    handler = RichHandler(show_path=False) if sys.stderr.isatty() else logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"
                                           if not sys.stderr.isatty() else "%(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    ctx.exit(Supervisor(settings, served, None if no_flower else flower_port).run())


@click.command()
@config_option
@click.option("--rds", "rds", multiple=True, metavar="NAME", help="Serve this RDS (repeatable).")
@click.option("--control", is_flag=True, help="Run the control plane (dispatch, failover, ...).")
@click.option("--concurrency", type=click.IntRange(min=1), default=None,
              help="Backups (or control tasks) run at once; default: number of CPUs.")
@click.option("--name", default=None, help="Node name; default <role>.<pid>@<host>.")
@click.option("--loglevel", default="INFO", show_default=True)
@click.pass_context
def worker(ctx: click.Context, config_file: str | None, rds: tuple[str, ...], control: bool,
           concurrency: int | None, name: str | None, loglevel: str) -> None:
    """One worker of a fleet: serves the given RDS and/or the control plane."""
    settings = settings_from(ctx, config_file)
    if not rds and not control:
        raise click.UsageError("say what this worker serves: --rds NAME (repeatable) "
                               "and/or --control")
    if rds:
        check_rds_names(settings, rds)
        for store in create_missing_stores(settings, list(rds)):
            click.echo(f"created data store {store.name} at {store.root}", err=True)
    app = create_app(settings, _broker(settings))
    queues = ([CONTROL_QUEUE] if control else []) + [rds_queue(r) for r in rds]
    role = "+".join((["control"] if control else []) + [f"rds-{r}" for r in rds])
    argv = ["worker", "-Q", ",".join(queues), "-n", name or f"{role}.{os.getpid()}@%h",
            "-l", loglevel, "--without-gossip"]
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    app.worker_main(argv)


@click.command()
@config_option
@click.option("--loglevel", default="INFO", show_default=True)
@click.pass_context
def beat(ctx: click.Context, config_file: str | None, loglevel: str) -> None:
    """The scheduler; run several for standby, only one schedules at a time."""
    settings = settings_from(ctx, config_file)
    app = create_app(settings, _broker(settings))
    app.Beat(scheduler=f"{LeaderScheduler.__module__}:{LeaderScheduler.__name__}",
             loglevel=loglevel).run()


@click.command()
@config_option
@click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_FLOWER_PORT,
              show_default=True)
@click.option("--address", default="127.0.0.1", show_default=True,
              help="Listen address; anything but loopback needs $FLOWER_BASIC_AUTH or "
                   "$FLOWER_AUTH.")
@click.pass_context
def flower(ctx: click.Context, config_file: str | None, port: int, address: str) -> None:
    """The Flower dashboard for this fleet."""
    if not is_loopback(address) and not (os.environ.get("FLOWER_BASIC_AUTH")
                                         or os.environ.get("FLOWER_AUTH")):
        click.echo(f"backstop: refusing to serve Flower on {address} without authentication; "
                   "set FLOWER_BASIC_AUTH=user:password (or FLOWER_AUTH) or use 127.0.0.1",
                   err=True)
        ctx.exit(EXIT_USAGE)
    settings = settings_from(ctx, config_file)
    app = create_app(settings, _broker(settings))
    app.start(["flower", f"--address={address}", f"--port={port}"])


def is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _broker(settings: Settings) -> str:

    return broker_url(settings)


COMMANDS = [up, worker, beat, flower]
