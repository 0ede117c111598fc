"""The counter series a config makes knowable, so that each is exported at 0 before its
first increment.

Prometheus sees a counter's first increment only as a rise from an earlier sample: a series
born at 1 has no earlier sample, and ``increase()`` over it is 0, so the first storage
failure of an event would never alert. Every label combination the config allows is
therefore served from the first scrape on; one that a config change adds appears at 0 on
the next scrape, and one whose event, task, pool or target is gone from the config is no
longer served.
"""

from __future__ import annotations

from collections.abc import Iterator

from backstop.config import BackupEvent, Config
from backstop.errors import Reason
from backstop.runs import ErrorKind, RunState, Trigger

Labels = tuple[str, ...]
RESULTS = ("succeeded", "failed")
ENDED = tuple(state.value for state in RunState if state.ended)


def known_series(config: Config) -> dict[str, set[Labels]]:
    """Metric name (without ``_total``) -> every label tuple it may carry."""
    backups = [e for e in config.events if isinstance(e, BackupEvent)]
    pairs = set(failover_pairs(config))
    return {
        "backstop_runs": {(e.name, getattr(e, "task", None) or "", trigger.value, state)
                          for e in config.events for trigger in Trigger for state in ENDED},
        "backstop_storage_unavailable": {(e.name, reason.value) for e in backups
                                         for reason in Reason},
        "backstop_failovers": {(*pair, result) for pair in pairs for result in RESULTS},
        "backstop_drills": {(*pair, result) for pair in pairs for result in RESULTS},
        "backstop_backup_bytes": set(task_pools(config)),
        "backstop_notifications_failed": {(str(n),) for n in range(len(config.notify))},
        "backstop_run_errors": {(e.name, kind.value) for e in config.events
                                for kind in ErrorKind},
    }


def failover_pairs(config: Config) -> Iterator[tuple[str, str]]:
    """(origin event, failover event) of every failover the config can make: an event's
    failover event, or the event itself retried on its pool's failover pool."""
    pools = {p.name: p for p in config.media_pools}
    for event in config.events:
        if not isinstance(event, BackupEvent):
            continue
        if event.failover_event:
            yield event.name, event.failover_event
        elif pools.get(event.media_pool) and pools[event.media_pool].failover_pool:
            yield event.name, event.name


def task_pools(config: Config) -> Iterator[Labels]:
    """(task, pool) of every pool a task's backup can land in: its event's pool, its
    failover event's pool, the pool-level failover pool."""
    events = {e.name: e for e in config.events if isinstance(e, BackupEvent)}
    pools = {p.name: p for p in config.media_pools}
    for event in events.values():
        yield event.task, event.media_pool
        failover = events.get(event.failover_event or "")
        if failover is not None:
            yield event.task, failover.media_pool
        spare = pools.get(event.media_pool)
        if spare is not None and spare.failover_pool:
            yield event.task, spare.failover_pool


def still_configured(config: Config) -> dict[str, set[str]]:
    """The names a stored series must still name to be served: its first label."""
    events = {e.name for e in config.events}
    return {"backstop_runs": events, "backstop_storage_unavailable": events,
            "backstop_failovers": events, "backstop_drills": events,
            "backstop_backup_bytes": {t.name for t in config.tasks},
            "backstop_notifications_failed": {str(n) for n in range(len(config.notify))},
            "backstop_run_errors": events}


def served(stored: dict[str, dict[Labels, float]], config: Config
           ) -> dict[str, dict[Labels, float]]:
    """What each counter serves: every knowable series at 0 unless counted, and the
    counted ones whose first label the config still names."""
    known, keep = known_series(config), still_configured(config)
    return {name: {**dict.fromkeys(known[name], 0.0),
                   **{labels: value for labels, value in found.items()
                      if labels[0] in keep[name]}}
            for name, found in stored.items()}
