"""Event resolution and the failover rule (SPEC section 4), as pure functions over the config.

An occurrence of a backup event becomes a :class:`backstop.runs.RunSpec`: what to back up and
how (task, level, options) and where (media pool, store, RDS, drive, interface, follow-ups,
migration).
:func:`failover_spec` turns a run that hit StorageUnavailable into the one failover run of
its occurrence, or says why there is none.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from backstop.config import BackupEvent, Config, Level, MediaPool
from backstop.runs import RunSpec, Trigger


class Unresolvable(ValueError):
    """The event cannot become a backup run (unknown, or not a backup event)."""


def pool_of(config: Config, name: str) -> MediaPool:
    return next(p for p in config.media_pools if p.name == name)


def backup_event(config: Config, name: str) -> BackupEvent:
    event = config.events_by_name.get(name)
    if event is None:
        raise Unresolvable(f"unknown event {name!r}")
    if not isinstance(event, BackupEvent):
        raise Unresolvable(f"event {name!r} is a {event.kind} event, not a backup event")
    return event


def data_interface(config: Config, client: str | None, rds: str,
                   named: str | None) -> str | None:
    """The interface a client's data goes through: the event's, else the RDS's first; none
    for a task read on the RDS itself (SPEC section 9)."""
    if client is None:
        return None
    found = config.interface_for(rds, named)
    return found.name if found else None


def resolve(config: Config, event_name: str, trigger: Trigger, level: Level | None = None,
            enforce_full: bool | None = None) -> RunSpec:
    """The run of an occurrence of a backup event; ``level``/``enforce_full`` override."""
    event = backup_event(config, event_name)
    store, rds = config.storage_of(event.media_pool)
    client = config.task_named(event.task).client
    return RunSpec(
        event=event.name, origin_event=event.name, trigger=trigger, task=event.task,
        level=level or event.level,
        enforce_full=event.enforce_full if enforce_full is None else enforce_full,
        full_interval=event.full_interval, media_pool=event.media_pool, data_store=store,
        rds=rds, drive=event.drive,
        interface=data_interface(config, client, rds, event.interface),
        follow_ups=tuple(event.follow_ups), migration_task=event.migration_task,
        client=client)


@dataclass(frozen=True)
class FailoverDecision:
    spec: RunSpec | None
    why: str


def failover_spec(config: Config, original: RunSpec, run_id: str) -> FailoverDecision:
    """The one failover run of an occurrence whose run ``run_id`` hit StorageUnavailable.

    Event level first: the event's ``failover_event`` replaces media pool (hence store and
    RDS), drive, interface, follow-ups and migration task, and the original keeps task,
    requested level, Enforce FULL and every other option. Else pool level: the pool's
    ``failover_pool`` replaces store and drive only. A failover never fails over again.
    """
    if original.is_failover:
        return FailoverDecision(None, "a failover run never fails over again")
    event = backup_event(config, original.origin_event)
    if event.failover_event is not None:
        target = backup_event(config, event.failover_event)
        store, rds = config.storage_of(target.media_pool)
        spec = replace(original, event=target.name, trigger=Trigger.FAILOVER,
                       media_pool=target.media_pool, data_store=store, rds=rds,
                       drive=target.drive,
                       interface=data_interface(config, original.client, rds, target.interface),
                       follow_ups=tuple(target.follow_ups),
                       migration_task=target.migration_task, failover_of=run_id)
        return FailoverDecision(spec, f"failover event {target.name}")
    pool = pool_of(config, original.media_pool)
    if pool.failover_pool is not None:
        store, rds = config.storage_of(pool.failover_pool)
        drive = next((d.name for d in config.drives if d.data_store == store), None)
        spec = replace(original, trigger=Trigger.FAILOVER, media_pool=pool.failover_pool,
                       data_store=store, rds=rds, drive=drive,
                       interface=original.interface if rds == original.rds else
                       data_interface(config, original.client, rds, None),
                       failover_of=run_id, pool_redirect=True)
        return FailoverDecision(spec, f"failover pool {pool.failover_pool}")
    return FailoverDecision(None, f"event {event.name} has no failover event and pool "
                                  f"{pool.name} no failover pool")
