"""Celery tasks: thin adapters that decode arguments, call one function, map the outcome.

Every task name starts with ``backstop.``; backups run on ``backstop.rds.<rds>``, the rest on
``backstop.control``. No task waits for another task's result: each one ends by sending the
next message (failover, settle) itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis
from celery import Task
from celery.signals import task_postrun, task_revoked, worker_shutdown

from backstop.config import Config, Level
from backstop.config_refs import did_you_mean
from backstop.constants import (
    RUN_LEASE_S,
    RUN_TASKS,
    TASK_BACKUP,
    TASK_COMMAND,
    TASK_DISPATCH,
    TASK_FAILOVER,
    TASK_MIGRATE,
    TASK_NOTIFY,
    TASK_RESTORE,
    TASK_RUN,
    TASK_VERIFY,
    TASK_WATCHDOG,
)
from backstop.errors import Reason, RunFailed, SavesetMissing, StorageUnavailable
from backstop.orchestration.catalog import RedisCatalog
from backstop.orchestration.celery_app import BackstopApp
from backstop.orchestration.control import Control, start_adhoc
from backstop.orchestration.events import Unresolvable
from backstop.orchestration.heartbeat import Seen, client_seen, served_rds
from backstop.orchestration.jobs import command_job, migrate_job, verify_job
from backstop.orchestration.ledger import Ledger
from backstop.orchestration.notify import Notifier
from backstop.orchestration.replicas import Replicas
from backstop.orchestration.runner import Channels, lease_kept, run_backup
from backstop.orchestration.watchdog import watchdog_pass
from backstop.runs import Progress, Run, RunEnd, RunState, Trigger
from backstop.workers.access import client_token
from backstop.workers.engine import Engine
from backstop.workers.remote import RemoteStores
from backstop.workers.restore import Restorer


@dataclass
class Context:
    """Per worker process: clients and services, built on first use (after the fork)."""

    app: BackstopApp
    client: redis.Redis
    ledger: Ledger
    engine: Engine
    catalog: RedisCatalog
    channels: Channels
    control: Control
    remote: dict[str, RemoteStores] = field(default_factory=dict)

    def remote_stores(self, client: str) -> RemoteStores:
        """The stores as client ``client`` reaches them, with its token."""
        if client not in self.remote:
            settings = self.app.settings
            self.remote[client] = RemoteStores(settings, client_token(settings, client))
        return self.remote[client]

    def engine_for(self, run: Run) -> Engine:
        """The engine of a run: on an RDS, its stores here; on a client, the run's store
        through the run's interface to its RDS's data service."""
        if run.client is None:
            return self.engine
        stores = self.remote_stores(run.client).via(run.data_store or "", run.interface)
        return Engine(self.app.settings, self.catalog, stores=stores)


def context(app: BackstopApp) -> Context:
    cached: Context | None = getattr(app, "_backstop_context", None)
    if cached is not None and getattr(app, "_backstop_pid", None) == os.getpid():
        return cached
    client = app.shared_client()
    replicas = Replicas(client, app.settings.config.broker_wait_ms)
    catalog = RedisCatalog(client, replicas)
    control = control_for(app, client, catalog, replicas)
    made = Context(app, client, control.ledger, Engine(app.settings, catalog), catalog,
                   Channels(client, app.settings.config), control)
    app._backstop_context, app._backstop_pid = made, os.getpid()  # type: ignore[attr-defined]
    return made


def control_for(app: BackstopApp, client: redis.Redis, catalog: RedisCatalog | None = None,
                replicas: Replicas | None = None) -> Control:
    """The control plane, sending through ``app`` and judging RDS liveness by heartbeats."""

    def rds_live(rds: str) -> bool:
        return rds in served_rds(client)

    def seen(name: str) -> Seen | None:
        return client_seen(client, name)

    replicas = replicas or Replicas(client, app.settings.config.broker_wait_ms)
    return Control(app.settings.config, Ledger(client, app.settings.config.history, replicas),
                   app.send, rds_live, catalog or RedisCatalog(client, replicas), seen)


def finish_job(ctx: Context, run_id: str, work: Callable[[Run], RunEnd]) -> dict[str, Any]:
    """Claim a verify/command run, do it, end it, and let the control plane know."""
    holder = f"{os.getpid()}:{run_id}"
    if not ctx.ledger.claim(run_id, holder, int(RUN_LEASE_S * 1000)).ok:
        return {"run_id": run_id, "late": True}
    run = ctx.ledger.run(run_id)
    assert run is not None
    with lease_kept(ctx.ledger, ctx.channels, run_id, holder, drive=None):
        end = work(run)
    if ctx.ledger.finish(run_id, end, holder) == "done":
        ctx.control.run_ended(run_id)
    return {"run_id": run_id, "state": end.state}


def back_up(app: BackstopApp, task: Task[Any, Any], run_id: str) -> dict[str, Any]:
    ctx = context(app)
    holder = f"{task.request.hostname}:{os.getpid()}:{task.request.id}"

    def report(progress: Progress) -> None:  # for Flower, which a lean worker does not tell
        if not app.lean:
            task.update_state(state="PROGRESS", meta=progress.model_dump())

    outcome = run_backup(ctx.engine_for, ctx.ledger, ctx.channels, run_id, holder, report)
    if outcome.come_back_in_s is not None:
        raise task.retry(countdown=outcome.come_back_in_s)
    end = outcome.end
    if end is not None and end.state is RunState.STORAGE_UNAVAILABLE:
        run = ctx.ledger.run(run_id)
        assert run is not None and end.error is not None and end.error.reason is not None
        ctx.control.send_failover(run)  # from this task: Flower shows it as its child
        raise StorageUnavailable(end.error.reason, end.error.message)
    if end is not None:  # settle here: the control plane may run on any worker
        ctx.control.run_ended(run_id)
        if end.error is not None:
            raise RunFailed(run_id, end.error.kind, end.error.message)
    # a late or repeated message that did nothing is no failure
    return {"run_id": run_id, "state": outcome.state, "late": end is None}


def adhoc_request(config: Config, event: str, level: str | None,
                  enforce_full: bool | None) -> tuple[str, Level | None, bool | None]:
    """The arguments of a ``backstop.run`` task, checked: Unresolvable when they name no
    event or level that exists."""
    names = list(config.events_by_name)
    if event not in config.events_by_name:
        raise Unresolvable(f"unknown event {event!r}{did_you_mean(event, names)}")
    levels = [member.value for member in Level]
    if level is not None and level not in levels:
        raise Unresolvable(f"bad level {level!r}: one of {', '.join(levels)}")
    if enforce_full is not None and not isinstance(enforce_full, bool):
        raise Unresolvable(f"bad enforce_full {enforce_full!r}: true or false")
    return event, Level(level) if level else None, enforce_full


def restore_here(ctx: Context, saveset_id: str, target: str, client: str,
                 include: list[str] | None = None) -> dict[str, Any]:
    """Restore a saveset on this host (client ``client``), reading it through the data
    services with the client's token."""
    saveset = ctx.catalog.get(saveset_id)
    if saveset is None:
        raise SavesetMissing("catalog", saveset_id)
    restorer = Restorer(ctx.catalog, ctx.remote_stores(client), ctx.engine.keyring,
                        ctx.engine.jobs)
    return asdict(restorer.restore(saveset, Path(target).absolute(), include=include))


def migrate_run(ctx: Context, run_id: str) -> dict[str, Any]:
    run = ctx.ledger.run(run_id)
    if run is None or run.migration is not None:
        return {"run_id": run_id, "late": True}
    outcome = migrate_job(ctx.engine, ctx.catalog, run)
    ctx.ledger.update(run_id, migration=outcome)
    return {"run_id": run_id, **outcome.model_dump(mode="json")}


def close_context(app: BackstopApp) -> None:
    """Close the connections this process opened to data services."""
    cached: Context | None = getattr(app, "_backstop_context", None)
    if cached is not None:
        for stores in cached.remote.values():
            stores.close()
        cached.remote.clear()


@task_postrun.connect
def on_task_postrun(sender: Any = None, **_: Any) -> None:
    """A lean worker lets go of the connections a task opened once it has ended."""
    app = getattr(sender, "app", None)
    if isinstance(app, BackstopApp) and app.lean:
        app.trim_connections()


@worker_shutdown.connect
def on_worker_shutdown(sender: Any = None, **_: Any) -> None:
    app = getattr(sender, "app", None)
    if isinstance(app, BackstopApp):
        close_context(app)


@task_revoked.connect
def on_revoked(sender: Any = None, request: Any = None, **_: Any) -> None:
    """A revoked backup (or verify, command) run ends as cancelled."""
    app = getattr(sender, "app", None)
    if (isinstance(app, BackstopApp) and request is not None and request.args
            and getattr(sender, "name", "") in RUN_TASKS):
        context(app).control.cancel(str(request.args[0]))


def register_tasks(app: BackstopApp) -> None:
    register_control_tasks(app)
    register_run_tasks(app)


def register_control_tasks(app: BackstopApp) -> None:
    """Tasks of the control plane (queue backstop.control): bookkeeping, never data."""

    @app.task(name=TASK_DISPATCH, shared=False)
    def dispatch(occurrence: str, event: str, trigger: str, level: str | None = None,
                 enforce_full: bool | None = None, parent: str | None = None,
                 drill: str | None = None) -> str | None:
        """Start an occurrence: its run goes to its RDS (beat, `backstop run`, follow-ups,
        `backstop drill`)."""
        return context(app).control.occur(occurrence, event, Trigger(trigger),
                                          Level(level) if level else None, enforce_full, parent,
                                          drill=Reason(drill) if drill else None)

    @app.task(name=TASK_RUN, shared=False, throws=(Unresolvable,))
    def run(event: str, level: str | None = None, enforce_full: bool | None = None) -> str:
        """Ad hoc (from Flower): start an occurrence of ``event`` now, as `backstop run`
        does; an unknown event or a bad level fails here and starts nothing."""
        return start_adhoc(app.send, *adhoc_request(app.settings.config, event, level,
                                                    enforce_full))

    @app.task(name=TASK_FAILOVER, shared=False)
    def failover(run_id: str) -> str | None:
        """The one failover run of an occurrence whose run hit StorageUnavailable."""
        return context(app).control.failover(run_id)

    @app.task(name=TASK_WATCHDOG, shared=False)
    def watchdog() -> int:
        """A watchdog pass sent as a message, as beats of earlier releases do (the leading
        beat now runs the passes itself)."""
        ctx = context(app)
        return watchdog_pass(app, ctx.control, ctx.client)

    @app.task(name=TASK_NOTIFY, shared=False)
    def notify(occurrence: str, target: int | None = None, attempt: int = 0,
               first_at: float | None = None) -> int:
        """Tell the notify targets of a settled occurrence (queue backstop.notify)."""
        ctx = context(app)
        return Notifier(app.settings.config, ctx.ledger, app.send).notify(
            occurrence, target, attempt, first_at)


def register_run_tasks(app: BackstopApp) -> None:
    """Tasks that do a run's work: backups and migrations on an RDS, verify and command."""
    backup_limit = int(app.settings.config.backup_time_limit.total_seconds())

    # A run that ends StorageUnavailable or failed is an outcome, not a crash: one line in
    # the log (celery_app.ExpectedAsWarning), FAILURE with the reason in Flower.
    @app.task(name=TASK_BACKUP, bind=True, max_retries=None, shared=False,
              soft_time_limit=backup_limit, time_limit=backup_limit + 60,
              throws=(StorageUnavailable, RunFailed))
    def backup(task: Task[Any, Any], run_id: str) -> dict[str, Any]:
        """One backup run on its RDS."""
        return back_up(app, task, run_id)

    @app.task(name=TASK_VERIFY, shared=False)
    def verify(run_id: str) -> dict[str, Any]:
        """A ``kind: verify`` follow-up: re-read the triggering occurrence's saveset."""
        ctx = context(app)
        return finish_job(ctx, run_id, lambda run: verify_job(ctx.engine, ctx.ledger,
                                                              ctx.catalog, run))

    @app.task(name=TASK_COMMAND, shared=False)
    def command(run_id: str) -> dict[str, Any]:
        """A ``kind: command`` event: run its argv on this control worker."""
        ctx = context(app)
        return finish_job(ctx, run_id, lambda run: command_job(app.settings, ctx.ledger, run))

    @app.task(name=TASK_RESTORE, shared=False, soft_time_limit=backup_limit,
              time_limit=backup_limit + 60)
    def restore(saveset_id: str, target: str, client: str,
                include: list[str] | None = None) -> dict[str, Any]:
        """``backstop restore --client``: rebuild a saveset under ``target`` on this client."""
        return restore_here(context(app), saveset_id, target, client, include)

    @app.task(name=TASK_MIGRATE, shared=False)
    def migrate(run_id: str) -> dict[str, Any]:
        """The migration task of a succeeded run: copy its saveset to the target pool."""
        return migrate_run(context(app), run_id)
