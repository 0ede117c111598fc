"""Warnings of ``backstop config check`` (SPEC section 10): a failover that cannot help.

A failover event whose pool lies in the original's data store is no help when that store is
out of space or offline; one whose data goes through the same RDS and interface is no help
when that path is unreachable. The file is valid either way; ``--strict`` refuses it.
"""

from __future__ import annotations

from backstop.config import BackupEvent, Config


def failover_warnings(config: Config) -> list[str]:
    warnings = []
    for index, event in enumerate(config.events):
        if not isinstance(event, BackupEvent) or event.failover_event is None:
            continue
        target = config.events_by_name.get(event.failover_event)
        if not isinstance(target, BackupEvent):
            continue
        where = f"events[{index}].failover_event"
        store, rds = config.storage_of(event.media_pool)
        target_store, target_rds = config.storage_of(target.media_pool)
        if target_store == store:
            warnings.append(f"{where}: failover event {target.name!r} writes to data store "
                            f"{store!r} too: no help when it is out of space or offline")
        elif target_rds == rds and path_name(config, event, rds) == path_name(config, target,
                                                                               rds):
            through = path_name(config, event, rds)
            what = f"and interface {through!r} " if through else ""
            warnings.append(f"{where}: failover event {target.name!r} goes through RDS "
                            f"{rds!r} {what}too: no help when it is unreachable")
    return warnings


def path_name(config: Config, event: BackupEvent, rds: str) -> str | None:
    """The interface a client task's data goes through (the event's, else the RDS's
    first); None for a task read on the RDS itself, whose only path is the RDS."""
    if config.task_named(event.task).client is None:
        return None
    interface = config.interface_for(rds, event.interface)
    return interface.name if interface else None
