"""Fleet commands: ``up`` (all in one), ``worker``, ``beat`` and ``flower``."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading

import click
from rich.logging import RichHandler

from backstop.constants import (
    METRICS_ADDRESS,
    METRICS_PORT,
)
from backstop.errors import BackstopError
from backstop.orchestration.app import create_app
from backstop.orchestration.beat import LeaderScheduler
from backstop.orchestration.broker import broker_url
from backstop.orchestration.cli_common import EXIT_USAGE, config_option, settings_from
from backstop.orchestration.cli_worker import check_client_names, check_rds_names
from backstop.orchestration.exporter import serve_metrics
from backstop.orchestration.status import connect
from backstop.orchestration.supervisor import Supervisor, owning
from backstop.settings import Settings
from backstop.workers.access import known_token
from backstop.workers.engine import create_missing_stores
from backstop.workers.serve import is_loopback, serve_forever

DEFAULT_FLOWER_PORT = 5555


def port_is_free(port: int, address: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True


def listeners(settings: Settings, rds: list[str], flower_port: int | None,
              metrics_port: int | None) -> list[tuple[str, str, int, str]]:
    """(what, address, port, how to choose another) of every socket ``up`` will listen on."""
    found = [("Flower", "127.0.0.1", flower_port, "--flower-port N or --no-flower")
             if flower_port else None,
             ("metrics", "127.0.0.1", metrics_port, "--metrics-port N, or 0 for none")
             if metrics_port else None]
    for name in rds:
        for interface in settings.config.rds_named(name).interfaces:
            found.append((f"data service of RDS {name}, interface {interface.name}",
                          interface.address, settings.config.port_of(interface),
                          "the interface's port in the config"))
    return [item for item in found if item is not None]


def taken_ports(settings: Settings, rds: list[str], flower_port: int | None,
                metrics_port: int | None) -> list[str]:
    """A line for each socket of ``up`` that another process holds already."""
    return [f"{address}:{port} ({what}) is in use; choose another: {how}"
            for what, address, port, how in listeners(settings, rds, flower_port, metrics_port)
            if not port_is_free(port, address)]


@click.command()
@config_option
@click.option("--rds", "rds", multiple=True, metavar="NAME",
              help="Serve this RDS (repeatable; default: every RDS of the config).")
@click.option("--client", "clients", multiple=True, metavar="NAME",
              help="Run a worker for this client (repeatable; default: every client).")
@click.option("--no-flower", is_flag=True, help="Do not start Flower.")
@click.option("--flower-port", type=click.IntRange(1, 65535), default=DEFAULT_FLOWER_PORT,
              show_default=True)
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=METRICS_PORT,
              show_default=True, help="Serve Prometheus metrics on 127.0.0.1:N; 0: none.")
@click.pass_context
def up(ctx: click.Context, config_file: str | None, rds: tuple[str, ...],
       clients: tuple[str, ...], no_flower: bool, flower_port: int, metrics_port: int) -> None:
    """All in one: embedded broker, control worker, RDS workers and data services, client
    workers, beat, Flower, metrics; Ctrl-C stops all."""
    settings = settings_from(ctx, config_file)
    served = check_rds_names(settings, rds)
    for_clients = check_client_names(settings, clients)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    with owning(settings.state_dir):  # another up here: say so, not that its ports are taken
        pass
    taken = taken_ports(settings, served, None if no_flower else flower_port, metrics_port)
    for line in taken:  # all of them at once, before anything starts
        click.echo(f"backstop: {line}", err=True)
    if taken:
        ctx.exit(EXIT_USAGE)
    handler = RichHandler(show_path=False) if sys.stderr.isatty() else logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"
                                           if not sys.stderr.isatty() else "%(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    ctx.exit(Supervisor(settings, served, for_clients, None if no_flower else flower_port,
                        metrics_port or None).run())


@click.command()
@config_option
@click.option("--address", default=METRICS_ADDRESS, show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=METRICS_PORT, show_default=True)
@click.pass_context
def metrics(ctx: click.Context, config_file: str | None, address: str, port: int) -> None:
    """Prometheus exporter for the fleet: /metrics, computed from the broker."""
    settings = settings_from(ctx, config_file)
    client = connect(settings)
    try:
        serve_metrics(settings, client, known_token(settings), address, port)
    except OSError as exc:
        click.echo(f"backstop: cannot serve metrics on {address}:{port}: "
                   f"{exc.strerror or exc}", err=True)
        ctx.exit(EXIT_USAGE)
    click.echo(f"metrics on http://{address}:{port}/metrics", err=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # a clean stop exits 0, like every part
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


@click.command()
@config_option
@click.option("--rds", "rds", required=True, metavar="NAME",
              help="The RDS whose data stores to serve, on each of its interfaces.")
@click.pass_context
def serve(ctx: click.Context, config_file: str | None, rds: str) -> None:
    """The data service of an RDS: its stores, for clients, over HTTP(S) (SPEC section 9)."""
    settings = settings_from(ctx, config_file)
    check_rds_names(settings, (rds,))
    if not settings.config.rds_named(rds).interfaces:
        raise click.BadParameter(f"RDS {rds} has no interfaces to listen on", param_hint="--rds")
    for store in create_missing_stores(settings, [rds]):
        click.echo(f"created data store {store.name} at {store.root}", err=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        serve_forever(settings, rds)
    except OSError as exc:
        click.echo(f"backstop: cannot listen for RDS {rds}: {exc}", err=True)
        ctx.exit(EXIT_USAGE)
    except BackstopError as exc:  # no token where one is needed, an unreadable one
        click.echo(f"backstop: {exc}", err=True)
        ctx.exit(EXIT_USAGE)


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
    """The Flower dashboard for this fleet. On loopback without authentication its HTTP API
    answers as its pages do (ad-hoc starts with curl); anywhere else both need it."""
    authenticated = bool(os.environ.get("FLOWER_BASIC_AUTH") or os.environ.get("FLOWER_AUTH"))
    if not is_loopback(address) and not authenticated:
        click.echo(f"backstop: refusing to serve Flower on {address} without authentication; "
                   "set FLOWER_BASIC_AUTH=user:password (or FLOWER_AUTH) or use 127.0.0.1",
                   err=True)
        ctx.exit(EXIT_USAGE)
    if not authenticated:  # Flower's own switch, read on each API request
        os.environ["FLOWER_UNAUTHENTICATED_API"] = "true"
    settings = settings_from(ctx, config_file)
    app = create_app(settings, _broker(settings))
    app.start(["flower", f"--address={address}", f"--port={port}"])


def _broker(settings: Settings) -> str:

    return broker_url(settings)


COMMANDS = [up, metrics, serve, beat, flower]
