"""The Celery app class and its settings, built from the config at the edge (nothing here
reads the environment); :func:`backstop.orchestration.app.create_app` adds the tasks.

Choices, each for long backups on a fleet (see the README, "Celery settings"):

- JSON only, in both directions: a pickle message is refused before it is decoded.
- ``task_acks_late`` + ``task_reject_on_worker_lost``: a message is acknowledged only once
  its task has finished, and goes back to the queue when the worker process running it dies.
- Prefetch multiplier 1: a worker holds no more backups than it runs.
- Time limits: a backup run may take ``backup_time_limit`` (config, default 6 h); the Redis
  visibility timeout is one hour longer, so an unacknowledged message is never handed out a
  second time while its first run may still be going.
- Task events and ``task_send_sent_event`` on and ``result_extended``, for Flower.

A worker that serves clients only is lean (:func:`make_lean`): see docs/scale.md.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from typing import Any

import redis
from celery import Celery
from kombu import Queue

from backstop.config import Config
from backstop.constants import CONTROL_QUEUE, NOTIFY_QUEUE, client_queue, rds_queue
from backstop.orchestration.broker import patient_client
from backstop.orchestration.heartbeat import CLIENT_PACE, RDS_PACE, Pace
from backstop.orchestration.pool import ThreadPool
from backstop.settings import Settings

# Control-plane tasks are short: dispatch, bookkeeping, follow-ups.
CONTROL_SOFT_TIME_LIMIT_S = 60
CONTROL_TIME_LIMIT_S = 120
# Slack between a backup's hard time limit and the broker redelivering its message.
VISIBILITY_MARGIN = timedelta(hours=1)
# Results (and Flower's view of them) are kept this long.
RESULT_EXPIRES = timedelta(days=7)
# A lean client worker's BRPOP waits this long for a message before it asks again: a
# message is taken as soon as it comes; this sets the idle rate (one command per wait) and
# how long a warm shutdown waits for the last BRPOP's answer (kombu reads it, so that a
# message popped at that moment is not lost).
LEAN_POLL_S = 10
# How often its kombu looks for messages past their visibility timeout (hours): RDS and
# control workers already look every 100 s, and every unacknowledged message is in the one
# index they look through.
LEAN_RESTORE_S = 3600


class ExpectedAsWarning(logging.Filter):
    """Celery logs a task's expected exception (its ``throws``) at INFO without a traceback;
    a backup that found its storage unavailable is worth the operator's eye, so the line is
    raised to WARNING. Tracebacks stay for the unexpected ones."""

    def filter(self, record: logging.LogRecord) -> bool:
        data = getattr(record, "data", None)
        if isinstance(data, dict) and data.get("description") == "raised expected":
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def log_expected_as_warnings() -> None:
    """Install :class:`ExpectedAsWarning` on Celery's task tracer logger, once."""
    trace_logger = logging.getLogger("celery.app.trace")
    if not any(isinstance(f, ExpectedAsWarning) for f in trace_logger.filters):
        trace_logger.addFilter(ExpectedAsWarning())


class BackstopApp(Celery):
    """A Celery app that carries the settings it was built from."""

    settings: Settings
    lean = False      # a lean client worker (make_lean)
    pace: Pace = RDS_PACE

    def shared_client(self) -> redis.Redis:
        """This process's client of the broker for Backstop's own keys (ledger, catalog,
        heartbeat in a lean worker): patient through a restart or a promotion."""
        client = self._own_client()
        if client is None:
            client = patient_client(self.settings, self.conf.broker_url, socket_timeout=30)
            self._backstop_client = (os.getpid(), client)
        return client

    def _own_client(self) -> redis.Redis | None:
        """The shared client made in this process, if any (a forked child makes its own)."""
        cached: tuple[int, redis.Redis] | None = getattr(self, "_backstop_client", None)
        return cached[1] if cached is not None and cached[0] == os.getpid() else None

    def trim_connections(self) -> None:
        """Close the idle connections this process keeps to the broker for Backstop's own
        keys and results, so that an idle lean worker holds none but its consumer's and one
        for its heartbeat (the next command opens one again)."""
        own = self._own_client()
        pools = [own.connection_pool] if own is not None else []
        backend_client = getattr(self.backend, "client", None)
        if isinstance(backend_client, redis.Redis):
            pools.append(backend_client.connection_pool)
        for pool in pools:
            pool.disconnect(inuse_connections=False)

    def send(self, name: str, args: list[Any], queue: str, readable: str,
             countdown: float | None = None, **options: Any) -> None:
        """Put a task message on ``queue``; ``readable`` is what Flower shows as arguments.

        Nothing in Backstop waits for a task's result, so none is subscribed to: with the
        Redis result backend every waited-for result would hold a pub/sub subscription in
        the sending process (the beat, a control worker) until it is garbage-collected.
        ``options`` are the task's keyword arguments; ``countdown``: run it that many seconds
        from now, not before.
        """
        self.send_task(name, args=args, kwargs=options or None, queue=queue,
                       argsrepr=readable, ignore_result=True, countdown=countdown)


def celery_config(config: Config, broker_url: str,
                  sentinel_password: str | None = None) -> dict[str, Any]:
    backup_limit_s = int(config.backup_time_limit.total_seconds())
    visibility_s = backup_limit_s + int(VISIBILITY_MARGIN.total_seconds())
    transport: dict[str, Any] = {"visibility_timeout": visibility_s, "health_check_interval": 10}
    if broker_url.startswith("sentinel://"):  # kombu's and Celery's own Sentinel support
        transport |= {"master_name": config.broker_master_name,
                      "sentinel_kwargs": {"password": sentinel_password}}
    return {
        "broker_url": broker_url,
        "result_backend": broker_url,
        "broker_transport_options": transport,
        "result_backend_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # A backup cut off by a lost broker connection is redelivered and resumed from
        # scratch by the run ledger's rules, so letting it finish is the better deal.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        # Sending a task rides out a broker restart or a Sentinel promotion, as the Redis
        # clients of the ledger do (orchestration/broker.py), instead of failing after
        # Celery's default 0.6 s: 10 tries over about 22 s.
        "task_publish_retry_policy": {"max_retries": 10, "interval_start": 0,
                                      "interval_step": 0.5, "interval_max": 4},
        "task_soft_time_limit": CONTROL_SOFT_TIME_LIMIT_S,
        "task_time_limit": CONTROL_TIME_LIMIT_S,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_track_started": True,
        "result_extended": True,
        "result_expires": RESULT_EXPIRES,
        "timezone": config.timezone,
        "enable_utc": True,
        "task_default_queue": CONTROL_QUEUE,
        "task_queues": [Queue(CONTROL_QUEUE), Queue(NOTIFY_QUEUE),
                        *(Queue(rds_queue(r.name)) for r in config.rds),
                        *(Queue(client_queue(c.name)) for c in config.clients)],
        "task_create_missing_queues": True,
        "worker_hijack_root_logger": True,
    }


def make_lean(app: BackstopApp) -> None:
    """Make ``app`` a lean client worker's: one process (a thread pool that keeps time
    limits), no remote control and no task events (Flower sees RDS and control workers),
    publishing over a connection made for each message, a slow idle poll, and a heartbeat
    every 15 s through the one client it uses for the ledger. Gossip, mingle and Celery's
    event heartbeat are switched off on its command line (``backstop worker``)."""
    app.lean, app.pace = True, CLIENT_PACE
    transport = dict(app.conf.broker_transport_options,
                     polling_interval=LEAN_POLL_S, unacked_restore_interval=LEAN_RESTORE_S)
    app.conf.update({
        "worker_pool": f"{ThreadPool.__module__}:{ThreadPool.__name__}",
        "worker_enable_remote_control": False,
        "worker_send_task_events": False,
        "task_send_sent_event": False,
        "broker_pool_limit": 0,
        "broker_transport_options": transport,
    })
