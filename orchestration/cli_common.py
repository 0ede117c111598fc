"""Pieces every ``backstop`` command shares: options, settings, errors to exit codes."""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

import click
import redis

from backstop.errors import (
    AlreadyRunning,
    BackstopError,
    BrokerUnreachable,
    ConfigError,
    KeyUnusable,
)
from backstop.runs import utc_now
from backstop.settings import Settings, load_settings
from backstop.units import parse_duration

F = TypeVar("F", bound=Callable[..., Any])

EXIT_FAILED = 1
EXIT_USAGE = 2


class BackstopGroup(click.Group):
    """Turns Backstop's errors into a clear message and the exit code of SPEC section 7.

    Commands of ``lazy`` (name -> ``module:attribute``) are imported when they run, so that
    a quick command (``runs``, ``status``) does not pay for Celery and the data plane."""

    lazy: ClassVar[dict[str, str]] = {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy and cmd_name not in self.commands:
            module, attribute = self.lazy[cmd_name].split(":")
            self.add_command(getattr(importlib.import_module(module), attribute), cmd_name)
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (ConfigError, BrokerUnreachable, AlreadyRunning, KeyUnusable) as exc:
            click.echo(f"backstop: {exc}", err=True)
            ctx.exit(EXIT_USAGE)
        except BackstopError as exc:
            click.echo(f"backstop: {exc}", err=True)
            ctx.exit(EXIT_FAILED)
        except Exception as exc:
            if not is_broker_error(exc):
                raise
            click.echo(f"backstop: the broker did not answer ({exc}); this command may not "
                       "have finished: look with `backstop runs` or `backstop status` before "
                       "trying again", err=True)
            ctx.exit(EXIT_USAGE)


def is_broker_error(exc: BaseException) -> bool:
    """A lost or unreachable broker, as redis-py or kombu report it (kombu is checked only
    where it is loaded: a command that did not import it cannot have met its errors)."""
    kombu = sys.modules.get("kombu.exceptions")
    return isinstance(exc, redis.RedisError) or (
        kombu is not None and isinstance(exc, kombu.OperationalError))


def config_option(command: F) -> F:
    """``-c FILE`` on every command (also accepted before the command name)."""
    return click.option("-c", "--config", "config_file", default=None, metavar="FILE",
                        help="Config file (default: $BACKSTOP_CONFIG, else ./backstop.yaml).")(
        command)


def json_option(command: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(command)


def settings_from(ctx: click.Context, config_file: str | None) -> Settings:
    chosen = config_file or (ctx.obj or {}).get("config_file")
    return load_settings(chosen, os.environ)


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


class Since(click.ParamType[datetime, Any]):
    """A point in the past: a duration back from now (``24h``, ``7d``) or an ISO-8601 time
    (without offset: UTC)."""

    name = "DURATION|TIME"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            return utc_now() - parse_duration(value)
        except ValueError:
            pass
        try:
            found = datetime.fromisoformat(str(value))
        except ValueError:
            self.fail(f"{value!r} is neither a duration (24h, 7d) nor an ISO-8601 time",
                      param, ctx)
        return found if found.tzinfo else found.replace(tzinfo=UTC)
