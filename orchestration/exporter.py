"""``backstop metrics``: the fleet's metrics for Prometheus (SPEC section 10).

Everything is read from the broker at each scrape, so every exporter of a fleet says the
same: the counters of :mod:`backstop.orchestration.metrics`, heartbeats and queue lengths;
the pools' space and the interfaces' reachability are computed at most once a minute (they
ask every store and interface), the way ``backstop pools`` and ``status`` do.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import redis
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from backstop.constants import (
    METRICS_BYTES_KEY,
    METRICS_DRILLS_KEY,
    METRICS_DURATION_KEY,
    METRICS_ERRORS_KEY,
    METRICS_FAILOVERS_KEY,
    METRICS_LAST_SUCCESS_KEY,
    METRICS_NOTIFY_FAILED_KEY,
    METRICS_REPLICATION_LAG_KEY,
    METRICS_RUNS_KEY,
    METRICS_UNAVAILABLE_KEY,
)
from backstop.errors import Reason
from backstop.orchestration.catalog import RedisCatalog
from backstop.orchestration.growth import sample_pools
from backstop.orchestration.heartbeat import served_rds
from backstop.orchestration.metrics import DURATION_BUCKETS, SUM, bucket_label
from backstop.orchestration.schedules import longest_gap
from backstop.orchestration.series import served
from backstop.orchestration.status import fleet_status
from backstop.orchestration.watchdog import watchdog_counts
from backstop.runs import utc_now
from backstop.settings import Settings
from backstop.workers.maintenance import pool_report
from backstop.workers.remote import probe_interfaces, reachable_stores

T = TypeVar("T")
# Gauges that ask every store or interface are computed at most this often, in seconds.
GAUGE_CACHE_S = 60.0


class FleetCollector(Collector):
    """Every metric of SPEC section 10, read from the broker at each scrape."""

    def __init__(self, settings: Settings, client: redis.Redis, token: str | None) -> None:
        self.settings, self.client, self.token = settings, client, token
        self.cache: dict[str, tuple[float, Any]] = {}

    def cached(self, name: str, compute: Callable[[], T]) -> T:
        """``compute()``, at most once a GAUGE_CACHE_S: it asks every store or interface."""
        at, value = self.cache.get(name, (-math.inf, None))
        if time.monotonic() - at >= GAUGE_CACHE_S:
            value = compute()
            self.cache[name] = (time.monotonic(), value)
        return value  # type: ignore[no-any-return]

    def collect(self) -> Iterator[Metric]:
        pipe = self.client.pipeline(transaction=False)
        for key in COUNTERS.values():
            pipe.hgetall(key)
        pipe.hgetall(METRICS_DURATION_KEY)
        pipe.hgetall(METRICS_LAST_SUCCESS_KEY)
        *counters, durations, last_success = [labelled(raw) for raw in pipe.execute()]
        counted = served(dict(zip(COUNTERS, counters, strict=True)), self.settings.config)
        for name, found in counted.items():
            family = CounterMetricFamily(name, HELP[name], labels=LABELS[name])
            for labels, value in sorted(found.items()):
                family.add_metric(labels, value)
            yield family
        yield duration_histogram(durations)
        lag = CounterMetricFamily("backstop_replication_lag",
                                  "Acknowledged writes no replica confirmed within "
                                  "broker_wait_ms")
        lag.add_metric([], float(self.client.get(METRICS_REPLICATION_LAG_KEY) or 0))
        yield lag
        yield from watchdog_metrics(watchdog_counts(self.client))
        gauge = GaugeMetricFamily("backstop_last_success_timestamp_seconds",
                                  HELP["backstop_last_success"], labels=["task"])
        for labels, value in sorted(last_success.items()):
            gauge.add_metric(labels, value)
        yield gauge
        allowed = GaugeMetricFamily(
            "backstop_task_success_interval_seconds",
            "The longest a scheduled task may go without a succeeded backup: the longest gap "
            "of its schedules plus the backup time limit", labels=["task"])
        for task, seconds in sorted(self.cached("intervals", self.success_intervals).items()):
            allowed.add_metric([task], seconds)
        yield allowed
        yield from self.fleet_gauges()

    def success_intervals(self) -> dict[str, float]:
        config = self.settings.config
        schedules = {s.name: s for s in config.schedules}
        found: dict[str, float] = {}
        for event in config.events:
            task = getattr(event, "task", None)
            if event.kind != "backup" or event.schedule is None or not task:
                continue
            gap = longest_gap(schedules[event.schedule], config.timezone, utc_now())
            seconds = (gap + config.backup_time_limit).total_seconds()
            found[task] = max(found.get(task, 0.0), seconds)
        return found

    def fleet_gauges(self) -> Iterator[Metric]:
        config = self.settings.config
        status = fleet_status(self.client, config, self.cached("interfaces", self.probe))
        queues = GaugeMetricFamily("backstop_queue_depth", "Messages waiting in a queue",
                                   labels=["queue"])
        for queue in status["queues"]:
            queues.add_metric([queue["name"]], queue["depth"])
        rds_up = GaugeMetricFamily("backstop_rds_up", "1 while a live worker serves the RDS",
                                   labels=["rds"])
        reachable = GaugeMetricFamily("backstop_interface_reachable",
                                      "1 while the RDS's data service answers on the "
                                      "interface", labels=["rds", "interface"])
        for rds in status["rds"]:
            rds_up.add_metric([rds["name"]], int(rds["live"]))
            for interface in rds["interfaces"]:
                reachable.add_metric([rds["name"], interface["name"]],
                                     int(interface["reachable"]))
        clients = GaugeMetricFamily("backstop_client_up",
                                    "1 while a live worker serves the client", labels=["client"])
        for client in status["clients"]:
            clients.add_metric([client["name"]], int(client["live"]))
        yield from (queues, rds_up, reachable, clients)
        yield from pool_gauges(self.cached("pools", self.pools))

    def probe(self) -> dict[tuple[str, str], bool]:
        """Any answer of a data service counts: no token is needed to probe."""
        return probe_interfaces(self.settings, self.token or "")

    def pools(self) -> list[dict[str, Any]]:
        """The pools report, as ``backstop pools`` makes it; a sample of each pool's use."""
        stores = reachable_stores(self.settings, self.token or "")
        try:
            served = served_rds(self.client)
            report = pool_report(self.settings.config, RedisCatalog(self.client), stores,
                                 utc_now(), lambda rds: rds in served)
        finally:
            for store in stores.values():
                store.close()
        sample_pools(self.client, report, utc_now())
        return report


def labelled(raw: dict[bytes, bytes]) -> dict[tuple[str, ...], float]:
    return {tuple(json.loads(field)): float(value) for field, value in raw.items()}


def duration_histogram(found: dict[tuple[str, ...], float]) -> HistogramMetricFamily:
    family = HistogramMetricFamily("backstop_run_duration_seconds",
                                   "How long backup runs took, from start to end",
                                   labels=["task", "level"])
    series = sorted({labels[:2] for labels in found})
    for task, level in series:
        buckets, total = [], 0.0
        for bound in DURATION_BUCKETS:
            total += found.get((task, level, bucket_label(bound)), 0.0)
            buckets.append((bucket_label(bound), total))
        family.add_metric([task, level], buckets, found.get((task, level, SUM), 0.0))
    return family


def watchdog_metrics(counts: dict[str, float]) -> Iterator[Metric]:
    passes = CounterMetricFamily("backstop_watchdog_passes",
                                 "Watchdog passes of the leading beat")
    passes.add_metric([], counts["passes"])
    actions = CounterMetricFamily("backstop_watchdog_actions",
                                  "Runs, occurrences and messages the watchdog acted on")
    actions.add_metric([], counts["actions"])
    last = GaugeMetricFamily("backstop_watchdog_last_pass_timestamp_seconds",
                             "When the watchdog last made a pass (Unix time; 0: never)")
    last.add_metric([], counts["last_pass"])
    yield from (passes, actions, last)


def pool_gauges(report: list[dict[str, Any]]) -> Iterator[Metric]:
    used = GaugeMetricFamily("backstop_pool_used_bytes", "Bytes of the pool's savesets",
                             labels=["pool", "data_store"])
    free = GaugeMetricFamily("backstop_pool_free_bytes", "Bytes the pool can still take",
                             labels=["pool", "data_store"])
    available = GaugeMetricFamily("backstop_pool_available",
                                  "1 with reason ok while the pool takes backups; else 1 on "
                                  "the reason it does not", labels=["pool", "reason"])
    for pool in report:
        labels = [pool["name"], pool["data_store"]]
        used.add_metric(labels, pool["used_bytes"])
        free.add_metric(labels, pool["free_bytes"])
        for reason in ("ok", *(r.value for r in Reason)):
            available.add_metric([pool["name"], reason], int(pool["availability"] == reason))
    yield from (used, free, available)


COUNTERS = {
    "backstop_runs": METRICS_RUNS_KEY,
    "backstop_storage_unavailable": METRICS_UNAVAILABLE_KEY,
    "backstop_failovers": METRICS_FAILOVERS_KEY,
    "backstop_drills": METRICS_DRILLS_KEY,
    "backstop_backup_bytes": METRICS_BYTES_KEY,
    "backstop_notifications_failed": METRICS_NOTIFY_FAILED_KEY,
    "backstop_run_errors": METRICS_ERRORS_KEY,
}
LABELS = {
    "backstop_runs": ["event", "task", "trigger", "state"],
    "backstop_storage_unavailable": ["event", "reason"],
    "backstop_failovers": ["origin_event", "failover_event", "result"],
    "backstop_drills": ["origin_event", "failover_event", "result"],
    "backstop_backup_bytes": ["task", "pool"],
    "backstop_notifications_failed": ["target"],
    "backstop_run_errors": ["event", "kind"],
}
HELP = {
    "backstop_runs": "Runs that ended, by event, task, trigger and state",
    "backstop_storage_unavailable": "Runs that ended because their storage was unavailable "
                                    "(drills not counted)",
    "backstop_failovers": "Failover runs that ended, by result (drills not counted)",
    "backstop_drills": "Failover runs of drills (backstop drill) that ended, by result",
    "backstop_backup_bytes": "Bytes backed up by succeeded backup runs",
    "backstop_notifications_failed": "Notification attempts that did not reach their target",
    "backstop_run_errors": "Runs that ended with an error, by event and error kind "
                           "(hook_failed, source_error, …)",
    "backstop_last_success": "When the task's newest backup succeeded (Unix time)",
}


def serve_metrics(settings: Settings, client: redis.Redis, token: str | None, address: str,
                  port: int) -> None:
    """Serve /metrics on ``address:port`` in a thread (OSError when it cannot bind)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(settings, client, token))
    start_http_server(port, addr=address, registry=registry)
